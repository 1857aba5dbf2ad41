//! One direction of a session: observe each whole frame, splice in any
//! rewritten ones, write. Framing is the `FrameReader`'s.

use super::frames::FrameReader;
use super::gate;
use crate::observe::{ConnState, Observe};
use crate::proxy::error::{SessionError, Side};
use bytes::Bytes;
use mongotap_proto::frame;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// What only the client's direction has: the in-flight cap, and the drain
/// signal after which no new command is read.
pub struct ClientSide<'a> {
    /// The connection's in-flight table.
    pub conn: &'a ConnState,
    /// Hold reads while this many commands are pending
    /// (`proxy.max_inflight_per_connection`).
    pub max_inflight: usize,
    /// Shutdown began.
    pub drain: &'a CancellationToken,
}

/// Forwards frames from `frames` (the `from` side) to `writer` until EOF or
/// an error. Frames are observed before they are written; a malformed frame
/// is not forwarded, but every good frame before it is.
///
/// On the client's side, once draining starts no new command is read: a
/// command read now would either hold up the shutdown or be cut off at the
/// drain deadline, while the client that never sent it can retry it on
/// another server. Replies owed keep flowing the other way, and the
/// session ends once they are in.
pub async fn pipe<R, W, O>(
    from: Side,
    mut frames: FrameReader<R>,
    mut writer: W,
    client: Option<ClientSide<'_>>,
    observer: &mut O,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    O: Observe,
{
    // Behind a gate: frames wake this task all the time, and only the
    // token's own wakeup makes it poll the token (see `gate`).
    let mut draining = client.as_ref().map(|c| gate::gated(c.drain.cancelled()));
    loop {
        if let Some(c) = &client {
            if frames.buffered() == 0 && c.conn.pending() >= c.max_inflight {
                c.conn.wait_for_slot(c.max_inflight).await;
            }
        }
        let batch = match draining.as_mut() {
            None => frames.next_batch().await?,
            // Cancel-safe: `next_batch` keeps what it read in `frames`, and
            // the gated token can be polled again. Biased so a command that
            // arrives with the drain is not forwarded.
            Some(draining) => tokio::select! {
                biased;
                // Parked for good: the session ends once the replies owed
                // are in, or at the drain deadline.
                () = draining => return std::future::pending().await,
                batch = frames.next_batch() => batch?,
            },
        };
        let Some(batch) = batch else {
            return Ok(());
        };
        forward(from, &batch, &mut writer, client.as_ref(), observer).await?;
    }
}

/// Observes and writes one batch of whole frames: the bytes as they came,
/// with one write where nothing was rewritten.
async fn forward<W, O>(
    from: Side,
    batch: &Bytes,
    writer: &mut W,
    client: Option<&ClientSide<'_>>,
    observer: &mut O,
) -> Result<(), SessionError>
where
    W: AsyncWrite + Unpin,
    O: Observe,
{
    let to = match from {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    };
    let mut out = Out {
        writer,
        to,
        wrote: false,
    };
    // The bytes of `batch` before `sent` are written (or replaced).
    let mut sent = 0;
    for (at, frame) in frame::frames(batch) {
        // A client pipelining past max_inflight_per_connection: a single
        // read can hold many commands. Send what the cap allows, then hold
        // the rest until a reply frees a slot.
        if let Some(c) = client {
            if c.conn.pending() >= c.max_inflight {
                out.write(&batch[sent..at]).await?;
                out.flush().await?;
                sent = at;
                c.conn.wait_for_slot(c.max_inflight).await;
                // Held commands are not sent once draining started, as
                // if they had not been read (see `pipe`).
                if c.drain.is_cancelled() {
                    return std::future::pending().await;
                }
            }
        }
        match observer.observe(frame) {
            Ok(None) => {}
            Ok(Some(replacement)) => {
                // The frames before it as they are, then the rewritten
                // frame in place of the original.
                out.write(&batch[sent..at]).await?;
                out.write(&replacement).await?;
                sent = at + frame.len();
            }
            Err(source) => {
                out.write(&batch[sent..at]).await?;
                out.flush().await?;
                return Err(SessionError::Decode { side: from, source });
            }
        }
    }
    out.write(&batch[sent..]).await?;
    out.flush().await
}

/// The writing side of one batch.
struct Out<'a, W> {
    writer: &'a mut W,
    /// Which peer is written to, for errors.
    to: Side,
    /// Something was written since the last flush.
    wrote: bool,
}

impl<W: AsyncWrite + Unpin> Out<'_, W> {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.wrote = true;
        self.writer
            .write_all(bytes)
            .await
            .map_err(|source| SessionError::Io {
                side: self.to,
                source,
            })
    }

    /// A TLS stream's write returns once rustls holds the bytes, even if
    /// the socket was full and the tail is still in rustls' buffer; only a
    /// flush sends it. Without one, the end of a reply would wait for the
    /// next write on this side, which may never come. For plain TCP this
    /// is a no-op.
    async fn flush(&mut self) -> Result<(), SessionError> {
        if !std::mem::take(&mut self.wrote) {
            return Ok(());
        }
        self.writer
            .flush()
            .await
            .map_err(|source| SessionError::Io {
                side: self.to,
                source,
            })
    }
}
