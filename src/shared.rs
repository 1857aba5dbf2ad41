//! What the proxy's own tasks (the listener, sessions, the admin endpoint,
//! SIGHUP reload) share, passed in as `Arc<Shared>` (never a global, so
//! tests can run many proxies in one process). It bundles the parts the
//! layers below take on their own: observation's `Observatory`, the
//! explainer, the health state and the settings swap.

use crate::background::explain::Explainer;
use crate::background::health::Health;
use crate::config::Config;
use crate::diagnose::live::Diagnoser;
use crate::observe::{AutoDiagnose, AutoExplain, Observatory};
use crate::otel::Otel;
use crate::settings::tls::Tls;
use crate::settings::{self, Reloadable, Settings};
use crate::topology::ReplicaSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

pub struct Shared {
    pub config: Config,
    /// Counters, tracker, cursors, stats, capture: what every connection's
    /// observers share, and what /metrics and the watchdog read.
    pub observe: Arc<Observatory>,
    /// TLS and the rewrite rules: what SIGHUP replaces, read at use time
    /// by everyone (the observatory and the explainer hold the same swap).
    pub settings: Settings,
    /// Auto-explain of slow aggregates (the observatory holds it too, when on).
    pub explainer: Arc<Explainer>,
    /// The live diagnosis of aggregates (the observatory holds it too, when on).
    pub diagnoser: Arc<Diagnoser>,
    /// What the upstream health probe last found (/readyz).
    pub health: Arc<Health>,
    /// The log events, for /events and /events/recent.
    pub feed: Arc<crate::feed::EventFeed>,
    next_conn_id: AtomicU64,
}

impl Shared {
    pub fn new(
        config: Config,
        tls: Tls,
        replica_set: Option<Arc<ReplicaSet>>,
        otel: Option<Arc<Otel>>,
        feed: Arc<crate::feed::EventFeed>,
    ) -> Self {
        let settings = settings::swap(Reloadable::new(tls, &config));
        // Auto-explain connects to the same upstream the same way, with
        // the TLS settings in force at each explain.
        let explainer = Arc::new(Explainer::new(
            &config.explain,
            &config.proxy.upstream,
            config.watch.log_values,
            settings.clone(),
        ));
        let explain = explainer
            .enabled()
            .then(|| explainer.clone() as Arc<dyn AutoExplain>);
        // The live diagnosis too, with [diagnose]'s credentials or [explain]'s.
        let diagnoser = Arc::new(Diagnoser::new(
            &config.diagnose,
            &config.explain,
            &config.proxy.upstream,
            settings.clone(),
        ));
        let diagnose = diagnoser
            .enabled()
            .then(|| diagnoser.clone() as Arc<dyn AutoDiagnose>);
        Shared {
            observe: Arc::new(Observatory::new(
                &config,
                settings.clone(),
                explain,
                diagnose,
                replica_set,
                otel,
            )),
            settings,
            explainer,
            diagnoser,
            health: Arc::new(Health::new(std::time::Instant::now())),
            feed,
            config,
            next_conn_id: AtomicU64::new(1),
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Relaxed)
    }

    /// Takes one of `max` connection slots, at accept time: counting only
    /// once the session task runs let a burst of connects overshoot
    /// max_connections. `None` when every slot is taken; otherwise the
    /// connection counts as active until the guard is dropped.
    pub fn try_admit(self: &Arc<Self>, max: usize) -> Option<ActiveGuard> {
        let counters = &self.observe.counters;
        let before = counters.connections_active.fetch_add(1, Relaxed);
        if before >= max as i64 {
            counters.connections_active.fetch_sub(1, Relaxed);
            return None;
        }
        counters.connections_total.fetch_add(1, Relaxed);
        Some(ActiveGuard(Arc::clone(self)))
    }
}

pub struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0
            .observe
            .counters
            .connections_active
            .fetch_sub(1, Relaxed);
    }
}
