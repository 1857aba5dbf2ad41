//! Replica-set mode: one mongotap listener per member, and the map from
//! each member's address (as the set names it in hello) to the address
//! mongotap advertises for it.
//!
//! Members listed in `[[topology.member]]` get their listeners at start.
//! A member first seen in a hello reply (a client's or mongotap's own
//! probe's) gets one from `topology.member_ports` on the spot, so elections
//! and added members need no restart; one that leaves keeps its listener.
//! A member that cannot be given a listener is removed from the replies:
//! a driver that learned its real address would bypass mongotap.

mod member;

pub use member::{Member, MemberState};

use crate::config::{listen_host, TopologyConfig};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn};

#[derive(Debug, Error)]
pub enum TopologyError {
    #[error("cannot listen on {listen} for member {member} ([[topology.member]] listen): {error}")]
    Bind {
        member: String,
        listen: String,
        error: std::io::Error,
    },
}

/// A listener for a member, handed to the proxy's accept loops.
pub type NewListener = (Arc<Member>, TcpListener);

/// How many unmappable members are remembered, so each is warned about
/// once; a set has at most 50 members, so this is never reached by a sane
/// one.
const UNMAPPED_REMEMBERED: usize = 256;

/// What `ReplicaSet::bind` gives the proxy.
pub struct Bound {
    pub set: Arc<ReplicaSet>,
    /// The listed members' listeners.
    pub listeners: Vec<NewListener>,
    /// Listeners for members discovered later.
    pub discovered: mpsc::UnboundedReceiver<NewListener>,
}

pub struct ReplicaSet {
    members: RwLock<Vec<Arc<Member>>>,
    /// `setName` from the last hello that had one.
    set_name: RwLock<Option<String>>,
    /// Where discovered members' listeners bind, and the host advertised.
    bind_ip: IpAddr,
    advertise_host: String,
    /// Ports left for discovered members: the next one to try.
    ports: Mutex<Option<PortPool>>,
    /// Discovered members' listeners, for the proxy to accept on. Bounded
    /// by the port range: one message per port at most.
    new_listeners: mpsc::UnboundedSender<NewListener>,
    unmapped_warned: Mutex<HashSet<String>>,
    /// The clock the members' "last hello" instants count from.
    pub epoch: Instant,
}

struct PortPool {
    range: RangeInclusive<u16>,
    /// u32 so that a range ending at 65535 can be passed.
    next: u32,
}

impl ReplicaSet {
    /// Binds every listed member's listener.
    pub fn bind(config: &TopologyConfig) -> Result<Bound, TopologyError> {
        let epoch = Instant::now();
        let mut members = Vec::new();
        let mut listeners = Vec::new();
        for m in &config.member {
            let listener = bind(&m.listen).map_err(|error| TopologyError::Bind {
                member: m.upstream.clone(),
                listen: m.listen.clone(),
                error,
            })?;
            let listen = listener.local_addr().map_err(|error| TopologyError::Bind {
                member: m.upstream.clone(),
                listen: m.listen.clone(),
                error,
            })?;
            let advertise = m
                .advertise
                .clone()
                .unwrap_or_else(|| format!("{}:{}", listen_host(&listen), listen.port()));
            let member = Arc::new(Member::new(&m.upstream, listen, &advertise, true));
            listeners.push((member.clone(), listener));
            members.push(member);
        }
        // The first member's listen address, validated as IP:PORT.
        let seed = members
            .first()
            .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |m| m.listen);
        let (tx, rx) = mpsc::unbounded_channel();
        let set = ReplicaSet {
            members: RwLock::new(members),
            set_name: RwLock::new(None),
            bind_ip: seed.ip(),
            advertise_host: config
                .advertise_host
                .clone()
                .unwrap_or_else(|| listen_host(&seed)),
            ports: Mutex::new(config.port_range().map(|range| PortPool {
                next: u32::from(*range.start()),
                range,
            })),
            new_listeners: tx,
            unmapped_warned: Mutex::new(HashSet::new()),
            epoch,
        };
        Ok(Bound {
            set: Arc::new(set),
            listeners,
            discovered: rx,
        })
    }

    pub fn members(&self) -> Vec<Arc<Member>> {
        self.members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_name(&self) -> Option<String> {
        self.set_name
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn note_set_name(&self, name: &str) {
        if self.set_name().as_deref() != Some(name) {
            *self
                .set_name
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some(name.to_string());
        }
    }

    /// `GET /topology`: the set and each member as mongotap sees it.
    pub fn snapshot(&self, now: Instant) -> serde_json::Value {
        let members: Vec<_> = self
            .members()
            .iter()
            .map(|m| {
                serde_json::json!({
                    "member": &*m.name,
                    "upstream": m.upstream,
                    "listen": m.listen.to_string(),
                    "advertise": m.advertise,
                    "state": m.state().as_str(),
                    "up": m.up(),
                    "last_hello_age_ms": m.last_hello_age_ms(self.epoch, now),
                    "configured": m.configured,
                })
            })
            .collect();
        serde_json::json!({
            "mode": "replica-set",
            "set_name": self.set_name(),
            "members": members,
        })
    }

    /// `/readyz` in replica-set mode: ready while at least one member
    /// answers mongotap's probe (reads with a secondary read preference
    /// still work without a primary).
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let members = self.members();
        let up: Vec<&str> = members
            .iter()
            .filter(|m| m.up() == Some(true))
            .map(|m| &*m.name)
            .collect();
        let primary = members
            .iter()
            .find(|m| m.up() == Some(true) && m.state() == MemberState::Primary)
            .map(|m| &*m.name);
        let ready = !up.is_empty();
        let body = serde_json::json!({
            "ready": ready,
            "mode": "replica-set",
            "members_up": up,
            "primary": primary,
            "members": members.len(),
        });
        (ready, body)
    }

    /// Whether any member answers (`mongotap_upstream_up`).
    pub fn any_up(&self) -> bool {
        self.members().iter().any(|m| m.up() == Some(true))
    }

    fn find(&self, name: &str) -> Option<Arc<Member>> {
        self.members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|m| &*m.name == name)
            .cloned()
    }

    /// The address advertised for `name` (a member as the set names it,
    /// lower-cased), giving it a listener first if it is new. `None`: it
    /// cannot be mapped and must be removed from the reply.
    pub fn advertise(&self, name: &str) -> Option<String> {
        if let Some(m) = self.find(name) {
            return Some(m.advertise.clone());
        }
        self.discover(name).map(|m| m.advertise.clone())
    }

    /// Gives a member first seen in a hello a listener from
    /// `member_ports`. Rare (once per member per process), so binding a
    /// socket here, on whichever task saw the hello, costs nothing that
    /// matters.
    fn discover(&self, name: &str) -> Option<Arc<Member>> {
        let mut ports = self.ports.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked again under the pool's lock: two connections may see the
        // same new member at once.
        if let Some(m) = self.find(name) {
            return Some(m);
        }
        let Some(pool) = ports.as_mut() else {
            drop(ports);
            self.warn_unmapped(
                name,
                "not listed in [[topology.member]] and topology.member_ports is not set",
            );
            return None;
        };
        let Some((listener, listen)) = pool.take(self.bind_ip) else {
            drop(ports);
            self.warn_unmapped(name, "no free port left in topology.member_ports");
            return None;
        };
        let advertise = format!("{}:{}", self.advertise_host, listen.port());
        let member = Arc::new(Member::new(name, listen, &advertise, false));
        self.members
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(member.clone());
        drop(ports);
        info!(
            event = "topology_member_added",
            member = %member.name,
            listen = %member.listen,
            advertise = %member.advertise,
            "replica-set member {} discovered: listening for it on {}, advertised as {}",
            member.name, member.listen, member.advertise
        );
        // The proxy may be shutting down and gone: then nobody accepts.
        let _ = self.new_listeners.send((member.clone(), listener));
        Some(member)
    }

    fn warn_unmapped(&self, name: &str, reason: &str) {
        let mut warned = self
            .unmapped_warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if warned.len() < UNMAPPED_REMEMBERED && warned.insert(name.to_string()) {
            warn!(
                event = "topology_member_unmapped",
                member = %name,
                reason,
                "replica-set member {name} removed from hello replies: {reason}; a driver that learned its address would bypass mongotap"
            );
        }
    }
}

impl PortPool {
    /// Binds the next free port of the range, skipping ports in use.
    fn take(&mut self, ip: IpAddr) -> Option<(TcpListener, SocketAddr)> {
        while self.next <= u32::from(*self.range.end()) {
            let port = u16::try_from(self.next).ok()?;
            self.next += 1;
            if let Ok(l) = bind(&SocketAddr::new(ip, port).to_string()) {
                if let Ok(addr) = l.local_addr() {
                    return Some((l, addr));
                }
            }
        }
        None
    }
}

/// A non-blocking listener, ready for tokio.
fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

#[cfg(test)]
mod tests;
