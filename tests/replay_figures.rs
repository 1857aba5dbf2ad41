//! The latency and document figures of `mongotap replay`'s report against
//! ground truth: a scripted upstream holds every find on `d<N>` for N ms
//! and answers it with two documents, both when the workload is captured
//! and when it is replayed. A captured latency lies between the delay and
//! the driver's round trip; a replayed one between the delay and the
//! replay process's whole run on the test's clock.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/scripted.rs"]
mod scripted;
mod support;

use bson::rawdoc;
use mongodb::bson::{doc, Document};
use scripted::{reply, Received, Scripted, Step};
use serde_json::Value;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};
use support::Mongotap;

const DB: &str = "replayfig";
/// (delay in ms, finds), run one after another by one driver.
const DELAYS: [(u64, u64); 2] = [(60, 5), (400, 3)];
const DOCS_PER_REPLY: u64 = 2;

fn delayed(req: &Received) -> Vec<Step> {
    let coll = req.command.as_deref().and_then(|c| c.get_str("find").ok());
    let delay = coll.and_then(|c| c.strip_prefix('d')?.parse::<u64>().ok());
    match (coll, delay) {
        (Some(coll), Some(ms)) if req.name() == "find" => {
            let answer = rawdoc! {
                "cursor": {
                    "firstBatch": [{ "_id": 1 }, { "_id": 2 }],
                    "id": 0_i64,
                    "ns": format!("{DB}.{coll}"),
                },
                "ok": 1.0,
            };
            vec![
                Step::Sleep(Duration::from_millis(ms)),
                Step::Send(reply(req, &answer)),
            ]
        }
        _ => scripted::default_reply(req),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_report_latencies_match_the_delays() {
    let upstream = Scripted::start(delayed).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cap = dir.path().join("cap");
    let config = dir.path().join("mongotap.toml");
    let text = format!("[capture]\nenabled = true\npath = \"{}\"\n", cap.display());
    std::fs::write(&config, text).expect("write config");
    let mut tap = Mongotap::start_with(
        upstream.addr,
        &["--config", config.to_str().expect("utf-8")],
    );

    // The workload, each round trip timed by the test.
    let uri = format!(
        "{}&appName=replayfig&serverSelectionTimeoutMS=5000",
        tap.uri()
    );
    let client = mongodb::Client::with_uri_str(uri).await.expect("client");
    let mut client_max_us = HashMap::new();
    for (delay, n) in DELAYS {
        let coll = client
            .database(DB)
            .collection::<Document>(&format!("d{delay}"));
        let mut max = 0;
        for _ in 0..n {
            let sent = Instant::now();
            drop(coll.find(doc! {}).await.expect("find"));
            max = max.max(sent.elapsed().as_micros() as u64);
        }
        client_max_us.insert(delay, max);
    }
    drop(client);
    // Stopping mongotap flushes the capture.
    assert!(tap.terminate(Duration::from_secs(20)).success());

    let report_path = dir.path().join("report.json");
    let target = upstream.addr.to_string();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let args = [
            cap.to_str().expect("utf-8").to_string(),
            "--target".into(),
            target,
            "--max-speed".into(),
            "--report".into(),
            report_path.to_str().expect("utf-8").into(),
        ];
        move || {
            Command::new(env!("CARGO_BIN_EXE_mongotap"))
                .arg("replay")
                .args(args)
                .output()
                .expect("run mongotap replay")
        }
    })
    .await
    .expect("join");
    let wall_us = started.elapsed().as_micros() as u64;
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(&report_path).expect("report")).expect("json");

    for (delay, n) in DELAYS {
        let ns = format!("{DB}.d{delay}");
        let row = report["commands"]
            .as_array()
            .expect("commands")
            .iter()
            .find(|r| r["command"] == "find" && r["namespace"] == ns.as_str())
            .unwrap_or_else(|| panic!("no find row for {ns}: {report}"));
        for field in ["count", "sent"] {
            assert_eq!(row[field], n, "{field}: {row}");
        }
        assert_eq!(row["errors"], 0, "{row}");
        assert_eq!(row["captured_docs"], n * DOCS_PER_REPLY, "{row}");
        assert_eq!(row["replayed_docs"], n * DOCS_PER_REPLY, "{row}");
        let us = |f: &str| row[f].as_u64().unwrap_or_else(|| panic!("{f}: {row}"));
        let delay_us = delay * 1000;
        let cmax = client_max_us[&delay];
        let (c50, c99) = (us("captured_p50_us"), us("captured_p99_us"));
        assert!(
            delay_us <= c50 && c50 <= c99 && c99 <= cmax,
            "captured p50 {c50} / p99 {c99} µs outside [delay {delay_us}, driver max {cmax}]: {row}"
        );
        let (r50, r99) = (us("replayed_p50_us"), us("replayed_p99_us"));
        assert!(
            delay_us <= r50 && r50 <= r99 && r99 <= wall_us,
            "replayed p50 {r50} / p99 {r99} µs outside [delay {delay_us}, replay run {wall_us}]: {row}"
        );
    }
}
