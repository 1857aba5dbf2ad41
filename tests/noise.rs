//! Less noise, more explanation: what every session of a well-known client
//! does is not reported as a failure, a client that resets its connection
//! after its last reply closed normally, and a reply that matches no
//! request says why.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/scripted.rs"]
mod scripted;
mod support;

use bson::rawdoc;
use mongotap_proto::op_msg::MORE_TO_COME;
use mongotap_proto::Header;
use scripted::{msg, next_id, reply, RawClient, Scripted, Step};
use serde_json::Value;
use std::time::{Duration, Instant};
use support::{signal, Ferret, Mongotap};

const T: Duration = Duration::from_secs(10);

/// mongotap in front of `upstream`, logging mongotap's debug events (the
/// ones these tests are about), with its config file kept alive.
fn debug_tap(upstream: std::net::SocketAddr) -> (Mongotap, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("mongotap.toml");
    std::fs::write(&config, "[log]\nlevel = \"info,mongotap=debug\"\n").expect("write config");
    let path = config.to_str().expect("utf-8 path");
    (Mongotap::start_with(upstream, &["--config", path]), dir)
}

/// A counter's value in /metrics.
fn metric(tap: &Mongotap, name: &str) -> u64 {
    let (status, body) = tap.admin_get("/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

/// The line that ends the session of the client at `client`.
async fn close_line(tap: &Mongotap, client: String) -> Value {
    tap.wait_for(T, move |v| {
        v["client"] == client.as_str()
            && matches!(
                v["message"].as_str(),
                Some("connection closed" | "connection failed")
            )
    })
    .await
    .expect("a connection-close line for the client")
}

/// Closes with a TCP RST instead of a FIN, as a client does that sets
/// SO_LINGER 0 or exits with unread bytes.
fn reset(client: RawClient) {
    socket2::SockRef::from(&client.stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(client);
}

/// Every reply delivered, nothing pending: a reset is how the client said
/// goodbye, not a failed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_the_last_reply_is_a_normal_close() {
    let ferret = Ferret::start();
    let (tap, _dir) = debug_tap(ferret.addr());
    let mut client = RawClient::connect(tap.listen).await;
    let pong = client.command(&rawdoc! { "ping": 1, "$db": "admin" }).await;
    assert_eq!(pong.get_f64("ok").ok(), Some(1.0), "{pong:?}");
    let me = client.stream.local_addr().expect("local addr").to_string();
    reset(client);
    let line = close_line(&tap, me).await;
    assert_eq!(line["message"], "connection closed", "{line}");
    assert_eq!(line["close"], "normal", "{line}");
    assert_eq!(line["closed_by"], "client", "{line}");
    assert_eq!(line["reset"], true, "{line}");
    assert!(tap.events("abandoned").is_empty());
}

/// The same reset with a command pending is the client giving up on it:
/// `abandoned`, and the session did not end normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_with_a_command_pending_is_abandoned() {
    let ferret = Ferret::start();
    let (tap, _dir) = debug_tap(ferret.addr());
    let mut client = RawClient::connect(tap.listen).await;
    client.command(&rawdoc! { "ping": 1, "$db": "admin" }).await;
    // A frozen server keeps the find pending for as long as the test needs.
    signal(ferret.pid(), "STOP");
    let id = next_id();
    let find = rawdoc! { "find": "c", "filter": {}, "$db": "noise" };
    client.send(&msg(id, 0, 0, &find)).await;
    let deadline = Instant::now() + T;
    loop {
        let (_, body) = tap.admin_get("/inflight");
        let rows: Vec<Value> = serde_json::from_str(&body).expect("inflight json");
        if rows.iter().any(|r| r["request_id"] == id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the find never showed as pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let me = client.stream.local_addr().expect("local addr").to_string();
    reset(client);
    let line = close_line(&tap, me).await;
    signal(ferret.pid(), "CONT");
    assert_eq!(line["close"], "failed", "{line}");
    let abandoned = tap.wait_for_event_async("abandoned", T).await;
    assert_eq!(abandoned["request_id"], id);
    assert_eq!(abandoned["command"], "find");
}

/// A server that answers a moreToCome request (as FerretDB does for w:0
/// writes): the reply is counted once as unmatched, and the debug event
/// says it answered a moreToCome request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_more_to_come_request_is_unmatched_and_says_why() {
    let upstream = Scripted::start(|req| {
        if req.flags & MORE_TO_COME != 0 {
            return vec![Step::Send(reply(req, &rawdoc! { "n": 1, "ok": 1.0 }))];
        }
        scripted::default_reply(req)
    })
    .await;
    let (tap, _dir) = debug_tap(upstream.addr);
    let mut client = RawClient::connect(tap.listen).await;
    client
        .command(&rawdoc! { "hello": 1, "$db": "admin" })
        .await;
    let id = next_id();
    let insert = rawdoc! {
        "insert": "c",
        "documents": [{ "secret": "do-not-log" }],
        "writeConcern": { "w": 0 },
        "$db": "noise",
    };
    client.send(&msg(id, 0, MORE_TO_COME, &insert)).await;
    // The client gets the reply the server should not have sent.
    let frame = client.recv(T).await.expect("the server's reply");
    let answered = Header::parse(&frame).expect("header");
    assert_eq!(answered.response_to, id);
    let event = tap.wait_for_event_async("unmatched_reply", T).await;
    assert_eq!(event["response_to"], id, "{event}");
    assert_eq!(event["request_id"], answered.request_id, "{event}");
    assert_eq!(event["reason"], "more_to_come_request", "{event}");
    assert_eq!(event["ok"], true, "{event}");
    assert_eq!(event["cursor"], false, "{event}");
    assert_eq!(event["level"], "DEBUG", "{event}");
    assert!(!event.to_string().contains("do-not-log"), "{event}");
    // One reply answered nothing: the hello's reply matched its request.
    assert_eq!(metric(&tap, "mongotap_unmatched_replies_total"), 1);
}

/// A real driver closing on FerretDB: its endSessions fails with
/// CommandNotFound every time. The driver's own command monitoring is the
/// ground truth; mongotap counts the same failures and logs them at debug,
/// marked expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drivers_end_sessions_on_ferretdb_is_an_expected_failure() {
    let ferret = Ferret::start();
    let (tap, _dir) = debug_tap(ferret.addr());
    let script = format!(
        "import json, pymongo\n\
         from pymongo import monitoring\n\
         class Failures(monitoring.CommandListener):\n\
         \x20   def __init__(self): self.seen = []\n\
         \x20   def started(self, e): pass\n\
         \x20   def succeeded(self, e): pass\n\
         \x20   def failed(self, e): self.seen.append([e.command_name, e.failure.get('code')])\n\
         f = Failures()\n\
         c = pymongo.MongoClient('{}', event_listeners=[f])\n\
         c.noise.c.insert_one({{'x': 1}})\n\
         c.close()\n\
         print(json.dumps(f.seen))\n",
        tap.uri()
    );
    let out = tokio::process::Command::new(support::python_path())
        .arg("-c")
        .arg(&script)
        .output()
        .await
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let driver: Vec<(String, i64)> = serde_json::from_slice(&out.stdout).expect("failures json");
    assert_eq!(driver, [("endSessions".to_string(), 59)], "the driver saw");
    let event = tap
        .wait_for(T, |v| {
            v["event"] == "failed" && v["command"] == "endSessions"
        })
        .await
        .expect("a failed event for endSessions");
    assert_eq!(event["code"], 59, "{event}");
    assert_eq!(event["expected"], true, "{event}");
    assert_eq!(event["level"], "DEBUG", "{event}");
    assert!(
        event["hint"]
            .as_str()
            .is_some_and(|h| h.contains("FerretDB")),
        "{event}"
    );
    // Still counted, once per failure the driver saw, in /metrics and in
    // /stats (published when the session closes, so it may lag a little).
    assert_eq!(
        metric(&tap, "mongotap_failed_commands_total"),
        driver.len() as u64
    );
    let deadline = Instant::now() + T;
    let row = loop {
        let (_, body) = tap.admin_get("/stats");
        let stats: Value = serde_json::from_str(&body).expect("stats json");
        let row = stats["commands"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["command"] == "endSessions").cloned());
        if let Some(row) = row {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "no endSessions row in /stats: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(row["errors"], 1, "{row}");
}
