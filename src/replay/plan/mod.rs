//! From capture records to what replay sends: per captured connection, the
//! requests in captured order, each as an uncompressed OP_MSG ready to
//! re-send, with what the capture says happened to it (latency to its last
//! reply, documents returned, error, cursor opened).
//!
//! Left out: redacted records, the handshake (hello/isMaster, which replay
//! does itself), authentication (replay logs in with its own credentials),
//! and frames that are not requests.

use crate::capture;
use crate::observe::meta::ClientMeta;
use crate::settings::policy::Policy;
use bson::raw::RawBsonRef;
use bson::{RawDocument, RawDocumentBuf};
use mongotap_proto::capture::{Direction, Record};
use mongotap_proto::command::is_sensitive_command;
use mongotap_proto::message::{with_message, Message};
use mongotap_proto::op_msg::{self, CHECKSUM_PRESENT, EXHAUST_ALLOWED, MORE_TO_COME};
use mongotap_proto::{CommandView, ReplyView, MAX_MESSAGE_LEN};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// What the capture recorded for one request.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// Request to last reply (the end of a moreToCome stream), when the
    /// capture holds a reply.
    pub latency_ns: Option<u64>,
    /// Documents in firstBatch/nextBatch over all replies.
    pub docs: u64,
    pub error: bool,
    /// The cursor id the last reply named (0: exhausted).
    pub cursor_id: Option<i64>,
}

/// One request to replay.
#[derive(Debug, Clone)]
pub struct Op {
    /// Capture time, ns since the capture started.
    pub at_ns: u64,
    /// The request as OP_MSG (request id patched when sent).
    pub frame: Vec<u8>,
    pub command: String,
    /// "db.collection", or "db" for commands without a collection.
    pub namespace: String,
    /// moreToCome on the request: no reply is expected (w:0 writes).
    pub fire_and_forget: bool,
    /// The rewrite rules changed the command (`--config`, enforce mode).
    pub rewritten: bool,
    pub captured: Captured,
}

/// One captured connection.
#[derive(Debug, Default)]
pub struct ConnPlan {
    pub conn: u64,
    pub client: String,
    pub app: String,
    pub ops: Vec<Op>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub conns: Vec<ConnPlan>,
    /// Capture time of the first replayed request.
    pub start_ns: u64,
    /// Cursor ids some replayed request opened in the capture, with the
    /// captured connection that opened each: a getMore on another
    /// connection waits for the live id instead of failing.
    pub opened_cursors: HashMap<i64, u64>,
    pub records: u64,
    /// Requests left out, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
}

impl Plan {
    pub fn ops(&self) -> usize {
        self.conns.iter().map(|c| c.ops.len()).sum()
    }
}

/// Reads the capture files in order and builds the plan. `policy` applies
/// `--config`'s rewrite rules.
pub fn load(files: &[PathBuf], policy: Option<&Policy>) -> Result<Plan, String> {
    let mut b = Builder {
        policy,
        ..Builder::default()
    };
    let records = capture::read_files(files, |r| b.record(r))?;
    let mut conns: Vec<ConnPlan> = b
        .conns
        .into_values()
        .filter(|c| !c.ops.is_empty())
        .collect();
    conns.sort_by_key(|c| c.ops.first().map_or(0, |o| o.at_ns));
    let start_ns = conns
        .iter()
        .filter_map(|c| c.ops.first().map(|o| o.at_ns))
        .min()
        .unwrap_or(0);
    let opened_cursors = conns
        .iter()
        .flat_map(|c| c.ops.iter().map(move |o| (c.conn, o)))
        .filter(|(_, o)| o.command != "getMore")
        .filter_map(|(conn, o)| Some((o.captured.cursor_id.filter(|&id| id != 0)?, conn)))
        .collect();
    Ok(Plan {
        conns,
        start_ns,
        opened_cursors,
        records,
        skipped: b.skipped,
    })
}

#[derive(Default)]
struct Builder<'p> {
    policy: Option<&'p Policy>,
    conns: HashMap<u64, ConnPlan>,
    /// (conn, id a reply will answer) -> (request index, its capture time).
    awaiting: HashMap<(u64, i32), (usize, u64)>,
    skipped: BTreeMap<&'static str, u64>,
}

impl Builder<'_> {
    fn skip(&mut self, why: &'static str) {
        *self.skipped.entry(why).or_default() += 1;
    }

    fn record(&mut self, r: &Record<'_>) {
        let conn = self.conns.entry(r.conn).or_insert_with(|| ConnPlan {
            conn: r.conn,
            client: r.client.to_string(),
            ..ConnPlan::default()
        });
        let Some(header) = mongotap_proto::Header::parse(r.frame) else {
            return;
        };
        if r.direction == Direction::ToClient {
            self.reply(r, header.request_id, header.response_to);
            return;
        }
        if r.redacted {
            self.skip("redacted");
            return;
        }
        let parsed = with_message(r.frame, MAX_MESSAGE_LEN, |_, _, m| request(m));
        let Ok(Some(req)) = parsed else {
            self.skip("not a command");
            return;
        };
        let Ok(view) = CommandView::parse(&req.body) else {
            self.skip("not a command");
            return;
        };
        if view.is_hello() {
            if conn.app.is_empty() {
                if let Some(meta) = ClientMeta::from_hello(&view) {
                    conn.app = meta.app.to_string();
                }
            }
            self.skip("handshake (hello)");
            return;
        }
        if is_sensitive_command(view.name) {
            self.skip("authentication");
            return;
        }
        let command = view.name.to_string();
        let db = view.db.unwrap_or("");
        let namespace = match view.collection() {
            Some(c) => format!("{db}.{c}"),
            None => db.to_string(),
        };
        let (body, rewritten) = prepare(&view, self.policy, &conn.app);
        let sequences: Vec<_> = req
            .sequences
            .iter()
            .map(|(identifier, documents)| op_msg::DocSequence {
                identifier,
                documents,
            })
            .collect();
        // No checksum (the frame is rebuilt anyway) and no unknown bits.
        let flags = req.flags & (MORE_TO_COME | EXHAUST_ALLOWED) & !CHECKSUM_PRESENT;
        let frame = op_msg::encode(0, 0, flags, &body, &sequences);
        let fire_and_forget = flags & MORE_TO_COME != 0;
        let index = conn.ops.len();
        conn.ops.push(Op {
            at_ns: r.mono_ns,
            frame,
            command,
            namespace,
            fire_and_forget,
            rewritten,
            captured: Captured::default(),
        });
        if !fire_and_forget {
            self.awaiting
                .insert((r.conn, header.request_id), (index, r.mono_ns));
        }
    }

    fn reply(&mut self, r: &Record<'_>, request_id: i32, response_to: i32) {
        let Some((index, sent)) = self.awaiting.remove(&(r.conn, response_to)) else {
            // The reply to a handshake, auth or an unrecorded request.
            return;
        };
        let Some(op) = self
            .conns
            .get_mut(&r.conn)
            .and_then(|c| c.ops.get_mut(index))
        else {
            return;
        };
        let parsed = with_message(r.frame, MAX_MESSAGE_LEN, |_, _, m| match m {
            Message::Msg(msg) => ReplyView::parse(msg.body)
                .ok()
                .map(|v| (v.batch_len(), v.is_error(), v.cursor_id, msg.more_to_come())),
            Message::Reply(reply) => reply
                .first()
                .and_then(|d| ReplyView::parse(d).ok())
                .map(|v| (v.batch_len(), v.is_error(), v.cursor_id, false)),
            _ => None,
        });
        let Ok(Some((docs, error, cursor_id, more))) = parsed else {
            return;
        };
        let c = &mut op.captured;
        c.docs += docs as u64;
        c.error |= error;
        if cursor_id.is_some() {
            c.cursor_id = cursor_id;
        }
        c.latency_ns = Some(r.mono_ns.saturating_sub(sent));
        if more {
            self.awaiting.insert((r.conn, request_id), (index, sent));
        }
    }
}

/// An owned request: body and document sequences, decompressed.
struct Request {
    flags: u32,
    body: RawDocumentBuf,
    sequences: Vec<(String, Vec<u8>)>,
}

fn request(m: Message<'_>) -> Option<Request> {
    match m {
        Message::Msg(msg) => Some(Request {
            flags: msg.flags,
            body: msg.body.to_owned(),
            sequences: msg
                .sequences
                .iter()
                .map(|s| (s.identifier.to_string(), s.documents.to_vec()))
                .collect(),
        }),
        // A legacy command: servers since 6.0 accept only OP_MSG, so it is
        // replayed as one, with `$db` from the namespace.
        Message::Query(q) if q.is_command() => {
            let mut body = RawDocumentBuf::new();
            for (k, v) in q.command().iter().flatten() {
                if k.as_str() != "$db" {
                    body.append(k, v);
                }
            }
            let db = bson::raw::CString::try_from(q.db()).ok()?;
            body.append(bson::raw::cstr!("$db"), db.as_str());
            Some(Request {
                flags: 0,
                body,
                sequences: Vec::new(),
            })
        }
        _ => None,
    }
}

/// The body to send: without `$clusterTime` (signed by the captured
/// cluster; another cluster rejects its signature), with the rewrite rules
/// applied when `--config` enables them.
fn prepare(view: &CommandView<'_>, policy: Option<&Policy>, app: &str) -> (RawDocumentBuf, bool) {
    let stripped = without(view.doc, &["$clusterTime"]);
    let Some(policy) = policy.filter(|p| p.mode == crate::config::RewriteMode::Enforce) else {
        return (stripped, false);
    };
    let Ok(view) = CommandView::parse(&stripped) else {
        return (stripped, false);
    };
    let name = view.explain_view().map_or(view.name, |e| e.name);
    let db = view.db.unwrap_or("");
    let collection = view.collection().unwrap_or("");
    let Some(rule) = policy.matching(name, db, collection, app) else {
        return (stripped, false);
    };
    match mongotap_proto::rewrite::rewrite(&view, &rule.limits) {
        Ok(Some(rw)) if !rw.changes.is_empty() => match RawDocumentBuf::from_bytes(rw.body) {
            Ok(body) => (body, true),
            Err(_) => (stripped, false),
        },
        _ => (stripped, false),
    }
}

/// A copy of `doc` without the top-level `keys`, elements copied raw.
pub fn without(doc: &RawDocument, keys: &[&str]) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    for (k, v) in doc.iter().flatten() {
        if !keys.contains(&k.as_str()) {
            out.append(k, v);
        }
    }
    out
}

/// A copy of `doc` with the first element's value replaced.
pub fn with_first(doc: &RawDocument, value: RawBsonRef<'_>) -> RawDocumentBuf {
    let mut out = RawDocumentBuf::new();
    for (i, (k, v)) in doc.iter().flatten().enumerate() {
        out.append(k, if i == 0 { value } else { v });
    }
    out
}

#[cfg(test)]
mod tests;
