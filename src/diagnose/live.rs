//! The live diagnosis (`[diagnose] enabled = true`): an aggregate that
//! stalls, runs longer than `diagnose.slow_ms` or fails gets the checks
//! run on mongotap's own upstream connection, and a `diagnosed` event.
//! A stalled one's `/inflight` row shows the findings once ready.
//!
//! Forwarding never waits: the session only copies the aggregate's body;
//! the diagnosis runs in a task of its own, at most `max_running` at
//! once (more are dropped and counted), once per pipeline shape per
//! `interval_ms`, every probe bounded by `probe_timeout_ms`.

use super::monitoring::{self, Facts};
use super::probe::Probe;
use super::{run_checks, stall_finding, Limits, Report, Severity, Target};
use crate::config::{DiagnoseConfig, ExplainConfig};
use crate::observe::events::command_event;
use crate::observe::tracker::RequestFacts;
use crate::observe::{AutoDiagnose, DiagnoseSlot, Trigger};
use crate::settings::Settings;
use bson::Document;
use dashmap::DashMap;
use mongotap_proto::CommandView;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Past this many remembered shapes, those outside the interval are forgotten.
const MAX_SHAPES: usize = 4096;

/// (db, collection, stage names joined): what the rate limit counts by.
type ShapeKey = (Arc<str>, Arc<str>, Arc<str>);

pub struct Diagnoser {
    /// `None` when the live diagnosis is off.
    inner: Option<Arc<Inner>>,
}

struct Inner {
    cfg: DiagnoseConfig,
    /// (username, password, auth_db): `[diagnose]`'s, else `[explain]`'s.
    credentials: Option<(String, String, String)>,
    /// The address the proxy forwards to.
    upstream: String,
    /// TLS in force when each diagnosis starts (SIGHUP reloads apply).
    settings: Settings,
    /// When each shape was last diagnosed.
    last: DashMap<ShapeKey, Instant>,
    running: AtomicUsize,
    /// Diagnoses not started because `max_running` were in progress.
    pub dropped: AtomicU64,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// Gives the running slot back however the task ends.
struct Running(Arc<Inner>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Relaxed);
    }
}

impl Diagnoser {
    pub fn new(
        cfg: &DiagnoseConfig,
        explain: &ExplainConfig,
        upstream: &str,
        settings: Settings,
    ) -> Diagnoser {
        let credentials = match (&cfg.username, &cfg.password) {
            (Some(u), Some(p)) => Some((
                u.clone(),
                p.clone(),
                cfg.auth_db.clone().unwrap_or_else(|| "admin".into()),
            )),
            _ => match (&explain.username, &explain.password) {
                (Some(u), Some(p)) => Some((
                    u.clone(),
                    p.clone(),
                    cfg.auth_db
                        .clone()
                        .unwrap_or_else(|| explain.auth_db.clone()),
                )),
                _ => None,
            },
        };
        let inner = cfg.enabled.then(|| {
            Arc::new(Inner {
                cfg: cfg.clone(),
                credentials,
                upstream: upstream.to_string(),
                settings,
                last: DashMap::new(),
                running: AtomicUsize::new(0),
                dropped: AtomicU64::new(0),
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
            })
        });
        Diagnoser { inner }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Diagnoses dropped because too many were running.
    pub fn dropped(&self) -> u64 {
        self.inner.as_ref().map_or(0, |i| i.dropped.load(Relaxed))
    }

    /// Cancels the running diagnoses and waits for them to end.
    pub async fn stop(&self) {
        let Some(inner) = &self.inner else { return };
        inner.stop.cancel();
        inner.tasks.close();
        inner.tasks.wait().await;
    }
}

impl Inner {
    /// Whether this shape may be diagnosed now; claims its entry if so.
    fn due(&self, key: ShapeKey, now: Instant) -> bool {
        let interval = Duration::from_millis(self.cfg.interval_ms);
        if self.last.len() > MAX_SHAPES {
            self.last
                .retain(|_, at| now.saturating_duration_since(*at) < interval);
        }
        let mut fresh = true;
        self.last
            .entry(key)
            .and_modify(|at| {
                if now.saturating_duration_since(*at) < interval {
                    fresh = false;
                } else {
                    *at = now;
                }
            })
            .or_insert(now);
        fresh
    }
}

impl AutoDiagnose for Diagnoser {
    fn slot_for(&self, view: &CommandView<'_>) -> Option<Arc<DiagnoseSlot>> {
        self.inner.as_ref()?;
        if view.name != "aggregate" || view.pipeline.is_none() {
            return None;
        }
        if view.doc.get("explain").ok().flatten().is_some() {
            return None;
        }
        Some(Arc::new(DiagnoseSlot {
            body: view.doc.to_owned(),
            started: AtomicBool::new(false),
            result: OnceLock::new(),
        }))
    }

    fn diagnose(&self, request_id: i32, facts: &RequestFacts, why: Trigger) {
        let Some(inner) = &self.inner else { return };
        let Some(slot) = &facts.diagnose else { return };
        let (elapsed_ms, stalled, error) = match &why {
            Trigger::Stalled { age_ms } => (*age_ms, true, None),
            Trigger::Finished { elapsed_ms, error } => (*elapsed_ms, false, error.clone()),
        };
        if error.is_none() && !stalled && elapsed_ms < inner.cfg.slow_ms {
            return;
        }
        if slot.started.swap(true, Relaxed) {
            return;
        }
        let s = &facts.summary;
        if !inner.due(
            (s.db.clone(), s.collection.clone(), s.shape.clone()),
            Instant::now(),
        ) {
            return;
        }
        let max = inner.cfg.max_running;
        if inner
            .running
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .is_err()
        {
            let dropped_total = inner.dropped.fetch_add(1, Relaxed) + 1;
            command_event!(
                debug,
                request_id,
                facts,
                "diagnose_dropped",
                { dropped_total, },
                "not diagnosing {}: {max} diagnoses are already running",
                s.command
            );
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            inner.running.fetch_sub(1, Relaxed);
            return;
        };
        let running = Running(inner.clone());
        let monitoring = Facts {
            command: s.command.to_string(),
            app: facts.meta.app.to_string(),
            driver: facts.meta.driver_label(),
            elapsed_ms,
            stalled,
            code: error.as_ref().map(|e| e.0),
            code_name: error.map(|e| e.1),
        };
        let job = Job {
            request_id,
            facts: facts.clone(),
            slot: slot.clone(),
            monitoring,
        };
        inner.tasks.spawn_on(run(running, job), &handle);
    }
}

struct Job {
    request_id: i32,
    facts: RequestFacts,
    slot: Arc<DiagnoseSlot>,
    monitoring: Facts,
}

async fn run(running: Running, job: Job) {
    let inner = &running.0;
    tokio::select! {
        // Cancel-safe: dropping the diagnosis drops its own connection.
        report = diagnose(inner, &job) => done(&job, report),
        _ = inner.stop.cancelled() => {}
    }
}

async fn diagnose(inner: &Inner, job: &Job) -> Report {
    let s = &job.facts.summary;
    let mut findings = vec![monitoring::finding(&job.monitoring)];
    let target = Document::try_from(job.slot.body.as_ref())
        .map_err(super::DiagnoseError::from)
        .and_then(|d| Target::from_command(d, &s.db));
    let stages: Vec<String> = s.stages.iter().map(|x| x.to_string()).collect();
    let mut target = match target {
        Ok(t) => t,
        Err(e) => {
            findings.push(super::Finding::new(
                "monitoring",
                None,
                Severity::Info,
                format!("cannot read the pipeline: {e}"),
                serde_json::json!({}),
            ));
            return report(s, stages, findings);
        }
    };
    let m = &job.facts.meta;
    if !m.driver.is_empty() {
        // "PyMongo|c", "4.20.0|": the wrapper's part after '|' is not the driver's.
        let first = |s: &str| s.split('|').next().unwrap_or("").trim().to_string();
        target.driver = Some((first(&m.driver), first(&m.driver_version)));
    }
    let limits = Limits {
        probe_timeout_ms: inner.cfg.probe_timeout_ms,
        sample: inner.cfg.sample,
        explain_max_time_ms: inner.cfg.probe_timeout_ms,
    };
    let timeout = Duration::from_millis(inner.cfg.probe_timeout_ms);
    let settings = inner.settings.load_full();
    let creds = inner
        .credentials
        .as_ref()
        .map(|(u, p, d)| (u.as_str(), p.as_str(), d.as_str()));
    match Probe::connect(
        &inner.upstream,
        settings.tls.connector.as_ref(),
        creds,
        timeout,
    )
    .await
    {
        Ok(probe) if probe.stalled() => findings.push(stall_finding(limits.probe_timeout_ms)),
        Ok(mut probe) => findings.extend(run_checks(&mut probe, &target, &limits).await),
        Err(e) => findings.push(super::Finding::new(
            "monitoring",
            None,
            Severity::Error,
            format!("mongotap could not open its own connection to probe the server: {e}"),
            serde_json::json!({ "code": e.code(), "code_name": e.code_name() }),
        )),
    }
    report(s, stages, findings)
}

fn report(
    s: &crate::observe::meta::CommandSummary,
    stages: Vec<String>,
    findings: Vec<super::Finding>,
) -> Report {
    Report {
        namespace: format!("{}.{}", s.db, s.collection),
        stages,
        findings,
    }
}

fn done(job: &Job, report: Report) {
    let findings = serde_json::to_value(&report.findings).unwrap_or_default();
    let _ = job.slot.result.set(findings.clone());
    let problems: Vec<&str> = report
        .findings
        .iter()
        // The first finding restates the event's own facts.
        .skip(1)
        .filter(|f| f.severity != Severity::Info)
        .map(|f| f.message.as_str())
        .collect();
    let s = &job.facts.summary;
    command_event!(
        info,
        job.request_id,
        &job.facts,
        "diagnosed",
        {
            trigger = if job.monitoring.stalled { "stalled" } else if job.monitoring.code.is_some() { "failed" } else { "slow" },
            elapsed_ms = job.monitoring.elapsed_ms,
            findings = %findings,
        },
        "diagnosed {} on {}.{}: {}",
        s.command,
        s.db,
        s.collection,
        if problems.is_empty() { "no problem found".to_string() } else { problems.join("; ") }
    );
}
