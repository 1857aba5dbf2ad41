//! Replica-set mode's monitor: one task per member sends a hello on
//! mongotap's own connection every `health.interval_ms`. Its answer says
//! whether the member is up (`mongotap_topology_member_up`, `/readyz`),
//! what it is (primary, secondary ...), the set's name, and which members
//! the set has now, so that a member added by a reconfig gets a listener
//! before any client asks for it.

use crate::config::HealthConfig;
use crate::mongo_client::{ClientError, TlsUpstream, UpstreamClient};
use crate::settings::Settings;
use crate::topology::{Member, ReplicaSet};
use mongotap_proto::hello::{self, HelloFacts};
use rustls::pki_types::ServerName;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// The probe's application name: the members' logs and `$currentOp` show
/// these connections as mongotap's topology monitor.
pub const MONITOR_APP: &str = "mongotap-topology";

/// Starts a probe for every member, including members discovered later,
/// until `stop`.
pub async fn run(
    set: Arc<ReplicaSet>,
    cfg: HealthConfig,
    settings: Settings,
    stop: CancellationToken,
) {
    let probes = TaskTracker::new();
    let mut probed = HashSet::new();
    let mut check = tokio::time::interval(Duration::from_millis(cfg.interval_ms));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        for member in set.members() {
            if probed.insert(member.name.clone()) {
                probes.spawn(probe_member(
                    set.clone(),
                    member,
                    cfg.clone(),
                    settings.clone(),
                    stop.clone(),
                ));
            }
        }
        // Cancel-safe: a tick not taken stays due.
        tokio::select! {
            _ = check.tick() => {}
            () = stop.cancelled() => break,
        }
    }
    probes.close();
    probes.wait().await;
}

async fn probe_member(
    set: Arc<ReplicaSet>,
    member: Arc<Member>,
    cfg: HealthConfig,
    settings: Settings,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut conn: Option<UpstreamClient> = None;
    loop {
        // Cancel-safe: a tick not taken stays due.
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        // `probe` is not cancel-safe (a hello half read leaves the
        // connection mid-frame), but it is dropped only on shutdown, after
        // which nothing uses the connection.
        let result = tokio::select! {
            r = probe(&settings, &member, &mut conn, timeout) => r,
            () = stop.cancelled() => return,
        };
        let was_up = member.up();
        match result {
            Ok(facts) => {
                member.set_up(true);
                member.saw_hello(facts.state, set.epoch, Instant::now());
                if let Some(name) = &facts.set_name {
                    set.note_set_name(name);
                }
                // Listeners for members the set has that mongotap has not
                // seen yet (or an unmapped warning).
                for name in &facts.members {
                    let _ = set.advertise(name);
                }
                if was_up != Some(true) {
                    info!(
                        event = "upstream_up",
                        member = %member.name,
                        state = facts.state.as_str(),
                        "replica-set member {} answers hello ({})", member.name, facts.state.as_str()
                    );
                }
            }
            Err(e) => {
                conn = None;
                member.set_up(false);
                if was_up != Some(false) {
                    warn!(
                        event = "upstream_down",
                        member = %member.name,
                        at_start = was_up.is_none(),
                        error = %e,
                        "replica-set member {} does not answer hello: {e}", member.name
                    );
                }
            }
        }
    }
}

/// One hello on the kept connection, or on a new one; each step bounded
/// by `timeout`.
async fn probe(
    settings: &Settings,
    member: &Member,
    conn: &mut Option<UpstreamClient>,
    timeout: Duration,
) -> Result<HelloFacts, ClientError> {
    let addr = &member.upstream;
    if conn.is_none() {
        // Loaded at each connect, so certificates reloaded on SIGHUP apply.
        let settings = settings.load_full();
        let tls = member_tls(settings.tls.connector.as_ref(), member)?;
        *conn = Some(UpstreamClient::connect_as(addr, timeout, tls.as_ref(), MONITOR_APP).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Err(ClientError::timed_out(addr, "hello", timeout));
    };
    match tokio::time::timeout(timeout, c.hello()).await {
        Ok(Ok(reply)) => Ok(hello::hello_facts(&reply)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ClientError::timed_out(addr, "hello", timeout)),
    }
}

/// The upstream TLS settings, verifying the member under its own host name.
fn member_tls(
    tls: Option<&TlsUpstream>,
    member: &Member,
) -> Result<Option<TlsUpstream>, ClientError> {
    let Some((connector, _)) = tls else {
        return Ok(None);
    };
    let name = ServerName::try_from(member.host().to_string()).map_err(|_| {
        ClientError::BadServerName {
            addr: member.upstream.clone(),
            name: member.host().to_string(),
        }
    })?;
    Ok(Some((connector.clone(), name)))
}
