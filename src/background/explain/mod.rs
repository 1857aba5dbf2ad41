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
use crate::mongo_client::{ClientError, UpstreamClient};
use crate::observe::events::command_event;
use crate::observe::tracker::RequestFacts;
use crate::observe::AutoExplain;
use crate::settings::Settings;
use bson::raw::cstr;
use bson::{rawdoc, RawDocument, RawDocumentBuf};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use mongotap_proto::CommandView;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod render;
pub use render::{render_explain, stage_stats};

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
    /// The proxy's reloadable settings: each explain connects with the TLS
    /// connector in force when it starts, so certificates reloaded on
    /// SIGHUP apply to explains as they do to new sessions.
    settings: Settings,
    /// Off: every string in the server's answer is replaced by "?".
    log_values: bool,
    /// When each (db, collection, shape) was last explained.
    last: DashMap<ShapeKey, Instant>,
    /// Explains in progress.
    running: AtomicUsize,
    /// Explains not started because MAX_RUNNING were in progress.
    dropped: AtomicU64,
    /// The running explains, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Cancelled on shutdown: an explain with no maxTimeMS can run long.
    stop: CancellationToken,
}

/// What an explain task needs from the pending command.
struct Job {
    request_id: i32,
    facts: RequestFacts,
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
    pub fn new(
        cfg: &ExplainConfig,
        upstream: &str,
        log_values: bool,
        settings: Settings,
    ) -> Explainer {
        let inner = cfg.enabled.then(|| {
            Arc::new(Inner {
                cfg: cfg.clone(),
                upstream: upstream.to_string(),
                settings,
                log_values,
                last: DashMap::new(),
                running: AtomicUsize::new(0),
                dropped: AtomicU64::new(0),
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
            })
        });
        Explainer { inner }
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

    /// Starts an explain for the command `request_id` when it is due and
    /// not rate limited. Never blocks: the explain runs in its own task.
    pub fn maybe_explain(&self, request_id: i32, p: &RequestFacts, elapsed: Duration) {
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
                command_event!(
                    debug,
                    request_id,
                    p,
                    "explain_dropped",
                    { dropped_total, },
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
            request_id,
            facts: p.clone(),
            body: body.clone(),
            elapsed,
        };
        inner.tasks.spawn_on(run(slot, job), &handle);
    }

    /// How long a command runs before it is explained (`explain.after_ms`);
    /// `None` when auto-explain is off.
    pub fn after_ms(&self) -> Option<u64> {
        self.inner.as_ref().map(|i| i.cfg.after_ms)
    }

    /// Stops the running explains (they log nothing more) and waits for
    /// them to end; one started later returns at once.
    pub async fn stop(&self) {
        let Some(inner) = &self.inner else { return };
        inner.stop.cancel();
        inner.tasks.close();
        inner.tasks.wait().await;
    }
}

/// How observation reaches the explainer without importing this layer.
impl AutoExplain for Explainer {
    fn body_for(&self, view: &CommandView<'_>) -> Option<Arc<RawDocumentBuf>> {
        Explainer::body_for(self, view)
    }

    fn maybe_explain(&self, request_id: i32, facts: &RequestFacts, elapsed: Duration) {
        Explainer::maybe_explain(self, request_id, facts, elapsed)
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
    // Dropping `explain` mid-flight leaves its connection mid-frame, which
    // is fine: the connection is its own and is dropped with it.
    let result = tokio::select! {
        r = tokio::time::timeout(budget, explain(inner, &job)) => match r {
            Ok(r) => r,
            Err(_) => Err(ExplainError::Timeout {
                ms: budget.as_millis() as u64,
            }),
        },
        _ = inner.stop.cancelled() => return,
    };
    let explain_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(reply) => explained(inner, &job, &reply, explain_ms),
        Err(e) => explain_failed(&job, &e, explain_ms),
    }
}

async fn explain(inner: &Inner, job: &Job) -> Result<RawDocumentBuf, ExplainError> {
    let command = explain_command(&job.body, &job.facts.summary.db, inner.cfg.max_time_ms)?;
    let settings = inner.settings.load_full();
    let tls = settings.tls.connector.as_ref();
    let mut client = UpstreamClient::connect(&inner.upstream, CONNECT_TIMEOUT, tls).await?;
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
    let p = &job.facts.summary;
    command_event!(
        info,
        job.request_id,
        &job.facts,
        "explained",
        {
            elapsed_ms = job.elapsed.as_millis() as u64,
            explain_ms,
            stage_stats = stage_stats.as_deref(),
            explain = %explain,
            explain_truncated,
        },
        "explained {} on {}.{} ({}): {}",
        p.command,
        p.db,
        p.collection,
        p.shape,
        stage_stats.as_deref().unwrap_or("the server reported no per-stage stats")
    );
}

fn explain_failed(job: &Job, e: &ExplainError, explain_ms: u64) {
    let p = &job.facts.summary;
    command_event!(
        warn,
        job.request_id,
        &job.facts,
        "explain_failed",
        {
            elapsed_ms = job.elapsed.as_millis() as u64,
            explain_ms,
            code = e.code(),
            code_name = e.code_name(),
            reason = %e,
        },
        "could not explain {} on {}.{}: {e}",
        p.command,
        p.db,
        p.collection
    );
}

#[cfg(test)]
mod tests;
