//! What mongotap survives, measured on the real binary: the malformed-frame
//! corpus in tests/corpus while a real driver keeps working, and a FerretDB
//! that freezes (SIGSTOP) or dies (SIGKILL) under load. (SIGTERM with
//! commands in flight is in tests/shutdown.rs.)
//!
//! Figures are printed with `println!`; see them with
//! `cargo test --test reliability -- --nocapture`.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/scripted.rs"]
mod scripted;
mod support;
#[path = "reliability_support/mod.rs"]
mod util;

use bson::rawdoc;
use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;
use scripted::{RawClient, Scripted};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{signal, unique_db, Ferret, Mongotap};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use util::{alive, eventually, hello, inflight, metric_async, ok_of, request, rss_kb};

const T: Duration = Duration::from_secs(10);

/// One corpus file and what mongotap must say about it.
struct Case {
    file: String,
    /// A lowercase fragment of the `decode_error` reason, or `forwarded`.
    expect: String,
    bytes: Vec<u8>,
}

fn corpus() -> Vec<Case> {
    let dir = support::repo_file("tests/corpus");
    let manifest = std::fs::read_to_string(dir.join("MANIFEST")).expect("tests/corpus/MANIFEST");
    let cases: Vec<Case> = manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split('\t');
            let file = cols.next().expect("file column").to_string();
            let expect = cols.next().expect("expect column").to_string();
            let bytes = std::fs::read(dir.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            Case {
                file,
                expect,
                bytes,
            }
        })
        .collect();
    // Every .bin file is in the manifest (a regenerated corpus stays checked).
    let on_disk = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "bin"))
        })
        .count();
    assert_eq!(
        on_disk,
        cases.len(),
        "tests/corpus/MANIFEST is stale: run tests/corpus/gen.py"
    );
    cases
}

/// A pooled driver client doing insert + find in a loop until `stop`,
/// counting successes in `ok`. Returns how many operations failed.
async fn healthy_driver(uri: String, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>) -> u64 {
    let mut opts = ClientOptions::parse(format!("{uri}&appName=healthy"))
        .await
        .expect("uri");
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    let client = mongodb::Client::with_options(opts).expect("client");
    let coll = client
        .database(&unique_db("healthy"))
        .collection::<Document>("c");
    let mut failed = 0;
    let mut i = 0i64;
    while !stop.load(Relaxed) {
        i += 1;
        let r = async {
            coll.insert_one(doc! { "_id": i }).await?;
            coll.find_one(doc! { "_id": i }).await
        }
        .await;
        match r {
            Ok(Some(_)) => {
                ok.fetch_add(1, Relaxed);
            }
            Ok(None) => failed += 1,
            Err(e) => {
                eprintln!("healthy client failed: {e}");
                failed += 1;
            }
        }
    }
    failed
}

/// Sends `bytes` on a fresh connection (half-closing after, unless
/// `keep_open`). Returns the connection and its local address.
async fn send_raw(addr: SocketAddr, bytes: &[u8], keep_open: bool) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let local = s.local_addr().expect("local").to_string();
    // mongotap may close while a large file is still being written.
    let _ = s.write_all(bytes).await;
    if !keep_open {
        let _ = s.shutdown().await;
    }
    (s, local)
}

/// True once the peer closed (EOF or reset) within `T`.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let wait = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(T, wait).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_closes_only_the_bad_connection_while_a_driver_keeps_working() {
    let cases = corpus();
    let ferret = Ferret::start();
    let tap = Mongotap::start(ferret.addr());
    let pid = tap.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let healthy = tokio::spawn(healthy_driver(tap.uri(), stop.clone(), ok.clone()));
    eventually("the healthy driver to warm up", T, || ok.load(Relaxed) >= 5).await;
    let rss_before = rss_kb(pid);

    let mut decode_errors = 0;
    for case in &cases {
        let forwarded = case.expect == "forwarded";
        let before_ok = ok.load(Relaxed);
        let (mut conn, client) = send_raw(tap.listen, &case.bytes, forwarded).await;
        if forwarded {
            // Unknown opcodes are forwarded and counted, never fatal: the one
            // corpus case that does not get a decode_error from mongotap.
            // The frame may still be on its way through mongotap: poll.
            let deadline = tokio::time::Instant::now() + T;
            let mut unknown = 0.0;
            while tokio::time::Instant::now() < deadline {
                unknown = metric_async(&tap, "mongotap_unknown_opcodes_total").await;
                if unknown >= 1.0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(unknown >= 1.0, "{}: not counted ({unknown})", case.file);
            // FerretDB then hangs up itself ("unexpected opcode"), and
            // mongotap closes the client side after it: no decode_error.
            // (Against an upstream that answers, the connection stays open:
            // see unknown_opcode_is_forwarded_byte_for_byte_and_counted.)
            tokio::time::sleep(Duration::from_millis(300)).await;
            let named = tap
                .events("decode_error")
                .into_iter()
                .any(|e| e["client"] == client.as_str());
            assert!(
                !named,
                "{}: unknown opcode produced a decode_error",
                case.file
            );
            drop(conn);
        } else {
            assert!(
                closed_by_peer(&mut conn).await,
                "{}: mongotap left the connection open",
                case.file
            );
            let wanted = client.clone();
            let event = tap
                .wait_for(T, move |v| {
                    v["event"] == "decode_error" && v["client"] == wanted.as_str()
                })
                .await
                .unwrap_or_else(|| panic!("{}: no decode_error for {client}", case.file));
            decode_errors += 1;
            let reason = event["reason"].as_str().unwrap_or_default().to_lowercase();
            assert!(
                reason.contains(&case.expect),
                "{}: reason {reason:?} does not contain {:?}",
                case.file,
                case.expect
            );
            assert_eq!(event["side"], "client", "{}: {event}", case.file);
        }
        // The healthy driver made progress while the bad connection came and went.
        eventually(
            &format!("the driver to progress after {}", case.file),
            T,
            || ok.load(Relaxed) > before_ok,
        )
        .await;
        assert!(alive(pid), "{}: mongotap died", case.file);
    }

    // Volume: the whole corpus 20 more times, 50 connections at a time.
    let rounds = 20;
    let started = Instant::now();
    let mut sent = 0;
    for _ in 0..rounds {
        let mut tasks = Vec::new();
        for case in cases.iter().filter(|c| c.expect != "forwarded") {
            let bytes = case.bytes.clone();
            let addr = tap.listen;
            tasks.push(tokio::spawn(async move {
                let (mut s, _) = send_raw(addr, &bytes, false).await;
                closed_by_peer(&mut s).await
            }));
        }
        for t in tasks {
            assert!(t.await.expect("task"), "a corpus connection stayed open");
            sent += 1;
        }
    }
    decode_errors += sent;
    let elapsed = started.elapsed();
    eventually("every decode_error to be logged", T, || {
        tap.events("decode_error").len() >= decode_errors
    })
    .await;
    let rss_after = rss_kb(pid);

    stop.store(true, Relaxed);
    let failed = healthy.await.expect("healthy task");
    let ops = ok.load(Relaxed);
    println!(
        "corpus: {} files ({} decode errors + 1 forwarded), then {sent} more malformed connections in {:.1} s; \
         healthy driver: {ops} insert+find ok, {failed} failed; mongotap RSS {rss_before} KiB -> {rss_after} KiB",
        cases.len(),
        cases.len() - 1,
        elapsed.as_secs_f64()
    );
    assert_eq!(failed, 0, "the healthy driver saw failures");
    assert!(alive(pid), "mongotap died");
    let (status, body) = util::admin_get(&tap, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    assert_eq!(tap.events("decode_error").len(), decode_errors);
    let counted = metric_async(&tap, "mongotap_decode_errors_total").await;
    assert_eq!(counted as usize, decode_errors);
    // Generous: nothing a malformed frame claims is allocated up front, so
    // hundreds of bad connections cost a few MiB at most.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        tap.logs()
            .iter()
            .all(|l| !l.to_string().contains("panicked")),
        "a task panicked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_opcode_is_forwarded_byte_for_byte_and_counted() {
    let case = corpus()
        .into_iter()
        .find(|c| c.expect == "forwarded")
        .expect("the corpus has an unknown-opcode case");
    let upstream = Scripted::ok().await;
    let tap = tokio::task::spawn_blocking({
        let addr = upstream.addr;
        move || Mongotap::start(addr)
    })
    .await
    .expect("start");
    let mut c = RawClient::connect(tap.listen).await;
    c.send(&case.bytes).await;
    let got = upstream
        .wait_for(|r| r.header.op_code.as_i32() == 2099, T)
        .await;
    assert_eq!(got.raw, case.bytes, "forwarded byte for byte");
    // The scripted upstream answers anything; the connection stays open and
    // keeps working.
    assert!(c.recv(T).await.is_some(), "no reply to the unknown opcode");
    assert_eq!(ok_of(&c.command(&hello("after-unknown")).await), 1.0);
    assert_eq!(
        metric_async(&tap, "mongotap_unknown_opcodes_total").await,
        1.0
    );
    assert!(tap.events("decode_error").is_empty());
}

/// A raw client: handshake, then `find` after `find` until a reply does not
/// come. Returns its address and (replies, commands left unanswered).
async fn find_loop(
    addr: SocketAddr,
    db: String,
    app: String,
    stop: Arc<AtomicBool>,
) -> (String, u64, u64) {
    let mut c = RawClient::connect(addr).await;
    let local = c.stream.local_addr().expect("local").to_string();
    assert_eq!(ok_of(&c.command(&hello(&app)).await), 1.0);
    let mut replies = 0;
    while !stop.load(Relaxed) {
        let find = rawdoc! { "find": "c", "filter": { "i": { "$gte": 0 } }, "limit": 5, "singleBatch": true, "$db": db.as_str() };
        let (_, frame) = request(&find);
        c.send(&frame).await;
        match c.recv(Duration::from_secs(120)).await {
            Some(reply) => {
                assert_eq!(ok_of(&util::reply_body(&reply)), 1.0);
                replies += 1;
            }
            None => return (local, replies, 1),
        }
    }
    (local, replies, 0)
}

async fn seed(uri: &str, db: &str) {
    let client = mongodb::Client::with_uri_str(uri).await.expect("client");
    let docs: Vec<Document> = (0..100).map(|i| doc! { "i": i }).collect();
    client
        .database(db)
        .collection::<Document>("c")
        .insert_many(docs)
        .await
        .expect("seed");
}

/// Waits until /inflight lists every one of `clients` as stalled.
async fn wait_all_stalled(tap: &Mongotap, clients: &HashSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = inflight(tap).await;
        let stalled: HashSet<String> = rows
            .iter()
            .filter(|r| r["stalled"] == true)
            .filter_map(|r| r["client"].as_str().map(str::to_string))
            .collect();
        let events: HashSet<String> = tap
            .events("stalled")
            .iter()
            .filter_map(|e| e["client"].as_str().map(str::to_string))
            .collect();
        if clients.is_subset(&stalled) && clients.is_subset(&events) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every client stalled: /inflight {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const CLIENTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_every_lost_command_is_reported_then_restart_recovers() {
    let mut ferret = Ferret::start();
    let tap = Mongotap::start_with(ferret.addr(), &["--stall-ms", "300"]);
    let db = unique_db("sigkill");
    seed(&tap.uri(), &db).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(find_loop(
                tap.listen,
                db.clone(),
                format!("load-{i}"),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut clients = HashSet::new();
    // Addresses are known once each task has connected; /inflight gives them.
    signal(ferret.pid(), "STOP");
    let deadline = Instant::now() + T;
    while clients.len() < CLIENTS {
        clients = inflight(&tap)
            .await
            .iter()
            .filter(|r| r["app"].as_str().is_some_and(|a| a.starts_with("load-")))
            .filter_map(|r| r["client"].as_str().map(str::to_string))
            .collect();
        assert!(Instant::now() < deadline, "only {} pending", clients.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_all_stalled(&tap, &clients).await;
    signal(ferret.pid(), "KILL");

    let mut replied = 0;
    let mut failed = 0;
    for t in tasks {
        let (client, r, f) = tokio::time::timeout(T, t)
            .await
            .expect("client finished after SIGKILL")
            .expect("client task");
        assert!(clients.contains(&client));
        replied += r;
        failed += f;
    }
    let wanted = clients.clone();
    eventually("every never_replied event", T, || {
        tap.events("never_replied")
            .iter()
            .filter(|e| e["client"].as_str().is_some_and(|c| wanted.contains(c)))
            .count() as u64
            >= failed
    })
    .await;
    let reported = tap
        .events("never_replied")
        .iter()
        .filter(|e| e["client"].as_str().is_some_and(|c| clients.contains(c)))
        .count() as u64;
    println!(
        "sigkill: {CLIENTS} raw clients, {replied} finds answered before SIGSTOP, \
         {failed} failed at SIGKILL, {reported} never_replied events for them"
    );
    assert_eq!(
        failed, CLIENTS as u64,
        "each client had one command in flight"
    );
    assert_eq!(
        reported, failed,
        "never_replied must equal what the clients lost"
    );
    assert!(metric_async(&tap, "mongotap_never_replied_total").await >= failed as f64);

    // Same port and data: new client connections go to the new server,
    // with no restart of mongotap.
    let pid = tap.pid();
    let ferret = tokio::task::spawn_blocking(move || {
        ferret.restart();
        ferret
    })
    .await
    .expect("restart FerretDB");
    let mut opts = ClientOptions::parse(tap.uri()).await.expect("uri");
    opts.server_selection_timeout = Some(Duration::from_secs(10));
    let client = mongodb::Client::with_options(opts).expect("client");
    let n = client
        .database(&db)
        .collection::<Document>("c")
        .count_documents(doc! {})
        .await
        .expect("count after restart");
    assert_eq!(
        n, 100,
        "data and service are back through the same mongotap"
    );
    let mut raw = RawClient::connect(tap.listen).await;
    assert_eq!(ok_of(&raw.command(&hello("after-restart")).await), 1.0);
    assert!(alive(pid));
    drop(ferret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_reports_stalls_and_sigcont_lets_them_complete() {
    let ferret = Ferret::start();
    let tap = Mongotap::start_with(ferret.addr(), &["--stall-ms", "300"]);
    let db = unique_db("sigcont");
    seed(&tap.uri(), &db).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(find_loop(
                tap.listen,
                db.clone(),
                format!("cont-{i}"),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(ferret.pid(), "STOP");
    let mut clients = HashSet::new();
    let deadline = Instant::now() + T;
    while clients.len() < CLIENTS {
        clients = inflight(&tap)
            .await
            .iter()
            .filter(|r| r["app"].as_str().is_some_and(|a| a.starts_with("cont-")))
            .filter_map(|r| r["client"].as_str().map(str::to_string))
            .collect();
        assert!(Instant::now() < deadline, "only {} pending", clients.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_all_stalled(&tap, &clients).await;
    let stalled_events = tap.events("stalled").len();
    let resumed = Instant::now();
    signal(ferret.pid(), "CONT");

    // Each stalled command completes and is reported as slow, was_stalled.
    let wanted = clients.clone();
    eventually("every stalled command to complete", T, || {
        tap.events("slow")
            .iter()
            .filter(|e| e["was_stalled"] == true)
            .filter(|e| e["client"].as_str().is_some_and(|c| wanted.contains(c)))
            .count()
            >= CLIENTS
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Relaxed);
    let mut failed = 0;
    for t in tasks {
        let (_, _, f) = tokio::time::timeout(T, t)
            .await
            .expect("done")
            .expect("task");
        failed += f;
    }
    println!(
        "sigstop/sigcont: {CLIENTS} clients stalled ({stalled_events} stalled events), \
         all completed within {:?} of SIGCONT, {failed} failed",
        resumed.elapsed()
    );
    assert_eq!(failed, 0);
    assert!(tap.events("never_replied").is_empty());
}
