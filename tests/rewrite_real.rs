//! The rewrite guardrail against a real server (issue 5): an aggregate that
//! runs for seconds on FerretDB is cut short by the maxTimeMS mongotap
//! injects, and fails with MaxTimeMSExpired (50); with rewriting off the
//! same pipeline completes. Driven with the Rust driver and with pymongo.
//!
//! Measured on FerretDB v1.24.2 (SQLite backend), 50,000 small documents:
//! the `$group` + `$sort` pipeline below takes about 2.4 s, and with
//! maxTimeMS 100 it fails after about 0.1 s with code 50. FerretDB also
//! enforces maxTimeMS on find. It accepts but does not enforce maxTimeMS on
//! count, and rejects it on distinct (`FailedToParse: unknown field`), so a
//! rule naming distinct breaks distinct on FerretDB.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::{Error, ErrorKind};
use mongodb::Client;
use serde_json::Value;
use support::{python_path, unique_db, Ferret, Mongotap};

const DOCS: i32 = 50_000;
/// The limit the enforce rule injects.
const LIMIT_MS: u64 = 100;

fn pipeline() -> Vec<Document> {
    vec![
        doc! { "$group": { "_id": "$g", "n": { "$sum": 1 } } },
        doc! { "$sort": { "_id": 1 } },
    ]
}

/// The same pipeline as JSON, for pymongo.
const PIPELINE_JSON: &str =
    r#"[{"$group": {"_id": "$g", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]"#;

/// A find that scans every document (nothing matches the regex).
fn slow_filter() -> Document {
    doc! { "s": { "$regex": "y" } }
}

fn config(mode: &str) -> String {
    format!(
        r#"
[rewrite]
mode = "{mode}"

[[rewrite.rule]]
commands = ["aggregate", "find"]
namespaces = ["rw_*"]
default_max_time_ms = {LIMIT_MS}
max_time_ms_cap = {LIMIT_MS}
allow_disk_use = true
"#
    )
}

/// FerretDB with DOCS documents in `db.events`, and mongotap in front of it
/// with the given rewrite mode.
struct World {
    ferret: Ferret,
    db: String,
    dir: tempfile::TempDir,
}

impl World {
    async fn seed(test: &str) -> World {
        let ferret = Ferret::start();
        let db = unique_db(&format!("rw_{test}"));
        let client = Client::with_uri_str(ferret.uri()).await.expect("client");
        let coll = client.database(&db).collection::<Document>("events");
        let started = Instant::now();
        let docs: Vec<Document> = (0..DOCS)
            .map(|i| doc! { "_id": i, "g": i % 100, "v": i, "s": "x".repeat(20), "a": [1, 2, 3] })
            .collect();
        for chunk in docs.chunks(10_000) {
            coll.insert_many(chunk.to_vec()).await.expect("seed insert");
        }
        eprintln!("seeded {DOCS} documents in {:?}", started.elapsed());
        World {
            ferret,
            db,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    async fn proxy(&self, mode: &str) -> Mongotap {
        let path = self.dir.path().join(format!("{mode}.toml"));
        std::fs::write(&path, config(mode)).expect("write config");
        let path = path.to_str().expect("utf-8").to_owned();
        let upstream = self.ferret.addr();
        tokio::task::spawn_blocking(move || Mongotap::start_with(upstream, &["--config", &path]))
            .await
            .expect("start mongotap")
    }
}

fn server_code(e: &Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// Runs the pipeline with the Rust driver; returns the groups' total count
/// or the error, and how long it took.
async fn rust_aggregate(uri: &str, db: &str) -> (Result<i64, Error>, Duration) {
    let client = Client::with_uri_str(format!("{uri}&appName=rust-rewrite"))
        .await
        .expect("client");
    let coll = client.database(db).collection::<Document>("events");
    let started = Instant::now();
    let result = async {
        let groups: Vec<Document> = coll.aggregate(pipeline()).await?.try_collect().await?;
        Ok(groups
            .iter()
            .map(|g| i64::from(g.get_i32("n").unwrap_or(0)))
            .sum())
    }
    .await;
    (result, started.elapsed())
}

async fn rust_find(uri: &str, db: &str) -> (Result<usize, Error>, Duration) {
    let client = Client::with_uri_str(uri).await.expect("client");
    let coll = client.database(db).collection::<Document>("events");
    let started = Instant::now();
    let result = async {
        let docs: Vec<Document> = coll.find(slow_filter()).await?.try_collect().await?;
        Ok(docs.len())
    }
    .await;
    (result, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_driver_aggregate_is_cut_by_the_injected_limit() {
    let w = World::seed("rust").await;

    // Rewriting off: the pipeline runs to the end, and takes seconds.
    let off = w.proxy("off").await;
    let (result, full) = rust_aggregate(&off.uri(), &w.db).await;
    assert_eq!(
        result.expect("with rewriting off the aggregate completes"),
        i64::from(DOCS)
    );
    eprintln!("aggregate with rewriting off: {full:?}");
    assert!(
        full >= Duration::from_millis(LIMIT_MS * 5),
        "the pipeline must run well past the limit for this test to mean anything ({full:?})"
    );

    // Enforced: the same pipeline fails with MaxTimeMSExpired, fast.
    let on = w.proxy("enforce").await;
    let (result, cut) = rust_aggregate(&on.uri(), &w.db).await;
    let err = result.expect_err("the injected maxTimeMS stops the aggregate");
    assert_eq!(server_code(&err), Some(50), "MaxTimeMSExpired, got {err}");
    eprintln!("aggregate with maxTimeMS {LIMIT_MS} injected: {cut:?}");
    assert!(
        cut < full / 2,
        "cut short ({cut:?}), not run to the end ({full:?})"
    );

    let failed = on
        .wait_for_event_async("failed", Duration::from_secs(10))
        .await;
    assert_eq!(failed["code"], 50, "{failed}");
    assert_eq!(failed["command"], "aggregate", "{failed}");
    assert_eq!(failed["app"], "rust-rewrite", "{failed}");
    let hint = failed["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains(&format!("maxTimeMS {LIMIT_MS} was injected")),
        "{failed}"
    );
    assert_eq!(
        on.events("rewritten").len(),
        0,
        "enforced rewrites log at debug"
    );
    let (_, metrics) = on.admin_get("/metrics");
    assert!(
        metrics.contains(r#"mongotap_rewrites_total{command="aggregate",field="maxTimeMS"} 1"#),
        "{metrics}"
    );

    // find is cut the same way; FerretDB enforces maxTimeMS there too.
    let (result, _) = rust_find(&on.uri(), &w.db).await;
    let err = result.expect_err("the injected maxTimeMS stops the find");
    assert_eq!(server_code(&err), Some(50), "MaxTimeMSExpired, got {err}");
    let (result, _) = rust_find(&off.uri(), &w.db).await;
    assert_eq!(result.expect("find completes with rewriting off"), 0);
}

/// pymongo, inline: runs the pipeline (and, with `full`, a client maxTimeMS
/// of 0 and a larger one, both capped) and prints what happened as JSON.
const PYMONGO: &str = r#"
import json, sys, time
import pymongo
from bson.son import SON

uri, db, pipeline, full = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "full"
client = pymongo.MongoClient(uri, appName="pymongo-rewrite")
coll = client[db]["events"]

def attempt(fn):
    started = time.monotonic()
    try:
        out = {"ok": True, "result": fn()}
    except pymongo.errors.OperationFailure as e:
        out = {"ok": False, "code": e.code, "code_name": (e.details or {}).get("codeName")}
    out["ms"] = round((time.monotonic() - started) * 1000)
    return out

report = {"aggregate": attempt(lambda: sum(d["n"] for d in coll.aggregate(pipeline)))}
if full:
    def raw(max_time_ms):
        cmd = SON([("aggregate", "events"), ("pipeline", pipeline), ("cursor", {}), ("maxTimeMS", max_time_ms)])
        return client[db].command(cmd)["ok"]
    report["unlimited"] = attempt(lambda: raw(0))
    report["larger"] = attempt(lambda: raw(600000))
print(json.dumps(report))
"#;

async fn pymongo(uri: &str, db: &str, full: bool) -> Value {
    let run = tokio::process::Command::new(python_path())
        .arg("-c")
        .arg(PYMONGO)
        .args([uri, db, PIPELINE_JSON, if full { "full" } else { "short" }])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("pymongo ran longer than 120 s")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pymongo failed ({}):\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("pymongo printed non-JSON ({e}):\n{stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymongo_aggregate_is_cut_by_the_injected_limit() {
    let w = World::seed("py").await;

    let off = w.proxy("off").await;
    let report = pymongo(&off.uri(), &w.db, false).await;
    let agg = &report["aggregate"];
    assert_eq!(
        agg["ok"], true,
        "with rewriting off the aggregate completes: {report}"
    );
    assert_eq!(agg["result"], DOCS, "{report}");
    let full = agg["ms"].as_u64().expect("ms");
    assert!(
        full >= LIMIT_MS * 5,
        "the pipeline must outlast the limit: {report}"
    );

    let on = w.proxy("enforce").await;
    let report = pymongo(&on.uri(), &w.db, true).await;
    eprintln!("pymongo through the enforce rule: {report}");
    // Absent: injected. 0 (unlimited) and a larger value: capped.
    for case in ["aggregate", "unlimited", "larger"] {
        let r = &report[case];
        assert_eq!(r["ok"], false, "{case}: {report}");
        assert_eq!(r["code"], 50, "{case}: {report}");
        assert_eq!(r["code_name"], "MaxTimeMSExpired", "{case}: {report}");
        assert!(
            r["ms"].as_u64().expect("ms") < full / 2,
            "{case} was cut short: {report}"
        );
    }
    let failed = on
        .wait_for_event_async("failed", Duration::from_secs(10))
        .await;
    assert_eq!(failed["app"], "pymongo-rewrite", "{failed}");
    assert_eq!(failed["code"], 50, "{failed}");
    let (_, metrics) = on.admin_get("/metrics");
    assert!(
        metrics.contains(r#"mongotap_rewrites_total{command="aggregate",field="maxTimeMS"} 3"#),
        "{metrics}"
    );
}

/// What FerretDB v1.24.2 does with maxTimeMS beyond aggregate and find,
/// straight to the server (no mongotap). Not mongotap's behaviour, but it
/// decides which commands a rewrite rule can usefully name on FerretDB; if
/// an upgrade changes it, this test says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferretdb_max_time_ms_support_as_measured() {
    let w = World::seed("measure").await;
    let client = Client::with_uri_str(w.ferret.uri()).await.expect("client");
    let db = client.database(&w.db);

    // count accepts maxTimeMS but runs to the end regardless.
    let started = Instant::now();
    let reply = db
        .run_command(doc! { "count": "events", "query": slow_filter(), "maxTimeMS": 50 })
        .await
        .expect("FerretDB does not enforce maxTimeMS on count");
    eprintln!("count with maxTimeMS 50 took {:?}", started.elapsed());
    assert_eq!(reply.get_i32("n").ok(), Some(0), "{reply}");

    // distinct rejects it outright (MongoDB accepts it).
    let err = db
        .run_command(doc! { "distinct": "events", "key": "g", "maxTimeMS": 50 })
        .await
        .expect_err("FerretDB rejects maxTimeMS on distinct");
    assert_eq!(server_code(&err), Some(9), "FailedToParse, got {err}");

    // count rejects allowDiskUse, as MongoDB does.
    let err = db
        .run_command(doc! { "count": "events", "allowDiskUse": true })
        .await
        .expect_err("count rejects allowDiskUse");
    assert_eq!(server_code(&err), Some(9), "FailedToParse, got {err}");
}
