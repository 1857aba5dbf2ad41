//! The exporter thread: takes spans off the bounded queue, batches them
//! (up to max_export_batch_size, or what came within a second) and sends
//! each batch with opentelemetry-otlp's HTTP exporter. Its own OS thread,
//! because that exporter's client (reqwest's blocking one) blocks; nothing
//! on the runtime ever waits for it. Failed exports are counted as dropped
//! and logged at most once a minute.

use super::{OtelCounts, OtelError};
use crate::config::OtelConfig;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// A batch not yet full is sent this long after its first span.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Export errors are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);
/// How often the thread drains the queue (and looks at the stop flag).
const DRAIN_EVERY: Duration = Duration::from_millis(10);

pub(super) struct Handle {
    stop: Arc<AtomicBool>,
    done: Receiver<()>,
}

impl Handle {
    /// Asks the thread to export what is queued and end; waits at most `bound`.
    pub(super) fn stop(self, bound: Duration) {
        self.stop.store(true, Relaxed);
        if self.done.recv_timeout(bound).is_err() {
            warn!(
                bound_ms = bound.as_millis() as u64,
                "otel: the exporter did not finish within its bound; queued spans are lost"
            );
        }
    }
}

pub(super) fn start(
    config: &OtelConfig,
    counts: Arc<OtelCounts>,
) -> Result<(SyncSender<SpanData>, Handle), OtelError> {
    let (queue, spans) = sync_channel(config.max_queue_size);
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done) = sync_channel(1);
    let (built_tx, built) = sync_channel(1);
    let url = config.traces_url();
    let config = config.clone();
    let thread_stop = stop.clone();
    std::thread::Builder::new()
        .name("mongotap-otel".into())
        .spawn(move || {
            // Built on this thread: reqwest's blocking client must not be
            // created or dropped on the async runtime.
            let exporter = match build(&config) {
                Ok(e) => {
                    let _ = built_tx.send(Ok(()));
                    e
                }
                Err(reason) => {
                    let _ = built_tx.send(Err(reason));
                    return;
                }
            };
            let mut worker = Worker {
                exporter,
                counts,
                batch_size: config.max_export_batch_size,
                last_error_log: None,
                errors_since_log: 0,
            };
            worker.run(&spans, &thread_stop);
            let _ = done_tx.send(());
        })?;
    match built.recv() {
        Ok(Ok(())) => {
            info!(url = %url, "otel: exporting spans");
            Ok((queue, Handle { stop, done }))
        }
        Ok(Err(reason)) => Err(OtelError::Build { url, reason }),
        Err(_) => Err(OtelError::Build {
            url,
            reason: "the exporter thread ended".into(),
        }),
    }
}

fn build(config: &OtelConfig) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let headers: HashMap<String, String> = config
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(config.traces_url())
        .with_timeout(Duration::from_millis(config.export_timeout_ms))
        .with_headers(headers)
        .build()
        .map_err(|e| e.to_string())?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .build(),
    );
    Ok(exporter)
}

struct Worker {
    exporter: opentelemetry_otlp::SpanExporter,
    counts: Arc<OtelCounts>,
    batch_size: usize,
    last_error_log: Option<Instant>,
    errors_since_log: u64,
}

impl Worker {
    fn run(&mut self, spans: &Receiver<SpanData>, stop: &AtomicBool) {
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut first_at: Option<Instant> = None;
        loop {
            if stop.load(Relaxed) {
                // What is queued now goes out; later spans are dropped by
                // the closed queue once the thread has ended.
                while let Ok(span) = spans.try_recv() {
                    batch.push(span);
                    if batch.len() >= self.batch_size {
                        self.export(&mut batch);
                    }
                }
                self.export(&mut batch);
                let _ = self.exporter.shutdown();
                return;
            }
            // Drained without blocking, then a sleep: a thread blocked in
            // `recv` would make every `try_send` on the forwarding path
            // wake it (a futex call per span); asleep, it costs senders
            // nothing, and at 10 ms a full default queue (2048) holds
            // 200k spans/s.
            loop {
                match spans.try_recv() {
                    Ok(span) => {
                        first_at.get_or_insert_with(Instant::now);
                        batch.push(span);
                        if batch.len() >= self.batch_size {
                            self.export(&mut batch);
                            first_at = None;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        stop.store(true, Relaxed);
                        break;
                    }
                }
            }
            let due = first_at.is_some_and(|t| t.elapsed() >= BATCH_DELAY);
            if batch.len() >= self.batch_size || (due && !batch.is_empty()) {
                self.export(&mut batch);
                first_at = None;
            }
            if !stop.load(Relaxed) {
                std::thread::sleep(DRAIN_EVERY);
            }
        }
    }

    fn export(&mut self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let spans = std::mem::replace(batch, Vec::with_capacity(self.batch_size));
        match futures_executor::block_on(self.exporter.export(spans)) {
            Ok(()) => {
                self.counts.exported.fetch_add(n, Relaxed);
            }
            Err(e) => {
                self.counts.dropped.fetch_add(n, Relaxed);
                self.errors_since_log += 1;
                let due = self
                    .last_error_log
                    .is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY);
                if due {
                    warn!(
                        error = %e,
                        failed_exports = self.errors_since_log,
                        "otel: export failed; spans dropped (logged at most once a minute)"
                    );
                    self.last_error_log = Some(Instant::now());
                    self.errors_since_log = 0;
                }
            }
        }
    }
}
