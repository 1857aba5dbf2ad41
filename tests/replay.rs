//! `mongotap replay` (issue 8) with the real binary against real FerretDB:
//! a driver workload captured through mongotap in front of FerretDB A,
//! replayed against a fresh FerretDB B, must leave B with A's documents and
//! a report that lists every command. The replay's own traffic is captured
//! by a second mongotap in front of B, which shows what replay put on the
//! wire: its own handshake, new request ids, live cursor ids, rewrites.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use mongotap_proto::capture::Direction;
use mongotap_proto::{CommandView, ReplyView};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::captures::{capture_files, read_records, Rec};
use support::{python, unique_db, Ferret, Mongotap};

/// Runs `f` on the body of an OP_MSG frame.
fn with_body<T>(frame: &[u8], f: impl FnOnce(&mongodb::bson::RawDocument) -> T) -> Option<T> {
    let msg = mongotap_proto::op_msg::parse(frame).ok()?;
    Some(f(msg.body))
}

/// Command names of the requests replay is meant to send (no handshake,
/// no auth, nothing redacted).
fn replayable_commands(records: &[Rec]) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| r.direction == Direction::ToServer && !r.redacted)
        .filter_map(|r| {
            with_body(&r.frame, |b| {
                let v = CommandView::parse(b).ok()?;
                (!v.is_hello() && !v.is_sensitive()).then(|| v.name.to_string())
            })
            .flatten()
        })
        .collect()
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

fn capturing(ferret: SocketAddr, dir: &Path, extra: &str) -> Mongotap {
    let config = write_config(
        dir,
        "mongotap.toml",
        &format!(
            "[capture]\nenabled = true\npath = \"{}\"\n{extra}",
            dir.join("cap").display()
        ),
    );
    Mongotap::start_with(ferret, &["--config", config.to_str().expect("utf-8")])
}

/// `mongotap replay ARGS`, checked to succeed; returns its output.
fn replay(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_mongotap"))
        .arg("replay")
        .args(args)
        .output()
        .expect("run mongotap replay");
    assert!(
        out.status.success(),
        "replay {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    out
}

fn report(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read report")).expect("report JSON")
}

fn rows(report: &Value) -> &Vec<Value> {
    report["commands"].as_array().expect("commands")
}

/// Every command failed live exactly as often as in the capture (the
/// driver's endSessions fails on FerretDB either way), nothing was
/// skipped, and every command returned as many documents.
fn assert_as_captured(report: &Value) {
    for row in rows(report) {
        assert_eq!(row["skipped"], 0, "{row}");
        assert_eq!(row["errors"], row["captured_errors"], "{row}");
        assert_eq!(row["docs_diff"], 0, "{row}");
    }
}

async fn client(addr: SocketAddr, app: &str) -> Client {
    let mut opts = ClientOptions::parse(format!("mongodb://{addr}/?directConnection=true"))
        .await
        .expect("parse URI");
    opts.app_name = Some(app.into());
    opts.server_selection_timeout = Some(Duration::from_secs(10));
    Client::with_options(opts).expect("client")
}

/// Documents per collection of `db`, read straight from a server.
async fn counts(addr: SocketAddr, db: &str) -> BTreeMap<String, u64> {
    let client = client(addr, "replay-tests-check").await;
    let db = client.database(db);
    let mut out = BTreeMap::new();
    for name in db.list_collection_names().await.expect("list collections") {
        let coll: Collection<Document> = db.collection(&name);
        out.insert(name, coll.count_documents(doc! {}).await.expect("count"));
    }
    client.shutdown().await;
    out
}

/// The Rust driver's share of the workload: inserts, a find that needs
/// getMores, an aggregate with a small batch, an update, a delete.
async fn crud(addr: SocketAddr, db: &str) {
    let client = client(addr, "replay-tests-rust").await;
    let coll: Collection<Document> = client.database(db).collection("orders");
    let docs: Vec<Document> = (0..25)
        .map(|i| doc! { "_id": i, "n": i, "grp": i % 4 })
        .collect();
    coll.insert_many(docs).await.expect("insert_many");
    let found: Vec<Document> = coll
        .find(doc! {})
        .batch_size(4)
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("find cursor");
    assert_eq!(found.len(), 25);
    let agg: Vec<Document> = coll
        .aggregate(vec![doc! { "$match": { "n": { "$gte": 5 } } }])
        .batch_size(3)
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("aggregate cursor");
    assert_eq!(agg.len(), 20);
    coll.update_many(doc! { "grp": 0 }, doc! { "$set": { "seen": true } })
        .await
        .expect("update");
    coll.delete_many(doc! { "grp": 3 }).await.expect("delete");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_recreates_the_data_and_reports_every_command() {
    let ferret_a = Ferret::start();
    let dir_a = tempfile::tempdir().expect("tempdir");
    let mut tap_a = capturing(ferret_a.addr(), dir_a.path(), "");
    let (db_py, db_rs) = (unique_db("replay_py"), unique_db("replay_rs"));
    // pymongo: inserts, getMores, aggregates, update, delete, a w:0 insert
    // with moreToCome, and a killCursors for a cursor closed early.
    let py = python("workload.py", &[&tap_a.uri(), &db_py]).await;
    assert_eq!(py["inserted"], 30, "{py}");
    crud(tap_a.listen, &db_rs).await;
    assert!(tap_a.terminate(Duration::from_secs(20)).success());
    let captured = read_records(&capture_files(dir_a.path()));

    // B, behind a second capturing mongotap that shows replay's wire.
    let ferret_b = Ferret::start();
    let dir_b = tempfile::tempdir().expect("tempdir");
    let mut tap_b = capturing(ferret_b.addr(), dir_b.path(), "");
    let rules = write_config(
        dir_a.path(),
        "rules.toml",
        "[rewrite]\nmode = \"enforce\"\n[[rewrite.rule]]\ncommands = [\"find\"]\ndefault_max_time_ms = 12345\n",
    );
    let report_path = dir_a.path().join("report.json");
    let out = replay(&[
        dir_a.path().join("cap").to_str().expect("utf-8"),
        "--target",
        &tap_b.listen.to_string(),
        "--config",
        rules.to_str().expect("utf-8"),
        "--report",
        report_path.to_str().expect("utf-8"),
    ]);
    assert!(tap_b.terminate(Duration::from_secs(20)).success());

    for db in [&db_py, &db_rs] {
        let (a, b) = (
            counts(ferret_a.addr(), db).await,
            counts(ferret_b.addr(), db).await,
        );
        assert!(!a.is_empty(), "{db} has collections on A");
        assert_eq!(a, b, "document counts of {db} on A and B");
    }

    let report = report(&report_path);
    let listed: BTreeSet<String> = rows(&report)
        .iter()
        .map(|r| r["command"].as_str().expect("command").to_string())
        .collect();
    let wanted = replayable_commands(&captured);
    for c in [
        "insert",
        "find",
        "getMore",
        "aggregate",
        "update",
        "delete",
        "killCursors",
    ] {
        assert!(wanted.contains(c), "the workload sent {c}: {wanted:?}");
    }
    assert_eq!(listed, wanted, "the report lists every command");
    let table = String::from_utf8_lossy(&out.stdout);
    for c in &wanted {
        assert!(table.contains(c.as_str()), "the table shows {c}");
    }
    for row in rows(&report) {
        assert_eq!(row["skipped"], 0, "{row}");
        assert_eq!(row["errors"], row["captured_errors"], "{row}");
        assert!(row["replayed_p50_us"].is_u64() || row["fire_and_forget"] == row["count"]);
        // pymongo's w:0 insert goes out on a connection of its own, then
        // the main connection polls count_documents (an aggregate) until the
        // document shows, and reads everything with a last find. Replay keeps
        // each connection's order and the captured pace, not the order
        // between connections: on a loaded machine the polls, and even the
        // last find, can run before the w:0 insert lands. Every other read
        // returns exactly the captured documents.
        let py = row["namespace"] == format!("{db_py}.items");
        let diff = row["docs_diff"].as_i64().expect("docs_diff");
        match row["command"].as_str() {
            Some("aggregate") if py => {}
            Some("find") if py => assert!(diff == 0 || diff == -1, "{row}"),
            _ => assert_eq!(diff, 0, "{row}"),
        }
    }
    let inserts: u64 = rows(&report)
        .iter()
        .filter(|r| r["command"] == "insert")
        .map(|r| r["fire_and_forget"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        inserts >= 1,
        "pymongo's w:0 insert went out without a reply"
    );
    let find_rewritten: u64 = rows(&report)
        .iter()
        .filter(|r| r["command"] == "find")
        .map(|r| r["rewritten"].as_u64().unwrap_or(0))
        .sum();
    assert!(find_rewritten > 0, "{report}");

    // What replay put on the wire, as B's mongotap captured it.
    let wire = read_records(&capture_files(dir_b.path()));
    let mut live_cursors = HashSet::new();
    let mut next_id: BTreeMap<u64, i32> = BTreeMap::new();
    for r in &wire {
        let header = mongotap_proto::Header::parse(&r.frame).expect("header");
        if r.direction == Direction::ToClient {
            with_body(&r.frame, |b| {
                if let Some(id) = ReplyView::parse(b).ok().and_then(|v| v.cursor_id) {
                    live_cursors.insert(id);
                }
            });
            continue;
        }
        // New request ids: 1, 2, 3... on every replay connection.
        let want = next_id.entry(r.conn).or_insert(1);
        assert_eq!(header.request_id, *want, "request ids are replay's own");
        *want += 1;
        assert!(!r.redacted, "replay sends no captured auth");
        with_body(&r.frame, |b| {
            let v = CommandView::parse(b).expect("command");
            match v.name {
                "hello" | "isMaster" => {
                    let app = b
                        .get_document("client")
                        .and_then(|c| c.get_document("application"))
                        .and_then(|a| a.get_str("name"));
                    assert_eq!(app.ok(), Some("mongotap-replay"), "replay's own handshake");
                }
                "find" => assert_eq!(v.max_time_ms, Some(12345), "--config rules applied"),
                "getMore" => {
                    let id = v.cursor_id.expect("getMore id");
                    assert!(live_cursors.contains(&id), "getMore names a live cursor");
                }
                _ => {}
            }
            assert!(b.get("$clusterTime").ok().flatten().is_none());
        })
        .expect("OP_MSG");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_replay_in_order() {
    let ferret_a = Ferret::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tap = capturing(
        ferret_a.addr(),
        dir.path(),
        "max_bytes = 4096\nmax_files = 1000\n",
    );
    let db = unique_db("replay_rotate");
    crud(tap.listen, &db).await;
    assert!(tap.terminate(Duration::from_secs(20)).success());
    let files = capture_files(dir.path());
    assert!(files.len() >= 3, "several files: {files:?}");

    // The base path stands for every file, in order...
    let ferret_b = Ferret::start();
    let report_path = dir.path().join("report.json");
    replay(&[
        dir.path().join("cap").to_str().expect("utf-8"),
        "--target",
        &ferret_b.addr().to_string(),
        "--max-speed",
        "--report",
        report_path.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        counts(ferret_a.addr(), &db).await,
        counts(ferret_b.addr(), &db).await
    );
    let base = report(&report_path);
    assert_eq!(base["files"].as_array().map(Vec::len), Some(files.len()));
    assert_as_captured(&base);

    // ...and so does the explicit list, whatever order it is given in.
    let ferret_c = Ferret::start();
    let mut args: Vec<String> = files
        .iter()
        .rev()
        .map(|f| f.to_string_lossy().to_string())
        .collect();
    args.extend([
        "--target".into(),
        ferret_c.addr().to_string(),
        "--max-speed".into(),
    ]);
    args.extend(["--report".into(), report_path.to_string_lossy().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    replay(&args);
    let listed = report(&report_path);
    assert_eq!(listed["requests"], base["requests"]);
    assert_as_captured(&listed);
    assert_eq!(
        counts(ferret_a.addr(), &db).await,
        counts(ferret_c.addr(), &db).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_follows_the_capture_scaled_or_not() {
    let ferret = Ferret::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tap = capturing(ferret.addr(), dir.path(), "");
    let db = unique_db("replay_timing");
    let client = client(tap.listen, "replay-tests-timing").await;
    let coll: Collection<Document> = client.database(&db).collection("t");
    coll.find_one(doc! {}).await.expect("first find");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    coll.find_one(doc! {}).await.expect("second find");
    client.shutdown().await;
    assert!(tap.terminate(Duration::from_secs(20)).success());

    let path = dir.path().join("report.json");
    let run = |extra: &[&str]| -> u64 {
        let mut args = vec![
            dir.path().join("cap").to_string_lossy().to_string(),
            "--target".into(),
            ferret.addr().to_string(),
            "--report".into(),
            path.to_string_lossy().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        replay(&args);
        let r = report(&path);
        assert_as_captured(&r);
        r["duration_ms"].as_u64().expect("duration_ms")
    };
    let real = run(&[]);
    assert!(real >= 1_400, "--speed 1 keeps the 1.5 s gap: {real} ms");
    let fast = run(&["--speed", "4"]);
    assert!(
        (300..1_300).contains(&fast),
        "--speed 4 shrinks it to ~0.4 s: {fast} ms"
    );
    let max = run(&["--max-speed"]);
    assert!(max < 300, "--max-speed ignores it: {max} ms");
}

const USER: &str = "replayer";
const PASSWORD: &str = "replay-pw-8841";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_logs_in_with_its_own_credentials() {
    let ferret_a = Ferret::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tap = capturing(ferret_a.addr(), dir.path(), "");
    let db = unique_db("replay_auth");
    crud(tap.listen, &db).await;
    assert!(tap.terminate(Duration::from_secs(20)).success());

    let ferret_b = Ferret::start_with_args(&[
        "--test-enable-new-auth",
        "--setup-database=admin",
        &format!("--setup-username={USER}"),
        &format!("--setup-password={PASSWORD}"),
    ]);
    let cap = dir.path().join("cap");
    let path = dir.path().join("report.json");
    let target = ferret_b.addr().to_string();
    let base = [
        cap.to_str().expect("utf-8"),
        "--target",
        &target,
        "--max-speed",
        "--report",
        path.to_str().expect("utf-8"),
    ];

    // Without credentials every command is refused.
    replay(&base);
    let refused = report(&path);
    assert!(refused["errors"].as_u64().unwrap_or(0) > 0, "{refused}");
    let unauthorized = rows(&refused)
        .iter()
        .any(|r| r["error_names"].get("Unauthorized").is_some());
    assert!(unauthorized, "{refused}");

    // A wrong password stops the replay with a message that says so.
    let out = Command::new(env!("CARGO_BIN_EXE_mongotap"))
        .arg("replay")
        .args(base)
        .args(["--username", USER, "--password", "not-the-password"])
        .output()
        .expect("run replay");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AuthenticationFailed"), "{stderr}");

    // The password from the environment, as the help suggests.
    let out = Command::new(env!("CARGO_BIN_EXE_mongotap"))
        .arg("replay")
        .args(base)
        .args(["--username", USER])
        .env("MONGOTAP_REPLAY_PASSWORD", PASSWORD)
        .output()
        .expect("run replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = report(&path);
    assert_as_captured(&ok);
    let docs: u64 = rows(&ok)
        .iter()
        .map(|r| r["replayed_docs"].as_u64().unwrap_or(0))
        .sum();
    assert!(docs >= 25, "the finds read the inserted documents: {ok}");
}
