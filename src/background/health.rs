//! Upstream health: a task sends a cheap `hello` to the upstream on
//! mongotap's own connection every `health.interval_ms`, and `/readyz` and
//! `mongotap_upstream_up` report the last answer. It shares nothing with the
//! forwarding path but this state, which only the probe writes and only the
//! admin endpoint reads, so a hung upstream never slows a session.

use crate::config::HealthConfig;
use crate::mongo_client::{ClientError, UpstreamClient};
use crate::settings::Settings;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The probe's application name in its handshake: the server's logs and
/// `$currentOp` show these connections as mongotap's health checks.
pub const PROBE_APP: &str = "mongotap-health";

/// What the probes found, for `/readyz` and `/metrics`.
pub struct Health {
    state: Mutex<State>,
}

struct State {
    /// `None` until the first probe has finished: not ready, since nothing
    /// is known about the upstream yet.
    up: Option<bool>,
    /// When a probe last succeeded.
    last_ok: Option<Instant>,
    /// When the current state began (process start until the first probe).
    since: Instant,
    /// The last probe's error while down.
    error: Option<String>,
}

/// A change worth one log line.
#[derive(Debug, PartialEq, Eq)]
enum Transition {
    /// The upstream answers; `down_ms` is how long it did not (None at start).
    Up { down_ms: Option<u64> },
    /// The upstream stopped answering, or did not answer the first probe.
    Down { at_start: bool },
}

/// `/readyz`'s answer.
pub struct Readiness {
    pub ready: bool,
    pub body: serde_json::Value,
}

impl Health {
    pub fn new(now: Instant) -> Self {
        Health {
            state: Mutex::new(State {
                up: None,
                last_ok: None,
                since: now,
                error: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the last probe succeeded.
    pub fn is_up(&self) -> bool {
        self.lock().up == Some(true)
    }

    pub fn readiness(&self, upstream: &str, now: Instant) -> Readiness {
        let s = self.lock();
        let ms = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
        match (s.up, s.last_ok) {
            (Some(true), Some(ok)) => Readiness {
                ready: true,
                body: serde_json::json!({
                    "ready": true,
                    "upstream": upstream,
                    "last_ok_ms_ago": ms(ok),
                }),
            },
            _ => Readiness {
                ready: false,
                body: serde_json::json!({
                    "ready": false,
                    "upstream": upstream,
                    "error": s.error.as_deref().unwrap_or("the first health probe has not finished yet"),
                    "since_ms": ms(s.since),
                }),
            },
        }
    }

    fn record_ok(&self, now: Instant) -> Option<Transition> {
        let mut s = self.lock();
        s.last_ok = Some(now);
        s.error = None;
        let was = s.up.replace(true);
        if was == Some(true) {
            return None;
        }
        let down_ms = was.map(|_| now.saturating_duration_since(s.since).as_millis() as u64);
        s.since = now;
        Some(Transition::Up { down_ms })
    }

    fn record_err(&self, now: Instant, error: String) -> Option<Transition> {
        let mut s = self.lock();
        // A new reason while down (refused, then timed out) replaces the
        // old one in /readyz but is not a new transition.
        s.error = Some(error);
        let was = s.up.replace(false);
        if was == Some(false) {
            return None;
        }
        // From start-up, "down since" counts from the start: the upstream
        // never answered.
        if was.is_some() {
            s.since = now;
        }
        Some(Transition::Down {
            at_start: was.is_none(),
        })
    }
}

/// Probes until `stop`. The first probe runs at once, so a wrong
/// proxy.upstream is reported at start-up, not at the first client.
/// `health` is what it records into; `upstream` and `settings` are where
/// and how it connects (the proxy's own upstream and TLS).
pub async fn run(
    health: Arc<Health>,
    cfg: HealthConfig,
    upstream: String,
    settings: Settings,
    stop: CancellationToken,
) {
    let upstream = upstream.as_str();
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms));
    // A probe that took longer than the interval is followed by the next
    // one an interval later, not by a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut conn: Option<UpstreamClient> = None;
    loop {
        // Both branches are cancel-safe: a tick not yet taken stays due.
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        // `probe` is not cancel-safe (a hello half written or half read
        // leaves the connection mid-frame), but it is dropped only on
        // shutdown, after which nothing uses the connection.
        let result = tokio::select! {
            r = probe(upstream, &settings, &mut conn, timeout) => r,
            _ = stop.cancelled() => return,
        };
        let now = Instant::now();
        match result {
            Ok(()) => match health.record_ok(now) {
                Some(Transition::Up {
                    down_ms: Some(down_ms),
                }) => info!(
                    event = "upstream_up",
                    upstream, down_ms, "upstream {upstream} answers hello again after {down_ms} ms"
                ),
                Some(Transition::Up { down_ms: None }) => info!(
                    event = "upstream_up",
                    upstream, "upstream {upstream} answers hello"
                ),
                _ => {}
            },
            Err(e) => {
                conn = None;
                if let Some(Transition::Down { at_start }) = health.record_err(now, e.to_string()) {
                    let when = if at_start { " at start-up" } else { "" };
                    warn!(
                        event = "upstream_down",
                        upstream,
                        at_start,
                        error = %e,
                        "upstream {upstream} does not answer hello{when}; /readyz answers 503 until it does: {e}"
                    );
                }
            }
        }
    }
}

/// One probe: a hello on the kept connection, or on a new one. Each step
/// is bounded by `timeout`.
async fn probe(
    addr: &str,
    settings: &Settings,
    conn: &mut Option<UpstreamClient>,
    timeout: Duration,
) -> Result<(), ClientError> {
    if let Some(c) = conn.as_mut() {
        match tokio::time::timeout(timeout, c.hello()).await {
            Ok(Ok(_)) => return Ok(()),
            // A server too slow to answer is down; waiting again for a new
            // connection would only double the time to say so.
            Err(_) => return Err(ClientError::timed_out(addr, "hello", timeout)),
            // The kept connection can die while the server is fine (a
            // restart, a firewall's idle timeout): a new one decides.
            Ok(Err(_)) => *conn = None,
        }
    }
    // Loaded at each connect, so certificates reloaded on SIGHUP apply.
    let settings = settings.load_full();
    let tls = settings.tls.connector.as_ref();
    let c = UpstreamClient::connect_as(addr, timeout, tls, PROBE_APP).await?;
    *conn = Some(c);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Each change between up and down is reported once, whatever the
    /// number of probes; repeated failures only refresh the error.
    #[test]
    fn transitions_are_reported_once() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        let r = h.readiness("db:27017", t0 + ms(5));
        assert!(!r.ready);
        assert_eq!(r.body["since_ms"], 5);

        assert_eq!(
            h.record_err(t0 + ms(10), "refused".into()),
            Some(Transition::Down { at_start: true })
        );
        assert_eq!(h.record_err(t0 + ms(20), "timed out".into()), None);
        let r = h.readiness("db:27017", t0 + ms(30));
        assert!(!r.ready && !h.is_up());
        assert_eq!(r.body["error"], "timed out");
        assert_eq!(r.body["since_ms"], 30, "down since start-up");

        assert_eq!(
            h.record_ok(t0 + ms(100)),
            Some(Transition::Up { down_ms: Some(100) })
        );
        assert_eq!(h.record_ok(t0 + ms(200)), None);
        let r = h.readiness("db:27017", t0 + ms(250));
        assert!(r.ready && h.is_up());
        assert_eq!(
            r.body,
            serde_json::json!({"ready": true, "upstream": "db:27017", "last_ok_ms_ago": 50})
        );

        assert_eq!(
            h.record_err(t0 + ms(300), "closed".into()),
            Some(Transition::Down { at_start: false })
        );
        let r = h.readiness("db:27017", t0 + ms(340));
        assert_eq!(
            r.body,
            serde_json::json!({"ready": false, "upstream": "db:27017", "error": "closed", "since_ms": 40})
        );
    }

    #[test]
    fn a_first_probe_that_succeeds_is_up_from_start() {
        let t0 = Instant::now();
        let h = Health::new(t0);
        assert_eq!(
            h.record_ok(t0 + ms(3)),
            Some(Transition::Up { down_ms: None })
        );
        assert!(h.readiness("a:1", t0 + ms(3)).ready);
    }
}
