//! Check 5, guardrails: memory-heavy stages without `allowDiskUse`, no
//! `maxTimeMS`, and the `[[rewrite.rule]]` that sets both.

use super::fields;
use super::probe::Probe;
use super::{Finding, Severity, Target};
use serde_json::json;

const CHECK: &str = "guardrails";

/// Stages that hold their whole input (or a window of it) in memory.
const HEAVY: &[&str] = &[
    "$group",
    "$bucket",
    "$bucketAuto",
    "$facet",
    "$setWindowFields",
    "$sortByCount",
];

pub async fn check(probe: &mut Probe, t: &Target, out: &mut Vec<Finding>) {
    let mut heavy: Vec<&str> = Vec::new();
    for s in &t.stages {
        if HEAVY.contains(&s.name.as_str()) {
            heavy.push(&s.name);
        } else if s.name == "$sort" && !sort_uses_index(probe, t, s.index).await {
            heavy.push("$sort");
        }
    }
    if probe.stalled() {
        return;
    }
    let disk = t.allow_disk_use == Some(true);
    if !heavy.is_empty() && !disk {
        out.push(Finding::new(
            CHECK,
            None,
            Severity::Warning,
            format!(
                "{} can exceed the server's 100 MB per-stage memory limit, and allowDiskUse is {}: the aggregate fails (QueryExceededMemoryLimitNoDiskUseAllowed) instead of spilling",
                heavy.join(", "),
                match t.allow_disk_use { Some(false) => "false", _ => "not set" }
            ),
            json!({ "memory_heavy_stages": heavy, "allowDiskUse": t.allow_disk_use }),
        ));
    }
    if t.max_time_ms.is_none_or(|ms| ms <= 0) {
        out.push(Finding::new(
            CHECK,
            None,
            Severity::Warning,
            "no maxTimeMS: the server lets the aggregate run for as long as it takes, and the driver waits as long".into(),
            json!({ "maxTimeMS": t.max_time_ms }),
        ));
    }
    let (no_disk, no_time) = (
        !heavy.is_empty() && !disk,
        t.max_time_ms.is_none_or(|ms| ms <= 0),
    );
    if no_disk || no_time {
        let rule = rule(t, no_disk);
        let what = match (no_time, no_disk) {
            (true, true) => "maxTimeMS and allowDiskUse",
            (true, false) => "maxTimeMS",
            _ => "allowDiskUse",
        };
        out.push(Finding::new(
            CHECK,
            None,
            Severity::Info,
            format!("this rule (with [rewrite] mode = \"enforce\") sets {what} for every such aggregate:\n{rule}"),
            json!({ "rewrite_rule": rule }),
        ));
    }
}

/// A `$sort` uses an index only when it sorts the collection's own
/// documents (nothing but `$match` before it) on an index's first field.
async fn sort_uses_index(probe: &mut Probe, t: &Target, index: usize) -> bool {
    if !t.stages[..index].iter().all(|s| s.name == "$match") {
        return false;
    }
    let Some(first) = t.stages[index]
        .body
        .as_document()
        .and_then(|d| d.keys().next().cloned())
    else {
        return false;
    };
    match fields::index_keys(probe, &t.db, &t.collection).await {
        Ok(ix) => first == "_id" || fields::indexed(&ix, &first),
        Err(_) => false,
    }
}

fn rule(t: &Target, disk: bool) -> String {
    let mut s = format!(
        "[[rewrite.rule]]\ncommands = [\"aggregate\"]\nnamespaces = [\"{}.{}\"]\ndefault_max_time_ms = 30000\n",
        t.db, t.collection
    );
    if disk {
        s.push_str("allow_disk_use = true\n");
    }
    s
}
