//! Cutting whole frames out of a byte stream without copying.

use crate::{DecodeError, Header, HEADER_LEN, MAX_MESSAGE_LEN};
use bytes::{Bytes, BytesMut};

/// One whole message as it arrived: the header, and every byte of the
/// message including the header, shared (not copied) from the read buffer.
#[derive(Debug, Clone)]
pub struct Frame {
    pub header: Header,
    pub bytes: Bytes,
}

impl Frame {
    /// The bytes after the 16-byte header.
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }
}

/// Checks a claimed messageLength against the header size and `limit`.
pub fn check_length(claimed: i32, limit: usize) -> Result<usize, DecodeError> {
    if claimed < HEADER_LEN as i32 {
        return Err(DecodeError::LengthTooSmall { claimed });
    }
    let len = claimed as usize;
    if len > limit.min(MAX_MESSAGE_LEN) {
        return Err(DecodeError::LengthTooLarge {
            claimed: claimed.into(),
            limit: limit.min(MAX_MESSAGE_LEN),
        });
    }
    Ok(len)
}

/// Takes one frame off the front of `buf`.
///
/// `Ok(None)` means more bytes are needed; in that case `buf` has been
/// reserved up to the frame's (already validated) length so the next read
/// can complete it. `limit` is the configured maximum frame size; it is
/// never allowed above [`MAX_MESSAGE_LEN`].
pub fn decode(buf: &mut BytesMut, limit: usize) -> Result<Option<Frame>, DecodeError> {
    let Some(len) = claimed_len(buf, limit)? else {
        return Ok(None);
    };
    if buf.len() < len {
        // Grow towards the frame as it arrives rather than reserving the
        // whole claimed length for a peer that may never send it.
        buf.reserve((len - buf.len()).min(256 * 1024));
        return Ok(None);
    }
    let bytes = buf.split_to(len).freeze();
    match Header::parse(&bytes) {
        Some(header) => Ok(Some(Frame { header, bytes })),
        None => Err(DecodeError::LengthTooSmall {
            claimed: len as i32,
        }),
    }
}

/// The validated messageLength of the frame at the front of `buf`, once its
/// first four bytes have arrived (the frame itself may still be partial).
pub fn claimed_len(buf: &[u8], limit: usize) -> Result<Option<usize>, DecodeError> {
    match buf.get(..4) {
        Some(b) => check_length(i32::from_le_bytes([b[0], b[1], b[2], b[3]]), limit).map(Some),
        None => Ok(None),
    }
}

/// The length of the frame at the front of `buf` if all of it is there.
pub fn complete_len(buf: &[u8], limit: usize) -> Result<Option<usize>, DecodeError> {
    Ok(claimed_len(buf, limit)?.filter(|&len| buf.len() >= len))
}
