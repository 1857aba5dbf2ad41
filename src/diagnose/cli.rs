//! `mongotap diagnose`: the checks for a pipeline pasted from a log, as a
//! readable report or (`--json`) as `{"namespace", "stages", "findings"}`.
//! Exits 0 whenever the checks could run, problems found or not.

use super::probe::Probe;
use super::{run_checks, stall_finding, DiagnoseError, Limits, Report, Severity, Target};
use crate::config::TlsUpstreamSide;
use crate::settings::tls;
use bson::{doc, Bson, Document};
use std::time::Duration;

#[derive(clap::Args)]
pub struct DiagnoseArgs {
    /// The server to probe, HOST:PORT (mongod, mongos or FerretDB).
    #[arg(long, value_name = "HOST:PORT")]
    upstream: String,
    /// The aggregate's namespace, DB.COLLECTION.
    #[arg(long, value_name = "DB.COLL")]
    ns: String,
    /// The pipeline as (extended) JSON: an array of stages, or a whole
    /// aggregate command (its allowDiskUse and maxTimeMS are checked too);
    /// @FILE reads it from FILE.
    #[arg(long, value_name = "JSON|@FILE")]
    pipeline: String,
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
    /// The application's driver, e.g. "mongo-go-driver 1.11.4", checked
    /// against the server's wire version.
    #[arg(long, value_name = "NAME VERSION")]
    driver: Option<String>,
    /// SCRAM-SHA-256 user for mongotap's connection.
    #[arg(long, env = "MONGOTAP_DIAGNOSE_USERNAME")]
    username: Option<String>,
    /// Password for --username (prefer the environment variable: flags
    /// show in `ps`).
    #[arg(long, env = "MONGOTAP_DIAGNOSE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Database the user is defined in.
    #[arg(long, default_value = "admin")]
    auth_db: String,
    /// Connect with TLS (the system's roots unless --tls-ca).
    #[arg(long)]
    tls: bool,
    /// PEM CA bundle for the server's certificate (implies --tls).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<String>,
    /// Name to verify the server's certificate against [default: the host
    /// of --upstream].
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Client certificate and key (PEM) for servers that require one.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<String>,
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<String>,
    /// Each probe (connecting included) gets this long; a server that
    /// does not answer in time is reported as stalled.
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    probe_timeout_ms: u64,
    /// Documents sampled per joined, unwound or grouped field.
    #[arg(long, default_value_t = 100, value_name = "N")]
    sample: i64,
}

pub fn run(args: &DiagnoseArgs) -> Result<(), DiagnoseError> {
    let target = args.target()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DiagnoseError::Runtime)?;
    let report = runtime.block_on(diagnose(args, &target))?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&report).map_err(DiagnoseError::Render)?;
        s.push('\n');
        s
    } else {
        readable(&report)
    };
    crate::stdout::print(&text).map_err(DiagnoseError::Stdout)
}

impl DiagnoseArgs {
    fn target(&self) -> Result<Target, DiagnoseError> {
        let (db, coll) = self
            .ns
            .split_once('.')
            .filter(|(d, c)| !d.is_empty() && !c.is_empty())
            .ok_or_else(|| DiagnoseError::Namespace(self.ns.clone()))?;
        let text = match self.pipeline.strip_prefix('@') {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|source| DiagnoseError::ReadFile {
                    path: path.into(),
                    source,
                })?
            }
            None => self.pipeline.clone(),
        };
        let json: serde_json::Value = serde_json::from_str(&text)?;
        let command = match Bson::try_from(json)? {
            Bson::Array(stages) => doc! { "aggregate": coll, "pipeline": stages, "cursor": {} },
            Bson::Document(mut d) if d.contains_key("pipeline") => {
                d.insert("aggregate", coll);
                d
            }
            _ => return Err(DiagnoseError::NotAPipeline),
        };
        let command = put_first(command, "aggregate");
        let mut target = Target::from_command(command, db)?;
        if let Some(d) = &self.driver {
            let (name, version) = d
                .trim()
                .rsplit_once(' ')
                .ok_or_else(|| DiagnoseError::Driver(d.clone()))?;
            target.driver = Some((name.trim().to_string(), version.to_string()));
        }
        Ok(target)
    }
}

/// The command name must be the first key.
fn put_first(d: Document, key: &str) -> Document {
    let mut out = Document::new();
    if let Some(v) = d.get(key) {
        out.insert(key, v.clone());
    }
    for (k, v) in d {
        if k != key {
            out.insert(k, v);
        }
    }
    out
}

async fn diagnose(args: &DiagnoseArgs, target: &Target) -> Result<Report, DiagnoseError> {
    let tls = if args.tls || args.tls_ca.is_some() {
        let side = TlsUpstreamSide {
            ca: args.tls_ca.clone(),
            server_name: args.tls_server_name.clone(),
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
        };
        Some(tls::connector(&side, &args.upstream)?)
    } else {
        None
    };
    let credentials = match (&args.username, &args.password) {
        (Some(u), Some(p)) => Some((u.as_str(), p.as_str(), args.auth_db.as_str())),
        _ => None,
    };
    let timeout = Duration::from_millis(args.probe_timeout_ms);
    let limits = Limits {
        probe_timeout_ms: args.probe_timeout_ms,
        sample: args.sample.max(1),
        explain_max_time_ms: args.probe_timeout_ms,
    };
    let mut probe = Probe::connect(&args.upstream, tls.as_ref(), credentials, timeout).await?;
    let mut findings = Vec::new();
    if probe.stalled() {
        findings.push(stall_finding(args.probe_timeout_ms));
    } else {
        findings = run_checks(&mut probe, target, &limits).await;
    }
    Ok(Report {
        namespace: format!("{}.{}", target.db, target.collection),
        stages: target.stage_names(),
        findings,
    })
}

/// The report for people: one block per check, in checklist order.
pub fn readable(r: &Report) -> String {
    let mut s = format!("diagnosis of {}: {}\n", r.namespace, r.stages.join(" > "));
    let steps = [
        ("monitoring", "1. monitoring"),
        ("explain", "2. explain"),
        ("join_types", "3. join types"),
        ("driver_server", "4. driver and server"),
        ("guardrails", "5. guardrails"),
    ];
    for (check, title) in steps {
        let found: Vec<_> = r.findings.iter().filter(|f| f.check == check).collect();
        if found.is_empty() {
            continue;
        }
        s.push_str(&format!("\n{title}\n"));
        for f in found {
            let mark = match f.severity {
                Severity::Info => "  ",
                Severity::Warning => "! ",
                Severity::Error => "!!",
            };
            // "$lookup joins ..." names its stage already.
            let stage = match f.stage.as_deref() {
                Some(st) if !f.message.starts_with(st) => format!("{st}: "),
                _ => String::new(),
            };
            let mut lines = f.message.lines();
            s.push_str(&format!("  {mark} {stage}{}\n", lines.next().unwrap_or("")));
            for l in lines {
                s.push_str(&format!("       {l}\n"));
            }
        }
    }
    s
}
