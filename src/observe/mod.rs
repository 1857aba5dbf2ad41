//! Per-frame observation for one connection: requests on the way up,
//! replies on the way down. Observation only reads the frame; it never
//! blocks on I/O and never changes what is forwarded.
//!
//! `ConnState` is what both directions of a connection share; the request
//! side is in `request.rs`, the reply side in `reply.rs`.

pub mod compat;
mod conn_capture;
pub mod cursors;
pub mod events;
mod hello_rewrite;
pub mod meta;
mod observatory;
pub mod queries;
mod reply;
mod request;
pub mod spans;
pub mod stats;
pub mod tracker;

pub use observatory::{
    AutoDiagnose, AutoExplain, DiagnoseSlot, Observatory, RewriteCounts, Trigger,
};
pub use reply::ReplyObserver;
pub use request::RequestObserver;

use crate::observe::stats::SampleBuffer;
use crate::observe::tracker::ConnInflight;
use mongotap_proto::DecodeError;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Who a connection is, for every log line about it.
#[derive(Debug, Clone)]
pub struct ConnId {
    pub conn: u64,
    pub client: std::net::SocketAddr,
    /// In replica-set mode, the member this connection goes to (the
    /// listener the client dialled decides).
    pub member: Option<Arc<crate::topology::Member>>,
}

/// How a connection ended, as its pending commands see it. Plain data from
/// the session, so that observation does not depend on the proxy's types.
#[derive(Debug, Clone)]
pub struct Ending {
    /// The client went first (closed, reset or sent a bad frame): its
    /// pending commands were abandoned, not left unanswered by the server.
    pub client_went_first: bool,
    /// Why the connection ended, for `never_replied` events.
    pub reason: String,
}

/// What both directions of one connection need to see. Both observers run
/// inside the session's single task, so the mutex is never contended.
pub struct ConnState {
    /// What every connection's observers share.
    pub obs: Arc<Observatory>,
    pub id: ConnId,
    /// Requests that expect a reply and have not had their last one yet,
    /// registered in the shared `Tracker`.
    inflight: Arc<ConnInflight>,
    samples: Mutex<SampleBuffer>,
    /// Capture's sampling decision and how it captured each request.
    cap: conn_capture::ConnCapture,
    /// Woken when a command completes, for a client held back at
    /// max_inflight_per_connection.
    slots: tokio::sync::Notify,
    /// Milliseconds since `opened` of the last frame either way.
    last_frame_ms: AtomicU64,
    opened: Instant,
    /// The last few requests whose reply would match nothing, and why, to
    /// name the cause when one is answered anyway.
    unanswerable: Mutex<RecentIds>,
    /// Replica-set mode: requests whose replies name members.
    hellos: Mutex<hello_rewrite::HelloIds>,
    /// `hellos` holds an id: replies need a look (set and cleared under
    /// its lock; both observers run in the session's one task).
    hellos_waiting: std::sync::atomic::AtomicBool,
}

/// Why a reply's `responseTo` matched no pending request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// The request had moreToCome (a w:0 write): it expects no reply, yet
    /// some servers (FerretDB) send one.
    MoreToComeRequest,
    /// The client reused a requestID while its first command was pending;
    /// the first reply answered the later command.
    RequestIdReused,
    /// Nothing this connection remembers.
    Unknown,
}

impl Unmatched {
    pub fn as_str(self) -> &'static str {
        match self {
            Unmatched::MoreToComeRequest => "more_to_come_request",
            Unmatched::RequestIdReused => "request_id_reused",
            Unmatched::Unknown => "unknown",
        }
    }

    pub fn explain(self) -> &'static str {
        match self {
            Unmatched::MoreToComeRequest => {
                "a reply to a moreToCome (w:0) request, which expects none; FerretDB answers them, MongoDB does not"
            }
            Unmatched::RequestIdReused => {
                "the client reused a requestID while its first command was pending; the first reply answered the later command"
            }
            Unmatched::Unknown => {
                "no request with this id is pending on this connection (the server answered twice, or the request was not seen)"
            }
        }
    }
}

/// How many unanswerable requestIDs a connection remembers. Servers answer
/// within a few requests, and a client sending a million w:0 writes must
/// not grow this.
const RECENT_IDS: usize = 16;

/// A fixed ring of requestIDs, newest overwriting oldest.
#[derive(Default)]
struct RecentIds {
    ids: [(i32, Option<Unmatched>); RECENT_IDS],
    next: usize,
}

impl RecentIds {
    fn note(&mut self, id: i32, why: Unmatched) {
        self.ids[self.next] = (id, Some(why));
        self.next = (self.next + 1) % RECENT_IDS;
    }

    fn why(&self, id: i32) -> Unmatched {
        self.ids
            .iter()
            .find_map(|&(i, why)| (i == id).then_some(why).flatten())
            .unwrap_or(Unmatched::Unknown)
    }
}

impl ConnState {
    pub fn new(obs: Arc<Observatory>, id: ConnId) -> Self {
        let member = id.member.as_ref().map(|m| m.name.clone());
        ConnState {
            cap: conn_capture::ConnCapture::new(
                obs.capture.sample(id.conn),
                id.client,
                obs.max_inflight_per_connection,
            ),
            inflight: obs.tracker.register(id.conn),
            obs,
            id,
            samples: Mutex::new(SampleBuffer::for_member(member)),
            slots: tokio::sync::Notify::new(),
            last_frame_ms: AtomicU64::new(0),
            opened: Instant::now(),
            unanswerable: Mutex::default(),
            hellos: Mutex::default(),
            hellos_waiting: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Remembers a request that a reply would not match, and why.
    fn note_unanswerable(&self, request_id: i32, why: Unmatched) {
        // Read back only to explain an unmatched reply in a debug event, or,
        // with tracking off, for capture to tell a w:0 write's reply apart.
        // Otherwise a run of w:0 writes would take this lock for nothing.
        // (The log filter is set once at start.)
        if self.obs.watch.track && !events::debug_enabled() {
            return;
        }
        let mut recent = self.unanswerable.lock().unwrap_or_else(|e| e.into_inner());
        recent.note(request_id, why);
    }

    /// Why a reply to `response_to` matched no pending request.
    fn why_unmatched(&self, response_to: i32) -> Unmatched {
        let recent = self.unanswerable.lock().unwrap_or_else(|e| e.into_inner());
        recent.why(response_to)
    }

    /// Cancelled when an operator kills one of this connection's commands
    /// (`POST /inflight/{conn}/{request_id}/kill`).
    pub fn kill_token(&self) -> &tokio_util::sync::CancellationToken {
        self.inflight.kill_token()
    }

    pub fn pending(&self) -> usize {
        self.inflight.len()
    }

    /// Commands really waiting on the server (awaiting ones left out).
    pub fn waiting(&self) -> usize {
        self.inflight.waiting()
    }

    /// Waits until fewer than `max` commands are pending.
    pub async fn wait_for_slot(&self, max: usize) {
        loop {
            let notified = self.slots.notified();
            tokio::pin!(notified);
            // Register before checking, so a completion in between wakes us.
            notified.as_mut().enable();
            if self.pending() < max {
                return;
            }
            notified.await;
        }
    }

    /// Notes a frame and returns the time it was seen, so the observer
    /// reads the clock once per frame.
    fn touch(&self) -> Instant {
        let now = Instant::now();
        let since_open = now.saturating_duration_since(self.opened);
        self.last_frame_ms
            .store(since_open.as_millis() as u64, Relaxed);
        now
    }

    /// How long since the last frame in either direction.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_frame_ms.load(Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    /// Publishes buffered latency samples (called on a timer and at close).
    pub fn flush(&self) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if !s.is_empty() {
            s.flush(&self.obs.stats);
        }
    }

    /// Called once when the session ends: publishes samples and reports
    /// every command that will now never get its reply, and open cursors.
    pub fn finish(&self, ending: &Ending) {
        self.flush();
        let obs = &self.obs;
        if self.pending() > 0 {
            let client_went_first = ending.client_went_first;
            let now = Instant::now();
            for p in self.inflight.drain() {
                if p.facts().awaiting {
                    continue;
                }
                if client_went_first {
                    obs.counters.abandoned.fetch_add(1, Relaxed);
                    events::abandoned(&p, now);
                } else {
                    obs.counters.never_replied.fetch_add(1, Relaxed);
                    events::never_replied(&p, now, &ending.reason);
                }
                if let Some(otel) = &obs.otel {
                    let end = if client_went_first {
                        spans::End::Abandoned
                    } else {
                        spans::End::NeverReplied
                    };
                    spans::command(otel, obs, &p, end, now);
                }
            }
        }
        let now = Instant::now();
        for (id, c) in obs.cursors.take_conn(self.id.conn) {
            if !c.awaiting {
                obs.counters.cursors_leaked.fetch_add(1, Relaxed);
                events::cursor_leaked(id, &c, now, "connection closed with the cursor open");
            }
        }
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.obs.tracker.unregister(self.id.conn);
    }
}

pub trait Observe {
    /// Looks at one whole frame. `Ok(Some(bytes))` replaces the frame with
    /// a rewritten one; an error closes the connection.
    fn observe(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, DecodeError>;
}

#[cfg(test)]
mod tests {
    use super::{RecentIds, Unmatched, RECENT_IDS};

    #[test]
    fn recent_ids_name_the_reason_and_stay_bounded() {
        let mut recent = RecentIds::default();
        assert_eq!(recent.why(0), Unmatched::Unknown, "an empty slot is no id");
        recent.note(7, Unmatched::MoreToComeRequest);
        recent.note(8, Unmatched::RequestIdReused);
        assert_eq!(recent.why(7), Unmatched::MoreToComeRequest);
        assert_eq!(recent.why(8), Unmatched::RequestIdReused);
        assert_eq!(recent.why(9), Unmatched::Unknown);
        // A long run of w:0 writes overwrites the oldest ids.
        for id in 100..100 + RECENT_IDS as i32 {
            recent.note(id, Unmatched::MoreToComeRequest);
        }
        assert_eq!(recent.why(7), Unmatched::Unknown);
        assert_eq!(recent.why(100), Unmatched::MoreToComeRequest);
        assert_eq!(recent.ids.len(), RECENT_IDS);
    }
}
