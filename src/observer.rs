//! Per-frame observation for one connection: requests on the way up,
//! replies on the way down. Observation only reads the frame; it never
//! blocks on I/O and never changes what is forwarded.

use crate::config::RewriteMode;
use crate::cursors::CursorInfo;
use crate::error::Side;
use crate::events;
use crate::inspect::{with_message, Message};
use crate::meta::{ClientMeta, SummaryCache};
use crate::session::{ConnId, End};
use crate::shared::Shared;
use crate::stats::{Sample, SampleBuffer};
use crate::tracker::Pending;
use bson::raw::RawBsonRef;
use bson::RawDocument;
use mongotap_proto::capture::Direction;
use mongotap_proto::op_compressed::{self, Compressor};
use mongotap_proto::op_msg::{self, OpMsg};
use mongotap_proto::rewrite::{self, Rewritten};
use mongotap_proto::{CommandView, DecodeError, Header, ReplyView};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What both directions of one connection need to see. Both observers run
/// inside the session's single task, so the mutex is never contended.
pub struct ConnState {
    pub shared: Arc<Shared>,
    pub id: ConnId,
    /// Requests that expect a reply and have not had their last one yet.
    pending: AtomicUsize,
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
            client_label: Arc::from(id.client.to_string()),
            shared,
            id,
            pending: AtomicUsize::new(0),
            samples: Mutex::new(SampleBuffer::default()),
            slots: tokio::sync::Notify::new(),
            last_frame_ms: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Relaxed)
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

    fn touch(&self) {
        self.last_frame_ms
            .store(self.opened.elapsed().as_millis() as u64, Relaxed);
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
            for p in shared.tracker.drain_conn(self.id.conn) {
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

pub trait Observe {
    /// Looks at one whole frame. `Ok(Some(bytes))` replaces the frame with
    /// a rewritten one; an error closes the connection.
    fn observe(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, DecodeError>;
}

pub struct RequestObserver<'a> {
    conn: &'a ConnState,
    meta: Arc<ClientMeta>,
    handshake_seen: bool,
    summaries: SummaryCache,
}

impl<'a> RequestObserver<'a> {
    pub fn new(conn: &'a ConnState) -> Self {
        RequestObserver {
            conn,
            meta: Arc::new(ClientMeta::default()),
            handshake_seen: false,
            summaries: SummaryCache::default(),
        }
    }

    fn command(
        &mut self,
        request_id: i32,
        view: &CommandView<'_>,
        expects_reply: bool,
        db_fallback: &str,
        rewritten: Option<&Rewritten>,
        capture: Option<bool>,
    ) {
        let shared = &self.conn.shared;
        if !self.handshake_seen && view.is_hello() {
            self.handshake_seen = true;
            if let Some(meta) = ClientMeta::from_hello(view) {
                self.meta = Arc::new(meta);
            }
        }
        if !expects_reply {
            // moreToCome on a request: w:0 writes. No reply will come.
            shared.counters.fire_and_forget.fetch_add(1, Relaxed);
            return;
        }
        if !shared.config.watch.track {
            return;
        }
        let awaiting = view.is_awaitable_hello()
            || (view.name == "getMore"
                && view
                    .cursor_id
                    .is_some_and(|id| shared.cursors.is_awaiting(id)));
        let opens_awaiting_cursor = (view.name == "find" && view.tailable && view.await_data)
            || (view.name == "aggregate" && view.stages().next() == Some("$changeStream"));
        let mut summary = self.summaries.get(view, db_fallback);
        let mut injected_max_time = false;
        if let Some(rw) = rewritten.filter(|rw| !rw.changes.is_empty()) {
            // The tracker shows the limits in force, not the client's.
            let mut s = (*summary).clone();
            for c in &rw.changes {
                match c.field {
                    "maxTimeMS" => {
                        s.max_time_ms = Some(c.after);
                        injected_max_time = true;
                    }
                    _ => s.allow_disk_use = Some(true),
                }
            }
            summary = Arc::new(s);
        }
        let comment = view
            .comment
            .and_then(|c| render_comment(c, shared.config.watch.log_values));
        shared.tracker.insert(Pending {
            conn: self.conn.id.conn,
            request_id,
            client: self.conn.id.client,
            meta: self.meta.clone(),
            summary,
            comment,
            started: Instant::now(),
            awaiting,
            opens_awaiting_cursor,
            cursor_id: view.cursor_id,
            killed_cursors: view
                .cursors
                .map(|ids| {
                    ids.into_iter()
                        .flatten()
                        .filter_map(mongotap_proto::command::as_i64)
                        .collect()
                })
                .unwrap_or_default(),
            stall_reports: 0,
            injected_max_time,
            explain_body: shared.explainer.body_for(view),
            explained: false,
            capture,
        });
        self.conn.pending.fetch_add(1, Relaxed);
        if shared.config.watch.command_log {
            events::started(self.conn, request_id, view, &self.meta);
        }
    }
}

/// A comment is shown when it is a short string; other types can carry
/// values, so they only appear with `log_values = true`.
fn render_comment(c: RawBsonRef<'_>, log_values: bool) -> Option<Arc<str>> {
    const MAX: usize = 200;
    let text = match c {
        RawBsonRef::String(s) => s.to_string(),
        _ if log_values => format!("{c:?}"),
        _ => return Some(Arc::from("<non-string comment>")),
    };
    let mut end = text.len().min(MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(Arc::from(&text[..end]))
}

impl Observe for RequestObserver<'_> {
    fn observe(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
        self.conn.touch();
        let limit = self.conn.shared.config.proxy.max_frame_bytes;
        with_message(frame, limit, |header, compressor, message| match message {
            Message::Msg(msg) => {
                let view = CommandView::parse(msg.body)?;
                let captured = self.conn.capture(frame, Direction::ToServer, Some(&view));
                let rewritten = self.rewrite(header, compressor, &msg, &view)?;
                let applied = rewritten.as_ref().map(|(_, rw)| rw);
                let more = msg.more_to_come();
                self.command(header.request_id, &view, !more, "", applied, captured);
                Ok(rewritten.map(|(bytes, _)| bytes))
            }
            Message::Query(q) => {
                let view = CommandView::parse(q.command())?;
                let captured = self.conn.capture(frame, Direction::ToServer, Some(&view));
                self.note_legacy_rewrite(&view, q.db());
                self.command(header.request_id, &view, true, q.db(), None, captured);
                Ok(None)
            }
            Message::Reply(_) => {
                self.conn.capture(frame, Direction::ToServer, None);
                Ok(None)
            }
            Message::Unknown => {
                self.conn.capture(frame, Direction::ToServer, None);
                self.conn
                    .shared
                    .counters
                    .unknown_opcodes
                    .fetch_add(1, Relaxed);
                Ok(None)
            }
        })?
    }
}

impl RequestObserver<'_> {
    /// Legacy OP_QUERY commands are never rewritten; count the ones a rule
    /// would have applied to, so an operator can see what passed untouched.
    fn note_legacy_rewrite(&self, view: &CommandView<'_>, db: &str) {
        let shared = &self.conn.shared;
        let policy = shared.policy.load();
        let collection = view.collection().unwrap_or("");
        let rule = policy.matching(view.name, db, collection, &self.meta.app);
        if rule.is_some() && !rewrite::never_rewrite(view.name) {
            shared.counters.rewrites_skipped_op_query.fetch_add(1, Relaxed);
        }
    }

    /// Applies the first matching rewrite rule. Returns the new frame and
    /// what changed, or `None` to forward the original bytes. Unknown
    /// optional flag bits are cleared here too (they need a re-encode).
    fn rewrite(
        &self,
        header: &Header,
        compressor: Option<Compressor>,
        msg: &OpMsg<'_>,
        view: &CommandView<'_>,
    ) -> Result<Option<(Vec<u8>, Rewritten)>, DecodeError> {
        let shared = &self.conn.shared;
        let policy = shared.policy.load();
        let db = view.db.unwrap_or("");
        let collection = view.collection().unwrap_or("");
        // `{explain: {aggregate: ...}}` is governed by the rule for the
        // command it explains.
        let explained = view.explain_view();
        let name = explained.as_ref().map_or(view.name, |e| e.name);
        let rule = policy.matching(name, db, collection, &self.meta.app);
        let rewritten = match rule {
            Some(rule) => rewrite::rewrite(view, &rule.limits)?,
            None => None,
        };
        let unknown_flags = msg.unknown_optional_flags();
        if rewritten.is_none() && unknown_flags == 0 {
            return Ok(None);
        }
        let dry_run = policy.mode == RewriteMode::DryRun;
        if let Some(rw) = &rewritten {
            shared.count_rewrite(view.name, &rw.changes, dry_run);
            events::rewritten(
                self.conn,
                header.request_id,
                view,
                &self.meta,
                &rw.changes,
                dry_run,
            );
            if dry_run && unknown_flags == 0 {
                return Ok(None);
            }
        }
        let owned_body;
        let body = match (&rewritten, dry_run) {
            (Some(rw), false) => {
                owned_body = rw.body.as_slice();
                RawDocument::from_bytes(owned_body).map_err(|e| DecodeError::InvalidBson {
                    opcode: "OP_MSG",
                    what: "rewritten body",
                    reason: e.to_string(),
                })?
            }
            _ => msg.body,
        };
        let flags = msg.flags & !unknown_flags;
        let mut bytes = op_msg::encode(
            header.request_id,
            header.response_to,
            flags,
            body,
            &msg.sequences,
        );
        if let Some(c) = compressor {
            match op_compressed::compress(&bytes, c) {
                Ok(b) => bytes = b,
                // In-memory compression does not fail in practice; if it
                // does, the original bytes are the safe thing to send.
                Err(_) => return Ok(None),
            }
        }
        let applied = rewritten.filter(|_| !dry_run).unwrap_or_else(|| Rewritten {
            body: Vec::new(),
            changes: Vec::new(),
            max_time_ms: view.max_time_ms,
        });
        Ok(Some((bytes, applied)))
    }
}

pub struct ReplyObserver<'a> {
    conn: &'a ConnState,
}

impl<'a> ReplyObserver<'a> {
    pub fn new(conn: &'a ConnState) -> Self {
        ReplyObserver { conn }
    }

    fn reply(
        &mut self,
        frame: &[u8],
        (request_id, response_to): (i32, i32),
        reply: &ReplyView<'_>,
        more: bool,
    ) {
        let shared = &self.conn.shared;
        if !shared.config.watch.track {
            return;
        }
        let conn = self.conn.id.conn;
        let Some(mut p) = shared.tracker.remove(conn, response_to) else {
            shared.counters.unmatched_replies.fetch_add(1, Relaxed);
            self.conn.capture(frame, Direction::ToClient, None);
            return;
        };
        if let Some(redact) = p.capture {
            if self.conn.captured && shared.capture.is_on() {
                let client = &self.conn.client_label;
                shared
                    .capture
                    .record(conn, client, Direction::ToClient, frame, redact);
            }
        }
        if more {
            // Exhaust cursor or streaming hello: the next reply answers
            // this one. The command stays open until a reply without
            // moreToCome.
            p.request_id = request_id;
            shared.tracker.insert(p);
            return;
        }
        let _ = self
            .conn
            .pending
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        self.conn.slots.notify_one();
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(p.started);
        self.track_cursor(&p, reply, now);
        if let Some(hosts) = reply.hosts {
            events::warn_replica_set_hosts(shared, hosts);
        }
        if let Some(wire) = reply.max_wire_version {
            crate::compat::check(shared, &p.meta, wire);
        }
        if p.awaiting {
            return;
        }
        let error = reply.is_error();
        let micros = elapsed.as_micros() as u64;
        {
            let mut samples = self.conn.samples.lock().unwrap_or_else(|e| e.into_inner());
            samples.push(
                Sample {
                    summary: p.summary.clone(),
                    meta: p.meta.clone(),
                    micros,
                    error,
                },
                now,
                &shared.stats,
            );
        }
        if error {
            shared.counters.failed.fetch_add(1, Relaxed);
            events::failed(&p, reply, elapsed);
        } else if shared.config.watch.command_log {
            events::succeeded(&p, elapsed);
        }
        if !p.explained {
            shared.explainer.maybe_explain(&p, elapsed);
        }
        let slow_ms = shared.config.watch.slow_ms;
        if elapsed.as_millis() as u64 >= slow_ms || p.stall_reports > 0 {
            events::slow(&p, elapsed, p.stall_reports > 0);
        }
    }

    fn track_cursor(&self, p: &Pending, reply: &ReplyView<'_>, now: Instant) {
        let cursors = &self.conn.shared.cursors;
        match &*p.summary.command {
            "find" | "aggregate" => {
                if let Some(id) = reply.cursor_id.filter(|&id| id != 0) {
                    cursors.open(
                        id,
                        CursorInfo {
                            conn: p.conn,
                            summary: p.summary.clone(),
                            meta: p.meta.clone(),
                            awaiting: p.opens_awaiting_cursor,
                            batches: 1,
                            documents: reply.batch_len as u64,
                            get_mores: 0,
                            opened: now,
                            last_activity: now,
                        },
                    );
                }
            }
            "getMore" => {
                if let Some(id) = p.cursor_id {
                    let exhausted = reply.cursor_id == Some(0) || reply.is_failure();
                    cursors.batch(id, reply.batch_len, exhausted, now);
                }
            }
            "killCursors" => {
                for id in p.killed_cursors.iter() {
                    cursors.close(*id);
                }
            }
            _ => {}
        }
    }
}

impl Observe for ReplyObserver<'_> {
    fn observe(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
        self.conn.touch();
        let limit = self.conn.shared.config.proxy.max_frame_bytes;
        with_message(frame, limit, |header, _compressor, message| {
            match message {
                Message::Msg(msg) => {
                    let view = ReplyView::parse(msg.body)?;
                    let ids = (header.request_id, header.response_to);
                    self.reply(frame, ids, &view, msg.more_to_come());
                }
                Message::Reply(r) => {
                    let view = match r.first() {
                        Some(doc) => ReplyView::parse(doc)?,
                        None => ReplyView::default(),
                    };
                    let ids = (header.request_id, header.response_to);
                    self.reply(frame, ids, &view, false);
                }
                Message::Query(_) => {
                    self.conn.capture(frame, Direction::ToClient, None);
                }
                Message::Unknown => {
                    self.conn.capture(frame, Direction::ToClient, None);
                    self.conn
                        .shared
                        .counters
                        .unknown_opcodes
                        .fetch_add(1, Relaxed);
                }
            }
            Ok(None)
        })?
    }
}
