//! The 16-byte message header shared by every opcode.

use crate::read::Reader;

/// Size of the standard message header.
pub const HEADER_LEN: usize = 16;

/// Opcodes mongotap understands; anything else is carried as `Other` and
/// forwarded untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    Reply,
    Query,
    Compressed,
    Msg,
    Other(i32),
}

impl OpCode {
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => OpCode::Reply,
            2004 => OpCode::Query,
            2012 => OpCode::Compressed,
            2013 => OpCode::Msg,
            other => OpCode::Other(other),
        }
    }

    pub fn as_i32(self) -> i32 {
        match self {
            OpCode::Reply => 1,
            OpCode::Query => 2004,
            OpCode::Compressed => 2012,
            OpCode::Msg => 2013,
            OpCode::Other(v) => v,
        }
    }

    /// The spec's name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            OpCode::Reply => "OP_REPLY",
            OpCode::Query => "OP_QUERY",
            OpCode::Compressed => "OP_COMPRESSED",
            OpCode::Msg => "OP_MSG",
            OpCode::Other(_) => "unknown opcode",
        }
    }
}

/// A decoded message header. `message_length` includes the header itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub message_length: i32,
    pub request_id: i32,
    pub response_to: i32,
    pub op_code: OpCode,
}

impl Header {
    /// Reads a header from the first 16 bytes. Returns `None` when fewer are
    /// given; does not validate the length (see [`crate::frame::decode`]).
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let mut r = Reader::new(bytes, "header");
        Some(Header {
            message_length: r.i32("messageLength").ok()?,
            request_id: r.i32("requestID").ok()?,
            response_to: r.i32("responseTo").ok()?,
            op_code: OpCode::from_i32(r.i32("opCode").ok()?),
        })
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.message_length.to_le_bytes());
        out.extend_from_slice(&self.request_id.to_le_bytes());
        out.extend_from_slice(&self.response_to.to_le_bytes());
        out.extend_from_slice(&self.op_code.as_i32().to_le_bytes());
    }
}

/// Writes a header with the given ids into the first 16 bytes of `out`,
/// setting messageLength to `out.len()`. `out` must start with 16 bytes
/// reserved for it.
pub(crate) fn finish(out: &mut [u8], request_id: i32, response_to: i32, op_code: OpCode) {
    let len = out.len() as i32;
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&request_id.to_le_bytes());
    out[8..12].copy_from_slice(&response_to.to_le_bytes());
    out[12..16].copy_from_slice(&op_code.as_i32().to_le_bytes());
}
