//! A bounds-checked little-endian cursor. Every read checks what is left
//! first, so a lying length can never index past the end or allocate.

use crate::DecodeError;
use bson::RawDocument;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    opcode: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], opcode: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            opcode,
        }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated {
                opcode: self.opcode,
                what,
                needed: n,
                left: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.bytes(1, what)?[0])
    }

    pub fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        let b = self.bytes(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(self.i32(what)? as u32)
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }

    pub fn cstring(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::BadCString {
                opcode: self.opcode,
                what,
            })?;
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::BadCString {
            opcode: self.opcode,
            what,
        })?;
        self.pos += nul + 1;
        Ok(s)
    }

    /// One BSON document whose int32 length prefix must fit in what is left.
    pub fn document(&mut self, what: &'static str) -> Result<&'a RawDocument, DecodeError> {
        let start = self.pos;
        let len = self.i32(what)?;
        self.pos = start;
        if len < 5 {
            return Err(self.bson_err(what, format!("document length {len} is below 5")));
        }
        let bytes = self.bytes(len as usize, what)?;
        RawDocument::from_bytes(bytes).map_err(|e| self.bson_err(what, e.to_string()))
    }

    fn bson_err(&self, what: &'static str, reason: String) -> DecodeError {
        DecodeError::InvalidBson {
            opcode: self.opcode,
            what,
            reason,
        }
    }
}

/// Splits concatenated BSON documents, checking each length prefix.
pub(crate) fn documents<'a>(
    bytes: &'a [u8],
    opcode: &'static str,
    what: &'static str,
) -> impl Iterator<Item = Result<&'a RawDocument, DecodeError>> + 'a {
    let mut r = Reader::new(bytes, opcode);
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || r.remaining() == 0 {
            return None;
        }
        let d = r.document(what);
        failed = d.is_err();
        Some(d)
    })
}
