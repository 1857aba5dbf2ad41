//! `[topology]`: direct mode (one upstream, today's behaviour) or
//! replica-set mode, where every member gets a mongotap listener and hello
//! replies name those listeners instead of the members.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopologyMode {
    /// One upstream (`proxy.upstream`); hello replies pass unchanged.
    #[default]
    Direct,
    /// One listener per member; hello replies are rewritten.
    ReplicaSet,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopologyConfig {
    pub mode: TopologyMode,
    /// The members mongotap listens for, in replica-set mode.
    pub member: Vec<MemberConfig>,
    /// Ports ("27019-27030") for members the set reports that are not
    /// listed in `member`. Unset: such members are removed from hello
    /// replies (a driver must never learn an address that bypasses mongotap).
    pub member_ports: Option<String>,
    /// The host advertised for those members. Default: the first member's
    /// listen host.
    pub advertise_host: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// The member's address as the set reports it in hello (`hosts`, `me`).
    pub upstream: String,
    /// Where mongotap listens for this member's clients.
    pub listen: String,
    /// What hello replies say instead of `upstream`. Default: `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
}

impl TopologyConfig {
    pub fn is_replica_set(&self) -> bool {
        self.mode == TopologyMode::ReplicaSet
    }

    /// `member_ports` as a range, checked by `validate`.
    pub fn port_range(&self) -> Option<RangeInclusive<u16>> {
        self.member_ports
            .as_deref()
            .and_then(|s| parse_range(s).ok())
    }

    /// `given`: the proxy.listen / proxy.upstream settings the file or the
    /// flags set, which replica-set mode replaces.
    pub fn validate(&self, given: &[String], admin_listen: &str) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !self.is_replica_set() {
            if !self.member.is_empty() || self.member_ports.is_some() {
                return bad("[[topology.member]] and topology.member_ports apply in replica-set mode: set topology.mode = \"replica-set\", or remove them".into());
            }
            return Ok(());
        }
        if !given.is_empty() {
            return bad(format!(
                "in replica-set mode the [[topology.member]] entries replace proxy.listen and proxy.upstream: remove {}",
                given.join(" and ")
            ));
        }
        if self.member.is_empty() {
            return bad("topology.mode = \"replica-set\" needs at least one [[topology.member]] with upstream and listen (the seed member)".into());
        }
        let mut upstreams = HashSet::new();
        let mut listens = HashSet::new();
        for (i, m) in self.member.iter().enumerate() {
            let n = i + 1;
            let key = format!("topology.member #{n}");
            host_port(&format!("{key} upstream"), &m.upstream)?;
            let listen = socket_addr(&format!("{key} listen"), &m.listen)?;
            if let Some(a) = &m.advertise {
                host_port(&format!("{key} advertise"), a)?;
            } else if listen.ip().is_unspecified() {
                return bad(format!("{key} listens on {} (every interface): set its `advertise` to the host:port clients reach it by", m.listen));
            }
            if !upstreams.insert(m.upstream.to_ascii_lowercase()) {
                return bad(format!("{key}: upstream {} is listed twice", m.upstream));
            }
            if listen.port() != 0 && !listens.insert(listen) {
                return bad(format!("{key}: listen {} is used twice", m.listen));
            }
            if m.listen == admin_listen {
                return bad(format!("{key}: listen {} is also admin.listen", m.listen));
            }
        }
        if let Some(text) = &self.member_ports {
            let range = parse_range(text).map_err(ConfigError::Invalid)?;
            if let Some(m) = self.member.iter().find(|m| {
                socket_addr("", &m.listen).is_ok_and(|a| range.contains(&a.port()) && a.port() != 0)
            }) {
                return bad(format!("topology.member_ports {text:?} includes the port of member listen {}; use a range apart from the listed members", m.listen));
            }
            let seed = socket_addr("", &self.member[0].listen)?;
            if seed.ip().is_unspecified() && self.advertise_host.is_none() {
                return bad("topology.member_ports: the first member listens on every interface, so set topology.advertise_host to the host clients reach mongotap by".into());
            }
        }
        Ok(())
    }
}

/// "27019-27030" (or one port) as a range of at least one port.
fn parse_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let fix = || {
        format!(
            "topology.member_ports {text:?} must be a port range FIRST-LAST, e.g. \"27019-27030\""
        )
    };
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|&p| p != 0);
    match (port(a), port(b)) {
        (Some(a), Some(b)) if a <= b => Ok(a..=b),
        _ => Err(fix()),
    }
}

/// A member's listen address must be an IP address and port: mongotap
/// binds it and advertises it.
fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse::<SocketAddr>().map_err(|_| {
        ConfigError::Invalid(format!(
            "{key} {value:?} must be IP:PORT, e.g. 0.0.0.0:27018 or 127.0.0.1:27018"
        ))
    })
}

/// An address as hello replies spell it: HOST:PORT.
fn host_port(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{key} {value:?} must be HOST:PORT, e.g. db-a.internal:27017"
        )))
    }
}

/// The host of a `HOST:PORT` address, without an IPv6 address's
/// brackets: the name TLS sends as SNI and checks the certificate against.
pub fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']')
}

/// The host part of a listen address, as advertised by default.
pub fn listen_host(listen: &SocketAddr) -> String {
    match listen.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(members: &str, extra: &str) -> TopologyConfig {
        let text = format!("mode = \"replica-set\"\n{extra}\n{members}");
        toml::from_str(&text).unwrap()
    }

    const TWO: &str = "[[member]]\nupstream = \"db-a:27017\"\nlisten = \"127.0.0.1:27018\"\n[[member]]\nupstream = \"db-b:27017\"\nlisten = \"127.0.0.1:27019\"\n";

    #[test]
    fn a_valid_mapping_passes_and_ranges_parse() {
        let t = rs(TWO, "member_ports = \"27020-27030\"");
        t.validate(&[], "127.0.0.1:9477").unwrap();
        assert_eq!(t.port_range(), Some(27020..=27030));
        assert_eq!(parse_range("40000"), Ok(40000..=40000));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |t: TopologyConfig, given: &[String]| {
            t.validate(given, "127.0.0.1:9477").unwrap_err().to_string()
        };
        let dup = TWO.replace("27019", "27018");
        assert!(err(rs(&dup, ""), &[]).contains("used twice"));
        let dup = TWO.replace("db-b", "DB-A");
        assert!(err(rs(&dup, ""), &[]).contains("listed twice"));
        assert!(err(rs(TWO, "member_ports = \"30-20\""), &[]).contains("FIRST-LAST"));
        assert!(err(rs(TWO, "member_ports = \"27019-27030\""), &[]).contains("apart from"));
        let given = ["proxy.upstream".to_string()];
        assert!(err(rs(TWO, ""), &given).contains("remove proxy.upstream"));
        assert!(err(rs("", ""), &[]).contains("at least one"));
        let any = TWO.replace("127.0.0.1:27018", "0.0.0.0:27018");
        assert!(err(rs(&any, ""), &[]).contains("advertise"));
        let direct: TopologyConfig = toml::from_str(TWO).unwrap();
        assert!(err(direct, &[]).contains("replica-set mode"));
    }
}
