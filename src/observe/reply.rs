//! The reply side: correlation by responseTo, latency samples, failures,
//! cursors and capture of every reply.

use super::{ConnState, Observe};
use crate::observe::cursors::CursorInfo;
use crate::observe::stats::Sample;
use crate::observe::tracker::RequestFacts;
use crate::observe::Trigger;
use crate::observe::{events, spans};
use mongotap_proto::capture::Direction;
use mongotap_proto::message::{with_message, Message};
use mongotap_proto::{DecodeError, ReplyView};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

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
        now: Instant,
    ) {
        let obs = &self.conn.obs;
        let tracked = obs.watch.track;
        let pending = if tracked {
            self.conn.inflight.remove(response_to)
        } else {
            None
        };
        // Capture keeps its own record of what it captured, so replies are
        // captured the same with tracking off. Whether a reply answers no
        // request at all, the tracker knows; without it, only a w:0 write
        // is known to expect nothing.
        self.conn
            .capture_reply(frame, (request_id, response_to), more, || {
                if tracked {
                    pending.is_none()
                } else {
                    self.conn.why_unmatched(response_to) == super::Unmatched::MoreToComeRequest
                }
            });
        if !tracked {
            return;
        }
        let Some(mut p) = pending else {
            obs.counters.unmatched_replies.fetch_add(1, Relaxed);
            if events::debug_enabled() {
                let why = self.conn.why_unmatched(response_to);
                events::unmatched_reply(&self.conn.id, (request_id, response_to), reply, why);
            }
            return;
        };
        if more {
            // Exhaust cursor or streaming hello: the next reply answers
            // this one. The command stays open until a reply without
            // moreToCome.
            p.request_id = request_id;
            self.conn.inflight.insert(p);
            return;
        }
        // Every waiter: the client's reader held at max_inflight, and a
        // draining session waiting for its last reply.
        self.conn.slots.notify_waiters();
        let facts = p.facts();
        let elapsed = now.saturating_duration_since(facts.started);
        // Counted once, for the cursor table and the query shape.
        let batch_len = match &*facts.summary.command {
            "find" | "aggregate" | "getMore" => reply.batch_len(),
            _ => 0,
        };
        self.track_cursor(facts, reply, batch_len, now);
        if let Some(hosts) = reply.hosts {
            events::warn_replica_set_hosts(obs, hosts);
        }
        if let Some(id) = reply.connection_id {
            self.conn.inflight.set_server_conn_id(id);
        }
        if let Some(wire) = reply.max_wire_version {
            crate::observe::compat::check(obs, &facts.meta, wire);
        }
        if facts.awaiting {
            return;
        }
        if let Some(otel) = &obs.otel {
            spans::command(otel, obs, &p, spans::End::Reply(reply), now);
        }
        let error = reply.is_error();
        let micros = elapsed.as_micros() as u64;
        {
            let docs = match &*facts.summary.command {
                "count" => reply.n.unwrap_or(0).max(0) as u64,
                _ => batch_len as u64,
            };
            let sample = Sample {
                summary: &facts.summary,
                meta: &facts.meta,
                query: facts.query.as_ref(),
                micros,
                error,
                docs,
            };
            let mut samples = self.conn.samples.lock().unwrap_or_else(|e| e.into_inner());
            samples.record(sample, now, &obs.stats);
        }
        if error {
            obs.counters.failed.fetch_add(1, Relaxed);
            events::failed(&p, reply, elapsed);
        } else if obs.watch.command_log {
            events::succeeded(&p, elapsed);
        }
        // The watchdog's notes, final now that the entry is out of the table.
        if !p.watch().explained() {
            if let Some(explain) = &obs.explain {
                explain.maybe_explain(p.request_id, facts, elapsed);
            }
        }
        if let (Some(d), Some(_)) = (&obs.diagnose, &facts.diagnose) {
            let error = error.then(|| {
                let code = reply.code.unwrap_or(0);
                let name = reply.code_name.map_or_else(
                    || mongotap_proto::reply::code_name(code).to_string(),
                    str::to_string,
                );
                (code, name)
            });
            let elapsed_ms = elapsed.as_millis() as u64;
            d.diagnose(p.request_id, facts, Trigger::Finished { elapsed_ms, error });
        }
        let was_stalled = p.watch().stall_reports() > 0;
        let slow_ms = obs.watch.slow_ms;
        if elapsed.as_millis() as u64 >= slow_ms || was_stalled {
            events::slow(&p, elapsed, was_stalled);
        }
    }

    fn track_cursor(
        &self,
        p: &RequestFacts,
        reply: &ReplyView<'_>,
        batch_len: usize,
        now: Instant,
    ) {
        let cursors = &self.conn.obs.cursors;
        match &*p.summary.command {
            "find" | "aggregate" => {
                if let Some(id) = reply.cursor_id.filter(|&id| id != 0) {
                    cursors.open(
                        id,
                        CursorInfo {
                            conn: p.conn,
                            summary: p.summary.clone(),
                            meta: p.meta.clone(),
                            query: p.query.clone(),
                            awaiting: p.opens_awaiting_cursor,
                            batches: 1,
                            documents: batch_len as u64,
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
                    let opener = cursors.batch(id, batch_len, exhausted, now);
                    // The documents count for the shape that opened it.
                    if let Some((summary, meta, query)) = opener {
                        let sample = Sample {
                            summary: &summary,
                            meta: &meta,
                            query: Some(&query),
                            micros: 0,
                            error: false,
                            docs: batch_len as u64,
                        };
                        let mut samples =
                            self.conn.samples.lock().unwrap_or_else(|e| e.into_inner());
                        samples.docs(sample, now, &self.conn.obs.stats);
                    }
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
        let now = self.conn.touch();
        let limit = self.conn.obs.max_frame_bytes;
        let (ids, more) = with_message(frame, limit, |header, _compressor, message| {
            let ids = (header.request_id, header.response_to);
            match message {
                Message::Msg(msg) => {
                    let view = ReplyView::parse(msg.body)?;
                    let more = msg.more_to_come();
                    self.reply(frame, ids, &view, more, now);
                    Ok((ids, more))
                }
                Message::Reply(r) => {
                    let view = match r.first() {
                        Some(doc) => ReplyView::parse(doc)?,
                        None => ReplyView::default(),
                    };
                    self.reply(frame, ids, &view, false, now);
                    Ok((ids, false))
                }
                Message::Query(_) => {
                    self.conn.capture(frame, Direction::ToClient, None);
                    Ok((ids, false))
                }
                Message::Unknown => {
                    self.conn.unknown_opcode(frame, Direction::ToClient);
                    Ok((ids, false))
                }
            }
        })??;
        // Observed as the server sent it; rewritten (replica-set mode) as
        // the client must see it.
        self.conn.rewrite_member_reply(frame, ids, more)
    }
}
