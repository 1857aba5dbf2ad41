//! Per-frame observation for one connection: requests on the way up,
//! replies on the way down. Observation only reads the frame; it never
//! blocks on I/O and never changes what is forwarded.
//!
//! `ConnState` is what both directions of a connection share; the request
//! side is in `request.rs`, the reply side in `reply.rs`.

mod reply;
mod request;

pub use reply::ReplyObserver;
pub use request::RequestObserver;

use crate::error::Side;
use crate::events;
use crate::session::{ConnId, End};
use crate::shared::Shared;
use crate::stats::SampleBuffer;
use crate::tracker::ConnInflight;
use mongotap_proto::capture::Direction;
use mongotap_proto::{CommandView, DecodeError};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What both directions of one connection need to see. Both observers run
/// inside the session's single task, so the mutex is never contended.
pub struct ConnState {
    pub shared: Arc<Shared>,
    pub id: ConnId,
    /// Requests that expect a reply and have not had their last one yet,
    /// registered in the shared `Tracker`.
    inflight: Arc<ConnInflight>,
    samples: Mutex<SampleBuffer>,
    /// The client address, rendered once for capture records.
    client_label: Arc<str>,
    /// This connection was picked by capture sampling.
    captured: bool,
    /// Woken when a command completes, for a client held back at
    /// max_inflight_per_connection.
    slots: tokio::sync::Notify,
    /// Milliseconds since `opened` of the last frame either way.
    last_frame_ms: AtomicU64,
    opened: Instant,
}

impl ConnState {
    pub fn new(shared: Arc<Shared>, id: ConnId) -> Self {
        ConnState {
            captured: shared.capture.sample(id.conn),
            inflight: shared.tracker.register(id.conn),
            client_label: Arc::from(id.client.to_string()),
            shared,
            id,
            samples: Mutex::new(SampleBuffer::default()),
            slots: tokio::sync::Notify::new(),
            last_frame_ms: AtomicU64::new(0),
            opened: Instant::now(),
        }
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

    /// Captures `frame` when capture is on, this connection is sampled and
    /// the command passes the filters. Returns `Some(redacted)` when it was
    /// captured, so the reply can follow the same decision.
    fn capture(
        &self,
        frame: &[u8],
        direction: Direction,
        view: Option<&CommandView<'_>>,
    ) -> Option<bool> {
        let capture = &self.shared.capture;
        if !self.captured || !capture.is_on() {
            return None;
        }
        let wanted = match view {
            Some(v) => capture.wants(v),
            None => !capture.filtered(),
        };
        if !wanted {
            return None;
        }
        let redact = view.is_some_and(|v| v.is_sensitive());
        capture.record(self.id.conn, &self.client_label, direction, frame, redact);
        Some(redact)
    }

    /// Publishes buffered latency samples (called on a timer and at close).
    pub fn flush(&self) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if !s.is_empty() {
            s.flush(&self.shared.stats);
        }
    }

    /// Called once when the session ends: publishes samples and reports
    /// every command that will now never get its reply, and open cursors.
    pub fn finish(&self, end: &End) {
        self.flush();
        let shared = &self.shared;
        if self.pending() > 0 {
            let client_went_first = matches!(
                end,
                End::Closed(Side::Client)
                    | End::Failed(crate::error::SessionError::Decode {
                        side: Side::Client,
                        ..
                    })
                    | End::Failed(crate::error::SessionError::Io {
                        side: Side::Client,
                        ..
                    })
            );
            let now = Instant::now();
            for p in self.inflight.drain() {
                if p.awaiting {
                    continue;
                }
                if client_went_first {
                    shared.counters.abandoned.fetch_add(1, Relaxed);
                    events::abandoned(&p, now);
                } else {
                    shared.counters.never_replied.fetch_add(1, Relaxed);
                    events::never_replied(&p, now, end);
                }
            }
        }
        let now = Instant::now();
        for (id, c) in shared.cursors.take_conn(self.id.conn) {
            if !c.awaiting {
                shared.counters.cursors_leaked.fetch_add(1, Relaxed);
                events::cursor_leaked(id, &c, now, "connection closed with the cursor open");
            }
        }
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.shared.tracker.unregister(self.id.conn);
    }
}

pub trait Observe {
    /// Looks at one whole frame. `Ok(Some(bytes))` replaces the frame with
    /// a rewritten one; an error closes the connection.
    fn observe(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, DecodeError>;
}
