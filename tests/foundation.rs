//! Real drivers against a real server: the same workload runs straight
//! against FerretDB and through mongotap, and every result must match.
//!
//! If mongotap changed, dropped or misrouted a single frame, a document, a
//! count, an error code or the number of getMore round trips would differ.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use serde_json::Value;

use support::{python, unique_db, Ferret, Mongotap};

/// Enough documents that batchSize 2 needs more than ten getMores.
const DOCS: i32 = 30;
const W0_ID: i32 = 1000;

/// What the Rust workload observed. Only path-independent facts: no cursor
/// ids, timings or connection ids.
#[derive(Debug, PartialEq)]
struct Summary {
    inserted: usize,
    duplicate_code: Option<i32>,
    find: Vec<Document>,
    find_getmores: usize,
    aggregate: Vec<Document>,
    aggregate_getmores: usize,
    group: Vec<Document>,
    /// (matched, modified)
    update: (u64, u64),
    deleted: u64,
    w0_count: u64,
    /// First batch of a cursor closed early, and the killCursors reply's
    /// `cursorsKilled` length.
    partial: Vec<Bson>,
    explicit_killed: usize,
    /// killCursors sent by the driver when an unfinished cursor is dropped.
    dropped_cursor_kills: usize,
    final_docs: Vec<Document>,
    final_count: u64,
}

/// Counts commands by name as the driver's command monitoring reports them.
#[derive(Default)]
struct Monitor {
    started: Mutex<HashMap<String, usize>>,
    killed: Mutex<usize>,
}

impl Monitor {
    fn started(&self, name: &str) -> usize {
        *self.started.lock().unwrap().get(name).unwrap_or(&0)
    }
}

async fn client(uri: &str, app: &str, monitor: Option<Arc<Monitor>>) -> Client {
    let mut opts = ClientOptions::parse(uri).await.expect("parse URI");
    opts.app_name = Some(app.to_owned());
    opts.server_selection_timeout = Some(Duration::from_secs(10));
    if let Some(monitor) = monitor {
        opts.command_event_handler = Some(EventHandler::callback(move |ev| match ev {
            CommandEvent::Started(e) => {
                *monitor
                    .started
                    .lock()
                    .unwrap()
                    .entry(e.command_name)
                    .or_default() += 1;
            }
            CommandEvent::Succeeded(e) if e.command_name == "killCursors" => {
                let n = e.reply.get_array("cursorsKilled").map_or(0, |a| a.len());
                *monitor.killed.lock().unwrap() += n;
            }
            _ => {}
        }));
    }
    Client::with_options(opts).expect("client")
}

/// Polls `check` until it returns true or `timeout` passes.
async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rust_workload(uri: &str, db_name: &str) -> Summary {
    let monitor = Arc::new(Monitor::default());
    let client = client(uri, "mongotap-tests-rust", Some(Arc::clone(&monitor))).await;
    let db = client.database(db_name);
    let coll: Collection<Document> = db.collection("items");

    // The driver sends insert's documents as an OP_MSG kind-1 sequence.
    let docs: Vec<Document> = (0..DOCS)
        .map(|i| doc! { "_id": i, "n": i, "grp": i % 3, "name": format!("doc{i}") })
        .collect();
    let inserted = coll
        .insert_many(docs)
        .await
        .expect("insert_many")
        .inserted_ids
        .len();

    let duplicate_code = match coll.insert_one(doc! { "_id": 0 }).await {
        Ok(_) => None,
        Err(e) => match *e.kind {
            ErrorKind::Write(WriteFailure::WriteError(ref w)) => Some(w.code),
            _ => panic!("duplicate insert failed unexpectedly: {e}"),
        },
    };

    let before = monitor.started("getMore");
    let find: Vec<Document> = coll
        .find(doc! { "n": { "$gte": 5 } })
        .sort(doc! { "_id": 1 })
        .batch_size(4)
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("find cursor");
    let find_getmores = monitor.started("getMore") - before;

    let before = monitor.started("getMore");
    let pipeline = vec![
        doc! { "$match": { "n": { "$gte": 3 } } },
        doc! { "$sort": { "n": -1 } },
        doc! { "$project": { "n": 1, "grp": 1 } },
    ];
    let aggregate: Vec<Document> = coll
        .aggregate(pipeline)
        .batch_size(2)
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("aggregate cursor");
    let aggregate_getmores = monitor.started("getMore") - before;

    let grouped = vec![
        doc! { "$match": { "n": { "$lt": 20 } } },
        // One accumulator only: FerretDB v1.24.2 implements just $sum and
        // $count, and returns 0 for every accumulator after the first.
        doc! { "$group": { "_id": "$grp", "total": { "$sum": "$n" } } },
        doc! { "$sort": { "_id": 1 } },
    ];
    let group: Vec<Document> = coll
        .aggregate(grouped)
        .await
        .expect("group")
        .try_collect()
        .await
        .expect("group cursor");

    let res = coll
        .update_many(
            doc! { "grp": 0 },
            doc! { "$set": { "flag": true }, "$inc": { "n": 100 } },
        )
        .await
        .expect("update_many");
    let deleted = coll
        .delete_many(doc! { "grp": 1 })
        .await
        .expect("delete_many")
        .deleted_count;

    // The Rust driver refuses w:0 on its CRUD API, so the unacknowledged
    // insert goes through runCommand. It still reads a reply (no moreToCome;
    // pymongo covers that path), but the server is told not to acknowledge.
    db.run_command(doc! {
        "insert": "items",
        "documents": [{ "_id": W0_ID, "n": -1 }],
        "writeConcern": { "w": 0 },
    })
    .await
    .expect("w:0 insert");
    let mut w0_count = 0;
    eventually(Duration::from_secs(5), async || {
        w0_count = coll
            .count_documents(doc! { "_id": W0_ID })
            .await
            .expect("count");
        w0_count > 0
    })
    .await;

    // Explicit killCursors on a cursor that still has documents.
    let opened = db
        .run_command(doc! { "find": "items", "sort": { "_id": 1 }, "batchSize": 2 })
        .await
        .expect("find for killCursors");
    let cursor = opened.get_document("cursor").expect("cursor field");
    let partial = cursor.get_array("firstBatch").expect("firstBatch").clone();
    let id = cursor.get_i64("id").expect("cursor id");
    assert_ne!(
        id, 0,
        "a batchSize 2 find over {DOCS} docs must leave a cursor open"
    );
    let reply = db
        .run_command(doc! { "killCursors": "items", "cursors": [id] })
        .await
        .expect("killCursors");
    let explicit_killed = reply
        .get_array("cursorsKilled")
        .expect("cursorsKilled")
        .len();

    // Dropping an unfinished driver cursor makes the driver send killCursors
    // from a background task, so wait for its reply to be monitored.
    let kills_before = *monitor.killed.lock().unwrap();
    let mut cursor = coll
        .find(doc! {})
        .batch_size(2)
        .await
        .expect("find to drop");
    cursor.try_next().await.expect("first doc");
    drop(cursor);
    eventually(Duration::from_secs(5), async || {
        *monitor.killed.lock().unwrap() > kills_before
    })
    .await;
    let dropped_cursor_kills = *monitor.killed.lock().unwrap() - kills_before;

    let final_docs: Vec<Document> = coll
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .expect("final find")
        .try_collect()
        .await
        .expect("final cursor");
    let final_count = coll.count_documents(doc! {}).await.expect("final count");
    client.shutdown().await;

    Summary {
        inserted,
        duplicate_code,
        find,
        find_getmores,
        aggregate,
        aggregate_getmores,
        group,
        update: (res.matched_count, res.modified_count),
        deleted,
        w0_count,
        partial,
        explicit_killed,
        dropped_cursor_kills,
        final_docs,
        final_count,
    }
}

/// Proves the proxied run really went through mongotap and was decoded: the
/// duplicate-key insert must show up as a `failed` event for that database.
/// And nothing in well-formed traffic may count as malformed.
async fn assert_proxy_saw(proxy: &Mongotap, db: &str) {
    let seen = proxy
        .wait_for_event_async("failed", Duration::from_secs(5))
        .await;
    let all = proxy.events("failed");
    assert!(
        all.iter().any(|e| e["db"] == db && e["code"] == 11000),
        "no failed event with code 11000 for {db}: first was {seen}, all: {all:#?}"
    );
    let errors = proxy.events("decode_error");
    assert!(errors.is_empty(), "unexpected decode errors: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_driver_results_match_direct() {
    let ferret = Ferret::start();
    let proxy = Mongotap::start(ferret.addr());

    let proxied_db = unique_db("rust_proxied");
    let direct = rust_workload(&ferret.uri(), &unique_db("rust_direct")).await;
    let proxied = rust_workload(&proxy.uri(), &proxied_db).await;

    // Sanity first, so that "equal" cannot mean "equally broken".
    assert_eq!(direct.inserted, DOCS as usize);
    assert_eq!(direct.duplicate_code, Some(11000));
    assert_eq!(direct.find.len(), (DOCS - 5) as usize);
    assert!(
        direct.find_getmores >= 6,
        "find used {} getMores",
        direct.find_getmores
    );
    assert_eq!(direct.aggregate.len(), (DOCS - 3) as usize);
    assert!(
        direct.aggregate_getmores >= 13,
        "aggregate used {} getMores",
        direct.aggregate_getmores
    );
    assert_eq!(direct.group.len(), 3);
    assert_eq!(direct.update, (10, 10));
    assert_eq!(direct.deleted, 10);
    assert_eq!(direct.w0_count, 1);
    assert_eq!(direct.partial.len(), 2);
    assert_eq!(direct.explicit_killed, 1);
    assert_eq!(direct.dropped_cursor_kills, 1);
    assert_eq!(direct.final_count, 21);

    assert_eq!(
        direct, proxied,
        "results through mongotap differ from direct"
    );
    assert_proxy_saw(&proxy, &proxied_db).await;
}

/// `runtime = "auto"` picks current-thread on machines with 2 CPUs or fewer
/// (this one and CI's included), so each flavour is run explicitly here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_runtime_flavour_forwards_the_same_results() {
    let ferret = Ferret::start();
    let direct = rust_workload(&ferret.uri(), &unique_db("flavour_direct")).await;
    assert_eq!(direct.inserted, DOCS as usize);
    for flavour in ["multi-thread", "current-thread"] {
        let proxy = Mongotap::start_with(ferret.addr(), &["--runtime", flavour]);
        let db = unique_db(&format!("flavour_{}", flavour.replace('-', "_")));
        let proxied = rust_workload(&proxy.uri(), &db).await;
        assert_eq!(
            direct, proxied,
            "results through --runtime {flavour} differ from direct"
        );
        assert_proxy_saw(&proxy, &db).await;
        let chosen = proxy
            .logs()
            .into_iter()
            .find(|l| l["runtime"].is_string())
            .expect("mongotap logs the runtime it runs");
        assert_eq!(chosen["runtime"], flavour, "{chosen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymongo_results_match_direct() {
    let ferret = Ferret::start();
    let proxy = Mongotap::start(ferret.addr());

    let proxied_db = unique_db("py_proxied");
    let direct = python("workload.py", &[&ferret.uri(), &unique_db("py_direct")]).await;
    let proxied = python("workload.py", &[&proxy.uri(), &proxied_db]).await;

    let field = |name: &str| direct[name].clone();
    assert_eq!(field("inserted"), 30);
    assert_eq!(field("duplicate_code"), 11000);
    assert_eq!(direct["find"].as_array().map(Vec::len), Some(25));
    assert!(field("find_getmores").as_u64() >= Some(6), "{direct}");
    assert_eq!(direct["aggregate"].as_array().map(Vec::len), Some(27));
    assert!(field("aggregate_getmores").as_u64() >= Some(13), "{direct}");
    assert_eq!(
        field("update"),
        serde_json::json!({"matched": 10, "modified": 10})
    );
    assert_eq!(field("delete"), 10);
    // pymongo sends this one with moreToCome: no reply is expected.
    assert_eq!(field("w0_count"), 1);
    assert_eq!(field("kill_cursors"), 1);
    assert_eq!(field("cursors_killed"), 1);
    assert_eq!(field("final_count"), 21);

    assert_eq!(
        direct, proxied,
        "pymongo results through mongotap differ from direct"
    );
    assert_proxy_saw(&proxy, &proxied_db).await;
}

/// The drivers' workloads do the same thing; if they ever disagree about
/// the data, one of the two summaries above is not testing what it claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_python_workloads_agree_on_data() {
    let ferret = Ferret::start();
    let py = python("workload.py", &[&ferret.uri(), &unique_db("agree_py")]).await;
    let rust = rust_workload(&ferret.uri(), &unique_db("agree_rust")).await;

    let as_json = |docs: &[Document]| -> Value {
        Value::Array(
            docs.iter()
                .map(|d| to_json(&Bson::Document(d.clone())))
                .collect(),
        )
    };
    assert_eq!(py["find"], as_json(&rust.find));
    assert_eq!(py["aggregate"], as_json(&rust.aggregate));
    assert_eq!(py["group"], as_json(&rust.group));
    assert_eq!(py["final"], as_json(&rust.final_docs));
}

/// Relaxed extended JSON for the few BSON types the workloads produce; the
/// driver's own converter sits behind a bson feature the workspace leaves off.
fn to_json(value: &Bson) -> Value {
    match value {
        Bson::Int32(n) => Value::from(*n),
        Bson::Int64(n) => Value::from(*n),
        Bson::Double(n) => Value::from(*n),
        Bson::Boolean(b) => Value::from(*b),
        Bson::String(s) => Value::from(s.as_str()),
        Bson::Null => Value::Null,
        Bson::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Bson::Document(doc) => {
            Value::Object(doc.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
        other => panic!("workload produced unexpected BSON {other:?}"),
    }
}
