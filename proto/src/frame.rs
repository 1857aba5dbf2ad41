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
    if buf.len() < 4 {
        return Ok(None);
    }
    let claimed = i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let len = check_length(claimed, limit)?;
    if buf.len() < len {
        // Safe to reserve: `len` is bounded by the limit checked above.
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    let bytes = buf.split_to(len).freeze();
    let header = Header::parse(&bytes).expect("length >= 16 was checked");
    Ok(Some(Frame { header, bytes }))
}
