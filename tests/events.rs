//! `GET /events` (server-sent events) and `GET /events/recent` against a
//! real FerretDB frozen with SIGSTOP: the `stalled` and `killed` events
//! arrive on the stream with the values the test knows from its own side
//! (what it sent, its clock, the kill's answer), and the ring holds the
//! same objects, newest first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/admin_http.rs"]
mod admin_http;
mod support;

use admin_http::{next_event, request, sse};
use mongodb::bson::{doc, Document};
use mongodb::Client;
use serde_json::Value;
use std::time::{Duration, Instant};
use support::{signal, Ferret, Mongotap};

const T: Duration = Duration::from_secs(15);
const TOKEN: &str = "events-test-token";
const STALL_MS: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_and_the_ring_carry_stalled_and_killed() {
    let ferret = Ferret::start();
    let stall_ms = STALL_MS.to_string();
    let tap = Mongotap::with_token(ferret.addr(), TOKEN, &["--stall-ms", &stall_ms]);
    let admin = tap.admin.expect("admin");
    assert_eq!(request(admin, "GET", "/events", None).0, 401);
    assert_eq!(
        request(admin, "GET", "/events/recent", Some("wrong")).0,
        401
    );
    let live = sse(admin, TOKEN);

    let uri = format!("{}&appName=sse-test&retryReads=false", tap.uri());
    let c = Client::with_uri_str(&uri).await.expect("client");
    let coll = c.database("feed").collection::<Document>("orders");
    coll.insert_many((0..10).map(|i| doc! {"i": i}))
        .await
        .expect("insert");
    signal(ferret.pid(), "STOP");
    let sent = Instant::now();
    let agg = tokio::spawn(async move {
        let pipeline = vec![
            doc! {"$match": {"i": {"$gt": 2}}},
            doc! {"$sort": {"i": -1}},
            doc! {"$limit": 3},
        ];
        coll.aggregate(pipeline).await.map(|_| ())
    });

    let stalled = tokio::task::block_in_place(|| {
        next_event(&live, T, |e| {
            e["event"] == "stalled" && e["command"] == "aggregate"
        })
    });
    let seen = sent.elapsed().as_millis() as u64;
    let age_ms = stalled["age_ms"].as_u64().expect("age_ms");
    assert!(
        (STALL_MS..=seen).contains(&age_ms),
        "stalled at {age_ms} ms, sent {seen} ms ago"
    );
    assert_eq!(stalled["app"], "sse-test");
    assert_eq!(stalled["db"], "feed");
    assert_eq!(stalled["collection"], "orders");
    assert_eq!(stalled["stages"], "$match>$sort>$limit");
    assert_eq!(stalled["level"], "WARN");
    // The same object as the JSON log line, field for field (but the
    // timestamp, which each writer takes on its own).
    let logged = tap.events("stalled").into_iter().next().expect("logged");
    for (k, v) in logged.as_object().unwrap() {
        if k != "timestamp" {
            assert_eq!(&stalled[k], v, "field {k}");
        }
    }

    let (conn, request_id) = (
        stalled["conn"].as_u64().unwrap(),
        stalled["request_id"].as_i64().unwrap(),
    );
    let (code, body) = request(
        admin,
        "POST",
        &format!("/inflight/{conn}/{request_id}/kill"),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let killed = tokio::task::block_in_place(|| next_event(&live, T, |e| e["event"] == "killed"));
    assert_eq!(killed["request_id"], request_id);
    assert_eq!(killed["conn"], conn);
    assert_eq!(killed["app"], "sse-test");
    assert_eq!(killed["stages"], "$match>$sort>$limit");
    assert_eq!(killed["method"], "close");
    assert_eq!(killed["age_ms"], answer["age_ms"]);
    assert!(tokio::time::timeout(T, agg)
        .await
        .expect("returns")
        .expect("join")
        .is_err());
    let never =
        tokio::task::block_in_place(|| next_event(&live, T, |e| e["event"] == "never_replied"));
    assert_eq!(never["request_id"], request_id);

    // The ring: the same objects, newest first.
    let (code, body) = request(admin, "GET", "/events/recent", Some(TOKEN));
    assert_eq!(code, 200);
    let recent: Vec<Value> = serde_json::from_str(&body).expect("json array");
    let at = |name: &str| {
        recent
            .iter()
            .position(|e| e["event"] == name)
            .unwrap_or_else(|| panic!("no {name} in {recent:?}"))
    };
    assert!(
        at("never_replied") < at("killed") && at("killed") < at("stalled"),
        "{recent:?}"
    );
    assert_eq!(recent[at("killed")], killed);
    assert_eq!(recent[at("stalled")], stalled);
    signal(ferret.pid(), "CONT");
}
