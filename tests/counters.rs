//! The counters and gauges of /metrics (and the matching /stats and
//! /cursors figures) against what the test's own clients did: how many
//! connections they opened, which commands failed, which replies matched
//! nothing, how many cursors they left open and how many commands they
//! abandoned. The scripted upstream is for what a real server will not do
//! on demand: fail a find, send a stray reply, or never answer.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/prom.rs"]
mod prom;
#[path = "support/scripted.rs"]
mod scripted;
mod support;

use bson::{rawdoc, RawDocumentBuf};
use scripted::{msg, next_id, reply, RawClient, Received, Scripted, Step};
use serde_json::Value;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use support::Mongotap;

const T: Duration = Duration::from_secs(10);
const DB: &str = "counters";

/// Cursor ids the upstream hands out, one per find on `open`.
static NEXT_CURSOR: AtomicI64 = AtomicI64::new(7_000_000_001);

/// find on `fail` fails (ok: 0), on `stray` is answered after a reply to a
/// request nobody sent, on `open` opens a cursor with one document, and on
/// `held` is never answered.
fn script(req: &Received) -> Vec<Step> {
    let body = req.command.as_deref();
    let coll = body.and_then(|c| c.get_str("find").ok()).unwrap_or("");
    let ok = rawdoc! { "cursor": { "firstBatch": [], "id": 0_i64, "ns": format!("{DB}.{coll}") }, "ok": 1.0 };
    match (req.name().as_str(), coll) {
        ("find", "fail") => {
            let err =
                rawdoc! { "ok": 0.0, "code": 2, "codeName": "BadValue", "errmsg": "scripted" };
            vec![Step::Send(reply(req, &err))]
        }
        ("find", "stray") => vec![
            Step::Send(msg(next_id(), 0x5eed, 0, &rawdoc! { "ok": 1.0 })),
            Step::Send(reply(req, &ok)),
        ],
        ("find", "open") => {
            let id = NEXT_CURSOR.fetch_add(1, Ordering::Relaxed);
            let open = rawdoc! {
                "cursor": { "firstBatch": [{ "_id": 1 }], "id": id, "ns": format!("{DB}.open") },
                "ok": 1.0,
            };
            vec![Step::Send(reply(req, &open))]
        }
        ("find", "held") => vec![Step::Sleep(Duration::from_secs(3600))],
        ("killCursors", _) => {
            let ids: Vec<i64> = body
                .and_then(|c| c.get_array("cursors").ok())
                .map(|a| a.into_iter().filter_map(|v| v.ok()?.as_i64()).collect())
                .unwrap_or_default();
            let killed: bson::RawArrayBuf = ids.into_iter().collect();
            vec![Step::Send(reply(
                req,
                &rawdoc! { "cursorsKilled": killed, "ok": 1.0 },
            ))]
        }
        _ => scripted::default_reply(req),
    }
}

fn find(coll: &str) -> RawDocumentBuf {
    rawdoc! { "find": coll, "filter": {}, "$db": DB }
}

async fn connect(tap: &Mongotap, app: &str) -> RawClient {
    let mut c = RawClient::connect(tap.listen).await;
    let hello = rawdoc! {
        "hello": 1,
        "client": { "application": { "name": app }, "driver": { "name": "raw", "version": "1" } },
        "$db": "admin",
    };
    c.command(&hello).await;
    c
}

/// Every unlabelled sample of /metrics, by name.
fn metrics(tap: &Mongotap) -> Vec<prom::Sample> {
    let (code, body) = tap.admin_get("/metrics");
    assert_eq!(code, 200, "{body}");
    prom::parse(&body)
}

fn metric(samples: &[prom::Sample], name: &str) -> f64 {
    prom::one(samples, name, &[])
}

/// Polls /metrics until every `(name, value)` holds (closes and stray
/// replies are seen asynchronously), then asserts them all.
async fn settle(tap: &Mongotap, want: &[(&str, f64)]) -> Vec<prom::Sample> {
    let deadline = Instant::now() + T;
    loop {
        let samples = metrics(tap);
        let all = want.iter().all(|(n, v)| metric(&samples, n) == *v);
        if all || Instant::now() > deadline {
            for (n, v) in want {
                assert_eq!(metric(&samples, n), *v, "{n}");
            }
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn json(tap: &Mongotap, path: &str) -> Value {
    let (code, body) = tap.admin_get(path);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_what_the_clients_did() {
    let upstream = Scripted::start(script).await;
    let tap = Mongotap::start(upstream.addr);

    // Failures: three finds answered with ok: 0.
    let mut a = connect(&tap, "counters").await;
    for _ in 0..3 {
        let r = a.command(&find("fail")).await;
        assert_eq!(r.get_f64("ok").ok(), Some(0.0));
    }
    // Two stray replies, each followed by the real one.
    for _ in 0..2 {
        let id = next_id();
        a.send(&msg(id, 0, 0, &find("stray"))).await;
        for expect_to in [0x5eed, id] {
            let frame = a.recv(T).await.expect("reply");
            assert_eq!(
                mongotap_proto::Header::parse(&frame)
                    .expect("header")
                    .response_to,
                expect_to
            );
        }
    }
    // Four cursors opened, one killed, three left open.
    let mut b = connect(&tap, "counters").await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let r = b.command(&find("open")).await;
        ids.push(
            r.get_document("cursor")
                .and_then(|c| c.get_i64("id"))
                .expect("id"),
        );
    }
    let kill = rawdoc! { "killCursors": "open", "cursors": [ids[0]], "$db": DB };
    b.command(&kill).await;
    // Two commands the upstream never answers, on two connections.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect(&tap, "counters").await;
        c.send(&msg(next_id(), 0, 0, &find("held"))).await;
        held.push(c);
    }
    let deadline = Instant::now() + T;
    while upstream.received().iter().filter(|r| is_held(r)).count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the held finds never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    settle(
        &tap,
        &[
            ("mongotap_connections_total", 4.0),
            ("mongotap_connections_active", 4.0),
            ("mongotap_inflight_commands", 2.0),
            ("mongotap_failed_commands_total", 3.0),
            ("mongotap_unmatched_replies_total", 2.0),
            ("mongotap_cursors_open", 3.0),
            ("mongotap_abandoned_total", 0.0),
            ("mongotap_cursors_leaked_total", 0.0),
            ("mongotap_never_replied_total", 0.0),
        ],
    )
    .await;
    // The failures are errors in /stats and in the histogram, and nothing
    // else is. Sessions publish samples every 500 ms: wait for all 14 (4
    // hellos, 3 + 2 + 4 finds, 1 killCursors).
    let stats = wait_samples(&tap, 14).await;
    let rows = stats["commands"].as_array().expect("rows");
    let errors: Vec<(&Value, &Value, &Value)> = rows
        .iter()
        .filter(|r| r["errors"] != 0)
        .map(|r| (&r["command"], &r["collection"], &r["errors"]))
        .collect();
    assert_eq!(
        errors,
        [(&"find".into(), &"fail".into(), &3.into())],
        "{stats}"
    );
    let samples = metrics(&tap);
    let histogram = "mongotap_command_duration_seconds_count";
    let error_counts: Vec<(&str, f64)> = prom::select(&samples, histogram, &[("outcome", "error")])
        .iter()
        .map(|s| (s.labels["collection"].as_str(), s.value))
        .collect();
    assert_eq!(error_counts, [("fail", 3.0)]);
    // /cursors lists exactly the three left open, each with its one document.
    let open: Vec<(i64, u64, u64)> = json(&tap, "/cursors")
        .as_array()
        .expect("cursors")
        .iter()
        .map(|r| {
            let n = |f: &str| r[f].as_u64().expect(f);
            (
                r["cursor_id"].as_i64().expect("id"),
                n("documents"),
                n("batches"),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let want: Vec<(i64, u64, u64)> = ids[1..].iter().map(|&id| (id, 1, 1)).collect();
    assert_eq!(open, want);
    let inflight = json(&tap, "/inflight");
    let pending: Vec<&Value> = inflight
        .as_array()
        .expect("inflight")
        .iter()
        .map(|r| &r["collection"])
        .collect();
    assert_eq!(
        pending,
        [&Value::from("held"), &Value::from("held")],
        "{inflight}"
    );

    // Closing b leaks its three cursors; closing the held connections
    // abandons their commands.
    drop(b);
    drop(held);
    settle(
        &tap,
        &[
            ("mongotap_connections_total", 4.0),
            ("mongotap_connections_active", 1.0),
            ("mongotap_inflight_commands", 0.0),
            ("mongotap_cursors_open", 0.0),
            ("mongotap_cursors_leaked_total", 3.0),
            ("mongotap_abandoned_total", 2.0),
            ("mongotap_never_replied_total", 0.0),
        ],
    )
    .await;
    drop(a);
    settle(&tap, &[("mongotap_connections_active", 0.0)]).await;
}

/// /stats once its rows count `want` samples in all (or after T).
async fn wait_samples(tap: &Mongotap, want: u64) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let stats = json(tap, "/stats");
        let rows = stats["commands"].as_array().cloned().unwrap_or_default();
        let n: u64 = rows.iter().filter_map(|r| r["count"].as_u64()).sum();
        if n >= want || Instant::now() > deadline {
            assert_eq!(n, want, "{stats}");
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_held(r: &Received) -> bool {
    r.name() == "find" && r.command.as_deref().and_then(|c| c.get_str("find").ok()) == Some("held")
}
