//! The capture file format, version 1: pure encoding and decoding of the
//! header and records, so the writer, `replay` and `capture export` share
//! one definition.
//!
//! ```text
//! file   = header record*
//! header = magic "MTCAPTUR" (8 bytes) | version u16 LE (1) | reserved u16 (0)
//!        | start_unix_ns i64 LE          -- wall clock when the file was opened
//! record = length u32 LE                 -- bytes after this field
//!        | mono_ns u64 LE                -- monotonic ns since the capture started
//!        | unix_ns i64 LE                -- wall clock
//!        | conn u64 LE                   -- mongotap's connection id
//!        | direction u8                  -- 0: client→server, 1: server→client
//!        | flags u8                      -- bit 0: redacted
//!        | client_len u16 LE | client    -- client address, UTF-8
//!        | frame                         -- the whole wire message, header included
//! ```
//!
//! A redacted frame is replaced by a marker message with the same ids and
//! opcode whose body keeps only the command name (see the binary's capture
//! module).

use crate::DecodeError;

pub const MAGIC: &[u8; 8] = b"MTCAPTUR";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 8 + 2 + 2 + 8;
/// Fixed part of a record after its length field.
const FIXED: usize = 8 + 8 + 8 + 1 + 1 + 2;
pub const FLAG_REDACTED: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToServer,
    ToClient,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub mono_ns: u64,
    pub unix_ns: i64,
    pub conn: u64,
    pub direction: Direction,
    pub redacted: bool,
    pub client: &'a str,
    pub frame: &'a [u8],
}

pub fn encode_header(start_unix_ns: i64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&start_unix_ns.to_le_bytes());
    h
}

/// Checks the header; returns the start time.
pub fn decode_header(bytes: &[u8]) -> Result<i64, DecodeError> {
    let bad = |what: &'static str| DecodeError::Truncated {
        opcode: "capture file",
        what,
        needed: HEADER_LEN,
        left: bytes.len(),
    };
    if bytes.len() < HEADER_LEN {
        return Err(bad("header"));
    }
    if &bytes[..8] != MAGIC {
        return Err(DecodeError::InvalidBson {
            opcode: "capture file",
            what: "header",
            reason: "not a mongotap capture file (bad magic)".into(),
        });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(DecodeError::InvalidBson {
            opcode: "capture file",
            what: "header",
            reason: format!(
                "capture format version {version} is not supported (this build reads {VERSION})"
            ),
        });
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&bytes[12..20]);
    Ok(i64::from_le_bytes(t))
}

/// Appends one record to `out`.
pub fn encode_record(out: &mut Vec<u8>, r: &Record<'_>) {
    let client = &r.client.as_bytes()[..r.client.len().min(u16::MAX as usize)];
    let len = FIXED + client.len() + r.frame.len();
    out.reserve(4 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&r.mono_ns.to_le_bytes());
    out.extend_from_slice(&r.unix_ns.to_le_bytes());
    out.extend_from_slice(&r.conn.to_le_bytes());
    out.push(match r.direction {
        Direction::ToServer => 0,
        Direction::ToClient => 1,
    });
    out.push(if r.redacted { FLAG_REDACTED } else { 0 });
    out.extend_from_slice(&(client.len() as u16).to_le_bytes());
    out.extend_from_slice(client);
    out.extend_from_slice(r.frame);
}

/// Decodes the record at the front of `bytes`: `Ok(None)` when incomplete,
/// else the record and the bytes it used.
pub fn decode_record(bytes: &[u8]) -> Result<Option<(Record<'_>, usize)>, DecodeError> {
    let Some(len) = bytes.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len < FIXED || len > crate::MAX_MESSAGE_LEN + FIXED + u16::MAX as usize {
        return Err(DecodeError::InvalidBson {
            opcode: "capture file",
            what: "record",
            reason: format!("record length {len} is invalid"),
        });
    }
    let Some(body) = bytes.get(4..4 + len) else {
        return Ok(None);
    };
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let direction = match body[24] {
        0 => Direction::ToServer,
        1 => Direction::ToClient,
        d => {
            return Err(DecodeError::InvalidBson {
                opcode: "capture file",
                what: "record",
                reason: format!("direction {d} is invalid"),
            })
        }
    };
    let client_len = u16::from_le_bytes([body[26], body[27]]) as usize;
    if FIXED + client_len > len {
        return Err(DecodeError::InvalidBson {
            opcode: "capture file",
            what: "record",
            reason: "client address runs past the record".into(),
        });
    }
    let client = std::str::from_utf8(&body[FIXED..FIXED + client_len]).map_err(|_| {
        DecodeError::BadCString {
            opcode: "capture file",
            what: "client address",
        }
    })?;
    Ok(Some((
        Record {
            mono_ns: u64_at(0),
            unix_ns: u64_at(8) as i64,
            conn: u64_at(16),
            direction,
            redacted: body[25] & FLAG_REDACTED != 0,
            client,
            frame: &body[FIXED + client_len..],
        },
        4 + len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut out = encode_header(42).to_vec();
        let frame = [16u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xdd, 7, 0, 0];
        let r = Record {
            mono_ns: 5,
            unix_ns: 6,
            conn: 7,
            direction: Direction::ToClient,
            redacted: true,
            client: "127.0.0.1:5000",
            frame: &frame,
        };
        encode_record(&mut out, &r);
        assert_eq!(decode_header(&out).unwrap(), 42);
        let (back, used) = decode_record(&out[HEADER_LEN..]).unwrap().unwrap();
        assert_eq!(back, r);
        assert_eq!(used, out.len() - HEADER_LEN);
        assert_eq!(
            decode_record(&out[HEADER_LEN..out.len() - 1]).unwrap(),
            None
        );
    }
}
