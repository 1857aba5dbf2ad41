//! OP_COMPRESSED (opcode 2012): another opcode's body, compressed with
//! snappy, zlib or zstd. Decompression is bounded by the claimed size, which
//! is checked against the frame limit before any buffer is allocated.

use crate::header::{finish, OpCode};
use crate::read::Reader;
use crate::{DecodeError, HEADER_LEN, MAX_MESSAGE_LEN};
use std::io::Read;

const NAME: &str = "OP_COMPRESSED";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compressor {
    Noop,
    Snappy,
    Zlib,
    Zstd,
}

impl Compressor {
    pub fn from_id(id: u8) -> Result<Self, DecodeError> {
        Ok(match id {
            0 => Compressor::Noop,
            1 => Compressor::Snappy,
            2 => Compressor::Zlib,
            3 => Compressor::Zstd,
            id => return Err(DecodeError::UnknownCompressor { id }),
        })
    }
    pub fn id(self) -> u8 {
        match self {
            Compressor::Noop => 0,
            Compressor::Snappy => 1,
            Compressor::Zlib => 2,
            Compressor::Zstd => 3,
        }
    }
    /// The name drivers put in hello's `compression` list.
    pub fn name(self) -> &'static str {
        match self {
            Compressor::Noop => "noop",
            Compressor::Snappy => "snappy",
            Compressor::Zlib => "zlib",
            Compressor::Zstd => "zstd",
        }
    }
}

/// The OP_COMPRESSED fields, with the compressed bytes borrowed.
#[derive(Debug, Clone, PartialEq)]
pub struct OpCompressed<'a> {
    pub original_opcode: OpCode,
    pub uncompressed_size: usize,
    pub compressor: Compressor,
    pub compressed: &'a [u8],
}

/// Parses a whole OP_COMPRESSED message (header included) without
/// decompressing. `limit` bounds the claimed uncompressed size.
pub fn parse(message: &[u8], limit: usize) -> Result<OpCompressed<'_>, DecodeError> {
    let mut r = Reader::new(message, NAME);
    r.bytes(HEADER_LEN, "header")?;
    let original = r.i32("originalOpcode")?;
    let size = r.i32("uncompressedSize")?;
    let compressor = Compressor::from_id(r.u8("compressorId")?)?;
    let original_opcode = OpCode::from_i32(original);
    if original_opcode == OpCode::Compressed {
        return Err(DecodeError::NestedCompression { opcode: original });
    }
    let limit = limit.min(MAX_MESSAGE_LEN).saturating_sub(HEADER_LEN);
    if size < 0 || size as usize > limit {
        return Err(DecodeError::UncompressedSize {
            claimed: size,
            limit,
        });
    }
    Ok(OpCompressed {
        original_opcode,
        uncompressed_size: size as usize,
        compressor,
        compressed: r.rest(),
    })
}

/// Decompresses and rebuilds the original message: a header with the same
/// ids and the original opcode, then the uncompressed body.
pub fn decompress(message: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let c = parse(message, limit)?;
    let mut out = Vec::with_capacity(HEADER_LEN + c.uncompressed_size);
    out.resize(HEADER_LEN, 0);
    let err = |reason: String| DecodeError::Decompress {
        compressor: c.compressor.name(),
        reason,
    };
    match c.compressor {
        Compressor::Noop => out.extend_from_slice(c.compressed),
        Compressor::Snappy => {
            let n = snap::raw::decompress_len(c.compressed).map_err(|e| err(e.to_string()))?;
            if n != c.uncompressed_size {
                return Err(DecodeError::UncompressedMismatch {
                    compressor: "snappy",
                    claimed: c.uncompressed_size,
                    actual: n,
                });
            }
            out.resize(HEADER_LEN + n, 0);
            snap::raw::Decoder::new()
                .decompress(c.compressed, &mut out[HEADER_LEN..])
                .map_err(|e| err(e.to_string()))?;
        }
        Compressor::Zlib => {
            // Read one byte past the claim so an overlong stream is caught
            // without decompressing all of it.
            flate2::read::ZlibDecoder::new(c.compressed)
                .take(c.uncompressed_size as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| err(e.to_string()))?;
        }
        Compressor::Zstd => {
            let mut dec = zstd::stream::read::Decoder::with_buffer(c.compressed)
                .map_err(|e| err(e.to_string()))?;
            (&mut dec)
                .take(c.uncompressed_size as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| err(e.to_string()))?;
        }
    }
    let actual = out.len() - HEADER_LEN;
    if actual != c.uncompressed_size {
        return Err(DecodeError::UncompressedMismatch {
            compressor: c.compressor.name(),
            claimed: c.uncompressed_size,
            actual,
        });
    }
    let request_id = i32::from_le_bytes([message[4], message[5], message[6], message[7]]);
    let response_to = i32::from_le_bytes([message[8], message[9], message[10], message[11]]);
    finish(&mut out, request_id, response_to, c.original_opcode);
    Ok(out)
}

/// Compresses a whole message (header included) into OP_COMPRESSED,
/// keeping its ids.
pub fn compress(message: &[u8], compressor: Compressor) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let header = crate::Header::parse(message).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "message shorter than a header",
        )
    })?;
    let body = &message[HEADER_LEN..];
    let compressed = match compressor {
        Compressor::Noop => body.to_vec(),
        Compressor::Snappy => snap::raw::Encoder::new()
            .compress_vec(body)
            .map_err(std::io::Error::other)?,
        Compressor::Zlib => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(body)?;
            e.finish()?
        }
        Compressor::Zstd => zstd::bulk::compress(body, 0)?,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + 9 + compressed.len());
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(&header.op_code.as_i32().to_le_bytes());
    out.extend_from_slice(&(body.len() as i32).to_le_bytes());
    out.push(compressor.id());
    out.extend_from_slice(&compressed);
    finish(
        &mut out,
        header.request_id,
        header.response_to,
        OpCode::Compressed,
    );
    Ok(out)
}
