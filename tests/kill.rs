//! The kill switch, `POST /inflight/{conn}/{request_id}/kill`, against a
//! real FerretDB frozen with SIGSTOP: the killed aggregate's driver gets
//! an error at once, another connection's command carries on, and the
//! `killed` event and counter say what happened. And its safety rules:
//! 403 without admin.token, 401 with a wrong token, 404 for no such command.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/admin_http.rs"]
mod admin_http;
#[path = "support/prom.rs"]
mod prom;
mod support;

use admin_http::{get_json, request};
use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;
use mongodb::Client;
use serde_json::Value;
use std::time::{Duration, Instant};
use support::{signal, Ferret, Mongotap};

const T: Duration = Duration::from_secs(15);
const TOKEN: &str = "kill-test-token";

/// `retryReads=false`: a driver retries a read whose connection closed, on
/// a new connection, which would wait on the frozen server too. The test
/// is about what the killed connection's client sees.
async fn client(uri: &str, app: &str) -> Client {
    let mut opts = ClientOptions::parse(format!("{uri}&appName={app}&retryReads=false"))
        .await
        .expect("parse uri");
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(opts).expect("client")
}
/// The /inflight row of `app`'s `command`, waiting for it to appear.
async fn wait_row(tap: &Mongotap, app: &str, command: &str) -> Value {
    let admin = tap.admin.expect("admin");
    let deadline = Instant::now() + T;
    loop {
        let rows = get_json(admin, "/inflight", TOKEN);
        if let Some(row) = rows
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["app"] == app && r["command"] == command)
        {
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{app}'s {command} never in /inflight: {rows}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_the_stuck_command_and_only_it() {
    let ferret = Ferret::start();
    let tap = Mongotap::with_token(ferret.addr(), TOKEN, &["--stall-ms", "300"]);
    let admin = tap.admin.expect("admin");
    let victim = client(&tap.uri(), "victim").await;
    let bystander = client(&tap.uri(), "bystander").await;
    let coll = victim.database("kill").collection::<Document>("orders");
    coll.insert_many((0..20).map(|i| doc! {"i": i, "g": i % 4}))
        .await
        .expect("insert");
    // Both pools hold a connection before the server freezes.
    bystander
        .database("kill")
        .collection::<Document>("orders")
        .find_one(doc! {})
        .await
        .expect("warm up");

    signal(ferret.pid(), "STOP");
    let sent = Instant::now();
    let agg = tokio::spawn(async move {
        let pipeline = vec![
            doc! {"$match": {"i": {"$gte": 0}}},
            doc! {"$group": {"_id": "$g", "n": {"$sum": 1}}},
        ];
        let r = coll.aggregate(pipeline).await.map(|_| ());
        (r, Instant::now())
    });
    let other = bystander.database("kill").collection::<Document>("orders");
    let find = tokio::spawn(async move { other.find_one(doc! {"i": 7}).await });

    let row = wait_row(&tap, "victim", "aggregate").await;
    let by_row = wait_row(&tap, "bystander", "find").await;
    let (conn, request_id) = (
        row["conn"].as_u64().unwrap(),
        row["request_id"].as_i64().unwrap(),
    );
    assert_ne!(by_row["conn"], row["conn"], "two connections");

    // The safety rules first, on the real pending command.
    let path = format!("/inflight/{conn}/{request_id}/kill");
    assert_eq!(request(admin, "POST", &path, None).0, 401);
    assert_eq!(request(admin, "POST", &path, Some("wrong")).0, 401);
    let other_id = format!("/inflight/{conn}/{}/kill", request_id + 1000);
    assert_eq!(request(admin, "POST", &other_id, Some(TOKEN)).0, 404);
    assert_eq!(
        request(admin, "POST", "/inflight/999999/1/kill", Some(TOKEN)).0,
        404
    );
    assert_eq!(tap.events("killed").len(), 0, "refused kills kill nothing");

    let asked = Instant::now();
    let (code, body) = request(admin, "POST", &path, Some(TOKEN));
    let answered = Instant::now();
    assert_eq!(code, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(reply["killed"], true);
    assert_eq!(reply["method"], "close", "FerretDB has no killOp");
    let age_ms = reply["age_ms"].as_u64().expect("age_ms");
    // The command was at least as old as /inflight said, and no older than
    // the client's own clock allows.
    let row_age = row["age_ms"].as_u64().unwrap();
    let client_age = (answered - sent).as_millis() as u64;
    assert!(
        (row_age..=client_age).contains(&age_ms),
        "age_ms {age_ms} outside [/inflight's {row_age}, client's {client_age}]"
    );

    let (result, returned) = tokio::time::timeout(T, agg)
        .await
        .expect("aggregate returns")
        .expect("join");
    let err = result.expect_err("the killed aggregate fails");
    let waited = returned.saturating_duration_since(asked);
    assert!(
        waited < Duration::from_secs(1),
        "the driver waited {waited:?} after the kill: {err}"
    );
    assert!(
        matches!(*err.kind, mongodb::error::ErrorKind::Io(_)),
        "a closed connection, not a server error: {err}"
    );

    let ev = tap.wait_for_event_async("killed", T).await;
    assert_eq!(ev["conn"], conn);
    assert_eq!(ev["request_id"], request_id);
    assert_eq!(ev["app"], "victim");
    assert_eq!(ev["command"], "aggregate");
    assert_eq!(ev["db"], "kill");
    assert_eq!(ev["collection"], "orders");
    assert_eq!(ev["stages"], "$match>$group");
    assert_eq!(ev["method"], "close");
    // mongotap tried killOp first; the frozen server could not answer.
    assert_eq!(ev["kill_op"], "timed out after 250 ms");
    assert_eq!(ev["age_ms"], age_ms);
    let by = ev["by"].as_str().expect("by");
    assert!(
        by.starts_with("127.0.0.1:") && by != "127.0.0.1:0",
        "by {by}"
    );
    // The command itself is reported as never answered, saying why.
    let never = tap.wait_for_event_async("never_replied", T).await;
    assert_eq!(never["request_id"], request_id);
    assert!(
        never["reason"]
            .as_str()
            .unwrap()
            .contains("killed from the admin endpoint"),
        "{never}"
    );
    let (code, metrics) = request(admin, "GET", "/metrics", Some(TOKEN));
    assert_eq!(code, 200);
    let killed: Vec<f64> = prom::parse(&metrics)
        .into_iter()
        .filter(|s| s.name == "mongotap_killed_total")
        .map(|s| s.value)
        .collect();
    assert_eq!(killed, [1.0]);

    // The other connection is untouched: still pending, then answered.
    let rows = get_json(admin, "/inflight", TOKEN);
    let rows = rows.as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["app"] == "bystander" && r["request_id"] == by_row["request_id"]),
        "{rows:?}"
    );
    assert!(!rows.iter().any(|r| r["app"] == "victim"), "{rows:?}");
    signal(ferret.pid(), "CONT");
    let found = tokio::time::timeout(T, find)
        .await
        .expect("find returns")
        .expect("join");
    let found = found
        .expect("the bystander's find succeeds")
        .expect("a document");
    assert_eq!(found.get_i32("i").unwrap(), 7);
    assert_eq!(tap.events("killed").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_is_forbidden_without_admin_token() {
    let ferret = Ferret::start();
    let tap = Mongotap::start(ferret.addr());
    let admin = tap.admin.expect("admin");
    // Whatever the token sent: without admin.token there is no kill switch.
    for token in [None, Some("anything")] {
        let (code, body) = request(admin, "POST", "/inflight/1/1/kill", token);
        assert_eq!(code, 403, "{body}");
        assert!(body.contains("admin.token"), "{body}");
    }
}
