//! Turning one frame's bytes into a parsed message, decompressing
//! OP_COMPRESSED first so callers see the original opcode's contents.

use crate::op_compressed::{self, Compressor};
use crate::op_msg::{self, OpMsg};
use crate::op_query::{self, OpQuery};
use crate::op_reply::{self, OpReply};
use crate::{DecodeError, Header, OpCode};

/// A parsed message, borrowing from the frame (or its decompressed copy).
pub enum Message<'a> {
    Msg(OpMsg<'a>),
    Query(OpQuery<'a>),
    Reply(OpReply<'a>),
    /// An opcode mongotap does not parse; forwarded as-is.
    Unknown,
}

/// Parses `frame` and hands the result to `f`. `compressed` tells `f` which
/// compressor the frame used, if any.
pub fn with_message<T>(
    frame: &[u8],
    limit: usize,
    f: impl FnOnce(&Header, Option<Compressor>, Message<'_>) -> T,
) -> Result<T, DecodeError> {
    let header = Header::parse(frame).ok_or(DecodeError::LengthTooSmall {
        claimed: frame.len() as i32,
    })?;
    if header.op_code == OpCode::Compressed {
        let compressor = op_compressed::parse(frame, limit)?.compressor;
        let inner = op_compressed::decompress(frame, limit)?;
        let inner_header = Header::parse(&inner).unwrap_or(header);
        let message = parse(&inner, inner_header.op_code)?;
        return Ok(f(&inner_header, Some(compressor), message));
    }
    let message = parse(frame, header.op_code)?;
    Ok(f(&header, None, message))
}

fn parse(message: &[u8], op_code: OpCode) -> Result<Message<'_>, DecodeError> {
    Ok(match op_code {
        OpCode::Msg => Message::Msg(op_msg::parse(message)?),
        OpCode::Query => Message::Query(op_query::parse(message)?),
        OpCode::Reply => Message::Reply(op_reply::parse(message)?),
        OpCode::Compressed => {
            return Err(DecodeError::NestedCompression {
                opcode: op_code.as_i32(),
            })
        }
        OpCode::Other(_) => Message::Unknown,
    })
}
