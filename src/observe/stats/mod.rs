//! Latency histograms per (command, db, collection, app, outcome) and per
//! pipeline shape. Sessions buffer samples locally and merge them here in
//! batches, so the forwarding path never waits on a shared lock per reply.
//! The query-shape table (`/stats/queries`) is fed by the same batches.

mod buffer;
mod queries;

use buffer::Run;
pub use buffer::{Sample, SampleBuffer};
pub use queries::{QueryRow, QuerySort, QueryTable};

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Latencies are clamped to 1 µs .. 1 h before they are recorded.
const HIST_MAX_US: u64 = 3_600_000_000;
/// Two significant digits: a quantile is at most 1/128 (0.8 %) above the
/// sample it stands for. Three digits cost 8× the memory per series
/// (188 KB against 27 KB for a series that has seen a 1 h command), and
/// max_series is per map: 1,000 series at three digits could reach
/// ~190 MB. `max_us` is kept exactly, and the Prometheus buckets are
/// counted exactly, so neither depends on this precision.
const HIST_SIGFIG: u8 = 2;
/// Upper bounds of the Prometheus buckets in µs (100 µs to 60 s); a
/// sample counts in the first bucket whose bound is at or above it.
pub const BUCKETS_US: [u64; 18] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];
/// A session publishes its samples when it has this many, or when the
/// oldest is this old (and again when it closes).
const FLUSH_SAMPLES: usize = 64;
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// The label value every label takes once `max_series` is reached.
pub const OTHER: &str = "other";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub command: Arc<str>,
    pub db: Arc<str>,
    pub collection: Arc<str>,
    pub app: Arc<str>,
    /// The replica-set member, in replica-set mode.
    pub member: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShapeKey {
    pub db: Arc<str>,
    pub collection: Arc<str>,
    pub app: Arc<str>,
    pub shape: Arc<str>,
}

/// Marks an error in a buffered latency value (a latency never needs the
/// top bit).
const ERROR_BIT: u64 = 1 << 63;

/// Samples of one outcome (ok or error), counted exactly per Prometheus
/// bucket (the last slot is +Inf).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub buckets: [u64; BUCKETS_US.len() + 1],
    pub count: u64,
    pub sum_us: u64,
}

impl Outcome {
    fn record(&mut self, micros: u64) {
        let i = BUCKETS_US.partition_point(|&bound| bound < micros);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(micros);
    }
}

pub struct Series {
    /// Every sample, ok or error, for the quantiles in /stats. It starts
    /// small and grows to fit the largest value recorded (`record`
    /// resizes an auto-sizing histogram; `saturating_record` would clamp
    /// to its current range instead, which is how every latency above
    /// ~2 ms once became 2 µs).
    pub all: Histogram<u64>,
    pub ok: Outcome,
    pub err: Outcome,
    /// The largest sample, exactly (the histogram rounds up).
    pub max_us: u64,
}

impl Series {
    fn new() -> Series {
        // Sized for the largest value recorded so far, not for 1 h up
        // front: most series never see a slow command.
        #[allow(clippy::expect_used, reason = "constant bounds; only bad bounds fail")]
        let mut all = Histogram::new_with_bounds(1, 2, HIST_SIGFIG)
            .expect("constant histogram bounds are valid");
        all.auto(true);
        Series {
            all,
            ok: Outcome::default(),
            err: Outcome::default(),
            max_us: 0,
        }
    }

    /// Records buffered values (see `ERROR_BIT`).
    fn record_all(&mut self, values: &[u64]) {
        for &v in values {
            self.record(v & !ERROR_BIT, v & ERROR_BIT != 0);
        }
    }

    fn record(&mut self, micros: u64, error: bool) {
        let v = micros.clamp(1, HIST_MAX_US);
        if self.all.record(v).is_err() {
            // Only if growing the histogram failed (v is within bounds).
            self.all.saturating_record(v);
        }
        self.max_us = self.max_us.max(v);
        if error {
            self.err.record(v);
        } else {
            self.ok.record(v);
        }
    }

    /// The value at quantile `q`: an HDR bucket's upper edge, never above
    /// the exact maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        self.all.value_at_quantile(q).min(self.max_us)
    }
}

/// Series by label set. Keyed with ahash: the merge hashes each run's key.
pub type SeriesMap<K> = HashMap<K, Series, ahash::RandomState>;

#[derive(Default)]
struct Inner {
    commands: SeriesMap<SeriesKey>,
    shapes: SeriesMap<ShapeKey>,
    queries: queries::QueryTable,
}

pub struct Stats {
    inner: Mutex<Inner>,
    max_series: usize,
    /// Rows of the query-shape table before samples fold into `other`.
    max_shapes: usize,
    /// Samples whose labels were folded into "other".
    pub folded: AtomicU64,
    /// Samples of query shapes folded into `other` at `max_shapes`.
    pub queries_folded: AtomicU64,
}

/// One row of `/stats` (field names are a contract).
#[derive(Debug, Serialize)]
pub struct StatsRow {
    #[serde(flatten)]
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub count: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

fn label(s: &str) -> Arc<str> {
    if s.is_empty() {
        Arc::from("unknown")
    } else {
        Arc::from(s)
    }
}

impl Stats {
    pub fn new(max_series: usize) -> Stats {
        Stats {
            inner: Mutex::new(Inner::default()),
            max_series,
            max_shapes: 1_000,
            folded: AtomicU64::new(0),
            queries_folded: AtomicU64::new(0),
        }
    }

    /// The bound of the query-shape table (`watch.max_shapes`).
    pub fn with_max_shapes(self, max_shapes: usize) -> Stats {
        Stats { max_shapes, ..self }
    }

    /// Merges a batch of samples under one lock, one series lookup per run.
    fn merge(&self, runs: &[Run], values: &[u64], member: Option<&Arc<str>>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        let mut folded = 0;
        let mut queries_folded = 0;
        let mut rest = values;
        for run in runs {
            let (samples, next) = rest.split_at(run.len.min(rest.len()));
            rest = next;
            if let Some(shape) = &run.query {
                let sample = queries::QuerySample {
                    command: &run.summary.command,
                    db: &run.summary.db,
                    collection: &run.summary.collection,
                    app: &run.meta.app,
                    shape,
                    values: samples,
                    docs: run.docs,
                };
                queries_folded += inner.queries.record(sample, self.max_shapes);
            }
            if samples.is_empty() {
                continue;
            }
            let (key, was_folded) = self.command_key(&inner.commands, run, member);
            folded += u64::from(was_folded) * samples.len() as u64;
            let series = inner
                .commands
                .entry(key.clone())
                .or_insert_with(Series::new);
            series.record_all(samples);
            if run.summary.shape.is_empty() {
                continue;
            }
            let mut shape = ShapeKey {
                db: key.db,
                collection: key.collection,
                app: key.app,
                shape: run.summary.shape.clone(),
            };
            if !inner.shapes.contains_key(&shape) && inner.shapes.len() >= self.max_series {
                shape.shape = Arc::from(OTHER);
                folded += samples.len() as u64;
            }
            inner
                .shapes
                .entry(shape)
                .or_insert_with(Series::new)
                .record_all(samples);
        }
        if folded > 0 {
            self.folded.fetch_add(folded, Relaxed);
        }
        if queries_folded > 0 {
            self.queries_folded.fetch_add(queries_folded, Relaxed);
        }
    }

    /// The series a sample belongs to, or the `other` series when
    /// `max_series` is reached (then `true`).
    fn command_key(
        &self,
        commands: &SeriesMap<SeriesKey>,
        s: &Run,
        member: Option<&Arc<str>>,
    ) -> (SeriesKey, bool) {
        let key = SeriesKey {
            command: s.summary.command.clone(),
            db: s.summary.db.clone(),
            collection: if s.summary.collection.is_empty() {
                label("")
            } else {
                s.summary.collection.clone()
            },
            app: if s.meta.app.is_empty() {
                label("")
            } else {
                s.meta.app.clone()
            },
            member: member.cloned(),
        };
        if commands.contains_key(&key) || commands.len() < self.max_series {
            return (key, false);
        }
        let other: Arc<str> = Arc::from(OTHER);
        let key = SeriesKey {
            command: other.clone(),
            db: other.clone(),
            collection: other.clone(),
            app: other,
            member: None,
        };
        (key, true)
    }

    /// Runs `f` over every command series, under the lock (for /metrics).
    pub fn with_commands<T>(&self, f: impl FnOnce(&SeriesMap<SeriesKey>) -> T) -> T {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&inner.commands)
    }

    /// Runs `f` over the query-shape table, under the lock (for /metrics).
    pub fn with_queries<T>(&self, f: impl FnOnce(&QueryTable) -> T) -> T {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&inner.queries)
    }

    /// `/stats/queries`: the top `top` shapes by `sort`.
    pub fn query_rows(&self, sort: QuerySort, top: usize) -> Vec<QueryRow> {
        self.with_queries(|q| q.rows(sort, top))
    }

    pub fn command_rows(&self) -> Vec<StatsRow> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        sorted(inner.commands.iter().map(|(k, s)| {
            let mut row = row(
                [
                    ("command", &k.command),
                    ("db", &k.db),
                    ("collection", &k.collection),
                    ("app", &k.app),
                ],
                s,
            );
            if let Some(member) = &k.member {
                row.labels
                    .insert("member".into(), serde_json::Value::from(&**member));
            }
            row
        }))
    }

    pub fn shape_rows(&self) -> Vec<StatsRow> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        sorted(inner.shapes.iter().map(|(k, s)| {
            let labels = [
                ("shape", &k.shape),
                ("db", &k.db),
                ("collection", &k.collection),
                ("app", &k.app),
            ];
            row(labels, s)
        }))
    }
}

/// Busiest series first.
fn sorted(rows: impl Iterator<Item = StatsRow>) -> Vec<StatsRow> {
    let mut rows: Vec<StatsRow> = rows.collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.count));
    rows
}

fn row(labels: [(&str, &Arc<str>); 4], s: &Series) -> StatsRow {
    StatsRow {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.as_ref())))
            .collect(),
        count: s.all.len(),
        errors: s.err.count,
        p50_us: s.quantile(0.5),
        p90_us: s.quantile(0.9),
        p99_us: s.quantile(0.99),
        p999_us: s.quantile(0.999),
        max_us: s.max_us,
    }
}

#[cfg(test)]
mod tests;
