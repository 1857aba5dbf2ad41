//! OP_QUERY (opcode 2004): only the legacy handshake and legacy commands use
//! it now (`isMaster` to `admin.$cmd`, sometimes auth).

use crate::header::{finish, OpCode};
use crate::read::Reader;
use crate::{DecodeError, HEADER_LEN};
use bson::RawDocument;

const NAME: &str = "OP_QUERY";

#[derive(Debug, Clone, PartialEq)]
pub struct OpQuery<'a> {
    pub flags: i32,
    pub full_collection_name: &'a str,
    pub number_to_skip: i32,
    pub number_to_return: i32,
    pub query: &'a RawDocument,
    pub return_fields_selector: Option<&'a RawDocument>,
}

impl<'a> OpQuery<'a> {
    /// The database part of `full_collection_name`.
    pub fn db(&self) -> &'a str {
        self.full_collection_name
            .split_once('.')
            .map_or(self.full_collection_name, |(db, _)| db)
    }

    /// True for a command (`db.$cmd`) rather than a legacy find.
    pub fn is_command(&self) -> bool {
        self.full_collection_name.ends_with(".$cmd")
    }

    /// The command document. Old drivers wrap it as `{$query: {...}, $readPreference: ...}`.
    pub fn command(&self) -> &'a RawDocument {
        match self.query.get_document("$query") {
            Ok(inner) => inner,
            Err(_) => self.query,
        }
    }
}

/// Parses a whole OP_QUERY message, header included.
pub fn parse(message: &[u8]) -> Result<OpQuery<'_>, DecodeError> {
    let mut r = Reader::new(message, NAME);
    r.bytes(HEADER_LEN, "header")?;
    let flags = r.i32("flags")?;
    let full_collection_name = r.cstring("fullCollectionName")?;
    let number_to_skip = r.i32("numberToSkip")?;
    let number_to_return = r.i32("numberToReturn")?;
    let query = r.document("query")?;
    let return_fields_selector = if r.remaining() > 0 {
        Some(r.document("returnFieldsSelector")?)
    } else {
        None
    };
    if r.remaining() > 0 {
        return Err(DecodeError::TrailingBytes {
            opcode: NAME,
            extra: r.remaining(),
        });
    }
    Ok(OpQuery {
        flags,
        full_collection_name,
        number_to_skip,
        number_to_return,
        query,
        return_fields_selector,
    })
}

pub fn encode(request_id: i32, response_to: i32, q: &OpQuery<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 64 + q.query.as_bytes().len());
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(&q.flags.to_le_bytes());
    out.extend_from_slice(q.full_collection_name.as_bytes());
    out.push(0);
    out.extend_from_slice(&q.number_to_skip.to_le_bytes());
    out.extend_from_slice(&q.number_to_return.to_le_bytes());
    out.extend_from_slice(q.query.as_bytes());
    if let Some(sel) = q.return_fields_selector {
        out.extend_from_slice(sel.as_bytes());
    }
    finish(&mut out, request_id, response_to, OpCode::Query);
    out
}
