//! `/metrics` in the Prometheus text format: a classic histogram built from
//! the HDR histograms at scrape time, plus the counters and gauges.

use crate::observe::stats::{Outcome, QueryTable, SeriesKey, SeriesMap, BUCKETS_US, OTHER};
use crate::observe::{Observatory, RewriteCounts};
use crate::shared::Shared;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

struct ProxyCollector(Arc<Shared>);

impl std::fmt::Debug for ProxyCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyCollector")
    }
}

/// Per-bucket (not cumulative) counts with their upper bounds in seconds,
/// +Inf last: what `encode_histogram` takes.
fn bucket_counts(o: &Outcome) -> Vec<(f64, u64)> {
    BUCKETS_US
        .iter()
        .map(|&us| us as f64 / 1e6)
        .chain([f64::INFINITY])
        .zip(o.buckets)
        .collect()
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn histogram_family(
    enc: &mut DescriptorEncoder,
    series: &SeriesMap<SeriesKey>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(
        "mongotap_command_duration",
        "Command latency as seen on the wire, from the whole request to the whole (last) reply",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (k, s) in series {
        for (outcome, o) in [("ok", &s.ok), ("error", &s.err)] {
            if o.count == 0 {
                continue;
            }
            let mut labels = vec![
                ("command", &*k.command),
                ("db", &*k.db),
                ("collection", &*k.collection),
                ("app", &*k.app),
                ("outcome", outcome),
            ];
            if let Some(member) = &k.member {
                labels.push(("member", member));
            }
            family
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    o.sum_us as f64 / 1e6,
                    o.count,
                    &bucket_counts(o),
                    None,
                )?;
        }
    }
    Ok(())
}

/// Query shapes exported to Prometheus: the busiest by total time. The
/// full table is /stats/queries; a scrape stays small whatever max_shapes.
const TOP_SHAPES: usize = 20;

/// `mongotap_query_shape_duration_seconds{command,db,collection,shape_hash}`
/// for the `TOP_SHAPES` shapes with the most total time. Labelled by hash,
/// never by the shape's text.
fn query_family(enc: &mut DescriptorEncoder, table: &QueryTable) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(
        "mongotap_query_shape_duration",
        "Latency per query shape (see /stats/queries for the shape behind a shape_hash), for the 20 shapes with the most total time",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (k, e) in table.top_by_total(TOP_SHAPES) {
        let hash = k.hash.map_or_else(|| OTHER.to_string(), |h| h.to_string());
        let labels = [
            ("command", &*k.command),
            ("db", &*k.db),
            ("collection", &*k.collection),
            ("shape_hash", hash.as_str()),
        ];
        let o = e.outcome();
        family
            .encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                o.sum_us as f64 / 1e6,
                o.count,
                &bucket_counts(&o),
                None,
            )?;
    }
    Ok(())
}

/// `mongotap_tls_handshake_failures_total{side}`: kept apart from
/// decode errors, since no frame was ever read.
fn tls_failures(enc: &mut DescriptorEncoder, s: &Observatory) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(
        "mongotap_tls_handshake_failures",
        "TLS handshakes that failed, by the side that was being connected (a plaintext client on a TLS listener counts on side client)",
        None,
        MetricType::Counter,
    )?;
    for (side, n) in [
        ("client", &s.counters.tls_handshake_failures_client),
        ("upstream", &s.counters.tls_handshake_failures_upstream),
    ] {
        ConstCounter::new(n.load(Relaxed)).encode(family.encode_family(&[("side", side)])?)?;
    }
    Ok(())
}

/// `mongotap_rewrites_total{command,field}` (enforced) and the same for
/// dry-run as `mongotap_rewrites_dry_run_total`.
fn rewrites(enc: &mut DescriptorEncoder, s: &Observatory) -> Result<(), std::fmt::Error> {
    for (dry_run, name, help) in [
        (
            false,
            "mongotap_rewrites",
            "Fields rewritten by rewrite rules",
        ),
        (
            true,
            "mongotap_rewrites_dry_run",
            "Fields a dry-run rewrite rule would have rewritten",
        ),
    ] {
        let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for e in s.rewrite_counts.iter() {
            for field in RewriteCounts::FIELDS {
                let n = e.value().get(field, dry_run);
                if n == 0 {
                    continue;
                }
                let labels = [("command", e.key().as_str()), ("field", field)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

/// One gauge per replica-set member: 1 while mongotap's own probe gets a
/// hello back from it. Nothing in direct mode.
fn member_up(enc: &mut DescriptorEncoder, s: &Observatory) -> Result<(), std::fmt::Error> {
    let Some(set) = &s.replica_set else {
        return Ok(());
    };
    let mut family = enc.encode_descriptor(
        "mongotap_topology_member_up",
        "1 while the replica-set member answers mongotap's own hello probe, 0 otherwise (see /topology)",
        None,
        MetricType::Gauge,
    )?;
    for m in set.members() {
        let labels = [("member", &*m.name)];
        let up = i64::from(m.up() == Some(true));
        ConstGauge::new(up).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for ProxyCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let health = &self.0.health;
        let s = &*self.0.observe;
        let c = &s.counters;
        s.stats
            .with_commands(|series| histogram_family(&mut enc, series))?;
        s.stats
            .with_queries(|table| query_family(&mut enc, table))?;
        gauge(
            &mut enc,
            "mongotap_inflight_commands",
            "Commands waiting for a reply (awaitable hello and awaitData getMore excluded)",
            s.tracker.inflight_count() as i64,
        )?;
        counter(
            &mut enc,
            "mongotap_stalled_commands",
            "Stalled-command reports (a command pending longer than stall_ms; repeats counted)",
            c.stalled.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "mongotap_never_replied",
            "Commands whose upstream connection closed before the reply",
            c.never_replied.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "mongotap_abandoned",
            "Commands whose client closed the connection before the reply",
            c.abandoned.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "mongotap_killed",
            "Commands ended from the admin endpoint (POST /inflight/{conn}/{request_id}/kill)",
            c.killed.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "mongotap_failed_commands",
            "Replies with ok: 0, writeErrors or writeConcernError",
            c.failed.load(Relaxed),
        )?;
        rewrites(&mut enc, s)?;
        counter(
            &mut enc,
            "mongotap_rewrites_skipped_op_query",
            "Legacy OP_QUERY commands a rewrite rule matched but that were forwarded unchanged",
            c.rewrites_skipped_op_query.load(Relaxed),
        )?;
        gauge(
            &mut enc,
            "mongotap_connections_active",
            "Client connections open now",
            c.connections_active.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "mongotap_connections",
            "Client connections accepted",
            c.connections_total.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "mongotap_connections_refused",
            "Client connections refused at max_connections",
            c.connections_refused.load(Relaxed),
        )?;
        gauge(
            &mut enc,
            "mongotap_upstream_up",
            "1 while the upstream answers the health probe's hello, 0 otherwise (see /readyz)",
            i64::from(match &s.replica_set {
                None => health.is_up(),
                Some(set) => set.any_up(),
            }),
        )?;
        member_up(&mut enc, s)?;
        counter(
            &mut enc,
            "mongotap_upstream_connect_errors",
            "Failed connections to the upstream",
            c.upstream_connect_errors.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "mongotap_decode_errors",
            "Malformed frames (each closed its connection)",
            c.decode_errors.load(Relaxed),
        )?;
        tls_failures(&mut enc, s)?;
        counter(
            &mut enc,
            "mongotap_unknown_opcodes",
            "Frames with an opcode mongotap does not parse (forwarded)",
            c.unknown_opcodes.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "mongotap_fire_and_forget",
            "Requests with moreToCome (w:0): no reply expected",
            c.fire_and_forget.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "mongotap_unmatched_replies",
            "Replies whose responseTo matched no pending request",
            c.unmatched_replies.load(Relaxed),
        )?;
        gauge(
            &mut enc,
            "mongotap_cursors_open",
            "Cursors open on the upstream",
            s.cursors.len() as i64,
        )?;
        counter(
            &mut enc,
            "mongotap_cursors_leaked",
            "Cursors left open when their connection closed, or idle past cursor_idle_ms",
            c.cursors_leaked.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "mongotap_series_folded",
            "Samples whose labels were folded into \"other\" at max_series",
            s.stats.folded.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "mongotap_query_shapes_folded",
            "Query-shape samples folded into the \"other\" row at watch.max_shapes",
            s.stats.queries_folded.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "mongotap_capture_dropped",
            "Capture records dropped because the writer fell behind",
            s.capture.dropped.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "mongotap_diagnose_dropped",
            "Aggregate diagnoses not started because diagnose.max_running were running",
            self.0.diagnoser.dropped(),
        )?;
        // Only with [otel] on: absent series say export is off.
        if let Some(otel) = &s.otel {
            counter(
                &mut enc,
                "mongotap_otel_dropped",
                "Spans not delivered: the export queue was full, or their export failed",
                otel.counts.dropped.load(Relaxed),
            )?;
            counter(
                &mut enc,
                "mongotap_otel_exported",
                "Spans the OTLP collector accepted",
                otel.counts.exported.load(Relaxed),
            )?;
        }
        Ok(())
    }
}

pub fn render(shared: Arc<Shared>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProxyCollector(shared)));
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}
