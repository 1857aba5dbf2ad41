//! mongotap: a MongoDB wire-protocol proxy that answers, from the wire,
//! which command is stuck, on which connection, from which app, and for how
//! long.
//!
//! The top-level modules form layers, and imports flow only downwards
//! (`layers_tests` fails on any circle). Bottom to top:
//!
//! - `config`, `stdout`, `logging`: settings as read from flags and the
//!   file; writing to stdout; the log subscriber.
//! - `mongo_client`: mongotap's own MongoDB client; it knows no other module.
//! - `settings`: what SIGHUP swaps (TLS for both sides, the compiled
//!   rewrite rules), built from `config`, the upstream TLS connector being
//!   the client's.
//! - `topology`: replica-set mode's members, their listeners and the map
//!   from member addresses to mongotap's; it needs only `config`.
//! - `capture`: the recorder and capture files; it needs only `config`.
//! - `otel`: the OpenTelemetry span exporter (its thread and bounded
//!   queue) and `traceparent`; it needs only `config`.
//! - `observe`: per-frame observation. Its `Observatory` holds what every
//!   connection shares, including the capture and the settings swap; it
//!   reaches auto-explain only through its `AutoExplain` trait.
//! - `background`: the watchdog, auto-explain and the health probe; they
//!   read observe's tables and log with its events, so they sit above it.
//! - `diagnose`: the checklist for a slow, stalled or failed aggregate
//!   (explain, join types, driver and server, guardrails), for the
//!   `diagnose` command and live `diagnosed` events; it reuses
//!   auto-explain's command and observe's driver table.
//! - `replay`: the `replay` command, reading captures (`capture`) with the
//!   handshake parsing of `observe` and the rules of `settings`.
//! - `shared`: `Shared`, the bundle of those parts the proxy's own tasks
//!   pass around.
//! - `admin`: the HTTP endpoint over `Shared`.
//! - `proxy`: the listener and sessions; `proxy::server` wires every task
//!   together (admin included).
//! - `main`: the CLI.

mod admin;
mod background;
mod capture;
mod config;
mod diagnose;
mod feed;
#[cfg(test)]
mod layers_tests;
mod logging;
mod mongo_client;
mod observe;
mod otel;
mod proxy;
mod replay;
mod settings;
mod shared;
mod stdout;
mod topology;

use capture::export;
use proxy::server;
use settings::tls;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use config::{Config, LogFormat, RuntimeFlavor};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mongotap",
    version,
    about = "MongoDB wire-protocol proxy: per-command latency, stalled and never-replied commands, from the wire",
    long_about = "mongotap sits between any MongoDB client and its server and forwards every byte unchanged. \
It decodes each frame, matches requests to replies, and reports latency per command, namespace and app, \
commands that stall or never get a reply, and leaked cursors.\n\n\
Settings come from built-in defaults, then --config FILE, then flags."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    ///
    /// Clients connect to --listen with directConnection=true in their URI,
    /// e.g. mongodb://127.0.0.1:27018/?directConnection=true&appName=checkout;
    /// without it a driver discovers replica-set members from the server and
    /// connects to them directly, bypassing the proxy. For a replica set, set
    /// [topology] mode = "replica-set" in the config file instead: mongotap
    /// then listens once per member and hello replies name its listeners, so
    /// drivers given replicaSet= discover and fail over through it. Stop with SIGTERM or
    /// Ctrl-C: in-flight commands get proxy.drain_timeout_ms to finish.
    Proxy(ProxyArgs),
    /// Parse and validate a config file, print the effective settings as
    /// TOML (secrets redacted), and exit (0: valid, 1: invalid).
    CheckConfig {
        /// The TOML config file to check.
        file: PathBuf,
    },
    /// Replay captured traffic against a server and compare latency and
    /// results per command and namespace.
    Replay(replay::ReplayArgs),
    /// Diagnose an aggregate pasted from a log: explain per stage, the BSON
    /// types of joined, unwound and grouped fields, driver and server
    /// versions, and missing allowDiskUse/maxTimeMS. Exits 0 whenever the
    /// checks could run, problems found or not.
    Diagnose(diagnose::cli::DiagnoseArgs),
    /// Work with capture files ([capture] in the config).
    Capture {
        #[command(subcommand)]
        command: CaptureCommand,
    },
}

#[derive(Subcommand)]
enum CaptureCommand {
    /// Write capture files as a pcapng that Wireshark opens as MongoDB.
    Export(export::ExportArgs),
}

#[derive(Args)]
struct ProxyArgs {
    /// TOML config file (see config.toml in the repository for every key;
    /// `mongotap check-config FILE` checks one).
    #[arg(long, short, env = "MONGOTAP_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to accept client connections on; a host name such as
    /// localhost:27018 works too [default: 127.0.0.1:27018].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Server to forward to: mongod, mongos or FerretDB [default: 127.0.0.1:27017].
    #[arg(long, value_name = "HOST:PORT")]
    upstream: Option<String>,
    /// Admin HTTP endpoint (/metrics, /stats, /inflight); "" disables it
    /// [default: 127.0.0.1:9477].
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,
    /// Commands slower than this many ms are logged as `slow` [default: 100].
    #[arg(long, value_name = "MS")]
    slow_ms: Option<u64>,
    /// Commands pending longer than this many ms are reported as `stalled` [default: 5000].
    #[arg(long, value_name = "MS")]
    stall_ms: Option<u64>,
    /// Log format on stderr [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Tokio runtime flavour [default: auto: current-thread with 2 CPUs or
    /// fewer, multi-thread above].
    #[arg(long, value_enum)]
    runtime: Option<RuntimeFlavor>,
}

impl ProxyArgs {
    /// Defaults, then the file, then these flags, then validation.
    fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = &self.listen {
            cfg.proxy.listen = v.clone();
            cfg.proxy_addresses_given.push("--listen".into());
        }
        if let Some(v) = &self.upstream {
            cfg.proxy.upstream = v.clone();
            cfg.proxy_addresses_given.push("--upstream".into());
        }
        if let Some(v) = &self.admin {
            cfg.admin.listen = v.clone();
        }
        if let Some(v) = self.slow_ms {
            cfg.watch.slow_ms = v;
        }
        if let Some(v) = self.stall_ms {
            cfg.watch.stall_ms = v;
        }
        if let Some(v) = self.log_format {
            cfg.log.format = v;
        }
        if let Some(v) = self.runtime {
            cfg.proxy.runtime = v;
        }
        // The standard OpenTelemetry variables tune an [otel] table; they
        // do not turn export on by themselves (an app's sidecar may set
        // them for the app).
        if let Some(otel) = &mut cfg.otel {
            otel.apply_env(|k| std::env::var(k).ok());
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Proxy(args) => run_proxy(&args),
        Command::CheckConfig { file } => check_config(file),
        Command::Replay(args) => replay::run(&args).map_err(Into::into),
        Command::Diagnose(args) => diagnose::cli::run(&args).map_err(Into::into),
        Command::Capture {
            command: CaptureCommand::Export(args),
        } => export::run(&args).map_err(Into::into),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mongotap: error: {}", error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. Our error enums put their cause's
/// text in their own message (log lines show only that message) and also
/// keep it as `source()`, so a cause whose text is already on the line is
/// skipped: "No such file or directory (os error 2)" is said once.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn check_config(file: PathBuf) -> anyhow::Result<()> {
    let args = ProxyArgs {
        config: Some(file.clone()),
        listen: None,
        upstream: None,
        admin: None,
        slow_ms: None,
        stall_ms: None,
        log_format: None,
        runtime: None,
    };
    let cfg = args.load()?;
    // Certificates and keys are read at startup; a file the proxy could
    // not load must not pass the check.
    tls::Tls::load(&cfg.tls, &cfg.proxy.upstream).context("cannot load TLS settings")?;
    // A TOML comment first, so that the whole output is a config file.
    let text = format!("# {}: ok\n{}", file.display(), cfg.redacted().to_toml()?);
    stdout::print(&text).context("cannot write to stdout")
}

fn run_proxy(args: &ProxyArgs) -> anyhow::Result<()> {
    let cfg = args.load()?;
    let feed = logging::init(&cfg.log)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let flavor = cfg.proxy.runtime.resolve(cpus);
    tracing::info!(
        configured = cfg.proxy.runtime.name(),
        runtime = flavor.name(),
        cpus,
        "tokio runtime: {} ({cpus} CPUs available, proxy.runtime = {})",
        flavor.name(),
        cfg.proxy.runtime.name()
    );
    let runtime = match flavor {
        RuntimeFlavor::CurrentThread | RuntimeFlavor::Auto => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        RuntimeFlavor::MultiThread => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if cfg.proxy.worker_threads > 0 {
                b.worker_threads(cfg.proxy.worker_threads);
            }
            b.enable_all().build()
        }
    }
    .context("cannot start the tokio runtime")?;
    runtime.block_on(server::run(cfg, args.config.clone(), feed))
}
