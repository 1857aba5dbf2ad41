//! What /inflight shows: commands that wait by design are left out.

#[path = "support/scripted.rs"]
mod scripted;
mod support;

use bson::rawdoc;
use mongotap_proto::op_msg;
use scripted::{msg, next_id, RawClient, Scripted, Step};
use serde_json::Value;
use std::time::{Duration, Instant};
use support::Mongotap;

/// Generous: two cores shared with other builds can delay anything.
const T: Duration = Duration::from_secs(15);

fn inflight(tap: &Mongotap, query: &str) -> Vec<Value> {
    let (code, body) = tap.admin_get(&format!("/inflight{query}"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Value>(&body)
        .expect("/inflight JSON")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Request ids in a set of /inflight rows, sorted.
fn ids(rows: &[Value]) -> Vec<i64> {
    let mut ids: Vec<i64> = rows
        .iter()
        .map(|r| r["request_id"].as_i64().expect("request_id"))
        .collect();
    ids.sort_unstable();
    ids
}

/// Two commands the upstream never answers and a monitor's awaitable hello
/// the upstream holds open: /inflight lists the two, `?all=true` all three
/// with the hello marked `awaiting`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_leaves_out_what_waits_by_design() {
    let upstream = Scripted::start(|req| {
        let body = req.command.clone().unwrap_or_default();
        let awaitable = body.get("topologyVersion").ok().flatten().is_some();
        match req.name().as_str() {
            "find" | "aggregate" => vec![Step::Sleep(Duration::from_secs(60))],
            "hello" if awaitable => vec![Step::Sleep(Duration::from_secs(60))],
            _ => scripted::default_reply(req),
        }
    })
    .await;
    let tap = Mongotap::start(upstream.addr);

    let mut sent = Vec::new();
    let mut clients = Vec::new();
    for (app, command) in [
        ("stuck-find", rawdoc! { "find": "orders", "$db": "shop" }),
        (
            "stuck-agg",
            rawdoc! { "aggregate": "orders", "pipeline": [{"$match": {"x": 1}}], "cursor": {}, "$db": "shop" },
        ),
        (
            "monitor",
            rawdoc! {
                "hello": 1,
                "topologyVersion": {"processId": bson::oid::ObjectId::new(), "counter": 0i64},
                "maxAwaitTimeMS": 10_000i64,
                "$db": "admin",
            },
        ),
    ] {
        let mut c = RawClient::connect(tap.listen).await;
        c.command(&rawdoc! {
            "hello": 1,
            "client": { "application": { "name": app }, "driver": { "name": "raw", "version": "1" } },
            "$db": "admin",
        })
        .await;
        let id = next_id();
        let flags = if app == "monitor" {
            op_msg::EXHAUST_ALLOWED
        } else {
            0
        };
        c.send(&msg(id, 0, flags, &command)).await;
        upstream
            .wait_for(|r| r.header.request_id == id, Duration::from_secs(10))
            .await;
        sent.push(i64::from(id));
        clients.push(c);
    }
    let (hello_id, mut stuck) = (sent[2], sent[..2].to_vec());
    stuck.sort_unstable();

    let deadline = Instant::now() + T;
    let mut all = inflight(&tap, "?all=true");
    while all.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        all = inflight(&tap, "?all=true");
    }
    assert_eq!(all.len(), 3, "{all:?}");
    let awaiting: Vec<&Value> = all.iter().filter(|r| r["awaiting"] == true).collect();
    assert_eq!(awaiting.len(), 1, "{all:?}");
    assert_eq!(awaiting[0]["request_id"], hello_id);
    assert_eq!(awaiting[0]["command"], "hello");
    assert_eq!(awaiting[0]["app"], "monitor");
    assert_eq!(awaiting[0]["stalled"], false);

    for query in ["", "?all=false"] {
        let rows = inflight(&tap, query);
        assert_eq!(ids(&rows), stuck, "/inflight{query}: {rows:?}");
        assert!(rows.iter().all(|r| r["awaiting"] == false), "{rows:?}");
    }
    let mut apps: Vec<String> = inflight(&tap, "")
        .iter()
        .map(|r| r["app"].as_str().unwrap_or("").to_owned())
        .collect();
    apps.sort_unstable();
    assert_eq!(apps, ["stuck-agg", "stuck-find"]);
    let (_, metrics) = tap.admin_get("/metrics");
    assert!(
        metrics.contains("\nmongotap_inflight_commands 2\n"),
        "the gauge counts what /inflight lists:\n{metrics}"
    );

    let (code, body) = tap.admin_get("/inflight?all=yes");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("all"), "{body}");
    drop(clients);
}
