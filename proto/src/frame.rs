//! Cutting whole frames out of a byte stream without copying.

use crate::{DecodeError, Header, HEADER_LEN, MAX_MESSAGE_LEN};
use bytes::{Bytes, BytesMut};

/// Room a read buffer is given for the next read: most commands and
/// replies are small.
pub const READ_CHUNK: usize = 16 * 1024;
/// The most a read buffer grows by at once towards a large frame.
pub const MAX_GROWTH: usize = 256 * 1024;

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
        reserve_next(buf, limit);
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

/// Makes room in `buf` for the next read: towards the rest of the frame at
/// its front (whose length must already be validated), or a
/// [`READ_CHUNK`] when no length is known yet.
///
/// A large frame is grown towards as its bytes arrive, at most
/// [`MAX_GROWTH`] at a time, never by the whole claimed length at once: a
/// peer that sends a header claiming 48 MB and then trickles must not make
/// every connection hold 48 MB.
pub fn reserve_next(buf: &mut BytesMut, limit: usize) {
    let want = match claimed_len(buf, limit) {
        Ok(Some(len)) => len.saturating_sub(buf.len()).clamp(1024, MAX_GROWTH),
        _ => READ_CHUNK,
    };
    if buf.capacity() - buf.len() < want {
        // Small frames: room for a few at once, so a run of them does not
        // reallocate per read.
        buf.reserve(want.max(READ_CHUNK.min(want * 2)));
    }
}

/// Splits every whole frame at the front of `buf` off as one `Bytes`,
/// without copying, so a forwarder writes them with one call.
///
/// `Ok(None)` means no whole frame is there yet. An invalid length is an
/// error only for the first frame: the whole frames before a bad one come
/// out first, and the next call reports it (the bad bytes stay in `buf`).
pub fn split_batch(buf: &mut BytesMut, limit: usize) -> Result<Option<Bytes>, DecodeError> {
    let mut ready = 0;
    loop {
        match complete_len(&buf[ready..], limit) {
            Ok(Some(len)) => ready += len,
            Ok(None) => break,
            Err(e) if ready == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok((ready > 0).then(|| buf.split_to(ready).freeze()))
}

/// The frames of a batch from [`split_batch`], in order.
pub fn frames(batch: &[u8]) -> Frames<'_> {
    Frames { batch, at: 0 }
}

/// Iterator over the frames of a batch: `(offset in the batch, frame)`.
///
/// It stops at the first length that is invalid or runs past the end,
/// which a batch from [`split_batch`] never has.
pub struct Frames<'a> {
    batch: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Frames<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.batch.get(self.at..)?;
        let len = complete_len(rest, MAX_MESSAGE_LEN).ok().flatten()?;
        let at = self.at;
        self.at += len;
        Some((at, &rest[..len]))
    }
}
