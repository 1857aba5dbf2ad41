//! Frames on the wire: a request goes out as given under a fresh request
//! id, and replies come back one frame at a time, following a moreToCome
//! (exhaust) stream to its last reply. [`UpstreamClient::command`] and
//! replay's captured frames both go through here, so there is one framing
//! loop and one rule for which reply answers what.
//!
//! Frames are cut with [`mongotap_proto::decode`], which checks a claimed
//! length against the 48 MB limit before anything is allocated for it.

use super::{ClientError, UpstreamClient};
use bson::RawDocument;
use mongotap_proto::message::{with_message, Message};
use mongotap_proto::op_msg::{self, MORE_TO_COME};
use mongotap_proto::{Frame, Header, OpCode, MAX_MESSAGE_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the conversation on the connection stands. Only a whole write or
/// a whole frame moves it on, so a dropped future leaves it where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// No reply is awaited: a request may go out.
    Idle,
    /// A request is being written. A future dropped here may have sent part
    /// of it, so the server and the client are out of step for good.
    Writing,
    /// The next reply must answer this id: the request's, or within a
    /// moreToCome stream the previous reply's.
    Awaiting(i32),
}

/// One reply, as far as its reader needs it.
#[derive(Debug)]
pub struct Replied<T> {
    /// What the reader's function made of the reply's document.
    pub value: T,
    /// More replies to the same request follow (an exhaust stream);
    /// [`UpstreamClient::read_reply`] reads them in turn.
    pub more_to_come: bool,
    /// The opcode the document came in, after any decompression.
    pub op_code: OpCode,
}

impl UpstreamClient {
    /// Sends `frame`, a whole message, as it is but for its header's ids:
    /// a fresh requestID (returned) and responseTo 0, so a frame taken from
    /// another connection (a capture) cannot collide with this one's ids.
    /// An OP_MSG with moreToCome expects no reply; any other frame leaves a
    /// reply to read with [`read_reply`](Self::read_reply).
    ///
    /// Not cancel-safe: a future dropped mid-write poisons the connection.
    pub async fn send_frame(&mut self, frame: &mut [u8]) -> Result<i32, ClientError> {
        if self.state != State::Idle {
            return Err(self.poisoned());
        }
        let Some(header) = Header::parse(frame) else {
            return Err(ClientError::ShortFrame {
                addr: self.addr.clone(),
                len: frame.len(),
            });
        };
        let fire_and_forget = header.op_code == OpCode::Msg
            && op_msg::flags(frame).is_some_and(|f| f & MORE_TO_COME != 0);
        // Ids run 1, 2, ... and wrap to 1 after i32::MAX.
        let id = self.last_request_id.wrapping_add(1).max(1);
        frame[4..8].copy_from_slice(&id.to_le_bytes());
        frame[8..12].copy_from_slice(&0i32.to_le_bytes());
        self.last_request_id = id;
        self.state = State::Writing;
        self.stream
            .write_all(frame)
            .await
            .map_err(|source| self.io(source))?;
        // A no-op on TCP; a stream that buffers writes must not sit on a
        // request whose reply the caller is about to wait for.
        self.stream
            .flush()
            .await
            .map_err(|source| self.io(source))?;
        self.state = if fire_and_forget {
            State::Idle
        } else {
            State::Awaiting(id)
        };
        Ok(id)
    }

    /// Reads the next reply to what was sent and hands its document (an
    /// OP_MSG's body, an OP_REPLY's first document) to `f`. `Ok(None)`
    /// when no reply is awaited: nothing was sent, the request was
    /// fire-and-forget, or the last reply of a moreToCome stream was read.
    ///
    /// Cancel-safe: bytes read stay buffered and the awaited id stays
    /// awaited until a whole reply is taken, so a timeout around it may be
    /// retried. A command started meanwhile fails as poisoned.
    pub async fn read_reply<T>(
        &mut self,
        f: impl FnOnce(&RawDocument) -> T,
    ) -> Result<Option<Replied<T>>, ClientError> {
        let want = match self.state {
            State::Idle => return Ok(None),
            State::Writing => return Err(self.poisoned()),
            State::Awaiting(want) => want,
        };
        let frame = loop {
            let frame = self.next_frame().await?;
            let to = frame.header.response_to;
            if to == want {
                break frame;
            }
            // A reply to an earlier request of ours answers a moreToCome
            // request (FerretDB answers w:0 writes, which it should not):
            // nobody waits for it. Anything else is a server out of step.
            // (Ids wrap to 1 after 2^31 requests; a stray that old is then
            // refused, which only ends that connection.)
            if !(to > 0 && to < self.last_request_id) {
                return Err(
                    self.unexpected(format!("responseTo {to} does not match request {want}"))
                );
            }
        };
        let parsed = with_message(&frame.bytes, MAX_MESSAGE_LEN, |header, _, m| match m {
            Message::Msg(msg) => Some((f(msg.body), msg.more_to_come(), header.op_code)),
            Message::Reply(r) => r.first().map(|d| (f(d), false, header.op_code)),
            _ => None,
        })
        .map_err(|source| self.decode(source))?;
        let Some((value, more_to_come, op_code)) = parsed else {
            return Err(self.unexpected(format!(
                "opcode {:?} with no document in reply to request {want}",
                frame.header.op_code
            )));
        };
        self.state = if more_to_come {
            State::Awaiting(frame.header.request_id)
        } else {
            State::Idle
        };
        Ok(Some(Replied {
            value,
            more_to_come,
            op_code,
        }))
    }

    /// The next whole frame off the stream.
    async fn next_frame(&mut self) -> Result<Frame, ClientError> {
        loop {
            let decoded = mongotap_proto::decode(&mut self.buf, MAX_MESSAGE_LEN)
                .map_err(|source| self.decode(source))?;
            if let Some(frame) = decoded {
                return Ok(frame);
            }
            // Cancel-safe: read_buf appends to self.buf only what it read.
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|source| self.io(source))?;
            if n == 0 {
                return Err(ClientError::Closed {
                    addr: self.addr.clone(),
                });
            }
        }
    }
}
