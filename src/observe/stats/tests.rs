//! Unit tests of the latency series: what goes in must come out, value for value.

use super::*;
use crate::observe::meta::{ClientMeta, CommandSummary};
use crate::observe::queries::QueryShape;
use mongotap_proto::shape::ShapeHash;
use std::time::Instant;

fn summary(command: &str, shape: &str) -> Arc<CommandSummary> {
    Arc::new(CommandSummary {
        command: command.into(),
        db: "db".into(),
        collection: "coll".into(),
        stages: Vec::new(),
        shape: shape.into(),
        max_time_ms: None,
        allow_disk_use: None,
    })
}

fn meta(app: &str) -> Arc<ClientMeta> {
    Arc::new(ClientMeta {
        app: app.into(),
        ..ClientMeta::default()
    })
}

fn row<'a>(rows: &'a [StatsRow], label: &str, value: &str) -> &'a StatsRow {
    rows.iter()
        .find(|r| r.labels.get(label).and_then(|v| v.as_str()) == Some(value))
        .unwrap_or_else(|| panic!("no row with {label}={value}"))
}

/// Runs are split where the command or the client changes, and every
/// value lands in its own series with its outcome.
#[test]
fn buffered_runs_land_in_their_own_series() {
    let stats = Stats::new(100);
    let (find, agg) = (summary("find", ""), summary("aggregate", "$match>$limit"));
    let app = meta("app");
    let mut buf = SampleBuffer::default();
    let now = Instant::now();
    buf.push(&find, &app, 100, false, now, &stats);
    buf.push(&find, &app, 200, true, now, &stats);
    buf.push(&agg, &app, 300, false, now, &stats);
    buf.push(&find, &app, 400, false, now, &stats);
    assert!(stats.command_rows().is_empty(), "published before a flush");
    buf.flush(&stats);
    assert!(buf.is_empty());
    let rows = stats.command_rows();
    let f = row(&rows, "command", "find");
    assert_eq!((f.count, f.errors), (3, 1));
    assert_eq!(f.max_us, 400);
    let a = row(&rows, "command", "aggregate");
    assert_eq!((a.count, a.errors, a.max_us), (1, 0, 300));
    let shapes = stats.shape_rows();
    assert_eq!(shapes.len(), 1);
    assert_eq!(row(&shapes, "shape", "$match>$limit").count, 1);
}

/// A full buffer publishes by itself; past max_series, samples fold
/// into `other` and are counted.
#[test]
fn a_full_buffer_publishes_and_extra_series_fold() {
    let stats = Stats::new(1);
    let (a, b) = (summary("find", ""), summary("insert", ""));
    let app = meta("");
    let mut buf = SampleBuffer::default();
    let now = Instant::now();
    for i in 0..FLUSH_SAMPLES as u64 {
        let s = if i % 2 == 0 { &a } else { &b };
        buf.push(s, &app, i + 1, false, now, &stats);
    }
    assert!(buf.is_empty(), "a full buffer is published");
    let rows = stats.command_rows();
    let half = FLUSH_SAMPLES as u64 / 2;
    assert_eq!(row(&rows, "command", "find").count, half);
    assert_eq!(row(&rows, "app", "unknown").count, half);
    assert_eq!(row(&rows, "command", OTHER).count, half);
    assert_eq!(stats.folded.load(Relaxed), half);
}

/// The regression behind issue 15: values past the histogram's first
/// range used to be clamped to 2 µs. Every decade from 1 µs to 1 h must
/// come back as itself.
#[test]
fn slow_values_are_recorded_as_themselves() {
    for v in [
        1,
        2,
        999,
        2_048,
        5_000,
        60_000,
        400_000,
        2_500_000,
        3_600_000_000,
    ] {
        let mut s = Series::new();
        s.record(v, false);
        assert_eq!(s.max_us, v);
        let p50 = s.quantile(0.5);
        assert!(
            s.all.equivalent(p50, v) && p50 <= v,
            "{v} µs came back as p50 {p50}"
        );
        assert_eq!((s.ok.count, s.ok.sum_us), (1, v));
    }
}

/// A sample counts in the first bucket whose bound is at or above it,
/// including a value exactly on a bound; past 60 s it is only in +Inf.
#[test]
fn each_sample_lands_in_its_prometheus_bucket() {
    let mut s = Series::new();
    let cases = [
        (1, 0),
        (100, 0),
        (101, 1),
        (5_000, 5),
        (5_001, 6),
        (60_000_000, 17),
        (60_000_001, 18),
    ];
    for (v, _) in cases {
        s.record(v, true);
    }
    let mut want = [0u64; BUCKETS_US.len() + 1];
    for (_, i) in cases {
        want[i] += 1;
    }
    assert_eq!(s.err.buckets, want);
    assert_eq!(s.err.count, cases.len() as u64);
    assert_eq!(s.ok.count, 0);
    assert_eq!(s.err.sum_us, cases.iter().map(|c| c.0).sum::<u64>());
}

/// The largest value a histogram can hold after growing: 1 h.
#[test]
fn a_series_grows_to_an_hour_and_no_further() {
    let mut s = Series::new();
    s.record(u64::MAX >> 1, false);
    assert_eq!(s.max_us, HIST_MAX_US);
    assert!(s.all.high() >= HIST_MAX_US);
}

mod property {
    use super::*;
    use proptest::prelude::*;

    /// Nearest-rank quantile of a sorted sample, as HDR defines it.
    fn reference(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random latencies in, quantiles out: each quantile is the
        /// reference value or the upper edge of its HDR bucket (at most
        /// 1/128 above it), never below it, and never above the max.
        #[test]
        fn quantiles_match_a_sorted_reference(
            values in proptest::collection::vec(
                prop_oneof![1u64..10_000, 10_000u64..10_000_000, 1u64..HIST_MAX_US],
                1..400,
            ),
        ) {
            let mut s = Series::new();
            for &v in &values {
                s.record(v, v % 7 == 0);
            }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
                let want = reference(&sorted, q);
                let got = s.quantile(q);
                prop_assert!(got >= want, "q{q}: {got} < reference {want}");
                prop_assert!(
                    got <= want + want / 128 + 1,
                    "q{q}: {got} more than 1/128 above reference {want}"
                );
            }
            prop_assert_eq!(s.max_us, *sorted.last().unwrap());
            prop_assert_eq!(s.all.len(), values.len() as u64);
            let errors = values.iter().filter(|v| *v % 7 == 0).count() as u64;
            prop_assert_eq!(s.err.count, errors);
            prop_assert_eq!(s.ok.count + s.err.count, values.len() as u64);
            let in_buckets: u64 = s.ok.buckets.iter().chain(&s.err.buckets).sum();
            prop_assert_eq!(in_buckets, values.len() as u64);
        }
    }
}

/// Resident memory of `Stats` at max_series (1,000 command series and
/// 1,000 shape series), each having seen `max_us`. Prints the figure for
/// README; run with
/// `SERIES_MAX_US=2500000 cargo test --bin mongotap series_memory -- --ignored --nocapture`
/// (one figure per process: freed histograms would be reused).
#[test]
#[ignore = "a measurement, not a check: prints RSS"]
fn series_memory_at_max_series() {
    fn rss_kb() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4
    }
    let max_us: u64 = std::env::var("SERIES_MAX_US").map_or(3_600_000_000, |v| v.parse().unwrap());
    {
        let before = rss_kb();
        let stats = Stats::new(1000);
        let app = meta("app");
        let now = Instant::now();
        let mut buf = SampleBuffer::default();
        for i in 0..1000 {
            let s = Arc::new(CommandSummary {
                collection: format!("coll{i}").into(),
                ..(*summary("aggregate", &format!("$match>$group{i}"))).clone()
            });
            for (v, error) in [(1, false), (max_us, false), (1, true), (max_us, true)] {
                buf.push(&s, &app, v, error, now, &stats);
            }
        }
        buf.flush(&stats);
        assert_eq!(stats.command_rows().len(), 1000);
        assert_eq!(stats.shape_rows().len(), 1000);
        let grown = rss_kb().saturating_sub(before);
        println!(
            "max_series 1000, every series up to {max_us} µs: +{} MB RSS for 2,000 series ({} KB each)",
            grown / 1024,
            grown / 2000
        );
        drop(stats);
    }
}

fn shape(hash: u64) -> Arc<QueryShape> {
    Arc::new(QueryShape {
        hash: ShapeHash(hash),
        shape: serde_json::json!({ "n": hash }),
    })
}

fn sample<'a>(
    summary: &'a Arc<CommandSummary>,
    meta: &'a Arc<ClientMeta>,
    query: &'a Arc<QueryShape>,
    micros: u64,
    docs: u64,
) -> Sample<'a> {
    Sample {
        summary,
        meta,
        query: Some(query),
        micros,
        error: micros == 0,
        docs,
    }
}

/// Per shape: the samples, errors, documents (getMore documents included)
/// and apps that went in; past max_shapes, samples fold into `other` and
/// each one is counted.
#[test]
fn query_shapes_keep_what_went_in_and_fold_past_the_bound() {
    let stats = Stats::new(100).with_max_shapes(2);
    let mut buf = SampleBuffer::default();
    let now = Instant::now();
    let find = summary("find", "");
    let (a, b, c, d) = (shape(1), shape(2), shape(3), shape(4));
    let apps: Vec<Arc<ClientMeta>> = (0..11).map(|i| meta(&format!("app{i}"))).collect();
    for (i, app) in apps.iter().enumerate() {
        buf.record(sample(&find, app, &a, 100 + i as u64, 3), now, &stats);
    }
    buf.record(sample(&find, &apps[0], &a, 0, 0), now, &stats);
    buf.docs(sample(&find, &apps[0], &a, 0, 5), now, &stats);
    buf.record(sample(&find, &apps[0], &b, 5_000, 1), now, &stats);
    for _ in 0..3 {
        buf.record(sample(&find, &apps[0], &c, 10, 0), now, &stats);
    }
    buf.record(sample(&find, &apps[0], &d, 10, 0), now, &stats);
    buf.flush(&stats);
    assert_eq!(stats.queries_folded.load(Relaxed), 4, "3 of c and 1 of d");
    let rows = stats.query_rows(QuerySort::Count, 10);
    let by_hash = |h: &str| rows.iter().find(|r| r.shape_hash == h).expect("row");
    let ra = by_hash("0000000000000001");
    assert_eq!((ra.count, ra.errors, ra.docs_returned), (12, 1, 11 * 3 + 5));
    assert_eq!(ra.max_us, 110);
    assert_eq!(ra.apps.len(), 9);
    assert_eq!(ra.apps.last().map(String::as_str), Some("+3 more"));
    assert_eq!(ra.shape, serde_json::json!({ "n": 1 }));
    let other = by_hash("other");
    assert_eq!(
        (other.count, &*other.command, &other.shape),
        (4, "other", &serde_json::Value::Null)
    );
    assert_eq!(rows.len(), 3);
    // By total time b (5 ms) comes first; top cuts.
    let top = stats.query_rows(QuerySort::Total, 1);
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].shape_hash, "0000000000000002");
}
