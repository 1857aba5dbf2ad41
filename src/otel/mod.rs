//! OpenTelemetry export (`[otel]`): spans built by observe are handed to
//! `Otel::submit`, which never blocks: a bounded queue feeds one exporter
//! thread (`export.rs`) running the OTLP/HTTP exporter of
//! `opentelemetry-otlp`. A full queue drops the span and counts it.
//!
//! This layer knows only `config`; what a span says is observe's business.

mod export;
pub mod traceparent;

use crate::config::OtelConfig;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
pub use traceparent::TraceParent;

#[derive(Debug, Error)]
pub enum OtelError {
    #[error("cannot set up the OTLP exporter for {url}: {reason}")]
    Build { url: String, reason: String },
    #[error("cannot start the OTLP exporter thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What the exporter counted, for /metrics.
#[derive(Debug, Default)]
pub struct OtelCounts {
    /// Spans not delivered: the queue was full, or their export failed.
    pub dropped: AtomicU64,
    /// Spans the collector accepted.
    pub exported: AtomicU64,
}

/// A command span's ids, chosen when the request is seen so that a
/// `stalled` span can name it before it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The app's span, when the command's comment carried a traceparent.
    pub parent: Option<TraceParent>,
}

/// The exporter, shared by every connection through the `Observatory`.
pub struct Otel {
    queue: SyncSender<SpanData>,
    pub counts: Arc<OtelCounts>,
    /// Trace ids below this (their low 64 bits, as the SDK's
    /// TraceIdRatioBased reads them) are kept by head sampling.
    keep_below: u64,
    ids: RandomIdGenerator,
    pub scope: InstrumentationScope,
    exporter: Mutex<Option<export::Handle>>,
}

impl Otel {
    /// Builds the exporter and starts its thread.
    pub fn start(config: &OtelConfig) -> Result<Otel, OtelError> {
        let counts = Arc::new(OtelCounts::default());
        let (queue, handle) = export::start(config, counts.clone())?;
        Ok(Otel {
            queue,
            counts,
            keep_below: ratio_threshold(config.sample_ratio),
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("mongotap")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            exporter: Mutex::new(Some(handle)),
        })
    }

    /// Ids for a new command span: a child of `parent` in its trace, or
    /// the root of a new one.
    pub fn new_ids(&self, parent: Option<TraceParent>) -> SpanIds {
        SpanIds {
            trace_id: parent.map_or_else(|| self.ids.new_trace_id(), |p| p.trace_id),
            span_id: self.ids.new_span_id(),
            parent,
        }
    }

    /// Head sampling: an app that sampled its trace gets our span in it;
    /// otherwise the trace id decides, so every span of a trace agrees.
    pub fn sampled(&self, ids: &SpanIds) -> bool {
        if ids.parent.is_some_and(|p| p.sampled) {
            return true;
        }
        let low = u64::from_be_bytes(low_half(ids.trace_id));
        (low >> 1) < self.keep_below
    }

    /// Queues a finished span. Never blocks: a full queue drops it.
    pub fn submit(&self, span: SpanData) {
        match self.queue.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counts.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Exports what is queued and stops the thread, waiting at most
    /// `bound`. Blocking: call it off the runtime.
    pub fn stop(&self, bound: Duration) {
        let handle = self
            .exporter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            h.stop(bound);
        }
    }
}

fn low_half(id: TraceId) -> [u8; 8] {
    let bytes = id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    low
}

/// `ratio` of the 63-bit range: 1.0 keeps all, 0.0 none.
fn ratio_threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else if ratio <= 0.0 {
        0
    } else {
        (ratio * (1u64 << 63) as f64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(low: u64, parent: Option<TraceParent>) -> SpanIds {
        SpanIds {
            trace_id: TraceId::from(u128::from(low) | (7u128 << 64)),
            span_id: SpanId::from(1u64),
            parent,
        }
    }

    #[test]
    fn the_ratio_keeps_that_share_of_trace_ids() {
        let t = ratio_threshold(0.25);
        let kept = (0..1000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .filter(|low| (low >> 1) < t)
            .count();
        assert!((200..300).contains(&kept), "{kept} of 1000 kept at 0.25");
        assert_eq!(ratio_threshold(1.0), u64::MAX);
        assert_eq!(ratio_threshold(0.0), 0);
    }

    #[test]
    fn a_sampled_parent_keeps_the_span_at_any_ratio() {
        let parent = TraceParent {
            trace_id: TraceId::from(9u128),
            span_id: SpanId::from(3u64),
            sampled: true,
        };
        let (queue, _rx) = std::sync::mpsc::sync_channel(1);
        let otel = Otel {
            queue,
            counts: Arc::default(),
            keep_below: 0,
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("t").build(),
            exporter: Mutex::new(None),
        };
        assert!(otel.sampled(&ids(5, Some(parent))));
        assert!(!otel.sampled(&ids(5, None)));
        let unsampled = TraceParent {
            sampled: false,
            ..parent
        };
        assert!(!otel.sampled(&ids(5, Some(unsampled))));
        // A child keeps the app's trace id under a span id of its own.
        let span_ids = otel.new_ids(Some(parent));
        assert_eq!(span_ids.trace_id, parent.trace_id);
        assert_ne!(span_ids.span_id, parent.span_id);
    }
}
