//! The client's one error type, and the rule that turns a server's `ok: 0`
//! into it.

use bson::RawDocumentBuf;
use mongotap_proto::{DecodeError, ReplyView};
use thiserror::Error;

/// What went wrong talking to the server. Every variant is about the server
/// side (or the conversation with it) and names its address.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream {addr} did not finish connecting and answering hello within {ms} ms")]
    ConnectTimeout { addr: String, ms: u64 },
    #[error("upstream {addr} did not answer {command} within {ms} ms")]
    Timeout {
        addr: String,
        command: String,
        ms: u64,
    },
    #[error("upstream {addr}: {name:?} is not a host name TLS can verify")]
    BadServerName { addr: String, name: String },
    #[error("TLS handshake with upstream {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection to upstream {addr} failed: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream {addr} closed the connection")]
    Closed { addr: String },
    #[error("upstream {addr} sent a malformed reply: {source}")]
    Decode { addr: String, source: DecodeError },
    #[error("upstream {addr} sent an unexpected reply: {what}")]
    Unexpected { addr: String, what: String },
    #[error("{command} failed on upstream {addr}: {code} {code_name}: {errmsg}")]
    Command {
        addr: String,
        command: String,
        code: i32,
        code_name: String,
        errmsg: String,
    },
    #[error("SCRAM-SHA-256 authentication with upstream {addr} failed: {reason}")]
    Auth { addr: String, reason: String },
    #[error("a previous command on this connection to {addr} was cancelled mid-flight; the connection cannot be reused")]
    Poisoned { addr: String },
    /// A caller's mistake, caught before anything went out: a frame too
    /// short to carry the header whose request id the client fills in.
    #[error("refusing to send {len} bytes to upstream {addr}: shorter than a message header")]
    ShortFrame { addr: String, len: usize },
}

impl ClientError {
    /// `command` to `addr` got no answer within `after`.
    pub fn timed_out(addr: &str, command: &str, after: std::time::Duration) -> ClientError {
        ClientError::Timeout {
            addr: addr.to_string(),
            command: command.to_string(),
            ms: after.as_millis() as u64,
        }
    }

    /// The server's error code, when the server answered `ok: 0`.
    pub fn code(&self) -> Option<i32> {
        match self {
            ClientError::Command { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn code_name(&self) -> Option<&str> {
        match self {
            ClientError::Command { code_name, .. } => Some(code_name),
            _ => None,
        }
    }
}

/// Turns an `ok: 0` reply into an error with the server's code and message.
pub(super) fn check_ok(
    addr: &str,
    command: &str,
    reply: RawDocumentBuf,
) -> Result<RawDocumentBuf, ClientError> {
    let view = ReplyView::parse(&reply).map_err(|source| ClientError::Decode {
        addr: addr.to_string(),
        source,
    })?;
    if view.ok == Some(true) {
        return Ok(reply);
    }
    let code = view.code.unwrap_or(0);
    Err(ClientError::Command {
        addr: addr.to_string(),
        command: command.to_string(),
        code,
        code_name: view
            .code_name
            .map(str::to_string)
            .unwrap_or_else(|| mongotap_proto::reply::code_name(code).to_string()),
        errmsg: match view.ok {
            None => "the reply has no `ok` field".to_string(),
            _ => view.errmsg.unwrap_or("").to_string(),
        },
    })
}
