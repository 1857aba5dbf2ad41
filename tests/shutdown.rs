//! Graceful shutdown under load, on the real binary: SIGTERM with commands
//! in flight stops new connections at once, lets the in-flight commands
//! finish, and exits 0 within `proxy.drain_timeout_ms`; commands still
//! pending at the deadline are reported as never_replied.
//!
//! Figures are printed; see them with `cargo test --test shutdown -- --nocapture`.

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
use std::time::{Duration, Instant};
use support::{signal, Mongotap};
use tokio::net::TcpStream;
use util::{alive, hello, inflight, ok_of, request};

const T: Duration = Duration::from_secs(10);

/// hello answers at once; `find` after `delay`.
async fn slow_upstream(delay: Duration) -> Scripted {
    Scripted::start(move |req: &Received| {
        if req.name() == "find" {
            let reply = scripted::reply(
                req,
                &rawdoc! { "cursor": { "id": 0i64, "ns": "db.c", "firstBatch": [] }, "ok": 1.0 },
            );
            return vec![Step::Sleep(delay), Step::Send(reply)];
        }
        scripted::default_reply(req)
    })
    .await
}

/// `n` raw clients, each with one `find` pending through `tap`.
async fn pending_finds(tap: &Mongotap, n: usize) -> Vec<(RawClient, i32)> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut c = RawClient::connect(tap.listen).await;
        assert_eq!(ok_of(&c.command(&hello(&format!("drain-{i}"))).await), 1.0);
        let (id, frame) = request(&rawdoc! { "find": "c", "$db": "db" });
        c.send(&frame).await;
        out.push((c, id));
    }
    eventually_async_inflight(tap, n).await;
    out
}

async fn eventually_async_inflight(tap: &Mongotap, n: usize) {
    let deadline = Instant::now() + T;
    while inflight(tap).await.len() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} commands in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM, then connect attempts are refused while in-flight commands
/// finish; returns how long after SIGTERM the process exited.
async fn sigterm_and_wait(tap: &mut Mongotap, limit: Duration) -> Duration {
    let pid = tap.pid();
    let sent = Instant::now();
    signal(pid, "TERM");
    tap.wait_for(T, |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))
    })
    .await
    .expect("no `shutting down` line after SIGTERM");
    // The listener is closed first: new clients are refused.
    let refused = TcpStream::connect(tap.listen).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted while draining"
    );
    let deadline = sent + limit;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "mongotap still running after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exited = sent.elapsed();
    let status = tap.terminate(Duration::from_secs(1));
    assert!(status.success(), "mongotap exited with {status}");
    exited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_refuses_new_clients_and_lets_in_flight_commands_finish() {
    let upstream = slow_upstream(Duration::from_secs(1)).await;
    let drain_ms = 5_000;
    let config = format!("[proxy]\ndrain_timeout_ms = {drain_ms}\n");
    let (mut tap, _dir) = util::start_with_config(upstream.addr, &config).await;
    let mut clients = pending_finds(&tap, 10).await;

    let replies = tokio::spawn(async move {
        let mut ok = 0;
        for (c, id) in clients.iter_mut() {
            if let Some(reply) = c.recv(T).await {
                assert_eq!(util::response_to(&reply), *id);
                ok += 1;
            }
        }
        ok
    });
    let exited = sigterm_and_wait(&mut tap, Duration::from_millis(drain_ms)).await;
    let ok = replies.await.expect("replies");
    println!("sigterm: 10 commands in flight (1 s each), {ok} completed, exit 0 after {exited:?} (drain_timeout_ms {drain_ms})");
    assert_eq!(ok, 10, "every in-flight command got its reply");
    assert!(tap.events("never_replied").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_drain_deadline_reports_what_was_cut_off() {
    let upstream = slow_upstream(Duration::from_secs(60)).await;
    let drain_ms = 1_000;
    let config = format!("[proxy]\ndrain_timeout_ms = {drain_ms}\n");
    let (mut tap, _dir) = util::start_with_config(upstream.addr, &config).await;
    let mut clients = pending_finds(&tap, 5).await;

    // drain_timeout_ms, then up to 2 s for sessions to close.
    let exited = sigterm_and_wait(&mut tap, Duration::from_millis(drain_ms + 2_500)).await;
    for (c, _) in clients.iter_mut() {
        assert!(c.recv(T).await.is_none(), "a cut-off command got a reply");
    }
    let reported = tap.events("never_replied").len();
    println!("sigterm past deadline: 5 commands pending 60 s, exit 0 after {exited:?}, {reported} never_replied");
    assert!(exited >= Duration::from_millis(drain_ms));
    assert_eq!(reported, 5, "each cut-off command is reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_a_new_command_is_not_forwarded_and_the_pending_reply_still_arrives() {
    let upstream = slow_upstream(Duration::from_secs(1)).await;
    let config = "[proxy]\ndrain_timeout_ms = 5000\n";
    let (mut tap, _dir) = util::start_with_config(upstream.addr, config).await;
    let mut clients = pending_finds(&tap, 1).await;
    let (mut c, find_id) = clients.pop().expect("one client");

    signal(tap.pid(), "TERM");
    tap.wait_for(T, |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))
    })
    .await
    .expect("no `shutting down` line after SIGTERM");
    // A new command on the connection that is already open.
    let (_, ping) = request(&rawdoc! { "ping": 1, "$db": "admin" });
    c.send(&ping).await;

    let reply = c.recv(T).await.expect("the pending find's reply");
    assert_eq!(util::response_to(&reply), find_id);
    let waited = Instant::now();
    assert!(
        c.recv(T).await.is_none(),
        "the command sent after SIGTERM got a reply"
    );
    // Closed once the find's reply was delivered, not left open.
    assert!(
        waited.elapsed() < T / 2,
        "closed after {:?}",
        waited.elapsed()
    );
    let status = tap.terminate(T);
    assert!(status.success(), "mongotap exited with {status}");
    let names: Vec<String> = upstream.received().iter().map(|r| r.name()).collect();
    assert!(
        !names.iter().any(|n| n == "ping"),
        "the command sent after SIGTERM reached the upstream: {names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| *n == "find").count(),
        1,
        "{names:?}"
    );
}

/// The background tasks (watchdog, health probe, SIGHUP reload, admin
/// endpoint, signal wait) and a running explain all stop on the abort
/// token: with an explain the upstream holds for a minute, mongotap still
/// exits 0 within the deadline plus its 2 s bound, and does not report
/// tasks left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_background_tasks_and_a_hung_explain() {
    let upstream = Scripted::start(|req: &Received| match req.name().as_str() {
        "aggregate" | "explain" => vec![
            Step::Sleep(Duration::from_secs(60)),
            Step::Send(scripted::reply(req, &rawdoc! { "ok": 1.0 })),
        ],
        _ => scripted::default_reply(req),
    })
    .await;
    let drain_ms = 1_000;
    // max_time_ms = 0: the explain has no time budget of its own, so only
    // the token can end it.
    let config = format!(
        "[proxy]\ndrain_timeout_ms = {drain_ms}\n[explain]\nenabled = true\nafter_ms = 0\nmax_time_ms = 0\n"
    );
    let (mut tap, _dir) = util::start_with_config(upstream.addr, &config).await;
    let mut c = RawClient::connect(tap.listen).await;
    assert_eq!(ok_of(&c.command(&hello("explain-hung")).await), 1.0);
    let (_, frame) = request(&rawdoc! {
        "aggregate": "c", "pipeline": [{ "$match": { "x": 1 } }], "cursor": {}, "$db": "db",
    });
    c.send(&frame).await;
    let deadline = Instant::now() + T;
    while !upstream.received().iter().any(|r| r.name() == "explain") {
        assert!(Instant::now() < deadline, "no explain reached the upstream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every task ends on abort, so nothing waits for the 2 s bound.
    let exited = sigterm_and_wait(&mut tap, Duration::from_millis(drain_ms + 1_500)).await;
    println!("sigterm with an explain hung upstream: exit 0 after {exited:?} (drain_timeout_ms {drain_ms})");
    let messages: Vec<String> = tap
        .logs()
        .iter()
        .filter_map(|l| l["message"].as_str().map(str::to_string))
        .collect();
    assert!(
        !messages
            .iter()
            .any(|m| m.starts_with("some tasks did not stop")),
        "{messages:#?}"
    );
    assert!(messages.iter().any(|m| m == "stopped"), "{messages:#?}");
    // Cancelled by shutdown, the explain logs nothing.
    assert!(tap.events("explain_failed").is_empty());
}
