//! The diagnosis of an aggregate (issue #18): `mongotap diagnose` and the
//! live `diagnosed` event find each problem seeded in a real FerretDB
//! (join fields of different BSON types, an unindexed foreign field, an
//! `$unwind` over a field some documents lack) with the types and counts
//! seeded, for aggregates sent by pymongo and the Go driver; explain's
//! per-stage numbers on a scripted MongoDB 7-style upstream; a frozen
//! server; no write stage ever sent; no filter value ever shown.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/diagnose_seed.rs"]
mod diagnose_seed;
#[path = "support/mongodb_explain.rs"]
mod mongodb_explain;
#[path = "support/scripted.rs"]
mod scripted;
mod support;

use bson::rawdoc;
use diagnose_seed::{assert_seeded, pipeline, seed, with_check, CUSTOMERS, SECRET, STAGES};
use mongodb::bson::{doc, Document};
use mongodb::Client;
use scripted::{hello_reply_doc, reply, RawClient, Received, Scripted, Step};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{signal, Ferret, Mongotap};

const BIN: &str = env!("CARGO_BIN_EXE_mongotap");
const T: Duration = Duration::from_secs(20);

fn run_cli(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("diagnose")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mongotap diagnose");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "diagnose {args:?} exited {}: {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_finds_each_seeded_problem_on_ferretdb() {
    let ferret = Ferret::start();
    let db = support::unique_db("diagnose_cli");
    seed(&ferret.uri(), &db).await;
    let (upstream, ns, p) = (
        ferret.addr().to_string(),
        format!("{db}.orders"),
        pipeline(),
    );
    let base = [
        "--upstream",
        &upstream,
        "--ns",
        &ns,
        "--pipeline",
        &p,
        "--driver",
        "mongo-go-driver 1.11.4",
    ];
    let json = run_cli(&[&base[..], &["--json"]].concat());
    assert!(
        !json.contains(SECRET),
        "a filter value in the output:\n{json}"
    );
    let report: Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(report["namespace"], ns);
    assert_eq!(
        report["stages"],
        serde_json::json!(["$match", "$lookup", "$lookup", "$unwind", "$group"])
    );
    let findings = report["findings"].as_array().unwrap();
    assert_seeded(findings, &db);
    // FerretDB 1.24 reports maxWireVersion 21 (7.0); Go driver 1.12 is the first for it.
    let drv = with_check(findings, "driver_server", |f| {
        f["evidence"]["minimum"].is_string()
    });
    assert_eq!(drv["evidence"]["minimum"], "1.12");
    assert_eq!(drv["evidence"]["max_wire_version"], 21);

    let text = run_cli(&base);
    assert!(!text.contains(SECRET), "{text}");
    assert!(
        text.contains(&format!("customers._id (objectId ×{CUSTOMERS})")),
        "{text}"
    );
    assert!(
        text.contains("3. join types") && text.contains("5. guardrails"),
        "{text}"
    );
}

/// The `diagnosed` event for the aggregate of `app`, its findings parsed.
async fn diagnosed(tap: &Mongotap, app: &str) -> (Value, Vec<Value>) {
    let owned = app.to_string();
    let event = tap
        .wait_for(T, move |v| {
            v["event"] == "diagnosed" && v["app"] == owned.as_str()
        })
        .await
        .unwrap_or_else(|| panic!("no `diagnosed` for {app}: {:#?}", tap.logs()));
    let findings: Vec<Value> =
        serde_json::from_str(event["findings"].as_str().expect("findings")).expect("findings JSON");
    (event, findings)
}

fn diagnose_config(extra: &str) -> String {
    format!("[diagnose]\nenabled = true\ninterval_ms = 0\n{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_diagnosis_of_a_failed_lookup_from_pymongo_and_go() {
    let ferret = Ferret::start();
    let db = support::unique_db("diagnose_live");
    seed(&ferret.uri(), &db).await;
    let upstream = ferret.addr().to_string();
    let tap = Mongotap::spawn_config(
        &diagnose_config(""),
        &["--upstream", &upstream, "--listen", "127.0.0.1:0"],
    );
    let p = pipeline();

    // pymongo: FerretDB refuses $lookup, and that failure is the trigger.
    let py = support::python("aggregate.py", &[&tap.uri(), &db, "py-orders", &p]).await;
    assert_eq!(py["ok"], false);
    let (event, findings) = diagnosed(&tap, "py-orders").await;
    check_live(&event, &findings, &py, &db, "PyMongo");

    // The Go driver, the checklist's case.
    let go = support::client_path("MONGOTAP_GO_CLIENT", "clients/go/mongotap-go-client");
    let mut child = tokio::process::Command::new(go)
        .args(["aggregate", &tap.uri(), &db, "go-orders"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("go client");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(p.as_bytes()).await.unwrap();
    }
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .expect("go client hung")
        .unwrap();
    assert!(out.status.success(), "go client failed");
    let go: Value = serde_json::from_slice(&out.stdout).expect("go client JSON");
    let (event, findings) = diagnosed(&tap, "go-orders").await;
    check_live(&event, &findings, &go, &db, "mongo-go-driver");

    for line in tap.logs() {
        assert!(
            !line.to_string().contains(SECRET),
            "a filter value in the log: {line}"
        );
    }
}

/// The event names the command the driver saw fail, with the code the
/// driver got, and finds every seeded problem.
fn check_live(event: &Value, findings: &[Value], driver_saw: &Value, db: &str, driver: &str) {
    assert_eq!(event["command"], "aggregate");
    assert_eq!(event["db"], db);
    assert_eq!(event["collection"], "orders");
    assert_eq!(event["stages"], STAGES);
    assert_eq!(event["trigger"], "failed");
    assert!(
        event["conn"].as_u64().is_some() && event["request_id"].as_i64().is_some(),
        "{event}"
    );
    let m = with_check(findings, "monitoring", |_| true);
    assert_eq!(m["evidence"]["code"], driver_saw["code"]);
    assert_eq!(m["evidence"]["code_name"], driver_saw["code_name"]);
    assert_eq!(driver_saw["code_name"], "NotImplemented");
    assert_eq!(m["evidence"]["app"], event["app"]);
    assert!(
        m["evidence"]["driver"].as_str().unwrap().contains(driver),
        "{m}"
    );
    assert_seeded(findings, db);
}

/// A scripted MongoDB 7: hello, buildInfo, the explain fixture, empty finds
/// and the _id index.
fn mongodb7(req: &Received) -> Vec<Step> {
    let cursor = |batch: bson::RawArrayBuf| {
        rawdoc! { "cursor": { "id": 0_i64, "ns": "shop.x", "firstBatch": batch }, "ok": 1.0 }
    };
    let body = match req.name().as_str() {
        "hello" | "isMaster" | "ismaster" => hello_reply_doc(),
        "buildInfo" => rawdoc! { "version": "7.0.0", "ok": 1.0 },
        "explain" => {
            let inner = req
                .command
                .as_ref()
                .unwrap()
                .get_document("explain")
                .unwrap()
                .to_owned();
            mongodb_explain::mongodb_explain(inner, &EXPLAIN)
        }
        "find" => cursor(bson::RawArrayBuf::new()),
        "aggregate" => {
            let body = cursor(bson::RawArrayBuf::new());
            return vec![Step::Sleep(AGGREGATE_DELAY), Step::Send(reply(req, &body))];
        }
        "listIndexes" => {
            let mut a = bson::RawArrayBuf::new();
            a.push(rawdoc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" });
            cursor(a)
        }
        _ => rawdoc! { "ok": 1.0 },
    };
    vec![Step::Send(reply(req, &body))]
}

/// How long the scripted upstream sits on every aggregate.
const AGGREGATE_DELAY: Duration = Duration::from_millis(400);

const EXPLAIN: mongodb_explain::Numbers = mongodb_explain::Numbers {
    cursor_returned: 1000,
    cursor_ms: 12,
    docs_examined: 50_000,
    group_returned: 5,
    group_ms: 850,
};

#[tokio::test]
async fn explain_names_the_slow_stage_and_never_sends_a_write_stage() {
    let up = Scripted::start(mongodb7).await;
    let upstream = up.addr.to_string();
    let p = format!(
        r#"[{{"$match": {{"name": "{SECRET}"}}}}, {{"$group": {{"_id": "$g", "n": {{"$sum": 1}}}}}}]"#
    );
    let json = tokio::task::spawn_blocking(move || {
        run_cli(&[
            "--upstream",
            &upstream,
            "--ns",
            "shop.orders",
            "--pipeline",
            &p,
            "--json",
        ])
    })
    .await
    .unwrap();
    assert!(!json.contains(SECRET), "{json}");
    let report: Value = serde_json::from_str(&json).unwrap();
    let findings = report["findings"].as_array().unwrap();
    let slow = with_check(findings, "explain", |f| {
        f["evidence"]["slowest"].is_string()
    });
    assert_eq!(slow["stage"], "$group");
    assert_eq!(slow["evidence"]["slowest"], "$group");
    assert_eq!(
        slow["evidence"]["own_ms"],
        EXPLAIN.group_ms - EXPLAIN.cursor_ms
    );
    assert_eq!(slow["evidence"]["total_ms"], EXPLAIN.group_ms);
    assert_eq!(slow["evidence"]["nReturned"], EXPLAIN.group_returned);
    let scan = with_check(findings, "explain", |f| f["evidence"]["name"] == "$cursor");
    assert_eq!(scan["evidence"]["totalDocsExamined"], EXPLAIN.docs_examined);
    assert_eq!(scan["evidence"]["nReturned"], EXPLAIN.cursor_returned);
    assert_eq!(scan["evidence"]["index_used"], false);
    assert_eq!(scan["severity"], "warning");
    assert!(
        up.received().iter().any(|r| r.name() == "explain"),
        "the read-only pipeline was explained"
    );
    let upstream = up.addr.to_string();
    let p = format!(
        r#"[{{"$match": {{"name": "{SECRET}"}}}}, {{"$group": {{"_id": "$g", "n": {{"$sum": 1}}}}}}]"#
    );
    let text = tokio::task::spawn_blocking(move || {
        run_cli(&[
            "--upstream",
            &upstream,
            "--ns",
            "shop.orders",
            "--pipeline",
            &p,
        ])
    })
    .await
    .unwrap();
    println!("{text}");
    let own = EXPLAIN.group_ms - EXPLAIN.cursor_ms;
    let want = format!("the time goes in $group: {own} of {} ms", EXPLAIN.group_ms);
    assert!(text.contains(&want) && !text.contains(SECRET), "{text}");

    // With $out or $merge, nothing but reads goes out.
    for write in [r#"{"$out": "copy"}"#, r#"{"$merge": {"into": "copy"}}"#] {
        let before = up.received().len();
        let upstream = up.addr.to_string();
        let p = format!(
            r#"[{{"$match": {{"qty": {{"$gt": 1}}}}}}, {{"$group": {{"_id": "$g"}}}}, {write}]"#
        );
        let json = tokio::task::spawn_blocking(move || {
            run_cli(&[
                "--upstream",
                &upstream,
                "--ns",
                "shop.orders",
                "--pipeline",
                &p,
                "--json",
            ])
        })
        .await
        .unwrap();
        let report: Value = serde_json::from_str(&json).unwrap();
        let refused = with_check(report["findings"].as_array().unwrap(), "guardrails", |f| {
            f["evidence"]["refused"] == true
        });
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("never sends a write stage"),
            "{refused}"
        );
        let sent: Vec<String> = up.received()[before..].iter().map(Received::name).collect();
        assert!(
            sent.contains(&"find".to_string()),
            "the read-only checks ran: {sent:?}"
        );
        for (r, name) in up.received()[before..].iter().zip(&sent) {
            assert!(
                ["hello", "buildInfo", "find", "listIndexes"].contains(&name.as_str()),
                "sent {name}"
            );
            let doc = Document::try_from(r.command.as_ref().unwrap().as_ref()).unwrap();
            let text = doc.to_string();
            assert!(
                !text.contains("$out") && !text.contains("$merge"),
                "a write stage went out: {text}"
            );
        }
    }
}

/// Live, a slow aggregate with `$out`: diagnosed once per shape (the
/// second run is rate limited), and mongotap's own connection sends
/// neither the write stage nor an explain of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_aggregate_is_diagnosed_once_per_shape_and_its_write_stage_never_resent() {
    let up = Scripted::start(mongodb7).await;
    let upstream = up.addr.to_string();
    let tap = Mongotap::spawn_config(
        "[diagnose]\nenabled = true\nslow_ms = 200\n",
        &["--upstream", &upstream, "--listen", "127.0.0.1:0"],
    );
    let mut c = RawClient::connect(tap.listen).await;
    c.command(&rawdoc! {
        "hello": 1,
        "client": { "application": { "name": "slow-app" }, "driver": { "name": "raw", "version": "1.0" } },
        "$db": "admin",
    })
    .await;
    let agg = rawdoc! {
        "aggregate": "orders",
        "pipeline": [{ "$match": { "name": SECRET } }, { "$group": { "_id": "$g" } }, { "$out": "copy" }],
        "cursor": {},
        "$db": "shop",
    };
    let sent = Instant::now();
    c.command(&agg).await;
    let took = sent.elapsed().as_millis() as u64;
    let (event, findings) = diagnosed(&tap, "slow-app").await;
    assert_eq!(event["trigger"], "slow");
    assert_eq!(event["stages"], "$match>$group>$out");
    let elapsed = event["elapsed_ms"].as_u64().unwrap();
    assert!(
        (AGGREGATE_DELAY.as_millis() as u64..=took).contains(&elapsed),
        "elapsed_ms {elapsed}: the upstream held it {AGGREGATE_DELAY:?}, the client waited {took} ms"
    );
    with_check(&findings, "guardrails", |f| {
        f["evidence"]["refused"] == true && f["stage"] == "$out"
    });
    // The same shape again, within diagnose.interval_ms: no second diagnosis.
    c.command(&agg).await;
    c.command(&rawdoc! { "ping": 1, "$db": "admin" }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        tap.events("diagnosed").len(),
        1,
        "{:#?}",
        tap.events("diagnosed")
    );
    // The only frames that carried $out are the client's own two aggregates.
    let received = up.received();
    let with_out = received
        .iter()
        .filter(|r| {
            r.command
                .as_ref()
                .and_then(|c| Document::try_from(c.as_ref()).ok())
                .is_some_and(|d| d.to_string().contains("$out"))
        })
        .count();
    assert_eq!(with_out, 2);
    assert!(received.iter().all(|r| r.name() != "explain"));
    assert!(
        received.iter().any(|r| r.name() == "find"),
        "the read-only checks ran"
    );
    for line in tap.logs() {
        assert!(!line.to_string().contains(SECRET), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_diagnosed_as_a_server_wide_stall() {
    let ferret = Ferret::start();
    let db = support::unique_db("diagnose_frozen");
    seed(&ferret.uri(), &db).await;
    let upstream = ferret.addr().to_string();
    let probe_ms = 400;
    let tap = Mongotap::spawn_config(
        &diagnose_config(&format!("probe_timeout_ms = {probe_ms}\n")),
        &[
            "--upstream",
            &upstream,
            "--listen",
            "127.0.0.1:0",
            "--stall-ms",
            "300",
        ],
    );
    let c = Client::with_uri_str(format!("{}&appName=frozen", tap.uri()))
        .await
        .unwrap();
    c.database(&db)
        .run_command(doc! {"ping": 1})
        .await
        .expect("ping");
    signal(ferret.pid(), "STOP");
    let coll = c.database(&db).collection::<Document>("orders");
    let agg = tokio::spawn(async move {
        let p = vec![
            doc! {"$match": {"total": {"$gte": 0}}},
            doc! {"$group": {"_id": "$customerId"}},
        ];
        coll.aggregate(p).await.map(|_| ())
    });
    let (event, findings) = diagnosed(&tap, "frozen").await;
    assert_eq!(event["trigger"], "stalled");
    let stall = with_check(&findings, "monitoring", |f| {
        f["evidence"]["probe_timed_out"] == true
    });
    assert_eq!(
        stall["message"],
        format!("the server did not answer mongotap's own probe within {probe_ms} ms: a server-wide stall, not this pipeline")
    );
    assert_eq!(stall["evidence"]["probe_timeout_ms"], probe_ms);
    let facts = with_check(&findings, "monitoring", |f| {
        f["evidence"]["stalled"] == true
    });
    assert_eq!(facts["evidence"]["app"], "frozen");
    // The stalled aggregate's /inflight row carries the diagnosis.
    let (_, body) = tap.admin_get("/inflight");
    let rows: Vec<Value> = serde_json::from_str(&body).unwrap();
    let row = rows
        .iter()
        .find(|r| r["request_id"] == event["request_id"])
        .unwrap_or_else(|| panic!("no row for the stalled aggregate: {body}"));
    assert_eq!(row["diagnosis"], Value::Array(findings.clone()));
    signal(ferret.pid(), "CONT");
    let started = Instant::now();
    tokio::time::timeout(T, agg)
        .await
        .expect("aggregate finished after SIGCONT")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < T);
}
