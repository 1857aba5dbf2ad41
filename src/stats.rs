//! Latency histograms per (command, db, collection, app, outcome) and per
//! pipeline shape. Sessions buffer samples locally and merge them here in
//! batches, so the forwarding path never waits on a shared lock per reply.

use crate::meta::{ClientMeta, CommandSummary};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// 1 µs to 1 h with 3 significant digits.
const HIST_MAX_US: u64 = 3_600_000_000;
const HIST_SIGFIG: u8 = 3;
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

/// A run of buffered samples: the same command summary from the same
/// client, `len` values in a row. A connection mostly repeats one command,
/// so a batch is a few runs, and a sample costs 8 bytes and no refcount.
struct Run {
    summary: Arc<CommandSummary>,
    meta: Arc<ClientMeta>,
    len: usize,
}

pub struct Series {
    pub ok: Histogram<u64>,
    pub err: Histogram<u64>,
    pub sum_ok_us: u64,
    pub sum_err_us: u64,
}

impl Series {
    fn new() -> Series {
        // Sized for the largest value recorded so far, not for 1 h up
        // front: a fixed 1 µs..1 h histogram at 3 digits is 188 KB, so each
        // series cost ~380 KB and max_series (1,000) series ~400 MB. Most
        // series never see a slow command, and most never see an error.
        let h = || {
            let mut h = Histogram::new_with_bounds(1, 2, HIST_SIGFIG)
                .expect("constant histogram bounds are valid");
            h.auto(true);
            h
        };
        Series {
            ok: h(),
            err: h(),
            sum_ok_us: 0,
            sum_err_us: 0,
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
        if error {
            self.err.saturating_record(v);
            self.sum_err_us = self.sum_err_us.saturating_add(micros);
        } else {
            self.ok.saturating_record(v);
            self.sum_ok_us = self.sum_ok_us.saturating_add(micros);
        }
    }
}

/// Series by label set. Keyed with ahash: the merge hashes each run's key.
pub type SeriesMap<K> = HashMap<K, Series, ahash::RandomState>;

#[derive(Default)]
struct Inner {
    commands: SeriesMap<SeriesKey>,
    shapes: SeriesMap<ShapeKey>,
}

pub struct Stats {
    inner: Mutex<Inner>,
    max_series: usize,
    /// Samples whose labels were folded into "other".
    pub folded: AtomicU64,
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
            folded: AtomicU64::new(0),
        }
    }

    /// Merges a batch of samples under one lock, one series lookup per run.
    fn merge(&self, runs: &[Run], values: &[u64]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        let mut folded = 0;
        let mut rest = values;
        for run in runs {
            let (samples, next) = rest.split_at(run.len.min(rest.len()));
            rest = next;
            let (key, was_folded) = self.command_key(&inner.commands, run);
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
    }

    /// The series a sample belongs to, or the `other` series when
    /// `max_series` is reached (then `true`).
    fn command_key(&self, commands: &SeriesMap<SeriesKey>, s: &Run) -> (SeriesKey, bool) {
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
        };
        (key, true)
    }

    /// Runs `f` over every command series, under the lock (for /metrics).
    pub fn with_commands<T>(&self, f: impl FnOnce(&SeriesMap<SeriesKey>) -> T) -> T {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&inner.commands)
    }

    pub fn command_rows(&self) -> Vec<StatsRow> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        sorted(inner.commands.iter().map(|(k, s)| {
            let labels = [
                ("command", &k.command),
                ("db", &k.db),
                ("collection", &k.collection),
                ("app", &k.app),
            ];
            row(labels, s)
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
    let mut all = s.ok.clone();
    // Same bounds on both, so adding cannot fail.
    let _ = all.add(&s.err);
    StatsRow {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.as_ref())))
            .collect(),
        count: all.len(),
        errors: s.err.len(),
        p50_us: all.value_at_quantile(0.5),
        p90_us: all.value_at_quantile(0.9),
        p99_us: all.value_at_quantile(0.99),
        p999_us: all.value_at_quantile(0.999),
        max_us: all.max(),
    }
}

/// A session's local sample buffer.
pub struct SampleBuffer {
    runs: Vec<Run>,
    /// Latencies in µs, with `ERROR_BIT` set for errors; `runs` says whose.
    values: Vec<u64>,
    oldest: Option<Instant>,
}

impl Default for SampleBuffer {
    fn default() -> Self {
        SampleBuffer {
            runs: Vec::new(),
            values: Vec::with_capacity(FLUSH_SAMPLES),
            oldest: None,
        }
    }
}

impl SampleBuffer {
    /// Adds a sample; publishes the batch when it is full or old enough.
    pub fn push(
        &mut self,
        summary: &Arc<CommandSummary>,
        meta: &Arc<ClientMeta>,
        micros: u64,
        error: bool,
        now: Instant,
        stats: &Stats,
    ) {
        self.oldest.get_or_insert(now);
        match self.runs.last_mut() {
            Some(run) if Arc::ptr_eq(&run.summary, summary) && Arc::ptr_eq(&run.meta, meta) => {
                run.len += 1
            }
            _ => self.runs.push(Run {
                summary: summary.clone(),
                meta: meta.clone(),
                len: 1,
            }),
        }
        let micros = micros.min(!ERROR_BIT);
        self.values
            .push(if error { micros | ERROR_BIT } else { micros });
        if self.values.len() >= FLUSH_SAMPLES
            || self
                .oldest
                .is_some_and(|t| now.duration_since(t) >= FLUSH_INTERVAL)
        {
            self.flush(stats);
        }
    }

    pub fn flush(&mut self, stats: &Stats) {
        if !self.values.is_empty() {
            stats.merge(&self.runs, &self.values);
        }
        self.runs.clear();
        self.values.clear();
        self.oldest = None;
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
