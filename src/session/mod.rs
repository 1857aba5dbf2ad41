//! One task per client connection: connect upstream, then forward whole
//! frames both ways as the original bytes, observing each one on the way.
//!
//! Forwarding never copies: the bytes of every complete frame in a read are
//! split off the read buffer as one `Bytes` and written as they are.

mod end;
mod gate;

use end::report_end;
pub use end::End;

use crate::error::{SessionError, Side};
use crate::observer::{ConnState, Observe, ReplyObserver, RequestObserver};
use crate::shared::{ActiveGuard, Shared};
use crate::tls::Tls;
use bytes::{Buf, BytesMut};
use mongotap_proto::{frame, sniff, DecodeError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// Read buffer sizing: most commands and replies are small; a large frame
/// reserves exactly what its (validated) header claims.
const READ_CHUNK: usize = 16 * 1024;
/// The most the read buffer grows by at once for a partial large frame.
const MAX_GROWTH: usize = 256 * 1024;

/// The two signals a session listens to.
#[derive(Clone)]
pub struct Shutdown {
    /// Stop once no command is pending (graceful drain).
    pub drain: CancellationToken,
    /// Stop now (drain deadline passed).
    pub abort: CancellationToken,
}

/// Who a connection is, for every log line about it.
#[derive(Debug, Clone)]
pub struct ConnId {
    pub conn: u64,
    pub client: SocketAddr,
}

/// Either side's stream, boxed so plaintext and TLS share one forwarding
/// loop (the dynamic call per read is noise next to the syscall).
type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// How long a client may take to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    let tls = shared.tls.load_full();
    let (client_read, client_write) = match &tls.acceptor {
        None => split_tcp(client),
        Some(acceptor) => match accept_tls(acceptor, client).await {
            Ok(halves) => halves,
            Err(e) => {
                shared
                    .counters
                    .decode_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    let (upstream_read, upstream_write) = match connect_upstream(&shared, &tls).await {
        Ok(halves) => halves,
        Err(e) => {
            shared
                .counters
                .upstream_connect_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            error!(
                event = "upstream_unreachable",
                conn = id.conn,
                client = %id.client,
                upstream = %shared.config.proxy.upstream,
                error = %e,
                "closing client connection: upstream unreachable: {e}"
            );
            return;
        }
    };
    debug!(conn = id.conn, client = %id.client, "connection opened");
    let limit = shared.config.proxy.max_frame_bytes;
    let conn_state = crate::observer::ConnState::new(shared.clone(), id.clone());
    let mut requests = RequestObserver::new(&conn_state);
    let mut replies = ReplyObserver::new(&conn_state);
    let frame_timeout = Duration::from_millis(shared.config.proxy.frame_timeout_ms);
    let client_limits = Limits {
        frame: limit,
        frame_timeout,
        gate: Some((&conn_state, shared.config.proxy.max_inflight_per_connection)),
    };
    let upstream_limits = Limits {
        frame: limit,
        frame_timeout,
        gate: None,
    };
    let to_upstream = pipe(
        Side::Client,
        client_read,
        upstream_write,
        client_limits,
        &mut requests,
    );
    let to_client = pipe(
        Side::Upstream,
        upstream_read,
        client_write,
        upstream_limits,
        &mut replies,
    );
    let idle_timeout = Duration::from_millis(shared.config.proxy.idle_timeout_ms);
    tokio::pin!(to_upstream, to_client);

    // Each branch polls a pinned future that lives across iterations, so
    // nothing is lost when another branch wins: the pipes' only await
    // points are `read_buf` (cancel-safe), `write_all` of a whole chunk
    // and the `flush` after it.
    let mut draining = false;
    // Child tokens: a poll of a token locks its mutex, and the proxy-wide
    // ones are shared by every session.
    let (abort, drain) = (shutdown.abort.child_token(), shutdown.drain.child_token());
    // Latency samples are published in batches; this bounds how stale
    // /stats can be for a connection that has gone quiet.
    let mut flush = tokio::time::interval(crate::stats::FLUSH_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        // The control branch is gated: frames wake this task all the time,
        // and only its own wakeups make it poll the tokens and the timer.
        let mut control = gate::gated(control(&abort, &drain, &mut flush, draining));
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
    conn_state.finish(&end);
    report_end(&shared, &id, &end, reset);
}

/// What the session's control branch reports.
enum Control {
    /// The drain deadline passed.
    Abort,
    /// Shutdown began: finish what is pending.
    Drain,
    /// Time to publish samples and check the idle timeout.
    Tick,
    /// While draining, every few ms: is the last reply in?
    DrainCheck,
}

async fn control(
    abort: &CancellationToken,
    drain: &CancellationToken,
    flush: &mut tokio::time::Interval,
    draining: bool,
) -> Control {
    // Cancel-safe: this future is dropped whenever a frame wins the outer
    // select. `cancelled` holds no state, a tick not taken stays due, and
    // the drain check's 5 ms sleep restarts, which only defers the check
    // while frames keep flowing (abort bounds the wait). Biased so abort
    // wins over a due tick.
    tokio::select! {
        biased;
        _ = abort.cancelled() => Control::Abort,
        _ = drain.cancelled(), if !draining => Control::Drain,
        _ = flush.tick() => Control::Tick,
        _ = tokio::time::sleep(Duration::from_millis(5)), if draining => Control::DrainCheck,
    }
}

fn split_tcp(stream: TcpStream) -> (BoxRead, BoxWrite) {
    let (r, w) = stream.into_split();
    (Box::new(r), Box::new(w))
}

/// Splits a TLS stream.
fn split_io<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> (BoxRead, BoxWrite) {
    let (r, w) = tokio::io::split(stream);
    (Box::new(CloseNotifyOptional(r)), Box::new(w))
}

/// Reads a TLS stream, taking a close without TLS `close_notify` as a plain
/// EOF. Drivers close that way all the time, and so does mongotap. Every
/// MongoDB frame carries its own length, so a frame cut short is still
/// reported as truncated by `pipe`.
struct CloseNotifyOptional<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for CloseNotifyOptional<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Accepts TLS from a client. A client that sends anything but a TLS
/// record first is told apart from a failed handshake: it is speaking
/// plaintext to a TLS port.
async fn accept_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    client: TcpStream,
) -> Result<(BoxRead, BoxWrite), String> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, client.peek(&mut first)).await {
        Ok(Ok(0)) => return Err("client closed before sending anything".into()),
        Ok(Ok(_)) if first[0] != 0x16 => {
            return Err(
                "the client sent plaintext to a TLS port: connect with tls=true (and tlsCAFile), or point it at a plaintext listener".into(),
            )
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("client sent nothing within the TLS handshake timeout".into()),
    }
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(client)).await {
        Ok(Ok(stream)) => Ok(split_io(stream)),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err("TLS handshake timed out".into()),
    }
}

async fn connect_upstream(shared: &Shared, tls: &Tls) -> Result<(BoxRead, BoxWrite), SessionError> {
    let addr = &shared.config.proxy.upstream;
    let ms = shared.config.proxy.connect_timeout_ms;
    let deadline = Duration::from_millis(ms);
    let tcp = match tokio::time::timeout(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            return Err(SessionError::Connect {
                addr: addr.clone(),
                source,
            })
        }
        Err(_) => {
            return Err(SessionError::ConnectTimeout {
                addr: addr.clone(),
                ms,
            })
        }
    };
    let _ = tcp.set_nodelay(true);
    let Some((connector, name)) = &tls.connector else {
        return Ok(split_tcp(tcp));
    };
    match tokio::time::timeout(deadline, connector.connect(name.clone(), tcp)).await {
        Ok(Ok(stream)) => Ok(split_io(stream)),
        Ok(Err(source)) => Err(SessionError::UpstreamTls {
            addr: addr.clone(),
            name: name.to_str().into_owned(),
            source,
        }),
        Err(_) => Err(SessionError::ConnectTimeout {
            addr: addr.clone(),
            ms,
        }),
    }
}

/// Forwards frames from `reader` (the `from` side) to `writer` until EOF or
/// an error. Frames are observed before they are written; a malformed frame
/// is not forwarded, but every good frame before it is.
/// What bounds one direction of a session.
struct Limits<'a> {
    /// Largest frame accepted.
    frame: usize,
    /// A started frame must complete within this.
    frame_timeout: Duration,
    /// Client side only: hold reads while this many commands are pending.
    gate: Option<(&'a ConnState, usize)>,
}

async fn pipe<R, W, O>(
    from: Side,
    mut reader: R,
    mut writer: W,
    limits: Limits<'_>,
    observer: &mut O,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    O: Observe,
{
    let to = match from {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    };
    let limit = limits.frame;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut first_read = from == Side::Client;
    // When the bytes of an incomplete frame started waiting.
    let mut partial_since: Option<tokio::time::Instant> = None;
    // Whole frames are waiting in `buf` because the in-flight cap was hit:
    // forward them once a slot frees, before reading more.
    let mut held = false;
    loop {
        if let Some((conn, max)) = limits.gate {
            if (held || buf.is_empty()) && conn.pending() >= max {
                conn.wait_for_slot(max).await;
            }
        }
        if !held {
            let read = reader.read_buf(&mut buf);
            let n = match partial_since {
                None => read.await,
                Some(since) => {
                    match tokio::time::timeout_at(since + limits.frame_timeout, read).await {
                        Ok(r) => r,
                        Err(_) => {
                            return Err(SessionError::FrameTimeout {
                                side: from,
                                have: buf.len(),
                                need: frame::claimed_len(&buf, limit).ok().flatten().unwrap_or(16),
                                ms: limits.frame_timeout.as_millis() as u64,
                            })
                        }
                    }
                }
            }
            .map_err(|source| SessionError::Io { side: from, source })?;
            if n == 0 {
                if buf.is_empty() {
                    return Ok(());
                }
                return Err(SessionError::Decode {
                    side: from,
                    source: DecodeError::Truncated {
                        opcode: "frame",
                        what: "the rest of the message before the connection closed",
                        needed: frame::claimed_len(&buf, limit).ok().flatten().unwrap_or(16),
                        left: buf.len(),
                    },
                });
            }
            // A whole header tells MongoDB apart from TLS or HTTP (a 790-byte
            // message starts with the same two bytes as a TLS record).
            if first_read && buf.len() >= mongotap_proto::HEADER_LEN {
                first_read = false;
                if let Some(source) = sniff::foreign_protocol(&buf) {
                    return Err(SessionError::Decode { side: from, source });
                }
            }
        }
        held = false;
        // Walk the complete frames in the buffer, observing each.
        let mut ready = 0;
        let mut failed = None;
        let mut wrote = false;
        loop {
            match frame::complete_len(&buf[ready..], limit) {
                // A client pipelining past max_inflight_per_connection: a
                // single read can hold many commands; forward no more than
                // the cap allows and keep the rest for later.
                Ok(Some(_)) if limits.gate.is_some_and(|(conn, max)| conn.pending() >= max) => {
                    held = true;
                    break;
                }
                Ok(Some(len)) => match observer.observe(&buf[ready..ready + len]) {
                    Ok(None) => ready += len,
                    Ok(Some(replacement)) => {
                        // Forward the frames before it as they are, then the
                        // rewritten frame in place of the original.
                        if ready > 0 {
                            let chunk = buf.split_to(ready).freeze();
                            ready = 0;
                            writer
                                .write_all(&chunk)
                                .await
                                .map_err(|source| SessionError::Io { side: to, source })?;
                        }
                        buf.advance(len);
                        writer
                            .write_all(&replacement)
                            .await
                            .map_err(|source| SessionError::Io { side: to, source })?;
                        wrote = true;
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if ready > 0 {
            let chunk = buf.split_to(ready).freeze();
            writer
                .write_all(&chunk)
                .await
                .map_err(|source| SessionError::Io { side: to, source })?;
            wrote = true;
        }
        // A TLS stream's write returns once rustls holds the bytes, even if
        // the socket was full and the tail is still in rustls' buffer; only
        // a flush sends it. Without one, the end of a reply would wait for
        // the next write on this side, which may never come. For plain TCP
        // this is a no-op.
        if wrote {
            writer
                .flush()
                .await
                .map_err(|source| SessionError::Io { side: to, source })?;
        }
        if let Some(mut source) = failed {
            // An invalid first frame from a client is most often another
            // protocol: say which, when the bytes show it.
            if first_read {
                source = sniff::foreign_protocol(&buf).unwrap_or(source);
            }
            return Err(SessionError::Decode { side: from, source });
        }
        if held {
            // The frames kept back are whole: waiting for a slot is not the
            // client being slow.
            partial_since = None;
            continue;
        }
        // Make room for the rest of a partial frame (its length is already
        // validated), or for the next read.
        partial_since = match (buf.is_empty(), partial_since) {
            (true, _) => None,
            (false, None) => Some(tokio::time::Instant::now()),
            (false, since) => since,
        };
        // Grow towards a large frame as its bytes arrive, never by the whole
        // claimed length at once: a peer that sends a header claiming 48 MB
        // and then trickles must not make every connection hold 48 MB.
        let want = match frame::claimed_len(&buf, limit) {
            Ok(Some(len)) => len.saturating_sub(buf.len()).clamp(1024, MAX_GROWTH),
            _ => READ_CHUNK,
        };
        if buf.capacity() - buf.len() < want {
            buf.reserve(want.max(READ_CHUNK.min(want * 2)));
        }
    }
}

#[cfg(test)]
mod tests;
