//! Every figure mongotap shows, checked by value against ground truth taken
//! outside mongotap: a scripted upstream that holds each reply for a known
//! delay (no sample can be shorter: physics), and the real driver's own
//! clock around each round trip (no sample can be longer: the proxy sees
//! the request after the client sent it and the reply before the client
//! gets it). The delays straddle the Prometheus bucket bounds and the HDR
//! histogram's growth, from 5 ms to 2.5 s.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/prom.rs"]
mod prom;
#[path = "support/scripted.rs"]
mod scripted;
mod support;

use bson::{rawdoc, RawDocumentBuf};
use mongodb::bson::{doc, Document};
use scripted::{msg, next_id, reply, RawClient, Received, Scripted, Step};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::Mongotap;

const T: Duration = Duration::from_secs(15);
const DB: &str = "figures";
const APP: &str = "figures";
/// (delay in ms, samples per command). Few samples of the long delays keep
/// the test near 3 × 2.5 s: every series runs at once.
const DELAYS: [(u64, usize); 4] = [(5, 8), (60, 6), (400, 4), (2500, 3)];
/// The pipeline of the aggregate samples, and its shape in /stats/shapes.
const SHAPE: &str = "$match>$group";
/// A quantile is an HDR bucket's upper edge: 2 significant digits put it
/// at most 1/128 above the sample it stands for (src/stats/mod.rs).
const HDR_ROUNDING: u64 = 128;
/// Above this, the `slow` event must fire (d400 and d2500 only).
const SLOW_MS: u64 = 300;

fn collection(delay_ms: u64) -> String {
    format!("d{delay_ms}")
}

/// find and aggregate on collection `d<N>` are answered after N ms with an
/// empty, exhausted cursor; everything else at once.
fn delayed(req: &Received) -> Vec<Step> {
    let name = req.name();
    let body = req.command.as_deref();
    let coll = body.and_then(|c| c.get_str(name.as_str()).ok());
    let delay = coll.and_then(|c| c.strip_prefix('d')?.parse::<u64>().ok());
    match (name.as_str(), coll, delay) {
        ("find" | "aggregate", Some(coll), Some(ms)) => {
            let answer = rawdoc! {
                "cursor": { "firstBatch": [], "id": 0_i64, "ns": format!("{DB}.{coll}") },
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

fn json(tap: &Mongotap, path: &str) -> Value {
    let (code, body) = tap.admin_get(path);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// The row of `rows[key]` whose fields include every pair in `want`.
fn row<'a>(rows: &'a Value, key: &str, want: &[(&str, &str)]) -> Option<&'a Value> {
    rows[key]
        .as_array()?
        .iter()
        .find(|r| want.iter().all(|(k, v)| r[*k] == *v))
}

/// Round trips of one series as the client's clock measured them, in µs.
struct Measured {
    delay_us: u64,
    rtts_us: Vec<u64>,
}

impl Measured {
    fn max(&self) -> u64 {
        self.rtts_us.iter().copied().max().unwrap_or(0)
    }
}

/// Runs `n` round trips of `command` on collection `d<delay>` one after
/// another, timing each with the client's clock.
async fn measure(
    client: mongodb::Client,
    command: &'static str,
    delay_ms: u64,
    n: usize,
) -> Measured {
    let coll = client
        .database(DB)
        .collection::<Document>(&collection(delay_ms));
    let mut rtts_us = Vec::with_capacity(n);
    for _ in 0..n {
        let sent = Instant::now();
        match command {
            "find" => drop(coll.find(doc! {}).await.expect("find")),
            _ => drop(
                coll.aggregate([
                    doc! {"$match": {"status": "secret-value"}},
                    doc! {"$group": {"_id": "$g"}},
                ])
                .await
                .expect("aggregate"),
            ),
        }
        rtts_us.push(sent.elapsed().as_micros() as u64);
    }
    Measured {
        delay_us: delay_ms * 1000,
        rtts_us,
    }
}

/// Waits until /stats has published every sample (sessions publish in
/// batches, at the latest every FLUSH_INTERVAL).
async fn wait_published(tap: &Mongotap, want: &[(&'static str, u64, usize)]) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let stats = json(tap, "/stats");
        let done = want.iter().all(|(command, delay, n)| {
            let c = collection(*delay);
            row(
                &stats,
                "commands",
                &[("command", command), ("collection", c.as_str())],
            )
            .is_some_and(|r| r["count"].as_u64() >= Some(*n as u64))
        });
        if done || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// count, errors, quantiles and max of one /stats or /stats/shapes row
/// against the delay and the client's round trips.
fn check_row(what: &str, r: &Value, m: &Measured) {
    let cmax = m.max();
    assert_eq!(r["count"], m.rtts_us.len() as u64, "{what}: {r}");
    assert_eq!(r["errors"], 0, "{what}: {r}");
    let max_us = r["max_us"].as_u64().expect("max_us");
    assert!(
        (m.delay_us..=cmax).contains(&max_us),
        "{what}: max_us {max_us} outside [delay {}, client max {cmax}]: {r}",
        m.delay_us
    );
    for q in ["p50_us", "p90_us", "p99_us", "p999_us"] {
        let v = r[q].as_u64().expect(q);
        let upper = cmax + cmax / HDR_ROUNDING + 1;
        assert!(
            (m.delay_us..=upper).contains(&v),
            "{what}: {q} {v} outside [delay {}, client max {cmax} + 1/128]: {r}",
            m.delay_us
        );
    }
}

/// The histogram of one series in /metrics: `_count` exact, `_sum` between
/// count × delay and the client's summed round trips, and every sample in
/// the first bucket at or above it. A sample lies somewhere in
/// [delay, its round trip], so each cumulative bucket count must lie
/// between the samples whose round trip fits under `le` and the samples
/// whose delay does.
fn check_histogram(samples: &[prom::Sample], command: &str, m: &Measured) {
    let c = collection(m.delay_us / 1000);
    let labels = [
        ("command", command),
        ("db", DB),
        ("collection", c.as_str()),
        ("app", APP),
        ("outcome", "ok"),
    ];
    let family = "mongotap_command_duration_seconds";
    let n = m.rtts_us.len() as u64;
    assert_eq!(
        prom::one(samples, &format!("{family}_count"), &labels),
        n as f64
    );
    let sum_us = prom::one(samples, &format!("{family}_sum"), &labels) * 1e6;
    let client_sum: u64 = m.rtts_us.iter().sum();
    // ±1 µs: the seconds are printed as a float.
    assert!(
        sum_us + 1.0 >= (n * m.delay_us) as f64 && sum_us <= client_sum as f64 + 1.0,
        "{command} {c}: _sum {sum_us} µs outside [{n} × {} µs, client {client_sum} µs]",
        m.delay_us
    );
    let buckets = prom::buckets_us(samples, family, &labels);
    assert_eq!(buckets.len(), 19, "{command} {c}: {buckets:?}");
    assert_eq!(buckets.last(), Some(&(u64::MAX, n)));
    for &(le, count) in &buckets {
        let surely_under = m.rtts_us.iter().filter(|&&rtt| rtt <= le).count() as u64;
        let maybe_under = if m.delay_us <= le { n } else { 0 };
        assert!(
            (surely_under..=maybe_under).contains(&count),
            "{command} {c}: bucket le={le} µs holds {count}, want {surely_under}..={maybe_under} \
             (delay {} µs, client {:?})",
            m.delay_us,
            m.rtts_us
        );
    }
    let errors = prom::select(
        samples,
        &format!("{family}_count"),
        &[("collection", c.as_str()), ("outcome", "error")],
    );
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_figures_match_the_delay_and_the_clients_clock() {
    let upstream = Scripted::start(delayed).await;
    let tap = Mongotap::start_with(upstream.addr, &["--slow-ms", &SLOW_MS.to_string()]);
    let uri = format!("{}&appName={APP}&serverSelectionTimeoutMS=5000", tap.uri());
    let client = mongodb::Client::with_uri_str(uri).await.expect("client");
    // Connects before timing starts, so the first sample times no handshake.
    client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .expect("ping");

    let mut tasks = Vec::new();
    for (delay, n) in DELAYS {
        for command in ["find", "aggregate"] {
            let task = tokio::spawn(measure(client.clone(), command, delay, n));
            tasks.push(((command, delay), task));
        }
    }
    let mut measured = HashMap::new();
    for (key, task) in tasks {
        measured.insert(key, task.await.expect("client task"));
    }

    let want: Vec<(&str, u64, usize)> = measured
        .iter()
        .map(|(&(command, delay), m)| (command, delay, m.rtts_us.len()))
        .collect();
    let stats = wait_published(&tap, &want).await;
    let shapes = json(&tap, "/stats/shapes");
    let metrics = prom::parse(&tap.admin_get("/metrics").1);
    for (&(command, delay), m) in &measured {
        let c = collection(delay);
        let labels = [
            ("command", command),
            ("db", DB),
            ("collection", c.as_str()),
            ("app", APP),
        ];
        let r = row(&stats, "commands", &labels)
            .unwrap_or_else(|| panic!("no /stats row {labels:?}: {stats}"));
        check_row(&format!("/stats {command} {c}"), r, m);
        eprintln!(
            "{command} {c}: delay {} µs; p50 {} p99 {} max {} µs; client max {} µs",
            m.delay_us,
            r["p50_us"],
            r["p99_us"],
            r["max_us"],
            m.max()
        );
        check_histogram(&metrics, command, m);
        if command == "aggregate" {
            let labels = [
                ("shape", SHAPE),
                ("db", DB),
                ("collection", c.as_str()),
                ("app", APP),
            ];
            let r = row(&shapes, "shapes", &labels)
                .unwrap_or_else(|| panic!("no /stats/shapes row {labels:?}: {shapes}"));
            check_row(&format!("/stats/shapes {c}"), r, m);
        }
        // Commands above slow_ms log `slow`, each with its own duration.
        let slow: Vec<u64> = tap
            .events("slow")
            .iter()
            .filter(|e| e["command"] == command && e["collection"] == c.as_str())
            .map(|e| e["duration_ms"].as_u64().expect("duration_ms"))
            .collect();
        if delay > SLOW_MS {
            assert_eq!(slow.len(), m.rtts_us.len(), "{command} {c}: {slow:?}");
            for d in slow {
                assert!(
                    (delay..=m.max() / 1000).contains(&d),
                    "{command} {c}: slow duration_ms {d} outside [{delay}, client max {}]",
                    m.max() / 1000
                );
            }
        }
    }
    // Filter values never reach the figures.
    assert!(!format!("{stats}{shapes}").contains("secret-value"));
}

fn hello(app: &str) -> RawDocumentBuf {
    rawdoc! {
        "hello": 1,
        "client": { "application": { "name": app }, "driver": { "name": "raw", "version": "1" } },
        "$db": "admin",
    }
}

/// A find the upstream holds: the age of the pending command in the
/// `stalled` event and in /inflight against the client's clock. The proxy
/// starts the clock after the client sent the request and before the
/// upstream received it; it reads it between the client's clock readings
/// around the admin GET (or before the client saw the log line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ages_agree_with_the_clients_clock() {
    let upstream = Scripted::start(|req| match req.name().as_str() {
        "find" => vec![Step::Sleep(Duration::from_secs(3600))],
        _ => scripted::default_reply(req),
    })
    .await;
    let stall_ms = 600u64;
    let tap = Mongotap::start_with(upstream.addr, &["--stall-ms", &stall_ms.to_string()]);
    let mut client = RawClient::connect(tap.listen).await;
    client.command(&hello("ages")).await;
    let id = next_id();
    let find = rawdoc! { "find": "held", "filter": {}, "$db": DB };
    let sent = Instant::now();
    client.send(&msg(id, 0, 0, &find)).await;
    upstream
        .wait_for(|r| r.name() == "find", Duration::from_secs(5))
        .await;
    // No later than the proxy started the command's clock.
    let reached_upstream = Instant::now();

    let stalled = tap
        .wait_for(T, move |e| e["event"] == "stalled" && e["request_id"] == id)
        .await
        .expect("stalled event");
    let seen = sent.elapsed().as_millis() as u64;
    let age = stalled["age_ms"].as_u64().expect("age_ms");
    assert!(
        (stall_ms..=seen).contains(&age),
        "stalled age_ms {age} outside [stall_ms {stall_ms}, client saw it at {seen}]"
    );

    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let before = reached_upstream.elapsed().as_millis() as u64;
        let rows = json(&tap, "/inflight");
        let after = sent.elapsed().as_millis() as u64;
        let r = rows
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["request_id"] == id))
            .unwrap_or_else(|| panic!("request {id} not in /inflight: {rows}"));
        let age = r["age_ms"].as_u64().expect("age_ms");
        assert!(
            (before..=after).contains(&age),
            "/inflight age_ms {age} outside the client's [{before}, {after}]: {r}"
        );
        assert_eq!(r["stalled"], true, "{r}");
    }

    // The stall counter counts every report (at stall_ms, 2×, 4×, ... up to
    // 6): at least the `stalled` lines already read, and no more reports
    // than the command's age on the client's clock allows.
    let logged = tap.events("stalled").len();
    let (_, body) = tap.admin_get("/metrics");
    let age = sent.elapsed().as_millis() as u64;
    let counted = prom::one(&prom::parse(&body), "mongotap_stalled_commands_total", &[]) as usize;
    let possible = (0..6).filter(|k| stall_ms << k <= age).count();
    assert!(
        (logged.max(1)..=possible).contains(&counted),
        "stalled_commands_total {counted}: {logged} logged, at most {possible} by age {age} ms"
    );
}

/// A real driver's cursors on real FerretDB, left open part-way: /cursors
/// must count the batches, getMores and documents the driver itself
/// received (pymongo's command monitoring), and its ages must fit the
/// driver's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_counts_match_what_the_driver_received() {
    let ferret = support::Ferret::start();
    let tap = Mongotap::start(ferret.addr());
    let admin = format!("http://{}", tap.admin.expect("admin"));
    let db = support::unique_db("cursors");
    let out = support::python("cursor_counts.py", &[&tap.uri(), &admin, &db]).await;
    // 23 documents: find in batches of 5 iterated to 12 has received 15 in
    // 3 batches; aggregate in batches of 4 iterated to 6 has received 8.
    assert_eq!(
        out["iterated"],
        serde_json::json!({"find": 12, "aggregate": 6})
    );
    let driver = out["driver"].as_array().expect("driver");
    let rows = out["cursors"].as_array().expect("cursors");
    assert_eq!(driver.len(), 2, "{out}");
    assert_eq!(rows.len(), 2, "{out}");
    let by_command = |c: &str| -> u64 {
        driver
            .iter()
            .find(|d| d["command"] == c)
            .map_or(0, |d| d["documents"].as_u64().unwrap_or(0))
    };
    assert_eq!(
        (by_command("find"), by_command("aggregate")),
        (15, 8),
        "{out}"
    );
    for d in driver {
        let r = rows
            .iter()
            .find(|r| r["cursor_id"] == d["cursor_id"])
            .unwrap_or_else(|| panic!("driver cursor {d} not in /cursors: {out}"));
        for field in ["command", "documents", "batches", "get_mores"] {
            assert_eq!(r[field], d[field], "{field}: /cursors {r} vs driver {d}");
        }
        assert_eq!(r["db"], db.as_str());
        assert_eq!(r["collection"], "items");
        assert_eq!(r["app"], "cursors");
        assert_eq!(r["awaiting"], false);
        for field in ["age_ms", "idle_ms"] {
            let v = r[field].as_i64().expect(field);
            let (lo, hi) = (d[field][0].as_i64(), d[field][1].as_i64());
            let (lo, hi) = (lo.expect("lo"), hi.expect("hi"));
            assert!(
                (lo..=hi).contains(&v),
                "{field} {v} outside the driver's [{lo}, {hi}]: {r}"
            );
        }
    }
}
