//! OP_REPLY (opcode 1): the server's answer to an OP_QUERY.

use crate::header::{finish, OpCode};
use crate::read::{documents, Reader};
use crate::{DecodeError, HEADER_LEN};
use bson::RawDocument;

const NAME: &str = "OP_REPLY";

pub const CURSOR_NOT_FOUND: i32 = 1 << 0;
pub const QUERY_FAILURE: i32 = 1 << 1;

#[derive(Debug, Clone, PartialEq)]
pub struct OpReply<'a> {
    pub response_flags: i32,
    pub cursor_id: i64,
    pub starting_from: i32,
    pub number_returned: i32,
    /// The concatenated documents, already length-checked.
    pub documents: &'a [u8],
}

impl<'a> OpReply<'a> {
    pub fn iter(&self) -> impl Iterator<Item = Result<&'a RawDocument, DecodeError>> + 'a {
        documents(self.documents, NAME, "documents")
    }

    /// The first document: for a command reply, the whole reply.
    pub fn first(&self) -> Option<&'a RawDocument> {
        self.iter().next().and_then(Result::ok)
    }
}

/// Parses a whole OP_REPLY message, header included.
pub fn parse(message: &[u8]) -> Result<OpReply<'_>, DecodeError> {
    let mut r = Reader::new(message, NAME);
    r.bytes(HEADER_LEN, "header")?;
    let response_flags = r.i32("responseFlags")?;
    let cursor_id = r.i64("cursorID")?;
    let starting_from = r.i32("startingFrom")?;
    let number_returned = r.i32("numberReturned")?;
    let docs = r.rest();
    let mut count = 0i64;
    for d in documents(docs, NAME, "documents") {
        d?;
        count += 1;
    }
    if count != i64::from(number_returned) {
        return Err(DecodeError::InvalidBson {
            opcode: NAME,
            what: "documents",
            reason: format!("numberReturned is {number_returned} but {count} documents follow"),
        });
    }
    Ok(OpReply {
        response_flags,
        cursor_id,
        starting_from,
        number_returned,
        documents: docs,
    })
}

pub fn encode(request_id: i32, response_to: i32, reply: &OpReply<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 20 + reply.documents.len());
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(&reply.response_flags.to_le_bytes());
    out.extend_from_slice(&reply.cursor_id.to_le_bytes());
    out.extend_from_slice(&reply.starting_from.to_le_bytes());
    out.extend_from_slice(&reply.number_returned.to_le_bytes());
    out.extend_from_slice(reply.documents);
    finish(&mut out, request_id, response_to, OpCode::Reply);
    out
}
