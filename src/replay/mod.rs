//! `mongotap replay`: sends captured traffic to another server and compares
//! it with the capture, per command and namespace.
//!
//! - One live connection per captured connection, each request in captured
//!   order, under new request ids, waiting for each reply before the next
//!   request of that connection (drivers do not pipeline).
//! - Each live connection does its own hello and, given `--username`, its
//!   own SCRAM-SHA-256 login; the captured handshake and auth are skipped.
//! - Cursor ids the capture saw in replies are mapped to the ids the live
//!   server returned, for getMore and killCursors (on any connection). A
//!   getMore whose live cursor is already exhausted is skipped and counted.
//! - Timing: requests start at their captured offsets (`--speed 1`),
//!   scaled (`--speed X`), or as fast as replies allow (`--max-speed`).
//! - w:0 writes (moreToCome) go out without waiting; moreToCome reply
//!   streams are read to their last reply.
//! - `--config FILE` applies that file's rewrite rules (enforce mode).

mod conn;
mod cursor_ids;
mod plan;
mod report;

use crate::config::Config;
use crate::mongo_client::{ClientError, UpstreamClient};
use crate::settings::policy::Policy;
use cursor_ids::{remap, Cursors, Remapped};
use indicatif::{ProgressBar, ProgressStyle};
use plan::{ConnPlan, Op, Plan};
use report::{ConnResult, Outcome, Report};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Capture files (PATH-000001.mtcap ...), in any order (they are read
    /// in the order they were written), or the capture base path
    /// (capture.path), which stands for all its files.
    #[arg(required = true, value_name = "CAPTURE")]
    captures: Vec<PathBuf>,
    /// The server to replay against, HOST:PORT.
    #[arg(long)]
    target: String,
    /// Replay at this multiple of the captured pace (2: twice as fast).
    #[arg(long, default_value_t = 1.0, conflicts_with = "max_speed")]
    speed: f64,
    /// Send each request as soon as its connection's previous reply is in.
    #[arg(long)]
    max_speed: bool,
    /// Write the comparison as JSON to this file (the table is printed
    /// either way).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Apply this config file's [rewrite] rules to replayed commands.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// SCRAM-SHA-256 user for the live connections.
    #[arg(long, env = "MONGOTAP_REPLAY_USERNAME")]
    username: Option<String>,
    /// Password for --username (prefer the environment variable: flags
    /// show in `ps`).
    #[arg(long, env = "MONGOTAP_REPLAY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Database the user is defined in.
    #[arg(long, default_value = "admin")]
    auth_db: String,
    /// Give up on connecting, logging in or a reply after this long (each);
    /// the connection then stops.
    #[arg(long, default_value_t = 60_000)]
    reply_timeout_ms: u64,
}

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("no capture files found for {0}")]
    NoFiles(String),
    #[error("{0}")]
    Read(String),
    #[error("the capture holds no requests to replay ({0})")]
    Empty(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("--speed must be a positive number, not {0}")]
    Speed(f64),
    #[error("--username and --password go together")]
    Credentials,
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(std::io::Error),
    /// Talking to the target: connecting, the handshake, the login, or a
    /// reply.
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("every connection to target {target} failed; the first: {first}")]
    AllFailed { target: String, first: String },
    #[error("cannot write the report {path}: {source}")]
    Report {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] std::io::Error),
}

pub fn run(args: &ReplayArgs) -> Result<(), ReplayError> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        return Err(ReplayError::Speed(args.speed));
    }
    let creds = match (&args.username, &args.password) {
        (Some(u), Some(p)) => Some(Credentials {
            username: u.clone(),
            password: p.clone(),
            db: args.auth_db.clone(),
        }),
        (None, None) => None,
        _ => return Err(ReplayError::Credentials),
    };
    let policy = match &args.config {
        Some(path) => {
            let cfg = Config::from_file(path)?;
            cfg.validate()?;
            Some(Policy::compile(&cfg.rewrite))
        }
        None => None,
    };
    let files = crate::capture::capture_files(&args.captures).map_err(ReplayError::Read)?;
    if files.is_empty() {
        let names: Vec<String> = args
            .captures
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(ReplayError::NoFiles(names.join(", ")));
    }
    let plan = plan::load(&files, policy.as_ref()).map_err(ReplayError::Read)?;
    if plan.ops() == 0 {
        let why: Vec<String> = plan
            .skipped
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        return Err(ReplayError::Empty(if why.is_empty() {
            format!("{} records", plan.records)
        } else {
            format!("{} records; left out: {}", plan.records, why.join(", "))
        }));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ReplayError::Runtime)?;
    let settings = Settings {
        target: args.target.clone(),
        creds,
        speed: (!args.max_speed).then_some(args.speed),
        reply_timeout: Duration::from_millis(args.reply_timeout_ms.max(1)),
    };
    let mut report = runtime.block_on(replay(plan, settings))?;
    report.files = files.iter().map(|f| f.display().to_string()).collect();
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
        std::fs::write(path, json).map_err(|source| ReplayError::Report {
            path: path.display().to_string(),
            source,
        })?;
    }
    let mut out = report.table();
    if let Some(path) = &args.report {
        out.push_str(&format!("report: {}\n", path.display()));
    }
    crate::stdout::print(&out).map_err(ReplayError::Stdout)
}

struct Credentials {
    username: String,
    password: String,
    db: String,
}

struct Settings {
    target: String,
    creds: Option<Credentials>,
    /// None: --max-speed.
    speed: Option<f64>,
    reply_timeout: Duration,
}

/// State every connection task shares.
struct ReplayState {
    settings: Settings,
    /// Instant the replay's first request is due.
    start: tokio::time::Instant,
    /// Capture time of that first request.
    start_ns: u64,
    cursors: Cursors,
    progress: ProgressBar,
    errors: AtomicU64,
}

async fn replay(plan: Plan, settings: Settings) -> Result<Report, ReplayError> {
    let progress = progress_bar(plan.ops() as u64);
    let shared = Arc::new(ReplayState {
        start: tokio::time::Instant::now(),
        start_ns: plan.start_ns,
        cursors: Cursors::new(plan.opened_cursors.clone()),
        settings,
        progress,
        errors: AtomicU64::new(0),
    });
    let started = Instant::now();
    let ticker = tokio::spawn(tick(shared.clone(), started));
    let plan = Arc::new(plan);
    let mut tasks = Vec::with_capacity(plan.conns.len());
    for i in 0..plan.conns.len() {
        let (plan, shared) = (plan.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            (i, run_conn(&plan.conns[i], &shared).await)
        }));
    }
    let mut results = vec![ConnResult::default(); plan.conns.len()];
    for t in tasks {
        // A panicking task is a bug; its requests then count as not sent.
        if let Ok((i, result)) = t.await {
            results[i] = result;
        }
    }
    ticker.abort();
    shared.progress.finish_and_clear();
    let elapsed = started.elapsed();
    let target = shared.settings.target.clone();
    if results.iter().all(|r| !r.opened) {
        return Err(ReplayError::AllFailed {
            target,
            first: results
                .iter()
                .find_map(|r| r.failure.clone())
                .unwrap_or_default(),
        });
    }
    let mut report = Report::new(&plan, &results);
    report.target = target;
    report.speed = shared.settings.speed;
    report.duration_ms = elapsed.as_millis() as u64;
    report.ops_per_sec = report.sent as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(report)
}

fn progress_bar(total: u64) -> ProgressBar {
    // Drawn on stderr, and only when it is a terminal.
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} requests  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Refreshes the ops/s and error count shown next to the bar.
async fn tick(shared: Arc<ReplayState>, started: Instant) {
    let mut interval = tokio::time::interval(Duration::from_millis(250));
    loop {
        interval.tick().await;
        let done = shared.progress.position();
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        shared.progress.set_message(format!(
            "{rate:.0} ops/s  {} errors",
            shared.errors.load(Relaxed)
        ));
    }
}

/// Replays one captured connection.
async fn run_conn(cp: &ConnPlan, shared: &ReplayState) -> ConnResult {
    let mut result = ConnResult {
        outcomes: Vec::with_capacity(cp.ops.len()),
        ..ConnResult::default()
    };
    // Open the connection when its first request is due, as the capture did.
    if let Some(first) = cp.ops.first() {
        wait_until(shared, first.at_ns).await;
    }
    let s = &shared.settings;
    let mut client = match conn::open(&s.target, s.creds.as_ref(), s.reply_timeout).await {
        Ok(c) => c,
        Err(e) => {
            let why = e.to_string();
            fail_rest(cp, 0, &mut result.outcomes, shared, &why);
            result.failure = Some(why);
            return result;
        }
    };
    result.opened = true;
    for (i, op) in cp.ops.iter().enumerate() {
        wait_until(shared, op.at_ns).await;
        match one(&mut client, cp.conn, op, shared).await {
            Ok(out) => {
                if out.error {
                    shared.errors.fetch_add(1, Relaxed);
                }
                result.outcomes.push(out);
                shared.progress.inc(1);
            }
            Err(e) => {
                // The connection is out of step or gone: the rest of this
                // connection's requests fail with the same cause.
                let why = e.to_string();
                fail_rest(cp, i, &mut result.outcomes, shared, &why);
                result.failure = Some(why);
                break;
            }
        }
    }
    result
}

/// Marks the connection's remaining requests failed. Cursors they would
/// have opened are recorded as never opened, so getMores on other
/// connections skip them at once instead of waiting.
fn fail_rest(
    cp: &ConnPlan,
    from: usize,
    outcomes: &mut Vec<Outcome>,
    shared: &ReplayState,
    why: &str,
) {
    for op in &cp.ops[from..] {
        if let Some(id) = op.captured.cursor_id.filter(|&id| id != 0) {
            if op.command != "getMore" {
                shared.cursors.learn(id, 0);
            }
        }
        outcomes.push(Outcome {
            error: true,
            error_name: Some(why.to_string()),
            ..Outcome::default()
        });
        shared.errors.fetch_add(1, Relaxed);
        shared.progress.inc(1);
    }
}

async fn wait_until(shared: &ReplayState, at_ns: u64) {
    let Some(speed) = shared.settings.speed else {
        return;
    };
    let offset = at_ns.saturating_sub(shared.start_ns) as f64 / speed;
    let due = shared.start + Duration::from_nanos(offset as u64);
    tokio::time::sleep_until(due).await;
}

/// Sends one request (cursor ids mapped) and reads its reply.
async fn one(
    client: &mut UpstreamClient,
    captured_conn: u64,
    op: &Op,
    shared: &ReplayState,
) -> Result<Outcome, ReplayError> {
    let wait = shared.settings.reply_timeout;
    let mut frame = match remap(op, captured_conn, &shared.cursors, wait).await {
        Remapped::Send(frame) => frame,
        Remapped::Skip(why) => {
            return Ok(Outcome {
                skipped: Some(why),
                ..Outcome::default()
            })
        }
    };
    let sent = Instant::now();
    client.send_frame(&mut frame).await?;
    if op.fire_and_forget {
        return Ok(Outcome::default());
    }
    let reply = conn::reply(client, &op.command, shared.settings.reply_timeout).await?;
    let latency_ns = sent.elapsed().as_nanos() as u64;
    // Learn the live cursor behind the captured one.
    if let Some(captured) = op.captured.cursor_id.filter(|&c| c != 0) {
        if op.command != "getMore" {
            shared.cursors.learn(
                captured,
                reply.cursor_id.filter(|_| !reply.error).unwrap_or(0),
            );
        } else if reply.error || reply.cursor_id == Some(0) {
            shared.cursors.learn(captured, 0);
        }
    }
    Ok(Outcome {
        skipped: None,
        latency_ns: Some(latency_ns),
        docs: reply.docs,
        error: reply.error,
        error_name: reply
            .error
            .then(|| {
                reply
                    .code_name
                    .or_else(|| reply.code.map(|c| format!("code {c}")))
            })
            .flatten(),
    })
}
