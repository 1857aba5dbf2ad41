//! OP_MSG: round trips through encode -> decode -> parse, checksums, flag
//! bits, and every way the sections can be malformed.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use bson::{rawdoc, RawDocumentBuf};
use bytes::BytesMut;
use common::{build_msg, concat, crc32c, put_i32, Section, MAX};
use mongotap_proto::op_msg::{
    self, parse, DocSequence, CHECKSUM_PRESENT, EXHAUST_ALLOWED, MORE_TO_COME,
};
use mongotap_proto::{decode, DecodeError, OpCode, HEADER_LEN};

fn insert_body() -> RawDocumentBuf {
    rawdoc! { "insert": "items", "ordered": true, "$db": "shop" }
}

fn docs(n: i32) -> Vec<RawDocumentBuf> {
    (0..n)
        .map(|i| rawdoc! { "_id": i, "v": format!("doc {i}") })
        .collect()
}

/// Encodes, cuts the frame out of a buffer, parses, and checks every field.
fn round_trip(flags: u32, seqs: &[(&str, Vec<RawDocumentBuf>)]) {
    let body = insert_body();
    let concatenated: Vec<Vec<u8>> = seqs.iter().map(|(_, d)| concat(d)).collect();
    let sequences: Vec<DocSequence<'_>> = seqs
        .iter()
        .zip(&concatenated)
        .map(|((id, _), bytes)| DocSequence {
            identifier: id,
            documents: bytes,
        })
        .collect();
    let bytes = op_msg::encode(42, 7, flags, &body, &sequences);

    let mut buf = BytesMut::from(&bytes[..]);
    let frame = decode(&mut buf, MAX).unwrap().unwrap();
    assert!(buf.is_empty());
    assert_eq!(frame.header.op_code, OpCode::Msg);
    assert_eq!(frame.header.request_id, 42);
    assert_eq!(frame.header.response_to, 7);
    assert_eq!(frame.header.message_length as usize, bytes.len());
    assert_eq!(op_msg::flags(&frame.bytes), Some(flags));

    let msg = parse(&frame.bytes).unwrap();
    assert_eq!(msg.flags, flags);
    assert_eq!(msg.body.as_bytes(), body.as_bytes());
    assert_eq!(msg.more_to_come(), flags & MORE_TO_COME != 0);
    assert_eq!(msg.exhaust_allowed(), flags & EXHAUST_ALLOWED != 0);
    assert_eq!(msg.sequences.len(), seqs.len());
    for (got, (id, want)) in msg.sequences.iter().zip(seqs) {
        assert_eq!(got.identifier, *id);
        let got_docs: Vec<&[u8]> = got.iter().map(|d| d.unwrap().as_bytes()).collect();
        let want_docs: Vec<&[u8]> = want.iter().map(|d| d.as_bytes()).collect();
        assert_eq!(got_docs, want_docs);
    }
    if flags & CHECKSUM_PRESENT != 0 {
        let end = bytes.len() - 4;
        let expected = crc32c(&bytes[..end]);
        assert_eq!(msg.checksum, Some(expected));
        assert_eq!(&bytes[end..], &expected.to_le_bytes());
    } else {
        assert_eq!(msg.checksum, None);
    }
}

#[test]
fn crc32c_reference_value() {
    // The check value from the CRC catalogue, so the oracle itself is right.
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn round_trip_body_only() {
    round_trip(0, &[]);
    round_trip(CHECKSUM_PRESENT, &[]);
}

#[test]
fn round_trip_one_sequence() {
    round_trip(0, &[("documents", docs(3))]);
    round_trip(CHECKSUM_PRESENT, &[("documents", docs(3))]);
}

#[test]
fn round_trip_two_sequences() {
    let seqs = [("ops", docs(2)), ("nsInfo", docs(1))];
    round_trip(0, &seqs);
    round_trip(CHECKSUM_PRESENT, &seqs);
}

#[test]
fn round_trip_empty_sequence_and_known_flags() {
    round_trip(MORE_TO_COME, &[("documents", vec![])]);
    round_trip(EXHAUST_ALLOWED | CHECKSUM_PRESENT, &[]);
    round_trip(
        CHECKSUM_PRESENT | MORE_TO_COME | EXHAUST_ALLOWED,
        &[("updates", docs(1))],
    );
}

#[test]
fn sequences_before_and_after_the_body() {
    let body = insert_body();
    let a = concat(&docs(2));
    let b = concat(&docs(1));
    for flags in [0, CHECKSUM_PRESENT] {
        for order in 0..3 {
            let mut sections = vec![Section::Seq("ops", &a), Section::Seq("nsInfo", &b)];
            sections.insert(order, Section::Body(&body));
            let bytes = build_msg(9, flags, &sections);
            let msg = parse(&bytes).unwrap_or_else(|e| panic!("order {order}: {e}"));
            assert_eq!(msg.body.as_bytes(), body.as_bytes());
            let ids: Vec<&str> = msg.sequences.iter().map(|s| s.identifier).collect();
            assert_eq!(ids, ["ops", "nsInfo"]);
            assert_eq!(msg.sequences[0].documents, &a[..]);
            assert_eq!(msg.sequences[1].documents, &b[..]);
            assert_eq!(msg.checksum.is_some(), flags != 0);
        }
    }
}

#[test]
fn hand_built_matches_encoder() {
    // Body first, then sequences: the layout the encoder writes.
    let body = insert_body();
    let a = concat(&docs(2));
    for flags in [0, CHECKSUM_PRESENT] {
        let ours = build_msg(
            3,
            flags,
            &[Section::Body(&body), Section::Seq("documents", &a)],
        );
        let seq = [DocSequence {
            identifier: "documents",
            documents: &a,
        }];
        assert_eq!(op_msg::encode(3, 0, flags, &body, &seq), ours);
    }
}

#[test]
fn every_flipped_byte_is_a_checksum_mismatch() {
    let a = concat(&docs(2));
    let seq = [DocSequence {
        identifier: "documents",
        documents: &a,
    }];
    let good = op_msg::encode(5, 0, CHECKSUM_PRESENT, &insert_body(), &seq);
    let end = good.len() - 4;
    let claimed = u32::from_le_bytes(good[end..].try_into().unwrap());
    // Skip the flag bytes: changing them changes what the message means.
    for i in (0..HEADER_LEN).chain(HEADER_LEN + 4..good.len()) {
        let mut bad = good.clone();
        bad[i] ^= 0x5a;
        let want = if i >= end {
            DecodeError::ChecksumMismatch {
                claimed: u32::from_le_bytes(bad[end..].try_into().unwrap()),
                computed: claimed,
            }
        } else {
            DecodeError::ChecksumMismatch {
                claimed,
                computed: crc32c(&bad[..end]),
            }
        };
        assert_eq!(parse(&bad).unwrap_err(), want, "byte {i}");
    }
}

#[test]
fn checksum_flag_without_room_for_it() {
    let mut bytes = common::frame(2013, 1, 0, &CHECKSUM_PRESENT.to_le_bytes(), 0);
    bytes.extend_from_slice(&[0, 0]);
    let len = bytes.len() as i32;
    put_i32(&mut bytes, 0, len);
    assert_eq!(
        parse(&bytes).unwrap_err(),
        DecodeError::Truncated {
            opcode: "OP_MSG",
            what: "checksum",
            needed: 4,
            left: 2
        }
    );
}

#[test]
fn unknown_required_flag_bits() {
    let body = insert_body();
    for bit in [2, 3, 8, 15] {
        let bytes = build_msg(1, 1 << bit, &[Section::Body(&body)]);
        assert_eq!(
            parse(&bytes).unwrap_err(),
            DecodeError::UnknownRequiredFlags { bits: 1 << bit }
        );
    }
    let bytes = build_msg(1, CHECKSUM_PRESENT | 0x8004, &[Section::Body(&body)]);
    assert_eq!(
        parse(&bytes).unwrap_err(),
        DecodeError::UnknownRequiredFlags { bits: 0x8004 }
    );
}

#[test]
fn unknown_optional_flag_bits_parse() {
    let body = insert_body();
    let flags = EXHAUST_ALLOWED | (1 << 20) | (1 << 31);
    let msg_bytes = build_msg(1, flags, &[Section::Body(&body)]);
    let msg = parse(&msg_bytes).unwrap();
    assert!(msg.exhaust_allowed());
    assert_eq!(msg.unknown_optional_flags(), (1 << 20) | (1 << 31));
}

#[test]
fn unknown_section_kind() {
    let body = insert_body();
    for kind in [2u8, 4, 0xff] {
        let bytes = build_msg(
            1,
            0,
            &[Section::Body(&body), Section::Raw(&[kind, 0, 0, 0, 0])],
        );
        assert_eq!(
            parse(&bytes).unwrap_err(),
            DecodeError::UnknownSectionKind { kind }
        );
    }
}

/// The proposed kind-3 section (a trace context) is read, not rejected;
/// it must hold one whole document like a body.
#[test]
fn kind_3_trace_context_is_read() {
    let body = insert_body();
    let ctx = bson::rawdoc! {"otel": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}};
    let mut section = vec![3u8];
    section.extend_from_slice(ctx.as_bytes());
    let bytes = build_msg(1, 0, &[Section::Body(&body), Section::Raw(&section)]);
    let msg = parse(&bytes).unwrap();
    assert_eq!(
        msg.trace_context.map(|d| d.as_bytes()),
        Some(ctx.as_bytes())
    );
    assert_eq!(msg.body.as_bytes(), body.as_bytes());
    let truncated = build_msg(
        1,
        0,
        &[Section::Body(&body), Section::Raw(&[3, 0, 0, 0, 0])],
    );
    assert!(parse(&truncated).is_err());
}

#[test]
fn two_bodies() {
    let body = insert_body();
    let bytes = build_msg(1, 0, &[Section::Body(&body), Section::Body(&body)]);
    assert_eq!(
        parse(&bytes).unwrap_err(),
        DecodeError::BodyCount { count: 2 }
    );
}

#[test]
fn zero_bodies() {
    assert_eq!(
        parse(&build_msg(1, 0, &[])).unwrap_err(),
        DecodeError::BodyCount { count: 0 }
    );
    assert_eq!(
        parse(&build_msg(1, CHECKSUM_PRESENT, &[])).unwrap_err(),
        DecodeError::BodyCount { count: 0 }
    );
    let a = concat(&docs(1));
    assert_eq!(
        parse(&build_msg(1, 0, &[Section::Seq("documents", &a)])).unwrap_err(),
        DecodeError::BodyCount { count: 0 }
    );
}

/// A kind-1 section with a hand-written size and content.
fn raw_sequence(size: i32, content: &[u8]) -> Vec<u8> {
    let mut s = vec![1u8];
    s.extend_from_slice(&size.to_le_bytes());
    s.extend_from_slice(content);
    s
}

#[test]
fn sequence_size_past_the_end() {
    let body = insert_body();
    let docs = concat(&docs(2));
    let mut content = b"documents\0".to_vec();
    content.extend_from_slice(&docs);
    let real = 4 + content.len() as i32;
    let left = 4 + content.len();
    for size in [real + 1, real + 1000, i32::MAX] {
        let seq = raw_sequence(size, &content);
        let bytes = build_msg(1, 0, &[Section::Body(&body), Section::Raw(&seq)]);
        assert_eq!(
            parse(&bytes).unwrap_err(),
            DecodeError::SequenceSize { size, left },
            "size {size}"
        );
    }
    // With a checksum the last four bytes are not section data.
    let seq = raw_sequence(real + 4, &content);
    let bytes = build_msg(
        1,
        CHECKSUM_PRESENT,
        &[Section::Body(&body), Section::Raw(&seq)],
    );
    assert_eq!(
        parse(&bytes).unwrap_err(),
        DecodeError::SequenceSize {
            size: real + 4,
            left
        }
    );
}

#[test]
fn sequence_size_too_small_or_negative() {
    let body = insert_body();
    for size in [-1, 0, 4, i32::MIN] {
        let seq = raw_sequence(size, b"documents\0");
        let bytes = build_msg(1, 0, &[Section::Body(&body), Section::Raw(&seq)]);
        assert!(
            matches!(parse(&bytes), Err(DecodeError::SequenceSize { size: s, .. }) if s == size),
            "size {size}"
        );
    }
}

#[test]
fn sequence_size_cutting_a_document() {
    // The size is within the message but ends inside the second document.
    let body = insert_body();
    let docs = concat(&docs(2));
    let mut content = b"documents\0".to_vec();
    content.extend_from_slice(&docs);
    let seq = raw_sequence(4 + content.len() as i32 - 3, &content);
    let bytes = build_msg(1, 0, &[Section::Body(&body), Section::Raw(&seq)]);
    assert!(parse(&bytes).is_err());
}

#[test]
fn sequence_identifier_without_nul() {
    let body = insert_body();
    let seq = raw_sequence(4 + 9, b"documents");
    let bytes = build_msg(1, 0, &[Section::Body(&body), Section::Raw(&seq)]);
    assert_eq!(
        parse(&bytes).unwrap_err(),
        DecodeError::BadCString {
            opcode: "OP_MSG",
            what: "sequence identifier"
        }
    );
}

#[test]
fn sequence_with_a_bad_document() {
    let body = insert_body();
    let mut content = b"documents\0".to_vec();
    content.extend_from_slice(&[5, 0, 0, 0, 1]); // not NUL-terminated
    let seq = raw_sequence(4 + content.len() as i32, &content);
    let bytes = build_msg(1, 0, &[Section::Body(&body), Section::Raw(&seq)]);
    assert!(matches!(
        parse(&bytes),
        Err(DecodeError::InvalidBson {
            what: "document sequence",
            ..
        })
    ));
}

#[test]
fn body_length_past_the_end() {
    let body = insert_body();
    let mut bytes = build_msg(1, 0, &[Section::Body(&body)]);
    let len = body.as_bytes().len();
    put_i32(&mut bytes, HEADER_LEN + 5, len as i32 + 1);
    assert_eq!(
        parse(&bytes).unwrap_err(),
        DecodeError::Truncated {
            opcode: "OP_MSG",
            what: "body",
            needed: len + 1,
            left: len
        }
    );
    put_i32(&mut bytes, HEADER_LEN + 5, 3);
    assert!(matches!(
        parse(&bytes),
        Err(DecodeError::InvalidBson { what: "body", .. })
    ));
}

#[test]
fn shorter_than_header_and_flags() {
    for n in 0..HEADER_LEN + 4 {
        assert!(matches!(
            parse(&vec![0; n]),
            Err(DecodeError::Truncated {
                opcode: "OP_MSG",
                ..
            })
        ));
    }
    assert_eq!(op_msg::flags(&[0; 19]), None);
}
