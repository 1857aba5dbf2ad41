//! Auto-explain: a slow read-only aggregate is explained once per shape
//! per interval on mongotap's own upstream connection; the per-stage path
//! against a scripted MongoDB-style upstream, what FerretDB really returns,
//! and SCRAM-SHA-256 against FerretDB with authentication on.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/mongodb_explain.rs"]
mod mongodb_explain;
#[path = "support/scripted.rs"]
mod scripted;
mod support;

use bson::{rawdoc, RawDocumentBuf};
use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;
use mongodb::Client;
use scripted::{hello_reply_doc, reply, RawClient, Received, Scripted, Step};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::{Ferret, Mongotap};

const T: Duration = Duration::from_secs(15);

/// How long the scripted upstream sits on every aggregate.
const AGGREGATE_DELAY: Duration = Duration::from_millis(600);

/// A filter value that must never reach the logs (log_values is off).
const SECRET: &str = "secret-filter-value-4711";

/// Writes `[explain]` settings (and anything else) to a config file.
fn config_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("mongotap.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn start_tap(upstream: std::net::SocketAddr, config: &str) -> (Mongotap, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(&dir, config);
    let path = path.to_str().expect("utf-8 path").to_string();
    (Mongotap::start_with(upstream, &["--config", &path]), dir)
}

/// The first `event` line whose `collection` is `collection`, waiting up to
/// `timeout`.
async fn wait_event(tap: &Mongotap, event: &str, collection: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = tap
            .events(event)
            .into_iter()
            .find(|e| e["collection"] == collection)
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no `{event}` for {collection} within {timeout:?}; logs: {:#?}",
            tap.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The inner command of an explain the upstream received.
fn explained_command(r: &Received) -> RawDocumentBuf {
    r.command
        .as_ref()
        .expect("body")
        .get_document("explain")
        .expect("explain: {...}")
        .to_owned()
}

/// The shared MongoDB 7-style explain, with this test's numbers.
fn mongodb_explain(req: &Received) -> RawDocumentBuf {
    let numbers = mongodb_explain::Numbers {
        cursor_returned: 100,
        cursor_ms: 3,
        docs_examined: 1000,
        group_returned: 5,
        group_ms: 4,
    };
    mongodb_explain::mongodb_explain(explained_command(req), &numbers)
}

/// hello, a slow aggregate, and explain: MongoDB-style per-stage stats, or
/// an error for the `failing` collection.
fn script(req: &Received) -> Vec<Step> {
    match req.name().as_str() {
        "hello" | "isMaster" | "ismaster" => vec![Step::Send(reply(req, &hello_reply_doc()))],
        "aggregate" => {
            let coll = req
                .command
                .as_ref()
                .and_then(|c| c.get_str("aggregate").ok())
                .unwrap_or("")
                .to_string();
            let body = rawdoc! {
                "cursor": { "id": 0_i64, "ns": format!("shop.{coll}"), "firstBatch": [] },
                "ok": 1.0,
            };
            vec![Step::Sleep(AGGREGATE_DELAY), Step::Send(reply(req, &body))]
        }
        "explain" => {
            let inner = explained_command(req);
            let body = if inner.get_str("aggregate").ok() == Some("failing") {
                rawdoc! { "ok": 0.0, "errmsg": "explain refused", "code": 2, "codeName": "BadValue" }
            } else {
                mongodb_explain(req)
            };
            vec![Step::Send(reply(req, &body))]
        }
        _ => vec![Step::Send(reply(req, &rawdoc! { "ok": 1.0 }))],
    }
}

fn aggregate(coll: &str, pipeline: bson::RawArrayBuf) -> RawDocumentBuf {
    rawdoc! {
        "aggregate": coll,
        "pipeline": pipeline,
        "cursor": { "batchSize": 10 },
        "lsid": { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16] } },
        "$readPreference": { "mode": "primaryPreferred" },
        "$db": "shop",
    }
}

fn group_pipeline(name: &str) -> bson::RawArrayBuf {
    let mut p = bson::RawArrayBuf::new();
    p.push(rawdoc! { "$match": { "name": name, "qty": { "$gt": 3 } } });
    p.push(rawdoc! { "$group": { "_id": "$g", "n": { "$sum": 1 } } });
    p
}

fn explains(up: &Scripted) -> Vec<Received> {
    up.received()
        .into_iter()
        .filter(|r| r.name() == "explain")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_aggregate_is_explained_once_per_shape_with_per_stage_stats() {
    let up = Scripted::start(script).await;
    let (tap, _dir) = start_tap(
        up.addr,
        "[explain]\nenabled = true\nafter_ms = 200\ninterval_ms = 60000\nmax_time_ms = 4321\n",
    );
    let mut c = RawClient::connect(tap.listen).await;
    let hello = c
        .command(&rawdoc! {
            "hello": 1,
            "client": { "application": { "name": "explain-test" }, "driver": { "name": "raw", "version": "1" } },
            "$db": "admin",
        })
        .await;
    assert_eq!(hello.get_f64("ok").ok(), Some(1.0));

    // 1. A slow aggregate: explained, with the same pipeline.
    let original = aggregate("orders", group_pipeline(SECRET));
    let r = c.command(&original).await;
    assert_eq!(r.get_f64("ok").ok(), Some(1.0));
    let e = wait_event(&tap, "explained", "orders", T).await;
    assert_eq!(e["command"], "aggregate");
    assert_eq!(e["db"], "shop");
    assert_eq!(e["app"], "explain-test");
    assert_eq!(e["stages"], "$match>$group");
    assert_eq!(
        e["stage_stats"], "$cursor nReturned=100 ms=3; $group nReturned=5 ms=4",
        "{e}"
    );
    assert!(e["elapsed_ms"].as_u64().unwrap() >= 200, "{e}");
    assert_eq!(e["explain_truncated"], false);
    let explain: Value = serde_json::from_str(e["explain"].as_str().expect("explain string"))
        .expect("the explain field is JSON");
    // Numbers survive redaction; strings do not.
    assert_eq!(explain["stages"][1]["nReturned"], 5, "{explain}");
    assert_eq!(
        explain["stages"][0]["$cursor"]["queryPlanner"]["parsedQuery"]["name"],
        "?"
    );
    assert_eq!(
        explain["stages"][0]["$cursor"]["queryPlanner"]["parsedQuery"]["qty"]["$gt"],
        3
    );
    assert!(
        !e.to_string().contains(SECRET),
        "a filter value reached the log: {e}"
    );

    let sent = explains(&up);
    assert_eq!(sent.len(), 1, "one explain");
    let cmd = sent[0].command.as_ref().unwrap();
    assert_eq!(cmd.get_str("verbosity").ok(), Some("executionStats"));
    assert_eq!(cmd.get_i32("maxTimeMS").ok(), Some(4321));
    assert_eq!(cmd.get_str("$db").ok(), Some("shop"));
    let inner = explained_command(&sent[0]);
    assert_eq!(inner.get_str("aggregate").ok(), Some("orders"));
    assert_eq!(
        inner.get_array("pipeline").unwrap().as_bytes(),
        original.get_array("pipeline").unwrap().as_bytes(),
        "the explained pipeline is the original, byte for byte"
    );
    assert_eq!(
        inner.get_document("cursor").unwrap().as_bytes(),
        rawdoc! {}.as_bytes()
    );
    for f in ["lsid", "$readPreference", "$db", "maxTimeMS"] {
        assert!(inner.get(f).unwrap().is_none(), "{f} copied into explain");
    }
    // mongotap's own connection says who it is.
    let own_hello = up
        .received()
        .into_iter()
        .find(|r| r.conn == sent[0].conn && r.name() == "hello")
        .expect("the explain connection's hello");
    let app = own_hello
        .command
        .as_ref()
        .unwrap()
        .get_document("client")
        .and_then(|c| c.get_document("application"))
        .and_then(|a| a.get_str("name"))
        .map(str::to_string);
    assert_eq!(app.ok().as_deref(), Some("mongotap"));

    // 2. The same shape again within the interval (other values): not
    //    explained again.
    let again = aggregate("orders", group_pipeline("other value"));
    c.command(&again).await;
    // 3. A pipeline that writes: never explained, however slow.
    let mut out = bson::RawArrayBuf::new();
    out.push(rawdoc! { "$match": { "qty": { "$gt": 1 } } });
    out.push(rawdoc! { "$out": "orders_copy" });
    c.command(&aggregate("writes", out)).await;
    let mut merge = bson::RawArrayBuf::new();
    merge.push(rawdoc! { "$merge": { "into": "orders_copy" } });
    c.command(&aggregate("writes", merge)).await;
    // Longer than a watchdog period (500 ms), so a late explain would show.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(explains(&up).len(), 1, "rate limit or write stage ignored");
    assert_eq!(tap.events("explained").len(), 1, "{:#?}", tap.logs());

    // 4. A server that refuses the explain: `explain_failed` with its code.
    c.command(&aggregate("failing", group_pipeline("x"))).await;
    let f = wait_event(&tap, "explain_failed", "failing", T).await;
    assert_eq!(f["code"], 2, "{f}");
    assert_eq!(f["code_name"], "BadValue");
    assert!(
        f["reason"].as_str().unwrap().contains("explain refused"),
        "{f}"
    );
}

async fn driver(uri: &str) -> Client {
    let mut opts = ClientOptions::parse(uri).await.expect("parse uri");
    opts.app_name = Some("explain-real".into());
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(opts).expect("client")
}

/// Inserts a few documents and runs an aggregate with a string filter
/// through the proxy.
async fn slow_enough_aggregate(c: &Client, db: &str) {
    let coll = c.database(db).collection::<Document>("orders");
    let docs: Vec<Document> = (0..200)
        .map(|i| doc! {"i": i, "g": i % 5, "name": format!("n{i}")})
        .collect();
    coll.insert_many(docs).await.expect("insert");
    let pipeline = vec![
        doc! {"$match": {"name": {"$ne": SECRET}}},
        doc! {"$group": {"_id": "$g", "n": {"$sum": 1}}},
        doc! {"$sort": {"_id": 1}},
    ];
    let mut cursor = coll.aggregate(pipeline).await.expect("aggregate");
    let mut n = 0;
    while cursor.advance().await.expect("advance") {
        n += 1;
    }
    assert_eq!(n, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferretdb_explain_is_passed_through_as_it_is() {
    let ferret = Ferret::start();
    let (tap, _dir) = start_tap(
        ferret.addr(),
        "[explain]\nenabled = true\nafter_ms = 0\nmax_time_ms = 5000\n",
    );
    let c = driver(&tap.uri()).await;
    let db = support::unique_db("explain");
    slow_enough_aggregate(&c, &db).await;
    let e = wait_event(&tap, "explained", "orders", T).await;
    assert_eq!(e["db"], db.as_str());
    assert_eq!(e["stages"], "$match>$group>$sort");
    assert_eq!(e["app"], "explain-real");
    // FerretDB reports no per-stage numbers: the field is absent.
    assert!(e.get("stage_stats").is_none(), "{e}");
    let explain: Value = serde_json::from_str(e["explain"].as_str().expect("explain"))
        .unwrap_or_else(|err| panic!("explain is not JSON ({err}): {e}"));
    // What FerretDB v1.24 answers: its SQL plan, the command echoed back,
    // pushdown flags and serverInfo, every string redacted.
    assert!(explain.get("queryPlanner").is_some(), "{explain}");
    assert_eq!(explain["ok"], 1.0, "{explain}");
    assert!(!e.to_string().contains(SECRET), "{e}");
    eprintln!("FerretDB explain as logged: {}", e["explain"]);
}

const USER: &str = "taptest";
const PASSWORD: &str = "tap-secret-pw";

/// pymongo as the authenticated application: the Rust driver 3.9 cannot log
/// in to FerretDB 1.24 ("expected SCRAM authentication to have completed":
/// FerretDB answers saslContinue with `done: false` although the driver
/// asked for skipEmptyExchange), while pymongo sends the extra empty round.
const PY_APP: &str = r#"
import json, sys, pymongo
c = pymongo.MongoClient(sys.argv[1], directConnection=True, appname="explain-auth",
                        serverSelectionTimeoutMS=5000)
coll = c[sys.argv[2]]["orders"]
if sys.argv[3] == "insert":
    coll.insert_many([{"i": i, "g": i % 5, "name": "n%d" % i} for i in range(200)])
rows = list(coll.aggregate([{"$match": {"name": {"$ne": sys.argv[4]}}},
                            {"$group": {"_id": "$g", "n": {"$sum": 1}}}]))
print(json.dumps({"groups": len(rows)}))
"#;

async fn py_app(uri: &str, db: &str, insert: bool) -> Value {
    let out = tokio::process::Command::new(support::python_path())
        .arg("-c")
        .arg(PY_APP)
        .args([uri, db, if insert { "insert" } else { "read" }, SECRET])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("pymongo app hung")
        .expect("run python");
    assert!(
        out.status.success(),
        "pymongo app failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("pymongo app output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha256_against_ferretdb_with_auth() {
    let ferret = Ferret::start_with_args(&[
        "--test-enable-new-auth",
        "--setup-database=admin",
        &format!("--setup-username={USER}"),
        &format!("--setup-password={PASSWORD}"),
    ]);
    let explain_cfg = |password: &str| {
        format!(
            "[explain]\nenabled = true\nafter_ms = 0\nusername = \"{USER}\"\npassword = \"{password}\"\nauth_db = \"admin\"\n"
        )
    };
    let app_uri = |tap: &Mongotap| {
        format!(
            "mongodb://{USER}:{PASSWORD}@{}/?authSource=admin&authMechanism=SCRAM-SHA-256",
            tap.listen
        )
    };
    let db = support::unique_db("explain_auth");

    // mongotap's own SCRAM-SHA-256 login succeeds and the explain runs.
    let (tap, _dir) = start_tap(ferret.addr(), &explain_cfg(PASSWORD));
    let out = py_app(&app_uri(&tap), &db, true).await;
    assert_eq!(out["groups"], 5);
    let e = wait_event(&tap, "explained", "orders", T).await;
    assert_eq!(e["db"], db.as_str());
    assert_eq!(e["app"], "explain-auth");
    assert!(
        e["explain"].as_str().unwrap().contains("queryPlanner"),
        "{e}"
    );
    assert!(!e.to_string().contains(SECRET), "{e}");
    assert!(tap.events("explain_failed").is_empty(), "{:#?}", tap.logs());

    // A wrong password: FerretDB refuses mongotap's login with code 18,
    // and the application's own traffic is unaffected.
    let (bad, _dir2) = start_tap(ferret.addr(), &explain_cfg("wrong-password"));
    let out = py_app(&app_uri(&bad), &db, false).await;
    assert_eq!(out["groups"], 5);
    let f = wait_event(&bad, "explain_failed", "orders", T).await;
    assert_eq!(f["code"], 18, "{f}");
    assert_eq!(f["code_name"], "AuthenticationFailed", "{f}");
    assert!(bad.events("explained").is_empty());
}
