//! The diagnosis of an aggregate: the five steps of the "why does my
//! aggregate hang" checklist, run by mongotap on its own upstream
//! connection. `mongotap diagnose` (`cli`) runs them for a pasted
//! pipeline; with `[diagnose] enabled = true` (`live`) they run for every
//! aggregate that stalls, runs slow or fails.
//!
//! - `probe`: the connection, every command bounded by a timeout.
//! - `fields`: sampling a field's BSON types with a bounded `find`.
//! - `monitoring`, `explain`, `joins`, `compat`, `guardrails`: checks 1-5.
//!
//! Findings name stages, fields, BSON types and counts, never a value
//! from the pipeline or the data: they go to logs and endpoints.

pub mod cli;
mod compat;
mod explain;
mod fields;
mod guardrails;
mod joins;
pub mod live;
mod monitoring;
mod probe;

use crate::mongo_client::ClientError;
use bson::{Bson, Document};
use probe::Probe;
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

/// Stages that write: never sent to the server, not even inside explain.
pub const WRITE_STAGES: &[&str] = &["$out", "$merge"];

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A fact: what ran, what the server has.
    Info,
    /// Likely to make the aggregate slow, wrong or unbounded.
    Warning,
    /// Makes the aggregate fail or return nothing, or the probe failed.
    Error,
}

/// One thing a check found. `evidence` holds names, types and counts only.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// "monitoring", "explain", "join_types", "driver_server" or "guardrails".
    pub check: &'static str,
    /// The stage it is about (e.g. "$lookup"), or null for the whole pipeline.
    pub stage: Option<String>,
    pub severity: Severity,
    pub message: String,
    pub evidence: Value,
}

impl Finding {
    fn new(
        check: &'static str,
        stage: Option<&Stage>,
        severity: Severity,
        message: String,
        evidence: Value,
    ) -> Self {
        let mut evidence = evidence;
        if let (Some(s), Value::Object(map)) = (stage, &mut evidence) {
            map.insert("stage_index".into(), s.index.into());
        }
        Finding {
            check,
            stage: stage.map(|s| s.name.clone()),
            severity,
            message,
            evidence,
        }
    }
}

/// The `--json` output and the `diagnosed` event's content.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "db.collection".
    pub namespace: String,
    pub stages: Vec<String>,
    pub findings: Vec<Finding>,
}

/// One pipeline stage: its position, name and body.
#[derive(Debug, Clone)]
pub struct Stage {
    pub index: usize,
    pub name: String,
    pub body: Bson,
}

/// What to diagnose: the aggregate command as the client sent it.
#[derive(Debug, Clone)]
pub struct Target {
    pub db: String,
    pub collection: String,
    /// The aggregate's body: explain copies it.
    pub command: Document,
    pub stages: Vec<Stage>,
    pub allow_disk_use: Option<bool>,
    pub max_time_ms: Option<i64>,
    /// The driver's name and version (the handshake's, or `--driver`).
    pub driver: Option<(String, String)>,
}

/// What stops a diagnosis or one of its probes. Every probe failure
/// becomes a finding; the rest end `mongotap diagnose` with an error.
#[derive(Debug, Error)]
pub enum DiagnoseError {
    #[error("the aggregate has no `pipeline` array")]
    NoPipeline,
    #[error("pipeline stage #{0} is not a document with one stage name")]
    BadStage(usize),
    #[error("the aggregate names no collection (`aggregate: 1` pipelines cannot be sampled)")]
    NoCollection,
    #[error("the pipeline must be an array of stages or an aggregate command document")]
    NotAPipeline,
    #[error("--ns {0:?} is not DB.COLLECTION")]
    Namespace(String),
    #[error("--driver {0:?} is not \"NAME VERSION\"")]
    Driver(String),
    #[error("cannot read the pipeline from {path}: {source}")]
    ReadFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the pipeline is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Extended JSON that is not BSON, or an aggregate body that is not.
    #[error("the pipeline cannot be read as BSON: {0}")]
    Bson(#[from] bson::error::Error),
    #[error(transparent)]
    Tls(#[from] crate::settings::tls::TlsError),
    /// The server answered with an error, or the connection failed.
    #[error(transparent)]
    Upstream(#[from] ClientError),
    /// No answer within the probe timeout (now, or on an earlier probe).
    #[error("the server did not answer within {ms} ms")]
    ProbeTimedOut { ms: u64 },
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
    #[error("cannot render the report as JSON: {0}")]
    Render(serde_json::Error),
}

impl Target {
    /// From an aggregate command body (with `$db`, or `db` given).
    pub fn from_command(command: Document, db: &str) -> Result<Target, DiagnoseError> {
        let collection = command
            .get_str("aggregate")
            .map_err(|_| DiagnoseError::NoCollection)?
            .to_string();
        let pipeline = command
            .get_array("pipeline")
            .map_err(|_| DiagnoseError::NoPipeline)?;
        let mut stages = Vec::with_capacity(pipeline.len());
        for (index, s) in pipeline.iter().enumerate() {
            let doc = s.as_document().ok_or(DiagnoseError::BadStage(index))?;
            let (name, body) = doc.iter().next().ok_or(DiagnoseError::BadStage(index))?;
            stages.push(Stage {
                index,
                name: name.clone(),
                body: body.clone(),
            });
        }
        let allow_disk_use = command.get_bool("allowDiskUse").ok();
        let max_time_ms = command.get("maxTimeMS").and_then(fields::as_i64);
        Ok(Target {
            db: db.to_string(),
            collection,
            command,
            stages,
            allow_disk_use,
            max_time_ms,
            driver: None,
        })
    }

    pub fn stage_names(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.name.clone()).collect()
    }

    fn writes(&self) -> Option<&Stage> {
        self.stages
            .iter()
            .find(|s| WRITE_STAGES.contains(&s.name.as_str()))
    }
}

/// Limits on the probes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Each probe command (and the connection) gets this long.
    pub probe_timeout_ms: u64,
    /// Documents sampled per field.
    pub sample: i64,
    /// maxTimeMS sent with the explain.
    pub explain_max_time_ms: u64,
}

/// Runs checks 2-5 over `probe` (check 1 is the caller's: it has the
/// monitoring facts). Stops probing at the first timeout: the server is
/// stalled, and that is the diagnosis.
pub async fn run_checks(probe: &mut Probe, target: &Target, limits: &Limits) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(w) = target.writes() {
        out.push(Finding::new(
            "guardrails",
            Some(w),
            Severity::Warning,
            format!(
                "the pipeline writes ({}): mongotap never sends a write stage, so it did not explain it; the read-only checks ran",
                w.name
            ),
            serde_json::json!({ "refused": true }),
        ));
    }
    compat::check(probe, target, &mut out).await;
    if !probe.stalled() && target.writes().is_none() {
        explain::check(probe, target, limits, &mut out).await;
    }
    if !probe.stalled() {
        joins::check(probe, target, limits, &mut out).await;
    }
    if !probe.stalled() {
        guardrails::check(probe, target, &mut out).await;
    }
    if let Some(ms) = probe.timed_out_ms() {
        out.push(stall_finding(ms));
    }
    // In checklist order (the sort is stable: each check's order stays).
    out.sort_by_key(|f| CHECKS.iter().position(|c| *c == f.check));
    out
}

/// The checks' names, in the checklist's order.
pub const CHECKS: [&str; 5] = [
    "monitoring",
    "explain",
    "join_types",
    "driver_server",
    "guardrails",
];

/// What a probe that got no answer says.
pub fn stall_finding(ms: u64) -> Finding {
    Finding::new(
        "monitoring",
        None,
        Severity::Error,
        format!("the server did not answer mongotap's own probe within {ms} ms: a server-wide stall, not this pipeline"),
        serde_json::json!({ "probe_timeout_ms": ms, "probe_timed_out": true }),
    )
}

#[cfg(test)]
mod tests;
