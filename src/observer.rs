//! Per-frame observation for one connection: requests on the way up,
//! replies on the way down. Observation only reads the frame; it never
//! blocks and never changes what is forwarded.

use crate::inspect::{with_message, Message};
use crate::session::{ConnId, End};
use crate::shared::Shared;
use mongotap_proto::{CommandView, DecodeError};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// What both directions of one connection need to see.
pub struct ConnState {
    pub shared: Arc<Shared>,
    pub id: ConnId,
    /// Requests that expect a reply and have not had their last one yet.
    pending: AtomicUsize,
}

impl ConnState {
    pub fn new(shared: Arc<Shared>, id: ConnId) -> Self {
        ConnState {
            shared,
            id,
            pending: AtomicUsize::new(0),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }

    /// Called once when the session ends.
    pub fn finish(&self, _end: &End) {}
}

pub trait Observe {
    /// Looks at one whole frame. An error closes the connection.
    fn observe(&mut self, frame: &[u8]) -> Result<(), DecodeError>;
}

pub struct RequestObserver<'a> {
    conn: &'a ConnState,
}

impl<'a> RequestObserver<'a> {
    pub fn new(conn: &'a ConnState) -> Self {
        RequestObserver { conn }
    }
}

impl Observe for RequestObserver<'_> {
    fn observe(&mut self, frame: &[u8]) -> Result<(), DecodeError> {
        let limit = self.conn.shared.config.proxy.max_frame_bytes;
        let expects_reply = with_message(frame, limit, |_header, _compressor, message| {
            Ok::<_, DecodeError>(match message {
                Message::Msg(msg) => {
                    CommandView::parse(msg.body)?;
                    !msg.more_to_come()
                }
                Message::Query(q) => {
                    CommandView::parse(q.command())?;
                    true
                }
                Message::Reply(_) => false,
                Message::Unknown(_) => {
                    self.conn
                        .shared
                        .counters
                        .unknown_opcodes
                        .fetch_add(1, Relaxed);
                    false
                }
            })
        })??;
        if expects_reply {
            self.conn.pending.fetch_add(1, Relaxed);
        }
        Ok(())
    }
}

pub struct ReplyObserver<'a> {
    conn: &'a ConnState,
}

impl<'a> ReplyObserver<'a> {
    pub fn new(conn: &'a ConnState) -> Self {
        ReplyObserver { conn }
    }
}

impl Observe for ReplyObserver<'_> {
    fn observe(&mut self, frame: &[u8]) -> Result<(), DecodeError> {
        let limit = self.conn.shared.config.proxy.max_frame_bytes;
        let last = with_message(
            frame,
            limit,
            |_header, _compressor, message| match message {
                Message::Msg(msg) => !msg.more_to_come(),
                Message::Reply(_) => true,
                Message::Query(_) => false,
                Message::Unknown(_) => {
                    self.conn
                        .shared
                        .counters
                        .unknown_opcodes
                        .fetch_add(1, Relaxed);
                    false
                }
            },
        )?;
        if last {
            let _ = self
                .conn
                .pending
                .fetch_update(Relaxed, Relaxed, |p| p.checked_sub(1));
        }
        Ok(())
    }
}
