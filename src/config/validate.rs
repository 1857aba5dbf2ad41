//! `Config::validate`: values that parse but cannot work, caught before
//! anything is bound or spawned, so `check-config` fails where the proxy
//! would.

use super::{Config, ConfigError};
use std::net::{SocketAddr, ToSocketAddrs};

impl Config {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        check_host_port("proxy.listen", "--listen", &self.proxy.listen)
            .map_err(ConfigError::Invalid)?;
        if self.proxy.upstream.rsplit_once(':').is_none() {
            return bad(format!(
                "proxy.upstream (or --upstream) {:?} must be HOST:PORT, e.g. 127.0.0.1:27017 or db.internal:27017",
                self.proxy.upstream
            ));
        }
        if self.proxy.max_frame_bytes < 1024
            || self.proxy.max_frame_bytes > mongotap_proto::MAX_MESSAGE_LEN
        {
            return bad(format!(
                "proxy.max_frame_bytes {} must be between 1024 and {}",
                self.proxy.max_frame_bytes,
                mongotap_proto::MAX_MESSAGE_LEN
            ));
        }
        if self.proxy.max_inflight_per_connection == 0 || self.proxy.frame_timeout_ms == 0 {
            return bad(
                "proxy.max_inflight_per_connection and proxy.frame_timeout_ms must be at least 1"
                    .into(),
            );
        }
        if self.proxy.max_connections == 0 {
            return bad("proxy.max_connections must be at least 1".into());
        }
        if !self.admin.listen.is_empty() {
            check_host_port("admin.listen", "--admin", &self.admin.listen)
                .map_err(ConfigError::Invalid)?;
            if self.admin.token.is_none() {
                if let Some(open) =
                    non_loopback(&self.admin.listen).map_err(ConfigError::Invalid)?
                {
                    // A name: say what it resolved to.
                    let resolved = if open.to_string() == self.admin.listen {
                        String::new()
                    } else {
                        format!(" ({open})")
                    };
                    return bad(format!(
                        "admin.listen {:?} is not loopback{resolved}: set admin.token so the endpoint is not open to the network",
                        self.admin.listen
                    ));
                }
            }
        }
        for (i, rule) in self.rewrite.rule.iter().enumerate() {
            let n = i + 1;
            if rule.commands.is_empty() {
                return bad(format!("rewrite.rule #{n}: `commands` is empty; name the commands it applies to, e.g. [\"aggregate\", \"find\"]"));
            }
            if let Some(c) = rule
                .commands
                .iter()
                .find(|c| mongotap_proto::rewrite::never_rewrite(c))
            {
                return bad(format!(
                    "rewrite.rule #{n}: mongotap never rewrites `{c}`; remove it from `commands`"
                ));
            }
            if rule.default_max_time_ms.is_none()
                && rule.max_time_ms_cap.is_none()
                && !rule.allow_disk_use
            {
                return bad(format!("rewrite.rule #{n} has no action: set default_max_time_ms, max_time_ms_cap or allow_disk_use"));
            }
            if rule.commands.iter().any(|c| c == "explain") {
                return bad(format!("rewrite.rule #{n}: `explain` is matched by the command it explains; name that command (e.g. \"aggregate\") instead"));
            }
            // The server rejects a maxTimeMS that does not fit an int32.
            let too_big = |v: Option<u64>| v.is_some_and(|v| v > i32::MAX as u64);
            if too_big(rule.default_max_time_ms) || too_big(rule.max_time_ms_cap) {
                return bad(format!("rewrite.rule #{n}: time limits must be at most 2147483647 ms (the server rejects larger maxTimeMS values)"));
            }
            if rule.default_max_time_ms == Some(0) || rule.max_time_ms_cap == Some(0) {
                return bad(format!("rewrite.rule #{n}: a time limit of 0 means unlimited; use a positive number of milliseconds"));
            }
            if let (Some(d), Some(c)) = (rule.default_max_time_ms, rule.max_time_ms_cap) {
                if d > c {
                    return bad(format!(
                        "rewrite.rule #{n}: default_max_time_ms {d} is above max_time_ms_cap {c}"
                    ));
                }
            }
        }
        if let Some(up) = &self.tls.upstream {
            if up.cert.is_some() != up.key.is_some() {
                return bad("tls.upstream: set both cert and key, or neither".into());
            }
            if up.server_name.is_some() && self.topology.is_replica_set() {
                return bad("tls.upstream.server_name: in replica-set mode each member is verified under its own host name (from [[topology.member]] upstream, or as the set reports it); remove server_name".into());
            }
        }
        if !(0.0..=1.0).contains(&self.capture.sample_rate) {
            return bad(format!(
                "capture.sample_rate {} must be between 0.0 and 1.0",
                self.capture.sample_rate
            ));
        }
        if self.capture.max_files == 0 || self.capture.channel_capacity == 0 {
            return bad("capture.max_files and capture.channel_capacity must be at least 1".into());
        }
        if self.watch.stall_ms == 0 {
            return bad("watch.stall_ms (or --stall-ms) must be at least 1".into());
        }
        if self.watch.max_series == 0 {
            return bad("watch.max_series must be at least 1".into());
        }
        if self.watch.max_shapes == 0 {
            return bad("watch.max_shapes must be at least 1".into());
        }
        self.topology
            .validate(&self.proxy_addresses_given, &self.admin.listen)?;
        if let Some(otel) = &self.otel {
            otel.validate()?;
        }
        self.health.validate()?;
        self.diagnose.validate()
    }
}

/// A listen address is HOST:PORT, where HOST is an IP address (IPv6 in
/// brackets) or a name such as `localhost`. Only the form is checked here;
/// binding resolves the name, as `TcpListener::bind` does.
fn check_host_port(key: &str, flag: &str, value: &str) -> Result<(), String> {
    if value.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let fix = format!(
        "{key} (or {flag}) {value:?} must be HOST:PORT, e.g. 127.0.0.1:27018, [::1]:27018 or localhost:27018"
    );
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(fix);
    };
    if host.is_empty() || host.contains(['[', ']', ':', '/', ' ']) {
        return Err(fix);
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("{fix}; the port must be a number from 0 to 65535"));
    }
    Ok(())
}

/// The first address `value` binds to that is not loopback, if any. A name
/// is resolved the way binding will resolve it (`localhost` through
/// /etc/hosts), so `admin.listen = "localhost:9477"` needs no token while a
/// name for a public interface does.
fn non_loopback(value: &str) -> Result<Option<SocketAddr>, String> {
    let addrs = value
        .to_socket_addrs()
        .map_err(|e| format!("admin.listen {value:?}: cannot resolve its host: {e}"))?;
    Ok(addrs.into_iter().find(|a| !a.ip().is_loopback()))
}
