//! `/stats/queries`: commands grouped by query shape, checked against
//! ground truth outside mongotap. Counts are the calls the test made;
//! latencies lie between a scripted upstream's known delay and the
//! client's own clock; documents are what the client received; the hash
//! is what `mongotap_proto::shape` gives for the bytes sent, and the same
//! in a second mongotap process. And no literal value the test sent shows
//! up in any endpoint or log line.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/prom.rs"]
mod prom;
#[path = "support/scripted.rs"]
mod scripted;
mod support;

use bson::{rawdoc, RawDocumentBuf};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use scripted::{RawClient, Received, Scripted, Step};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{Ferret, Mongotap};

const T: Duration = Duration::from_secs(15);
const APP: &str = "shapes-test";
/// A quantile is an HDR bucket's upper edge, at most 1/128 above the sample.
const HDR_ROUNDING: u64 = 128;

fn json_get(tap: &Mongotap, path: &str) -> Value {
    let (code, body) = tap.admin_get(path);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Polls /stats/queries until `done` holds for its rows (sessions publish
/// samples in batches, at the latest every 500 ms).
async fn wait_queries(tap: &Mongotap, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + T;
    loop {
        let body = json_get(tap, "/stats/queries?top=1000");
        let rows = body["queries"].as_array().cloned().unwrap_or_default();
        if done(&rows) || Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count_of(rows: &[Value], pred: impl Fn(&Value) -> bool) -> u64 {
    rows.iter()
        .filter(|r| pred(r))
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum()
}

// ---------------------------------------------------------------------------
// The real driver against FerretDB: grouping, documents, no literal leaks.

fn n_of(reply: &Document) -> u64 {
    match reply.get("n") {
        Some(Bson::Int32(n)) => *n as u64,
        Some(Bson::Int64(n)) => *n as u64,
        Some(Bson::Double(n)) => *n as u64,
        other => panic!("count reply without n: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_driver_commands_group_by_shape_and_no_literal_leaks() {
    let ferret = Ferret::start();
    // slow_ms 0: every command logs a `slow` event, so the log scan below
    // sees an event for each command the test sent.
    let tap = Mongotap::start_with(ferret.addr(), &["--slow-ms", "0"]);
    let uri = format!("{}&appName={APP}", tap.uri());
    let client = mongodb::Client::with_uri_str(uri).await.expect("client");
    let db_name = support::unique_db("queries");
    let db = client.database(&db_name);
    let coll = db.collection::<Document>("orders");
    let seed: Vec<Document> = (0..25)
        .map(|i| doc! {"kind": "secret-4242-kind", "customerId": format!("secret-4242-c{i}"), "qty": i})
        .collect();
    coll.insert_many(seed).await.expect("seed");

    // Literal values the test sends; none may appear anywhere.
    let mut literals: Vec<String> = vec!["secret-4242".into(), "987654".into()];
    const STRING_FINDS: usize = 5;
    for i in 0..STRING_FINDS {
        let filter =
            doc! {"customerId": format!("secret-4242-{i}"), "qty": {"$gt": 987_654_321 + i as i64}};
        let docs: Vec<Document> = coll
            .find(filter)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(docs.is_empty());
    }
    const OID_FINDS: usize = 3;
    for _ in 0..OID_FINDS {
        let oid = ObjectId::new();
        literals.push(oid.to_hex());
        let filter = doc! {"customerId": oid, "qty": {"$gt": 987_654_321}};
        let _: Vec<Document> = coll
            .find(filter)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
    }
    const AGGREGATES: usize = 4;
    for i in 0..AGGREGATES {
        let pipeline = [
            doc! {"$match": {"customerId": format!("secret-4242-a{i}")}},
            doc! {"$group": {"_id": "$customerId", "n": {"$sum": 1}}},
        ];
        let _: Vec<Document> = coll
            .aggregate(pipeline)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
    }
    // Batches of 10 over 25 documents: the first batch and two getMores.
    let mut received = 0;
    for _ in 0..2 {
        let cursor = coll
            .find(doc! {"kind": "secret-4242-kind"})
            .batch_size(10)
            .await
            .unwrap();
        received += cursor.try_collect::<Vec<Document>>().await.unwrap().len() as u64;
    }
    assert_eq!(received, 50);
    let mut counted = 0;
    for i in 0..2 {
        let reply = db
            .run_command(doc! {"count": "orders", "query": {"customerId": {"$ne": format!("secret-4242-n{i}")}}})
            .await
            .unwrap();
        counted += n_of(&reply);
    }
    // Writes: their statements travel in OP_MSG document sequences.
    const UPDATES: usize = 3;
    for i in 0..UPDATES {
        let filter = doc! {"customerId": format!("secret-4242-u{i}")};
        let update = doc! {"$set": {"qty": 987_654_300 + i as i64}};
        coll.update_one(filter, update).await.unwrap();
    }
    const DELETES: usize = 2;
    for i in 0..DELETES {
        coll.delete_one(doc! {"customerId": format!("secret-4242-d{i}")})
            .await
            .unwrap();
    }
    // A cursor left open while the endpoints are scanned (/cursors).
    let mut open = coll
        .find(doc! {"kind": "secret-4242-kind", "qty": {"$lt": 987_654_399}})
        .batch_size(2)
        .await
        .unwrap();
    assert!(open.try_next().await.unwrap().is_some());

    let is = |r: &Value, command: &str, filter: Value| {
        r["command"] == command && r["collection"] == "orders" && r["shape"]["filter"] == filter
    };
    let string_filter = json!({"customerId": "?string", "qty": {"$gt": "?number"}});
    let oid_filter = json!({"customerId": "?objectId", "qty": {"$gt": "?number"}});
    let kind_filter = json!({"kind": "?string"});
    let rows = wait_queries(&tap, |rows| {
        count_of(rows, |r| is(r, "find", kind_filter.clone())) >= 2
            && count_of(rows, |r| r["command"] == "count") >= 2
    })
    .await;
    let ours: Vec<&Value> = rows
        .iter()
        .filter(|r| r["db"] == db_name.as_str())
        .collect();
    let one = |pred: &dyn Fn(&Value) -> bool| -> Value {
        let found: Vec<&&Value> = ours.iter().filter(|r| pred(r)).collect();
        assert_eq!(found.len(), 1, "want one row, got {found:?} in {ours:#?}");
        (*found[0]).clone()
    };
    // Literals differ, the shape does not: one row with every call.
    let strings = one(&|r| is(r, "find", string_filter.clone()));
    assert_eq!(strings["count"], STRING_FINDS as u64, "{strings}");
    assert_eq!(strings["apps"], json!([APP]));
    assert_eq!(strings["errors"], 0);
    assert_eq!(strings["shape_hash"].as_str().map(str::len), Some(16));
    // Another literal type is another shape.
    let oids = one(&|r| is(r, "find", oid_filter.clone()));
    assert_eq!(oids["count"], OID_FINDS as u64, "{oids}");
    assert_ne!(oids["shape_hash"], strings["shape_hash"]);
    let aggregate = one(&|r| r["command"] == "aggregate" && r["collection"] == "orders");
    assert_eq!(aggregate["count"], AGGREGATES as u64, "{aggregate}");
    assert_eq!(
        aggregate["shape"]["pipeline"][0],
        json!({"$match": {"customerId": "?string"}}),
        "{aggregate}"
    );
    assert_eq!(
        aggregate["shape"]["pipeline"][1]["$group"]["_id"],
        "$customerId"
    );
    // Documents: what the driver received, getMores included.
    let batched = one(&|r| is(r, "find", kind_filter.clone()));
    assert_eq!(batched["count"], 2, "getMores are not samples of the shape");
    assert_eq!(batched["docs_returned"], received, "{batched}");
    let count = one(&|r| r["command"] == "count");
    assert_eq!(count["count"], 2);
    assert_eq!(
        count["docs_returned"], counted,
        "count's n, as the driver got it"
    );

    let update = one(&|r| r["command"] == "update");
    assert_eq!(update["count"], UPDATES as u64, "{update}");
    let delete = one(&|r| r["command"] == "delete");
    assert_eq!(delete["count"], DELETES as u64, "{delete}");
    let text = update["shape"].to_string();
    assert!(text.contains("$set") && text.contains("?number"), "{text}");

    // No literal anywhere: every admin endpoint and every log line.
    let mut bodies = Vec::new();
    for path in [
        "/stats",
        "/stats/shapes",
        "/stats/queries?top=1000",
        "/inflight?all=true",
        "/cursors",
        "/metrics",
    ] {
        let (code, body) = tap.admin_get(path);
        assert_eq!(code, 200, "{path}");
        bodies.push((path.to_string(), body));
    }
    assert!(
        bodies[4].1.contains("orders"),
        "the open cursor is listed: {}",
        bodies[4].1
    );
    assert!(
        !tap.events("slow").is_empty(),
        "the log scan sees command events"
    );
    for (i, line) in tap.logs().iter().enumerate() {
        bodies.push((format!("log line {i}"), line.to_string()));
    }
    for (what, body) in &bodies {
        for literal in &literals {
            assert!(
                !body.contains(literal.as_str()),
                "{what} holds {literal}: {body}"
            );
        }
    }
    drop(open);
}

// ---------------------------------------------------------------------------
// The scripted upstream: latency, order, the hash, folding.

/// find on collection `d<N>` is answered after N ms with three documents;
/// everything else at once.
fn delayed(req: &Received) -> Vec<Step> {
    let name = req.name();
    let body = req.command.as_deref();
    let coll = body.and_then(|c| c.get_str(name.as_str()).ok());
    let delay = coll.and_then(|c| c.strip_prefix('d')?.parse::<u64>().ok());
    match (name.as_str(), coll, delay) {
        ("find", Some(coll), Some(ms)) => {
            let answer = rawdoc! {
                "cursor": {
                    "firstBatch": [{"_id": 1}, {"_id": 2}, {"_id": 3}],
                    "id": 0_i64,
                    "ns": format!("queries.{coll}"),
                },
                "ok": 1.0,
            };
            vec![
                Step::Sleep(Duration::from_millis(ms)),
                Step::Send(scripted::reply(req, &answer)),
            ]
        }
        _ => scripted::default_reply(req),
    }
}

fn find(coll: &str, i: usize) -> RawDocumentBuf {
    rawdoc! { "find": coll, "filter": { "customerId": format!("secret-{i}") }, "$db": "queries" }
}

/// The shape hash `mongotap_proto::shape` gives for `body`, as 16 hex digits.
fn expected_hash(body: &RawDocumentBuf) -> String {
    let view = mongotap_proto::CommandView::parse(body).expect("view");
    mongotap_proto::shape::shape_hash(&view, &[])
        .expect("find has a shape")
        .to_string()
}

/// Client round trips in µs, and documents received.
async fn run(client: &mut RawClient, bodies: &[RawDocumentBuf]) -> (Vec<u64>, u64) {
    let (mut rtts, mut docs) = (Vec::new(), 0);
    for body in bodies {
        let sent = Instant::now();
        let reply = client.command(body).await;
        rtts.push(sent.elapsed().as_micros() as u64);
        if let Ok(cursor) = reply.get_document("cursor") {
            docs += cursor.get_array("firstBatch").unwrap().into_iter().count() as u64;
        }
    }
    (rtts, docs)
}

fn by_collection<'a>(rows: &'a [Value], coll: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["collection"] == coll)
        .unwrap_or_else(|| panic!("no row for {coll}: {rows:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_order_hash_and_folding_against_known_delays() {
    let upstream = Scripted::start(delayed).await;
    let tap = Mongotap::start(upstream.addr);
    let mut client = RawClient::connect(tap.listen).await;
    let fast: Vec<RawDocumentBuf> = (0..5).map(|i| find("d60", i)).collect();
    let slow: Vec<RawDocumentBuf> = (0..2).map(|i| find("d400", i)).collect();
    let (fast_rtts, fast_docs) = run(&mut client, &fast).await;
    let (slow_rtts, slow_docs) = run(&mut client, &slow).await;
    let rows = wait_queries(&tap, |rows| count_of(rows, |_| true) >= 7).await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    // 2 × 400 ms outweighs 5 × 60 ms: sorted by total time.
    assert_eq!(rows[0]["collection"], "d400", "{rows:#?}");
    for (coll, delay_us, rtts, docs, body) in [
        ("d60", 60_000, &fast_rtts, fast_docs, &fast[0]),
        ("d400", 400_000, &slow_rtts, slow_docs, &slow[0]),
    ] {
        let r = by_collection(&rows, coll);
        let cmax = rtts.iter().copied().max().unwrap();
        assert_eq!(r["count"], rtts.len() as u64, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["docs_returned"], docs, "{r}");
        let max = r["max_us"].as_u64().unwrap();
        assert!(
            (delay_us..=cmax).contains(&max),
            "{coll}: max {max} outside [{delay_us}, {cmax}]"
        );
        for q in ["p50_us", "p99_us"] {
            let v = r[q].as_u64().unwrap();
            let upper = cmax + cmax / HDR_ROUNDING + 1;
            assert!(
                (delay_us..=upper).contains(&v),
                "{coll}: {q} {v} outside [{delay_us}, {upper}]"
            );
        }
        assert_eq!(r["shape_hash"], expected_hash(body), "{r}");
        assert_eq!(r["shape"]["filter"], json!({"customerId": "?string"}));
    }
    // Other orders, top, and the parameters' errors.
    let by_count = json_get(&tap, "/stats/queries?sort=count");
    assert_eq!(by_count["queries"][0]["collection"], "d60");
    let top = json_get(&tap, "/stats/queries?top=1&sort=max");
    assert_eq!(top["queries"].as_array().map(Vec::len), Some(1));
    assert_eq!(top["queries"][0]["collection"], "d400");
    let (code, body) = tap.admin_get("/stats/queries?sort=slowest");
    assert_eq!(code, 400);
    assert!(body.contains("total, count, p99, max or errors"), "{body}");
    let (code, body) = tap.admin_get("/stats/queries?top=0");
    assert_eq!((code, body.contains("`top`")), (400, true), "{body}");
    // Prometheus: the shape's histogram, labelled by its hash.
    let hash = expected_hash(&fast[0]);
    let (_, metrics) = tap.admin_get("/metrics");
    let samples = prom::parse(&metrics);
    let labels = [
        ("command", "find"),
        ("db", "queries"),
        ("collection", "d60"),
        ("shape_hash", hash.as_str()),
    ];
    assert_eq!(
        prom::one(
            &samples,
            "mongotap_query_shape_duration_seconds_count",
            &labels
        ),
        5.0
    );
    let sum_us = prom::one(
        &samples,
        "mongotap_query_shape_duration_seconds_sum",
        &labels,
    ) * 1e6;
    let client_sum: u64 = fast_rtts.iter().sum();
    assert!(
        sum_us + 1.0 >= 300_000.0 && sum_us <= client_sum as f64 + 1.0,
        "_sum {sum_us}"
    );

    // A second process, bounded to 3 shapes: the same hash for the same
    // shape, and every sample past the bound folded and counted.
    let toml = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n[watch]\nmax_shapes = 3\n",
        upstream.addr
    );
    let second = Mongotap::spawn_config(&toml, &[]);
    let mut client = RawClient::connect(second.listen).await;
    let mut bodies = vec![find("d60", 99)];
    for coll in ["e1", "e2", "e3", "e4"] {
        bodies.extend((0..2).map(|i| find(coll, i)));
    }
    run(&mut client, &bodies).await;
    let rows = wait_queries(&second, |rows| count_of(rows, |_| true) >= 9).await;
    assert_eq!(
        by_collection(&rows, "d60")["shape_hash"],
        hash,
        "another process, the same hash"
    );
    assert_eq!(rows.len(), 4, "3 shapes and other: {rows:#?}");
    let other = by_collection(&rows, "other");
    assert_eq!(
        (&other["shape_hash"], &other["count"]),
        (&json!("other"), &json!(4))
    );
    let (_, metrics) = second.admin_get("/metrics");
    let folded = prom::one(
        &prom::parse(&metrics),
        "mongotap_query_shapes_folded_total",
        &[],
    );
    assert_eq!(folded, 4.0, "e3 and e4, twice each");
}
