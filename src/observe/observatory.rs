//! `Observatory`: what observation shares between connections. Every
//! connection's `ConnState` holds it as one `Arc`, and so do the watchdog
//! and the admin endpoint (through `Shared`). It names nothing above
//! observe: auto-explain is reached through the `AutoExplain` trait.

use crate::capture::Capture;
use crate::config::{Config, WatchConfig};
use crate::observe::cursors::Cursors;
use crate::observe::meta::{ClientMeta, CommandSummary, Interner};
use crate::observe::queries::ShapeTexts;
use crate::observe::stats::Stats;
use crate::observe::tracker::{RequestFacts, Tracker};
use crate::otel::Otel;
use crate::settings::Settings;
use crate::topology::ReplicaSet;
use bson::RawDocumentBuf;
use dashmap::DashMap;
use mongotap_proto::rewrite::FieldChange;
use mongotap_proto::CommandView;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Process-wide counters. Only per-connection or rare events touch these;
/// per-frame numbers are kept in the session and published from there.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections_active: AtomicI64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub upstream_connect_errors: AtomicU64,
    pub decode_errors: AtomicU64,
    /// TLS from clients that failed: a failed or timed-out handshake, or a
    /// client speaking plaintext to a TLS listener.
    pub tls_handshake_failures_client: AtomicU64,
    /// TLS handshakes with the upstream that failed (also counted in
    /// `upstream_connect_errors`: the connection was never made).
    pub tls_handshake_failures_upstream: AtomicU64,
    pub unknown_opcodes: AtomicU64,
    /// Requests with moreToCome (w:0 writes): no reply expected.
    pub fire_and_forget: AtomicU64,
    /// Replies whose responseTo matched nothing pending.
    pub unmatched_replies: AtomicU64,
    pub stalled: AtomicU64,
    pub never_replied: AtomicU64,
    pub abandoned: AtomicU64,
    /// Commands ended by the admin endpoint's kill switch.
    pub killed: AtomicU64,
    pub cursors_leaked: AtomicU64,
    pub failed: AtomicU64,
    pub rewrites: AtomicU64,
    /// Legacy OP_QUERY commands a rewrite rule matched but that were left alone.
    pub rewrites_skipped_op_query: AtomicU64,
}

/// Rewrites of one command, by field and by enforced / dry-run.
#[derive(Debug, Default)]
pub struct RewriteCounts {
    /// [maxTimeMS, allowDiskUse] enforced, then the same in dry-run.
    counts: [AtomicU64; 4],
}

impl RewriteCounts {
    pub const FIELDS: [&'static str; 2] = ["maxTimeMS", "allowDiskUse"];

    fn slot(&self, field: &str, dry_run: bool) -> &AtomicU64 {
        let f = usize::from(field != "maxTimeMS");
        &self.counts[f + if dry_run { 2 } else { 0 }]
    }

    pub fn get(&self, field: &str, dry_run: bool) -> u64 {
        self.slot(field, dry_run).load(Relaxed)
    }
}

/// Auto-explain of slow aggregates, as observation sees it. The explainer
/// (`background::explain`) sits above observe: it reads the tracker and
/// logs through observe's events, so observe knows it only by this trait.
pub trait AutoExplain: Send + Sync {
    /// A copy of the command body when it is one to explain should it run
    /// long.
    fn body_for(&self, view: &CommandView<'_>) -> Option<Arc<RawDocumentBuf>>;
    /// Starts an explain of the command `request_id` when it is due and not
    /// rate limited. Never blocks.
    fn maybe_explain(&self, request_id: i32, facts: &RequestFacts, elapsed: Duration);
}

/// The live diagnosis of aggregates (`diagnose::live`), as observation
/// sees it: it sits above observe and knows it only by this trait.
pub trait AutoDiagnose: Send + Sync {
    /// The slot a command carries when it is an aggregate to diagnose
    /// should it stall, run slow or fail.
    fn slot_for(&self, view: &CommandView<'_>) -> Option<Arc<DiagnoseSlot>>;
    /// Starts the diagnosis of `request_id` when `why` calls for one and
    /// the shape is not rate limited. Never blocks.
    fn diagnose(&self, request_id: i32, facts: &RequestFacts, why: Trigger);
}

/// What made a command worth diagnosing.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// Pending this long: the watchdog's first stall report.
    Stalled { age_ms: u64 },
    /// Replied after this long, with the error's code and name if it failed.
    Finished {
        elapsed_ms: u64,
        error: Option<(i32, String)>,
    },
}

/// A diagnosable aggregate's body, and its diagnosis once ready (shown in
/// its `/inflight` row). One per command; it goes with the command.
#[derive(Debug)]
pub struct DiagnoseSlot {
    pub body: RawDocumentBuf,
    /// A diagnosis was started (or refused) for this command.
    pub started: AtomicBool,
    /// The findings, as the `diagnosed` event carries them.
    pub result: std::sync::OnceLock<serde_json::Value>,
}

/// The most distinct command summaries (and client handshakes) shared
/// between connections; beyond it each connection keeps its own.
const INTERNED_MAX: usize = 4096;

pub struct Observatory {
    /// `[watch]`: thresholds, tracking, command log, value redaction.
    pub watch: WatchConfig,
    /// `proxy.max_frame_bytes`: larger frames are forwarded, not decoded.
    pub max_frame_bytes: usize,
    /// `proxy.max_inflight_per_connection`: capture's per-connection links.
    pub max_inflight_per_connection: usize,
    pub counters: Counters,
    pub tracker: Tracker,
    pub cursors: Cursors,
    pub stats: Stats,
    /// Command summaries and client handshakes, shared by every connection
    /// that has the same one.
    pub summaries: Interner<CommandSummary>,
    pub clients: Interner<ClientMeta>,
    /// Query shapes by hash, each built once for the whole process.
    pub query_shapes: ShapeTexts,
    /// TLS and the rewrite rules: what SIGHUP replaces, read at use time.
    /// The request observer reads the rules from it for each command.
    pub settings: Settings,
    /// Rewrites by (command, field, dry_run), for /metrics.
    pub rewrite_counts: DashMap<String, RewriteCounts, ahash::RandomState>,
    /// Traffic capture.
    pub capture: Capture,
    /// Auto-explain of slow aggregates; `None` when it is off.
    pub explain: Option<Arc<dyn AutoExplain>>,
    /// The live diagnosis of aggregates; `None` when it is off.
    pub diagnose: Option<Arc<dyn AutoDiagnose>>,
    /// Apps already warned about a driver too old for the server.
    pub warned_apps: DashMap<String, ()>,
    /// The replica-set discovery warning is logged once per process.
    pub warned_hosts: AtomicBool,
    /// Replica-set mode's members and their listeners; `None` in direct
    /// mode. Hello replies are rewritten to name these listeners.
    pub replica_set: Option<Arc<ReplicaSet>>,
    /// `[otel]` span export; `None` when off, and then no request does
    /// any span work.
    pub otel: Option<Arc<Otel>>,
    /// proxy.upstream: the spans' `server.address` in direct mode.
    pub upstream: String,
}

impl Observatory {
    pub fn new(
        config: &Config,
        settings: Settings,
        explain: Option<Arc<dyn AutoExplain>>,
        diagnose: Option<Arc<dyn AutoDiagnose>>,
        replica_set: Option<Arc<ReplicaSet>>,
        otel: Option<Arc<Otel>>,
    ) -> Self {
        Observatory {
            watch: config.watch.clone(),
            max_frame_bytes: config.proxy.max_frame_bytes,
            max_inflight_per_connection: config.proxy.max_inflight_per_connection,
            counters: Counters::default(),
            tracker: Tracker::default(),
            cursors: Cursors::default(),
            stats: Stats::new(config.watch.max_series).with_max_shapes(config.watch.max_shapes),
            query_shapes: ShapeTexts::new(config.watch.max_shapes),
            summaries: Interner::new(INTERNED_MAX),
            clients: Interner::new(INTERNED_MAX),
            settings,
            rewrite_counts: DashMap::default(),
            capture: Capture::new(&config.capture),
            explain,
            diagnose,
            replica_set,
            warned_apps: DashMap::new(),
            warned_hosts: AtomicBool::new(false),
            otel,
            upstream: config.proxy.upstream.clone(),
        }
    }

    pub fn count_rewrite(&self, command: &str, changes: &[FieldChange], dry_run: bool) {
        // Keyed by command name alone so the lookup borrows the name; the
        // owned key is built only the first time a command is rewritten.
        let count = |counts: &RewriteCounts| {
            for c in changes {
                counts.slot(c.field, dry_run).fetch_add(1, Relaxed);
            }
        };
        match self.rewrite_counts.get(command) {
            Some(counts) => count(&counts),
            None => count(&self.rewrite_counts.entry(command.to_string()).or_default()),
        }
        if !dry_run {
            self.counters.rewrites.fetch_add(1, Relaxed);
        }
    }
}
