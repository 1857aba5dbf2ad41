//! Rendering an explain reply for the `explained` event: per-stage
//! numbers, and the whole reply as JSON with string values hidden unless
//! `log_values` is on.

use super::MAX_EXPLAIN_BYTES;
use bson::raw::RawBsonRef;
use bson::{Bson, RawDocument};
use mongotap_proto::command::as_i64;

/// Per-stage numbers, e.g. `$cursor nReturned=100 ms=3; $group nReturned=5 ms=4`.
///
/// MongoDB reports an aggregate's explain in one of three forms: a
/// `stages` array (one entry per stage, its name the entry's first key);
/// a pipeline pushed down whole into the query layer, with
/// `executionStats.executionStages` as a tree of plan stages (shown leaf
/// first, in the order data flows); or, through mongos, one of these per
/// shard under `shards`. Anything else (FerretDB) has no per-stage stats.
pub fn stage_stats(reply: &RawDocument) -> Option<String> {
    let mut out = Vec::new();
    collect_stats(reply, "", &mut out);
    (!out.is_empty()).then(|| out.join("; "))
}

fn collect_stats(doc: &RawDocument, prefix: &str, out: &mut Vec<String>) {
    if let Ok(stages) = doc.get_array("stages") {
        for stage in stages.into_iter().flatten() {
            let Some(stage) = stage.as_document() else {
                continue;
            };
            if let Some(Ok((name, _))) = stage.iter().next() {
                out.push(format!("{prefix}{}{}", name.as_str(), numbers(stage)));
            }
        }
    } else if let Ok(root) = doc
        .get_document("executionStats")
        .and_then(|s| s.get_document("executionStages"))
    {
        let mut plan = Vec::new();
        plan_stages(root, 0, &mut plan);
        for stage in plan.into_iter().rev() {
            let name = stage.get_str("stage").unwrap_or("?");
            out.push(format!("{prefix}{name}{}", numbers(stage)));
        }
    } else if let Ok(shards) = doc.get_document("shards") {
        for (shard, value) in shards.iter().flatten() {
            if let Some(d) = value.as_document() {
                collect_stats(d, &format!("{prefix}{}: ", shard.as_str()), out);
            }
        }
    }
}

/// The plan tree in pre-order (root first); children come from
/// `inputStage`, `inputStages`, `thenStage`/`elseStage` and
/// `outerStage`/`innerStage`.
fn plan_stages<'a>(node: &'a RawDocument, depth: usize, out: &mut Vec<&'a RawDocument>) {
    // Real plans are a few levels deep; a hostile one must not recurse forever.
    if depth > 64 || out.len() > 256 {
        return;
    }
    out.push(node);
    for (key, value) in node.iter().flatten() {
        match (key.as_str(), value) {
            (
                "inputStage" | "thenStage" | "elseStage" | "outerStage" | "innerStage",
                RawBsonRef::Document(child),
            ) => plan_stages(child, depth + 1, out),
            ("inputStages", RawBsonRef::Array(children)) => {
                for child in children.into_iter().flatten() {
                    if let Some(child) = child.as_document() {
                        plan_stages(child, depth + 1, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// " nReturned=N ms=M" for whichever of the two the stage reports.
fn numbers(stage: &RawDocument) -> String {
    let get = |k: &str| stage.get(k).ok().flatten().and_then(as_i64);
    let mut s = String::new();
    if let Some(n) = get("nReturned") {
        s.push_str(&format!(" nReturned={n}"));
    }
    if let Some(ms) = get("executionTimeMillisEstimate") {
        s.push_str(&format!(" ms={ms}"));
    }
    s
}

/// The server's answer as relaxed extended JSON, in the server's key
/// order, cut at [`MAX_EXPLAIN_BYTES`]; returns whether it was cut. Without
/// log_values, every string and every other value that can carry data from
/// a filter (binary, ObjectId, date, regex, decimal, ...) becomes "?";
/// numbers, booleans and nulls stay, so the statistics survive.
/// `$clusterTime` and `operationTime` (gossip, not part of the explain) are
/// left out.
pub fn render_explain(reply: &RawDocument, log_values: bool) -> (String, bool) {
    let mut out = String::with_capacity(1024);
    write_document(&mut out, reply, log_values, 0);
    if out.len() <= MAX_EXPLAIN_BYTES {
        return (out, false);
    }
    let mut end = MAX_EXPLAIN_BYTES;
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out.push('…');
    (out, true)
}

/// Deeper than this is not a real explain; the rest is elided.
const MAX_DEPTH: usize = 100;

fn write_document(out: &mut String, doc: &RawDocument, log_values: bool, depth: usize) {
    out.push('{');
    let mut first = true;
    for (key, value) in doc.iter().flatten() {
        if depth == 0 && matches!(key.as_str(), "$clusterTime" | "operationTime") {
            continue;
        }
        // Past the cut nothing more is shown: stop early on huge answers.
        if out.len() > MAX_EXPLAIN_BYTES {
            break;
        }
        if !first {
            out.push(',');
        }
        first = false;
        write_json_string(out, key.as_str());
        out.push(':');
        write_value(out, value, log_values, depth + 1);
    }
    out.push('}');
}

fn write_value(out: &mut String, value: RawBsonRef<'_>, log_values: bool, depth: usize) {
    if depth > MAX_DEPTH {
        out.push_str("\"…\"");
        return;
    }
    match value {
        RawBsonRef::Document(d) => write_document(out, d, log_values, depth),
        RawBsonRef::Array(a) => {
            out.push('[');
            for (i, v) in a.into_iter().flatten().enumerate() {
                if out.len() > MAX_EXPLAIN_BYTES {
                    break;
                }
                if i > 0 {
                    out.push(',');
                }
                write_value(out, v, log_values, depth + 1);
            }
            out.push(']');
        }
        RawBsonRef::Double(_)
        | RawBsonRef::Int32(_)
        | RawBsonRef::Int64(_)
        | RawBsonRef::Boolean(_)
        | RawBsonRef::Null
        | RawBsonRef::Undefined
        | RawBsonRef::MinKey
        | RawBsonRef::MaxKey => write_leaf(out, value),
        _ if !log_values => out.push_str("\"?\""),
        _ => write_leaf(out, value),
    }
}

/// One scalar in relaxed extended JSON, as the bson crate renders it.
fn write_leaf(out: &mut String, value: RawBsonRef<'_>) {
    match Bson::try_from(value) {
        Ok(b) => out.push_str(&b.into_relaxed_extjson().to_string()),
        Err(_) => out.push_str("\"<unreadable>\""),
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::Value::from(s).to_string());
}
