//! Capture on one connection, both ways. A reply is recorded the way its
//! request was (in full, redacted, or not at all), so capture remembers its
//! own decisions by requestID instead of leaving them on the tracker's
//! entries: commands are captured whole whether or not they are tracked.

use super::ConnState;
use mongotap_proto::capture::Direction;
use mongotap_proto::CommandView;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

/// One connection's side of capture.
pub(super) struct ConnCapture {
    /// This connection was picked by capture sampling.
    sampled: bool,
    /// The client address, rendered once for capture records.
    client_label: Arc<str>,
    /// Captured requests still waiting for their last reply. Both
    /// observers run inside the session's single task: never contended.
    links: Mutex<Links>,
    /// The most links kept (proxy.max_inflight_per_connection): untracked
    /// clients are not held back at that cap, and a server that never
    /// answers must not grow this.
    max_links: usize,
}

/// Whether each captured request was redacted, by requestID, for the
/// capture run `generation`.
#[derive(Default)]
struct Links {
    generation: u64,
    redacted: HashMap<i32, bool, ahash::RandomState>,
}

impl ConnCapture {
    pub(super) fn new(sampled: bool, client: std::net::SocketAddr, max_links: usize) -> Self {
        ConnCapture {
            sampled,
            client_label: Arc::from(client.to_string()),
            links: Mutex::default(),
            max_links,
        }
    }

    /// The links of capture run `generation`: those of an earlier run are
    /// dropped, since their requests went to another file.
    fn links(&self, generation: u64) -> MutexGuard<'_, Links> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if links.generation != generation {
            links.redacted.clear();
            links.generation = generation;
        }
        links
    }
}

impl ConnState {
    /// A frame whose opcode mongotap does not parse, either way: forwarded
    /// as it is, captured like any frame, and counted.
    pub(super) fn unknown_opcode(&self, frame: &[u8], direction: Direction) {
        self.capture(frame, direction, None);
        self.obs.counters.unknown_opcodes.fetch_add(1, Relaxed);
    }

    /// Captures `frame` when capture is on, this connection is sampled and
    /// the command passes the filters (without a view, when nothing is
    /// filtered). Returns `Some(redacted)` when it was captured.
    pub(super) fn capture(
        &self,
        frame: &[u8],
        direction: Direction,
        view: Option<&CommandView<'_>>,
    ) -> Option<bool> {
        let capture = &self.obs.capture;
        if !self.cap.sampled || !capture.is_on() {
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
        let client = &self.cap.client_label;
        capture.record(self.id.conn, client, direction, frame, redact);
        Some(redact)
    }

    /// Captures a request and, when it expects a reply, remembers how, for
    /// the reply.
    pub(super) fn capture_request(
        &self,
        frame: &[u8],
        view: &CommandView<'_>,
        request_id: i32,
        expects_reply: bool,
    ) {
        let Some(redact) = self.capture(frame, Direction::ToServer, Some(view)) else {
            return;
        };
        if !expects_reply {
            return;
        }
        let capture = &self.obs.capture;
        let mut links = self.cap.links(capture.generation());
        if links.redacted.len() >= self.cap.max_links && !links.redacted.contains_key(&request_id) {
            // The reply will not be recorded: count it as a dropped record.
            capture.dropped.fetch_add(1, Relaxed);
            return;
        }
        links.redacted.insert(request_id, redact);
    }

    /// Captures a reply the way its request was captured. A reply whose
    /// request capture did not record is left out (its request may have
    /// been sensitive, sent before capture started), unless it answers no
    /// request at all (`answers_nothing`: a w:0 write some servers answer):
    /// then it is captured like any frame without a command.
    pub(super) fn capture_reply(
        &self,
        frame: &[u8],
        (request_id, response_to): (i32, i32),
        more: bool,
        answers_nothing: impl FnOnce() -> bool,
    ) {
        let capture = &self.obs.capture;
        if !self.cap.sampled || !capture.is_on() {
            return;
        }
        let linked = {
            let mut links = self.cap.links(capture.generation());
            let linked = links.redacted.remove(&response_to);
            if let (Some(redact), true) = (linked, more) {
                // moreToCome: the next reply answers this one.
                links.redacted.insert(request_id, redact);
            }
            linked
        };
        match linked {
            Some(redact) => {
                let client = &self.cap.client_label;
                capture.record(self.id.conn, client, Direction::ToClient, frame, redact);
            }
            None if answers_nothing() => {
                self.capture(frame, Direction::ToClient, None);
            }
            None => {}
        }
    }
}
