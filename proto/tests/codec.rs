//! Frame cutting (`mongotap_proto::decode`): split reads, merged reads,
//! truncated frames, lengths that must be refused before allocating, and
//! sniffing other protocols sent to the MongoDB port.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use bytes::BytesMut;
use common::{feed, frame, mixed_messages, put_i32, Rng, MAX};
use mongotap_proto::sniff::foreign_protocol;
use mongotap_proto::{decode, DecodeError, Frame, Header, OpCode, HEADER_LEN};

fn stream() -> (Vec<Vec<u8>>, Vec<u8>) {
    let messages = mixed_messages();
    let stream = messages.concat();
    (messages, stream)
}

/// Every frame is byte-identical to the message that was sent, in order,
/// with its header decoded.
fn assert_frames(frames: &[Frame], messages: &[Vec<u8>]) {
    assert_eq!(frames.len(), messages.len());
    for (i, (f, m)) in frames.iter().zip(messages).enumerate() {
        assert_eq!(&f.bytes[..], &m[..], "frame {i} bytes differ");
        assert_eq!(f.header, Header::parse(m).unwrap(), "frame {i} header");
        assert_eq!(f.header.message_length as usize, m.len());
        assert_eq!(f.body(), &m[HEADER_LEN..]);
    }
}

#[test]
fn merged_reads_cut_every_frame() {
    let (messages, stream) = stream();
    let mut buf = BytesMut::from(&stream[..]);
    let mut frames = Vec::new();
    while let Some(f) = decode(&mut buf, MAX).unwrap() {
        frames.push(f);
    }
    assert!(buf.is_empty());
    assert_frames(&frames, &messages);
    let ops: Vec<OpCode> = frames.iter().map(|f| f.header.op_code).collect();
    assert_eq!(
        ops,
        [
            OpCode::Msg,
            OpCode::Msg,
            OpCode::Query,
            OpCode::Reply,
            OpCode::Other(2010),
            OpCode::Other(9999),
            OpCode::Compressed,
            OpCode::Msg,
        ]
    );
}

#[test]
fn one_byte_at_a_time() {
    let (messages, stream) = stream();
    let frames = feed(&stream, std::iter::repeat(1), MAX).unwrap();
    assert_frames(&frames, &messages);
}

#[test]
fn random_chunk_sizes() {
    let (messages, stream) = stream();
    for seed in 1..=50u64 {
        let mut rng = Rng::new(seed);
        // Mix tiny reads (inside a header) with large ones (across frames).
        let max = if seed % 2 == 0 { 40 } else { 70_000 };
        let sizes: Vec<usize> = (0..stream.len()).map(|_| rng.range(1, max)).collect();
        let frames = feed(&stream, sizes, MAX).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_frames(&frames, &messages);
    }
}

#[test]
fn split_exactly_at_every_offset() {
    // Two reads, split at every offset of the first few frames.
    let (messages, stream) = stream();
    let upto = messages[..7].iter().map(Vec::len).sum::<usize>();
    for at in 0..=upto {
        let frames = feed(&stream, [at, stream.len()], MAX).unwrap();
        assert_frames(&frames, &messages);
    }
}

#[test]
fn truncated_frames_are_incomplete_not_errors() {
    let (messages, _) = stream();
    for m in &messages {
        for cut in 0..m.len() {
            let mut buf = BytesMut::from(&m[..cut]);
            assert!(decode(&mut buf, MAX).unwrap().is_none(), "cut at {cut}");
            assert_eq!(&buf[..], &m[..cut], "nothing consumed at {cut}");
            if cut >= 4 {
                // The validated length was reserved for the next read.
                assert!(buf.capacity() >= m.len());
            }
        }
    }
}

#[test]
fn a_frame_then_a_partial_one() {
    let (messages, _) = stream();
    let mut bytes = messages[0].clone();
    bytes.extend_from_slice(&messages[1][..10]);
    let mut buf = BytesMut::from(&bytes[..]);
    let f = decode(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(&f.bytes[..], &messages[0][..]);
    assert!(decode(&mut buf, MAX).unwrap().is_none());
    assert_eq!(&buf[..], &messages[1][..10]);
    buf.extend_from_slice(&messages[1][10..]);
    let f = decode(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(&f.bytes[..], &messages[1][..]);
    assert!(buf.is_empty());
}

#[test]
fn header_only_frame_has_empty_body() {
    let m = frame(2013, 1, 0, &[], 0);
    let mut buf = BytesMut::from(&m[..]);
    let f = decode(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(f.header.message_length, 16);
    assert!(f.body().is_empty());
}

/// Decodes a buffer that starts with `claimed` as messageLength (and enough
/// bytes for a header), expecting an error without the buffer growing
/// towards the claim or being consumed.
fn refused(claimed: i32, limit: usize) -> DecodeError {
    let mut m = frame(2013, 1, 0, &[0; 16], 0);
    put_i32(&mut m, 0, claimed);
    for len in [4, m.len()] {
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&m[..len]);
        let err = decode(&mut buf, limit).unwrap_err();
        assert_eq!(&buf[..], &m[..len], "buffer consumed on error");
        assert!(buf.capacity() <= 64, "capacity grew to {}", buf.capacity());
        if len == m.len() {
            return err;
        }
    }
    unreachable!()
}

#[test]
fn length_below_header_size() {
    for claimed in [0, 1, 4, 15] {
        assert_eq!(
            refused(claimed, MAX),
            DecodeError::LengthTooSmall { claimed }
        );
    }
}

#[test]
fn negative_length() {
    for claimed in [-1, -16, i32::MIN] {
        assert_eq!(
            refused(claimed, MAX),
            DecodeError::LengthTooSmall { claimed }
        );
    }
}

#[test]
fn length_above_max_message_size() {
    for claimed in [48_000_001, 0x0800_0000, i32::MAX] {
        assert_eq!(
            refused(claimed, MAX),
            DecodeError::LengthTooLarge {
                claimed: claimed.into(),
                limit: MAX
            }
        );
    }
}

#[test]
fn configured_limit_above_max_is_capped() {
    assert_eq!(
        refused(48_000_001, usize::MAX),
        DecodeError::LengthTooLarge {
            claimed: 48_000_001,
            limit: MAX
        }
    );
}

#[test]
fn length_above_configured_limit() {
    assert_eq!(
        refused(1025, 1024),
        DecodeError::LengthTooLarge {
            claimed: 1025,
            limit: 1024
        }
    );
    // A limit below the header size refuses everything.
    assert_eq!(
        refused(16, 8),
        DecodeError::LengthTooLarge {
            claimed: 16,
            limit: 8
        }
    );
}

#[test]
fn exactly_the_limit_is_accepted() {
    let mut m = frame(2013, 1, 0, &[0; 1008], 0);
    assert_eq!(m.len(), 1024);
    let mut buf = BytesMut::from(&m[..100]);
    assert!(decode(&mut buf, 1024).unwrap().is_none());
    buf.extend_from_slice(&m[100..]);
    let f = decode(&mut buf, 1024).unwrap().unwrap();
    assert_eq!(f.bytes.len(), 1024);

    // 48,000,000 itself is legal: only reserved, never read here.
    put_i32(&mut m, 0, 48_000_000);
    let mut buf = BytesMut::from(&m[..16]);
    assert!(decode(&mut buf, MAX).unwrap().is_none());
}

#[test]
fn fewer_than_four_bytes_need_more() {
    for n in 0..4 {
        let mut buf = BytesMut::from(&[0xffu8; 4][..n]);
        assert!(decode(&mut buf, MAX).unwrap().is_none());
        assert_eq!(buf.len(), n);
    }
}

/// The start of a real TLS 1.2/1.3 ClientHello record (content type 22,
/// record version 3.1, length 0x0200, handshake type 1).
const CLIENT_HELLO: [u8; 16] = [
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x5a, 0x1e, 0x9b, 0x40, 0xc7,
];

#[test]
fn sniff_tls_client_hello() {
    assert_eq!(
        foreign_protocol(&CLIENT_HELLO),
        Some(DecodeError::TlsOnPlaintextPort)
    );
    assert_eq!(
        foreign_protocol(&CLIENT_HELLO[..5]),
        Some(DecodeError::TlsOnPlaintextPort)
    );
    // Its bytes read as a length under 48 MB: decode alone would wait for
    // 33 MB that never come, which is why the sniff exists.
    let claimed = i32::from_le_bytes([0x16, 0x03, 0x01, 0x02]);
    assert!((claimed as usize) < MAX);
}

#[test]
fn sniff_http() {
    for (req, method) in [
        (&b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..], "GET"),
        (b"POST /x HTTP/1.1\r\n", "POST"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "PRI *"),
    ] {
        assert_eq!(
            foreign_protocol(req),
            Some(DecodeError::HttpOnMongoPort {
                method: method.to_string()
            })
        );
    }
    // And decode refuses it by length, without allocating.
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    let cap = buf.capacity();
    assert!(matches!(
        decode(&mut buf, MAX),
        Err(DecodeError::LengthTooLarge { .. })
    ));
    assert_eq!(buf.capacity(), cap);
}

#[test]
fn sniff_leaves_mongodb_alone() {
    let (messages, _) = stream();
    for m in &messages {
        assert_eq!(foreign_protocol(m), None);
    }
    assert_eq!(foreign_protocol(&[]), None);
    assert_eq!(foreign_protocol(&[0x16]), None);
    assert_eq!(foreign_protocol(b"GE"), None);
}

#[test]
fn sniff_is_not_fooled_by_a_790_byte_message() {
    // messageLength 790 = 0x316 starts with the bytes 16 03 00 00, the same
    // two bytes a TLS record starts with. A whole header shows it is MongoDB.
    let body = common::hello();
    // A string element costs type + "pad\0" + length + NUL = 10 bytes.
    let pad = "x".repeat(790 - 16 - 4 - 1 - body.as_bytes().len() - 10);
    let mut doc = body.clone();
    doc.append(bson::cstr!("pad"), pad.as_str());
    let m = mongotap_proto::op_msg::encode(1, 0, 0, &doc, &[]);
    assert_eq!(m.len(), 790);
    assert_eq!(&m[..2], &[0x16, 0x03]);
    assert_eq!(foreign_protocol(&m), None);
    assert_eq!(foreign_protocol(&m[..HEADER_LEN]), None);
}
