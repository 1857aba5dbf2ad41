//! The rewrite guardrail (issue 5) through the real binary: a raw client
//! sends hand-built frames to mongotap, and a scripted upstream records the
//! exact bytes that reach it. Each case compares those bytes with a frame
//! built independently from the expected command document, so an extra,
//! missing, moved or retyped byte anywhere fails the test.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/scripted.rs"]
mod scripted;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bson::{rawdoc, RawDocumentBuf};
use mongotap_proto::op_compressed::{self, Compressor};
use mongotap_proto::op_msg::{self, DocSequence, CHECKSUM_PRESENT, MORE_TO_COME};
use mongotap_proto::OpCode;
use scripted::{next_id, RawClient, Received, Scripted, Step};
use serde_json::Value;
use support::{signal, Mongotap};

const WAIT: Duration = Duration::from_secs(10);

/// aggregate, find, count and insert on `shop.*`: 1 s by default, capped
/// at 5 s, allowDiskUse where the command takes it.
const ENFORCE: &str = r#"
[rewrite]
mode = "enforce"

[[rewrite.rule]]
commands = ["aggregate", "find", "count", "insert"]
namespaces = ["shop.*"]
default_max_time_ms = 1000
max_time_ms_cap = 5000
allow_disk_use = true
"#;

/// A scripted upstream, a config file and mongotap between them.
struct Setup {
    upstream: Scripted,
    proxy: Mongotap,
    config: PathBuf,
    /// Holds the config file.
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start(toml: &str) -> Setup {
        Setup::with_upstream(toml, Scripted::ok().await).await
    }

    async fn with_upstream(toml: &str, upstream: Scripted) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("mongotap.toml");
        std::fs::write(&config, toml).expect("write config");
        let path = config.to_str().expect("utf-8 path").to_owned();
        let addr = upstream.addr;
        let proxy =
            tokio::task::spawn_blocking(move || Mongotap::start_with(addr, &["--config", &path]))
                .await
                .expect("start mongotap");
        Setup {
            upstream,
            proxy,
            config,
            _dir: dir,
        }
    }

    async fn client(&self) -> RawClient {
        RawClient::connect(self.proxy.listen).await
    }

    /// Sends `frame` (whose requestID is `id`), reads the reply unless the
    /// request has moreToCome, and returns what the upstream received.
    async fn roundtrip(&self, client: &mut RawClient, id: i32, frame: &[u8]) -> Received {
        client.send(frame).await;
        let more_to_come = frame_flags(frame) & MORE_TO_COME != 0;
        if !more_to_come {
            let reply = client.recv(WAIT).await.expect("a reply through mongotap");
            let header = mongotap_proto::Header::parse(&reply).expect("reply header");
            assert_eq!(header.response_to, id, "reply answers the request");
        }
        self.upstream
            .wait_for(|r| r.header.request_id == id, WAIT)
            .await
    }

    /// Sends a plain OP_MSG command and returns the frame the upstream got.
    async fn send(&self, client: &mut RawClient, body: &RawDocumentBuf) -> (Vec<u8>, Vec<u8>) {
        let id = next_id();
        let frame = op_msg::encode(id, 0, 0, body, &[]);
        let got = self.roundtrip(client, id, &frame).await;
        (frame, got.raw)
    }
}

/// The OP_MSG flag bits of a frame, looking inside OP_COMPRESSED.
fn frame_flags(frame: &[u8]) -> u32 {
    let header = mongotap_proto::Header::parse(frame).expect("header");
    if header.op_code == OpCode::Compressed {
        let inner =
            op_compressed::decompress(frame, mongotap_proto::MAX_MESSAGE_LEN).expect("decompress");
        return op_msg::flags(&inner).expect("flags");
    }
    op_msg::flags(frame).unwrap_or(0)
}

/// The frame the upstream must receive: `expected` as the body, the
/// client's ids, flags and sequences.
fn expected_frame(id: i32, flags: u32, expected: &RawDocumentBuf, seqs: &[DocSequence]) -> Vec<u8> {
    op_msg::encode(id, 0, flags, expected, seqs)
}

fn show(frame: &[u8]) -> String {
    match op_msg::parse(frame) {
        Ok(m) => format!("flags {:#x} body {:?}", m.flags, m.body.to_owned()),
        Err(e) => format!("unparsable ({e}): {frame:?}"),
    }
}

#[track_caller]
fn assert_frame(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: the upstream received different bytes\n  got  {}\n  want {}",
        show(got),
        show(want)
    );
}

/// Sends `body` and asserts the upstream got `expected` as the body, with
/// everything else (ids, flags, length) as the client sent it.
async fn assert_rewritten(
    s: &Setup,
    c: &mut RawClient,
    body: RawDocumentBuf,
    expected: RawDocumentBuf,
) {
    let id = next_id();
    let frame = op_msg::encode(id, 0, 0, &body, &[]);
    let got = s.roundtrip(c, id, &frame).await;
    let want = expected_frame(id, 0, &expected, &[]);
    assert_frame(&got.raw, &want, &format!("{body:?}"));
}

/// Sends `body` and asserts the upstream got the very same bytes.
async fn assert_untouched(s: &Setup, c: &mut RawClient, body: RawDocumentBuf) {
    let (sent, got) = s.send(c, &body).await;
    assert_frame(&got, &sent, &format!("{body:?} must be forwarded as sent"));
}

// ---------------------------------------------------------------- values

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_max_time_ms_is_injected_as_int32() {
    let s = Setup::start(ENFORCE).await;
    let mut c = s.client().await;
    assert_rewritten(
        &s,
        &mut c,
        rawdoc! { "aggregate": "orders", "pipeline": [{ "$match": { "x": 1 } }], "cursor": {}, "$db": "shop" },
        rawdoc! {
            "aggregate": "orders", "pipeline": [{ "$match": { "x": 1 } }], "cursor": {}, "$db": "shop",
            "maxTimeMS": 1000, "allowDiskUse": true,
        },
    )
    .await;
    assert_rewritten(
        &s,
        &mut c,
        rawdoc! { "find": "orders", "filter": { "a": { "$gt": 5i64 } }, "$db": "shop" },
        rawdoc! {
            "find": "orders", "filter": { "a": { "$gt": 5i64 } }, "$db": "shop",
            "maxTimeMS": 1000, "allowDiskUse": true,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_value_is_kept_byte_for_byte() {
    let s = Setup::start(ENFORCE).await;
    let mut c = s.client().await;
    // Below the cap, and an explicit allowDiskUse: false is the client's.
    assert_untouched(
        &s,
        &mut c,
        rawdoc! { "find": "orders", "maxTimeMS": 200, "filter": {}, "allowDiskUse": false, "$db": "shop" },
    )
    .await;
    // Exactly the cap counts as not larger.
    assert_untouched(
        &s,
        &mut c,
        rawdoc! { "aggregate": "orders", "pipeline": [], "cursor": {}, "allowDiskUse": true, "maxTimeMS": 5000i64, "$db": "shop" },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larger_values_and_zero_are_capped_in_place() {
    let s = Setup::start(ENFORCE).await;
    let mut c = s.client().await;
    for before in [90_000, 0, 5001, i32::MAX] {
        assert_rewritten(
            &s,
            &mut c,
            rawdoc! { "find": "orders", "maxTimeMS": before, "filter": {}, "allowDiskUse": false, "$db": "shop" },
            rawdoc! { "find": "orders", "maxTimeMS": 5000, "filter": {}, "allowDiskUse": false, "$db": "shop" },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int64_stays_int64_and_double_stays_double() {
    let s = Setup::start(ENFORCE).await;
    let mut c = s.client().await;
    for before in [90_000i64, 0, i64::MAX] {
        assert_rewritten(
            &s,
            &mut c,
            rawdoc! { "aggregate": "orders", "pipeline": [], "maxTimeMS": before, "cursor": {}, "allowDiskUse": true, "$db": "shop" },
            rawdoc! { "aggregate": "orders", "pipeline": [], "maxTimeMS": 5000i64, "cursor": {}, "allowDiskUse": true, "$db": "shop" },
        )
        .await;
    }
    for before in [90_000.0, 0.0] {
        assert_rewritten(
            &s,
            &mut c,
            rawdoc! { "aggregate": "orders", "pipeline": [], "maxTimeMS": before, "cursor": {}, "allowDiskUse": true, "$db": "shop" },
            rawdoc! { "aggregate": "orders", "pipeline": [], "maxTimeMS": 5000.0, "cursor": {}, "allowDiskUse": true, "$db": "shop" },
        )
        .await;
    }
    // A non-integral double is the server's to reject: forwarded as sent.
    assert_untouched(
        &s,
        &mut c,
        rawdoc! { "find": "orders", "maxTimeMS": 90_000.5, "allowDiskUse": true, "$db": "shop" },
    )
    .await;
}

// -------------------------------------------------------------- commands

/// A catch-all rule (`commands = ["*"]`) still never touches getMore,
/// killCursors, the handshake or authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getmore_killcursors_hello_and_auth_are_never_touched() {
    let s = Setup::start(
        r#"
[rewrite]
mode = "enforce"
[[rewrite.rule]]
commands = ["*"]
default_max_time_ms = 1000
max_time_ms_cap = 5000
allow_disk_use = true
"#,
    )
    .await;
    let mut c = s.client().await;
    for body in [
        rawdoc! { "hello": 1, "client": { "application": { "name": "shop-app" } }, "$db": "admin" },
        rawdoc! { "isMaster": 1, "$db": "admin" },
        rawdoc! { "getMore": 8_070_450_532_247_928_832i64, "collection": "orders", "$db": "shop" },
        rawdoc! { "getMore": 12i64, "collection": "orders", "maxTimeMS": 90_000, "$db": "shop" },
        rawdoc! { "killCursors": "orders", "cursors": [12i64], "$db": "shop" },
        rawdoc! { "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": "", "$db": "admin" },
        rawdoc! { "endSessions": [], "$db": "admin" },
    ] {
        assert_untouched(&s, &mut c, body).await;
    }
    // The same rule does apply to everything else.
    assert_rewritten(
        &s,
        &mut c,
        rawdoc! { "ping": 1, "$db": "admin" },
        rawdoc! { "ping": 1, "$db": "admin", "maxTimeMS": 1000 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_gets_max_time_ms_but_no_allow_disk_use() {
    let s = Setup::start(ENFORCE).await;
    let mut c = s.client().await;
    assert_rewritten(
        &s,
        &mut c,
        rawdoc! { "count": "orders", "query": { "a": 1 }, "$db": "shop" },
        rawdoc! { "count": "orders", "query": { "a": 1 }, "$db": "shop", "maxTimeMS": 1000 },
    )
    .await;
    assert_rewritten(
        &s,
        &mut c,
        rawdoc! { "count": "orders", "maxTimeMS": 0, "$db": "shop" },
        rawdoc! { "count": "orders", "maxTimeMS": 5000, "$db": "shop" },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_gets_max_time_ms_on_top_and_allow_disk_use_inside() {
    let s = Setup::start(ENFORCE).await;
    let mut c = s.client().await;
    // {explain: {aggregate}, maxTimeMS}: the top-level value is capped, the
    // inner command gets allowDiskUse, verbosity stays where it is.
    assert_rewritten(
        &s,
        &mut c,
        rawdoc! {
            "explain": { "aggregate": "orders", "pipeline": [{ "$group": { "_id": "$k" } }], "cursor": {} },
            "verbosity": "executionStats",
            "maxTimeMS": 60_000,
            "$db": "shop",
        },
        rawdoc! {
            "explain": { "aggregate": "orders", "pipeline": [{ "$group": { "_id": "$k" } }], "cursor": {}, "allowDiskUse": true },
            "verbosity": "executionStats",
            "maxTimeMS": 5000,
            "$db": "shop",
        },
    )
    .await;
    // {explain: {find}}: maxTimeMS is injected at the top level only.
    assert_rewritten(
        &s,
        &mut c,
        rawdoc! { "explain": { "find": "orders", "filter": {} }, "$db": "shop" },
        rawdoc! {
            "explain": { "find": "orders", "filter": {}, "allowDiskUse": true },
            "$db": "shop",
            "maxTimeMS": 1000,
        },
    )
    .await;
    // An inner allowDiskUse: false is the client's choice.
    assert_rewritten(
        &s,
        &mut c,
        rawdoc! { "explain": { "find": "orders", "allowDiskUse": false }, "$db": "shop" },
        rawdoc! { "explain": { "find": "orders", "allowDiskUse": false }, "$db": "shop", "maxTimeMS": 1000 },
    )
    .await;
    // An explained count gets no allowDiskUse anywhere.
    assert_rewritten(
        &s,
        &mut c,
        rawdoc! { "explain": { "count": "orders" }, "$db": "shop" },
        rawdoc! { "explain": { "count": "orders" }, "$db": "shop", "maxTimeMS": 1000 },
    )
    .await;
}

/// `{explain: {}}` is valid BSON the server rejects with an error; a rule
/// that applies to it must not close the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_explain_is_forwarded_not_fatal() {
    let s = Setup::start(
        r#"
[rewrite]
mode = "enforce"
[[rewrite.rule]]
commands = ["*"]
default_max_time_ms = 1000
allow_disk_use = true
"#,
    )
    .await;
    let mut c = s.client().await;
    assert_rewritten(
        &s,
        &mut c,
        rawdoc! { "explain": {}, "$db": "shop" },
        rawdoc! { "explain": {}, "$db": "shop", "maxTimeMS": 1000 },
    )
    .await;
    assert_eq!(
        c.command(&rawdoc! { "ping": 1, "$db": "admin" })
            .await
            .get_f64("ok")
            .ok(),
        Some(1.0),
        "the connection is still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_no_rule_names_are_byte_identical() {
    let s = Setup::start(ENFORCE).await;
    let mut c = s.client().await;
    // A command the rule does not list.
    assert_untouched(
        &s,
        &mut c,
        rawdoc! { "distinct": "orders", "key": "k", "$db": "shop" },
    )
    .await;
    // A listed command on a namespace the rule does not match.
    assert_untouched(
        &s,
        &mut c,
        rawdoc! { "aggregate": "orders", "pipeline": [], "cursor": {}, "$db": "billing" },
    )
    .await;
    assert_untouched(
        &s,
        &mut c,
        rawdoc! { "find": "orders", "maxTimeMS": 0, "$db": "shopping" },
    )
    .await;
    // A rule for another app.
    let s = Setup::start(
        r#"
[rewrite]
mode = "enforce"
[[rewrite.rule]]
commands = ["aggregate"]
apps = ["reporting*"]
default_max_time_ms = 1000
"#,
    )
    .await;
    let mut c = s.client().await;
    c.command(&rawdoc! { "hello": 1, "client": { "application": { "name": "checkout" } }, "$db": "admin" })
        .await;
    assert_untouched(
        &s,
        &mut c,
        rawdoc! { "aggregate": "orders", "pipeline": [], "cursor": {}, "$db": "shop" },
    )
    .await;
}

/// Rules match on command, namespace glob and app name; the first match wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_matching_rule_wins() {
    let s = Setup::start(
        r#"
[rewrite]
mode = "enforce"

[[rewrite.rule]]
commands = ["aggregate"]
namespaces = ["shop.*"]
apps = ["reporting*"]
default_max_time_ms = 100

[[rewrite.rule]]
commands = ["aggregate", "find"]
namespaces = ["shop.orders"]
default_max_time_ms = 2000

[[rewrite.rule]]
commands = ["aggregate"]
namespaces = ["*"]
default_max_time_ms = 3000
"#,
    )
    .await;
    let agg = |db: &str, coll: &str| rawdoc! { "aggregate": coll, "pipeline": [], "cursor": {}, "$db": db };
    let with = |mut d: RawDocumentBuf, ms: i32| {
        d.append(bson::raw::cstr!("maxTimeMS"), ms);
        d
    };
    let mut report = s.client().await;
    report
        .command(&rawdoc! { "hello": 1, "client": { "application": { "name": "reporting-nightly" } }, "$db": "admin" })
        .await;
    assert_rewritten(
        &s,
        &mut report,
        agg("shop", "orders"),
        with(agg("shop", "orders"), 100),
    )
    .await;
    assert_rewritten(
        &s,
        &mut report,
        agg("crm", "people"),
        with(agg("crm", "people"), 3000),
    )
    .await;

    let mut other = s.client().await;
    assert_rewritten(
        &s,
        &mut other,
        agg("shop", "orders"),
        with(agg("shop", "orders"), 2000),
    )
    .await;
    assert_rewritten(
        &s,
        &mut other,
        agg("shop", "items"),
        with(agg("shop", "items"), 3000),
    )
    .await;
    // An aggregate without a collection (`aggregate: 1`) matches "*".
    assert_rewritten(
        &s,
        &mut other,
        rawdoc! { "aggregate": 1, "pipeline": [{ "$currentOp": {} }], "cursor": {}, "$db": "admin" },
        rawdoc! { "aggregate": 1, "pipeline": [{ "$currentOp": {} }], "cursor": {}, "$db": "admin", "maxTimeMS": 3000 },
    )
    .await;
}

// ---------------------------------------------------------------- framing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_is_recomputed() {
    let s = Setup::start(ENFORCE).await;
    let mut c = s.client().await;
    let id = next_id();
    let body = rawdoc! { "aggregate": "orders", "pipeline": [], "cursor": {}, "$db": "shop" };
    let frame = op_msg::encode(id, 0, CHECKSUM_PRESENT, &body, &[]);
    let got = s.roundtrip(&mut c, id, &frame).await;
    let expected = rawdoc! {
        "aggregate": "orders", "pipeline": [], "cursor": {}, "$db": "shop",
        "maxTimeMS": 1000, "allowDiskUse": true,
    };
    // `parse` verifies the CRC-32C; check it by hand as well.
    let msg = op_msg::parse(&got.raw).expect("the rewritten frame has a valid checksum");
    assert_eq!(msg.flags, CHECKSUM_PRESENT);
    let end = got.raw.len() - 4;
    let crc = u32::from_le_bytes(got.raw[end..].try_into().expect("4 bytes"));
    assert_eq!(crc, crc32c(&got.raw[..end]));
    assert_frame(
        &got.raw,
        &expected_frame(id, CHECKSUM_PRESENT, &expected, &[]),
        "checksummed aggregate",
    );
    // Not rewritten: the original checksummed bytes go through.
    let id = next_id();
    let body = rawdoc! { "find": "orders", "maxTimeMS": 10, "allowDiskUse": true, "$db": "shop" };
    let frame = op_msg::encode(id, 0, CHECKSUM_PRESENT, &body, &[]);
    let got = s.roundtrip(&mut c, id, &frame).await;
    assert_frame(&got.raw, &frame, "checksummed find needing no change");
}

/// CRC-32C (Castagnoli), bit by bit: independent of the crate under test.
fn crc32c(data: &[u8]) -> u32 {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_frames_are_recompressed_with_the_same_compressor() {
    let s = Setup::start(ENFORCE).await;
    let mut c = s.client().await;
    for compressor in [
        Compressor::Snappy,
        Compressor::Zlib,
        Compressor::Zstd,
        Compressor::Noop,
    ] {
        for flags in [0, CHECKSUM_PRESENT] {
            let id = next_id();
            let body = rawdoc! { "aggregate": "orders", "pipeline": [{ "$match": { "s": "x".repeat(300) } }], "cursor": {}, "maxTimeMS": 0, "$db": "shop" };
            let plain = op_msg::encode(id, 0, flags, &body, &[]);
            let frame = op_compressed::compress(&plain, compressor).expect("compress");
            let got = s.roundtrip(&mut c, id, &frame).await;

            let header = mongotap_proto::Header::parse(&got.raw).expect("header");
            assert_eq!(
                header.op_code,
                OpCode::Compressed,
                "{compressor:?}: still compressed"
            );
            assert_eq!(header.request_id, id);
            assert_eq!(header.message_length as usize, got.raw.len());
            let parsed = op_compressed::parse(&got.raw, mongotap_proto::MAX_MESSAGE_LEN)
                .expect("OP_COMPRESSED parses");
            assert_eq!(
                parsed.compressor, compressor,
                "the client's compressor is kept"
            );
            assert_eq!(parsed.original_opcode, OpCode::Msg);
            let inner = op_compressed::decompress(&got.raw, mongotap_proto::MAX_MESSAGE_LEN)
                .expect("decompresses");
            let expected = rawdoc! {
                "aggregate": "orders", "pipeline": [{ "$match": { "s": "x".repeat(300) } }], "cursor": {}, "maxTimeMS": 5000, "$db": "shop",
                "allowDiskUse": true,
            };
            assert_frame(
                &inner,
                &expected_frame(id, flags, &expected, &[]),
                &format!("{compressor:?} flags {flags}"),
            );
        }
        // A compressed command needing no change arrives as it was sent.
        let id = next_id();
        let body =
            rawdoc! { "find": "orders", "maxTimeMS": 10, "allowDiskUse": true, "$db": "shop" };
        let frame = op_compressed::compress(&op_msg::encode(id, 0, 0, &body, &[]), compressor)
            .expect("compress");
        let got = s.roundtrip(&mut c, id, &frame).await;
        assert_eq!(
            got.raw, frame,
            "{compressor:?}: an unchanged frame is not re-compressed"
        );
    }
}

fn docs(list: &[RawDocumentBuf]) -> Vec<u8> {
    list.iter().flat_map(|d| d.as_bytes().to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_sequences_stay_byte_identical() {
    let s = Setup::start(ENFORCE).await;
    let mut c = s.client().await;
    let documents = docs(&[
        rawdoc! { "_id": 1, "big": i64::MAX, "f": 0.1 },
        rawdoc! { "_id": 2, "s": "two", "nested": { "a": [1, 2, 3] } },
    ]);
    let seqs = [DocSequence {
        identifier: "documents",
        documents: &documents,
    }];
    for flags in [0, CHECKSUM_PRESENT] {
        let id = next_id();
        let body = rawdoc! { "insert": "orders", "ordered": true, "$db": "shop" };
        let frame = op_msg::encode(id, 0, flags, &body, &seqs);
        let got = s.roundtrip(&mut c, id, &frame).await;
        let expected =
            rawdoc! { "insert": "orders", "ordered": true, "$db": "shop", "maxTimeMS": 1000 };
        assert_frame(
            &got.raw,
            &expected_frame(id, flags, &expected, &seqs),
            "insert",
        );
        let msg = op_msg::parse(&got.raw).expect("parses");
        assert_eq!(msg.sequences.len(), 1);
        assert_eq!(msg.sequences[0].identifier, "documents");
        assert_eq!(msg.sequences[0].documents, &documents[..]);
    }

    // The sequence before the body: sections may come in any order. The
    // rewritten frame puts the body first; the sequence bytes are unchanged.
    let id = next_id();
    let body = rawdoc! { "insert": "orders", "$db": "shop" };
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0; 16]);
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.push(1);
    frame.extend_from_slice(&((4 + "documents".len() + 1 + documents.len()) as i32).to_le_bytes());
    frame.extend_from_slice(b"documents\0");
    frame.extend_from_slice(&documents);
    frame.push(0);
    frame.extend_from_slice(body.as_bytes());
    let len = frame.len() as i32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..8].copy_from_slice(&id.to_le_bytes());
    frame[12..16].copy_from_slice(&2013i32.to_le_bytes());
    let got = s.roundtrip(&mut c, id, &frame).await;
    let expected = rawdoc! { "insert": "orders", "$db": "shop", "maxTimeMS": 1000 };
    assert_frame(
        &got.raw,
        &expected_frame(id, 0, &expected, &seqs),
        "sequence first",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_to_come_requests_are_rewritten_and_keep_the_flag() {
    let s = Setup::start(ENFORCE).await;
    let mut c = s.client().await;
    let documents = docs(&[rawdoc! { "_id": 1 }, rawdoc! { "_id": 2 }]);
    let seqs = [DocSequence {
        identifier: "documents",
        documents: &documents,
    }];
    for flags in [MORE_TO_COME, MORE_TO_COME | CHECKSUM_PRESENT] {
        let id = next_id();
        let body = rawdoc! { "insert": "orders", "writeConcern": { "w": 0 }, "$db": "shop" };
        let frame = op_msg::encode(id, 0, flags, &body, &seqs);
        let got = s.roundtrip(&mut c, id, &frame).await;
        let expected = rawdoc! { "insert": "orders", "writeConcern": { "w": 0 }, "$db": "shop", "maxTimeMS": 1000 };
        assert_frame(
            &got.raw,
            &expected_frame(id, flags, &expected, &seqs),
            "w:0 insert",
        );
    }
    // An aggregate with moreToCome is unusual but must be handled the same.
    let id = next_id();
    let body = rawdoc! { "aggregate": "orders", "pipeline": [], "cursor": {}, "$db": "shop" };
    let frame = op_msg::encode(id, 0, MORE_TO_COME, &body, &[]);
    let got = s.roundtrip(&mut c, id, &frame).await;
    let expected = rawdoc! {
        "aggregate": "orders", "pipeline": [], "cursor": {}, "$db": "shop",
        "maxTimeMS": 1000, "allowDiskUse": true,
    };
    assert_frame(
        &got.raw,
        &expected_frame(id, MORE_TO_COME, &expected, &[]),
        "moreToCome aggregate",
    );
    // No reply was expected, so nothing is left pending, and the
    // connection still works.
    let reply = c.command(&rawdoc! { "ping": 1, "$db": "admin" }).await;
    assert_eq!(reply.get_f64("ok").ok(), Some(1.0));
    let (_, body) = s.proxy.admin_get("/inflight");
    let inflight: Value = serde_json::from_str(&body).expect("/inflight is JSON");
    assert_eq!(
        inflight,
        Value::Array(vec![]),
        "moreToCome requests are not pending"
    );
}

// -------------------------------------------------- dry-run and metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_forwards_the_original_bytes_and_logs_the_change() {
    let toml = ENFORCE.replace("\"enforce\"", "\"dry-run\"");
    let s = Setup::start(&toml).await;
    let mut c = s.client().await;
    let body = rawdoc! { "aggregate": "orders", "pipeline": [], "cursor": {}, "maxTimeMS": 0, "$db": "shop" };
    let (sent, got) = s.send(&mut c, &body).await;
    assert_frame(&got, &sent, "dry-run forwards what the client sent");
    // Checksummed and compressed frames too.
    let id = next_id();
    let frame = op_compressed::compress(
        &op_msg::encode(id, 0, CHECKSUM_PRESENT, &body, &[]),
        Compressor::Zstd,
    )
    .expect("compress");
    let got = s.roundtrip(&mut c, id, &frame).await;
    assert_eq!(got.raw, frame, "dry-run forwards compressed frames as sent");

    let ev = s.proxy.wait_for_event("rewritten", WAIT);
    assert_eq!(ev["dry_run"], true, "{ev}");
    assert_eq!(ev["command"], "aggregate", "{ev}");
    assert_eq!(ev["db"], "shop", "{ev}");
    assert_eq!(ev["collection"], "orders", "{ev}");
    assert_eq!(
        ev["changes"], "maxTimeMS: 0 -> 5000, allowDiskUse: absent -> true",
        "{ev}"
    );
    let (status, metrics) = s.proxy.admin_get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"mongotap_rewrites_dry_run_total{command="aggregate",field="maxTimeMS"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"mongotap_rewrites_total{command="aggregate""#),
        "dry-run rewrites are not counted as enforced:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rewrites_by_command_and_field() {
    let s = Setup::start(&format!(
        "{ENFORCE}\n[log]\nlevel = \"info,mongotap=debug\"\n"
    ))
    .await;
    let mut c = s.client().await;
    for _ in 0..3 {
        s.send(
            &mut c,
            &rawdoc! { "aggregate": "orders", "pipeline": [], "cursor": {}, "$db": "shop" },
        )
        .await;
    }
    s.send(&mut c, &rawdoc! { "count": "orders", "$db": "shop" })
        .await;
    s.send(
        &mut c,
        &rawdoc! { "find": "orders", "maxTimeMS": 1, "allowDiskUse": true, "$db": "shop" },
    )
    .await;
    let (status, metrics) = s.proxy.admin_get("/metrics");
    assert_eq!(status, 200);
    for line in [
        r#"mongotap_rewrites_total{command="aggregate",field="maxTimeMS"} 3"#,
        r#"mongotap_rewrites_total{command="aggregate",field="allowDiskUse"} 3"#,
        r#"mongotap_rewrites_total{command="count",field="maxTimeMS"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing `{line}` in\n{metrics}");
    }
    assert!(
        !metrics.contains(r#"command="count",field="allowDiskUse""#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"mongotap_rewrites_total{command="find""#),
        "{metrics}"
    );
    // Enforced rewrites log at debug, with before and after.
    let ev = s.proxy.wait_for_event("rewritten", WAIT);
    assert_eq!(ev["dry_run"], false, "{ev}");
    assert_eq!(
        ev["changes"], "maxTimeMS: absent -> 1000, allowDiskUse: absent -> true",
        "{ev}"
    );
}

/// While the command is pending, /inflight shows the limits in force; when
/// it fails with MaxTimeMSExpired, the event says the limit was injected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_shows_the_injected_limit_and_the_failure_says_so() {
    let upstream = Scripted::start(|req: &Received| {
        if req.name() == "aggregate" {
            let err = rawdoc! {
                "ok": 0.0, "errmsg": "operation exceeded time limit", "code": 50, "codeName": "MaxTimeMSExpired",
            };
            return vec![
                Step::Sleep(Duration::from_millis(800)),
                Step::Send(scripted::reply(req, &err)),
            ];
        }
        scripted::default_reply(req)
    })
    .await;
    let s = Setup::with_upstream(ENFORCE, upstream).await;
    let mut c = s.client().await;
    let id = next_id();
    let body = rawdoc! { "aggregate": "orders", "pipeline": [{ "$group": { "_id": "$k" } }], "cursor": {}, "$db": "shop" };
    c.send(&op_msg::encode(id, 0, 0, &body, &[])).await;
    s.upstream
        .wait_for(|r| r.header.request_id == id, WAIT)
        .await;
    let (_, inflight) = s.proxy.admin_get("/inflight");
    let inflight: Value = serde_json::from_str(&inflight).expect("JSON");
    let entry = inflight
        .as_array()
        .and_then(|a| a.iter().find(|e| e["request_id"] == id))
        .unwrap_or_else(|| panic!("aggregate not in /inflight: {inflight}"));
    assert_eq!(entry["max_time_ms"], 1000, "{entry}");
    assert_eq!(entry["allow_disk_use"], true, "{entry}");
    assert_eq!(entry["stages"], serde_json::json!(["$group"]), "{entry}");

    c.recv(WAIT).await.expect("the error reply");
    let failed = s.proxy.wait_for_event("failed", WAIT);
    assert_eq!(failed["code"], 50, "{failed}");
    let hint = failed["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("maxTimeMS 1000 was injected by a mongotap rewrite rule"),
        "{failed}"
    );
}

// ------------------------------------------------------------ hot reload

fn rule_with_default(ms: u32) -> String {
    format!(
        r#"
[rewrite]
mode = "enforce"
[[rewrite.rule]]
commands = ["aggregate"]
default_max_time_ms = {ms}
"#
    )
}

/// Waits until mongotap has logged `event` at least `n` times.
async fn wait_events(proxy: &Mongotap, event: &str, n: usize) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = proxy.events(event);
        if found.len() >= n {
            return found[n - 1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "mongotap logged {} `{event}` events, expected {n}: {:#?}",
            found.len(),
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("rewrite config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_rules_and_an_invalid_file_keeps_the_old_ones() {
    let s = Setup::start(&rule_with_default(1000)).await;
    let mut c = s.client().await;
    let agg = || rawdoc! { "aggregate": "orders", "pipeline": [], "cursor": {}, "$db": "shop" };
    let with = |ms: i32| rawdoc! { "aggregate": "orders", "pipeline": [], "cursor": {}, "$db": "shop", "maxTimeMS": ms };
    assert_rewritten(&s, &mut c, agg(), with(1000)).await;

    // A changed rule applies to the next command, on an open connection.
    write(&s.config, &rule_with_default(2500));
    signal(s.proxy.pid(), "HUP");
    let ev = wait_events(&s.proxy, "config_reloaded", 1).await;
    assert_eq!(ev["rules"], 1, "{ev}");
    assert_rewritten(&s, &mut c, agg(), with(2500)).await;

    // Invalid files: bad TOML, an unknown key, a rule that fails validation.
    let invalid = [
        ("[rewrite\nmode = ", ""),
        (
            "[rewrite]\nmode = \"enforce\"\n[[rewrite.rule]]\ncommands = [\"aggregate\"]\ndefault_max_time_ms = 10\nmax_time_ms = 5\n",
            "max_time_ms",
        ),
        (
            "[rewrite]\nmode = \"enforce\"\n[[rewrite.rule]]\ncommands = [\"getMore\"]\ndefault_max_time_ms = 10\n",
            "getMore",
        ),
    ];
    for (i, (text, named)) in invalid.iter().enumerate() {
        write(&s.config, text);
        signal(s.proxy.pid(), "HUP");
        let ev = wait_events(&s.proxy, "config_reload_failed", i + 1).await;
        let error = ev["error"].as_str().unwrap_or_default();
        assert!(error.contains(named), "the error names `{named}`: {ev}");
        assert_rewritten(&s, &mut c, agg(), with(2500)).await;
    }
    assert_eq!(s.proxy.events("config_reloaded").len(), 1);

    // Switching the mode off by reload stops rewriting.
    write(
        &s.config,
        &rule_with_default(2500).replace("enforce", "off"),
    );
    signal(s.proxy.pid(), "HUP");
    wait_events(&s.proxy, "config_reloaded", 2).await;
    assert_untouched(&s, &mut c, agg()).await;
}

// ------------------------------------------------- reads split and merged

/// Several frames in one write, the middle one rewritten: each arrives in
/// order, the others byte for byte. Then a rewritten frame split across
/// writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_and_split_frames_are_rewritten_in_order() {
    let s = Setup::start(ENFORCE).await;
    let mut c = s.client().await;
    let keep = rawdoc! { "find": "orders", "maxTimeMS": 10, "allowDiskUse": true, "$db": "shop" };
    let change = rawdoc! { "aggregate": "orders", "pipeline": [], "cursor": {}, "$db": "shop" };
    let changed = rawdoc! {
        "aggregate": "orders", "pipeline": [], "cursor": {}, "$db": "shop",
        "maxTimeMS": 1000, "allowDiskUse": true,
    };
    let ids = [next_id(), next_id(), next_id(), next_id()];
    let frames = [
        op_msg::encode(ids[0], 0, 0, &keep, &[]),
        op_msg::encode(ids[1], 0, 0, &change, &[]),
        op_msg::encode(ids[2], 0, 0, &keep, &[]),
        op_msg::encode(ids[3], 0, CHECKSUM_PRESENT, &change, &[]),
    ];
    c.send(&frames.concat()).await;
    for _ in &frames {
        c.recv(WAIT).await.expect("a reply for each frame");
    }
    let got: Vec<Received> = s
        .upstream
        .received()
        .into_iter()
        .filter(|r| ids.contains(&r.header.request_id))
        .collect();
    let order: Vec<i32> = got.iter().map(|r| r.header.request_id).collect();
    assert_eq!(order, ids, "frames arrive in the order they were sent");
    assert_frame(&got[0].raw, &frames[0], "first, unchanged");
    assert_frame(
        &got[1].raw,
        &expected_frame(ids[1], 0, &changed, &[]),
        "second, rewritten",
    );
    assert_frame(&got[2].raw, &frames[2], "third, unchanged");
    assert_frame(
        &got[3].raw,
        &expected_frame(ids[3], CHECKSUM_PRESENT, &changed, &[]),
        "fourth, rewritten with a checksum",
    );

    // One frame in three writes.
    let id = next_id();
    let frame = op_msg::encode(id, 0, 0, &change, &[]);
    for chunk in [&frame[..7], &frame[7..30], &frame[30..]] {
        c.send(chunk).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    c.recv(WAIT).await.expect("reply");
    let got = s
        .upstream
        .wait_for(|r| r.header.request_id == id, WAIT)
        .await;
    assert_frame(
        &got.raw,
        &expected_frame(id, 0, &changed, &[]),
        "split frame",
    );
}

/// Legacy OP_QUERY commands are not rewritten: they reach the upstream as
/// sent (drivers only use OP_QUERY for the first handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_op_query_commands_are_left_alone() {
    let s = Setup::start(ENFORCE).await;
    let mut c = s.client().await;
    let query = rawdoc! { "aggregate": "orders", "pipeline": [], "cursor": {} };
    let id = next_id();
    let frame = mongotap_proto::op_query::encode(
        id,
        0,
        &mongotap_proto::op_query::OpQuery {
            flags: 0,
            full_collection_name: "shop.$cmd",
            number_to_skip: 0,
            number_to_return: -1,
            query: &query,
            return_fields_selector: None,
        },
    );
    let got = s.roundtrip(&mut c, id, &frame).await;
    assert_eq!(got.raw, frame, "OP_QUERY is forwarded as sent");
}
