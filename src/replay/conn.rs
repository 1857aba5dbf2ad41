//! One live connection of a replay: raw OP_MSG frames out, replies read to
//! the end of their moreToCome stream. Replies that answer nothing replay
//! waits for (FerretDB answers w:0 writes although it should not) are read
//! and dropped.

use super::ReplayError;
use crate::inspect::{with_message, Message};
use bytes::BytesMut;
use mongotap_proto::{ReplyView, MAX_MESSAGE_LEN};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the live server answered to one request.
#[derive(Debug, Default)]
pub struct Reply {
    /// Documents in firstBatch/nextBatch over all replies.
    pub docs: u64,
    pub error: bool,
    /// `code` or the first write error's code.
    pub code: Option<i32>,
    pub code_name: Option<String>,
    /// The last reply's cursor id.
    pub cursor_id: Option<i64>,
}

pub struct Conn {
    stream: TcpStream,
    /// Bytes read past the last whole frame.
    buf: BytesMut,
    next_request_id: i32,
    target: String,
}

impl Conn {
    pub fn new(stream: TcpStream, target: &str) -> Conn {
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            next_request_id: 1,
            target: target.to_string(),
        }
    }

    fn io(&self, source: std::io::Error) -> ReplayError {
        ReplayError::Io {
            target: self.target.clone(),
            source,
        }
    }

    /// Sends `frame` (an encoded OP_MSG) under a fresh request id, which it
    /// returns.
    pub async fn send(&mut self, frame: &mut [u8]) -> Result<i32, ReplayError> {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        frame[4..8].copy_from_slice(&id.to_le_bytes());
        frame[8..12].copy_from_slice(&0i32.to_le_bytes());
        self.stream.write_all(frame).await.map_err(|e| self.io(e))?;
        Ok(id)
    }

    /// Reads the reply to `request_id`, following moreToCome to the last
    /// reply of the stream. Gives up after `timeout` without a frame.
    pub async fn reply(
        &mut self,
        request_id: i32,
        timeout: Duration,
    ) -> Result<Reply, ReplayError> {
        let mut want = request_id;
        let mut out = Reply::default();
        loop {
            let frame = self.frame(timeout).await?;
            let Some(header) = mongotap_proto::Header::parse(&frame) else {
                continue;
            };
            if header.response_to != want {
                // A stray reply (e.g. to a w:0 write): nobody waits for it.
                continue;
            }
            let parsed = with_message(&frame, MAX_MESSAGE_LEN, |_, _, m| match m {
                Message::Msg(msg) => ReplyView::parse(msg.body)
                    .map(|v| (summary(&v), msg.more_to_come()))
                    .ok(),
                Message::Reply(r) => r
                    .first()
                    .and_then(|d| ReplyView::parse(d).ok())
                    .map(|v| (summary(&v), false)),
                _ => None,
            })
            .map_err(|source| ReplayError::Decode {
                target: self.target.clone(),
                source,
            })?;
            let Some((one, more)) = parsed else {
                return Err(ReplayError::Unexpected {
                    target: self.target.clone(),
                    what: format!("opcode {:?} in reply to request {want}", header.op_code),
                });
            };
            out.docs += one.docs;
            if one.error && !out.error {
                out.error = true;
                out.code = one.code;
                out.code_name = one.code_name;
            }
            if one.cursor_id.is_some() {
                out.cursor_id = one.cursor_id;
            }
            if !more {
                return Ok(out);
            }
            want = header.request_id;
        }
    }

    /// One whole frame.
    async fn frame(&mut self, timeout: Duration) -> Result<bytes::Bytes, ReplayError> {
        loop {
            let decoded =
                mongotap_proto::decode(&mut self.buf, MAX_MESSAGE_LEN).map_err(|source| {
                    ReplayError::Decode {
                        target: self.target.clone(),
                        source,
                    }
                })?;
            if let Some(frame) = decoded {
                return Ok(frame.bytes);
            }
            // Cancel-safe: read_buf appends to self.buf only what it read.
            let n = tokio::time::timeout(timeout, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| ReplayError::Timeout {
                    target: self.target.clone(),
                    ms: timeout.as_millis() as u64,
                })?
                .map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(ReplayError::Closed {
                    target: self.target.clone(),
                });
            }
        }
    }
}

fn summary(v: &ReplyView<'_>) -> Reply {
    Reply {
        docs: v.batch_len() as u64,
        error: v.is_error(),
        code: v.error_code(),
        code_name: v.code_name.map(str::to_string),
        cursor_id: v.cursor_id,
    }
}
