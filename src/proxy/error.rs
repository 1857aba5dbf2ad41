//! Session errors, tagged with the side that failed so a log line says
//! whether the client, the upstream or mongotap itself is at fault.

use mongotap_proto::DecodeError;
use std::fmt;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Error)]
pub enum SessionError {
    // The setting is named because on a first run this is usually a wrong
    // or missing --upstream, not a server that went away.
    #[error("cannot connect to upstream {addr} (proxy.upstream, or --upstream): {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with upstream {addr} (verifying name {name}) failed: {source}; check tls.upstream.ca, and tls.upstream.server_name (direct mode) or the member's host name in [[topology.member]] upstream (replica-set mode)")]
    UpstreamTls {
        addr: String,
        name: String,
        source: std::io::Error,
    },
    #[error("replica-set member {addr}: {name:?} is not a host name TLS can verify")]
    UpstreamName { addr: String, name: String },
    #[error("connecting to upstream {addr} timed out after {ms} ms (proxy.connect_timeout_ms)")]
    ConnectTimeout { addr: String, ms: u64 },
    #[error("{side} sent a malformed frame: {source}")]
    Decode { side: Side, source: DecodeError },
    #[error("{side} sent {have} of a {need}-byte frame and did not finish it within {ms} ms (proxy.frame_timeout_ms; slow or stuck sender)")]
    FrameTimeout {
        side: Side,
        have: usize,
        need: usize,
        ms: u64,
    },
    #[error("no traffic and nothing pending for {ms} ms (proxy.idle_timeout_ms)")]
    Idle { ms: u64 },
    // The pending commands' `never_replied` events carry this as reason.
    #[error("killed from the admin endpoint (POST /inflight/{{conn}}/{{request_id}}/kill)")]
    Killed,
    #[error("{side} connection failed: {source}")]
    Io { side: Side, source: std::io::Error },
}
