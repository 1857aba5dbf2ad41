//! Helpers shared by the proto integration tests: message builders that do
//! not go through the crate's own encoders (so malformed and reordered
//! messages can be made), an independent CRC-32C, a chunked feeder for
//! `decode`, and a small deterministic RNG.
#![allow(dead_code)]

use bson::{rawdoc, RawDocument, RawDocumentBuf};
use bytes::BytesMut;
use mongotap_proto::op_msg::{self, DocSequence, CHECKSUM_PRESENT};
use mongotap_proto::op_query::{self, OpQuery};
use mongotap_proto::op_reply::{self, OpReply};
use mongotap_proto::{decode, DecodeError, Frame, Header, OpCode, HEADER_LEN};

pub const MAX: usize = mongotap_proto::MAX_MESSAGE_LEN;

/// Bitwise CRC-32C (Castagnoli), independent of the crate's `crc32c` dependency.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One OP_MSG section as written on the wire, in the order given.
pub enum Section<'a> {
    Body(&'a RawDocument),
    /// Identifier and concatenated documents; the size is computed.
    Seq(&'a str, &'a [u8]),
    /// Bytes copied as-is, for malformed sections.
    Raw(&'a [u8]),
}

/// Builds an OP_MSG by hand: header, flags, sections in the given order, and
/// a CRC-32C when `flags` has `CHECKSUM_PRESENT`.
pub fn build_msg(request_id: i32, flags: u32, sections: &[Section<'_>]) -> Vec<u8> {
    let mut body = flags.to_le_bytes().to_vec();
    for s in sections {
        match s {
            Section::Body(d) => {
                body.push(0);
                body.extend_from_slice(d.as_bytes());
            }
            Section::Seq(id, docs) => {
                body.push(1);
                let size = (4 + id.len() + 1 + docs.len()) as i32;
                body.extend_from_slice(&size.to_le_bytes());
                body.extend_from_slice(id.as_bytes());
                body.push(0);
                body.extend_from_slice(docs);
            }
            Section::Raw(b) => body.extend_from_slice(b),
        }
    }
    let checksum = flags & CHECKSUM_PRESENT != 0;
    let mut out = frame(2013, request_id, 0, &body, if checksum { 4 } else { 0 });
    if checksum {
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    out
}

/// A message with any opcode: header (length counts `extra` bytes the caller
/// appends afterwards) then `body`.
pub fn frame(
    op_code: i32,
    request_id: i32,
    response_to: i32,
    body: &[u8],
    extra: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + extra);
    Header {
        message_length: (HEADER_LEN + body.len() + extra) as i32,
        request_id,
        response_to,
        op_code: OpCode::from_i32(op_code),
    }
    .write_to(&mut out);
    out.extend_from_slice(body);
    out
}

/// Concatenates documents as a document sequence or OP_REPLY carries them.
pub fn concat(docs: &[RawDocumentBuf]) -> Vec<u8> {
    docs.iter()
        .flat_map(|d| d.as_bytes().iter().copied())
        .collect()
}

/// Replaces the int32 at `at` (little-endian).
pub fn put_i32(bytes: &mut [u8], at: usize, v: i32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Feeds `stream` to `decode` in chunks whose sizes come from `sizes`
/// (clamped to at least 1, the rest once `sizes` runs out), draining every
/// frame after each chunk. Asserts the buffer is empty at the end.
pub fn feed(
    stream: &[u8],
    sizes: impl IntoIterator<Item = usize>,
    limit: usize,
) -> Result<Vec<Frame>, DecodeError> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut sizes = sizes.into_iter();
    let mut pos = 0;
    while pos < stream.len() {
        let n = sizes
            .next()
            .unwrap_or(stream.len() - pos)
            .clamp(1, stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        while let Some(f) = decode(&mut buf, limit)? {
            frames.push(f);
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    Ok(frames)
}

/// xorshift64*: deterministic, so a failing chunking can be reproduced.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

pub fn hello() -> RawDocumentBuf {
    rawdoc! {
        "hello": 1,
        "client": {
            "application": { "name": "codec-test" },
            "driver": { "name": "mongotap-tests", "version": "0" },
        },
        "compression": ["snappy", "zlib", "zstd"],
        "$db": "admin",
    }
}

/// A stream mixing every opcode, a header-only frame of an unknown opcode
/// and a ~100 KB OP_MSG, as (message bytes) in order.
pub fn mixed_messages() -> Vec<Vec<u8>> {
    let docs = concat(&[
        rawdoc! { "_id": 1, "x": "a" },
        rawdoc! { "_id": 2, "x": "b" },
    ]);
    let insert = rawdoc! { "insert": "items", "$db": "shop" };
    let find = rawdoc! { "find": "items", "filter": { "x": "a" }, "$db": "shop" };
    let big = rawdoc! { "insert": "blobs", "pad": "p".repeat(100_000), "$db": "shop" };
    let is_master = rawdoc! { "isMaster": 1 };
    let reply_doc = rawdoc! { "ismaster": true, "ok": 1.0 };
    let query = OpQuery {
        flags: 0,
        full_collection_name: "admin.$cmd",
        number_to_skip: 0,
        number_to_return: -1,
        query: &is_master,
        return_fields_selector: None,
    };
    let reply = OpReply {
        response_flags: 0,
        cursor_id: 0,
        starting_from: 0,
        number_returned: 1,
        documents: reply_doc.as_bytes(),
    };
    let compressed = mongotap_proto::op_compressed::compress(
        &op_msg::encode(7, 0, 0, &find, &[]),
        mongotap_proto::op_compressed::Compressor::Zlib,
    )
    .expect("zlib compresses");
    vec![
        op_msg::encode(1, 0, 0, &hello(), &[]),
        op_msg::encode(
            2,
            0,
            CHECKSUM_PRESENT,
            &insert,
            &[DocSequence {
                identifier: "documents",
                documents: &docs,
            }],
        ),
        op_query::encode(3, 0, &query),
        op_reply::encode(4, 3, &reply),
        frame(2010, 5, 0, b"legacy OP_COMMAND bytes", 0),
        frame(9999, 6, 0, &[], 0),
        compressed,
        op_msg::encode(8, 0, 0, &big, &[]),
    ]
}
