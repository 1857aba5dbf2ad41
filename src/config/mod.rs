//! Configuration: built-in defaults, then the TOML file, then CLI flags,
//! then `validate()`. `check-config` runs exactly the same path.

use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

mod diagnose;
mod health;
mod otel;
mod topology;
pub use diagnose::DiagnoseConfig;
pub use health::HealthConfig;
pub use otel::OtelConfig;
pub use topology::{host_of, listen_host, TopologyConfig};
#[cfg(test)]
pub use topology::{MemberConfig, TopologyMode};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("cannot print the settings as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub watch: WatchConfig,
    pub log: LogConfig,
    pub rewrite: RewriteConfig,
    pub explain: ExplainConfig,
    pub diagnose: DiagnoseConfig,
    pub tls: TlsConfig,
    pub capture: CaptureConfig,
    pub health: HealthConfig,
    pub topology: TopologyConfig,
    /// OpenTelemetry export; absent, nothing is exported.
    pub otel: Option<OtelConfig>,
    /// Which of proxy.listen and proxy.upstream the file or the flags set
    /// (replica-set mode replaces them, so setting them there is an error).
    #[serde(skip)]
    pub proxy_addresses_given: Vec<String>,
}

/// Traffic capture for `mongotap replay` and Wireshark export.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Start capturing at startup (otherwise POST /capture/start).
    pub enabled: bool,
    /// Files are PATH-000001.mtcap, PATH-000002.mtcap, ...
    pub path: String,
    /// Rotate to a new file past this size.
    pub max_bytes: u64,
    /// Keep at most this many files; the oldest is deleted.
    pub max_files: usize,
    /// Fraction of connections captured (decided per connection), 0.0 to 1.0.
    pub sample_rate: f64,
    /// Globs on "db.collection"; empty captures every namespace.
    pub namespaces: Vec<String>,
    /// Command names; empty captures every command.
    pub commands: Vec<String>,
    /// Records buffered for the writer; past this, records are dropped and
    /// counted in mongotap_capture_dropped_total (client traffic never waits).
    pub channel_capacity: usize,
    /// Bearer token required by POST /capture/start and /capture/stop.
    /// Unset: those routes are refused.
    pub control_token: Option<String>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            enabled: false,
            path: "mongotap-capture".into(),
            max_bytes: 256 * 1024 * 1024,
            max_files: 8,
            sample_rate: 1.0,
            namespaces: Vec::new(),
            commands: Vec::new(),
            channel_capacity: 16_384,
            control_token: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// TLS offered to clients. Absent: clients connect in plaintext.
    pub client: Option<TlsClientSide>,
    /// TLS to the upstream server. Absent: plaintext.
    pub upstream: Option<TlsUpstreamSide>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsClientSide {
    /// PEM certificate chain presented to clients (leaf first).
    pub cert: String,
    /// PEM private key for `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// PEM CA bundle: when set, clients must present a certificate signed by
    /// it (mutual TLS).
    #[serde(default)]
    pub ca: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsUpstreamSide {
    /// PEM CA bundle that signs the server's certificate. Absent: the
    /// system's root certificates.
    #[serde(default)]
    pub ca: Option<String>,
    /// Name sent as SNI and checked against the server's certificate.
    /// Absent: the host part of proxy.upstream.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate (PEM) for servers that require one, e.g. x.509
    /// authentication: the server then sees mongotap's identity, not the app's.
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}

/// Auto-explain: when an aggregate runs longer than `after_ms`, mongotap
/// runs `explain` (executionStats) for the same pipeline on its own
/// upstream connection and logs an `explained` event.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExplainConfig {
    pub enabled: bool,
    /// An aggregate pending or finished after this long is explained.
    pub after_ms: u64,
    /// At most one explain per pipeline shape (db, collection, stages) per interval.
    pub interval_ms: u64,
    /// maxTimeMS sent with each explain.
    pub max_time_ms: u64,
    /// SCRAM-SHA-256 credentials for mongotap's own connection, when the
    /// server requires authentication.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The database the user is defined in.
    pub auth_db: String,
}

impl Default for ExplainConfig {
    fn default() -> Self {
        ExplainConfig {
            enabled: false,
            after_ms: 1_000,
            interval_ms: 60_000,
            max_time_ms: 10_000,
            username: None,
            password: None,
            auth_db: "admin".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewriteMode {
    /// Rules are ignored.
    #[default]
    Off,
    /// Log what each rule would change; forward the original bytes.
    DryRun,
    /// Rewrite the commands.
    Enforce,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewriteConfig {
    pub mode: RewriteMode,
    /// Rules in order; the first that matches a command wins.
    pub rule: Vec<RewriteRule>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewriteRule {
    /// Command names the rule applies to, e.g. ["aggregate", "find"].
    pub commands: Vec<String>,
    /// Globs on "db.collection"; default ["*"].
    pub namespaces: Vec<String>,
    /// Globs on the handshake's appName; empty means every app.
    pub apps: Vec<String>,
    /// Injected when the command has no maxTimeMS.
    pub default_max_time_ms: Option<u64>,
    /// Larger values (and 0, unlimited) are lowered to this.
    pub max_time_ms_cap: Option<u64>,
    /// Set allowDiskUse: true when absent, where the command accepts it.
    pub allow_disk_use: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to.
    pub listen: String,
    /// The mongod (or mongos, or FerretDB) every connection is forwarded to.
    pub upstream: String,
    /// Connections beyond this are refused (closed at once) and counted.
    pub max_connections: usize,
    /// Largest frame accepted from either side, at most 48,000,000.
    pub max_frame_bytes: usize,
    /// How long to wait for the upstream's TCP connect.
    pub connect_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight commands may take to finish.
    pub drain_timeout_ms: u64,
    /// Commands one connection may have waiting for replies; past this,
    /// mongotap stops reading that client until replies arrive.
    pub max_inflight_per_connection: usize,
    /// A frame that has started to arrive must be complete within this
    /// long, or the connection is closed (slow or stuck senders).
    pub frame_timeout_ms: u64,
    /// Close a connection with nothing pending and no traffic for this
    /// long; 0 disables. A pending awaitable hello keeps a connection open.
    pub idle_timeout_ms: u64,
    /// Tokio runtime flavour: "auto" (current-thread with 2 CPUs or fewer,
    /// multi-thread above), "current-thread" (one core) or "multi-thread".
    pub runtime: RuntimeFlavor,
    /// Worker threads for the multi-thread runtime (0: one per core).
    pub worker_threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeFlavor {
    /// current-thread when 2 CPUs or fewer are available, else multi-thread.
    Auto,
    CurrentThread,
    MultiThread,
}

impl RuntimeFlavor {
    /// The name as written in the config file.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeFlavor::Auto => "auto",
            RuntimeFlavor::CurrentThread => "current-thread",
            RuntimeFlavor::MultiThread => "multi-thread",
        }
    }

    /// What `auto` means on this machine. With 2 CPUs or fewer (a sidecar,
    /// a small VM, a container's CPU quota), the proxy shares them with
    /// the app or the server, and work stealing between two tokio workers
    /// costs more than it gives: on the 2-core bench machine current-thread
    /// used 1-9 % less CPU per request and kept p99.9 at haproxy's level
    /// (0.5-0.8 ms at 16 connections) instead of about 4 ms
    /// (bench/README.md, "Runtime flavours").
    pub fn resolve(self, cpus: usize) -> RuntimeFlavor {
        match self {
            RuntimeFlavor::Auto if cpus <= 2 => RuntimeFlavor::CurrentThread,
            RuntimeFlavor::Auto => RuntimeFlavor::MultiThread,
            other => other,
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:27018".into(),
            upstream: "127.0.0.1:27017".into(),
            max_connections: 10_000,
            max_frame_bytes: mongotap_proto::MAX_MESSAGE_LEN,
            connect_timeout_ms: 5_000,
            drain_timeout_ms: 10_000,
            max_inflight_per_connection: 1_000,
            frame_timeout_ms: 60_000,
            idle_timeout_ms: 0,
            runtime: RuntimeFlavor::Auto,
            worker_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Admin HTTP endpoint (/metrics, /stats, /inflight, /healthz).
    /// Set to "" to disable it.
    pub listen: String,
    /// Bearer token required on every admin request when set. Required when
    /// `listen` is not a loopback address.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9477".into(),
            token: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Commands slower than this get a `slow` event.
    pub slow_ms: u64,
    /// Commands pending longer than this get a `stalled` event.
    pub stall_ms: u64,
    /// Bound on distinct label sets in histograms; past it values fold into "other".
    pub max_series: usize,
    /// Bound on rows of `/stats/queries` (distinct query shapes per
    /// command, db and collection); past it samples fold into `other`.
    pub max_shapes: usize,
    /// A cursor idle longer than this is reported as leaked (the server's
    /// own reaper uses 10 minutes).
    pub cursor_idle_ms: u64,
    /// Show literal values (comments that are not strings, filters) in
    /// events and endpoints. Off: only names and shapes appear.
    pub log_values: bool,
    /// Log `started`/`succeeded` for every command (debug level).
    pub command_log: bool,
    /// Track requests and record latency. Off: frames are still decoded
    /// and validated, but nothing is tracked (for benchmarking the cost).
    pub track: bool,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            slow_ms: 100,
            stall_ms: 5_000,
            max_series: 1_000,
            max_shapes: 1_000,
            cursor_idle_ms: 600_000,
            log_values: false,
            command_log: false,
            track: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// tracing filter directive, e.g. "info" or "mongotap=debug". RUST_LOG wins.
    pub level: Option<String>,
}

impl Config {
    /// Parses a config file on top of the defaults. Unknown keys are errors
    /// that name the key.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses TOML on top of the defaults. The error is one line naming the
    /// key path, line and column, in words rather than Rust type names.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let de = toml::Deserializer::parse(text).map_err(|e| wording::describe(text, None, &e))?;
        // serde_path_to_error tracks the key being read, which toml's own
        // error knows but does not expose.
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = (key != ".").then_some(key);
            wording::describe(text, key.as_deref(), e.inner())
        })?;
        if let Ok(table) = text.parse::<toml::Table>() {
            let proxy = table.get("proxy").and_then(|p| p.as_table());
            for key in ["listen", "upstream"] {
                if proxy.is_some_and(|p| p.contains_key(key)) {
                    config.proxy_addresses_given.push(format!("proxy.{key}"));
                }
            }
        }
        Ok(config)
    }

    /// The settings as a TOML config file: what `check-config` prints, and
    /// a file that `from_toml` reads back to the same settings. Keys left
    /// unset (tokens, TLS, optional limits) are omitted, as TOML has no null.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }

    /// A copy safe to print: tokens and passwords replaced.
    pub fn redacted(&self) -> Config {
        let hide = |v: &mut Option<String>| {
            if v.is_some() {
                *v = Some("<redacted>".into());
            }
        };
        let mut c = self.clone();
        hide(&mut c.admin.token);
        hide(&mut c.explain.password);
        hide(&mut c.diagnose.password);
        hide(&mut c.capture.control_token);
        if let Some(otel) = &mut c.otel {
            for v in otel.headers.values_mut() {
                *v = "<redacted>".into();
            }
        }
        c
    }
}

#[cfg(test)]
mod tests;
mod validate;
mod wording;
