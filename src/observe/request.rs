//! The request side: handshake attribution, tracking, rewriting and
//! capture of every command a client sends.

use super::{ConnState, Observe};
use crate::config::RewriteMode;
use crate::observe::events;
use crate::observe::meta::{ClientMeta, SummaryCache};
use crate::observe::queries::ShapeCache;
use crate::observe::tracker::{Pending, RequestFacts};
use crate::otel::TraceParent;
use bson::raw::RawBsonRef;
use mongotap_proto::capture::Direction;
use mongotap_proto::message::{with_message, Message};
use mongotap_proto::op_compressed::{self, Compressor};
use mongotap_proto::op_msg::{self, OpMsg};
use mongotap_proto::rewrite::{self, Changes, FieldChange};
use mongotap_proto::{CommandView, DecodeError, Header};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

pub struct RequestObserver<'a> {
    conn: &'a ConnState,
    meta: Arc<ClientMeta>,
    handshake_seen: bool,
    summaries: SummaryCache,
    shapes: ShapeCache,
    /// When the frame being observed was complete: a command's start.
    received: Instant,
}

impl<'a> RequestObserver<'a> {
    pub fn new(conn: &'a ConnState) -> Self {
        RequestObserver {
            conn,
            meta: Arc::new(ClientMeta::default()),
            handshake_seen: false,
            summaries: SummaryCache::default(),
            shapes: ShapeCache::default(),
            received: Instant::now(),
        }
    }

    fn command(
        &mut self,
        request_id: i32,
        view: &CommandView<'_>,
        // The OP_MSG the command came in (its document sequences and
        // trace context), or `None` for a legacy OP_QUERY.
        msg: Option<&OpMsg<'_>>,
        expects_reply: bool,
        db_fallback: &str,
        changes: &[FieldChange],
    ) {
        let sequences = msg.map_or(&[][..], |m| &m.sequences[..]);
        let trace_context = msg.and_then(|m| m.trace_context);
        let obs = &self.conn.obs;
        if expects_reply {
            self.conn.note_member_request(request_id, view);
        }
        if !self.handshake_seen && view.is_hello() {
            self.handshake_seen = true;
            if let Some(meta) = ClientMeta::from_hello(view) {
                self.meta = obs.clients.intern(meta);
                self.conn.inflight.set_app(self.meta.app.clone());
            }
        }
        if !expects_reply {
            // moreToCome on a request: w:0 writes. No reply will come.
            obs.counters.fire_and_forget.fetch_add(1, Relaxed);
            self.conn
                .note_unanswerable(request_id, super::Unmatched::MoreToComeRequest);
            return;
        }
        if !obs.watch.track {
            return;
        }
        let awaiting = view.is_awaitable_hello()
            || (view.name == "getMore"
                && view.cursor_id.is_some_and(|id| obs.cursors.is_awaiting(id)));
        // The tracker shows the limits in force, not the client's.
        let summary = self
            .summaries
            .get(view, db_fallback, changes, &obs.summaries);
        // The summary already holds the stage names: no second pass over
        // the pipeline.
        let opens_awaiting_cursor = (view.name == "find" && view.tailable && view.await_data)
            || (view.name == "aggregate"
                && summary.stages.first().map(|s| &**s) == Some("$changeStream"));
        let injected_max_time = changes.iter().any(|c| c.field == "maxTimeMS");
        // Awaiting commands are kept out of latency, so out of shapes too.
        let query = if awaiting {
            None
        } else {
            self.shapes.get(view, sequences, &obs.query_shapes)
        };
        let comment = view
            .comment
            .and_then(|c| render_comment(c, obs.watch.log_values));
        let facts = RequestFacts {
            conn: self.conn.id.conn,
            client: self.conn.id.client,
            member: self.conn.id.member.as_ref().map(|m| m.name.clone()),
            meta: self.meta.clone(),
            summary,
            comment,
            started: self.received,
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
            injected_max_time,
            query,
            rewritten: !changes.is_empty(),
            query_text: (obs.watch.log_values && obs.otel.is_some() && !awaiting)
                .then(|| query_text(view))
                .flatten(),
            // Only with [otel] on; awaiting commands wait by design and
            // get no span.
            span: obs.otel.as_ref().filter(|_| !awaiting).map(|otel| {
                let from_section = trace_context
                    .and_then(|d| d.get_document("otel").ok())
                    .and_then(|d| d.get_str("traceparent").ok())
                    .and_then(TraceParent::parse);
                otel.new_ids(from_section.or_else(|| view.comment.and_then(traceparent)))
            }),
            explain_body: obs.explain.as_ref().and_then(|e| e.body_for(view)),
            diagnose: obs.diagnose.as_ref().and_then(|d| d.slot_for(view)),
        };
        let replaced = self.conn.inflight.insert(Pending::new(request_id, facts));
        if replaced.is_some() {
            self.conn
                .note_unanswerable(request_id, super::Unmatched::RequestIdReused);
        }
        if obs.watch.command_log {
            events::started(self.conn, request_id, view, &self.meta);
        }
    }
}

/// The app's trace, from a `comment` that is a W3C traceparent string or a
/// document with a `traceparent` string field.
///
/// The proposed OP_MSG section kind 3 (`{otel: {traceparent}}`) is read
/// the same way, first (`command`). The current OP_MSG spec says a section
/// kind the receiver does not know must close the connection, so servers
/// reject it today; mongotap forwards it as sent and lets the server decide.
fn traceparent(comment: RawBsonRef<'_>) -> Option<TraceParent> {
    match comment {
        RawBsonRef::String(s) => TraceParent::parse(s),
        RawBsonRef::Document(d) => match d.get("traceparent") {
            Ok(Some(RawBsonRef::String(s))) => TraceParent::parse(s),
            _ => None,
        },
        _ => None,
    }
}

/// The command body without the driver's session and cluster fields, as
/// relaxed extended JSON, cut at 4 KiB; `None` for authentication commands.
fn query_text(view: &CommandView<'_>) -> Option<Arc<str>> {
    const MAX: usize = 4096;
    const SKIP: [&str; 4] = ["lsid", "$clusterTime", "$db", "txnNumber"];
    if view.is_sensitive() {
        return None;
    }
    let mut doc = bson::Document::new();
    for (key, value) in view.doc.iter().flatten() {
        let key = key.as_str();
        if SKIP.contains(&key) {
            continue;
        }
        doc.insert(key, bson::Bson::try_from(value).ok()?);
    }
    let text = bson::Bson::Document(doc).into_relaxed_extjson().to_string();
    let mut end = text.len().min(MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(Arc::from(&text[..end]))
}

/// A comment is shown when it is a short string; other types can carry
/// values, so they only appear with `log_values = true`.
fn render_comment(c: RawBsonRef<'_>, log_values: bool) -> Option<Arc<str>> {
    const MAX: usize = 200;
    let text = match c {
        RawBsonRef::String(s) => s.to_string(),
        // Relaxed extended JSON, as an operator would write the value
        // (the Debug form of a raw document is its bytes in hex).
        _ if log_values => match bson::Bson::try_from(c) {
            Ok(b) => b.into_relaxed_extjson().to_string(),
            Err(_) => "<unreadable comment>".to_string(),
        },
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
        self.received = self.conn.touch();
        let limit = self.conn.obs.max_frame_bytes;
        with_message(frame, limit, |header, compressor, message| match message {
            Message::Msg(msg) => {
                let view = CommandView::parse(msg.body)?;
                let more = msg.more_to_come();
                // The frame as the client sent it, before any rewrite.
                self.conn
                    .capture_request(frame, &view, header.request_id, !more);
                let rewritten = self.rewrite(header, compressor, &msg, &view)?;
                let changes = rewritten.as_ref().map_or(&[][..], |(_, c)| c);
                self.command(header.request_id, &view, Some(&msg), !more, "", changes);
                Ok(rewritten.map(|(bytes, _)| bytes))
            }
            Message::Query(q) => {
                let view = CommandView::parse(q.command())?;
                self.conn
                    .capture_request(frame, &view, header.request_id, true);
                self.note_legacy_rewrite(&view, q.db());
                self.command(header.request_id, &view, None, true, q.db(), &[]);
                Ok(None)
            }
            Message::Reply(_) => {
                self.conn.capture(frame, Direction::ToServer, None);
                Ok(None)
            }
            Message::Unknown => {
                self.conn.unknown_opcode(frame, Direction::ToServer);
                Ok(None)
            }
        })?
    }
}

impl RequestObserver<'_> {
    /// Legacy OP_QUERY commands are never rewritten; count the ones a rule
    /// would have applied to, so an operator can see what passed untouched.
    fn note_legacy_rewrite(&self, view: &CommandView<'_>, db: &str) {
        let obs = &self.conn.obs;
        let settings = obs.settings.load();
        let policy = &settings.policy;
        let collection = view.collection().unwrap_or("");
        let rule = policy.matching(view.name, db, collection, &self.meta.app);
        if rule.is_some() && !rewrite::never_rewrite(view.name) {
            obs.counters.rewrites_skipped_op_query.fetch_add(1, Relaxed);
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
    ) -> Result<Option<(Vec<u8>, Changes)>, DecodeError> {
        let obs = &self.conn.obs;
        let settings = obs.settings.load();
        let policy = &settings.policy;
        let db = view.db.unwrap_or("");
        let collection = view.collection().unwrap_or("");
        // `{explain: {aggregate: ...}}` is governed by the rule for the
        // command it explains.
        let explained = view.explain_view();
        let name = explained.as_ref().map_or(view.name, |e| e.name);
        let rule = policy.matching(name, db, collection, &self.meta.app);
        let plan = rule.and_then(|rule| rewrite::plan(view, &rule.limits));
        let unknown_flags = msg.unknown_optional_flags();
        if plan.is_none() && unknown_flags == 0 {
            return Ok(None);
        }
        // The encoder does not write a kind-3 section (a proposal, see
        // op_msg.rs) back: such a frame goes through as the client sent it.
        if msg.trace_context.is_some() {
            return Ok(None);
        }
        let dry_run = policy.mode == RewriteMode::DryRun;
        if let Some(plan) = &plan {
            obs.count_rewrite(view.name, &plan.changes, dry_run);
            events::rewritten(
                self.conn,
                header.request_id,
                view,
                &self.meta,
                &plan.changes,
                dry_run,
            );
            if dry_run && unknown_flags == 0 {
                return Ok(None);
            }
        }
        let plan = plan.filter(|_| !dry_run);
        let flags = msg.flags & !unknown_flags;
        let (id, to) = (header.request_id, header.response_to);
        // The new body is spliced straight into the outgoing frame.
        let mut bytes = match &plan {
            Some(plan) => {
                op_msg::encode_with(id, to, flags, plan.body_len(view), &msg.sequences, |out| {
                    plan.write_body(view, out)
                })?
            }
            None => op_msg::encode(id, to, flags, msg.body, &msg.sequences),
        };
        if let Some(c) = compressor {
            match op_compressed::compress(&bytes, c) {
                Ok(b) => bytes = b,
                // In-memory compression does not fail in practice; if it
                // does, the original bytes are the safe thing to send.
                Err(_) => return Ok(None),
            }
        }
        let applied = plan.map(|p| p.changes).unwrap_or_default();
        Ok(Some((bytes, applied)))
    }
}
