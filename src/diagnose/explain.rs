//! Check 2, explain: the pipeline explained with `executionStats` (the
//! command auto-explain builds), read per stage: nReturned, time, documents
//! examined, whether an index was used, and the stage where the time goes.
//! Where the server reports no per-stage numbers (FerretDB: a SQLite
//! plan), the finding says so.

use super::fields::as_i64;
use super::probe::Probe;
use super::DiagnoseError;
use super::{Finding, Limits, Severity, Stage, Target};
use crate::background::explain::explain_command;
use bson::{Bson, Document, RawDocumentBuf};
use serde_json::json;

const CHECK: &str = "explain";

/// One stage's numbers as the server reported them.
#[derive(Debug, Clone, PartialEq)]
pub struct StageStats {
    pub name: String,
    pub n_returned: Option<i64>,
    /// executionTimeMillisEstimate: includes the stages before it.
    pub ms: Option<i64>,
    pub docs_examined: Option<i64>,
    pub keys_examined: Option<i64>,
    /// Some(true) for an index scan, Some(false) for a collection scan.
    pub index_used: Option<bool>,
}

pub async fn check(probe: &mut Probe, t: &Target, limits: &Limits, out: &mut Vec<Finding>) {
    let command = match RawDocumentBuf::try_from(&t.command)
        .map_err(|e| e.to_string())
        .and_then(|raw| {
            explain_command(&raw, &t.db, limits.explain_max_time_ms).map_err(|e| e.to_string())
        }) {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::new(
                CHECK,
                None,
                Severity::Info,
                format!("cannot build the explain: {e}"),
                json!({}),
            ));
            return;
        }
    };
    let reply = match probe.raw_command(&command).await {
        Ok(r) => r,
        Err(DiagnoseError::Upstream(e)) => {
            out.push(Finding::new(
                CHECK,
                None,
                Severity::Warning,
                format!(
                    "the server refused to explain the pipeline: {} {}",
                    e.code().map_or(String::new(), |c| c.to_string()),
                    e.code_name().unwrap_or("(no code)")
                ),
                json!({ "code": e.code(), "code_name": e.code_name() }),
            ));
            return;
        }
        // A timeout: the stall finding says it once for every probe.
        Err(_) => return,
    };
    let Ok(doc) = Document::try_from(reply.as_ref()) else {
        return;
    };
    read(&doc, t, out);
}

/// The findings an explain reply gives.
pub fn read(reply: &Document, t: &Target, out: &mut Vec<Finding>) {
    let stats = stage_stats(reply);
    if stats.is_empty() {
        let keys: Vec<&str> = reply
            .keys()
            .map(String::as_str)
            .filter(|k| !k.starts_with('$'))
            .collect();
        out.push(Finding::new(
            CHECK,
            None,
            Severity::Info,
            "the server reports no per-stage numbers in its explain (no `stages` or `executionStats`): nothing says which stage the time goes to".into(),
            json!({ "per_stage": false, "explain_keys": keys }),
        ));
        return;
    }
    let mut prev_ms = 0;
    let mut slowest: Option<(usize, i64)> = None;
    for (i, s) in stats.iter().enumerate() {
        let own = s.ms.map(|ms| (ms - prev_ms).max(0));
        if let Some(ms) = s.ms {
            prev_ms = ms;
        }
        if let Some(own) = own {
            if slowest.is_none_or(|(_, best)| own > best) {
                slowest = Some((i, own));
            }
        }
        let mut parts = Vec::new();
        if let Some(n) = s.n_returned {
            parts.push(format!("nReturned {n}"));
        }
        if let Some(ms) = s.ms {
            parts.push(format!("{ms} ms (cumulative)"));
        }
        if let Some(n) = s.docs_examined {
            parts.push(format!("{n} documents examined"));
        }
        match s.index_used {
            Some(true) => parts.push("index scan".into()),
            Some(false) => parts.push("collection scan, no index".into()),
            None => {}
        }
        let stage = stage_for(t, &s.name, i);
        out.push(Finding::new(
            CHECK,
            stage.as_ref(),
            if s.index_used == Some(false) { Severity::Warning } else { Severity::Info },
            format!("{}: {}", s.name, parts.join(", ")),
            json!({
                "name": s.name, "nReturned": s.n_returned, "executionTimeMillisEstimate": s.ms,
                "own_ms": own, "totalDocsExamined": s.docs_examined, "totalKeysExamined": s.keys_examined,
                "index_used": s.index_used,
            }),
        ));
    }
    if let Some((i, own)) = slowest {
        let s = &stats[i];
        out.push(Finding::new(
            CHECK,
            stage_for(t, &s.name, i).as_ref(),
            Severity::Warning,
            format!(
                "the time goes in {}: {own} of {prev_ms} ms, returning {} documents",
                s.name,
                s.n_returned.map_or("?".into(), |n| n.to_string())
            ),
            json!({ "slowest": s.name, "own_ms": own, "total_ms": prev_ms, "nReturned": s.n_returned }),
        ));
    }
}

/// The pipeline stage an explain entry stands for: `$cursor` is the
/// pushed-down prefix (the first stage); others are matched by name.
fn stage_for(t: &Target, name: &str, i: usize) -> Option<Stage> {
    let found = t.stages.iter().find(|s| s.name == name).cloned();
    found.or_else(|| {
        (name == "$cursor" || i == 0).then(|| Stage {
            index: 0,
            name: name.to_string(),
            body: Bson::Null,
        })
    })
}

fn num(d: &Document, k: &str) -> Option<i64> {
    d.get(k).and_then(as_i64)
}

/// Per-stage numbers from the `stages` array, or from a pushed-down plan
/// tree (`executionStats.executionStages`), leaf first.
pub fn stage_stats(reply: &Document) -> Vec<StageStats> {
    let mut out = Vec::new();
    if let Ok(stages) = reply.get_array("stages") {
        for s in stages.iter().filter_map(Bson::as_document) {
            let Some((name, body)) = s.iter().next() else {
                continue;
            };
            let mut st = StageStats {
                name: name.clone(),
                n_returned: num(s, "nReturned"),
                ms: num(s, "executionTimeMillisEstimate"),
                docs_examined: None,
                keys_examined: None,
                index_used: None,
            };
            if let Some(cursor) = body.as_document() {
                if let Ok(es) = cursor.get_document("executionStats") {
                    st.docs_examined = num(es, "totalDocsExamined");
                    st.keys_examined = num(es, "totalKeysExamined");
                }
                if let Ok(plan) = cursor
                    .get_document("queryPlanner")
                    .and_then(|q| q.get_document("winningPlan"))
                {
                    st.index_used = index_used(plan);
                }
            }
            out.push(st);
        }
    } else if let Ok(es) = reply.get_document("executionStats") {
        if let Ok(root) = es.get_document("executionStages") {
            let mut nodes = Vec::new();
            walk(root, 0, &mut nodes);
            for n in nodes.into_iter().rev() {
                let name = n.get_str("stage").unwrap_or("?").to_string();
                out.push(StageStats {
                    index_used: match name.as_str() {
                        "IXSCAN" => Some(true),
                        "COLLSCAN" => Some(false),
                        _ => None,
                    },
                    name,
                    n_returned: num(n, "nReturned"),
                    ms: num(n, "executionTimeMillisEstimate"),
                    docs_examined: num(n, "docsExamined"),
                    keys_examined: num(n, "keysExamined"),
                });
            }
        }
    }
    out
}

fn walk<'a>(node: &'a Document, depth: usize, out: &mut Vec<&'a Document>) {
    if depth > 64 || out.len() > 256 {
        return;
    }
    out.push(node);
    for (k, v) in node {
        match (k.as_str(), v) {
            (
                "inputStage" | "thenStage" | "elseStage" | "outerStage" | "innerStage",
                Bson::Document(c),
            ) => walk(c, depth + 1, out),
            ("inputStages", Bson::Array(cs)) => {
                for c in cs.iter().filter_map(Bson::as_document) {
                    walk(c, depth + 1, out);
                }
            }
            _ => {}
        }
    }
}

/// IXSCAN anywhere in the plan: an index; COLLSCAN: none.
fn index_used(plan: &Document) -> Option<bool> {
    let mut nodes = Vec::new();
    walk(plan, 0, &mut nodes);
    let names: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n.get_str("stage").ok())
        .collect();
    if names
        .iter()
        .any(|n| *n == "IXSCAN" || *n == "IDHACK" || *n == "EXPRESS_IXSCAN")
    {
        Some(true)
    } else if names.contains(&"COLLSCAN") {
        Some(false)
    } else {
        None
    }
}
