//! OP_MSG (opcode 2013): flag bits, one kind-0 body, any number of kind-1
//! document sequences in any order, and an optional CRC-32C. Also the
//! proposed kind-3 section (a trace context), read rather than rejected.

use crate::header::{finish, OpCode};
use crate::read::{documents, Reader};
use crate::{DecodeError, HEADER_LEN};
use bson::RawDocument;

pub const CHECKSUM_PRESENT: u32 = 1 << 0;
pub const MORE_TO_COME: u32 = 1 << 1;
pub const EXHAUST_ALLOWED: u32 = 1 << 16;
/// Bits 0-15 are "required": a receiver must reject a message that sets one
/// it does not know.
const REQUIRED_MASK: u32 = 0xFFFF;
const KNOWN_FLAGS: u32 = CHECKSUM_PRESENT | MORE_TO_COME | EXHAUST_ALLOWED;

const NAME: &str = "OP_MSG";

/// A kind-1 section: an identifier (`documents`, `updates`, `ops`, ...) and
/// the concatenated documents, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DocSequence<'a> {
    pub identifier: &'a str,
    pub documents: &'a [u8],
}

impl<'a> DocSequence<'a> {
    /// The documents, each length-checked. Parsing already validated the
    /// framing, so this yields no errors for a parsed message.
    pub fn iter(&self) -> impl Iterator<Item = Result<&'a RawDocument, DecodeError>> + 'a {
        documents(self.documents, NAME, "document sequence")
    }
}

/// A borrowed view of an OP_MSG.
#[derive(Debug, Clone, PartialEq)]
pub struct OpMsg<'a> {
    pub flags: u32,
    pub body: &'a RawDocument,
    pub sequences: Vec<DocSequence<'a>>,
    /// A kind-3 section, `{otel: {traceparent: ...}}`: the command's trace
    /// context, as proposed for drivers. Not in the OP_MSG spec yet, which
    /// says a section kind the receiver does not know must close the
    /// connection; it is read here (the last one wins) so that such a
    /// frame is forwarded as sent and its trace joined, not rejected.
    /// Encoding does not write it back: a frame that has one is never
    /// re-encoded (the rewriter forwards it unchanged).
    pub trace_context: Option<&'a RawDocument>,
    pub checksum: Option<u32>,
}

impl OpMsg<'_> {
    pub fn more_to_come(&self) -> bool {
        self.flags & MORE_TO_COME != 0
    }
    pub fn exhaust_allowed(&self) -> bool {
        self.flags & EXHAUST_ALLOWED != 0
    }
    /// Optional bits (16-31) that no spec defines.
    pub fn unknown_optional_flags(&self) -> u32 {
        self.flags & !REQUIRED_MASK & !KNOWN_FLAGS
    }
}

/// Reads just the flag bits of a whole OP_MSG message, without parsing.
pub fn flags(message: &[u8]) -> Option<u32> {
    let b = message.get(HEADER_LEN..HEADER_LEN + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Parses a whole OP_MSG message, header included, and verifies its
/// checksum when the flag says one is present.
pub fn parse(message: &[u8]) -> Result<OpMsg<'_>, DecodeError> {
    let mut r = Reader::new(message, NAME);
    r.bytes(HEADER_LEN, "header")?;
    let flags = r.u32("flagBits")?;
    let unknown_required = flags & REQUIRED_MASK & !KNOWN_FLAGS;
    if unknown_required != 0 {
        return Err(DecodeError::UnknownRequiredFlags {
            bits: unknown_required,
        });
    }
    let sections_end = if flags & CHECKSUM_PRESENT != 0 {
        if r.remaining() < 4 {
            return Err(DecodeError::Truncated {
                opcode: NAME,
                what: "checksum",
                needed: 4,
                left: r.remaining(),
            });
        }
        message.len() - 4
    } else {
        message.len()
    };
    let checksum = if flags & CHECKSUM_PRESENT != 0 {
        let claimed = u32::from_le_bytes([
            message[sections_end],
            message[sections_end + 1],
            message[sections_end + 2],
            message[sections_end + 3],
        ]);
        let computed = crc32c::crc32c(&message[..sections_end]);
        if claimed != computed {
            return Err(DecodeError::ChecksumMismatch { claimed, computed });
        }
        Some(claimed)
    } else {
        None
    };

    let mut sections = Reader::new(&message[r.position()..sections_end], NAME);
    let mut body = None;
    let mut body_count = 0;
    let mut sequences = Vec::new();
    let mut trace_context = None;
    while sections.remaining() > 0 {
        match sections.u8("section kind")? {
            0 => {
                body_count += 1;
                body = Some(sections.document("body")?);
            }
            1 => {
                let left = sections.remaining();
                let size = sections.i32("sequence size")?;
                if size < 5 || size as usize > left {
                    return Err(DecodeError::SequenceSize { size, left });
                }
                let mut seq = Reader::new(sections.bytes(size as usize - 4, "sequence")?, NAME);
                let identifier = seq.cstring("sequence identifier")?;
                let docs = seq.rest();
                for d in documents(docs, NAME, "document sequence") {
                    d?;
                }
                sequences.push(DocSequence {
                    identifier,
                    documents: docs,
                });
            }
            3 => trace_context = Some(sections.document("trace context")?),
            kind => return Err(DecodeError::UnknownSectionKind { kind }),
        }
    }
    match (body, body_count) {
        (Some(body), 1) => Ok(OpMsg {
            flags,
            body,
            sequences,
            trace_context,
            checksum,
        }),
        (_, count) => Err(DecodeError::BodyCount { count }),
    }
}

/// Encodes an OP_MSG: the body first, then the sequences, then a fresh
/// CRC-32C when `flags` has `CHECKSUM_PRESENT`.
pub fn encode(
    request_id: i32,
    response_to: i32,
    flags: u32,
    body: &RawDocument,
    sequences: &[DocSequence<'_>],
) -> Vec<u8> {
    let body = body.as_bytes();
    let written: Result<_, std::convert::Infallible> = encode_with(
        request_id,
        response_to,
        flags,
        body.len(),
        sequences,
        |out| {
            out.extend_from_slice(body);
            Ok(())
        },
    );
    match written {
        Ok(frame) => frame,
        Err(never) => match never {},
    }
}

/// Like `encode`, but the body is written by `write_body` straight into
/// the frame's buffer (a rewrite splices there, with no body of its own).
/// `body_len` sizes the buffer; it need not be exact.
pub fn encode_with<E>(
    request_id: i32,
    response_to: i32,
    flags: u32,
    body_len: usize,
    sequences: &[DocSequence<'_>],
    write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    let seq_len: usize = sequences
        .iter()
        .map(|s| 1 + 4 + s.identifier.len() + 1 + s.documents.len())
        .sum();
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + 1 + body_len + seq_len + 4);
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(0);
    write_body(&mut out)?;
    for s in sequences {
        out.push(1);
        let size = (4 + s.identifier.len() + 1 + s.documents.len()) as i32;
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(s.identifier.as_bytes());
        out.push(0);
        out.extend_from_slice(s.documents);
    }
    if flags & CHECKSUM_PRESENT != 0 {
        out.extend_from_slice(&[0; 4]);
        finish(&mut out, request_id, response_to, OpCode::Msg);
        let end = out.len() - 4;
        let crc = crc32c::crc32c(&out[..end]);
        out[end..].copy_from_slice(&crc.to_le_bytes());
    } else {
        finish(&mut out, request_id, response_to, OpCode::Msg);
    }
    Ok(out)
}
