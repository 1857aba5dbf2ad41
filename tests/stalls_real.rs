//! Stall detection against the real server: FerretDB is stopped with
//! SIGSTOP while a real driver's aggregate is in flight, then killed, then
//! restarted; a client dies with a command pending; a cursor is left open.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;
use mongodb::Client;
use serde_json::Value;
use std::time::{Duration, Instant};
use support::{signal, Ferret, Mongotap};

const T: Duration = Duration::from_secs(15);

async fn client(uri: &str, app: &str) -> Client {
    let mut opts = ClientOptions::parse(format!("{uri}&appName={app}"))
        .await
        .expect("parse uri");
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(opts).expect("client")
}

fn inflight(tap: &Mongotap) -> Vec<Value> {
    let (_, body) = tap.admin_get("/inflight");
    serde_json::from_str::<Value>(&body)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn wait_event(tap: &Mongotap, event: &str, command: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = tap
            .events(event)
            .into_iter()
            .find(|e| e["command"] == command)
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no `{event}` for {command} within {timeout:?}; logs: {:?}",
            tap.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_stalls_sigkill_never_replies_restart_recovers() {
    let mut ferret = Ferret::start();
    let stall_ms = 500u64;
    let tap = Mongotap::start_with(ferret.addr(), &["--stall-ms", &stall_ms.to_string()]);
    let c = client(&tap.uri(), "stall-test").await;
    let coll = c.database("stalls").collection::<Document>("orders");
    let docs: Vec<Document> = (0..50)
        .map(|i| doc! {"i": i, "g": i % 5, "tags": ["a", "b"]})
        .collect();
    coll.insert_many(docs).await.expect("insert");

    signal(ferret.pid(), "STOP");
    let sent = Instant::now();
    let agg_coll = coll.clone();
    let agg = tokio::spawn(async move {
        let pipeline = vec![
            doc! {"$match": {"i": {"$gte": 0}}},
            doc! {"$unwind": "$tags"},
            doc! {"$group": {"_id": "$g", "n": {"$sum": 1}}},
            doc! {"$sort": {"_id": 1}},
        ];
        agg_coll.aggregate(pipeline).await.map(|_| ())
    });

    // Under a loaded machine the driver may take a while to send it; what
    // the contract bounds is the command's age when `stalled` fires.
    let stalled = wait_event(&tap, "stalled", "aggregate", T).await;
    let seen = sent.elapsed().as_millis() as u64;
    let age_ms = stalled["age_ms"].as_u64().expect("age_ms");
    assert!(
        (stall_ms..=stall_ms + 1000).contains(&age_ms),
        "stalled reported at age {age_ms} ms (sent {seen} ms ago)"
    );
    // Nor older than the client's own clock says the command can be.
    assert!(
        age_ms <= seen,
        "stalled age_ms {age_ms}, sent {seen} ms ago"
    );
    assert_eq!(stalled["app"], "stall-test");
    assert_eq!(stalled["db"], "stalls");
    assert_eq!(stalled["collection"], "orders");
    assert_eq!(stalled["stages"], "$match>$unwind>$group>$sort");
    let rows = inflight(&tap);
    let row = rows
        .iter()
        .find(|r| r["command"] == "aggregate")
        .unwrap_or_else(|| panic!("aggregate not in /inflight: {rows:?}"));
    assert_eq!(row["request_id"], stalled["request_id"]);
    assert_eq!(row["stalled"], true);
    assert_eq!(row["app"], "stall-test");

    // Killing the stopped server ends the connection: never_replied.
    ferret.kill();
    let never = wait_event(&tap, "never_replied", "aggregate", T).await;
    let seen = sent.elapsed().as_millis() as u64;
    assert_eq!(never["request_id"], stalled["request_id"]);
    // It had stalled (age >= stall_ms) before the server died, and was sent
    // `seen` ms before the client read the event.
    let never_age = never["age_ms"].as_u64().expect("age_ms");
    assert!(
        (age_ms..=seen).contains(&never_age),
        "never_replied age_ms {never_age} outside [stalled age {age_ms}, {seen}]"
    );
    let result = tokio::time::timeout(T, agg)
        .await
        .expect("aggregate returns")
        .expect("join");
    assert!(result.is_err(), "the driver sees the aggregate fail");

    // Service resumes without restarting mongotap.
    ferret.restart();
    let c2 = client(&tap.uri(), "after-restart").await;
    let n = c2
        .database("stalls")
        .collection::<Document>("orders")
        .count_documents(doc! {})
        .await
        .expect("count after restart");
    assert_eq!(n, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigcont_lets_stalled_command_complete_as_slow() {
    let ferret = Ferret::start();
    let tap = Mongotap::start_with(ferret.addr(), &["--stall-ms", "300"]);
    let c = client(&tap.uri(), "resume-test").await;
    let coll = c.database("resume").collection::<Document>("c");
    coll.insert_one(doc! {"x": 1}).await.expect("insert");
    signal(ferret.pid(), "STOP");
    let find_coll = coll.clone();
    let find = tokio::spawn(async move {
        let sent = Instant::now();
        let found = find_coll.find_one(doc! {}).await;
        (found, sent.elapsed())
    });
    let stalled = wait_event(&tap, "stalled", "find", T).await;
    let stalled_age = stalled["age_ms"].as_u64().expect("age_ms");
    signal(ferret.pid(), "CONT");
    let (found, round_trip) = tokio::time::timeout(T, find)
        .await
        .expect("find returns")
        .expect("join");
    assert!(found.expect("find ok").is_some());
    let slow = wait_event(&tap, "slow", "find", T).await;
    assert_eq!(slow["was_stalled"], true);
    // The reply came after the stall report, and before the driver got it.
    let duration = slow["duration_ms"].as_u64().expect("duration_ms");
    let round_trip = round_trip.as_millis() as u64;
    assert!(
        (stalled_age..=round_trip).contains(&duration),
        "slow duration_ms {duration} outside [stalled age {stalled_age}, driver {round_trip}]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_is_abandoned() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let ferret = Ferret::start();
    let tap = Mongotap::start(ferret.addr());
    // A real pymongo client: it connects, says so, waits for a line on
    // stdin, then runs a find; its process is killed with the find pending.
    let script = format!(
        "import sys, pymongo\n\
         c = pymongo.MongoClient('{}&appName=doomed')\n\
         c.admin.command('ping')\n\
         print('ready', flush=True)\n\
         sys.stdin.readline()\n\
         c.abandon.c.find_one({{}})\n",
        tap.uri()
    );
    let mut child = tokio::process::Command::new(support::python_path())
        .arg("-c")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(T, stdout.next_line())
        .await
        .expect("ready in time");
    assert_eq!(ready.expect("read").as_deref(), Some("ready"));
    signal(ferret.pid(), "STOP");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").await.expect("write stdin");
    let deadline = Instant::now() + T;
    while !inflight(&tap).iter().any(|r| r["command"] == "find") {
        assert!(Instant::now() < deadline, "find never pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().await.expect("kill python");
    let ev = wait_event(&tap, "abandoned", "find", T).await;
    assert_eq!(ev["app"], "doomed");
    signal(ferret.pid(), "CONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_left_open_is_reported_when_connection_closes() {
    let ferret = Ferret::start();
    let tap = Mongotap::start(ferret.addr());
    let script = format!(
        "import os, pymongo\n\
         c = pymongo.MongoClient('{uri}&appName=leaky')\n\
         coll = c.leak.c\n\
         coll.insert_many([{{'i': i}} for i in range(10)])\n\
         cur = coll.find().batch_size(2)\n\
         next(cur)\n\
         os._exit(0)\n",
        uri = tap.uri()
    );
    let status = tokio::process::Command::new(support::python_path())
        .arg("-c")
        .arg(&script)
        .status()
        .await
        .expect("run python");
    assert!(status.success());
    let ev = tap.wait_for_event_async("cursor_leaked", T).await;
    assert_eq!(ev["app"], "leaky");
    assert_eq!(ev["collection"], "c");
    assert_eq!(ev["command"], "find");
    assert_eq!(ev["documents"], 2);
    let (_, cursors) = tap.admin_get("/cursors");
    assert_eq!(cursors.trim(), "[]");
}
