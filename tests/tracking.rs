//! Request/reply tracking against the scripted upstream: byte-exact
//! forwarding, fire-and-forget, exhaust and streaming hello, stalls,
//! never-replied and abandoned commands, failures and their hints.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/scripted.rs"]
mod scripted;
mod support;

use bson::{rawdoc, RawDocumentBuf};
use mongotap_proto::op_compressed::{self, Compressor};
use mongotap_proto::op_msg;
use scripted::{msg, next_id, reply, RawClient, Received, Scripted, Step};
use serde_json::Value;
use std::time::Duration;
use support::Mongotap;

const T: Duration = Duration::from_secs(10);

fn hello_with_app(app: &str) -> RawDocumentBuf {
    rawdoc! {
        "hello": 1,
        "client": {
            "application": { "name": app },
            "driver": { "name": "rawtest", "version": "1.0" },
            "os": { "type": "linux" },
        },
        "$db": "admin",
    }
}

fn stats(tap: &Mongotap) -> Vec<Value> {
    let (code, body) = tap.admin_get("/stats");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("stats json");
    v["commands"].as_array().cloned().unwrap_or_default()
}

fn count_of(tap: &Mongotap, command: &str) -> u64 {
    stats(tap)
        .iter()
        .filter(|r| r["command"] == command)
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum()
}

/// Waits until /stats has published `want` samples of `command` (sessions
/// publish in batches, at most FLUSH_INTERVAL late).
async fn wait_count(tap: &Mongotap, command: &str, want: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let n = count_of(tap, command);
        if n >= want || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn inflight(tap: &Mongotap) -> Vec<Value> {
    let (code, body) = tap.admin_get("/inflight");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Value>(&body)
        .expect("inflight json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_forwarded_exactly_both_ways() {
    let upstream = Scripted::ok().await;
    let tap = Mongotap::start(upstream.addr);
    let mut client = RawClient::connect(tap.listen).await;

    let docs: Vec<u8> = [rawdoc! {"_id": 1, "x": "a"}, rawdoc! {"_id": 2, "x": "b"}]
        .iter()
        .flat_map(|d| d.as_bytes().to_vec())
        .collect();
    let insert = rawdoc! { "insert": "c", "$db": "shop" };
    let seq = op_msg::DocSequence {
        identifier: "documents",
        documents: &docs,
    };
    let frames = vec![
        msg(next_id(), 0, 0, &hello_with_app("exact")),
        op_msg::encode(next_id(), 0, 0, &insert, &[seq]),
        op_msg::encode(
            next_id(),
            0,
            op_msg::CHECKSUM_PRESENT,
            &rawdoc! {"ping": 1, "$db": "admin"},
            &[],
        ),
        op_compressed::compress(
            &msg(next_id(), 0, 0, &rawdoc! {"find": "c", "$db": "shop"}),
            Compressor::Zstd,
        )
        .expect("compress"),
    ];
    // Send them merged into one write, so the proxy sees several frames per read.
    client.send(&frames.concat()).await;
    let mut replies = Vec::new();
    for _ in 0..frames.len() {
        replies.push(client.recv(T).await.expect("reply"));
    }
    let got: Vec<Vec<u8>> = upstream.received().into_iter().map(|r| r.raw).collect();
    assert_eq!(
        got, frames,
        "the upstream must receive exactly what the client sent"
    );
    assert_eq!(replies.len(), 4);
    assert_eq!(wait_count(&tap, "insert", 1).await, 1);
    let row = stats(&tap)
        .into_iter()
        .find(|r| r["command"] == "insert")
        .expect("insert row");
    assert_eq!(row["app"], "exact");
    assert_eq!(row["db"], "shop");
    assert_eq!(row["collection"], "c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_leaves_nothing_pending() {
    let upstream = Scripted::ok().await;
    let tap = Mongotap::start(upstream.addr);
    let mut client = RawClient::connect(tap.listen).await;
    for i in 0..20 {
        let body = rawdoc! { "insert": "c", "documents": [{"i": i}], "writeConcern": {"w": 0}, "$db": "shop" };
        client
            .send(&msg(next_id(), 0, op_msg::MORE_TO_COME, &body))
            .await;
    }
    upstream
        .wait_for(|r| r.conn == 0 && upstream_count_ge(r), T)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(inflight(&tap).is_empty(), "w:0 writes are never pending");
    let (_, metrics) = tap.admin_get("/metrics");
    assert!(
        metrics.contains("mongotap_fire_and_forget_total 20"),
        "{metrics}"
    );
}

fn upstream_count_ge(_r: &Received) -> bool {
    true
}

/// An exhaust getMore answered by 3 chained moreToCome replies and a last
/// one counts as one command, and every reply reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaust_stream_counts_as_one_command() {
    let upstream = Scripted::start(|req| {
        if req.name() != "getMore" {
            return scripted::default_reply(req);
        }
        let mut steps = Vec::new();
        let mut previous = req.header.request_id;
        for i in 0..4 {
            let id = next_id();
            let last = i == 3;
            let body = rawdoc! {
                "cursor": { "id": if last { 0i64 } else { 77i64 }, "ns": "shop.c", "nextBatch": [{"i": i}] },
                "ok": 1.0,
            };
            let flags = if last { 0 } else { op_msg::MORE_TO_COME };
            steps.push(Step::Send(msg(id, previous, flags, &body)));
            previous = id;
        }
        steps
    })
    .await;
    let tap = Mongotap::start(upstream.addr);
    let mut client = RawClient::connect(tap.listen).await;
    let get_more = rawdoc! { "getMore": 77i64, "collection": "c", "$db": "shop" };
    client
        .send(&msg(next_id(), 0, op_msg::EXHAUST_ALLOWED, &get_more))
        .await;
    for _ in 0..4 {
        client
            .recv(T)
            .await
            .expect("every streamed reply reaches the client");
    }
    assert_eq!(wait_count(&tap, "getMore", 1).await, 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(count_of(&tap, "getMore"), 1, "one command, not four");
    assert!(inflight(&tap).is_empty());
}

/// A monitor's awaitable hello streamed with moreToCome is neither a stall
/// nor a latency sample, however long each reply takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_hello_is_not_a_stall() {
    let upstream = Scripted::start(|req| {
        let body = req.command.clone().unwrap_or_default();
        if req.name() == "hello" && body.get("topologyVersion").ok().flatten().is_some() {
            let mut steps = Vec::new();
            let mut previous = req.header.request_id;
            for _ in 0..3 {
                let id = next_id();
                steps.push(Step::Sleep(Duration::from_millis(600)));
                let doc = rawdoc! {
                    "isWritablePrimary": true,
                    "maxWireVersion": 21,
                    "topologyVersion": {"processId": bson::oid::ObjectId::new(), "counter": 0i64},
                    "ok": 1.0,
                };
                steps.push(Step::Send(msg(id, previous, op_msg::MORE_TO_COME, &doc)));
                previous = id;
            }
            return steps;
        }
        scripted::default_reply(req)
    })
    .await;
    let tap = Mongotap::start_with(upstream.addr, &["--stall-ms", "300"]);
    let mut client = RawClient::connect(tap.listen).await;
    client.command(&hello_with_app("monitor")).await;
    let awaitable = rawdoc! {
        "hello": 1,
        "topologyVersion": {"processId": bson::oid::ObjectId::new(), "counter": 0i64},
        "maxAwaitTimeMS": 10000,
        "$db": "admin",
    };
    client
        .send(&msg(next_id(), 0, op_msg::EXHAUST_ALLOWED, &awaitable))
        .await;
    for _ in 0..3 {
        client.recv(T).await.expect("streamed hello");
    }
    // Left out of /inflight by default: it waits by design.
    assert!(inflight(&tap).is_empty());
    let (_, body) = tap.admin_get("/inflight?all=true");
    let rows: Vec<Value> = serde_json::from_str(&body).expect("inflight json");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["awaiting"], true, "{rows:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        tap.events("stalled").is_empty(),
        "awaitable hello is not a stall"
    );
    // Only the handshake hello is a latency sample.
    assert_eq!(count_of(&tap, "hello"), 1);
}

/// A command the upstream never answers: `stalled` while pending (with
/// stages, app and the /inflight row), then `never_replied` when the
/// upstream connection dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_then_never_replied() {
    let upstream = Scripted::start(|req| match req.name().as_str() {
        "aggregate" => vec![Step::Sleep(Duration::from_millis(1500)), Step::Close],
        _ => scripted::default_reply(req),
    })
    .await;
    let tap = Mongotap::start_with(upstream.addr, &["--stall-ms", "300"]);
    let mut client = RawClient::connect(tap.listen).await;
    client.command(&hello_with_app("checkout")).await;
    let agg = rawdoc! {
        "aggregate": "orders",
        "pipeline": [
            {"$match": {"status": "secret-value"}},
            {"$lookup": {"from": "users", "localField": "u", "foreignField": "_id", "as": "user"}},
            {"$unwind": "$user"},
        ],
        "cursor": {},
        "comment": "checkout-page",
        "$db": "shop",
    };
    let id = next_id();
    let sent = std::time::Instant::now();
    client.send(&msg(id, 0, 0, &agg)).await;
    let stalled = tap
        .wait_for_event_async("stalled", Duration::from_millis(1300))
        .await;
    let stalled_seen = sent.elapsed().as_millis() as u64;
    assert_eq!(stalled["request_id"], id);
    let age = stalled["age_ms"].as_u64().expect("age_ms");
    assert!(
        (300..=stalled_seen).contains(&age),
        "stalled age_ms {age} outside [stall_ms 300, {stalled_seen}]"
    );
    assert_eq!(stalled["app"], "checkout");
    assert_eq!(stalled["command"], "aggregate");
    assert_eq!(stalled["collection"], "orders");
    assert_eq!(stalled["stages"], "$match>$lookup>$unwind");
    assert_eq!(stalled["comment"], "checkout-page");
    assert!(stalled["hint"].as_str().unwrap_or("").contains("indexed"));
    let rows = inflight(&tap);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["request_id"], id);
    assert_eq!(
        rows[0]["stages"],
        serde_json::json!(["$match", "$lookup", "$unwind"])
    );
    assert_eq!(rows[0]["app"], "checkout");
    let never = tap.wait_for_event_async("never_replied", T).await;
    let seen = sent.elapsed().as_millis() as u64;
    assert_eq!(never["request_id"], id);
    // The upstream closes 1500 ms after it received the command, which the
    // proxy timed from before it forwarded it; the client saw the event
    // `seen` ms after it sent the command.
    let age = never["age_ms"].as_u64().expect("age_ms");
    assert!(
        (1500..=seen).contains(&age),
        "never_replied age_ms {age} outside [1500, {seen}]"
    );
    // Filter values never appear in logs or endpoints.
    let all = format!("{:?}{}", tap.logs(), tap.admin_get("/inflight").1);
    assert!(!all.contains("secret-value"));
    let (_, metrics) = tap.admin_get("/metrics");
    assert!(
        metrics.contains("mongotap_never_replied_total 1"),
        "{metrics}"
    );
    assert!(client.is_closed(T).await);
}

/// The client goes away first: `abandoned`, and the upstream connection is
/// closed so the server can kill the operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_first_is_abandoned() {
    let upstream = Scripted::start(|req| match req.name().as_str() {
        "find" => vec![Step::Sleep(Duration::from_secs(30))],
        _ => scripted::default_reply(req),
    })
    .await;
    let tap = Mongotap::start(upstream.addr);
    let mut client = RawClient::connect(tap.listen).await;
    client.command(&hello_with_app("gone")).await;
    let id = next_id();
    client
        .send(&msg(
            id,
            0,
            0,
            &rawdoc! {"find": "c", "filter": {}, "$db": "shop"},
        ))
        .await;
    upstream.wait_for(|r| r.name() == "find", T).await;
    drop(client);
    let ev = tap.wait_for_event_async("abandoned", T).await;
    assert_eq!(ev["request_id"], id);
    assert_eq!(ev["app"], "gone");
    assert!(tap.events("never_replied").is_empty());
}

/// A memory-limit failure carries code, code_name and the allowDiskUse hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_failure_has_hint() {
    let upstream = Scripted::start(|req| match req.name().as_str() {
        "aggregate" => vec![Step::Send(reply(
            req,
            &rawdoc! {
                "ok": 0.0,
                "errmsg": "Exceeded memory limit for $group, but didn't allow external sort",
                "code": 292,
                "codeName": "QueryExceededMemoryLimitNoDiskUseAllowed",
            },
        ))],
        _ => scripted::default_reply(req),
    })
    .await;
    let tap = Mongotap::start(upstream.addr);
    let mut client = RawClient::connect(tap.listen).await;
    client.command(&hello_with_app("reports")).await;
    client
        .command(&rawdoc! {"aggregate": "c", "pipeline": [{"$group": {"_id": "$k"}}], "cursor": {}, "$db": "shop"})
        .await;
    let ev = tap.wait_for_event_async("failed", T).await;
    assert_eq!(ev["code"], 292);
    assert_eq!(ev["code_name"], "QueryExceededMemoryLimitNoDiskUseAllowed");
    let hint = ev["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("allowDiskUse"), "{hint}");
    assert_eq!(wait_count(&tap, "aggregate", 1).await, 1);
    let row = stats(&tap)
        .into_iter()
        .find(|r| r["command"] == "aggregate")
        .expect("row");
    assert_eq!(row["errors"], 1);
}

/// Write errors inside an ok: 1 reply count as errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_errors_count_as_errors() {
    let upstream = Scripted::start(|req| match req.name().as_str() {
        "insert" => vec![Step::Send(reply(
            req,
            &rawdoc! {"n": 0, "writeErrors": [{"index": 0, "code": 11000, "errmsg": "dup"}], "ok": 1.0},
        ))],
        _ => scripted::default_reply(req),
    })
    .await;
    let tap = Mongotap::start(upstream.addr);
    let mut client = RawClient::connect(tap.listen).await;
    client
        .command(&rawdoc! {"insert": "c", "documents": [{"_id": 1}], "$db": "shop"})
        .await;
    let ev = tap.wait_for_event_async("failed", T).await;
    assert_eq!(ev["code"], 11000);
    assert_eq!(wait_count(&tap, "insert", 1).await, 1);
    let row = stats(&tap)
        .into_iter()
        .find(|r| r["command"] == "insert")
        .expect("row");
    assert_eq!(row["errors"], 1);
}

/// A handshake from a driver older than the server supports is warned
/// about once per app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_driver_is_warned_once_per_app() {
    let upstream = Scripted::ok().await;
    let tap = Mongotap::start(upstream.addr);
    let old_hello = rawdoc! {
        "hello": 1,
        "client": {
            "application": { "name": "legacy-app" },
            "driver": { "name": "PyMongo", "version": "4.1.1" },
            "os": { "type": "linux" },
        },
        "$db": "admin",
    };
    for _ in 0..2 {
        let mut client = RawClient::connect(tap.listen).await;
        client.command(&old_hello).await;
    }
    let ev = tap.wait_for_event_async("driver_too_old", T).await;
    assert_eq!(ev["app"], "legacy-app");
    assert_eq!(ev["minimum"], "4.4");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(tap.events("driver_too_old").len(), 1);
}

/// `/connections` counts the open connections by their handshake's
/// appName: the test's own connections are the ground truth, and closing
/// one is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_counted_by_the_app_of_their_handshake() {
    let upstream = Scripted::ok().await;
    let tap = Mongotap::start(upstream.addr);
    let hello = |app: &str| {
        rawdoc! {
            "hello": 1, "$db": "admin",
            "client": { "application": { "name": app }, "driver": { "name": "raw", "version": "1" } },
        }
    };
    let mut clients = Vec::new();
    for app in ["billing", "billing", "search"] {
        let mut c = RawClient::connect(tap.listen).await;
        c.command(&hello(app)).await;
        clients.push(c);
    }
    // One connection that never says who it is.
    let mut anonymous = RawClient::connect(tap.listen).await;
    anonymous
        .command(&rawdoc! { "ping": 1, "$db": "admin" })
        .await;
    let by_app = |tap: &Mongotap| -> (u64, Vec<(String, u64)>) {
        let (status, body) = tap.admin_get("/connections");
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let rows = v["by_app"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["app"].as_str().unwrap().to_string(),
                    r["connections"].as_u64().unwrap(),
                )
            })
            .collect();
        (v["connections"].as_u64().unwrap(), rows)
    };
    let want = vec![
        ("billing".to_string(), 2),
        ("".to_string(), 1),
        ("search".to_string(), 1),
    ];
    assert_eq!(by_app(&tap), (4, want));
    drop(clients.remove(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (total, rows) = by_app(&tap);
        if total == 3 {
            assert_eq!(
                rows,
                vec![
                    ("".to_string(), 1),
                    ("billing".to_string(), 1),
                    ("search".to_string(), 1)
                ]
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed connection still counted: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
