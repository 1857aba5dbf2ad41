//! /stats, /stats/shapes and /metrics with a real driver (pymongo) through
//! mongotap to real FerretDB, and a driver's monitoring connection left to
//! run: it must produce no stall and no slow latency sample.

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
    python(
        "stats_workload.py",
        &[&a.uri(), "app-a", "stats_a", &n.to_string(), &m.to_string()],
    )
    .await;
    python(
        "stats_workload.py",
        &[&b.uri(), "app-b", "stats_b", "4", "2"],
    )
    .await;

    let stats = wait_stats(&a, "aggregate", "stats_a", "app-a", m).await;
    let find = row(&stats, "commands", "find", "stats_a", "app-a").expect("find row");
    assert_eq!(find["count"], n, "{stats}");
    assert_eq!(find["collection"], "items");
    let agg = row(&stats, "commands", "aggregate", "stats_a", "app-a").expect("aggregate row");
    assert_eq!(agg["count"], m);
    assert_eq!(agg["errors"], 0);
    for q in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(agg[q].as_u64().unwrap_or(0) > 0, "{q} in {agg}");
    }
    let shapes = json(&a, "/stats/shapes");
    let shape = shapes["shapes"]
        .as_array()
        .expect("shapes")
        .iter()
        .find(|r| r["app"] == "app-a")
        .expect("shape row");
    assert_eq!(shape["shape"], "$match>$group>$sort");
    assert_eq!(shape["count"], m);

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
