//! The driver-matrix workload with the official Rust driver (`mongodb`).
//!
//! Unlike the other clients in tests/clients this is not a program of its
//! own: tests/drivers.rs includes it as a module and calls it in-process,
//! so the root workspace's `mongodb` dev-dependency is compiled once for all
//! tests instead of a second time for a separate Cargo project. It returns
//! the same JSON the other clients print: `workload` gives
//! `{driver, results, commands}`, `compress` `{compressor, ping, inserted, found}`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use serde_json::{json, Value};

/// Enough that batchSize 4 needs several getMores.
const DOCS: i32 = 30;
/// The _id of the unacknowledged insert.
const W0_ID: i32 = 1000;

/// Started commands by name, and the cursors killCursors replies named.
#[derive(Default)]
struct Commands {
    started: BTreeMap<String, u64>,
    killed: usize,
}

type Monitor = Arc<Mutex<Commands>>;

fn count(mon: &Monitor, name: &str) -> u64 {
    mon.lock()
        .expect("monitor lock")
        .started
        .get(name)
        .copied()
        .unwrap_or(0)
}

async fn connect(uri: &str, app: &str, monitor: Option<Monitor>) -> Result<Client, String> {
    let mut opts = ClientOptions::parse(uri).await.map_err(|e| e.to_string())?;
    opts.app_name = Some(app.to_owned());
    opts.server_selection_timeout = Some(Duration::from_secs(10));
    if let Some(mon) = monitor {
        opts.command_event_handler = Some(EventHandler::callback(move |ev| {
            let mut m = mon.lock().expect("monitor lock");
            match ev {
                CommandEvent::Started(e) => *m.started.entry(e.command_name).or_default() += 1,
                CommandEvent::Succeeded(e) if e.command_name == "killCursors" => {
                    m.killed += e.reply.get_array("cursorsKilled").map_or(0, |a| a.len());
                }
                _ => {}
            }
        }));
    }
    Client::with_options(opts).map_err(|e| e.to_string())
}

fn server_code(e: &mongodb::error::Error) -> i32 {
    match *e.kind {
        ErrorKind::Write(WriteFailure::WriteError(ref w)) => w.code,
        ErrorKind::Command(ref c) => c.code,
        _ => 0,
    }
}

fn ids(docs: &[Document]) -> Value {
    docs.iter()
        .map(|d| to_json(d.get("_id").unwrap_or(&Bson::Null)))
        .collect()
}

/// Relaxed extended JSON for the few BSON types the workload produces.
fn to_json(value: &Bson) -> Value {
    match value {
        Bson::Int32(n) => json!(n),
        Bson::Int64(n) => json!(n),
        Bson::Double(n) => json!(n),
        Bson::Boolean(b) => json!(b),
        Bson::String(s) => json!(s),
        Bson::Array(items) => items.iter().map(to_json).collect(),
        Bson::Document(d) => {
            Value::Object(d.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
        _ => Value::Null,
    }
}

/// The version of the `mongodb` crate this test links, from Cargo.lock.
fn driver_version() -> String {
    let lock = include_str!("../../../Cargo.lock");
    lock.split("[[package]]")
        .find(|p| p.contains("name = \"mongodb\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default()
}

/// The shared workload; see tests/clients/go/main.go for the steps.
pub async fn workload(uri: &str, db_name: &str, app: &str) -> Result<Value, String> {
    let mon: Monitor = Monitor::default();
    let client = connect(uri, app, Some(Arc::clone(&mon))).await?;
    let db = client.database(db_name);
    let coll: Collection<Document> = db.collection("items");
    let err = |what: &str| {
        let what = what.to_owned();
        move |e: mongodb::error::Error| format!("{what}: {e}")
    };
    let mut res = serde_json::Map::new();

    // The handshake authenticated (SCRAM-SHA-256 when the URI has credentials).
    let status = db
        .run_command(doc! { "connectionStatus": 1 })
        .await
        .map_err(err("connectionStatus"))?;
    let users: Vec<String> = status
        .get_document("authInfo")
        .and_then(|a| a.get_array("authenticatedUsers"))
        .map(|list| {
            list.iter()
                .filter_map(|u| u.as_document())
                .map(|u| {
                    format!(
                        "{}.{}",
                        u.get_str("db").unwrap_or(""),
                        u.get_str("user").unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    res.insert("users".into(), json!(users));

    // insert_many goes out as one OP_MSG with a kind-1 "documents" sequence.
    let docs: Vec<Document> = (0..DOCS)
        .map(|i| doc! { "_id": i, "n": i, "grp": i % 3, "tags": [format!("t{}", i % 4), "all"] })
        .collect();
    let inserted = coll.insert_many(docs).await.map_err(err("insert_many"))?;
    res.insert("inserted".into(), json!(inserted.inserted_ids.len()));

    let dup = match coll.insert_one(doc! { "_id": 0 }).await {
        Ok(_) => 0,
        Err(e) => server_code(&e),
    };
    res.insert("duplicate_key_code".into(), json!(dup));

    let before = count(&mon, "getMore");
    let found: Vec<Document> = coll
        .find(doc! { "n": { "$gte": 5 } })
        .sort(doc! { "_id": 1 })
        .batch_size(4)
        .await
        .map_err(err("find"))?
        .try_collect()
        .await
        .map_err(err("find cursor"))?;
    res.insert("find_ids".into(), ids(&found));
    res.insert(
        "find_getmores".into(),
        json!(count(&mon, "getMore") - before),
    );

    let before = count(&mon, "getMore");
    let pipeline = vec![
        doc! { "$match": { "n": { "$lt": 20 } } },
        doc! { "$unwind": "$tags" },
        // FerretDB v1.24.2's $unwind keeps only _id and the unwound field, so
        // the group counts documents per tag rather than summing other fields.
        doc! { "$group": { "_id": "$tags", "count": { "$sum": 1 } } },
        doc! { "$sort": { "_id": 1 } },
        doc! { "$project": { "_id": 1, "count": 1 } },
    ];
    let groups: Vec<Document> = coll
        .aggregate(pipeline)
        .batch_size(2)
        .await
        .map_err(err("aggregate"))?
        .try_collect()
        .await
        .map_err(err("aggregate cursor"))?;
    res.insert(
        "aggregate".into(),
        groups
            .iter()
            .map(|d| to_json(&Bson::Document(d.clone())))
            .collect(),
    );
    res.insert(
        "aggregate_getmores".into(),
        json!(count(&mon, "getMore") - before),
    );

    let upd = coll
        .update_many(
            doc! { "grp": 0 },
            doc! { "$inc": { "n": 100 }, "$set": { "flag": true } },
        )
        .await
        .map_err(err("update_many"))?;
    res.insert(
        "update".into(),
        json!({ "matched": upd.matched_count, "modified": upd.modified_count }),
    );
    let deleted = coll
        .delete_many(doc! { "grp": 1 })
        .await
        .map_err(err("delete_many"))?;
    res.insert("deleted".into(), json!(deleted.deleted_count));

    // The Rust driver refuses w:0 on its CRUD API, so the unacknowledged
    // insert goes through runCommand on its own client: the server is told
    // not to acknowledge, but the driver still reads a reply (no moreToCome).
    let unacked = connect(uri, &format!("{app}-w0"), None).await?;
    unacked
        .database(db_name)
        .run_command(doc! {
            "insert": "items",
            "documents": [{ "_id": W0_ID, "n": -1 }],
            "writeConcern": { "w": 0 },
        })
        .await
        .map_err(err("w:0 insert"))?;
    let mut w0 = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        w0 = coll
            .count_documents(doc! { "_id": W0_ID })
            .await
            .map_err(err("count w:0"))?;
        if w0 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unacked.shutdown().await;
    res.insert("w0_count".into(), json!(w0));

    // The Rust driver closes a cursor when it is dropped: killCursors goes out
    // from a background task, so wait until its reply has been monitored.
    let mut cursor = coll
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .batch_size(2)
        .await
        .map_err(err("find to close"))?;
    let mut first = Vec::new();
    for _ in 0..2 {
        let d = cursor.try_next().await.map_err(err("cursor next"))?;
        first.push(d.ok_or("cursor ended early")?);
    }
    drop(cursor);
    let deadline = Instant::now() + Duration::from_secs(5);
    while mon.lock().expect("monitor lock").killed == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    res.insert("closed_cursor_first_batch".into(), ids(&first));
    res.insert("kill_cursors".into(), json!(count(&mon, "killCursors")));
    res.insert(
        "cursors_killed".into(),
        json!(mon.lock().expect("monitor lock").killed),
    );

    let unknown = match db.run_command(doc! { "mongotapNoSuchCommand": 1 }).await {
        Ok(_) => 0,
        Err(e) => server_code(&e),
    };
    res.insert("unknown_command_code".into(), json!(unknown));

    let all: Vec<Document> = coll
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .map_err(err("final find"))?
        .try_collect()
        .await
        .map_err(err("final cursor"))?;
    res.insert("final_ids".into(), ids(&all));
    let final_count = coll
        .count_documents(doc! {})
        .await
        .map_err(err("final count"))?;
    res.insert("final_count".into(), json!(final_count));
    client.shutdown().await;

    let commands = mon.lock().expect("monitor lock").started.clone();
    Ok(json!({
        "driver": { "name": "rust", "version": driver_version() },
        "results": res,
        "commands": commands,
    }))
}

/// Negotiates `compressor` (snappy, zlib or zstd), then ping, insert_many of
/// two documents, find.
pub async fn compress(uri: &str, compressor: &str, app: &str) -> Result<Value, String> {
    let sep = if uri.contains('?') { '&' } else { '?' };
    let client = connect(&format!("{uri}{sep}compressors={compressor}"), app, None).await?;
    let err = |what: &'static str| move |e: mongodb::error::Error| format!("{what}: {e}");
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .map_err(err("ping"))?;
    let coll: Collection<Document> = client.database("matrix").collection("items");
    coll.insert_many([doc! { "_id": 1 }, doc! { "_id": 2 }])
        .await
        .map_err(err("insert"))?;
    let found: Vec<Document> = coll
        .find(doc! {})
        .await
        .map_err(err("find"))?
        .try_collect()
        .await
        .map_err(err("find cursor"))?;
    client.shutdown().await;
    Ok(json!({ "compressor": compressor, "ping": true, "inserted": 2, "found": ids(&found) }))
}
