//! Cursor ids across a replay: the ids the capture saw in replies are
//! mapped to the ids the live server returned, and getMore and killCursors
//! are rewritten to name live ones.

use super::plan::Op;
use bson::raw::{RawArrayBuf, RawBsonRef};
use mongotap_proto::op_msg;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

pub enum Remapped {
    Send(Vec<u8>),
    Skip(&'static str),
}

/// The frame to send: getMore and killCursors name live cursor ids.
pub async fn remap(op: &Op, conn: u64, cursors: &Cursors, wait: Duration) -> Remapped {
    if op.command != "getMore" && op.command != "killCursors" {
        return Remapped::Send(op.frame.clone());
    }
    let Ok(msg) = op_msg::parse(&op.frame) else {
        return Remapped::Send(op.frame.clone());
    };
    let body = if op.command == "getMore" {
        let Some(captured) = msg
            .body
            .iter()
            .next()
            .and_then(|r| r.ok())
            .and_then(|(_, v)| mongotap_proto::command::as_i64(v))
        else {
            return Remapped::Send(op.frame.clone());
        };
        match cursors.live(captured, conn, wait).await {
            Some(0) => return Remapped::Skip("no live cursor (exhausted or never opened)"),
            Some(live) => super::plan::with_first(msg.body, RawBsonRef::Int64(live)),
            // Not a cursor this replay opened: send it as captured.
            None => return Remapped::Send(op.frame.clone()),
        }
    } else {
        let Ok(Some(ids)) = msg.body.get_array("cursors").map(Some) else {
            return Remapped::Send(op.frame.clone());
        };
        let mut live_ids = RawArrayBuf::new();
        let mut any = false;
        for id in ids
            .into_iter()
            .flatten()
            .filter_map(mongotap_proto::command::as_i64)
        {
            match cursors.live(id, conn, wait).await {
                Some(0) => {}
                Some(live) => {
                    live_ids.push(live);
                    any = true;
                }
                None => {
                    live_ids.push(id);
                    any = true;
                }
            }
        }
        if !any {
            return Remapped::Skip("no live cursor (exhausted or never opened)");
        }
        let mut body = bson::RawDocumentBuf::new();
        for (k, v) in msg.body.iter().flatten() {
            if k.as_str() == "cursors" {
                body.append(k, &live_ids);
            } else {
                body.append(k, v);
            }
        }
        body
    };
    Remapped::Send(op_msg::encode(0, 0, msg.flags, &body, &msg.sequences))
}

/// Captured cursor id -> live cursor id (0: the live cursor is exhausted).
pub struct Cursors {
    map: Mutex<HashMap<i64, i64>>,
    changed: Notify,
    /// Ids some replayed request opened in the capture, and the captured
    /// connection that opened each.
    opened: HashMap<i64, u64>,
}

impl Cursors {
    pub fn new(opened: HashMap<i64, u64>) -> Cursors {
        Cursors {
            map: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            opened,
        }
    }

    pub fn learn(&self, captured: i64, live: i64) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(captured, live);
        self.changed.notify_waiters();
    }

    /// The live id for `captured`. When a replayed request on another
    /// connection than `conn` will open it but has not yet, waits up to
    /// `wait`. (On the same connection the opener ran first, or never will.)
    pub async fn live(&self, captured: i64, conn: u64, wait: Duration) -> Option<i64> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(&live) = self
                .map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&captured)
            {
                return Some(live);
            }
            if self.opened.get(&captured).is_none_or(|&c| c == conn) {
                return None;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}
