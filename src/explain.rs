//! Auto-explain (off by default): when a read-only aggregate runs longer
//! than `[explain] after_ms`, mongotap runs `explain` with
//! `verbosity: "executionStats"` for the same pipeline on its own upstream
//! connection and logs an `explained` event with per-stage `nReturned` and
//! `executionTimeMillisEstimate` where the server reports them, plus the
//! server's answer as it is (strings replaced by "?" unless
//! `watch.log_values` is on).
//!
//! The forwarding path only pays for a body copy of each aggregate (when
//! enabled) and, once an aggregate is due, a map lookup: the explain itself
//! runs in its own task, at most [`MAX_RUNNING`] at once, at most once per
//! pipeline shape per `interval_ms`.

use crate::config::ExplainConfig;
use crate::meta::{ClientMeta, CommandSummary};
use crate::tracker::Pending;
use crate::upstream_client::{ClientError, TlsUpstream, UpstreamClient};
use bson::raw::{cstr, RawBsonRef};
use bson::{rawdoc, Bson, RawDocument, RawDocumentBuf};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use mongotap_proto::command::as_i64;
use mongotap_proto::CommandView;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{debug, info, warn};

/// Explains running at once; more are dropped and counted.
pub const MAX_RUNNING: usize = 2;

/// Connecting, TLS, hello and authentication together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Added to maxTimeMS for the round trip of the explain itself.
const GRACE: Duration = Duration::from_secs(5);

/// With `max_time_ms = 0` the server sets no limit; mongotap still gives up
/// on the answer after this long.
const UNLIMITED_BUDGET: Duration = Duration::from_secs(600);

/// The `explain` field of the event is cut at this many bytes.
pub const MAX_EXPLAIN_BYTES: usize = 8 * 1024;

/// Past this many remembered shapes, those outside the interval are forgotten.
const MAX_SHAPES: usize = 4096;

/// Stages that write, or that wait by design: never explained.
const SKIPPED_STAGES: &[&str] = &["$out", "$merge", "$changeStream"];

/// Fields of the original aggregate that belong to its session, transaction
/// or transport, or that explain sets itself: not copied into the explained
/// command.
const NOT_COPIED: &[&str] = &[
    "$db",
    "lsid",
    "$clusterTime",
    "txnNumber",
    "startTransaction",
    "autocommit",
    "$readPreference",
    "maxTimeMS",
    "writeConcern",
    "readConcern",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "explain",
    "$audit",
    "$client",
    "$configServerState",
    "$configTime",
    "$topologyTime",
    "$gleStats",
    "$oplogQueryData",
    "$replData",
    "$queryOptions",
    "mayBypassWriteConcern",
];

/// Why an explain did not produce an answer.
#[derive(Debug, Error)]
enum ExplainError {
    #[error(transparent)]
    Upstream(#[from] ClientError),
    #[error("the aggregate's body cannot be copied into an explain: {0}")]
    Body(#[from] bson::error::Error),
    #[error("[explain] sets only one of username and password; set both, or neither")]
    HalfCredentials,
    #[error("no answer within {ms} ms")]
    Timeout { ms: u64 },
}

impl ExplainError {
    fn code(&self) -> Option<i32> {
        match self {
            ExplainError::Upstream(e) => e.code(),
            _ => None,
        }
    }

    fn code_name(&self) -> Option<&str> {
        match self {
            ExplainError::Upstream(e) => e.code_name(),
            _ => None,
        }
    }
}

/// (db, collection, stage names joined): what the rate limit counts by.
type ShapeKey = (Arc<str>, Arc<str>, Arc<str>);

pub struct Explainer {
    /// `None` when auto-explain is off: every method returns at once.
    inner: Option<Arc<Inner>>,
}

struct Inner {
    cfg: ExplainConfig,
    /// The address the proxy forwards to: explains go to the same server.
    upstream: String,
    /// Set when the proxy speaks TLS to the upstream.
    tls: Option<TlsUpstream>,
    /// Off: every string in the server's answer is replaced by "?".
    log_values: bool,
    /// When each (db, collection, shape) was last explained.
    last: DashMap<ShapeKey, Instant>,
    /// Explains in progress.
    running: AtomicUsize,
    /// Explains not started because MAX_RUNNING were in progress.
    dropped: AtomicU64,
}

/// What an explain task needs from the pending command.
struct Job {
    conn: u64,
    request_id: i32,
    client: SocketAddr,
    meta: Arc<ClientMeta>,
    summary: Arc<CommandSummary>,
    comment: Option<Arc<str>>,
    body: Arc<RawDocumentBuf>,
    /// How long the aggregate had run when the explain was started.
    elapsed: Duration,
}

/// Gives the running slot back however the task ends.
struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Relaxed);
    }
}

/// Whether an explain may start now.
enum Admit {
    /// Go ahead: the shape is marked as explained now, and the slot is held.
    Go(Slot),
    /// This shape was explained less than `interval_ms` ago.
    RateLimited,
    /// MAX_RUNNING explains are in progress: this one is dropped.
    Busy { dropped_total: u64 },
}

impl Inner {
    /// Claims the shape's rate-limit entry and a running slot. A dropped
    /// explain leaves the entry as it was, so the next slow run of the same
    /// shape may be explained.
    fn admit(self: &Arc<Self>, key: ShapeKey, now: Instant) -> Admit {
        let interval = Duration::from_millis(self.cfg.interval_ms);
        if self.last.len() > MAX_SHAPES {
            self.last
                .retain(|_, at| now.saturating_duration_since(*at) < interval);
        }
        let previous = match self.last.entry(key.clone()) {
            Entry::Occupied(mut e) => {
                if now.saturating_duration_since(*e.get()) < interval {
                    return Admit::RateLimited;
                }
                Some(e.insert(now))
            }
            Entry::Vacant(e) => {
                e.insert(now);
                None
            }
        };
        let claimed = self
            .running
            .fetch_update(Relaxed, Relaxed, |n| (n < MAX_RUNNING).then_some(n + 1))
            .is_ok();
        if claimed {
            return Admit::Go(Slot(self.clone()));
        }
        match previous {
            Some(at) => self.last.insert(key, at),
            None => self.last.remove(&key).map(|(_, at)| at),
        };
        Admit::Busy {
            dropped_total: self.dropped.fetch_add(1, Relaxed) + 1,
        }
    }
}

impl Explainer {
    pub fn new(cfg: &ExplainConfig, upstream: &str, log_values: bool) -> Explainer {
        let inner = cfg.enabled.then(|| {
            Arc::new(Inner {
                cfg: cfg.clone(),
                upstream: upstream.to_string(),
                tls: None,
                log_values,
                last: DashMap::new(),
                running: AtomicUsize::new(0),
                dropped: AtomicU64::new(0),
            })
        });
        Explainer { inner }
    }

    /// Explains connect with this TLS connector (the proxy's own for the
    /// upstream), when the upstream speaks TLS.
    pub fn with_tls(mut self, tls: Option<TlsUpstream>) -> Explainer {
        if let Some(inner) = self.inner.as_mut().and_then(Arc::get_mut) {
            inner.tls = tls;
        }
        self
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// A copy of the command body when it is a read-only aggregate and
    /// auto-explain is on.
    pub fn body_for(&self, view: &CommandView<'_>) -> Option<Arc<RawDocumentBuf>> {
        self.inner.as_ref()?;
        if view.name != "aggregate" || view.pipeline.is_none() {
            return None;
        }
        // `{aggregate, explain: true}` is an explain already.
        if view.doc.get("explain").ok().flatten().is_some() {
            return None;
        }
        if view.stages().any(|s| SKIPPED_STAGES.contains(&s)) {
            return None;
        }
        Some(Arc::new(view.doc.to_owned()))
    }

    /// Starts an explain for `p` when it is due and not rate limited. Never
    /// blocks: the explain runs in its own task.
    pub fn maybe_explain(&self, p: &Pending, elapsed: Duration) {
        let Some(inner) = &self.inner else { return };
        let Some(body) = &p.explain_body else { return };
        if elapsed < Duration::from_millis(inner.cfg.after_ms) {
            return;
        }
        let key = (
            p.summary.db.clone(),
            p.summary.collection.clone(),
            p.summary.shape.clone(),
        );
        let slot = match inner.admit(key, Instant::now()) {
            Admit::Go(slot) => slot,
            Admit::RateLimited => return,
            Admit::Busy { dropped_total } => {
                debug!(
                    event = "explain_dropped",
                    conn = p.conn,
                    request_id = p.request_id,
                    db = &*p.summary.db,
                    collection = &*p.summary.collection,
                    stages = &*p.summary.shape,
                    dropped_total,
                    "not explaining {}: {MAX_RUNNING} explains are already running",
                    p.summary.command
                );
                return;
            }
        };
        // The observer and the watchdog run inside the runtime; without one
        // (never in the proxy) there is nothing to run the explain on.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let job = Job {
            conn: p.conn,
            request_id: p.request_id,
            client: p.client,
            meta: p.meta.clone(),
            summary: p.summary.clone(),
            comment: p.comment.clone(),
            body: body.clone(),
            elapsed,
        };
        handle.spawn(run(slot, job));
    }
}

/// One explain, start to event. Bounded in time, so it ends on its own
/// even if the server never answers.
async fn run(slot: Slot, job: Job) {
    let inner = &slot.0;
    let started = Instant::now();
    let budget = match inner.cfg.max_time_ms {
        0 => UNLIMITED_BUDGET,
        ms => CONNECT_TIMEOUT + Duration::from_millis(ms) + GRACE,
    };
    let result = match tokio::time::timeout(budget, explain(inner, &job)).await {
        Ok(r) => r,
        Err(_) => Err(ExplainError::Timeout {
            ms: budget.as_millis() as u64,
        }),
    };
    let explain_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(reply) => explained(inner, &job, &reply, explain_ms),
        Err(e) => explain_failed(&job, &e, explain_ms),
    }
}

async fn explain(inner: &Inner, job: &Job) -> Result<RawDocumentBuf, ExplainError> {
    let command = explain_command(&job.body, &job.summary.db, inner.cfg.max_time_ms)?;
    let mut client =
        UpstreamClient::connect(&inner.upstream, CONNECT_TIMEOUT, inner.tls.as_ref()).await?;
    match (&inner.cfg.username, &inner.cfg.password) {
        (Some(user), Some(password)) => {
            tokio::time::timeout(
                CONNECT_TIMEOUT,
                client.auth_scram_sha256(user, password, &inner.cfg.auth_db),
            )
            .await
            .map_err(|_| ExplainError::Timeout {
                ms: CONNECT_TIMEOUT.as_millis() as u64,
            })??;
        }
        (None, None) => {}
        _ => return Err(ExplainError::HalfCredentials),
    }
    Ok(client.command(&command).await?)
}

/// `{explain: {<the aggregate's own fields>, cursor: {}}, verbosity:
/// "executionStats", maxTimeMS, $db}`: fields are copied as raw elements in
/// their order, except those of the session and transport.
pub fn explain_command(
    aggregate: &RawDocument,
    db: &str,
    max_time_ms: u64,
) -> Result<RawDocumentBuf, bson::error::Error> {
    let mut inner = RawDocumentBuf::new();
    let mut has_cursor = false;
    for kv in aggregate.iter() {
        let (key, value) = kv?;
        match key.as_str() {
            // batchSize means nothing to explain; a bare cursor is what
            // the server expects.
            "cursor" => {
                inner.append(key, rawdoc! {});
                has_cursor = true;
            }
            k if NOT_COPIED.contains(&k) => {}
            _ => inner.append(key, value),
        }
    }
    if !has_cursor {
        inner.append(cstr!("cursor"), rawdoc! {});
    }
    let mut out = rawdoc! {
        "explain": inner,
        "verbosity": "executionStats",
    };
    // 0 means "no limit" to the server: send nothing rather than 0.
    match i32::try_from(max_time_ms) {
        Ok(0) => {}
        Ok(ms) => out.append(cstr!("maxTimeMS"), ms),
        Err(_) => out.append(cstr!("maxTimeMS"), max_time_ms.min(i64::MAX as u64) as i64),
    }
    out.append(cstr!("$db"), db);
    Ok(out)
}

fn explained(inner: &Inner, job: &Job, reply: &RawDocument, explain_ms: u64) {
    let stage_stats = stage_stats(reply);
    let (explain, explain_truncated) = render_explain(reply, inner.log_values);
    let p = &job.summary;
    info!(
        event = "explained",
        conn = job.conn,
        request_id = job.request_id,
        client = %job.client,
        app = &*job.meta.app,
        driver = %job.meta.driver_label(),
        command = &*p.command,
        db = &*p.db,
        collection = &*p.collection,
        stages = &*p.shape,
        comment = job.comment.as_deref(),
        elapsed_ms = job.elapsed.as_millis() as u64,
        explain_ms,
        stage_stats = stage_stats.as_deref(),
        explain = %explain,
        explain_truncated,
        "explained {} on {}.{} ({}): {}",
        p.command,
        p.db,
        p.collection,
        p.shape,
        stage_stats.as_deref().unwrap_or("the server reported no per-stage stats")
    );
}

fn explain_failed(job: &Job, e: &ExplainError, explain_ms: u64) {
    let p = &job.summary;
    warn!(
        event = "explain_failed",
        conn = job.conn,
        request_id = job.request_id,
        client = %job.client,
        app = &*job.meta.app,
        driver = %job.meta.driver_label(),
        command = &*p.command,
        db = &*p.db,
        collection = &*p.collection,
        stages = &*p.shape,
        comment = job.comment.as_deref(),
        elapsed_ms = job.elapsed.as_millis() as u64,
        explain_ms,
        code = e.code(),
        code_name = e.code_name(),
        reason = %e,
        "could not explain {} on {}.{}: {e}",
        p.command,
        p.db,
        p.collection
    );
}

/// Per-stage numbers, e.g. `$cursor nReturned=100 ms=3; $group nReturned=5 ms=4`.
///
/// MongoDB reports an aggregate's explain in one of three forms: a
/// `stages` array (one entry per stage, its name the entry's first key);
/// a pipeline pushed down whole into the query layer, with
/// `executionStats.executionStages` as a tree of plan stages (shown leaf
/// first, in the order data flows); or, through mongos, one of these per
/// shard under `shards`. Anything else (FerretDB) has no per-stage stats.
pub fn stage_stats(reply: &RawDocument) -> Option<String> {
    let mut out = Vec::new();
    collect_stats(reply, "", &mut out);
    (!out.is_empty()).then(|| out.join("; "))
}

fn collect_stats(doc: &RawDocument, prefix: &str, out: &mut Vec<String>) {
    if let Ok(stages) = doc.get_array("stages") {
        for stage in stages.into_iter().flatten() {
            let Some(stage) = stage.as_document() else {
                continue;
            };
            if let Some(Ok((name, _))) = stage.iter().next() {
                out.push(format!("{prefix}{}{}", name.as_str(), numbers(stage)));
            }
        }
    } else if let Ok(root) = doc
        .get_document("executionStats")
        .and_then(|s| s.get_document("executionStages"))
    {
        let mut plan = Vec::new();
        plan_stages(root, 0, &mut plan);
        for stage in plan.into_iter().rev() {
            let name = stage.get_str("stage").unwrap_or("?");
            out.push(format!("{prefix}{name}{}", numbers(stage)));
        }
    } else if let Ok(shards) = doc.get_document("shards") {
        for (shard, value) in shards.iter().flatten() {
            if let Some(d) = value.as_document() {
                collect_stats(d, &format!("{prefix}{}: ", shard.as_str()), out);
            }
        }
    }
}

/// The plan tree in pre-order (root first); children come from
/// `inputStage`, `inputStages`, `thenStage`/`elseStage` and
/// `outerStage`/`innerStage`.
fn plan_stages<'a>(node: &'a RawDocument, depth: usize, out: &mut Vec<&'a RawDocument>) {
    // Real plans are a few levels deep; a hostile one must not recurse forever.
    if depth > 64 || out.len() > 256 {
        return;
    }
    out.push(node);
    for (key, value) in node.iter().flatten() {
        match (key.as_str(), value) {
            (
                "inputStage" | "thenStage" | "elseStage" | "outerStage" | "innerStage",
                RawBsonRef::Document(child),
            ) => plan_stages(child, depth + 1, out),
            ("inputStages", RawBsonRef::Array(children)) => {
                for child in children.into_iter().flatten() {
                    if let Some(child) = child.as_document() {
                        plan_stages(child, depth + 1, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// " nReturned=N ms=M" for whichever of the two the stage reports.
fn numbers(stage: &RawDocument) -> String {
    let get = |k: &str| stage.get(k).ok().flatten().and_then(as_i64);
    let mut s = String::new();
    if let Some(n) = get("nReturned") {
        s.push_str(&format!(" nReturned={n}"));
    }
    if let Some(ms) = get("executionTimeMillisEstimate") {
        s.push_str(&format!(" ms={ms}"));
    }
    s
}

/// The server's answer as relaxed extended JSON, in the server's key
/// order, cut at [`MAX_EXPLAIN_BYTES`]; returns whether it was cut. Without
/// log_values, every string and every other value that can carry data from
/// a filter (binary, ObjectId, date, regex, decimal, ...) becomes "?";
/// numbers, booleans and nulls stay, so the statistics survive.
/// `$clusterTime` and `operationTime` (gossip, not part of the explain) are
/// left out.
pub fn render_explain(reply: &RawDocument, log_values: bool) -> (String, bool) {
    let mut out = String::with_capacity(1024);
    write_document(&mut out, reply, log_values, 0);
    if out.len() <= MAX_EXPLAIN_BYTES {
        return (out, false);
    }
    let mut end = MAX_EXPLAIN_BYTES;
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out.push('…');
    (out, true)
}

/// Deeper than this is not a real explain; the rest is elided.
const MAX_DEPTH: usize = 100;

fn write_document(out: &mut String, doc: &RawDocument, log_values: bool, depth: usize) {
    out.push('{');
    let mut first = true;
    for (key, value) in doc.iter().flatten() {
        if depth == 0 && matches!(key.as_str(), "$clusterTime" | "operationTime") {
            continue;
        }
        // Past the cut nothing more is shown: stop early on huge answers.
        if out.len() > MAX_EXPLAIN_BYTES {
            break;
        }
        if !first {
            out.push(',');
        }
        first = false;
        write_json_string(out, key.as_str());
        out.push(':');
        write_value(out, value, log_values, depth + 1);
    }
    out.push('}');
}

fn write_value(out: &mut String, value: RawBsonRef<'_>, log_values: bool, depth: usize) {
    if depth > MAX_DEPTH {
        out.push_str("\"…\"");
        return;
    }
    match value {
        RawBsonRef::Document(d) => write_document(out, d, log_values, depth),
        RawBsonRef::Array(a) => {
            out.push('[');
            for (i, v) in a.into_iter().flatten().enumerate() {
                if out.len() > MAX_EXPLAIN_BYTES {
                    break;
                }
                if i > 0 {
                    out.push(',');
                }
                write_value(out, v, log_values, depth + 1);
            }
            out.push(']');
        }
        RawBsonRef::Double(_)
        | RawBsonRef::Int32(_)
        | RawBsonRef::Int64(_)
        | RawBsonRef::Boolean(_)
        | RawBsonRef::Null
        | RawBsonRef::Undefined
        | RawBsonRef::MinKey
        | RawBsonRef::MaxKey => write_leaf(out, value),
        _ if !log_values => out.push_str("\"?\""),
        _ => write_leaf(out, value),
    }
}

/// One scalar in relaxed extended JSON, as the bson crate renders it.
fn write_leaf(out: &mut String, value: RawBsonRef<'_>) {
    match Bson::try_from(value) {
        Ok(b) => out.push_str(&b.into_relaxed_extjson().to_string()),
        Err(_) => out.push_str("\"<unreadable>\""),
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::Value::from(s).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::RawBson;

    fn cfg() -> ExplainConfig {
        ExplainConfig {
            enabled: true,
            ..ExplainConfig::default()
        }
    }

    fn body_of(doc: &RawDocumentBuf) -> Option<Arc<RawDocumentBuf>> {
        let view = CommandView::parse(doc).unwrap();
        Explainer::new(&cfg(), "127.0.0.1:1", false).body_for(&view)
    }

    #[test]
    fn only_read_only_aggregates_are_kept() {
        let agg = rawdoc! { "aggregate": "c", "pipeline": [{"$match": {"a": 1}}, {"$group": {"_id": "$g"}}], "cursor": {}, "$db": "d" };
        assert_eq!(body_of(&agg).as_deref(), Some(&agg));
        for stage in ["$out", "$merge", "$changeStream"] {
            let mut st = RawDocumentBuf::new();
            st.append(bson::raw::CString::try_from(stage).unwrap(), "x");
            let w = rawdoc! { "aggregate": "c", "pipeline": [{"$match": {}}, st], "cursor": {}, "$db": "d" };
            assert!(body_of(&w).is_none(), "{stage}");
        }
        let legacy = rawdoc! { "aggregate": "c", "pipeline": [], "explain": true, "$db": "d" };
        assert!(body_of(&legacy).is_none());
        assert!(body_of(&rawdoc! { "find": "c", "filter": {}, "$db": "d" }).is_none());
        // Off: nothing is copied.
        let view = CommandView::parse(&agg).unwrap();
        let off = Explainer::new(&ExplainConfig::default(), "127.0.0.1:1", false);
        assert!(off.body_for(&view).is_none());
        assert!(!off.enabled());
    }

    #[test]
    fn explain_command_copies_the_pipeline_and_drops_session_fields() {
        let agg = rawdoc! {
            "aggregate": "orders",
            "pipeline": [{"$match": {"s": "x"}}],
            "cursor": {"batchSize": 2},
            "allowDiskUse": true,
            "maxTimeMS": 999,
            "lsid": {"id": 1},
            "$clusterTime": {"t": 1},
            "txnNumber": 5_i64,
            "readConcern": {"level": "majority"},
            "$readPreference": {"mode": "primary"},
            "apiVersion": "1",
            "comment": "c1",
            "$db": "shop",
        };
        let cmd = explain_command(&agg, "shop", 10_000).unwrap();
        let want = rawdoc! {
            "explain": {
                "aggregate": "orders",
                "pipeline": [{"$match": {"s": "x"}}],
                "cursor": {},
                "allowDiskUse": true,
                "comment": "c1",
            },
            "verbosity": "executionStats",
            "maxTimeMS": 10_000,
            "$db": "shop",
        };
        assert_eq!(cmd, want);
        // No cursor in the original: one is added. maxTimeMS 0: none sent.
        let bare = rawdoc! { "aggregate": 1, "pipeline": [], "$db": "admin" };
        let cmd = explain_command(&bare, "admin", 0).unwrap();
        assert_eq!(
            cmd,
            rawdoc! { "explain": {"aggregate": 1, "pipeline": [], "cursor": {}}, "verbosity": "executionStats", "$db": "admin" }
        );
    }

    #[test]
    fn stage_stats_from_a_stages_array() {
        let reply = rawdoc! {
            "explainVersion": "1",
            "stages": [
                {"$cursor": {"queryPlanner": {}}, "nReturned": 100_i64, "executionTimeMillisEstimate": 3_i64},
                {"$group": {"_id": "$g"}, "nReturned": 5_i64, "executionTimeMillisEstimate": 4_i64},
                {"$sort": {"sortKey": {"_id": 1}}},
            ],
            "ok": 1.0,
        };
        assert_eq!(
            stage_stats(&reply).unwrap(),
            "$cursor nReturned=100 ms=3; $group nReturned=5 ms=4; $sort"
        );
    }

    #[test]
    fn stage_stats_from_a_pushed_down_plan_and_shards() {
        let plan = rawdoc! {
            "executionStats": {
                "nReturned": 3,
                "executionStages": {
                    "stage": "PROJECTION_SIMPLE", "nReturned": 3, "executionTimeMillisEstimate": 1,
                    "inputStage": {
                        "stage": "FETCH", "nReturned": 3, "executionTimeMillisEstimate": 1,
                        "inputStage": {"stage": "IXSCAN", "nReturned": 3, "executionTimeMillisEstimate": 0},
                    },
                },
            },
        };
        assert_eq!(
            stage_stats(&plan).unwrap(),
            "IXSCAN nReturned=3 ms=0; FETCH nReturned=3 ms=1; PROJECTION_SIMPLE nReturned=3 ms=1"
        );
        let sharded = rawdoc! {
            "shards": {
                "s0": {"stages": [{"$cursor": {}, "nReturned": 1, "executionTimeMillisEstimate": 2}]},
            },
        };
        assert_eq!(
            stage_stats(&sharded).unwrap(),
            "s0: $cursor nReturned=1 ms=2"
        );
        // FerretDB's answer has no stats.
        let ferret = rawdoc! { "queryPlanner": {"Plan": ["SCAN c"]}, "ok": 1.0 };
        assert_eq!(stage_stats(&ferret), None);
    }

    #[test]
    fn render_redacts_strings_but_keeps_numbers() {
        let reply = rawdoc! {
            "command": {"pipeline": [{"$match": {"name": "secret-value", "oid": bson::oid::ObjectId::new()}}]},
            "stages": [{"$cursor": {}, "nReturned": 7_i64, "ok": true}],
            "$clusterTime": {"clusterTime": RawBson::Timestamp(bson::Timestamp { time: 1, increment: 1 })},
            "ok": 1.0,
        };
        let (text, cut) = render_explain(&reply, false);
        assert!(!cut);
        assert!(!text.contains("secret-value"), "{text}");
        assert!(!text.contains("$oid"), "{text}");
        assert!(!text.contains("clusterTime"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["command"]["pipeline"][0]["$match"]["name"], "?");
        assert_eq!(v["stages"][0]["nReturned"], 7);
        assert_eq!(v["stages"][0]["ok"], true);
        // The server's key order is kept.
        assert!(text.starts_with(r#"{"command":{"pipeline""#), "{text}");
        assert!(text.find("\"stages\"") < text.find("\"ok\""), "{text}");
        let (text, _) = render_explain(&reply, true);
        assert!(text.contains("secret-value"), "{text}");
        assert!(text.contains("$oid"), "{text}");
    }

    #[test]
    fn render_cuts_long_answers_on_a_char_boundary() {
        let long: String = "é".repeat(MAX_EXPLAIN_BYTES);
        let reply = rawdoc! { "x": long };
        let (text, cut) = render_explain(&reply, true);
        assert!(cut);
        assert!(text.len() <= MAX_EXPLAIN_BYTES + '…'.len_utf8());
        let (_, cut) = render_explain(&reply, false);
        assert!(!cut);
    }

    #[test]
    fn rate_limit_per_shape_and_at_most_max_running() {
        let cfg = ExplainConfig {
            interval_ms: 60_000,
            ..cfg()
        };
        let ex = Explainer::new(&cfg, "127.0.0.1:1", false);
        let inner = ex.inner.as_ref().unwrap();
        let key = |shape: &str| -> ShapeKey { (Arc::from("d"), Arc::from("c"), Arc::from(shape)) };
        let t0 = Instant::now();
        let a = inner.admit(key("$match"), t0);
        assert!(matches!(a, Admit::Go(_)));
        // Same shape within the interval: not again, even with slots free.
        assert!(matches!(
            inner.admit(key("$match"), t0 + Duration::from_secs(59)),
            Admit::RateLimited
        ));
        let b = inner.admit(key("$group"), t0);
        assert!(matches!(b, Admit::Go(_)));
        // Both slots taken: a third shape is dropped, counted, and not
        // marked as explained.
        assert!(matches!(
            inner.admit(key("$sort"), t0),
            Admit::Busy { dropped_total: 1 }
        ));
        assert_eq!(inner.running.load(Relaxed), MAX_RUNNING);
        drop(a);
        assert_eq!(inner.running.load(Relaxed), 1);
        let c = inner.admit(key("$sort"), t0);
        assert!(matches!(c, Admit::Go(_)));
        drop((b, c));
        // After the interval the first shape is due again.
        assert!(matches!(
            inner.admit(key("$match"), t0 + Duration::from_secs(61)),
            Admit::Go(_)
        ));
        assert_eq!(inner.running.load(Relaxed), 0);
    }
}
