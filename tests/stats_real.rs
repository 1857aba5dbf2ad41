//! /stats, /stats/shapes and /metrics with a real driver (pymongo) through
//! mongotap to real FerretDB, and a driver's monitoring connection left to
//! run: it must produce no stall and no slow latency sample.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::{python, Ferret, Mongotap};

fn json(tap: &Mongotap, path: &str) -> Value {
    let (code, body) = tap.admin_get(path);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("json")
}

fn row<'a>(rows: &'a Value, key: &str, command: &str, db: &str, app: &str) -> Option<&'a Value> {
    rows[key]
        .as_array()?
        .iter()
        .find(|r| r["command"] == command && r["db"] == db && r["app"] == app)
}

/// Waits until /stats shows `want` of `command` for (db, app): sessions
/// publish their samples in batches, and at the latest when they close.
async fn wait_stats(tap: &Mongotap, command: &str, db: &str, app: &str, want: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = json(tap, "/stats");
        let n = row(&stats, "commands", command, db, app)
            .map_or(0, |r| r["count"].as_u64().unwrap_or(0));
        if n >= want || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_per_namespace_and_app_and_metrics_add_up() {
    let ferret = Ferret::start();
    let a = Mongotap::start(ferret.addr());
    let b = Mongotap::start(ferret.addr());
    let (n, m) = (7u64, 3u64);
    let run_a = python(
        "stats_workload.py",
        &[&a.uri(), "app-a", "stats_a", &n.to_string(), &m.to_string()],
    )
    .await;
    let run_b = python(
        "stats_workload.py",
        &[&b.uri(), "app-b", "stats_b", "4", "2"],
    )
    .await;

    let stats = wait_stats(&a, "aggregate", "stats_a", "app-a", m).await;
    let find = row(&stats, "commands", "find", "stats_a", "app-a").expect("find row");
    assert_eq!(find["count"], n, "{stats}");
    assert_eq!(find["collection"], "items");
    within_client_clock(find, &run_a["find_us"]);
    let agg = row(&stats, "commands", "aggregate", "stats_a", "app-a").expect("aggregate row");
    assert_eq!(agg["count"], m);
    assert_eq!(agg["errors"], 0);
    within_client_clock(agg, &run_a["aggregate_us"]);
    let shapes = json(&a, "/stats/shapes");
    let shape = shapes["shapes"]
        .as_array()
        .expect("shapes")
        .iter()
        .find(|r| r["app"] == "app-a")
        .expect("shape row");
    assert_eq!(shape["shape"], "$match>$group>$sort");
    assert_eq!(shape["count"], m);
    within_client_clock(shape, &run_a["aggregate_us"]);

    wait_stats(&b, "aggregate", "stats_b", "app-b", 2).await;
    let urls: Vec<String> = [&a, &b]
        .iter()
        .map(|t| format!("http://{}/metrics", t.admin.expect("admin")))
        .collect();
    let url_refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let totals = python("parse_metrics.py", &url_refs).await;
    assert_eq!(totals["find"]["count"], (n + 4) as f64, "{totals}");
    assert_eq!(totals["aggregate"]["count"], (m + 2) as f64, "{totals}");
    assert_eq!(totals["aggregate"]["buckets"]["+Inf"], (m + 2) as f64);
    // No sample is longer than the round trip pymongo timed around it.
    for command in ["find", "aggregate"] {
        let key = format!("{command}_us");
        let rtts: Vec<u64> = [&run_a, &run_b]
            .iter()
            .flat_map(|run| run[&key].as_array().expect("timings").clone())
            .map(|v| v.as_u64().expect("µs"))
            .collect();
        let t = &totals[command];
        let sum_us = t["sum"].as_f64().expect("sum") * 1e6;
        let client_sum: u64 = rtts.iter().sum();
        assert!(
            sum_us > 0.0 && sum_us <= client_sum as f64 + 1.0,
            "{command}: _sum {sum_us} µs, client {client_sum} µs"
        );
        for (le, count) in t["buckets"].as_object().expect("buckets") {
            let le_us = le.parse::<f64>().expect("le") * 1e6;
            let under = rtts.iter().filter(|&&r| r as f64 <= le_us).count() as f64;
            assert!(
                count.as_f64().expect("count") >= under,
                "{command}: le={le} holds {count}, but {under} round trips fit under it: {rtts:?}"
            );
        }
    }
}

/// A row's quantiles and max against pymongo's own timings of the same
/// commands (`rtts_us`): a sample cannot exceed the round trip around it,
/// and a quantile is at most 1/128 above its sample (HDR, 2 significant
/// digits). FerretDB answers in any time, so the lower bound is 1 µs.
fn within_client_clock(row: &Value, rtts_us: &Value) {
    let cmax = rtts_us
        .as_array()
        .expect("timings")
        .iter()
        .map(|v| v.as_u64().expect("µs"))
        .max()
        .expect("at least one timing");
    let max_us = row["max_us"].as_u64().expect("max_us");
    assert!(
        (1..=cmax).contains(&max_us),
        "max_us {max_us} outside [1, client max {cmax}]: {row}"
    );
    for q in ["p50_us", "p90_us", "p99_us", "p999_us"] {
        let v = row[q].as_u64().expect(q);
        assert!(
            (1..=max_us).contains(&v) && v <= cmax + cmax / 128 + 1,
            "{q} {v} outside [1, max_us {max_us}], or above client max {cmax} + 1/128: {row}"
        );
    }
}

/// A pymongo client idles for 30 s with a fast heartbeat: its monitor's
/// hellos are never stalls and never slow samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_connections_are_quiet() {
    let ferret = Ferret::start();
    let tap = Mongotap::start_with(ferret.addr(), &["--stall-ms", "1000"]);
    let script = format!(
        "import time, pymongo\n\
         c = pymongo.MongoClient('{}&appName=monitor&heartbeatFrequencyMS=500')\n\
         c.admin.command('ping')\n\
         time.sleep(30)\n",
        tap.uri()
    );
    let status = tokio::process::Command::new(support::python_path())
        .arg("-c")
        .arg(&script)
        .status()
        .await
        .expect("python");
    assert!(status.success());
    assert!(
        tap.events("stalled").is_empty(),
        "{:?}",
        tap.events("stalled")
    );
    let stats = json(&tap, "/stats");
    let rows = stats["commands"].as_array().expect("rows");
    let hellos: u64 = rows
        .iter()
        .filter(|r| {
            matches!(
                r["command"].as_str(),
                Some("hello" | "isMaster" | "ismaster")
            )
        })
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum();
    assert!(hellos >= 20, "the monitor kept polling: {stats}");
    for r in rows {
        assert!(
            r["max_us"].as_u64().unwrap_or(0) < 1_000_000,
            "slow sample: {r}"
        );
    }
}
