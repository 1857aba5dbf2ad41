//! One replica-set member as mongotap sees it: where its clients connect,
//! what hello replies call it, and what the last hello said about it.

pub use mongotap_proto::hello::MemberState;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// `MemberState` kept in an atomic: its discriminant.
fn state_to_u8(s: MemberState) -> u8 {
    match s {
        MemberState::Unknown => 0,
        MemberState::Primary => 1,
        MemberState::Secondary => 2,
        MemberState::Arbiter => 3,
        MemberState::Hidden => 4,
    }
}

fn state_from_u8(v: u8) -> MemberState {
    match v {
        1 => MemberState::Primary,
        2 => MemberState::Secondary,
        3 => MemberState::Arbiter,
        4 => MemberState::Hidden,
        _ => MemberState::Unknown,
    }
}

#[derive(Debug)]
pub struct Member {
    /// The member's address as the set names it, lower-cased as SDAM
    /// compares them: the `member` label everywhere.
    pub name: Arc<str>,
    /// The address mongotap dials for this member's clients.
    pub upstream: String,
    /// Where mongotap listens for it (the bound address).
    pub listen: SocketAddr,
    /// What hello replies say instead of `name` (lower-cased).
    pub advertise: String,
    /// Listed in `[[topology.member]]`, rather than discovered.
    pub configured: bool,
    state: AtomicU8,
    /// 1: mongotap's own probe got a hello back; 0: it did not; 2: not
    /// probed yet.
    up: AtomicU8,
    /// When a hello from it was last seen, in ms since the set's epoch,
    /// plus one (0: never).
    last_hello_ms: AtomicU64,
}

impl Member {
    pub fn new(upstream: &str, listen: SocketAddr, advertise: &str, configured: bool) -> Self {
        Member {
            name: Arc::from(upstream.to_ascii_lowercase()),
            upstream: upstream.to_string(),
            listen,
            advertise: advertise.to_ascii_lowercase(),
            configured,
            state: AtomicU8::new(state_to_u8(MemberState::Unknown)),
            up: AtomicU8::new(2),
            last_hello_ms: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> MemberState {
        state_from_u8(self.state.load(Relaxed))
    }

    /// Whether mongotap's own probe reached it; `None` before the first probe.
    pub fn up(&self) -> Option<bool> {
        match self.up.load(Relaxed) {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(u8::from(up), Relaxed);
        if !up {
            self.state.store(state_to_u8(MemberState::Unknown), Relaxed);
        }
    }

    /// A hello reply from this member, at `now`.
    pub fn saw_hello(&self, state: MemberState, epoch: Instant, now: Instant) {
        self.state.store(state_to_u8(state), Relaxed);
        let ms = now.saturating_duration_since(epoch).as_millis() as u64;
        self.last_hello_ms.store(ms + 1, Relaxed);
    }

    /// How long ago its last hello was seen.
    pub fn last_hello_age_ms(&self, epoch: Instant, now: Instant) -> Option<u64> {
        let at = self.last_hello_ms.load(Relaxed).checked_sub(1)?;
        let since = now.saturating_duration_since(epoch).as_millis() as u64;
        Some(since.saturating_sub(at))
    }

    /// The host part of `upstream`, for TLS's SNI and certificate check.
    pub fn host(&self) -> &str {
        crate::config::host_of(&self.upstream)
    }
}
