//! OP_COMPRESSED: compress -> decode -> decompress gives back the original
//! message for every compressor, and every lie in the wrapper is caught.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use bson::rawdoc;
use bytes::BytesMut;
use common::{put_i32, MAX};
use mongotap_proto::op_compressed::{compress, decompress, parse, Compressor};
use mongotap_proto::op_msg::{self, CHECKSUM_PRESENT};
use mongotap_proto::op_query::{self, OpQuery};
use mongotap_proto::op_reply::{self, OpReply};
use mongotap_proto::{decode, DecodeError, OpCode, HEADER_LEN};

const ALL: [Compressor; 4] = [
    Compressor::Noop,
    Compressor::Snappy,
    Compressor::Zlib,
    Compressor::Zstd,
];

/// Offsets inside an OP_COMPRESSED message.
const ORIGINAL_OPCODE: usize = HEADER_LEN;
const UNCOMPRESSED_SIZE: usize = HEADER_LEN + 4;
const COMPRESSOR_ID: usize = HEADER_LEN + 8;
const DATA: usize = HEADER_LEN + 9;

fn find_msg() -> Vec<u8> {
    let body = rawdoc! {
        "find": "items",
        "filter": { "status": "A", "tags": ["a", "b", "c"] },
        "comment": "x".repeat(2_000),
        "$db": "shop",
    };
    op_msg::encode(21, 0, CHECKSUM_PRESENT, &body, &[])
}

fn originals() -> Vec<Vec<u8>> {
    let q = rawdoc! { "isMaster": 1 };
    let r = rawdoc! { "ismaster": true, "ok": 1.0 };
    vec![
        find_msg(),
        op_query::encode(
            22,
            0,
            &OpQuery {
                flags: 0,
                full_collection_name: "admin.$cmd",
                number_to_skip: 0,
                number_to_return: -1,
                query: &q,
                return_fields_selector: None,
            },
        ),
        op_reply::encode(
            23,
            22,
            &OpReply {
                response_flags: 0,
                cursor_id: 0,
                starting_from: 0,
                number_returned: 1,
                documents: r.as_bytes(),
            },
        ),
    ]
}

#[test]
fn round_trip_every_compressor_and_opcode() {
    for original in originals() {
        let header = mongotap_proto::Header::parse(&original).unwrap();
        for c in ALL {
            let packed = compress(&original, c).unwrap();
            let mut buf = BytesMut::from(&packed[..]);
            let frame = decode(&mut buf, MAX).unwrap().unwrap();
            assert_eq!(frame.header.op_code, OpCode::Compressed);
            assert_eq!(frame.header.request_id, header.request_id);
            assert_eq!(frame.header.response_to, header.response_to);

            let view = parse(&frame.bytes, MAX).unwrap();
            assert_eq!(view.original_opcode, header.op_code);
            assert_eq!(view.uncompressed_size, original.len() - HEADER_LEN);
            assert_eq!(view.compressor, c);
            assert_eq!(Compressor::from_id(c.id()).unwrap(), c);

            let unpacked = decompress(&frame.bytes, MAX).unwrap();
            assert_eq!(unpacked, original, "{}", c.name());
        }
    }
}

#[test]
fn decompressed_op_msg_still_parses_with_its_checksum() {
    for c in ALL {
        let packed = compress(&find_msg(), c).unwrap();
        let unpacked = decompress(&packed, MAX).unwrap();
        let msg = op_msg::parse(&unpacked).unwrap();
        assert!(msg.checksum.is_some());
    }
}

fn with_size(packed: &[u8], size: i32) -> Vec<u8> {
    let mut bad = packed.to_vec();
    put_i32(&mut bad, UNCOMPRESSED_SIZE, size);
    bad
}

#[test]
fn uncompressed_size_smaller_or_larger_than_real() {
    let original = find_msg();
    let real = original.len() - HEADER_LEN;
    for c in ALL {
        let packed = compress(&original, c).unwrap();
        for claimed in [real - 1, real + 1, 1, real * 2] {
            let bad = with_size(&packed, claimed as i32);
            match decompress(&bad, MAX) {
                Err(DecodeError::UncompressedMismatch {
                    compressor,
                    claimed: cl,
                    actual,
                }) => {
                    assert_eq!(compressor, c.name());
                    assert_eq!(cl, claimed);
                    assert_ne!(actual, claimed);
                }
                other => panic!("{} claimed {claimed}: {other:?}", c.name()),
            }
        }
    }
}

#[test]
fn uncompressed_size_negative_or_over_the_limit() {
    let packed = compress(&find_msg(), Compressor::Zstd).unwrap();
    for claimed in [-1, i32::MIN, 48_000_000 - 15, i32::MAX] {
        assert!(
            matches!(
                parse(&with_size(&packed, claimed), MAX),
                Err(DecodeError::UncompressedSize { claimed: c, .. }) if c == claimed
            ),
            "claimed {claimed}"
        );
    }
    // The decompressed message, header included, must fit the limit.
    let real = find_msg().len();
    assert!(parse(&packed, real).is_ok());
    assert_eq!(
        parse(&packed, real - 1).unwrap_err(),
        DecodeError::UncompressedSize {
            claimed: (real - HEADER_LEN) as i32,
            limit: real - 1 - HEADER_LEN
        }
    );
}

#[test]
fn limit_below_the_header_size_refuses_without_panicking() {
    let packed = compress(&find_msg(), Compressor::Noop).unwrap();
    for limit in [0, 1, 15, 16] {
        assert!(
            matches!(
                parse(&packed, limit),
                Err(DecodeError::UncompressedSize { limit: 0, .. })
            ),
            "limit {limit}"
        );
        assert!(decompress(&packed, limit).is_err());
    }
}

#[test]
fn huge_claim_with_tiny_data_is_refused() {
    // 48 MB claimed, a few bytes given: bounded by the limit, then refused.
    for c in ALL {
        let packed = compress(&find_msg(), c).unwrap();
        let bad = with_size(&packed, (MAX - HEADER_LEN) as i32);
        assert!(decompress(&bad, MAX).is_err(), "{}", c.name());
    }
}

#[test]
fn unknown_compressor_id() {
    let packed = compress(&find_msg(), Compressor::Noop).unwrap();
    for id in [4u8, 7, 255] {
        let mut bad = packed.clone();
        bad[COMPRESSOR_ID] = id;
        assert_eq!(
            parse(&bad, MAX).unwrap_err(),
            DecodeError::UnknownCompressor { id }
        );
        assert_eq!(
            decompress(&bad, MAX).unwrap_err(),
            DecodeError::UnknownCompressor { id }
        );
    }
    assert_eq!(
        Compressor::from_id(4).unwrap_err(),
        DecodeError::UnknownCompressor { id: 4 }
    );
}

#[test]
fn corrupt_data() {
    let original = find_msg();
    for c in [Compressor::Snappy, Compressor::Zlib, Compressor::Zstd] {
        let packed = compress(&original, c).unwrap();
        // Garbage in place of the compressed bytes.
        let mut garbage = packed[..DATA].to_vec();
        garbage.extend_from_slice(&[0xff; 64]);
        assert!(
            matches!(
                decompress(&garbage, MAX),
                Err(DecodeError::Decompress { compressor, .. }) if compressor == c.name()
            ),
            "{}: {:?}",
            c.name(),
            decompress(&garbage, MAX)
        );
        // Truncated compressed data.
        let cut = &packed[..DATA + (packed.len() - DATA) / 2];
        assert!(decompress(cut, MAX).is_err(), "{} truncated", c.name());
        // One flipped byte in the middle never yields a wrong message.
        for i in DATA..packed.len() {
            let mut bad = packed.clone();
            bad[i] ^= 0x40;
            if let Ok(out) = decompress(&bad, MAX) {
                // zlib's and zstd's checksums and snappy's framing do not
                // cover everything; whatever comes out is still bounded.
                assert_eq!(out.len(), original.len(), "{} byte {i}", c.name());
            }
        }
    }
}

#[test]
fn nested_compression() {
    let once = compress(&find_msg(), Compressor::Noop).unwrap();
    let twice = compress(&once, Compressor::Snappy).unwrap();
    assert_eq!(
        parse(&twice, MAX).unwrap_err(),
        DecodeError::NestedCompression { opcode: 2012 }
    );
    assert_eq!(
        decompress(&twice, MAX).unwrap_err(),
        DecodeError::NestedCompression { opcode: 2012 }
    );
}

#[test]
fn unknown_original_opcode_is_carried() {
    let mut packed = compress(&find_msg(), Compressor::Noop).unwrap();
    put_i32(&mut packed, ORIGINAL_OPCODE, 2010);
    let out = decompress(&packed, MAX).unwrap();
    assert_eq!(
        mongotap_proto::Header::parse(&out).unwrap().op_code,
        OpCode::Other(2010)
    );
}

#[test]
fn truncated_wrapper() {
    let packed = compress(&find_msg(), Compressor::Noop).unwrap();
    for n in 0..DATA {
        assert!(
            matches!(
                parse(&packed[..n], MAX),
                Err(DecodeError::Truncated {
                    opcode: "OP_COMPRESSED",
                    ..
                })
            ),
            "cut at {n}"
        );
    }
    assert!(compress(&packed[..10], Compressor::Zlib).is_err());
}
