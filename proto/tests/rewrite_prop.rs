//! Property tests for the rewrite guardrail (issue 5): random command
//! bodies, rewritten with random limits and parsed back.
//!
//! The expected body is built independently, as a `bson::Document` with the
//! same elements in the same order and only `maxTimeMS` / `allowDiskUse`
//! (or explain's inner `allowDiskUse`) changed, and must serialize to
//! exactly the rewritten bytes. That pins every other element's raw bytes,
//! the key order, the command name in first place, in-place replacement and
//! the numeric types. Rewritten bodies are then re-encoded as OP_MSG with
//! document sequences, whose bytes must survive unchanged with a valid CRC.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Document, RawDocument, RawDocumentBuf};
use mongotap_proto::command::as_i64;
use mongotap_proto::op_compressed::{self, Compressor};
use mongotap_proto::op_msg::{self, CHECKSUM_PRESENT, EXHAUST_ALLOWED, MORE_TO_COME};
use mongotap_proto::rewrite::{self, Limits, Rewritten};
use mongotap_proto::CommandView;
use proptest::collection::vec;
use proptest::prelude::*;
use std::collections::HashSet;

const REWRITABLE: [&str; 5] = ["aggregate", "find", "count", "distinct", "explain"];
const UNTOUCHED: [&str; 3] = ["getMore", "hello", "killCursors"];
const INNER: [&str; 4] = ["aggregate", "find", "count", "distinct"];

// ---------------------------------------------------------------- strategies

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z$_][a-zA-Z0-9_.]{0,10}",
        // Keys real commands carry, and look-alikes of the rewritten ones.
        prop::sample::select(vec![
            "$db",
            "lsid",
            "pipeline",
            "cursor",
            "filter",
            "comment",
            "maxtimems",
            "MaxTimeMS",
            "maxTimeMSX",
            "allowdiskuse",
            "allowDiskUseX",
            "txnNumber",
            "readConcern",
        ])
        .prop_map(str::to_string),
    ]
}

fn int64() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        (i64::MAX - 1000)..=i64::MAX,
        i64::MIN..=(i64::MIN + 1000),
        -5i64..5,
    ]
}

fn double() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN_POSITIVE,
            9.2e18,
            1e300,
        ]),
        (-1_000_000i64..1_000_000).prop_map(|i| i as f64),
    ]
}

fn leaf() -> impl Strategy<Value = Bson> {
    prop_oneof![
        any::<i32>().prop_map(Bson::Int32),
        int64().prop_map(Bson::Int64),
        double().prop_map(Bson::Double),
        ".{0,12}".prop_map(Bson::String),
        any::<bool>().prop_map(Bson::Boolean),
        Just(Bson::Null),
        Just(Bson::Undefined),
        Just(Bson::MinKey),
        Just(Bson::MaxKey),
        vec(any::<u8>(), 0..12).prop_map(|bytes| Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes
        })),
        any::<[u8; 12]>().prop_map(|b| Bson::ObjectId(bson::oid::ObjectId::from_bytes(b))),
        any::<i64>().prop_map(|ms| Bson::DateTime(bson::DateTime::from_millis(ms))),
        any::<[u8; 16]>().prop_map(|b| Bson::Decimal128(bson::Decimal128::from_bytes(b))),
        (any::<u32>(), any::<u32>())
            .prop_map(|(time, increment)| Bson::Timestamp(bson::Timestamp { time, increment })),
        ("[a-z.*]{0,6}", "[imsx]{0,3}").prop_map(|(p, o)| Bson::RegularExpression(bson::Regex {
            pattern: p.try_into().expect("no NUL"),
            options: o.try_into().expect("no NUL"),
        })),
        "[a-z =;]{0,10}".prop_map(Bson::JavaScriptCode),
    ]
}

fn bson_value() -> impl Strategy<Value = Bson> {
    leaf().prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Bson::Array),
            vec((key(), inner), 0..4).prop_map(|kv| Bson::Document(kv.into_iter().collect())),
        ]
    })
}

/// A maxTimeMS as clients send it, or something that only looks like one.
fn max_time() -> impl Strategy<Value = Option<Bson>> {
    prop_oneof![
        2 => Just(None),
        1 => prop_oneof![Just(0), Just(-1), 1i32..200_000, Just(i32::MAX), any::<i32>()]
            .prop_map(|v| Some(Bson::Int32(v))),
        1 => prop_oneof![Just(0i64), 1i64..200_000, int64()].prop_map(|v| Some(Bson::Int64(v))),
        1 => double().prop_map(|v| Some(Bson::Double(v))),
        // Not a number: the server's to reject, mongotap leaves it.
        1 => prop_oneof![
            Just(Bson::String("1000".into())),
            Just(Bson::Null),
            Just(Bson::Boolean(true)),
        ]
        .prop_map(Some),
    ]
}

fn allow_disk_use() -> impl Strategy<Value = Option<Bson>> {
    prop_oneof![
        2 => Just(None),
        1 => any::<bool>().prop_map(|b| Some(Bson::Boolean(b))),
        // Truthy non-booleans count as present too.
        1 => Just(Some(Bson::Int32(0))),
    ]
}

/// A command: its name and first value, then extras with maxTimeMS and
/// allowDiskUse (when present) at random positions among them.
fn command(name: impl Strategy<Value = &'static str>) -> impl Strategy<Value = Document> {
    (
        name,
        vec((key(), bson_value()), 0..6),
        max_time(),
        any::<prop::sample::Index>(),
        allow_disk_use(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(name, extras, mt, mt_at, adu, adu_at)| {
            build(
                name,
                first_value(name, None),
                extras,
                mt,
                mt_at,
                adu,
                adu_at,
            )
        })
}

fn first_value(name: &str, inner: Option<Document>) -> Bson {
    match name {
        "getMore" => Bson::Int64(i64::MAX - 7),
        "hello" => Bson::Int32(1),
        "explain" => Bson::Document(inner.unwrap_or_default()),
        _ => Bson::String("coll".into()),
    }
}

fn build(
    name: &str,
    first: Bson,
    extras: Vec<(String, Bson)>,
    mt: Option<Bson>,
    mt_at: prop::sample::Index,
    adu: Option<Bson>,
    adu_at: prop::sample::Index,
) -> Document {
    let reserved = [name, "maxTimeMS", "allowDiskUse"];
    let mut seen = HashSet::new();
    let mut fields: Vec<(String, Bson)> = extras
        .into_iter()
        .filter(|(k, _)| !reserved.contains(&k.as_str()) && seen.insert(k.clone()))
        .collect();
    if let Some(v) = mt {
        let at = mt_at.index(fields.len() + 1);
        fields.insert(at, ("maxTimeMS".into(), v));
    }
    if let Some(v) = adu {
        let at = adu_at.index(fields.len() + 1);
        fields.insert(at, ("allowDiskUse".into(), v));
    }
    let mut doc = Document::new();
    doc.insert(name, first);
    for (k, v) in fields {
        doc.insert(k, v);
    }
    doc
}

/// Any command, explain included (its inner command is random too).
fn any_command() -> impl Strategy<Value = Document> {
    prop_oneof![
        3 => command(prop::sample::select(REWRITABLE.to_vec())),
        1 => command(prop::sample::select(UNTOUCHED.to_vec())),
        2 => (
            command(prop::sample::select(INNER.to_vec())),
            vec((key(), bson_value()), 0..4),
            max_time(),
            any::<prop::sample::Index>(),
            // A stray top-level allowDiskUse, as a confused client might send.
            prop_oneof![4 => Just(None), 1 => Just(Some(Bson::Boolean(true)))],
            any::<prop::sample::Index>(),
        )
            .prop_map(|(inner, extras, mt, mt_at, adu, adu_at)| {
                let first = first_value("explain", Some(inner));
                build("explain", first, extras, mt, mt_at, adu, adu_at)
            }),
    ]
}

fn limit() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        1 => Just(None),
        3 => (1i64..300_000).prop_map(Some),
        1 => prop_oneof![
            Just(i32::MAX as i64),
            Just(i32::MAX as i64 + 1),
            (i32::MAX as i64)..i64::MAX,
            Just(i64::MAX),
        ]
        .prop_map(Some),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    (limit(), limit(), any::<bool>()).prop_map(|(default_max_time_ms, max_time_ms_cap, adu)| {
        Limits {
            default_max_time_ms,
            max_time_ms_cap,
            allow_disk_use: adu,
        }
    })
}

// ------------------------------------------------------------------ oracle

/// How the server reads a maxTimeMS: an integer, or an integral double.
/// `None` for anything else (mongotap leaves it for the server to reject).
fn numeric(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e18 => Some(*d as i64),
        _ => None,
    }
}

/// The maxTimeMS the rule should put in place of `current`, or `None` to
/// leave it alone.
fn expected_max_time(current: Option<&Bson>, l: &Limits) -> Option<i64> {
    let target = match current {
        None => l
            .default_max_time_ms
            .map(|d| l.max_time_ms_cap.map_or(d, |c| d.min(c)))
            .or(l.max_time_ms_cap),
        Some(v) => match numeric(v) {
            Some(cur) => l.max_time_ms_cap.filter(|&c| cur <= 0 || cur > c),
            None => None,
        },
    };
    target.filter(|&v| v > 0)
}

/// The new value typed like the old one: a double stays a double (when it
/// holds the value exactly), an int64 stays an int64, otherwise int32 when
/// it fits.
fn typed(current: Option<&Bson>, v: i64) -> Bson {
    match current {
        Some(Bson::Double(_)) if (v as f64) as i128 == i128::from(v) => Bson::Double(v as f64),
        Some(Bson::Int64(_)) => Bson::Int64(v),
        _ => i32::try_from(v).map_or(Bson::Int64(v), Bson::Int32),
    }
}

fn name_of(doc: &Document) -> &str {
    doc.keys().next().map(String::as_str).unwrap_or("")
}

/// What the rewrite must produce: every element in place, the changed ones
/// replaced where they stand, absent ones appended (in either order).
struct Expected {
    max_time: Option<i64>,
    /// allowDiskUse goes on the command itself.
    adu_top: bool,
    /// allowDiskUse goes into explain's inner command.
    adu_inner: bool,
    /// The candidate bodies (appended fields may come in either order).
    bodies: Vec<Vec<u8>>,
}

fn expected(doc: &Document, l: &Limits) -> Expected {
    let name = name_of(doc);
    if UNTOUCHED.contains(&name) {
        return Expected {
            max_time: None,
            adu_top: false,
            adu_inner: false,
            bodies: vec![],
        };
    }
    let current = doc.get("maxTimeMS");
    let max_time = expected_max_time(current, l);
    let accepts = |n: &str| n == "aggregate" || n == "find";
    let adu_top = l.allow_disk_use && accepts(name) && !doc.contains_key("allowDiskUse");
    let inner = match (name, doc.get("explain")) {
        ("explain", Some(Bson::Document(inner))) => Some(inner),
        _ => None,
    };
    let adu_inner = l.allow_disk_use
        && inner.is_some_and(|i| accepts(name_of(i)) && !i.contains_key("allowDiskUse"));

    let mut in_place = Document::new();
    for (k, v) in doc {
        let v = match k.as_str() {
            "maxTimeMS" => max_time.map_or_else(|| v.clone(), |n| typed(Some(v), n)),
            "explain" if adu_inner => {
                let mut i = inner.cloned().unwrap_or_default();
                i.insert("allowDiskUse", true);
                Bson::Document(i)
            }
            _ => v.clone(),
        };
        in_place.insert(k.clone(), v);
    }
    let mut appended: Vec<(&str, Bson)> = Vec::new();
    if current.is_none() {
        if let Some(n) = max_time {
            appended.push(("maxTimeMS", typed(None, n)));
        }
    }
    if adu_top {
        appended.push(("allowDiskUse", Bson::Boolean(true)));
    }
    let mut orders = vec![appended.clone()];
    if appended.len() == 2 {
        appended.reverse();
        orders.push(appended);
    }
    let bodies = orders
        .into_iter()
        .map(|tail| {
            let mut d = in_place.clone();
            for (k, v) in tail {
                d.insert(k, v);
            }
            bytes(&d)
        })
        .collect();
    Expected {
        max_time,
        adu_top,
        adu_inner,
        bodies,
    }
}

fn bytes(doc: &Document) -> Vec<u8> {
    RawDocumentBuf::try_from(doc)
        .expect("keys have no NUL")
        .into_bytes()
}

fn keys(doc: &RawDocument) -> Vec<String> {
    doc.iter_elements()
        .map(|e| e.expect("valid element").key().as_str().to_string())
        .collect()
}

/// Asserts every property of one rewrite, returning it.
fn check(doc: &Document, l: &Limits) -> Result<Option<Rewritten>, TestCaseError> {
    let raw = RawDocumentBuf::try_from(doc).expect("keys have no NUL");
    let view = CommandView::parse(&raw).expect("a command parses");
    let rw = rewrite::rewrite(&view, l).expect("a valid command rewrites");
    let exp = expected(doc, l);
    let changes_expected = exp.max_time.is_some() || exp.adu_top || exp.adu_inner;
    let Some(rw) = rw else {
        prop_assert!(
            !changes_expected,
            "nothing rewritten, expected {:?} / adu {} / inner adu {}",
            exp.max_time,
            exp.adu_top,
            exp.adu_inner
        );
        return Ok(None);
    };
    prop_assert!(changes_expected, "rewrote a command that needs nothing");
    prop_assert!(
        !UNTOUCHED.contains(&name_of(doc)),
        "{} must never be rewritten",
        name_of(doc)
    );

    // Exactly the expected bytes: everything else identical and in order.
    prop_assert!(
        exp.bodies.contains(&rw.body),
        "rewritten body differs from the expected one\n  got      {:?}\n  expected {:?}",
        RawDocument::from_bytes(&rw.body).map(|d| d.to_owned()),
        exp.bodies
            .iter()
            .map(|b| RawDocument::from_bytes(b).map(|d| d.to_owned()))
            .collect::<Vec<_>>()
    );

    // The same facts, stated directly.
    let out = RawDocument::from_bytes(&rw.body).expect("rewritten body is a document");
    let out_keys = keys(out);
    prop_assert_eq!(out_keys.first().map(String::as_str), Some(name_of(doc)));
    let unique: HashSet<&String> = out_keys.iter().collect();
    prop_assert_eq!(
        unique.len(),
        out_keys.len(),
        "duplicate keys in {:?}",
        out_keys
    );
    let before = doc.get("maxTimeMS");
    let after = out.get("maxTimeMS").expect("valid").and_then(as_i64);
    if let (Some(b), Some(a)) = (before.and_then(numeric), after) {
        prop_assert!(b <= 0 || a <= b, "maxTimeMS raised from {} to {}", b, a);
    }
    if let (Some(cap), Some(a), Some(_)) = (l.max_time_ms_cap, after, exp.max_time) {
        prop_assert!(a <= cap, "maxTimeMS {} is above the cap {}", a, cap);
    }
    if let Some(pos) = doc.keys().position(|k| k == "maxTimeMS") {
        prop_assert_eq!(
            out_keys.iter().position(|k| k == "maxTimeMS"),
            Some(pos),
            "maxTimeMS was moved instead of replaced in place"
        );
    }
    if let Some(Bson::Document(inner)) = doc.get("explain") {
        let out_inner = out
            .get_document("explain")
            .expect("explain stays a document");
        prop_assert_eq!(
            out_inner.get("maxTimeMS").expect("valid").and_then(as_i64),
            inner.get("maxTimeMS").and_then(numeric),
            "explain's inner maxTimeMS must not change"
        );
        prop_assert!(
            !exp.adu_inner
                || out.get("allowDiskUse").expect("valid").is_none()
                || doc.contains_key("allowDiskUse"),
            "allowDiskUse added to explain's outer document"
        );
    }

    // What the rewrite reports.
    let mut fields: Vec<&str> = rw.changes.iter().map(|c| c.field).collect();
    fields.sort_unstable();
    let mut want = Vec::new();
    if exp.adu_top || exp.adu_inner {
        want.push("allowDiskUse");
    }
    if exp.max_time.is_some() {
        want.push("maxTimeMS");
    }
    prop_assert_eq!(fields, want);
    for c in &rw.changes {
        if c.field == "maxTimeMS" {
            prop_assert_eq!(c.before, before.and_then(numeric));
            prop_assert_eq!(Some(c.after), exp.max_time);
        }
    }
    let in_force = exp
        .max_time
        .or_else(|| before.and_then(numeric).filter(|&v| v > 0));
    prop_assert_eq!(rw.max_time_ms, in_force);
    Ok(Some(rw))
}

// ----------------------------------------------------------------- OP_MSG

/// An OP_MSG built by hand (not by the crate's encoder): sections in the
/// given order, CRC-32C appended when the flag asks for one.
fn frame(flags: u32, body: &[u8], seqs: &[(String, Vec<u8>)], body_at: usize) -> Vec<u8> {
    let mut sections: Vec<Vec<u8>> = seqs
        .iter()
        .map(|(id, docs)| {
            let mut s = vec![1];
            let size = (4 + id.len() + 1 + docs.len()) as i32;
            s.extend_from_slice(&size.to_le_bytes());
            s.extend_from_slice(id.as_bytes());
            s.push(0);
            s.extend_from_slice(docs);
            s
        })
        .collect();
    let mut b = vec![0];
    b.extend_from_slice(body);
    sections.insert(body_at.min(sections.len()), b);
    let mut out = Vec::new();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&77i32.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&2013i32.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    for s in sections {
        out.extend_from_slice(&s);
    }
    let len = out.len() as i32 + if flags & CHECKSUM_PRESENT != 0 { 4 } else { 0 };
    out[..4].copy_from_slice(&len.to_le_bytes());
    if flags & CHECKSUM_PRESENT != 0 {
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    out
}

fn sequence() -> impl Strategy<Value = (String, Vec<u8>)> {
    (
        prop::sample::select(vec!["documents", "updates", "deletes", "ops", "nsInfo"]),
        vec(vec((key(), leaf()), 0..4), 0..4),
    )
        .prop_map(|(id, docs)| {
            let mut concatenated = Vec::new();
            for kv in docs {
                concatenated.extend(bytes(&kv.into_iter().collect()));
            }
            (id.to_string(), concatenated)
        })
}

proptest! {
    // Failures print their minimal input; no regressions file is written.
    // PROPTEST_CASES raises the count for a longer local run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Only maxTimeMS / allowDiskUse change; everything else is the same bytes.
    #[test]
    fn rewrite_changes_only_the_guarded_fields(doc in any_command(), l in limits()) {
        check(&doc, &l)?;
    }

    /// A rewrite of a rewrite changes nothing more: the result already
    /// satisfies the rule.
    #[test]
    fn rewrite_is_idempotent(doc in any_command(), l in limits()) {
        if let Some(rw) = check(&doc, &l)? {
            let raw = RawDocument::from_bytes(&rw.body).expect("document");
            let view = CommandView::parse(raw).expect("parses");
            let again = rewrite::rewrite(&view, &l).expect("rewrites");
            prop_assert!(again.is_none(), "second rewrite changed {:?}", again.map(|r| r.changes));
        }
    }

    /// Limits outside what config validation allows (0, negative, default
    /// above cap) still never raise a value, never inject 0 or less, and
    /// never duplicate a key.
    #[test]
    fn odd_limits_never_raise(
        doc in any_command(),
        default in prop::option::of(any::<i64>()),
        cap in prop::option::of(any::<i64>()),
        adu in any::<bool>(),
    ) {
        let l = Limits { default_max_time_ms: default, max_time_ms_cap: cap, allow_disk_use: adu };
        let raw = RawDocumentBuf::try_from(&doc).expect("raw");
        let view = CommandView::parse(&raw).expect("parses");
        if let Some(rw) = rewrite::rewrite(&view, &l).expect("rewrites") {
            let out = RawDocument::from_bytes(&rw.body).expect("document");
            let out_keys = keys(out);
            let unique: HashSet<&String> = out_keys.iter().collect();
            prop_assert_eq!(unique.len(), out_keys.len());
            prop_assert_eq!(out_keys.first().map(String::as_str), Some(name_of(&doc)));
            let after = out.get("maxTimeMS").expect("valid").and_then(as_i64);
            match (doc.get("maxTimeMS").and_then(numeric), after) {
                (Some(b), Some(a)) if b > 0 => prop_assert!(a <= b),
                (None, Some(a)) if doc.get("maxTimeMS").is_none() => prop_assert!(a > 0),
                _ => {}
            }
        }
    }

    /// Re-encoding a rewritten OP_MSG keeps its ids, flags and document
    /// sequences byte for byte, and a checksum, when flagged, is valid.
    #[test]
    fn op_msg_reencode_keeps_sequences_and_crc(
        doc in any_command(),
        l in limits(),
        seqs in vec(sequence(), 0..3),
        body_at in 0usize..4,
        checksum in any::<bool>(),
        more_to_come in any::<bool>(),
        exhaust in any::<bool>(),
    ) {
        let flags = if checksum { CHECKSUM_PRESENT } else { 0 }
            | if more_to_come { MORE_TO_COME } else { 0 }
            | if exhaust { EXHAUST_ALLOWED } else { 0 };
        let original = frame(flags, &bytes(&doc), &seqs, body_at);
        let msg = op_msg::parse(&original).expect("hand-built frame parses");
        let view = CommandView::parse(msg.body).expect("command");
        let Some(rw) = rewrite::rewrite(&view, &l).expect("rewrites") else {
            return Ok(());
        };
        let body = RawDocument::from_bytes(&rw.body).expect("document");
        let encoded = op_msg::encode(77, 0, msg.flags, body, &msg.sequences);

        // The header: same ids and opcode, messageLength is the real length.
        let len = i32::from_le_bytes(encoded[..4].try_into().expect("4 bytes"));
        prop_assert_eq!(len as usize, encoded.len());
        prop_assert_eq!(&encoded[4..16], &original[4..16]);
        if checksum {
            let end = encoded.len() - 4;
            let crc = u32::from_le_bytes(encoded[end..].try_into().expect("4 bytes"));
            prop_assert_eq!(crc, crc32c::crc32c(&encoded[..end]));
        }
        // `parse` checks the CRC again.
        let back = op_msg::parse(&encoded).expect("re-encoded frame parses");
        prop_assert_eq!(back.flags, flags);
        prop_assert_eq!(back.body.as_bytes(), &rw.body[..]);
        prop_assert_eq!(back.sequences.len(), seqs.len());
        for (got, (id, docs)) in back.sequences.iter().zip(&seqs) {
            prop_assert_eq!(got.identifier, id.as_str());
            prop_assert_eq!(got.documents, &docs[..]);
        }
        // Sizes add up: only the body's length changed.
        let growth = rw.body.len() as isize - msg.body.as_bytes().len() as isize;
        prop_assert_eq!(encoded.len() as isize, original.len() as isize + growth);

        // Re-compressed with any compressor, it decompresses to the same.
        for c in [Compressor::Noop, Compressor::Snappy, Compressor::Zlib, Compressor::Zstd] {
            let packed = op_compressed::compress(&encoded, c).expect("compress");
            let parsed = op_compressed::parse(&packed, mongotap_proto::MAX_MESSAGE_LEN)
                .expect("compressed parses");
            prop_assert_eq!(parsed.compressor, c);
            let unpacked = op_compressed::decompress(&packed, mongotap_proto::MAX_MESSAGE_LEN)
                .expect("decompress");
            prop_assert_eq!(&unpacked, &encoded);
        }
    }
}

// ------------------------------------------------------- fixed examples

fn rw(doc: &Document, l: Limits) -> Option<Document> {
    let raw = RawDocumentBuf::try_from(doc).expect("raw");
    let view = CommandView::parse(&raw).expect("parses");
    rewrite::rewrite(&view, &l)
        .expect("rewrites")
        .map(|r| Document::try_from(RawDocument::from_bytes(&r.body).expect("doc")).expect("doc"))
}

const CAP: Limits = Limits {
    default_max_time_ms: Some(1000),
    max_time_ms_cap: Some(5000),
    allow_disk_use: true,
};

#[test]
fn duplicate_max_time_ms_becomes_one() {
    // A `Document` cannot hold a duplicate; build it on the wire.
    let mut raw = RawDocumentBuf::new();
    raw.append(bson::raw::cstr!("find"), "c");
    raw.append(bson::raw::cstr!("maxTimeMS"), 0);
    raw.append(bson::raw::cstr!("filter"), RawDocumentBuf::new());
    raw.append(bson::raw::cstr!("maxTimeMS"), 9000);
    let view = CommandView::parse(&raw).expect("parses");
    let out = rewrite::rewrite(&view, &CAP)
        .expect("rewrites")
        .expect("changed");
    let out = RawDocument::from_bytes(&out.body).expect("doc");
    assert_eq!(
        keys(out),
        ["find", "maxTimeMS", "filter", "allowDiskUse"],
        "the duplicate maxTimeMS is dropped, not left beside the new one"
    );
    assert_eq!(out.get_i32("maxTimeMS").expect("int32"), 5000);
}

#[test]
fn explain_with_an_empty_inner_command_is_left_to_the_server() {
    // `{explain: {}}` is valid BSON; the server answers it with an error.
    // A rewrite must not fail on it (a failure closes the connection).
    let doc = bson::doc! { "explain": {}, "$db": "d" };
    let raw = RawDocumentBuf::try_from(&doc).expect("raw");
    let view = CommandView::parse(&raw).expect("parses");
    let out = rewrite::rewrite(&view, &CAP).expect("an empty explain does not fail the rewrite");
    let out = out.expect("maxTimeMS is still injected at the top level");
    let out = Document::try_from(RawDocument::from_bytes(&out.body).expect("doc")).expect("doc");
    assert_eq!(
        out,
        bson::doc! { "explain": {}, "$db": "d", "maxTimeMS": 1000 }
    );
}

#[test]
fn never_rewritten_commands_stay_untouched() {
    for name in [
        "getMore",
        "killCursors",
        "hello",
        "isMaster",
        "ismaster",
        "saslStart",
        "saslContinue",
        "authenticate",
        "endSessions",
        "commitTransaction",
        "abortTransaction",
    ] {
        let doc = bson::doc! { name: 1, "$db": "admin" };
        assert_eq!(rw(&doc, CAP), None, "{name} was rewritten");
    }
}

#[test]
fn count_and_distinct_get_max_time_but_no_allow_disk_use() {
    for name in ["count", "distinct"] {
        let doc = bson::doc! { name: "c", "$db": "d" };
        assert_eq!(
            rw(&doc, CAP),
            Some(bson::doc! { name: "c", "$db": "d", "maxTimeMS": 1000 })
        );
    }
}

#[test]
fn explain_forms() {
    let doc = bson::doc! {
        "explain": { "aggregate": "c", "pipeline": [], "cursor": {} },
        "verbosity": "queryPlanner",
        "maxTimeMS": 60_000,
        "$db": "d",
    };
    assert_eq!(
        rw(&doc, CAP),
        Some(bson::doc! {
            "explain": { "aggregate": "c", "pipeline": [], "cursor": {}, "allowDiskUse": true },
            "verbosity": "queryPlanner",
            "maxTimeMS": 5000,
            "$db": "d",
        })
    );
    let doc = bson::doc! { "explain": { "find": "c", "filter": {} }, "$db": "d" };
    assert_eq!(
        rw(&doc, CAP),
        Some(bson::doc! {
            "explain": { "find": "c", "filter": {}, "allowDiskUse": true },
            "$db": "d",
            "maxTimeMS": 1000,
        })
    );
    // An explained count gets maxTimeMS only.
    let doc = bson::doc! { "explain": { "count": "c" }, "$db": "d" };
    assert_eq!(
        rw(&doc, CAP),
        Some(bson::doc! { "explain": { "count": "c" }, "$db": "d", "maxTimeMS": 1000 })
    );
}

#[test]
fn types_are_kept() {
    let cap = Limits {
        default_max_time_ms: None,
        max_time_ms_cap: Some(5000),
        allow_disk_use: false,
    };
    let cases = [
        (Bson::Int32(0), Bson::Int32(5000)),
        (Bson::Int64(9_000), Bson::Int64(5000)),
        (Bson::Int64(0), Bson::Int64(5000)),
        (Bson::Double(9_000.0), Bson::Double(5000.0)),
        (Bson::Double(0.0), Bson::Double(5000.0)),
    ];
    for (before, after) in cases {
        let doc = bson::doc! { "find": "c", "maxTimeMS": before.clone(), "$db": "d" };
        assert_eq!(
            rw(&doc, cap),
            Some(bson::doc! { "find": "c", "maxTimeMS": after, "$db": "d" }),
            "{before:?}"
        );
    }
    // A double that cannot hold the cap exactly would round above it.
    let odd = Limits {
        default_max_time_ms: None,
        max_time_ms_cap: Some(102_782_365_525_498_153),
        allow_disk_use: false,
    };
    let doc = bson::doc! { "find": "c", "maxTimeMS": 0.0, "$db": "d" };
    assert_eq!(
        rw(&doc, odd),
        Some(bson::doc! { "find": "c", "maxTimeMS": 102_782_365_525_498_153i64, "$db": "d" })
    );
    // A smaller value is kept as it is.
    let doc = bson::doc! { "find": "c", "maxTimeMS": 10i64, "$db": "d" };
    assert_eq!(rw(&doc, cap), None);
    // An int32 grows to int64 only when the value needs it.
    let big = Limits {
        default_max_time_ms: None,
        max_time_ms_cap: Some(i32::MAX as i64 + 1),
        allow_disk_use: false,
    };
    let doc = bson::doc! { "find": "c", "maxTimeMS": 0, "$db": "d" };
    assert_eq!(
        rw(&doc, big),
        Some(bson::doc! { "find": "c", "maxTimeMS": i32::MAX as i64 + 1, "$db": "d" })
    );
}
