//! Open cursors, by id. getMore and killCursors may come on any connection
//! to the same upstream, so the table is per proxy (one upstream), not per
//! connection.

use crate::observe::meta::{ClientMeta, CommandSummary};
use dashmap::DashMap;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct CursorInfo {
    /// The connection that opened it.
    pub conn: u64,
    pub summary: Arc<CommandSummary>,
    pub meta: Arc<ClientMeta>,
    /// The query shape that opened the cursor: its getMores' documents
    /// count for it.
    pub query: Option<Arc<crate::observe::queries::QueryShape>>,
    /// Tailable awaitData or change stream: getMores wait by design.
    pub awaiting: bool,
    pub batches: u64,
    pub documents: u64,
    pub get_mores: u64,
    pub opened: Instant,
    pub last_activity: Instant,
}

#[derive(Debug, Serialize)]
pub struct CursorRow {
    pub cursor_id: i64,
    pub conn: u64,
    pub app: String,
    pub command: String,
    pub db: String,
    pub collection: String,
    pub stages: Vec<String>,
    pub batches: u64,
    pub documents: u64,
    pub get_mores: u64,
    pub age_ms: u64,
    pub idle_ms: u64,
    pub awaiting: bool,
}

/// The command summary, client and query shape that opened a cursor.
pub type Opener = (
    Arc<CommandSummary>,
    Arc<ClientMeta>,
    Arc<crate::observe::queries::QueryShape>,
);

#[derive(Default)]
pub struct Cursors {
    table: DashMap<i64, CursorInfo>,
}

impl Cursors {
    pub fn open(&self, id: i64, info: CursorInfo) {
        self.table.insert(id, info);
    }

    pub fn is_awaiting(&self, id: i64) -> bool {
        self.table.get(&id).is_some_and(|c| c.awaiting)
    }

    /// A getMore's reply: one more batch, and the cursor closes when the
    /// server says id 0. Returns what opened the cursor when a query shape
    /// did (not for cursors that wait by design), so the batch's documents
    /// count for that shape.
    pub fn batch(&self, id: i64, docs: usize, exhausted: bool, now: Instant) -> Option<Opener> {
        let opener = |c: &CursorInfo| {
            let query = c.query.as_ref().filter(|_| !c.awaiting)?;
            Some((c.summary.clone(), c.meta.clone(), query.clone()))
        };
        if exhausted {
            return self.table.remove(&id).and_then(|(_, c)| opener(&c));
        }
        let mut c = self.table.get_mut(&id)?;
        c.batches += 1;
        c.get_mores += 1;
        c.documents += docs as u64;
        c.last_activity = now;
        opener(&c)
    }

    pub fn close(&self, id: i64) -> Option<CursorInfo> {
        self.table.remove(&id).map(|(_, c)| c)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Cursors a closing connection left open, removed from the table: the
    /// server drops them with the connection's session only much later, and
    /// nothing can getMore them through this connection any more.
    pub fn take_conn(&self, conn: u64) -> Vec<(i64, CursorInfo)> {
        let mut out = Vec::new();
        self.table.retain(|id, c| {
            if c.conn == conn {
                out.push((*id, c.clone()));
                false
            } else {
                true
            }
        });
        out
    }

    /// Cursors idle longer than `idle_ms`, removed from the table.
    pub fn take_idle(&self, idle_ms: u64, now: Instant) -> Vec<(i64, CursorInfo)> {
        let mut out = Vec::new();
        self.table.retain(|id, c| {
            let idle = now.saturating_duration_since(c.last_activity).as_millis() as u64;
            if !c.awaiting && idle >= idle_ms {
                out.push((*id, c.clone()));
                false
            } else {
                true
            }
        });
        out
    }

    pub fn snapshot(&self) -> Vec<CursorRow> {
        let now = Instant::now();
        let mut rows: Vec<CursorRow> = self
            .table
            .iter()
            .map(|e| {
                let c = e.value();
                CursorRow {
                    cursor_id: *e.key(),
                    conn: c.conn,
                    app: c.meta.app.to_string(),
                    command: c.summary.command.to_string(),
                    db: c.summary.db.to_string(),
                    collection: c.summary.collection.to_string(),
                    stages: c.summary.stages.iter().map(|s| s.to_string()).collect(),
                    batches: c.batches,
                    documents: c.documents,
                    get_mores: c.get_mores,
                    age_ms: now.saturating_duration_since(c.opened).as_millis() as u64,
                    idle_ms: now.saturating_duration_since(c.last_activity).as_millis() as u64,
                    awaiting: c.awaiting,
                }
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.idle_ms));
        rows
    }
}
