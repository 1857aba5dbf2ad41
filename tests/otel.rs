//! `[otel]` against a real Jaeger: real drivers' commands through mongotap
//! to FerretDB come back from Jaeger's query API as spans whose attributes
//! match what the test sent and what the drivers saw; a traceparent comment
//! joins the app's trace; a stalled then killed command is an error; a dead
//! or hanging collector never slows forwarding; no literal value is sent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/jaeger.rs"]
mod jaeger;
#[path = "support/prom.rs"]
mod prom;
mod support;

use jaeger::{named, tag, Jaeger};
use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;
use mongodb::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{python, signal, unique_db, Ferret, Mongotap};

/// A literal only the test's documents and filters hold.
const SECRET: &str = "s3cret-literal-7f1c";
const SECRET_NUMBER: i64 = 918_273_645;

fn otel_config(upstream: &str, endpoint: &str, service: &str, extra: &str) -> String {
    format!(
        r#"[proxy]
listen = "127.0.0.1:0"
upstream = "{upstream}"
[otel]
endpoint = "{endpoint}"
service_name = "{service}"
{extra}
"#
    )
}

async fn client(uri: &str, app: &str) -> Client {
    let mut opts = ClientOptions::parse(format!("{uri}&appName={app}"))
        .await
        .expect("uri");
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(opts).expect("client")
}

fn micros_since_epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

/// The span lies within the client's own window for the call: mongotap
/// sees the request after the client sent it and the reply before the
/// client has it. 1 ms of slack for the clocks' rounding.
fn assert_within(span: &Value, before: SystemTime, after: SystemTime) {
    let start = span["startTime"].as_i64().unwrap();
    let end = start + span["duration"].as_i64().unwrap();
    let (lo, hi) = (
        micros_since_epoch(before) - 1_000,
        micros_since_epoch(after) + 1_000,
    );
    assert!(
        lo <= start && start <= end && end <= hi,
        "span [{start}, {end}] µs outside the client's [{lo}, {hi}]: {span}"
    );
}

fn str_tag<'a>(span: &'a Value, key: &str) -> &'a str {
    tag(span, key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string tag {key} on {span}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_commands_arrive_in_jaeger_with_their_attributes_and_no_values() {
    let ferret = Ferret::start();
    let jaeger = Jaeger::start();
    let service = "mongotap-attrs";
    let upstream = ferret.addr().to_string();
    let tap = Mongotap::spawn_config(
        &otel_config(&upstream, &jaeger.endpoint(), service, ""),
        &[],
    );
    let db_name = unique_db("otel_attrs");
    let c = client(&tap.uri(), "otel-rust").await;
    let coll = c.database(&db_name).collection::<Document>("orders");

    let docs: Vec<Document> = (0..7)
        .map(|i| doc! {"i": i, "g": i % 2, "secret": SECRET, "n": SECRET_NUMBER})
        .collect();
    let t0 = SystemTime::now();
    coll.insert_many(docs).await.expect("insert");
    let t1 = SystemTime::now();
    // batch size 2: the find's first batch, then getMores.
    let mut cursor = coll
        .find(doc! {"secret": SECRET, "n": SECRET_NUMBER})
        .batch_size(2)
        .await
        .expect("find");
    let t2 = SystemTime::now();
    let mut found = 0;
    while cursor.advance().await.expect("getMore") {
        found += 1;
    }
    assert_eq!(found, 7);
    let t3 = SystemTime::now();
    let pipeline = vec![
        doc! {"$match": {"secret": SECRET}},
        doc! {"$group": {"_id": "$g", "n": {"$sum": 1}}},
    ];
    let t4 = SystemTime::now();
    let groups: Vec<Document> = {
        use futures_util::TryStreamExt;
        coll.aggregate(pipeline)
            .await
            .expect("aggregate")
            .try_collect()
            .await
            .expect("agg")
    };
    let t5 = SystemTime::now();
    assert_eq!(groups.len(), 2);

    let spans = jaeger
        .wait_spans(service, "insert, find, getMore and aggregate spans", |s| {
            [
                "insert orders",
                "find orders",
                "getMore orders",
                "aggregate orders",
            ]
            .iter()
            .all(|n| named(s, n).is_some())
        })
        .await;
    for (name, op) in [
        ("insert orders", "insert"),
        ("find orders", "find"),
        ("getMore orders", "getMore"),
        ("aggregate orders", "aggregate"),
    ] {
        let s = named(&spans, name).unwrap();
        assert_eq!(str_tag(s, "db.system.name"), "mongodb", "{name}");
        assert_eq!(str_tag(s, "db.namespace"), db_name, "{name}");
        assert_eq!(str_tag(s, "db.collection.name"), "orders", "{name}");
        assert_eq!(str_tag(s, "db.operation.name"), op, "{name}");
        assert_eq!(str_tag(s, "db.query.summary"), name, "{name}");
        assert_eq!(str_tag(s, "server.address"), "127.0.0.1", "{name}");
        assert_eq!(
            tag(s, "server.port").and_then(Value::as_i64),
            Some(i64::from(ferret.addr().port())),
            "{name}: the real upstream's port, not mongotap's"
        );
        assert_eq!(str_tag(s, "mongotap.app"), "otel-rust", "{name}");
        assert_eq!(str_tag(s, "span.kind"), "client", "{name}");
        assert_eq!(tag(s, "mongotap.stalled"), Some(&json!(false)), "{name}");
        assert_eq!(tag(s, "mongotap.rewritten"), Some(&json!(false)), "{name}");
        assert!(tag(s, "error").is_none(), "{name} succeeded: {s}");
        assert!(
            tag(s, "db.query.text").is_none(),
            "{name}: log_values is off"
        );
        assert!(
            s["references"].as_array().is_none_or(Vec::is_empty),
            "{name} is a root"
        );
    }
    assert_within(named(&spans, "insert orders").unwrap(), t0, t1);
    assert_within(named(&spans, "find orders").unwrap(), t1, t2);
    assert_within(named(&spans, "aggregate orders").unwrap(), t4, t5);
    let get_mores: Vec<&Value> = spans
        .iter()
        .filter(|s| s["operationName"] == "getMore orders")
        .collect();
    // 7 documents in batches of 2: the find's 2, then 2, 2, 1 (the last
    // batch closes the cursor).
    assert_eq!(get_mores.len(), 3, "getMores");
    for g in &get_mores {
        assert_within(g, t2, t3);
    }
    // The client saw its own client address; mongotap names it.
    let client_addr = str_tag(get_mores[0], "mongotap.client");
    assert!(client_addr.starts_with("127.0.0.1:"), "{client_addr}");
    let agg = named(&spans, "aggregate orders").unwrap();
    let stages = tag(agg, "mongotap.stages").unwrap();
    let stages: Vec<String> = match stages {
        Value::String(s) => serde_json::from_str(s).unwrap(),
        other => serde_json::from_value(other.clone()).unwrap(),
    };
    assert_eq!(stages, ["$match", "$group"]);

    // Privacy: the literals this test sent are nowhere in what Jaeger holds.
    let raw = jaeger.traces_raw(service);
    assert!(raw.contains("orders"), "the check reads real spans");
    assert!(!raw.contains(SECRET), "a literal string was exported");
    assert!(
        !raw.contains(&SECRET_NUMBER.to_string()),
        "a literal number was exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_comment_makes_the_span_a_child_in_the_apps_trace() {
    let ferret = Ferret::start();
    let jaeger = Jaeger::start();
    let service = "mongotap-tp";
    let upstream = ferret.addr().to_string();
    // At ratio 0 only the app's sampled flag keeps these spans. With
    // log_values on, the span carries the command's text.
    let extra = "sample_ratio = 0.0\n[watch]\nlog_values = true";
    let tap = Mongotap::spawn_config(
        &otel_config(&upstream, &jaeger.endpoint(), service, extra),
        &[],
    );
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace_a = format!("{:032x}", nanos ^ 0x5eed_0000_0000_0000_0000_0000_0000_0001);
    let trace_b = format!("{:032x}", nanos ^ 0x0bad_0000_0000_0000_0000_0000_0000_0002);
    let (parent_a, parent_b) = ("00f067aa0ba902b7", "b7ad6b7169203331");
    let db_name = unique_db("otel_tp");
    let out = python(
        "otel_traceparent.py",
        &[
            &tap.uri(),
            &db_name,
            "items",
            &format!("00-{trace_a}-{parent_a}-01"),
            &format!("00-{trace_b}-{parent_b}-01"),
        ],
    )
    .await;
    assert_eq!(out["found"], 10);
    let driver_cursor = out["cursor_id"].as_i64().expect("cursor id");
    assert_ne!(driver_cursor, 0);

    let spans = jaeger
        .wait_spans(service, "both aggregates", |s| {
            named(s, "aggregate items").is_some() && named(s, "aggregate items_other").is_some()
        })
        .await;
    let child_of = |span: &Value, trace: &str, parent: &str| {
        assert_eq!(span["traceID"], trace, "{span}");
        let refs = span["references"].as_array().cloned().unwrap_or_default();
        assert!(
            refs.iter().any(|r| r["refType"] == "CHILD_OF"
                && r["spanID"] == parent
                && r["traceID"] == trace),
            "not a child of {parent}: {span}"
        );
    };
    let first = named(&spans, "aggregate items").unwrap();
    child_of(first, &trace_a, parent_a);
    let text = str_tag(first, "db.query.text");
    for sent in ["\"aggregate\":\"items\"", "\"$group\"", &trace_a] {
        assert!(text.contains(sent), "db.query.text lacks {sent}: {text}");
    }
    assert!(
        !text.contains("lsid"),
        "session fields are left out: {text}"
    );
    let second = named(&spans, "aggregate items_other").unwrap();
    child_of(second, &trace_b, parent_b);
    // The cursor id the driver received, as the span names it.
    assert_eq!(
        tag(second, "db.mongodb.cursor_id").and_then(Value::as_i64),
        Some(driver_cursor)
    );
    // Commands without a traceparent (the insert) fall to ratio 0.0.
    assert!(
        named(&spans, "insert items").is_none(),
        "ratio 0 kept an unsampled span"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_then_killed_command_shows_while_stuck_then_ends_in_error() {
    let mut ferret = Ferret::start();
    let jaeger = Jaeger::start();
    let service = "mongotap-stall";
    let upstream = ferret.addr().to_string();
    let stall_ms = 300u64;
    let tap = Mongotap::spawn_config(
        &otel_config(&upstream, &jaeger.endpoint(), service, ""),
        &["--stall-ms", &stall_ms.to_string()],
    );
    let c = client(&tap.uri(), "otel-stall").await;
    let coll = c
        .database(&unique_db("otel_stall"))
        .collection::<Document>("jobs");
    coll.insert_one(doc! {"i": 1}).await.expect("insert");

    signal(ferret.pid(), "STOP");
    let sent = Instant::now();
    let agg = tokio::spawn(async move {
        coll.aggregate(vec![doc! {"$match": {"i": 1}}])
            .await
            .map(|_| ())
    });
    // Visible before it ends: the "stalled" span arrives while FerretDB
    // is still frozen.
    let spans = jaeger
        .wait_spans(service, "a stalled span", |s| {
            named(s, "stalled aggregate jobs").is_some()
        })
        .await;
    assert!(!agg.is_finished(), "the aggregate is still stuck");
    let stalled = named(&spans, "stalled aggregate jobs").unwrap();
    assert!(stalled["duration"].as_i64().unwrap() >= (stall_ms * 1000) as i64);
    assert!(sent.elapsed() >= Duration::from_millis(stall_ms));

    ferret.kill();
    let _ = tokio::time::timeout(Duration::from_secs(30), agg).await;
    let spans = jaeger
        .wait_spans(service, "the aggregate's span", |s| {
            named(s, "aggregate jobs").is_some()
        })
        .await;
    let span = named(&spans, "aggregate jobs").unwrap();
    assert_eq!(tag(span, "error"), Some(&json!(true)), "{span}");
    assert_eq!(str_tag(span, "error.type"), "never_replied");
    assert_eq!(tag(span, "mongotap.stalled"), Some(&json!(true)));
    assert!(span["duration"].as_i64().unwrap() >= (stall_ms * 1000) as i64);
    let logs = span["logs"].as_array().cloned().unwrap_or_default();
    assert!(
        logs.iter().any(|l| l["fields"]
            .as_array()
            .is_some_and(|f| f.iter().any(|kv| kv["value"] == "stalled"))),
        "a `stalled` event on the span: {span}"
    );
    // The stalled span is the command span's child, in its trace.
    assert_eq!(stalled["traceID"], span["traceID"]);
    assert!(stalled["references"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["spanID"] == span["spanID"]));
}

/// Round-trip times of `n` pings through `tap`, sorted, in µs.
async fn ping_rtts(c: &Client, n: usize) -> Vec<u128> {
    let db = c.database("admin");
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        db.run_command(doc! {"ping": 1}).await.expect("ping");
        rtts.push(t.elapsed().as_micros());
    }
    rtts
}

fn metric(tap: &Mongotap, name: &str) -> f64 {
    let (_, text) = tap.admin_get("/metrics");
    prom::parse(&text)
        .into_iter()
        .find(|s| s.name == name)
        .map_or(0.0, |s| s.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_hanging_collector_never_slows_forwarding_and_counts_drops() {
    let ferret = Ferret::start();
    let upstream = ferret.addr().to_string();
    // Nothing listens on `dead`; `hanging` accepts and never answers.
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_url = format!("http://{}", hanging.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hanging.incoming() {
            held.push(s);
        }
    });
    let off = Mongotap::start(ferret.addr());
    let on_dead = Mongotap::spawn_config(&otel_config(&upstream, &dead, "dead", ""), &[]);
    let queue = "max_queue_size = 64\nmax_export_batch_size = 16";
    let on_hanging =
        Mongotap::spawn_config(&otel_config(&upstream, &hanging_url, "hanging", queue), &[]);
    let clients = [
        client(&off.uri(), "off").await,
        client(&on_dead.uri(), "dead").await,
        client(&on_hanging.uri(), "hanging").await,
    ];
    for c in &clients {
        ping_rtts(c, 20).await; // connect and warm up
    }
    // Interleaved rounds, so a busy moment of the machine hits all three.
    let (rounds, per_round) = (4, 100);
    let mut rtts: [Vec<u128>; 3] = Default::default();
    for _ in 0..rounds {
        for (i, c) in clients.iter().enumerate() {
            rtts[i].extend(ping_rtts(c, per_round).await);
        }
    }
    let median = |v: &mut Vec<u128>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let [mut off_rtt, mut dead_rtt, mut hang_rtt] = rtts;
    let (off_m, dead_m, hang_m) = (
        median(&mut off_rtt),
        median(&mut dead_rtt),
        median(&mut hang_rtt),
    );
    println!("median ping µs: off {off_m}, dead collector {dead_m}, hanging collector {hang_m}");
    // A generous margin: only waiting on export (seconds) could break it.
    for (what, m) in [("dead", dead_m), ("hanging", hang_m)] {
        assert!(
            m <= off_m * 3 + 2_000,
            "a {what} collector slowed forwarding: median {m} µs vs {off_m} µs without otel"
        );
    }
    let sent = (20 + rounds * per_round) as f64;
    // Dead: every export fails at once, so every ping's span ends up
    // dropped (the batch goes out within a second).
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&on_dead, "mongotap_otel_dropped_total") < sent {
        assert!(
            Instant::now() < deadline,
            "dead collector: {} dropped of {sent} pings",
            metric(&on_dead, "mongotap_otel_dropped_total")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&on_dead, "mongotap_otel_exported_total"), 0.0);
    let warned = on_dead
        .logs()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("otel: export failed"))
        })
        .count();
    assert_eq!(warned, 1, "export errors are logged once a minute at most");
    // Hanging: the exporter holds one batch (16) and the queue 64; the
    // rest of the pings' spans were dropped without anyone waiting.
    let dropped = metric(&on_hanging, "mongotap_otel_dropped_total");
    assert!(
        dropped >= sent - 80.0,
        "hanging collector: {dropped} dropped of {sent}"
    );
    assert_eq!(
        metric(&off, "mongotap_otel_dropped_total"),
        0.0,
        "off: no series"
    );
}

/// The proposed OP_MSG section kind 3 (`{otel: {traceparent}}`): mongotap
/// reads it rather than closing the connection, forwards the frame as
/// sent (the server decides), and the span joins that trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_3_trace_context_section_joins_the_trace_and_is_not_rejected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ferret = Ferret::start();
    let jaeger = Jaeger::start();
    let service = "mongotap-kind3";
    let upstream = ferret.addr().to_string();
    let tap = Mongotap::spawn_config(
        &otel_config(&upstream, &jaeger.endpoint(), service, ""),
        &[],
    );
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace = format!("{:032x}", nanos ^ 0x3333_0000_0000_0000_0000_0000_0000_0003);
    let parent = "0123456789abcdef";
    let body = mongodb::bson::rawdoc! {"ping": 1, "$db": "admin"};
    let ctx = mongodb::bson::rawdoc! {"otel": {"traceparent": format!("00-{trace}-{parent}-01")}};
    let mut frame = vec![0u8; 16];
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.push(0);
    frame.extend_from_slice(body.as_bytes());
    frame.push(3);
    frame.extend_from_slice(ctx.as_bytes());
    let len = frame.len() as i32;
    frame[0..4].copy_from_slice(&len.to_le_bytes());
    frame[4..8].copy_from_slice(&77i32.to_le_bytes());
    frame[12..16].copy_from_slice(&2013i32.to_le_bytes());
    let mut s = tokio::net::TcpStream::connect(tap.listen).await.unwrap();
    s.write_all(&frame).await.unwrap();
    // A reply or the server closing: either way the server decided.
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    drop(s);
    let spans = jaeger
        .wait_spans(service, "the ping's span", |s| named(s, "ping").is_some())
        .await;
    let ping = named(&spans, "ping").unwrap();
    assert_eq!(ping["traceID"], trace.as_str(), "{ping}");
    let refs = ping["references"].as_array().cloned().unwrap_or_default();
    assert!(refs.iter().any(|r| r["spanID"] == parent), "{ping}");
    assert!(
        tap.events("decode_error").is_empty()
            && metric(&tap, "mongotap_decode_errors_total") == 0.0,
        "mongotap rejected the frame: {:?}",
        tap.logs()
    );
}

/// SIGTERM flushes what is queued: a command answered just before it is in
/// Jaeger, though the exporter's one-second batch was not due yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_the_last_spans() {
    let ferret = Ferret::start();
    let jaeger = Jaeger::start();
    let service = "mongotap-shutdown";
    let upstream = ferret.addr().to_string();
    let mut tap = Mongotap::spawn_config(
        &otel_config(&upstream, &jaeger.endpoint(), service, ""),
        &[],
    );
    let c = client(&tap.uri(), "otel-shutdown").await;
    let coll = c
        .database(&unique_db("otel_shutdown"))
        .collection::<Document>("last");
    coll.insert_one(doc! {"i": 1}).await.expect("insert");
    drop(c);
    let status = tokio::task::block_in_place(|| tap.terminate(Duration::from_secs(20)));
    assert!(status.success(), "{status}");
    jaeger
        .wait_spans(service, "the last insert", |s| {
            named(s, "insert last").is_some()
        })
        .await;
}
