//! Reading whole frames off one side of a connection.
//!
//! The framing itself is `mongotap_proto::frame` (`split_batch`, the growth
//! rule in `reserve_next`); this adds the I/O around it: reads, the frame
//! timeout, a clean EOF told apart from a truncated frame, and naming
//! another protocol sent to a client port.

use crate::proxy::error::{SessionError, Side};
use bytes::{Bytes, BytesMut};
use mongotap_proto::{frame, sniff, DecodeError, HEADER_LEN};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// Yields the whole frames of a stream in batches, each the `Bytes` of
/// every whole frame that had arrived, split off the read buffer without
/// copying so it can be forwarded with one write.
pub struct FrameReader<R> {
    /// The stream.
    reader: R,
    /// Bytes read and not yet handed out: at most part of one frame, or a
    /// bad header that the next call reports.
    buf: BytesMut,
    /// Which peer this is, for errors.
    side: Side,
    /// The largest frame accepted (`proxy.max_frame_bytes`).
    limit: usize,
    /// A started frame must complete within this (`proxy.frame_timeout_ms`).
    frame_timeout: Duration,
    /// When the partial frame in `buf` began waiting for its rest. Started
    /// by the first read that waits for it, so time the caller spends
    /// elsewhere (writing, waiting for an in-flight slot) is not charged
    /// to the sender.
    partial_since: Option<Instant>,
    /// Until a whole header has arrived from a client: check whether it is
    /// speaking another protocol (TLS, HTTP), to say so in the error.
    sniff: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R, side: Side, limit: usize, frame_timeout: Duration) -> Self {
        FrameReader {
            reader,
            buf: BytesMut::with_capacity(frame::READ_CHUNK),
            side,
            limit,
            frame_timeout,
            partial_since: None,
            sniff: side == Side::Client,
        }
    }

    /// Bytes read but not yet handed out (part of a frame).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next batch of whole frames, or `None` at a clean EOF (between
    /// frames). Whole frames that arrived before a malformed one come out
    /// first; the next call reports the malformed one.
    ///
    /// Cancel-safe: everything read is kept in `self.buf` and the frame
    /// clock in `self.partial_since`; the only await is `read_buf`, which
    /// is cancel-safe. A dropped call loses nothing and the next call
    /// resumes where it left off.
    pub async fn next_batch(&mut self) -> Result<Option<Bytes>, SessionError> {
        loop {
            match frame::split_batch(&mut self.buf, self.limit) {
                Ok(Some(batch)) => {
                    self.partial_since = None;
                    return Ok(Some(batch));
                }
                Ok(None) => {}
                Err(source) => return Err(self.decode_error(source)),
            }
            frame::reserve_next(&mut self.buf, self.limit);
            if self.read().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(self.decode_error(DecodeError::Truncated {
                    opcode: "frame",
                    what: "the rest of the message before the connection closed",
                    needed: self.needed(),
                    left: self.buf.len(),
                }));
            }
            // A whole header tells MongoDB apart from TLS or HTTP (a
            // 790-byte message starts with the same two bytes as a TLS
            // record).
            if self.sniff && self.buf.len() >= HEADER_LEN {
                self.sniff = false;
                if let Some(source) = sniff::foreign_protocol(&self.buf) {
                    return Err(SessionError::Decode {
                        side: self.side,
                        source,
                    });
                }
            }
        }
    }

    /// One read. Waiting for a new frame has no deadline (that is idle,
    /// which the session times separately); waiting for the rest of a
    /// started one does.
    async fn read(&mut self) -> Result<usize, SessionError> {
        let deadline = match self.buf.is_empty() {
            true => None,
            false => {
                Some(*self.partial_since.get_or_insert_with(Instant::now) + self.frame_timeout)
            }
        };
        let read = self.reader.read_buf(&mut self.buf);
        let result = match deadline {
            None => read.await,
            Some(at) => match tokio::time::timeout_at(at, read).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(SessionError::FrameTimeout {
                        side: self.side,
                        have: self.buf.len(),
                        need: self.needed(),
                        ms: self.frame_timeout.as_millis() as u64,
                    })
                }
            },
        };
        result.map_err(|source| SessionError::Io {
            side: self.side,
            source,
        })
    }

    /// The length of the partial frame, as far as its header tells.
    fn needed(&self) -> usize {
        frame::claimed_len(&self.buf, self.limit)
            .ok()
            .flatten()
            .unwrap_or(HEADER_LEN)
    }

    fn decode_error(&mut self, source: DecodeError) -> SessionError {
        // An invalid first frame from a client is most often another
        // protocol: say which, when the bytes show it.
        let source = match self.sniff {
            true => sniff::foreign_protocol(&self.buf).unwrap_or(source),
            false => source,
        };
        SessionError::Decode {
            side: self.side,
            source,
        }
    }
}

#[cfg(test)]
#[path = "frames_tests.rs"]
mod tests;
