//! Property tests: random OP_MSGs survive encode -> split reads -> decode ->
//! parse unchanged, and no input, however malformed, makes any decoder or
//! parser panic.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Document, RawDocument, RawDocumentBuf};
use common::{build_msg, concat, feed, Section, MAX};
use mongotap_proto::frame::complete_len;
use mongotap_proto::op_compressed::{self, Compressor};
use mongotap_proto::op_msg::{self, DocSequence, CHECKSUM_PRESENT, MORE_TO_COME};
use mongotap_proto::rewrite::{rewrite, Limits};
use mongotap_proto::{decode, op_query, op_reply, sniff, CommandView, OpCode, ReplyView};
use proptest::collection::vec;
use proptest::prelude::*;

fn key() -> impl Strategy<Value = String> {
    "[a-zA-Z$_][a-zA-Z0-9_.]{0,10}"
}

fn bson_value() -> impl Strategy<Value = Bson> {
    let leaf = prop_oneof![
        any::<i32>().prop_map(Bson::Int32),
        any::<i64>().prop_map(Bson::Int64),
        any::<f64>().prop_map(Bson::Double),
        ".{0,20}".prop_map(Bson::String),
        any::<bool>().prop_map(Bson::Boolean),
        Just(Bson::Null),
        vec(any::<u8>(), 0..16).prop_map(|bytes| Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes
        })),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Bson::Array),
            vec((key(), inner), 0..4)
                .prop_map(|kv| Bson::Document(kv.into_iter().collect::<Document>())),
        ]
    })
}

fn raw_doc() -> impl Strategy<Value = RawDocumentBuf> {
    vec((key(), bson_value()), 0..6).prop_map(|kv| {
        let doc: Document = kv.into_iter().collect();
        RawDocumentBuf::try_from(&doc).expect("keys have no NUL")
    })
}

/// A document from (key, value) pairs in order, duplicates kept: each pair
/// is encoded alone and its element bytes are concatenated.
fn doc_from_pairs(pairs: &[(String, Bson)]) -> RawDocumentBuf {
    let mut elements = Vec::new();
    for (k, v) in pairs {
        let mut one = Document::new();
        one.insert(k.clone(), v.clone());
        let raw = RawDocumentBuf::try_from(&one).expect("keys have no NUL");
        let b = raw.as_bytes();
        elements.extend_from_slice(&b[4..b.len() - 1]);
    }
    let mut bytes = ((elements.len() + 5) as i32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&elements);
    bytes.push(0);
    RawDocumentBuf::from_bytes(bytes).unwrap()
}

fn max_time_value() -> impl Strategy<Value = Bson> {
    prop_oneof![
        any::<i32>().prop_map(Bson::Int32),
        (-5i32..100_000).prop_map(Bson::Int32),
        any::<i64>().prop_map(Bson::Int64),
        (-5i64..100_000).prop_map(Bson::Int64),
        (-5i64..100_000).prop_map(|v| Bson::Double(v as f64)),
        any::<f64>().prop_map(Bson::Double),
        Just(Bson::String("1000".into())),
        Just(Bson::Null),
    ]
}

/// Commands shaped like what the rewriter sees: a known name first, then
/// maxTimeMS/allowDiskUse (possibly duplicated, any type) among random
/// fields, sometimes wrapped in explain.
fn command_doc() -> impl Strategy<Value = RawDocumentBuf> {
    let name = prop_oneof![
        Just("find"),
        Just("aggregate"),
        Just("count"),
        Just("distinct"),
        Just("getMore"),
        Just("insert"),
        Just("hello"),
        Just("saslStart"),
    ];
    let field = prop_oneof![
        max_time_value().prop_map(|v| ("maxTimeMS".to_string(), v)),
        any::<bool>().prop_map(|b| ("allowDiskUse".to_string(), Bson::Boolean(b))),
        (key(), bson_value()),
    ];
    (
        name,
        bson_value(),
        vec(field.clone(), 0..5),
        proptest::option::of(vec(field, 0..3)),
    )
        .prop_map(|(name, first, fields, explain_outer)| {
            let mut pairs = vec![(name.to_string(), first)];
            pairs.extend(fields);
            let inner = doc_from_pairs(&pairs);
            match explain_outer {
                None => inner,
                Some(outer) => {
                    let inner = Document::try_from(inner.as_ref()).expect("valid");
                    let mut pairs = vec![("explain".to_string(), Bson::Document(inner))];
                    pairs.extend(outer);
                    doc_from_pairs(&pairs)
                }
            }
        })
}

#[derive(Debug, Clone)]
struct MsgSpec {
    request_id: i32,
    response_to: i32,
    flags: u32,
    body: RawDocumentBuf,
    sequences: Vec<(String, Vec<RawDocumentBuf>)>,
    /// Where the body goes among the sequences (sections come in any order).
    body_pos: usize,
}

impl MsgSpec {
    fn encode(&self) -> Vec<u8> {
        let concatenated: Vec<Vec<u8>> = self.sequences.iter().map(|(_, d)| concat(d)).collect();
        let mut sections: Vec<Section<'_>> = self
            .sequences
            .iter()
            .zip(&concatenated)
            .map(|((id, _), docs)| Section::Seq(id, docs))
            .collect();
        let at = self.body_pos % (sections.len() + 1);
        sections.insert(at, Section::Body(&self.body));
        let bytes = build_msg(self.request_id, self.flags, &sections);
        if at == 0 {
            // Body first is the layout the crate's encoder writes.
            let seqs: Vec<DocSequence<'_>> = self
                .sequences
                .iter()
                .zip(&concatenated)
                .map(|((id, _), docs)| DocSequence {
                    identifier: id,
                    documents: docs,
                })
                .collect();
            let mut ours = op_msg::encode(
                self.request_id,
                self.response_to,
                self.flags,
                &self.body,
                &seqs,
            );
            // build_msg writes responseTo 0; compare the rest.
            ours[8..12].copy_from_slice(&0i32.to_le_bytes());
            if self.flags & CHECKSUM_PRESENT != 0 {
                let end = ours.len() - 4;
                let crc = common::crc32c(&ours[..end]);
                ours[end..].copy_from_slice(&crc.to_le_bytes());
            }
            assert_eq!(ours, bytes);
        }
        bytes
    }

    fn check(&self, frame_bytes: &[u8]) {
        let msg = op_msg::parse(frame_bytes).unwrap();
        assert_eq!(msg.flags, self.flags);
        assert_eq!(msg.body.as_bytes(), self.body.as_bytes());
        assert_eq!(msg.checksum.is_some(), self.flags & CHECKSUM_PRESENT != 0);
        assert_eq!(msg.more_to_come(), self.flags & MORE_TO_COME != 0);
        assert_eq!(msg.sequences.len(), self.sequences.len());
        for (got, (id, docs)) in msg.sequences.iter().zip(&self.sequences) {
            assert_eq!(got.identifier, id);
            let got: Vec<&[u8]> = got.iter().map(|d| d.unwrap().as_bytes()).collect();
            let want: Vec<&[u8]> = docs.iter().map(|d| d.as_bytes()).collect();
            assert_eq!(got, want);
        }
    }
}

fn msg_spec() -> impl Strategy<Value = MsgSpec> {
    (
        any::<i32>(),
        any::<bool>(),
        any::<bool>(),
        any::<u16>(),
        raw_doc(),
        vec(("[a-zA-Z]{1,12}", vec(raw_doc(), 0..4)), 0..3),
        any::<usize>(),
    )
        .prop_map(
            |(request_id, checksum, more, optional, body, sequences, body_pos)| {
                let mut flags = u32::from(optional) << 16;
                if checksum {
                    flags |= CHECKSUM_PRESENT;
                }
                if more {
                    flags |= MORE_TO_COME;
                }
                MsgSpec {
                    request_id,
                    response_to: 0,
                    flags,
                    body,
                    sequences,
                    body_pos,
                }
            },
        )
}

/// Runs every decoder and parser over `bytes`. Nothing may panic, and
/// Debug/Display of whatever comes out must not panic either.
fn exercise(bytes: &[u8], limit: usize) {
    let _ = format!("{:?}", sniff::foreign_protocol(bytes));
    exercise_message(bytes, limit);
    let mut buf = bytes::BytesMut::from(bytes);
    loop {
        let complete = complete_len(&buf, limit);
        match decode(&mut buf, limit) {
            Ok(Some(frame)) => {
                assert_eq!(complete, Ok(Some(frame.bytes.len())));
                assert_eq!(frame.bytes.len(), frame.header.message_length as usize);
                assert!(frame.bytes.len() <= limit.min(MAX));
                exercise_message(&frame.bytes, limit);
            }
            Ok(None) => {
                assert_eq!(complete, Ok(None));
                break;
            }
            Err(e) => {
                assert_eq!(complete, Err(e.clone()));
                let _ = e.to_string();
                break;
            }
        }
    }
}

fn exercise_message(m: &[u8], limit: usize) {
    match op_msg::parse(m) {
        Ok(msg) => {
            exercise_doc(msg.body);
            for s in &msg.sequences {
                for d in s.iter() {
                    exercise_doc(d.expect("parse validated the sequence"));
                }
            }
            let _ = format!("{msg:?}");
        }
        Err(e) => {
            let _ = (e.to_string(), format!("{e:?}"));
        }
    }
    if let Ok(q) = op_query::parse(m) {
        let _ = (q.db(), q.is_command(), format!("{q:?}"));
        exercise_doc(q.command());
    }
    if let Ok(r) = op_reply::parse(m) {
        for d in r.iter() {
            exercise_doc(d.expect("parse validated the documents"));
        }
    }
    let _ = op_compressed::parse(m, limit).map(|c| format!("{c:?}"));
    if let Ok(out) = op_compressed::decompress(m, limit) {
        assert!(out.len() <= limit.min(MAX));
        assert_ne!(
            mongotap_proto::Header::parse(&out).unwrap().op_code,
            OpCode::Compressed
        );
        exercise_message(&out, limit);
    }
}

const LIMITS: Limits = Limits {
    default_max_time_ms: Some(30_000),
    max_time_ms_cap: Some(60_000),
    allow_disk_use: true,
};

fn exercise_doc(doc: &RawDocument) {
    if let Ok(r) = ReplyView::parse(doc) {
        let _ = (r.is_error(), r.error_code(), format!("{r:?}"));
    }
    if let Ok(v) = CommandView::parse(doc) {
        let _ = (
            v.collection(),
            v.stages().count(),
            v.is_sensitive(),
            v.is_awaitable_hello(),
            v.explain_view().map(|e| e.collection()),
            format!("{v:?}"),
        );
        if let Ok(Some(new)) = rewrite(&v, &LIMITS) {
            check_rewrite(&v, &new);
        }
    }
}

/// What design.md asks of a rewritten body: valid BSON, the command name
/// still first, one maxTimeMS replaced in place, and the value in force is
/// the one a reader of the new body sees.
fn check_rewrite(before: &CommandView<'_>, new: &mongotap_proto::rewrite::Rewritten) {
    let doc = RawDocument::from_bytes(&new.body).expect("rewrite emits a valid document");
    let keys: Vec<&str> = doc
        .iter()
        .map(|kv| kv.expect("rewrite emits valid elements").0.as_str())
        .collect();
    assert_eq!(keys.first().copied(), Some(before.name));
    let view = CommandView::parse(doc).unwrap();
    let count = keys.iter().filter(|k| **k == "maxTimeMS").count();
    if new.changes.iter().any(|c| c.field == "maxTimeMS") {
        assert_eq!(count, 1);
    }
    // With duplicate keys (which the server refuses) the rewriter reads the
    // first maxTimeMS and CommandView the last, so compare only single ones.
    if let (Some(ms), 1) = (new.max_time_ms, count) {
        assert_eq!(view.max_time_ms, Some(ms));
    }
}

fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![Just(MAX), 0..64usize, 16..4096usize, Just(usize::MAX)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn op_msg_round_trips_through_split_reads(
        specs in vec(msg_spec(), 1..4),
        splits in vec(1..300usize, 0..64),
    ) {
        let messages: Vec<Vec<u8>> = specs.iter().map(MsgSpec::encode).collect();
        let stream = messages.concat();
        let frames = feed(&stream, splits, MAX).unwrap();
        prop_assert_eq!(frames.len(), specs.len());
        for ((frame, spec), m) in frames.iter().zip(&specs).zip(&messages) {
            prop_assert_eq!(&frame.bytes[..], &m[..]);
            prop_assert_eq!(frame.header.request_id, spec.request_id);
            prop_assert_eq!(frame.header.op_code, OpCode::Msg);
            spec.check(&frame.bytes);
        }
    }

    #[test]
    fn compressed_round_trips(spec in msg_spec(), id in 0u8..4) {
        let original = spec.encode();
        let c = Compressor::from_id(id).unwrap();
        let packed = op_compressed::compress(&original, c).unwrap();
        let out = op_compressed::decompress(&packed, MAX).unwrap();
        prop_assert_eq!(&out, &original);
        spec.check(&out);
    }

    #[test]
    fn command_view_reads_the_first_key(doc in raw_doc()) {
        match CommandView::parse(&doc) {
            Ok(v) => {
                let (first, _) = doc.iter().next().unwrap().unwrap();
                prop_assert_eq!(v.name, first.as_str());
                exercise_doc(&doc);
            }
            Err(_) => prop_assert!(doc.is_empty()),
        }
    }

    #[test]
    fn rewrites_keep_the_body_valid(doc in command_doc()) {
        let view = CommandView::parse(&doc).unwrap();
        for limits in [
            LIMITS,
            Limits { default_max_time_ms: Some(30_000), max_time_ms_cap: None, allow_disk_use: false },
            Limits { default_max_time_ms: None, max_time_ms_cap: Some(5), allow_disk_use: true },
            Limits { default_max_time_ms: Some(i64::MAX), max_time_ms_cap: None, allow_disk_use: true },
        ] {
            if let Some(new) = rewrite(&view, &limits).unwrap() {
                check_rewrite(&view, &new);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..600), limit in limit()) {
        exercise(&bytes, limit);
    }

    #[test]
    fn random_headers_never_panic(
        len in prop_oneof![any::<i32>(), 0..200i32],
        op in prop_oneof![Just(1), Just(2004), Just(2012), Just(2013), any::<i32>()],
        rest in vec(any::<u8>(), 0..300),
        limit in limit(),
    ) {
        let mut bytes = common::frame(op, 1, 0, &rest, 0);
        common::put_i32(&mut bytes, 0, len);
        exercise(&bytes, limit);
    }

    #[test]
    fn random_document_contents_never_panic(mid in vec(any::<u8>(), 0..200)) {
        // A valid length and terminator around random elements.
        let mut bytes = ((mid.len() + 5) as i32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&mid);
        bytes.push(0);
        let doc = RawDocument::from_bytes(&bytes).unwrap();
        exercise_doc(doc);
        let msg = common::build_msg(1, 0, &[Section::Raw(&[0]), Section::Raw(&bytes)]);
        exercise(&msg, MAX);
    }

    #[test]
    fn mutated_messages_never_panic(
        specs in vec(msg_spec(), 1..3),
        compress_with in proptest::option::of(0u8..4),
        flips in vec((any::<usize>(), 1..=255u8), 1..8),
        cut in any::<usize>(),
        limit in limit(),
    ) {
        let mut stream = Vec::new();
        for spec in &specs {
            let m = spec.encode();
            match compress_with {
                Some(id) => stream.extend(
                    op_compressed::compress(&m, Compressor::from_id(id).unwrap()).unwrap(),
                ),
                None => stream.extend(m),
            }
        }
        for (at, x) in flips {
            let i = at % stream.len();
            stream[i] ^= x;
        }
        stream.truncate(cut % (stream.len() + 1));
        exercise(&stream, limit);
    }
}
