//! Security properties of the real binary: the admin endpoint is loopback
//! unless a token guards it, filter values stay out of /inflight and the
//! logs unless `watch.log_values = true`, SCRAM credentials from a real
//! driver reach neither the logs nor a capture, and a client cannot blow up
//! /stats with label values.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/scripted.rs"]
mod scripted;
mod support;
#[path = "reliability_support/mod.rs"]
mod util;

use bson::rawdoc;
use scripted::{RawClient, Received, Scripted, Step};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{unique_db, Ferret, Mongotap};
use util::{admin_get, hello, metric_async, ok_of, request, start_with_config};

const T: Duration = Duration::from_secs(10);
const BIN: &str = env!("CARGO_BIN_EXE_mongotap");

/// GET with an optional bearer token; returns the status code.
fn get_status(addr: SocketAddr, path: &str, token: Option<&str>) -> u16 {
    let mut s = TcpStream::connect_timeout(&addr, T).expect("connect admin");
    s.set_read_timeout(Some(T)).expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").expect("write");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {raw:?}"))
}

/// Runs `mongotap proxy ARGS` until it logs `listening` or exits, and returns
/// (the `listening` line, everything it wrote to stderr). Killed after.
fn first_words(args: &[&str]) -> (Option<Value>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mongotap");
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "listening" {
                    return (Some(v), seen);
                }
            }
        }
        (None, seen)
    });
    let deadline = Instant::now() + T;
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().expect("reader")
}

#[test]
fn admin_binds_loopback_by_default() {
    // The effective config with nothing set.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = util::config_file(&dir, "");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("check-config");
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("\"127.0.0.1:9477\""), "{printed}");

    // And the running proxy, started without --admin: it either binds
    // 127.0.0.1:9477 or, when something holds that port, says it tried to.
    let (listening, stderr) = first_words(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:9",
        "--log-format",
        "json",
    ]);
    match listening {
        Some(line) => assert_eq!(line["admin"], "127.0.0.1:9477", "{line}"),
        None => assert!(
            stderr.contains(
                "cannot listen on 127.0.0.1:9477 (admin.listen, or --admin): address already in use"
            ),
            "{stderr}"
        ),
    }
}

#[test]
fn non_loopback_admin_without_a_token_is_refused_at_startup() {
    for admin in ["0.0.0.0:0", "[::]:0"] {
        let out = Command::new(BIN)
            .args([
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:9",
            ])
            .args(["--admin", admin])
            .output()
            .expect("run mongotap");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with --admin {admin}");
        assert!(stderr.contains("admin.token"), "{admin}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_admin_route_but_healthz_needs_it() {
    let token = "adm-Tok3n-8812-secret";
    let upstream = Scripted::ok().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = util::config_file(
        &dir,
        &format!("[admin]\nlisten = \"0.0.0.0:0\"\ntoken = \"{token}\"\n"),
    );
    let args = [
        "proxy".to_string(),
        "--config".into(),
        path.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--upstream".into(),
        upstream.addr.to_string(),
        "--log-format".into(),
        "json".into(),
    ];
    let tap = tokio::task::spawn_blocking(move || {
        Mongotap::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("start");
    let port = tap.admin.expect("admin address").port();
    let admin = SocketAddr::from(([127, 0, 0, 1], port));
    let statuses = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for path in [
            "/metrics",
            "/stats",
            "/stats/shapes",
            "/inflight",
            "/cursors",
        ] {
            out.push((path, None, get_status(admin, path, None)));
            out.push((path, Some("wrong"), get_status(admin, path, Some("wrong"))));
            out.push((path, Some(token), get_status(admin, path, Some(token))));
        }
        out.push(("/healthz", None, get_status(admin, "/healthz", None)));
        out
    })
    .await
    .expect("requests");
    for (path, given, status) in statuses {
        let want = match given {
            Some(t) if t == token => 200,
            _ if path == "/healthz" => 200,
            _ => 401,
        };
        assert_eq!(status, want, "{path} with token {given:?}");
    }
    let logs = serde_json::to_string(&tap.logs()).expect("logs");
    assert!(!logs.contains(token), "the admin token was logged");
}

/// hello at once; `find` after 800 ms; `insert` with a duplicate-key write
/// error and `aggregate` with an ok: 0 whose messages quote values.
fn leaky_upstream(req: &Received) -> Vec<Step> {
    let reply = |body| scripted::reply(req, &body);
    match req.name().as_str() {
        "find" => vec![
            Step::Sleep(Duration::from_millis(800)),
            Step::Send(reply(
                rawdoc! { "cursor": { "id": 0i64, "ns": "db.people", "firstBatch": [] }, "ok": 1.0 },
            )),
        ],
        "insert" => vec![Step::Send(reply(rawdoc! {
            "n": 0,
            "writeErrors": [{ "index": 0, "code": 11000, "errmsg": "E11000 duplicate key error dup key: { _id: \"DUP-SECRET\" }" }],
            "ok": 1.0,
        }))],
        "aggregate" => vec![Step::Send(reply(rawdoc! {
            "ok": 0.0, "code": 2, "codeName": "BadValue", "errmsg": "cannot compare \"ERR-SECRET\"",
        }))],
        _ => scripted::default_reply(req),
    }
}

/// Runs commands whose filters, documents and comments carry literal
/// values through mongotap, and returns everything an operator can see:
/// the log, and /inflight, /stats, /stats/shapes, /metrics while the find
/// is still pending.
async fn observable_text(log_values: bool) -> String {
    let upstream = Scripted::start(leaky_upstream).await;
    let config = format!(
        "[watch]\nlog_values = {log_values}\nstall_ms = 200\nslow_ms = 0\ncommand_log = true\n\
         [log]\nlevel = \"debug\"\n"
    );
    let (tap, _dir) = start_with_config(upstream.addr, &config).await;
    let mut c = RawClient::connect(tap.listen).await;
    assert_eq!(ok_of(&c.command(&hello("values")).await), 1.0);
    let (_, find) = request(&rawdoc! {
        "find": "people",
        "filter": { "ssn": "FILTER-SECRET", "age": { "$gt": 41_999 } },
        "comment": { "ticket": "COMMENT-SECRET" },
        "$db": "db",
    });
    c.send(&find).await;
    // Once it has stalled, look at every endpoint.
    tap.wait_for_event_async("stalled", T).await;
    let mut seen = String::new();
    for path in [
        "/inflight",
        "/stats",
        "/stats/shapes",
        "/metrics",
        "/cursors",
    ] {
        seen.push_str(&admin_get(&tap, path).await.1);
    }
    assert!(c.recv(T).await.is_some(), "find reply");
    let commands = [
        rawdoc! { "insert": "people", "documents": [{ "_id": "DUP-SECRET", "card": "DOC-SECRET" }], "$db": "db" },
        rawdoc! { "aggregate": "people", "pipeline": [{ "$match": { "card": "PIPE-SECRET" } }, { "$limit": 31_337 }], "cursor": {}, "$db": "db" },
        rawdoc! { "update": "people", "updates": [{ "q": { "k": "UPD-SECRET" }, "u": { "$set": { "v": "SET-SECRET" } } }], "$db": "db" },
        rawdoc! { "delete": "people", "deletes": [{ "q": { "k": "DEL-SECRET" }, "limit": 1 }], "$db": "db" },
    ];
    for cmd in &commands {
        c.command(cmd).await;
    }
    // Samples are published every 500 ms.
    tokio::time::sleep(Duration::from_millis(700)).await;
    seen.push_str(&admin_get(&tap, "/stats").await.1);
    seen.push_str(&admin_get(&tap, "/stats/shapes").await.1);
    assert_eq!(tap.events("failed").len(), 2, "both failures were logged");
    assert!(
        !tap.events("succeeded").is_empty(),
        "the debug command log ran"
    );
    seen.push_str(&serde_json::to_string(&tap.logs()).expect("logs"));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literal_values_never_reach_inflight_stats_or_logs_unless_log_values() {
    let seen = observable_text(false).await;
    for secret in [
        "FILTER-SECRET",
        "41999",
        "COMMENT-SECRET",
        "DUP-SECRET",
        "DOC-SECRET",
        "ERR-SECRET",
        "PIPE-SECRET",
        "31337",
        "UPD-SECRET",
        "SET-SECRET",
        "DEL-SECRET",
    ] {
        assert!(!seen.contains(secret), "{secret} is visible:\n{seen}");
    }
    // The names are there: the test looked at the right output.
    for name in ["people", "$match", "$limit"] {
        assert!(seen.contains(name), "{name} missing from:\n{seen}");
    }

    // With log_values = true, the non-string comment is shown.
    let seen = observable_text(true).await;
    assert!(
        seen.contains("COMMENT-SECRET"),
        "log_values = true shows values:\n{seen}"
    );
}

const USER: &str = "secuser";
const PASSWORD: &str = "Sec-Pw-0xC0FFEE-7719";

/// pymongo logs in with SCRAM-SHA-256 (speculative authentication in the
/// hello), inserts and counts; then a wrong password must be refused. The
/// Rust driver is not used here: against FerretDB 1.24 its SCRAM exchange
/// fails even without mongotap ("expected SCRAM authentication to have
/// completed").
const PY_SCRAM: &str = r#"
import json, sys, pymongo
from pymongo.errors import OperationFailure
uri, db = sys.argv[1], sys.argv[2]
c = pymongo.MongoClient(uri, directConnection=True, appname="scram-test",
                        authMechanism="SCRAM-SHA-256", serverSelectionTimeoutMS=10000)
coll = c[db]["c"]
coll.insert_many([{"i": 1}, {"i": 2}])
out = {"count": coll.count_documents({})}
bad = pymongo.MongoClient(uri.replace(":" + uri.split(":")[2].split("@")[0] + "@", ":wrong-password@"),
                          directConnection=True, authMechanism="SCRAM-SHA-256",
                          serverSelectionTimeoutMS=5000)
try:
    bad[db]["c"].find_one()
    out["bad_password"] = "accepted"
except OperationFailure:
    out["bad_password"] = "refused"
print(json.dumps(out))
"#;

async fn pymongo(script: &str, args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new(support::python_path())
        .arg("-c")
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("pymongo hung")
        .expect("run python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_credentials_reach_neither_logs_endpoints_nor_capture() {
    let ferret = Ferret::start_with_args(&[
        "--test-enable-new-auth",
        "--setup-database=admin",
        &format!("--setup-username={USER}"),
        &format!("--setup-password={PASSWORD}"),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[watch]\ncommand_log = true\nslow_ms = 0\n[log]\nlevel = \"debug\"\n\
         [capture]\nenabled = true\npath = \"{}\"\n",
        dir.path().join("cap").display()
    );
    let (mut tap, _cfg) = start_with_config(ferret.addr(), &config).await;
    let db = unique_db("scram");
    let good = format!(
        "mongodb://{USER}:{PASSWORD}@{}/?authSource=admin",
        tap.listen
    );
    let out = pymongo(PY_SCRAM, &[&good, &db]).await;
    assert!(
        out.status.success(),
        "pymongo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("pymongo output");
    assert_eq!(result["count"], 2, "{result}");
    assert_eq!(result["bad_password"], "refused", "{result}");
    let mut seen = String::new();
    for path in ["/inflight", "/stats", "/stats/shapes", "/metrics"] {
        seen.push_str(&admin_get(&tap, path).await.1);
    }
    assert!(tap.terminate(T).success());
    seen.push_str(&serde_json::to_string(&tap.logs()).expect("logs"));
    let mut capture = Vec::new();
    for entry in std::fs::read_dir(dir.path()).expect("capture dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "mtcap") {
            capture.extend(std::fs::read(&path).expect("read capture"));
        }
    }
    assert!(!capture.is_empty(), "nothing was captured");
    let capture_text = String::from_utf8_lossy(&capture);
    assert!(
        capture_text.contains("insert"),
        "ordinary commands are captured"
    );
    // The password, and the SCRAM messages (client-first "n,,n=USER,r=",
    // client-final "c=biws,r=...,p=PROOF").
    for needle in [PASSWORD, &format!("n={USER},r="), "c=biws"] {
        assert!(!seen.contains(needle), "{needle:?} in logs or endpoints");
        assert!(!capture_text.contains(needle), "{needle:?} in the capture");
    }
    assert!(seen.contains("saslContinue") || seen.contains("saslStart"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_collections_cannot_grow_stats_past_max_series() {
    let upstream = Scripted::ok().await;
    let max_series = 100;
    let config = format!("[watch]\nmax_series = {max_series}\n");
    let (tap, _dir) = start_with_config(upstream.addr, &config).await;
    let rss_before = util::rss_kb(tap.pid());
    let mut c = RawClient::connect(tap.listen).await;
    assert_eq!(ok_of(&c.command(&hello("label-bomb")).await), 1.0);
    let collections = 5_000;
    // Pipelined in batches well under max_inflight_per_connection.
    for batch in (0..collections).collect::<Vec<_>>().chunks(500) {
        let mut burst = Vec::new();
        for i in batch {
            let coll = format!("c{i}");
            let (_, frame) =
                request(&rawdoc! { "find": coll, "filter": { "x": 1 }, "$db": "bomb" });
            burst.extend_from_slice(&frame);
        }
        c.send(&burst).await;
        for _ in batch {
            assert!(c.recv(T).await.is_some());
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, body) = admin_get(&tap, "/stats").await;
    let rows = serde_json::from_str::<Value>(&body).expect("json")["commands"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let counted: u64 = rows.iter().filter_map(|r| r["count"].as_u64()).sum();
    let other = rows
        .iter()
        .find(|r| r["collection"] == "other")
        .map_or(0, |r| r["count"].as_u64().unwrap_or(0));
    let folded = metric_async(&tap, "mongotap_series_folded_total").await;
    let (_, metrics) = admin_get(&tap, "/metrics").await;
    let histogram_series = metrics
        .lines()
        .filter(|l| l.starts_with("mongotap_command_duration_seconds_count{"))
        .count();
    let rss_after = util::rss_kb(tap.pid());
    println!(
        "label explosion: {collections} collections, max_series {max_series}: /stats has {} rows \
         ({other} samples in `other`), {histogram_series} histogram series in /metrics, \
         {folded} samples folded, /metrics {} bytes; RSS {rss_before} KiB -> {rss_after} KiB",
        rows.len(),
        metrics.len()
    );
    assert!(rows.len() <= max_series + 1, "{} rows", rows.len());
    // Every series but `other` holds one sample (one hello, one find per
    // collection), and the table fills to max_series before folding: the
    // rest of the 1 + collections samples are in `other`, each counted as
    // folded once (a find has no pipeline, so no shape series folds).
    assert_eq!(rows.len(), max_series + 1, "{} rows", rows.len());
    assert_eq!(other, (collections + 1 - max_series) as u64);
    assert_eq!(folded, other as f64);
    assert_eq!(
        counted,
        collections as u64 + 1,
        "every sample is counted somewhere"
    );
    assert!(histogram_series <= 2 * (max_series + 1));
    // No errors: one `ok` histogram per row.
    assert_eq!(histogram_series, max_series + 1);
    // Histograms are sized by what they hold: 100 series of fast commands
    // cost a few MiB (fixed 1 µs..1 h histograms cost ~40 MiB here).
    assert!(
        rss_after < rss_before + 24 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB for {max_series} series"
    );
}
