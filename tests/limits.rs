//! The limits that keep one client from hurting the others, on the real
//! binary: `proxy.max_connections`, `proxy.max_inflight_per_connection`,
//! `proxy.max_frame_bytes`, `proxy.idle_timeout_ms` (which never closes a
//! pending awaitable hello) and `proxy.frame_timeout_ms` against slowloris.
//!
//! Figures are printed; see them with `cargo test --test limits -- --nocapture`.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/scripted.rs"]
mod scripted;
mod support;
#[path = "reliability_support/mod.rs"]
mod util;

use bson::{oid::ObjectId, rawdoc, RawDocumentBuf};
use bytes::BytesMut;
use mongotap_proto::{op_msg, MAX_MESSAGE_LEN};
use scripted::{RawClient, Received, Scripted, Step};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use util::{
    alive, hello, metric_async, ok_of, request, response_to, rss_kb, start_with_config, threads,
};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_refused_logged_and_counted() {
    let upstream = Scripted::ok().await;
    let (tap, _dir) = start_with_config(upstream.addr, "[proxy]\nmax_connections = 3\n").await;
    let mut admitted = Vec::new();
    for i in 0..3 {
        let mut c = RawClient::connect(tap.listen).await;
        assert_eq!(
            ok_of(&c.command(&hello(&format!("admitted-{i}"))).await),
            1.0
        );
        admitted.push(c);
    }
    for _ in 0..2 {
        let mut c = RawClient::connect(tap.listen).await;
        assert!(c.is_closed(T).await, "a 4th connection was kept");
    }
    util::eventually("two connection_refused events", T, || {
        tap.events("connection_refused").len() == 2
    })
    .await;
    let event = &tap.events("connection_refused")[0];
    assert_eq!(event["max_connections"], 3, "{event}");
    assert!(event["message"]
        .as_str()
        .is_some_and(|m| m.contains("proxy.max_connections")));
    assert_eq!(
        metric_async(&tap, "mongotap_connections_refused_total").await,
        2.0
    );
    // The admitted connections are untouched; a freed slot is reusable.
    for c in admitted.iter_mut() {
        assert_eq!(ok_of(&c.command(&hello("again")).await), 1.0);
    }
    drop(admitted.pop());
    let deadline = Instant::now() + T;
    while metric_async(&tap, "mongotap_connections_active").await > 2.0 {
        assert!(Instant::now() < deadline, "closed connection still active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = RawClient::connect(tap.listen).await;
    assert_eq!(ok_of(&c.command(&hello("freed-slot")).await), 1.0);
}

/// An upstream that reads every request as it arrives and answers each one
/// `delay` after it came, in order; it records the most requests it ever
/// had unanswered on one connection.
struct CountingUpstream {
    addr: SocketAddr,
    max_outstanding: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn counting_upstream(delay: Duration) -> CountingUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let max_outstanding = Arc::new(AtomicUsize::new(0));
    let max = max_outstanding.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_counting(stream, delay, max.clone()));
        }
    });
    CountingUpstream {
        addr,
        max_outstanding,
        _task: task,
    }
}

async fn serve_counting(stream: TcpStream, delay: Duration, max: Arc<AtomicUsize>) {
    let (mut rd, mut wr) = stream.into_split();
    let outstanding = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let out = outstanding.clone();
    let writer = tokio::spawn(async move {
        while let Some((at, reply)) = rx.recv().await {
            tokio::time::sleep_until((at + delay).into()).await;
            if wr.write_all(&reply).await.is_err() {
                return;
            }
            out.fetch_sub(1, Relaxed);
        }
    });
    let mut buf = BytesMut::new();
    loop {
        match mongotap_proto::decode(&mut buf, MAX_MESSAGE_LEN) {
            Ok(Some(frame)) => {
                let msg = op_msg::parse(&frame.bytes).expect("OP_MSG");
                let name = msg.body.iter().next().and_then(|e| e.ok()).map(|e| e.0);
                let body = if name.is_some_and(|n| n.as_str() == "hello") {
                    scripted::hello_reply_doc()
                } else {
                    rawdoc! { "ok": 1.0 }
                };
                let reply =
                    op_msg::encode(scripted::next_id(), frame.header.request_id, 0, &body, &[]);
                let now = outstanding.fetch_add(1, Relaxed) + 1;
                max.fetch_max(now, Relaxed);
                let _ = tx.send((Instant::now(), reply));
                continue;
            }
            Ok(None) => {}
            Err(_) => break,
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_client_never_has_more_than_max_inflight_at_the_server() {
    let max = 4;
    let upstream = counting_upstream(Duration::from_millis(50)).await;
    let config = format!("[proxy]\nmax_inflight_per_connection = {max}\n");
    let (tap, _dir) = start_with_config(upstream.addr, &config).await;
    let mut c = RawClient::connect(tap.listen).await;
    assert_eq!(ok_of(&c.command(&hello("pipeliner")).await), 1.0);

    // 50 commands in one write: one read on mongotap's side sees them all.
    let n = 50;
    let mut ids = HashSet::new();
    let mut burst = Vec::new();
    for i in 0..n {
        let (id, frame) = request(&rawdoc! { "ping": i, "$db": "admin" });
        ids.insert(id);
        burst.extend_from_slice(&frame);
    }
    let started = Instant::now();
    c.send(&burst).await;
    let mut answered = HashSet::new();
    for _ in 0..n {
        let reply = c
            .recv(T)
            .await
            .expect("every pipelined command gets its reply");
        answered.insert(response_to(&reply));
    }
    let took = started.elapsed();
    let seen = upstream.max_outstanding.load(Relaxed);
    println!(
        "max_inflight_per_connection = {max}: {n} pipelined commands, at most {seen} pending at the server, all answered in {took:?}"
    );
    assert_eq!(answered, ids, "replies match the requests");
    assert!(
        seen <= max,
        "the server saw {seen} pending, more than {max}"
    );
    assert_eq!(
        seen, max,
        "the cap was never reached: the test did not pipeline"
    );
}

/// A ping of about `bytes` bytes.
fn sized_ping(bytes: usize) -> RawDocumentBuf {
    rawdoc! { "ping": 1, "pad": "x".repeat(bytes), "$db": "db" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_frame_bytes_from_config_applies_to_both_sides() {
    let upstream = Scripted::start(|req: &Received| {
        if req.name() == "huge" {
            return vec![Step::Send(scripted::reply(
                req,
                &rawdoc! { "ok": 1.0, "pad": "x".repeat(8_000) },
            ))];
        }
        scripted::default_reply(req)
    })
    .await;
    let (tap, _dir) = start_with_config(upstream.addr, "[proxy]\nmax_frame_bytes = 4096\n").await;

    // Under the limit: forwarded.
    let mut small = RawClient::connect(tap.listen).await;
    assert_eq!(ok_of(&small.command(&sized_ping(3_000)).await), 1.0);

    // Over it from the client: that connection closes with a decode_error.
    let mut big = RawClient::connect(tap.listen).await;
    let client = big.stream.local_addr().expect("addr").to_string();
    let (_, frame) = request(&sized_ping(8_000));
    big.send(&frame).await;
    assert!(
        big.is_closed(T).await,
        "an 8 KB frame passed a 4096-byte limit"
    );
    let event = tap
        .wait_for(T, move |v| {
            v["event"] == "decode_error" && v["client"] == client.as_str()
        })
        .await
        .expect("decode_error for the large frame");
    let reason = event["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("exceeds the limit of 4096"), "{reason}");
    assert_eq!(event["side"], "client");

    // Over it from the server: named as the upstream's fault.
    let mut c = RawClient::connect(tap.listen).await;
    let (_, frame) = request(&rawdoc! { "huge": 1, "$db": "db" });
    c.send(&frame).await;
    assert!(
        c.is_closed(T).await,
        "an 8 KB reply passed a 4096-byte limit"
    );
    let event = tap
        .wait_for(T, |v| {
            v["event"] == "decode_error" && v["side"] == "upstream"
        })
        .await
        .expect("decode_error for the large reply");
    assert!(event["reason"]
        .as_str()
        .is_some_and(|r| r.contains("exceeds the limit of 4096")));

    // The small connection was never affected.
    assert_eq!(ok_of(&small.command(&sized_ping(100)).await), 1.0);

    // And the config refuses a limit above the server's 48,000,000.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = util::config_file(&dir, "[proxy]\nmax_frame_bytes = 48000001\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mongotap"))
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("check-config");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_frame_bytes"));
}

/// A driver monitor's awaitable hello (topologyVersion + maxAwaitTimeMS).
fn awaitable_hello() -> RawDocumentBuf {
    rawdoc! {
        "hello": 1,
        "topologyVersion": { "processId": ObjectId::new(), "counter": 0i64 },
        "maxAwaitTimeMS": 10_000i64,
        "$db": "admin",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_idle_connections_but_never_a_pending_awaitable_hello() {
    let answer_after = Duration::from_secs(3);
    let upstream = Scripted::start(move |req: &Received| {
        let awaitable = req
            .command
            .as_ref()
            .is_some_and(|c| c.get("topologyVersion").ok().flatten().is_some());
        if awaitable {
            let reply = scripted::reply(req, &scripted::hello_reply_doc());
            return vec![Step::Sleep(answer_after), Step::Send(reply)];
        }
        scripted::default_reply(req)
    })
    .await;
    let idle_ms = 500;
    let config = format!("[proxy]\nidle_timeout_ms = {idle_ms}\n");
    let (tap, _dir) = start_with_config(upstream.addr, &config).await;

    let mut monitor = RawClient::connect(tap.listen).await;
    assert_eq!(ok_of(&monitor.command(&hello("monitor")).await), 1.0);
    let (id, frame) = request(&awaitable_hello());
    monitor.send(&frame).await;
    let sent = Instant::now();

    let mut idle = RawClient::connect(tap.listen).await;
    let idle_addr = idle.stream.local_addr().expect("addr").to_string();
    assert_eq!(ok_of(&idle.command(&hello("idle")).await), 1.0);
    let quiet = Instant::now();
    assert!(
        idle.is_closed(T).await,
        "an idle connection was never closed"
    );
    let closed_after = quiet.elapsed();

    // Well past the idle timeout, the monitor still waits for its reply.
    let reply = monitor
        .recv(answer_after + T)
        .await
        .expect("the awaitable hello's connection was closed before its reply");
    assert_eq!(response_to(&reply), id);
    let waited = sent.elapsed();
    println!(
        "idle_timeout_ms = {idle_ms}: idle connection closed after {closed_after:?}; \
         a pending awaitable hello stayed open {waited:?} and got its reply"
    );
    // mongotap times idleness from when it forwarded the reply, a moment
    // before the client read it, and checks every 500 ms.
    assert!(
        closed_after >= Duration::from_millis(idle_ms - 50),
        "{closed_after:?}"
    );
    assert!(
        closed_after < Duration::from_millis(idle_ms + 1_500),
        "{closed_after:?}"
    );
    assert!(waited >= answer_after);
    let logged = tap.logs().into_iter().any(|l| {
        l["client"] == idle_addr.as_str()
            && l["error"]
                .as_str()
                .is_some_and(|e| e.contains("idle_timeout_ms"))
    });
    assert!(logged, "the idle close is logged with its reason");
    assert!(tap.events("decode_error").is_empty());
}

/// Sends `bytes` on `s` one byte every `gap` until mongotap hangs up;
/// returns how long that took from the first byte.
async fn slow_sender(mut s: TcpStream, bytes: Vec<u8>, gap: Duration) -> Duration {
    let started = Instant::now();
    let mut probe = [0u8; 1];
    for b in bytes.iter().cycle() {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        // A read that ends (EOF/reset) within the gap means mongotap closed.
        match tokio::time::timeout(gap, s.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) | Err(_) => {}
        }
        if started.elapsed() > Duration::from_secs(30) {
            panic!("a slow sender was never closed");
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_closed_and_cannot_exhaust_memory_or_tasks() {
    let upstream = Scripted::ok().await;
    let max_connections = 200;
    let attackers = 300;
    let frame_timeout_ms = 1_000;
    let config = format!(
        "[proxy]\nmax_connections = {max_connections}\nframe_timeout_ms = {frame_timeout_ms}\n"
    );
    let (tap, _dir) = start_with_config(upstream.addr, &config).await;
    let pid = tap.pid();
    let rss_before = rss_kb(pid);
    let threads_before = threads(pid);

    // Connect everyone first: the first max_connections take every slot
    // (a session waits for its first byte without a deadline), the rest are
    // refused at accept. Then all of them trickle.
    let mut sockets = Vec::new();
    for _ in 0..attackers {
        sockets.push(TcpStream::connect(tap.listen).await.expect("connect"));
    }
    let (_, hello_frame) = request(&hello("slowloris"));
    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|s| {
            tokio::spawn(slow_sender(
                s,
                hello_frame.clone(),
                Duration::from_millis(100),
            ))
        })
        .collect();
    // Sample while the attack runs.
    let (mut peak_active, mut peak_rss, mut peak_threads) = (0.0f64, 0, 0);
    while started.elapsed() < Duration::from_millis(frame_timeout_ms + 500) {
        peak_active = peak_active.max(metric_async(&tap, "mongotap_connections_active").await);
        peak_rss = peak_rss.max(rss_kb(pid));
        peak_threads = peak_threads.max(threads(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lived = Vec::new();
    for t in tasks {
        lived.push(t.await.expect("slow sender"));
    }
    let longest = lived.iter().max().copied().unwrap_or_default();

    let closed_slow = tap
        .events("decode_error")
        .into_iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("slow or stuck sender"))
        })
        .count();
    let refused = tap.events("connection_refused").len();
    let active_after = metric_async(&tap, "mongotap_connections_active").await;
    let rss_after = rss_kb(pid);
    println!(
        "slowloris: {attackers} clients sending 1 byte/100 ms, max_connections {max_connections}, \
         frame_timeout_ms {frame_timeout_ms}: {closed_slow} closed as slow senders, {refused} refused, \
         longest lived {longest:?}; peak active {peak_active}, threads {threads_before} -> peak {peak_threads}, \
         RSS {rss_before} KiB -> peak {peak_rss} KiB -> {rss_after} KiB after"
    );
    assert_eq!(
        closed_slow, max_connections,
        "each admitted attacker timed out"
    );
    assert_eq!(
        refused,
        attackers - max_connections,
        "the rest were refused"
    );
    assert!(peak_active <= max_connections as f64);
    assert_eq!(active_after, 0.0);
    assert!(
        longest < Duration::from_millis(frame_timeout_ms + 1_500),
        "a slow sender lived {longest:?}"
    );
    assert!(
        peak_threads <= threads_before + 4,
        "threads grew with connections"
    );
    assert!(
        peak_rss < rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {peak_rss} KiB"
    );
    assert!(alive(pid));
    // A normal client still works.
    let mut c = RawClient::connect(tap.listen).await;
    assert_eq!(ok_of(&c.command(&hello("after")).await), 1.0);
}
