//! The one piece of state every session shares, passed in as `Arc<Shared>`
//! (never a global, so tests can run many proxies in one process).

use crate::background::explain::Explainer;
use crate::background::health::Health;
use crate::capture::Capture;
use crate::config::Config;
use crate::observe::cursors::Cursors;
use crate::observe::meta::{ClientMeta, CommandSummary, Interner};
use crate::observe::stats::Stats;
use crate::observe::tracker::Tracker;
use crate::settings::tls::Tls;
use crate::settings::{self, Reloadable, Settings};
use dashmap::DashMap;
use mongotap_proto::rewrite::FieldChange;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

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

/// The most distinct command summaries (and client handshakes) shared
/// between connections; beyond it each connection keeps its own.
const INTERNED_MAX: usize = 4096;

pub struct Shared {
    pub config: Config,
    pub counters: Counters,
    pub tracker: Tracker,
    pub cursors: Cursors,
    pub stats: Stats,
    /// Command summaries and client handshakes, shared by every connection
    /// that has the same one.
    pub summaries: Interner<CommandSummary>,
    pub clients: Interner<ClientMeta>,
    /// TLS and the rewrite rules: what SIGHUP replaces, read at use time
    /// by everyone (the explainer holds the same swap).
    pub settings: Settings,
    /// Rewrites by (command, field, dry_run), for /metrics.
    pub rewrite_counts: DashMap<String, RewriteCounts, ahash::RandomState>,
    /// Traffic capture.
    pub capture: Capture,
    /// Auto-explain of slow aggregates.
    pub explainer: Explainer,
    /// Apps already warned about a driver too old for the server.
    pub warned_apps: DashMap<String, ()>,
    /// The replica-set discovery warning is logged once per process.
    pub warned_hosts: AtomicBool,
    /// What the upstream health probe last found (/readyz).
    pub health: Health,
    next_conn_id: AtomicU64,
}

impl Shared {
    pub fn new(config: Config, tls: Tls) -> Self {
        let settings = settings::swap(Reloadable::new(tls, &config));
        Shared {
            stats: Stats::new(config.watch.max_series),
            summaries: Interner::new(INTERNED_MAX),
            clients: Interner::new(INTERNED_MAX),
            rewrite_counts: DashMap::default(),
            warned_apps: DashMap::new(),
            capture: Capture::new(&config.capture),
            // Auto-explain connects to the same upstream the same way, with
            // the TLS settings in force at each explain.
            explainer: Explainer::new(
                &config.explain,
                &config.proxy.upstream,
                config.watch.log_values,
                settings.clone(),
            ),
            settings,
            config,
            counters: Counters::default(),
            tracker: Tracker::default(),
            cursors: Cursors::default(),
            warned_hosts: AtomicBool::new(false),
            health: Health::new(std::time::Instant::now()),
            next_conn_id: AtomicU64::new(1),
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Relaxed)
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

    /// Takes one of `max` connection slots, at accept time: counting only
    /// once the session task runs let a burst of connects overshoot
    /// max_connections. `None` when every slot is taken; otherwise the
    /// connection counts as active until the guard is dropped.
    pub fn try_admit(self: &Arc<Self>, max: usize) -> Option<ActiveGuard> {
        let before = self.counters.connections_active.fetch_add(1, Relaxed);
        if before >= max as i64 {
            self.counters.connections_active.fetch_sub(1, Relaxed);
            return None;
        }
        self.counters.connections_total.fetch_add(1, Relaxed);
        Some(ActiveGuard(Arc::clone(self)))
    }
}

pub struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.counters.connections_active.fetch_sub(1, Relaxed);
    }
}
