//! The in-flight table: every request that expects a reply, keyed by
//! (connection, requestID), until its last reply arrives.

use crate::meta::{ClientMeta, CommandSummary};
use dashmap::DashMap;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Pending {
    pub conn: u64,
    pub request_id: i32,
    pub client: SocketAddr,
    pub meta: Arc<ClientMeta>,
    pub summary: Arc<CommandSummary>,
    /// The command's `comment`, rendered (only kept when it is a string or
    /// when log_values is on: comments can carry values).
    pub comment: Option<Arc<str>>,
    /// When the proxy had the whole request.
    pub started: Instant,
    /// Awaitable hello, awaitData getMore, change stream: waiting is normal,
    /// so these are kept out of latency and stall detection.
    pub awaiting: bool,
    /// find with tailable+awaitData, or a $changeStream aggregate: its
    /// cursor's getMores will wait by design.
    pub opens_awaiting_cursor: bool,
    /// getMore's cursor id.
    pub cursor_id: Option<i64>,
    /// killCursors' ids.
    pub killed_cursors: Vec<i64>,
    /// `stalled` events already emitted for this command.
    pub stall_reports: u32,
    /// maxTimeMS was injected by a rewrite rule.
    pub injected_max_time: bool,
    /// A copy of a read-only aggregate's body, kept only when auto-explain
    /// is on, so the same pipeline can be explained.
    pub explain_body: Option<Arc<bson::RawDocumentBuf>>,
    /// Auto-explain already ran (or was skipped) for this command.
    pub explained: bool,
    /// Captured: `Some(redacted)`; its replies follow the same decision.
    pub capture: Option<bool>,
}

impl Pending {
    pub fn age_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }
}

/// One row of `/inflight`. Field names are a contract (design.md).
#[derive(Debug, Serialize)]
pub struct InflightRow {
    pub conn: u64,
    pub request_id: i32,
    pub client: String,
    pub app: String,
    pub driver: String,
    pub command: String,
    pub db: String,
    pub collection: String,
    pub stages: Vec<String>,
    pub max_time_ms: Option<i64>,
    pub allow_disk_use: Option<bool>,
    pub age_ms: u64,
    pub awaiting: bool,
    pub stalled: bool,
    pub comment: Option<String>,
}

#[derive(Default)]
pub struct Tracker {
    /// Every request and reply touches this table once; ahash keeps the
    /// lookups cheap (SipHash showed in profiles) and still keyed per
    /// process.
    table: DashMap<(u64, i32), Pending, ahash::RandomState>,
}

impl Tracker {
    pub fn insert(&self, p: Pending) {
        self.table.insert((p.conn, p.request_id), p);
    }

    pub fn remove(&self, conn: u64, request_id: i32) -> Option<Pending> {
        self.table.remove(&(conn, request_id)).map(|(_, p)| p)
    }

    /// Removes every entry of a connection (it closed). This walks the
    /// table, so callers skip it when the connection had nothing pending.
    pub fn drain_conn(&self, conn: u64) -> Vec<Pending> {
        let mut out = Vec::new();
        self.table.retain(|k, p| {
            if k.0 == conn {
                out.push(p.clone());
                false
            } else {
                true
            }
        });
        out.sort_by_key(|p| p.started);
        out
    }

    /// Commands that are really waiting on the server (awaiting ones excluded).
    pub fn inflight_count(&self) -> usize {
        self.table.iter().filter(|e| !e.awaiting).count()
    }

    /// Runs `f` on every entry with mutable access (the watchdog).
    pub fn for_each_mut(&self, mut f: impl FnMut(&mut Pending)) {
        for mut e in self.table.iter_mut() {
            f(e.value_mut());
        }
    }

    /// Every pending command, oldest first.
    pub fn snapshot(&self, stall_ms: u64) -> Vec<InflightRow> {
        let now = Instant::now();
        let mut rows: Vec<InflightRow> = self
            .table
            .iter()
            .map(|e| {
                let p = e.value();
                let age_ms = p.age_ms(now);
                InflightRow {
                    conn: p.conn,
                    request_id: p.request_id,
                    client: p.client.to_string(),
                    app: p.meta.app.to_string(),
                    driver: p.meta.driver_label(),
                    command: p.summary.command.to_string(),
                    db: p.summary.db.to_string(),
                    collection: p.summary.collection.to_string(),
                    stages: p.summary.stages.iter().map(|s| s.to_string()).collect(),
                    max_time_ms: p.summary.max_time_ms,
                    allow_disk_use: p.summary.allow_disk_use,
                    age_ms,
                    awaiting: p.awaiting,
                    stalled: !p.awaiting && age_ms >= stall_ms,
                    comment: p.comment.as_deref().map(str::to_string),
                }
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.age_ms));
        rows
    }
}
