//! The listener: accepts clients, spawns one session task each, and on
//! SIGINT/SIGTERM stops accepting, drains in-flight commands with a
//! deadline, then returns.

use crate::config::Config;
use crate::observe::ConnId;
use crate::proxy::listen::Setting;
use crate::proxy::session::{self, Shutdown};
use crate::settings::tls::Tls;
use crate::settings::Reloadable;
use crate::shared::Shared;
use crate::topology::{Bound, Member, ReplicaSet};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Each proxied connection holds two descriptors (client and upstream):
/// raise the soft limit to the hard one, and say when max_connections
/// cannot be reached.
fn raise_fd_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let needed = max_connections as u64 * 2 + 64;
            if limit < needed {
                warn!(
                    fd_limit = limit,
                    max_connections,
                    "the open-file limit ({limit}) allows about {} proxied connections, fewer than proxy.max_connections; raise `ulimit -n` (each connection uses two descriptors)",
                    limit.saturating_sub(64) / 2
                );
            }
        }
        Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// How long shutdown waits for the last spans to be exported.
const OTEL_FLUSH_BOUND: Duration = Duration::from_secs(3);

pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    feed: Arc<crate::feed::EventFeed>,
) -> anyhow::Result<()> {
    raise_fd_limit(config.proxy.max_connections);
    // Direct mode: one listener for proxy.upstream. Replica-set mode: one
    // per member, and more as members are discovered.
    let (listeners, discovered, replica_set) = if config.topology.is_replica_set() {
        let Bound {
            set,
            listeners: bound,
            discovered,
        } = ReplicaSet::bind(&config.topology)?;
        let mut listeners = Vec::new();
        for (member, l) in bound {
            listeners.push((Some(member), TcpListener::from_std(l)?));
        }
        (listeners, Some(discovered), Some(set))
    } else {
        let l = crate::proxy::listen::bind(&config.proxy.listen, Setting::Proxy).await?;
        (vec![(None, l)], None, None)
    };
    let tls = Tls::load(&config.tls, &config.proxy.upstream).context("cannot load TLS settings")?;
    let otel = match &config.otel {
        Some(c) => Some(Arc::new(crate::otel::Otel::start(c)?)),
        None => None,
    };
    let shared = Arc::new(Shared::new(config, tls, replica_set, otel, feed));
    let shutdown = Shutdown {
        drain: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    // Sessions: the drain waits on these.
    let tasks = TaskTracker::new();
    // Accept loops, one per listener: they end when the drain starts.
    let accepting = TaskTracker::new();
    // Everything else that runs for the proxy's lifetime (signals, SIGHUP
    // reload, watchdog, health probe, admin endpoint). Kept apart from
    // `tasks` because they outlive the drain (stalls during a drain still
    // matter, /metrics still answers) and stop on abort instead.
    let background = TaskTracker::new();

    if shared.config.capture.enabled {
        shared
            .observe
            .capture
            .start()
            .context("cannot start capture (capture.enabled)")?;
    }
    let admin_listen = &shared.config.admin.listen;
    let admin_addr = if admin_listen.is_empty() {
        "disabled".to_string()
    } else {
        let listener =
            crate::proxy::listen::bind(admin_listen, crate::proxy::listen::Setting::Admin).await?;
        crate::admin::start(
            shared.clone(),
            listener,
            shutdown.abort.clone(),
            &background,
        )
        .context("cannot serve the admin endpoint")?
        .to_string()
    };
    for (member, listener) in &listeners {
        let listen = listener.local_addr()?;
        match member {
            None => info!(
                listen = %listen,
                admin = %admin_addr,
                upstream = %shared.config.proxy.upstream,
                "listening"
            ),
            Some(m) => info!(
                listen = %listen,
                admin = %admin_addr,
                member = %m.name,
                advertise = %m.advertise,
                // The same message as direct mode's: scripts wait for it.
                "listening"
            ),
        }
    }
    background.spawn(wait_for_signal(shutdown.clone()));
    if let Some(path) = config_path {
        background.spawn(reload_on_hangup(
            shared.clone(),
            path,
            shutdown.abort.clone(),
        ));
    }
    background.spawn(crate::background::watchdog::run(
        shared.observe.clone(),
        shared.explainer.clone(),
        shutdown.abort.clone(),
    ));
    match &shared.observe.replica_set {
        // Direct mode: one upstream behind /readyz.
        None => background.spawn(crate::background::health::run(
            shared.health.clone(),
            shared.config.health.clone(),
            shared.config.proxy.upstream.clone(),
            shared.settings.clone(),
            shutdown.abort.clone(),
        )),
        // Replica-set mode: every member, each on its own probe.
        Some(set) => background.spawn(crate::background::topology::run(
            set.clone(),
            shared.config.health.clone(),
            shared.settings.clone(),
            shutdown.abort.clone(),
        )),
    };
    background.close();

    let accept = |member, listener| {
        accepting.spawn(accept_loop(
            shared.clone(),
            listener,
            member,
            tasks.clone(),
            shutdown.clone(),
        ));
    };
    for (member, listener) in listeners {
        accept(member, listener);
    }
    if let Some(mut discovered) = discovered {
        loop {
            // Cancel-safe: `recv` loses no listener when the drain wins.
            tokio::select! {
                new = discovered.recv() => match new {
                    Some((member, l)) => match TcpListener::from_std(l) {
                        Ok(l) => accept(Some(member), l),
                        Err(e) => warn!(member = %member.name, error = %e, "cannot accept on a discovered member's listener"),
                    },
                    None => break,
                },
                () = shutdown.drain.cancelled() => break,
            }
        }
    }
    shutdown.drain.cancelled().await;
    accepting.close();
    accepting.wait().await;
    let deadline = Duration::from_millis(shared.config.proxy.drain_timeout_ms);
    info!(
        active = shared.observe.counters.connections_active.load(Relaxed),
        deadline_ms = deadline.as_millis() as u64,
        "shutting down: no new connections, draining in-flight commands"
    );
    tasks.close();
    if tokio::time::timeout(deadline, tasks.wait()).await.is_err() {
        warn!(
            active = shared.observe.counters.connections_active.load(Relaxed),
            "drain deadline passed: closing remaining connections"
        );
    }
    shutdown.abort.cancel();
    // Every task has the abort token; this bound only matters if one is
    // stuck, and then the runtime's drop ends it.
    let stopped = async {
        // First, so running explains are cancelled now, not after the rest.
        shared.explainer.stop().await;
        shared.diagnoser.stop().await;
        tasks.wait().await;
        background.wait().await;
    };
    if tokio::time::timeout(Duration::from_secs(2), stopped)
        .await
        .is_err()
    {
        warn!("some tasks did not stop within 2 s of the drain deadline");
    }
    // Flush and close the capture file last, after the final frames.
    let s = shared.observe.clone();
    let _ = tokio::task::spawn_blocking(move || s.capture.stop()).await;
    // The last spans (the drain's never_replied ones too), within a bound:
    // a dead collector must not hold up the exit.
    if let Some(otel) = shared.observe.otel.clone() {
        let _ = tokio::task::spawn_blocking(move || otel.stop(OTEL_FLUSH_BOUND)).await;
    }
    info!("stopped");
    Ok(())
}

/// Accepts clients on one listener until the drain starts, one session
/// task each. `member`: the replica-set member this listener stands for.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    member: Option<Arc<Member>>,
    tasks: TaskTracker,
    shutdown: Shutdown,
) {
    loop {
        // `accept` is cancel-safe: a connection not yet returned stays queued.
        let (stream, client) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.drain.cancelled() => return,
        };
        let Some(active) = shared.try_admit(shared.config.proxy.max_connections) else {
            shared
                .observe
                .counters
                .connections_refused
                .fetch_add(1, Relaxed);
            warn!(
                event = "connection_refused",
                client = %client,
                active = shared.observe.counters.connections_active.load(Relaxed),
                max_connections = shared.config.proxy.max_connections,
                "refusing connection: proxy.max_connections reached"
            );
            drop(stream);
            continue;
        };
        let id = ConnId {
            conn: shared.next_conn_id(),
            client,
            member: member.clone(),
        };
        tasks.spawn(session::run(
            shared.clone(),
            stream,
            id,
            shutdown.clone(),
            active,
        ));
    }
}

/// SIGHUP re-reads the config file and swaps in its rewrite rules and TLS
/// settings, as one `Reloadable` (new connections, explains and health
/// probes read it when they start). An invalid file is rejected with the
/// reason, and the settings in force stay. Other settings (addresses,
/// limits) need a restart.
async fn reload_on_hangup(shared: Arc<Shared>, path: PathBuf, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler; config reload is off");
        return;
    };
    loop {
        // Cancel-safe: `Signal::recv` loses no signal when another branch
        // wins (a SIGHUP that arrives meanwhile is still pending), and the
        // reload runs outside the select, so shutdown never cuts one short.
        tokio::select! {
            _ = hup.recv() => {}
            _ = stop.cancelled() => return,
        }
        // Reading the file and validating (which resolves a host name in
        // admin.listen) block: keep them off the runtime's threads, which
        // on a current-thread runtime carry every connection.
        let file = path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            Config::from_file(&file).and_then(|c| c.validate().map(|()| c))
        })
        .await;
        let Ok(loaded) = loaded else {
            warn!(event = "config_reload_failed", "config reload task failed");
            continue;
        };
        // A file that does not parse or validate, or a certificate that
        // does not load, rejects the whole reload.
        let reloaded = loaded.map_err(|e| e.to_string()).and_then(|cfg| {
            Reloadable::load(&cfg, &shared.config.proxy.upstream)
                .map(|r| (cfg.rewrite.rule.len(), r))
                .map_err(|e| e.to_string())
        });
        match reloaded {
            Ok((rules, reloaded)) => {
                // One store: certificates and rules change together, for
                // sessions, explains and the health probe alike.
                shared.settings.store(Arc::new(reloaded));
                info!(
                    event = "config_reloaded",
                    path = %path.display(),
                    rules,
                    "reloaded rewrite rules and TLS certificates from {}", path.display()
                );
            }
            Err(e) => warn!(
                event = "config_reload_failed",
                path = %path.display(),
                error = %e,
                "config reload rejected, the previous settings stay in force: {e}"
            ),
        }
    }
}

/// Starts the drain on SIGTERM or SIGINT; ends without one on abort (the
/// proxy stopping for another reason), so the tracker can finish.
async fn wait_for_signal(shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; SIGTERM will not drain");
        return;
    };
    // Cancel-safe: `Signal::recv` loses nothing when another branch wins,
    // and the function ends either way.
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => info!(signal = "SIGINT", "shutdown requested"),
        _ = shutdown.abort.cancelled() => return,
    }
    shutdown.drain.cancel();
}
