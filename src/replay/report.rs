//! The replay report: per command and namespace, what the capture saw
//! against what the live server did. Written as JSON (`--report FILE`) and
//! printed as a table.

use super::plan::{Op, Plan};
use serde::Serialize;
use std::collections::BTreeMap;

/// What happened to one request during the replay.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Not sent, and why.
    pub skipped: Option<&'static str>,
    /// Send to last reply; None for fire-and-forget requests.
    pub latency_ns: Option<u64>,
    pub docs: u64,
    pub error: bool,
    /// `codeName` (or the code, or the transport error) of a failure.
    pub error_name: Option<String>,
}

/// What happened on one replayed connection.
#[derive(Debug, Default, Clone)]
pub struct ConnResult {
    /// One per planned request, in order.
    pub outcomes: Vec<Outcome>,
    /// The error that stopped the connection, if one did.
    pub failure: Option<String>,
    /// The connection was opened (hello and login succeeded).
    pub opened: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub files: Vec<String>,
    /// Speed factor; null with --max-speed.
    pub speed: Option<f64>,
    pub captured_records: u64,
    pub connections: usize,
    pub requests: usize,
    pub sent: u64,
    pub errors: u64,
    pub duration_ms: u64,
    pub ops_per_sec: f64,
    /// Captured requests that were never part of the plan, by reason.
    pub left_out: BTreeMap<String, u64>,
    pub commands: Vec<Row>,
    /// One entry per replayed connection.
    pub connections_detail: Vec<ConnRow>,
}

#[derive(Debug, Serialize)]
pub struct ConnRow {
    /// mongotap's id for the captured connection.
    pub conn: u64,
    /// The captured client's address and app name.
    pub client: String,
    pub app: String,
    pub requests: usize,
    pub errors: u64,
    /// Why the live connection could not be opened or broke off.
    pub failure: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub command: String,
    pub namespace: String,
    /// Captured requests for this command and namespace.
    pub count: u64,
    pub sent: u64,
    /// Not sent (e.g. a getMore whose live cursor was already exhausted).
    pub skipped: u64,
    /// Why, with counts.
    pub skip_reasons: BTreeMap<String, u64>,
    pub fire_and_forget: u64,
    pub rewritten: u64,
    pub captured_errors: u64,
    pub errors: u64,
    /// Error names seen live, with counts.
    pub error_names: BTreeMap<String, u64>,
    pub captured_p50_us: Option<u64>,
    pub captured_p99_us: Option<u64>,
    pub replayed_p50_us: Option<u64>,
    pub replayed_p99_us: Option<u64>,
    /// Documents returned (firstBatch/nextBatch), captured and live.
    pub captured_docs: u64,
    pub replayed_docs: u64,
    pub docs_diff: i64,
}

#[derive(Default)]
struct Acc {
    count: u64,
    sent: u64,
    skipped: u64,
    skip_reasons: BTreeMap<String, u64>,
    fire_and_forget: u64,
    rewritten: u64,
    captured_errors: u64,
    errors: u64,
    error_names: BTreeMap<String, u64>,
    captured: Vec<u64>,
    replayed: Vec<u64>,
    captured_docs: u64,
    replayed_docs: u64,
}

/// The rows, one per (command, namespace), sorted by both.
pub fn rows<'a>(pairs: impl Iterator<Item = (&'a Op, &'a Outcome)>) -> Vec<Row> {
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for (op, out) in pairs {
        let a = acc
            .entry((op.command.clone(), op.namespace.clone()))
            .or_default();
        a.count += 1;
        a.rewritten += u64::from(op.rewritten);
        a.fire_and_forget += u64::from(op.fire_and_forget);
        a.captured_errors += u64::from(op.captured.error);
        a.captured_docs += op.captured.docs;
        if let Some(ns) = op.captured.latency_ns {
            a.captured.push(ns);
        }
        if let Some(why) = out.skipped {
            a.skipped += 1;
            *a.skip_reasons.entry(why.to_string()).or_default() += 1;
            continue;
        }
        a.sent += 1;
        a.replayed_docs += out.docs;
        if let Some(ns) = out.latency_ns {
            a.replayed.push(ns);
        }
        if out.error {
            a.errors += 1;
            let name = out.error_name.clone().unwrap_or_else(|| "error".into());
            *a.error_names.entry(name).or_default() += 1;
        }
    }
    acc.into_iter()
        .map(|((command, namespace), mut a)| Row {
            command,
            namespace,
            count: a.count,
            sent: a.sent,
            skipped: a.skipped,
            skip_reasons: a.skip_reasons,
            fire_and_forget: a.fire_and_forget,
            rewritten: a.rewritten,
            captured_errors: a.captured_errors,
            errors: a.errors,
            error_names: a.error_names,
            captured_p50_us: percentile(&mut a.captured, 50.0),
            captured_p99_us: percentile(&mut a.captured, 99.0),
            replayed_p50_us: percentile(&mut a.replayed, 50.0),
            replayed_p99_us: percentile(&mut a.replayed, 99.0),
            captured_docs: a.captured_docs,
            replayed_docs: a.replayed_docs,
            docs_diff: a.replayed_docs as i64 - a.captured_docs as i64,
        })
        .collect()
}

/// Nearest-rank percentile, in µs.
fn percentile(ns: &mut [u64], p: f64) -> Option<u64> {
    if ns.is_empty() {
        return None;
    }
    ns.sort_unstable();
    let rank = ((p / 100.0) * ns.len() as f64).ceil() as usize;
    Some(ns[rank.clamp(1, ns.len()) - 1] / 1_000)
}

impl Report {
    /// `results` holds one entry per planned connection.
    pub fn new(plan: &Plan, results: &[ConnResult]) -> Report {
        let outcomes: Vec<&Vec<Outcome>> = results.iter().map(|r| &r.outcomes).collect();
        let pairs = plan
            .conns
            .iter()
            .zip(outcomes.iter())
            .flat_map(|(c, outs)| c.ops.iter().zip(outs.iter()));
        let commands = rows(pairs);
        Report {
            target: String::new(),
            files: Vec::new(),
            speed: None,
            captured_records: plan.records,
            connections: plan.conns.len(),
            requests: plan.ops(),
            sent: commands.iter().map(|r| r.sent).sum(),
            errors: commands.iter().map(|r| r.errors).sum(),
            duration_ms: 0,
            ops_per_sec: 0.0,
            left_out: plan
                .skipped
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            commands,
            connections_detail: plan
                .conns
                .iter()
                .zip(results)
                .map(|(c, r)| ConnRow {
                    conn: c.conn,
                    client: c.client.clone(),
                    app: c.app.clone(),
                    requests: c.ops.len(),
                    errors: r.outcomes.iter().filter(|o| o.error).count() as u64,
                    failure: r.failure.clone(),
                })
                .collect(),
        }
    }

    /// The table printed at the end of a replay.
    pub fn table(&self) -> String {
        let ms =
            |us: Option<u64>| us.map_or("-".to_string(), |u| format!("{:.2}", u as f64 / 1000.0));
        let header = [
            "command",
            "namespace",
            "count",
            "errors",
            "capt p50 ms",
            "capt p99 ms",
            "repl p50 ms",
            "repl p99 ms",
            "capt docs",
            "repl docs",
            "Δ docs",
        ];
        let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for r in &self.commands {
            let errors = if r.captured_errors > 0 {
                format!("{} (capt {})", r.errors, r.captured_errors)
            } else {
                r.errors.to_string()
            };
            let count = if r.skipped > 0 {
                format!("{} ({} skipped)", r.count, r.skipped)
            } else {
                r.count.to_string()
            };
            lines.push(vec![
                r.command.clone(),
                r.namespace.clone(),
                count,
                errors,
                ms(r.captured_p50_us),
                ms(r.captured_p99_us),
                ms(r.replayed_p50_us),
                ms(r.replayed_p99_us),
                r.captured_docs.to_string(),
                r.replayed_docs.to_string(),
                format!("{:+}", r.docs_diff),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                lines
                    .iter()
                    .map(|l| l[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (n, line) in lines.iter().enumerate() {
            for (i, cell) in line.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                // Names left-aligned, numbers right-aligned.
                if i < 2 {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                } else {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                }
                out.push_str(if i + 1 < line.len() { "  " } else { "\n" });
            }
            if n == 0 {
                let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        out.push_str(&format!(
            "{} requests on {} connections: {} sent, {} errors, {:.0} ops/s over {:.1} s\n",
            self.requests,
            self.connections,
            self.sent,
            self.errors,
            self.ops_per_sec,
            self.duration_ms as f64 / 1000.0
        ));
        if !self.left_out.is_empty() {
            let parts: Vec<String> = self
                .left_out
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            out.push_str(&format!("not replayed: {}\n", parts.join(", ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).map(|i| i * 1_000).collect();
        assert_eq!(percentile(&mut v, 50.0), Some(50));
        assert_eq!(percentile(&mut v, 99.0), Some(99));
        assert_eq!(percentile(&mut [7_000], 99.0), Some(7));
        assert_eq!(percentile(&mut [], 50.0), None);
    }
}
