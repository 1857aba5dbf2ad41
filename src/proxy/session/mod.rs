//! One task per client connection: connect upstream, then forward whole
//! frames both ways as the original bytes, observing each one on the way.
//!
//! Forwarding never copies: the bytes of every complete frame in a read are
//! split off the read buffer as one `Bytes` and written as they are.

mod end;
mod frames;
mod gate;
mod pipe;
mod tls_io;

use end::report_end;
pub use end::End;
use frames::FrameReader;
use pipe::{pipe, ClientSide};

use crate::observe::{ConnId, ReplyObserver, RequestObserver};
use crate::proxy::error::{SessionError, Side};
use crate::shared::{ActiveGuard, Shared};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// The two signals a session listens to.
#[derive(Clone)]
pub struct Shutdown {
    /// Stop once no command is pending (graceful drain).
    pub drain: CancellationToken,
    /// Stop now (drain deadline passed).
    pub abort: CancellationToken,
}

/// Serves one client. `_active` is the slot the listener took for it in
/// `connections_active`; it is released when the session ends.
pub async fn run(
    shared: Arc<Shared>,
    client: TcpStream,
    id: ConnId,
    shutdown: Shutdown,
    _active: ActiveGuard,
) {
    let _ = client.set_nodelay(true);
    // Each connection keeps the TLS config it started with; SIGHUP only
    // changes what later connections get.
    let settings = shared.settings.load_full();
    let tls = &settings.tls;
    let (client_read, client_write) = match &tls.acceptor {
        None => tls_io::split_tcp(client),
        Some(acceptor) => match tls_io::accept_tls(acceptor, client).await {
            Ok(halves) => halves,
            Err(e) => {
                // Not a decode error: no frame was read. The log event
                // keeps its name, which scripts already match on.
                shared
                    .observe
                    .counters
                    .tls_handshake_failures_client
                    .fetch_add(1, Relaxed);
                warn!(
                    event = "decode_error",
                    conn = id.conn,
                    client = %id.client,
                    side = "client",
                    reason = %e,
                    "closing connection: TLS from client failed: {e}"
                );
                return;
            }
        },
    };
    let (upstream_read, upstream_write) = match tls_io::connect_upstream(
        &shared,
        tls,
        id.member.as_deref(),
    )
    .await
    {
        Ok(halves) => halves,
        Err(e) => {
            shared
                .observe
                .counters
                .upstream_connect_errors
                .fetch_add(1, Relaxed);
            if matches!(e, SessionError::UpstreamTls { .. }) {
                shared
                    .observe
                    .counters
                    .tls_handshake_failures_upstream
                    .fetch_add(1, Relaxed);
            }
            error!(
                event = "upstream_unreachable",
                conn = id.conn,
                client = %id.client,
                upstream = %id.member.as_ref().map_or(&shared.config.proxy.upstream, |m| &m.upstream),
                error = %e,
                "closing client connection: upstream unreachable: {e}"
            );
            return;
        }
    };
    debug!(conn = id.conn, client = %id.client, "connection opened");
    // Child tokens: a poll of a token locks its mutex, and the proxy-wide
    // ones are shared by every session.
    let (abort, drain) = (shutdown.abort.child_token(), shutdown.drain.child_token());
    let proxy = &shared.config.proxy;
    let conn_state = crate::observe::ConnState::new(shared.observe.clone(), id.clone());
    let mut requests = RequestObserver::new(&conn_state);
    let mut replies = ReplyObserver::new(&conn_state);
    let frame_timeout = Duration::from_millis(proxy.frame_timeout_ms);
    let frames = |read, side| FrameReader::new(read, side, proxy.max_frame_bytes, frame_timeout);
    let to_upstream = pipe(
        Side::Client,
        frames(client_read, Side::Client),
        upstream_write,
        Some(ClientSide {
            conn: &conn_state,
            max_inflight: proxy.max_inflight_per_connection,
            drain: &drain,
        }),
        &mut requests,
    );
    let to_client = pipe(
        Side::Upstream,
        frames(upstream_read, Side::Upstream),
        client_write,
        None,
        &mut replies,
    );
    let idle_timeout = Duration::from_millis(proxy.idle_timeout_ms);
    tokio::pin!(to_upstream, to_client);

    // Each branch polls a pinned future that lives across iterations, so
    // nothing is lost when another branch wins (and the pipes' inner
    // selects are cancel-safe on their own: see `pipe`).
    let mut draining = false;
    // Latency samples are published in batches; this bounds how stale
    // /stats can be for a connection that has gone quiet.
    let mut flush = tokio::time::interval(crate::observe::stats::FLUSH_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        // The control branch is gated: frames wake this task all the time,
        // and only its own wakeups make it poll the tokens and the timer.
        let mut control = gate::gated(control(&abort, &drain, &mut flush, draining, &conn_state));
        // Cancel-safe: the pipes are pinned across iterations (see above),
        // and `control` is (see `control`).
        let event = tokio::select! {
            r = &mut to_upstream => break End::new(Side::Client, r),
            r = &mut to_client => break End::new(Side::Upstream, r),
            event = &mut control => event,
        };
        drop(control);
        match event {
            Control::Abort => break End::Shutdown,
            // Dropping both halves closes the client's connection (its
            // driver errors at once) and the upstream's (the server
            // interrupts an operation whose client went away).
            Control::Killed => break End::Failed(SessionError::Killed),
            Control::Drain => draining = true,
            Control::Tick => {
                conn_state.flush();
                // A pending awaitable hello counts as pending: monitors are
                // never idle-closed.
                if !idle_timeout.is_zero()
                    && conn_state.pending() == 0
                    && conn_state.idle_for() >= idle_timeout
                {
                    break End::Failed(SessionError::Idle {
                        ms: idle_timeout.as_millis() as u64,
                    });
                }
            }
            Control::DrainCheck => {
                if conn_state.pending() == 0 {
                    break End::Shutdown;
                }
            }
        }
    };
    let (end, reset) = end.settle(conn_state.waiting());
    conn_state.finish(&end.ending());
    report_end(&shared, &id, &end, reset);
}

/// What the session's control branch reports.
enum Control {
    /// The drain deadline passed.
    Abort,
    /// An operator killed a command on this connection.
    Killed,
    /// Shutdown began: finish what is pending.
    Drain,
    /// Time to publish samples and check the idle timeout.
    Tick,
    /// While draining: the last reply is in.
    DrainCheck,
}

async fn control(
    abort: &CancellationToken,
    drain: &CancellationToken,
    flush: &mut tokio::time::Interval,
    draining: bool,
    conn: &crate::observe::ConnState,
) -> Control {
    // Cancel-safe: this future is dropped whenever a frame wins the outer
    // select. `cancelled` holds no state, a tick not taken stays due, and
    // `wait_for_slot` registers for the next completion before it checks
    // the count, so a reply that lands between two polls is not missed.
    // Biased so abort and kill win over a due tick.
    tokio::select! {
        biased;
        _ = abort.cancelled() => Control::Abort,
        _ = conn.kill_token().cancelled() => Control::Killed,
        _ = drain.cancelled(), if !draining => Control::Drain,
        _ = flush.tick() => Control::Tick,
        () = conn.wait_for_slot(1), if draining => Control::DrainCheck,
    }
}

#[cfg(test)]
mod tests;
