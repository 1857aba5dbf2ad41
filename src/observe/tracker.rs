//! The in-flight tables: every request that expects a reply, per
//! connection and keyed by requestID, until its last reply arrives.

use crate::observe::meta::{ClientMeta, CommandSummary};
use dashmap::DashMap;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a request said, and when: taken from the frame once and never
/// changed after, so anyone may hold a copy (the watchdog copies the ones
/// it reports) without it going stale.
#[derive(Debug, Clone)]
pub struct RequestFacts {
    pub conn: u64,
    pub client: SocketAddr,
    /// The replica-set member the connection goes to, in replica-set mode.
    pub member: Option<Arc<str>>,
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
    /// maxTimeMS was injected by a rewrite rule.
    pub injected_max_time: bool,
    /// The query shape (find, aggregate, count, distinct, update, delete,
    /// findAndModify): latency, errors and documents are kept per shape.
    pub query: Option<Arc<crate::observe::queries::QueryShape>>,
    /// A rewrite rule changed the command (enforced, not dry-run).
    pub rewritten: bool,
    /// The command's span ids, with `[otel]` on (and not awaiting).
    pub span: Option<crate::otel::SpanIds>,
    /// The command as relaxed extended JSON, for the span's `db.query.text`:
    /// only with `[otel]` on and `watch.log_values = true`, never for
    /// authentication commands.
    pub query_text: Option<Arc<str>>,
    /// A copy of a read-only aggregate's body, kept only when auto-explain
    /// is on, so the same pipeline can be explained.
    pub explain_body: Option<Arc<bson::RawDocumentBuf>>,
    /// An aggregate's body and diagnosis, kept only when `[diagnose]` is on.
    pub diagnose: Option<Arc<crate::observe::DiagnoseSlot>>,
}

impl RequestFacts {
    pub fn age_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }
}

/// The watchdog's notes on one pending command.
///
/// They live in the entry rather than in a table of the watchdog's own, so
/// they come and go with the command (also when a moreToCome reply moves it
/// to a new requestID) and nothing has to be pruned or re-keyed. Only the
/// watchdog writes them, from its one task, so a load then a store cannot
/// race; the session reads them once it has taken the entry out of the
/// table, and the table's lock orders the watchdog's last write before
/// that read.
#[derive(Debug, Default)]
pub struct WatchState {
    /// `stalled` events already emitted for this command.
    stall_reports: AtomicU32,
    /// Auto-explain already ran (or was skipped) for this command.
    explained: AtomicBool,
}

impl WatchState {
    pub fn stall_reports(&self) -> u32 {
        self.stall_reports.load(Relaxed)
    }

    pub fn explained(&self) -> bool {
        self.explained.load(Relaxed)
    }

    /// The watchdog reported one more stall; returns the report's number.
    pub fn note_stall(&self) -> u32 {
        let n = self.stall_reports() + 1;
        self.stall_reports.store(n, Relaxed);
        n
    }

    /// The watchdog started (or skipped) this command's explain.
    pub fn note_explained(&self) {
        self.explained.store(true, Relaxed);
    }
}

/// One entry of a connection's in-flight table: the request's facts, the
/// watchdog's notes, and the id the next reply will answer.
#[derive(Debug)]
pub struct Pending {
    /// The request's own id, then each moreToCome reply's: the session
    /// moves the entry as the stream goes on (the table's key).
    pub request_id: i32,
    facts: RequestFacts,
    watch: WatchState,
}

impl Pending {
    pub fn new(request_id: i32, facts: RequestFacts) -> Pending {
        Pending {
            request_id,
            facts,
            watch: WatchState::default(),
        }
    }

    pub fn facts(&self) -> &RequestFacts {
        &self.facts
    }

    pub fn watch(&self) -> &WatchState {
        &self.watch
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The `diagnosed` event's findings, once the diagnosis is ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<serde_json::Value>,
}

/// One connection's pending commands, keyed by requestID. Its session
/// inserts and removes; the watchdog and the admin endpoint reach it through
/// the `Tracker`, once a tick or once a scrape, so the lock is effectively
/// uncontended and the per-request work stays in the connection's own memory.
#[derive(Default)]
pub struct ConnInflight {
    entries: Mutex<HashMap<i32, Pending, ahash::RandomState>>,
    /// The table's length, written under its lock after every change: the
    /// session reads it for every frame (the in-flight cap, drain, idle)
    /// without taking the lock, and it cannot drift from the table.
    len: AtomicUsize,
    /// Cancelled by the admin endpoint's kill switch: the session's control
    /// branch ends the connection, both sides, at once.
    kill: CancellationToken,
    /// The server's id of the upstream connection (hello's
    /// `connectionId`), 0 until a hello reply names it: the kill switch
    /// finds the operation by it for `killOp`.
    server_conn_id: AtomicI64,
    /// The handshake's appName, once the client sent it: `/connections`
    /// counts open connections by app.
    app: std::sync::OnceLock<Arc<str>>,
}

impl ConnInflight {
    /// Records the connection's appName (the first handshake wins).
    pub fn set_app(&self, app: Arc<str>) {
        let _ = self.app.set(app);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, Pending, ahash::RandomState>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a pending command. A requestID the client reuses while its
    /// first command is pending replaces that entry, which is returned:
    /// one reply can answer only one of them.
    pub fn insert(&self, p: Pending) -> Option<Pending> {
        let mut entries = self.lock();
        let replaced = entries.insert(p.request_id, p);
        self.len.store(entries.len(), Relaxed);
        replaced
    }

    pub fn remove(&self, request_id: i32) -> Option<Pending> {
        let mut entries = self.lock();
        let removed = entries.remove(&request_id);
        self.len.store(entries.len(), Relaxed);
        removed
    }

    /// Commands pending on this connection, awaiting ones included.
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// Commands on this connection that are not awaiting by design.
    pub fn waiting(&self) -> usize {
        self.lock().values().filter(|p| !p.facts.awaiting).count()
    }

    /// Notes the server's id of the upstream connection (from hello).
    pub fn set_server_conn_id(&self, id: i64) {
        self.server_conn_id.store(id, Relaxed);
    }

    /// Cancelled when an operator kills a command on this connection.
    pub fn kill_token(&self) -> &CancellationToken {
        &self.kill
    }

    /// Takes every entry (the connection closed), oldest first.
    pub fn drain(&self) -> Vec<Pending> {
        let mut entries = self.lock();
        let mut out: Vec<Pending> = entries.drain().map(|(_, p)| p).collect();
        self.len.store(0, Relaxed);
        drop(entries);
        out.sort_by_key(|p| p.facts.started);
        out
    }
}

/// Every connection's pending commands. A connection registers once when it
/// opens; nothing here is touched per request.
#[derive(Default)]
pub struct Tracker {
    conns: DashMap<u64, Arc<ConnInflight>, ahash::RandomState>,
}

impl Tracker {
    /// The table for a new connection; `unregister` when it closes.
    pub fn register(&self, conn: u64) -> Arc<ConnInflight> {
        let table = Arc::new(ConnInflight::default());
        self.conns.insert(conn, table.clone());
        table
    }

    pub fn unregister(&self, conn: u64) {
        self.conns.remove(&conn);
    }

    /// Open connections by the appName of their handshake ("" before or
    /// without one), busiest first.
    pub fn connections_by_app(&self) -> Vec<(Arc<str>, usize)> {
        let mut counts: HashMap<Arc<str>, usize, ahash::RandomState> = HashMap::default();
        for e in self.conns.iter() {
            let app = e
                .value()
                .app
                .get()
                .cloned()
                .unwrap_or_else(|| Arc::from(""));
            *counts.entry(app).or_default() += 1;
        }
        let mut rows: Vec<_> = counts.into_iter().collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows
    }

    /// Runs `f` on every pending command, one connection's lock at a time.
    /// Read-only: the sessions own their entries; the watchdog writes only
    /// its `WatchState`.
    pub fn for_each(&self, mut f: impl FnMut(&Pending)) {
        // Collect first: a session may register or unregister meanwhile,
        // and a DashMap shard lock must not be held across another lock.
        let tables: Vec<Arc<ConnInflight>> = self.conns.iter().map(|e| e.value().clone()).collect();
        for table in tables {
            for p in table.lock().values() {
                f(p);
            }
        }
    }

    /// The kill switch: asks `conn`'s session to close the connection,
    /// both sides (its control branch ends it, and its pending commands are
    /// reported as `never_replied`). Nothing if it has closed already.
    pub fn close(&self, conn: u64) {
        if let Some(table) = self.conns.get(&conn).map(|e| e.value().clone()) {
            table.kill.cancel();
        }
    }

    /// The command `request_id` on `conn`, if pending, and the server's id
    /// of its upstream connection, if a hello reply named it: what the kill
    /// switch needs to try `killOp` before it closes the connection.
    pub fn find(&self, conn: u64, request_id: i32) -> Option<(RequestFacts, Option<i64>)> {
        let table = self.conns.get(&conn).map(|e| e.value().clone())?;
        let facts = table.lock().get(&request_id).map(|p| p.facts.clone())?;
        let server_conn = Some(table.server_conn_id.load(Relaxed)).filter(|&id| id != 0);
        Some((facts, server_conn))
    }

    /// Commands that are really waiting on the server (awaiting ones excluded).
    pub fn inflight_count(&self) -> usize {
        let mut n = 0;
        self.for_each(|p| n += usize::from(!p.facts.awaiting));
        n
    }

    /// Pending commands, oldest first. Awaiting ones (monitors' awaitable
    /// hellos, awaitData getMores) wait by design and would bury the
    /// commands that can be stuck, so they are listed only with `awaiting`.
    pub fn snapshot(&self, stall_ms: u64, awaiting: bool) -> Vec<InflightRow> {
        let now = Instant::now();
        let mut rows = Vec::new();
        self.for_each(|entry| {
            let p = &entry.facts;
            if p.awaiting && !awaiting {
                return;
            }
            let age_ms = p.age_ms(now);
            rows.push(InflightRow {
                conn: p.conn,
                request_id: entry.request_id,
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
                member: p.member.as_deref().map(str::to_string),
                diagnosis: p.diagnose.as_ref().and_then(|d| d.result.get().cloned()),
            })
        });
        rows.sort_by_key(|r| std::cmp::Reverse(r.age_ms));
        rows
    }
}

#[cfg(test)]
impl RequestFacts {
    /// A request on conn 1 from 127.0.0.1:1 for `command` on db.coll, with
    /// nothing else set: the unit tests' starting point.
    pub(crate) fn for_test(command: &str, started: Instant) -> RequestFacts {
        RequestFacts {
            conn: 1,
            client: "127.0.0.1:1".parse().expect("address"),
            member: None,
            meta: Arc::new(crate::observe::meta::ClientMeta::default()),
            summary: Arc::new(CommandSummary {
                command: command.into(),
                db: "db".into(),
                collection: "coll".into(),
                stages: Vec::new(),
                shape: "".into(),
                max_time_ms: None,
                allow_disk_use: None,
            }),
            comment: None,
            started,
            awaiting: false,
            opens_awaiting_cursor: false,
            cursor_id: None,
            killed_cursors: Vec::new(),
            injected_max_time: false,
            query: None,
            rewritten: false,
            span: None,
            query_text: None,
            explain_body: None,
            diagnose: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pending(conn: u64, request_id: i32, started: Instant) -> Pending {
        let mut facts = RequestFacts::for_test("find", started);
        facts.conn = conn;
        facts.awaiting = request_id < 0;
        Pending::new(request_id, facts)
    }

    /// Each connection keeps its own table; the tracker sees them all until
    /// a connection unregisters.
    #[test]
    fn the_tracker_sees_every_registered_connection() {
        let tracker = Tracker::default();
        let (one, two) = (tracker.register(1), tracker.register(2));
        let t0 = Instant::now();
        one.insert(pending(1, 10, t0));
        one.insert(pending(1, -11, t0));
        two.insert(pending(2, 10, t0 + Duration::from_millis(5)));
        assert_eq!(tracker.inflight_count(), 2, "the awaiting one is left out");
        assert_eq!(tracker.snapshot(60_000, false).len(), 2);
        let all = tracker.snapshot(60_000, true);
        assert_eq!(all.len(), 3);
        assert_eq!(all.iter().filter(|r| r.awaiting).count(), 1);
        assert_eq!(
            all.iter().find(|r| r.awaiting).map(|r| r.request_id),
            Some(-11)
        );
        // Same requestID on another connection is another command.
        assert_eq!(two.remove(10).map(|p| p.facts().conn), Some(2));
        assert!(two.remove(10).is_none());
        assert_eq!(tracker.inflight_count(), 1);
        tracker.unregister(1);
        assert!(tracker.snapshot(60_000, true).is_empty());
        // The session still holds its table and drains it at close.
        let drained: Vec<i32> = one.drain().iter().map(|p| p.request_id).collect();
        assert_eq!(drained.len(), 2);
        assert!(one.drain().is_empty());
    }

    #[test]
    fn drain_returns_the_oldest_first() {
        let table = ConnInflight::default();
        let t0 = Instant::now();
        for (id, ms) in [(1, 30), (2, 10), (3, 20)] {
            table.insert(pending(7, id, t0 + Duration::from_millis(ms)));
        }
        let order: Vec<i32> = table.drain().iter().map(|p| p.request_id).collect();
        assert_eq!(order, [2, 3, 1]);
        assert_eq!(table.len(), 0);
    }

    /// The count the session reads follows the table, also when a client
    /// reuses a requestID that is still pending.
    #[test]
    fn the_count_follows_the_table() {
        let table = ConnInflight::default();
        let t0 = Instant::now();
        table.insert(pending(7, 1, t0));
        table.insert(pending(7, 1, t0));
        table.insert(pending(7, 2, t0));
        assert_eq!(table.len(), 2);
        assert!(table.remove(1).is_some());
        assert!(table.remove(1).is_none());
        assert_eq!(table.len(), 1);
        // A moreToCome reply moves the entry to a new requestID.
        let mut moved = table.remove(2).expect("pending");
        moved.request_id = 3;
        table.insert(moved);
        assert_eq!(table.len(), 1);
        assert!(table.remove(3).is_some());
        assert_eq!(table.len(), 0);
    }
}
