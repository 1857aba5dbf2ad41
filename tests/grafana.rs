//! The Grafana dashboard only queries metrics mongotap really serves.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/scripted.rs"]
mod scripted;
mod support;

use bson::rawdoc;
use scripted::{RawClient, Scripted};
use support::Mongotap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_existing_metrics() {
    let upstream = Scripted::ok().await;
    let tap = Mongotap::start(upstream.addr);
    let mut client = RawClient::connect(tap.listen).await;
    client.command(&rawdoc! {"find": "c", "$db": "shop"}).await;
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let (_, metrics) = tap.admin_get("/metrics");
    let text = std::fs::read_to_string(support::repo_file("contrib/grafana/mongotap.json"))
        .expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut names = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("mongotap_") {
                    names.push(word.to_string());
                }
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        // Counters and histograms are declared under their base name.
        let base = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("# TYPE {base} "))),
            "dashboard uses {name}, which /metrics does not serve"
        );
    }
}
