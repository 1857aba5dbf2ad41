//! Copying a BSON document element by element into a new buffer: every
//! element the caller leaves alone is copied as raw bytes, the others are
//! replaced or dropped. Arrays are re-numbered as they are written, so a
//! dropped member leaves no gap in the keys.

use crate::DecodeError;
use bson::raw::{RawDocument, RawElement};
use bson::spec::ElementType;
use std::io::Write;

pub(super) fn bson_err(reason: impl ToString) -> DecodeError {
    DecodeError::InvalidBson {
        opcode: "reply",
        what: "body",
        reason: reason.to_string(),
    }
}

/// One element of a document, with its value's bytes as they stand.
pub(super) struct Element<'a> {
    pub raw: RawElement<'a>,
    pub value: &'a [u8],
}

impl<'a> Element<'a> {
    pub fn key(&self) -> &'a str {
        self.raw.key().as_str()
    }
}

/// The elements of `doc` with their raw value bytes, each checked to lie
/// inside the document.
pub(super) fn elements(
    doc: &RawDocument,
) -> impl Iterator<Item = Result<Element<'_>, DecodeError>> + '_ {
    let bytes = doc.as_bytes();
    let mut offset = 4usize;
    let mut iter = doc.iter_elements();
    std::iter::from_fn(move || {
        let raw = match iter.next()? {
            Ok(raw) => raw,
            Err(e) => return Some(Err(bson_err(e))),
        };
        let start = offset + 1 + raw.key().as_str().len() + 1;
        let end = start + raw.size();
        offset = end;
        // The last byte is the document's terminator, never a value's.
        let value = bytes
            .get(start..end)
            .filter(|_| end < bytes.len())
            .ok_or_else(|| bson_err("element runs past the end of the document"));
        Some(value.map(|value| Element { raw, value }))
    })
}

/// Whether `doc` has any of `keys` at its top level. Walks keys only, so a
/// reply with nothing to rewrite costs no allocation.
pub(super) fn has_any_key(doc: &RawDocument, keys: &[&str]) -> Result<bool, DecodeError> {
    for element in doc.iter_elements() {
        if keys.contains(&element.map_err(bson_err)?.key().as_str()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A document (or array) being written at the end of `out`: its length
/// prefix is filled in by `end`.
pub(super) struct DocWriter {
    start: usize,
    /// The next array index; unused for a document.
    next_index: usize,
}

impl DocWriter {
    pub fn begin(out: &mut Vec<u8>) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        DocWriter {
            start,
            next_index: 0,
        }
    }

    pub fn end(self, out: &mut Vec<u8>) {
        out.push(0);
        let len = (out.len() - self.start) as i32;
        if let Some(prefix) = out.get_mut(self.start..self.start + 4) {
            prefix.copy_from_slice(&len.to_le_bytes());
        }
    }

    /// Writes an element's type and key; its value must follow.
    pub fn key(&mut self, out: &mut Vec<u8>, kind: ElementType, key: &str) {
        out.push(kind as u8);
        out.extend_from_slice(key.as_bytes());
        out.push(0);
    }

    /// Writes an element's type and the next array index as its key.
    pub fn index(&mut self, out: &mut Vec<u8>, kind: ElementType) {
        out.push(kind as u8);
        // Writing a number into a Vec cannot fail.
        let _ = write!(out, "{}", self.next_index);
        out.push(0);
        self.next_index += 1;
    }

    /// Copies `element` unchanged.
    pub fn copy(&mut self, out: &mut Vec<u8>, element: &Element<'_>) {
        self.key(out, element.raw.element_type(), element.key());
        out.extend_from_slice(element.value);
    }

    pub fn string(&mut self, out: &mut Vec<u8>, key: &str, value: &str) {
        self.key(out, ElementType::String, key);
        string_value(out, value);
    }

    pub fn push_string(&mut self, out: &mut Vec<u8>, value: &str) {
        self.index(out, ElementType::String);
        string_value(out, value);
    }
}

/// A BSON string's bytes: length (terminator included), UTF-8, NUL.
fn string_value(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(&((value.len() + 1) as i32).to_le_bytes());
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}
