//! Many idle connections through the real binary: each one completes a
//! real hello handshake through mongotap to an upstream and then stays
//! open, as a large driver pool would. mongotap's RSS and descriptors are
//! measured and printed (`cargo test --test load -- --nocapture`).
//!
//! The goal is 10,000 connections. Each proxied connection holds two
//! descriptors in mongotap (client and upstream), so 10,000 need about
//! 20,010 with the listeners, and this test process needs as many again
//! (one per client, one per upstream-side socket of the scripted upstream
//! it runs). Where the hard RLIMIT_NOFILE is lower (20,000 on the sandbox
//! this was written on, and it cannot be raised without privilege) the test
//! runs the largest count that fits and says why.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/scripted.rs"]
mod scripted;
mod support;
#[path = "reliability_support/mod.rs"]
mod util;

use scripted::{RawClient, Scripted};
use std::time::{Duration, Instant};
use util::{fd_count, hello, metric_async, ok_of, rss_kb, start_with_config};

/// Descriptors either process needs besides two per connection: listeners,
/// epoll, eventfds, the log pipe, the test harness.
const FD_HEADROOM: u64 = 100;
const GOAL: u64 = 10_000;
/// Handshakes in flight at once (the listen backlog is 1,024).
const CONCURRENCY: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_or_as_many_as_the_fd_limit_allows() {
    // Soft limit up to the hard one, for this process; mongotap raises its
    // own at startup.
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
    let soft = rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    let fits = soft.saturating_sub(FD_HEADROOM) / 2;
    let n = GOAL.min(fits) as usize;
    let why = if (n as u64) < GOAL {
        format!(
            "; 10,000 would need {} descriptors in mongotap (two per connection plus its own) \
             and as many in this test process, above the hard RLIMIT_NOFILE of {hard}",
            GOAL * 2 + 10
        )
    } else {
        String::new()
    };

    let upstream = Scripted::ok().await;
    let config = format!("[proxy]\nmax_connections = {GOAL}\n");
    let (tap, _dir) = start_with_config(upstream.addr, &config).await;
    let pid = tap.pid();
    let rss_before = rss_kb(pid);
    let fds_before = fd_count(pid);

    let started = Instant::now();
    let mut clients: Vec<RawClient> = Vec::with_capacity(n);
    while clients.len() < n {
        let batch = CONCURRENCY.min(n - clients.len());
        let tasks: Vec<_> = (0..batch)
            .map(|_| {
                let addr = tap.listen;
                tokio::spawn(async move {
                    let mut c = RawClient::connect(addr).await;
                    assert_eq!(ok_of(&c.command(&hello("idle-pool")).await), 1.0);
                    c
                })
            })
            .collect();
        for t in tasks {
            clients.push(t.await.expect("a handshake through mongotap failed"));
        }
    }
    let connect_time = started.elapsed();
    let active = metric_async(&tap, "mongotap_connections_active").await;
    assert_eq!(active as usize, n, "mongotap_connections_active");
    // Let per-connection buffers settle, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_loaded = rss_kb(pid);
    let fds_loaded = fd_count(pid);

    // Every connection is alive: a sample of them still answers.
    for c in clients.iter_mut().step_by((n / 50).max(1)) {
        assert_eq!(ok_of(&c.command(&hello("idle-pool")).await), 1.0);
    }
    let per_conn = (rss_loaded.saturating_sub(rss_before)) as f64 / n as f64;
    println!(
        "load: {n} idle connections (hello through mongotap, then idle) in {connect_time:.1?}; \
         mongotap RSS {rss_before} KiB -> {rss_loaded} KiB ({per_conn:.1} KiB per connection), \
         fds {fds_before} -> {fds_loaded}; soft/hard RLIMIT_NOFILE {soft}/{hard}{why}"
    );
    assert!(
        fds_loaded >= 2 * n,
        "two descriptors per proxied connection"
    );
    // Generous bound: 64 KiB per idle connection would already be a leak.
    assert!(
        rss_loaded < rss_before + 64 * n as u64,
        "RSS {rss_loaded} KiB for {n} idle connections"
    );

    // Closing them all returns mongotap to zero active connections.
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_async(&tap, "mongotap_connections_active").await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "connections still active after close"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_after = rss_kb(pid);
    println!(
        "load: after closing all {n}: RSS {rss_after} KiB, fds {}",
        fd_count(pid)
    );
}
