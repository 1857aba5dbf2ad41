//! Replica-set mode: rewriting the member addresses a server advertises, so
//! that drivers only ever learn mongotap's.
//!
//! A driver given `replicaSet=` reads `hosts`, `passives`, `arbiters`,
//! `primary` and `me` from every hello reply and connects to those
//! addresses (SDAM). mongotap has one listener per member, so each address
//! is replaced by that member's listener, `me` by the listener the client
//! dialled (a driver drops a server whose `me` is not the address it
//! dialled), and an address with no listener is removed: passing it on
//! would let the driver bypass the proxy. replSetGetStatus and
//! replSetGetConfig name members too, and are rewritten the same way.
//!
//! Replies are edited as raw BSON: every element that does not change is
//! copied byte for byte and in order, and the frame keeps its ids, flags
//! and compressor.

mod facts;
mod fields;
mod splice;

pub use facts::{hello_facts, HelloFacts, MemberState};

use crate::message::{with_message, Message};
use crate::op_compressed::{self, Compressor};
use crate::op_msg;
use crate::op_reply::{self, OpReply};
use crate::{DecodeError, Header, OpCode, MAX_MESSAGE_LEN};
use bson::RawDocument;
use std::borrow::Cow;

/// Where each member's address points a driver. The rewriter calls it for
/// every address it meets, so an implementation may open a listener for a
/// member it has not seen before inside `advertise`.
pub trait AddressMap {
    /// The address to advertise for a member as the set names it (given
    /// lower-cased, as SDAM compares addresses), or `None`: remove it.
    fn advertise(&mut self, member: &str) -> Option<String>;
    /// What `me` must say: the mongotap listener this client dialled.
    fn me(&self) -> &str;
}

/// The command a reply answers; the caller knows it from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// hello or the legacy isMaster / ismaster.
    Hello,
    ReplSetGetStatus,
    ReplSetGetConfig,
}

/// The result of [`rewrite_reply_with_facts`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplyRewrite {
    /// The frame to send instead, or `None`: forward the original.
    pub frame: Option<Vec<u8>>,
    /// For a hello reply, its facts as the server sent them (before any
    /// mapping), so the caller need not decode the reply a second time.
    pub facts: Option<HelloFacts>,
}

/// Rewrites the member addresses in one whole reply frame (header
/// included). `Ok(None)`: forward the frame as it is (another opcode,
/// nothing to rewrite, or a rewrite that changes no byte).
///
/// An error means the reply could not be read; it may still name members,
/// so the caller must not forward it.
pub fn rewrite_reply(
    frame: &[u8],
    kind: ReplyKind,
    map: &mut dyn AddressMap,
    limit: usize,
) -> Result<Option<Vec<u8>>, DecodeError> {
    Ok(rewrite_reply_with_facts(frame, kind, map, limit)?.frame)
}

/// [`rewrite_reply`], also returning a hello reply's facts from the same
/// decoding (and the same decompression).
pub fn rewrite_reply_with_facts(
    frame: &[u8],
    kind: ReplyKind,
    map: &mut dyn AddressMap,
    limit: usize,
) -> Result<ReplyRewrite, DecodeError> {
    let header = parse_header(frame)?;
    let limit = limit.min(MAX_MESSAGE_LEN);
    if header.op_code != OpCode::Compressed {
        return rewrite_message(frame, kind, map, limit);
    }
    let compressor = op_compressed::parse(frame, limit)?.compressor;
    let inner = op_compressed::decompress(frame, limit)?;
    let rewrite = rewrite_message(&inner, kind, map, limit)?;
    let frame = match rewrite.frame {
        Some(message) => Some(fits(recompress(&message, compressor)?, limit)?),
        None => None,
    };
    Ok(ReplyRewrite { frame, ..rewrite })
}

/// The facts of a hello reply frame (OP_MSG, OP_REPLY, or either inside
/// OP_COMPRESSED); `None` for another opcode or an empty OP_REPLY.
pub fn frame_hello_facts(frame: &[u8], limit: usize) -> Result<Option<HelloFacts>, DecodeError> {
    with_message(frame, limit, |_, _, message| match message {
        Message::Msg(msg) => Some(hello_facts(msg.body)),
        Message::Reply(reply) => reply.first().map(hello_facts),
        Message::Query(_) | Message::Unknown => None,
    })
}

/// Rewrites an uncompressed OP_MSG or OP_REPLY message.
fn rewrite_message(
    message: &[u8],
    kind: ReplyKind,
    map: &mut dyn AddressMap,
    limit: usize,
) -> Result<ReplyRewrite, DecodeError> {
    let header = parse_header(message)?;
    let facts_of = |doc: &RawDocument| (kind == ReplyKind::Hello).then(|| hello_facts(doc));
    match header.op_code {
        OpCode::Msg => {
            let msg = op_msg::parse(message)?;
            let facts = facts_of(msg.body);
            if !fields::names_members(msg.body, kind)? {
                return Ok(ReplyRewrite { frame: None, facts });
            }
            // The new body is written straight into the frame. The flags are
            // kept as they were (moreToCome, exhaustAllowed); with
            // checksumPresent, encoding computes a fresh CRC-32C.
            let original = msg.body.as_bytes();
            let mut body_start = 0;
            let frame = op_msg::encode_with(
                header.request_id,
                header.response_to,
                msg.flags,
                original.len() + 64,
                &msg.sequences,
                |out| {
                    body_start = out.len();
                    fields::write_body(msg.body, kind, map, out)
                },
            )?;
            // Same length prefix and same bytes: the body did not change
            // (every address already was the one to advertise).
            if frame
                .get(body_start..)
                .is_some_and(|b| b.starts_with(original))
            {
                return Ok(ReplyRewrite { frame: None, facts });
            }
            Ok(ReplyRewrite {
                frame: Some(fits(frame, limit)?),
                facts,
            })
        }
        OpCode::Reply => {
            let reply = op_reply::parse(message)?;
            // A command's answer is the first document; any others are
            // passed on untouched.
            let Some(first) = reply.iter().next().transpose()? else {
                return Ok(ReplyRewrite::default());
            };
            let facts = facts_of(first);
            let Some(mut documents) = fields::rewrite_body(first, kind, map)? else {
                return Ok(ReplyRewrite { frame: None, facts });
            };
            let rest = reply
                .documents
                .get(first.as_bytes().len()..)
                .unwrap_or_default();
            documents.extend_from_slice(rest);
            let frame = op_reply::encode(
                header.request_id,
                header.response_to,
                &OpReply {
                    documents: &documents,
                    ..reply
                },
            );
            Ok(ReplyRewrite {
                frame: Some(fits(frame, limit)?),
                facts,
            })
        }
        OpCode::Query | OpCode::Compressed | OpCode::Other(_) => Ok(ReplyRewrite::default()),
    }
}

/// A rewrite can only grow by the length of the addresses the map gives,
/// but the client would refuse a message past its limit: refuse it here.
fn fits(message: Vec<u8>, limit: usize) -> Result<Vec<u8>, DecodeError> {
    if message.len() > limit {
        return Err(DecodeError::LengthTooLarge {
            claimed: message.len() as i64,
            limit,
        });
    }
    Ok(message)
}

fn parse_header(frame: &[u8]) -> Result<Header, DecodeError> {
    Header::parse(frame).ok_or(DecodeError::LengthTooSmall {
        claimed: frame.len() as i32,
    })
}

/// Compresses the rewritten message with the compressor the server chose:
/// the client negotiated that one.
fn recompress(message: &[u8], compressor: Compressor) -> Result<Vec<u8>, DecodeError> {
    op_compressed::compress(message, compressor).map_err(|e| DecodeError::Compress {
        compressor: compressor.name(),
        reason: e.to_string(),
    })
}

/// `address` lower-cased, borrowed when it already is.
fn lower(address: &str) -> Cow<'_, str> {
    if address.chars().any(char::is_uppercase) {
        Cow::Owned(address.to_lowercase())
    } else {
        Cow::Borrowed(address)
    }
}

#[cfg(test)]
mod tests;
