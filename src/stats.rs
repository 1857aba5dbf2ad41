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

/// One latency sample waiting in a session's buffer.
pub struct Sample {
    pub summary: Arc<CommandSummary>,
    pub meta: Arc<ClientMeta>,
    pub micros: u64,
    pub error: bool,
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

    /// Merges a batch of samples under one lock. A session's samples come
    /// in runs of the same command summary and client (one connection
    /// repeating one command), so each run costs one series lookup.
    pub fn merge(&self, samples: &mut Vec<Sample>) {
        if samples.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        let mut folded = 0;
        let mut rest = &samples[..];
        while let Some(first) = rest.first() {
            let run_len = rest
                .iter()
                .position(|s| {
                    !Arc::ptr_eq(&s.summary, &first.summary) || !Arc::ptr_eq(&s.meta, &first.meta)
                })
                .unwrap_or(rest.len());
            let (run, next) = rest.split_at(run_len);
            rest = next;
            let (key, was_folded) = self.command_key(&inner.commands, first);
            folded += u64::from(was_folded) * run.len() as u64;
            let series = inner
                .commands
                .entry(key.clone())
                .or_insert_with(Series::new);
            for s in run {
                series.record(s.micros, s.error);
            }
            if first.summary.shape.is_empty() {
                continue;
            }
            let mut shape = ShapeKey {
                db: key.db,
                collection: key.collection,
                app: key.app,
                shape: first.summary.shape.clone(),
            };
            if !inner.shapes.contains_key(&shape) && inner.shapes.len() >= self.max_series {
                shape.shape = Arc::from(OTHER);
                folded += run.len() as u64;
            }
            let series = inner.shapes.entry(shape).or_insert_with(Series::new);
            for s in run {
                series.record(s.micros, s.error);
            }
        }
        samples.clear();
        if folded > 0 {
            self.folded.fetch_add(folded, Relaxed);
        }
    }

    /// The series a sample belongs to, or the `other` series when
    /// `max_series` is reached (then `true`).
    fn command_key(&self, commands: &SeriesMap<SeriesKey>, s: &Sample) -> (SeriesKey, bool) {
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
    samples: Vec<Sample>,
    oldest: Option<Instant>,
}

impl Default for SampleBuffer {
    fn default() -> Self {
        SampleBuffer {
            samples: Vec::with_capacity(FLUSH_SAMPLES),
            oldest: None,
        }
    }
}

impl SampleBuffer {
    /// Adds a sample; publishes the batch when it is full or old enough.
    pub fn push(&mut self, sample: Sample, now: Instant, stats: &Stats) {
        self.oldest.get_or_insert(now);
        self.samples.push(sample);
        if self.samples.len() >= FLUSH_SAMPLES
            || self
                .oldest
                .is_some_and(|t| now.duration_since(t) >= FLUSH_INTERVAL)
        {
            self.flush(stats);
        }
    }

    pub fn flush(&mut self, stats: &Stats) {
        stats.merge(&mut self.samples);
        self.oldest = None;
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}
