//! Upstream health and what /inflight shows: /readyz and
//! `mongotap_upstream_up` against a real FerretDB that the test kills and
//! restarts, the start-up warning for an upstream nobody listens on, and
//! /inflight leaving out commands that wait by design.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/scripted.rs"]
mod scripted;
mod support;

use bson::rawdoc;
use mongotap_proto::op_msg;
use scripted::{msg, next_id, RawClient, Scripted, Step};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{Ferret, Mongotap};

/// Probe every 200 ms with a 500 ms timeout: a change shows within about
/// 0.7 s, which the bounds below allow many times over on a loaded machine.
const FAST_PROBES: &str = "[health]\ninterval_ms = 200\ntimeout_ms = 500\n";

/// Generous: two cores shared with other builds can delay anything.
const T: Duration = Duration::from_secs(15);

fn start(upstream: SocketAddr, config: &str) -> (Mongotap, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mongotap.toml");
    std::fs::write(&path, config).expect("write config");
    let path = path.to_str().expect("utf-8 path").to_owned();
    (Mongotap::start_with(upstream, &["--config", &path]), dir)
}

fn readyz(tap: &Mongotap) -> (u16, Value) {
    let (code, body) = tap.admin_get("/readyz");
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/readyz {body:?}: {e}"));
    (code, v)
}

/// Polls /readyz until it answers `code`; returns the body and when.
fn wait_readyz(tap: &Mongotap, code: u16) -> (Value, Instant) {
    let deadline = Instant::now() + T;
    loop {
        let (got, body) = readyz(tap);
        if got == code {
            return (body, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {got} {body} after {T:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn upstream_up(tap: &Mongotap) -> i64 {
    let (code, text) = tap.admin_get("/metrics");
    assert_eq!(code, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("mongotap_upstream_up "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no mongotap_upstream_up in /metrics:\n{text}"))
}

fn ms(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not a number of ms: {v}"))
}

/// Up, killed, restarted: /readyz and the gauge follow the real server,
/// and each change is logged once however many probes see it.
#[test]
fn readyz_follows_a_real_server_going_down_and_coming_back() {
    let mut ferret = Ferret::start();
    let upstream = ferret.addr().to_string();
    let (tap, _dir) = start(ferret.addr(), FAST_PROBES);

    let (body, _) = wait_readyz(&tap, 200);
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["upstream"], upstream.as_str());
    // The last success is at most an interval old, plus scheduling.
    assert!(ms(&body["last_ok_ms_ago"]) < 5_000, "{body}");
    assert_eq!(upstream_up(&tap), 1);
    tap.wait_for_event("upstream_up", T);

    ferret.kill();
    let killed = Instant::now();
    let (body, seen_down) = wait_readyz(&tap, 503);
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["upstream"], upstream.as_str());
    let error = body["error"].as_str().expect("error text");
    assert!(
        error.contains(&upstream),
        "the error names the upstream: {error}"
    );
    // Down since a probe after the kill: never longer than the kill is old.
    assert!(
        ms(&body["since_ms"]) <= killed.elapsed().as_millis() as u64,
        "{body}"
    );
    assert!(
        seen_down.duration_since(killed) < Duration::from_secs(10),
        "noticed {:?} after the kill",
        seen_down.duration_since(killed)
    );
    assert_eq!(upstream_up(&tap), 0);
    let down = tap.wait_for_event("upstream_down", T);
    assert_eq!(down["at_start"], false, "{down}");
    assert!(down["error"]
        .as_str()
        .is_some_and(|e| e.contains(&upstream)));
    // Several more failing probes: still one event, and still 503.
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(tap.events("upstream_down").len(), 1);
    assert_eq!(readyz(&tap).0, 503);

    let restarting = Instant::now();
    ferret.restart();
    let (body, seen_up) = wait_readyz(&tap, 200);
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(upstream_up(&tap), 1);
    let ups = tap.events("upstream_up");
    assert_eq!(ups.len(), 2, "{ups:?}");
    assert_eq!(tap.events("upstream_down").len(), 1);
    // The outage began before /readyz said 503 and ended after the restart
    // began, and lay between the kill and /readyz saying 200.
    let down_ms = ms(&ups[1]["down_ms"]);
    let at_least = restarting.duration_since(seen_down).as_millis() as u64;
    let at_most = seen_up.duration_since(killed).as_millis() as u64;
    assert!(
        (at_least..=at_most).contains(&down_ms),
        "down_ms {down_ms} outside {at_least}..={at_most}"
    );
}

/// A server that accepts but does not answer (SIGSTOP) is down once the
/// probe's timeout passes, and up again when it resumes.
#[test]
fn a_hung_server_is_down_after_the_probe_timeout() {
    let ferret = Ferret::start();
    let upstream = ferret.addr().to_string();
    let (tap, _dir) = start(ferret.addr(), FAST_PROBES);
    wait_readyz(&tap, 200);

    support::signal(ferret.pid(), "STOP");
    let stopped = Instant::now();
    let (body, seen_down) = wait_readyz(&tap, 503);
    assert_eq!(upstream_up(&tap), 0);
    support::signal(ferret.pid(), "CONT");
    assert_eq!(
        body["error"],
        format!("upstream {upstream} did not answer hello within 500 ms"),
        "{body}"
    );
    // A hello goes unanswered for the whole 500 ms timeout before the
    // probe says down. The one that does may have been sent just before
    // the stop, if the server was slow to answer it: allow an interval.
    assert!(
        seen_down.duration_since(stopped) >= Duration::from_millis(300),
        "down {:?} after SIGSTOP, before the 500 ms timeout",
        seen_down.duration_since(stopped)
    );
    let (body, _) = wait_readyz(&tap, 200);
    assert_eq!(body["ready"], true);
    assert_eq!(tap.events("upstream_down").len(), 1);
    assert_eq!(tap.events("upstream_up").len(), 2);
}

/// An upstream nobody listens on is reported at start-up, and /readyz
/// needs no admin token (orchestrators probe it without secrets), while
/// the other routes still do.
#[test]
fn an_upstream_nobody_listens_on_is_reported_at_start() {
    let port = support::free_port();
    let upstream: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        std::net::TcpStream::connect_timeout(&upstream, Duration::from_millis(500)).is_err(),
        "something listens on {upstream}"
    );
    let config = format!("{FAST_PROBES}[admin]\ntoken = \"s3cret\"\n");
    let (tap, _dir) = start(upstream, &config);

    let down = tap.wait_for_event("upstream_down", T);
    assert_eq!(down["at_start"], true, "{down}");
    assert_eq!(down["upstream"], upstream.to_string());
    assert!(
        down["error"]
            .as_str()
            .is_some_and(|e| e.contains(&upstream.to_string())),
        "{down}"
    );
    let (code, body) = readyz(&tap);
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["upstream"], upstream.to_string());
    assert_eq!(body["error"], down["error"], "the same failure");
    assert_eq!(
        tap.admin_get("/metrics").0,
        401,
        "other routes keep the token"
    );
    // Failing probe after failing probe: one warning, not one per probe.
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(tap.events("upstream_down").len(), 1);
    assert!(tap.events("upstream_up").is_empty());
}

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
