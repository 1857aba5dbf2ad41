//! A session's sample buffer: latencies (and documents returned) kept in
//! the connection's own memory and merged into `Stats` in batches.

use super::{Stats, ERROR_BIT, FLUSH_INTERVAL, FLUSH_SAMPLES};
use crate::observe::meta::{ClientMeta, CommandSummary};
use crate::observe::queries::QueryShape;
use std::sync::Arc;
use std::time::Instant;

/// A run of buffered samples: the same command summary from the same
/// client, `len` values in a row. A connection mostly repeats one command,
/// so a batch is a few runs, and a sample costs 8 bytes and no refcount.
pub(super) struct Run {
    pub(super) summary: Arc<CommandSummary>,
    pub(super) meta: Arc<ClientMeta>,
    /// The query shape, for find, aggregate, count, distinct, update,
    /// delete and findAndModify.
    pub(super) query: Option<Arc<QueryShape>>,
    /// Samples in the run: 0 for a run that only carries documents (a
    /// getMore's, counted for the shape that opened the cursor).
    pub(super) len: usize,
    /// Documents the run's replies returned.
    pub(super) docs: u64,
}

impl Run {
    fn is(&self, s: &Sample<'_>) -> bool {
        Arc::ptr_eq(&self.summary, s.summary)
            && Arc::ptr_eq(&self.meta, s.meta)
            && match (&self.query, s.query) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

/// One reply's sample, as the reply observer hands it over.
pub struct Sample<'a> {
    pub summary: &'a Arc<CommandSummary>,
    pub meta: &'a Arc<ClientMeta>,
    pub query: Option<&'a Arc<QueryShape>>,
    pub micros: u64,
    pub error: bool,
    /// Documents returned (cursor batch, or count's `n`).
    pub docs: u64,
}

/// A session's local sample buffer.
pub struct SampleBuffer {
    /// The replica-set member of the connection, in replica-set mode: a
    /// label of every series this buffer records into.
    member: Option<Arc<str>>,
    runs: Vec<Run>,
    /// Latencies in µs, with `ERROR_BIT` set for errors; `runs` says whose.
    values: Vec<u64>,
    oldest: Option<Instant>,
}

impl Default for SampleBuffer {
    fn default() -> Self {
        SampleBuffer {
            member: None,
            runs: Vec::new(),
            values: Vec::with_capacity(FLUSH_SAMPLES),
            oldest: None,
        }
    }
}

impl SampleBuffer {
    /// Adds a sample without a query shape (see `record`).
    #[cfg(test)]
    pub fn push(
        &mut self,
        summary: &Arc<CommandSummary>,
        meta: &Arc<ClientMeta>,
        micros: u64,
        error: bool,
        now: Instant,
        stats: &Stats,
    ) {
        let sample = Sample {
            summary,
            meta,
            query: None,
            micros,
            error,
            docs: 0,
        };
        self.record(sample, now, stats);
    }

    /// Adds a sample; publishes the batch when it is full or old enough.
    pub fn record(&mut self, s: Sample<'_>, now: Instant, stats: &Stats) {
        self.run_for(&s, now).len += 1;
        let micros = s.micros.min(!ERROR_BIT);
        self.values
            .push(if s.error { micros | ERROR_BIT } else { micros });
        self.flush_if_due(now, stats);
    }

    /// Adds documents a getMore returned to the shape whose cursor it
    /// read (`s.micros` and `s.error` are ignored: the getMore's latency
    /// is its own sample).
    pub fn docs(&mut self, s: Sample<'_>, now: Instant, stats: &Stats) {
        self.run_for(&s, now);
        self.flush_if_due(now, stats);
    }

    /// The run `s` belongs to, started if the last one is another's; the
    /// sample's documents are added to it.
    fn run_for(&mut self, s: &Sample<'_>, now: Instant) -> &mut Run {
        self.oldest.get_or_insert(now);
        if !self.runs.last().is_some_and(|run| run.is(s)) {
            self.runs.push(Run {
                summary: s.summary.clone(),
                meta: s.meta.clone(),
                query: s.query.cloned(),
                len: 0,
                docs: 0,
            });
        }
        let i = self.runs.len() - 1;
        let run = &mut self.runs[i];
        run.docs = run.docs.saturating_add(s.docs);
        run
    }

    fn flush_if_due(&mut self, now: Instant, stats: &Stats) {
        if self.values.len() >= FLUSH_SAMPLES
            || self.runs.len() >= FLUSH_SAMPLES
            || self
                .oldest
                .is_some_and(|t| now.duration_since(t) >= FLUSH_INTERVAL)
        {
            self.flush(stats);
        }
    }

    pub fn flush(&mut self, stats: &Stats) {
        if !self.runs.is_empty() {
            stats.merge(&self.runs, &self.values, self.member.as_ref());
        }
        self.runs.clear();
        self.values.clear();
        self.oldest = None;
    }

    /// A buffer whose series carry a `member` label (replica-set mode).
    pub fn for_member(member: Option<Arc<str>>) -> Self {
        SampleBuffer {
            member,
            ..SampleBuffer::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}
