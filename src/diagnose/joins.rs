//! Check 3, join types: the fields a `$lookup` or `$graphLookup` joins on
//! must hold the same BSON type on both sides (a string never equals an
//! ObjectId); the foreign field wants an index; `$unwind` drops documents
//! that lack its field; `$group` keys are given with their types.

use super::fields::{self, field_ref, Sample};
use super::probe::Probe;
use super::DiagnoseError;
use super::{Finding, Limits, Severity, Stage, Target};
use bson::{Bson, Document};
use serde_json::json;
use std::collections::BTreeSet;

const CHECK: &str = "join_types";

/// Numbers compare by value across int, long, double and decimal.
fn class(ty: &str) -> &str {
    match ty {
        "int" | "long" | "double" | "decimal" => "number",
        t => t,
    }
}

fn describe(s: &Sample) -> String {
    let parts: Vec<String> = s.types.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
    if parts.is_empty() {
        "no documents".into()
    } else {
        parts.join(", ")
    }
}

pub async fn check(probe: &mut Probe, t: &Target, limits: &Limits, out: &mut Vec<Finding>) {
    // Fields created by an earlier $lookup's `as`: not in the source collection.
    let mut joined: Vec<(String, bool)> = Vec::new();
    for stage in &t.stages {
        if probe.stalled() {
            return;
        }
        let r = match stage.name.as_str() {
            "$lookup" => lookup(probe, t, stage, limits, out, &mut joined).await,
            "$graphLookup" => graph_lookup(probe, t, stage, limits, out).await,
            "$unwind" => unwind(probe, t, stage, limits, out, &joined).await,
            "$group" => group(probe, t, stage, limits, out).await,
            _ => Ok(()),
        };
        if let Err(DiagnoseError::Upstream(e)) = r {
            out.push(Finding::new(
                CHECK,
                Some(stage),
                Severity::Info,
                format!(
                    "could not sample the fields of {}: {}",
                    stage.name,
                    e.code_name().unwrap_or("error")
                ),
                json!({ "code": e.code(), "code_name": e.code_name() }),
            ));
        }
    }
}

/// Compares the two sides of a join and says what it found.
fn compare(
    stage: &Stage,
    local: (&str, &str, &Sample),
    foreign: (&str, &str, &Sample),
    foreign_indexed: bool,
    out: &mut Vec<Finding>,
) -> bool {
    let (lc, lf, ls) = local;
    let (fc, ff, fs) = foreign;
    let lt: BTreeSet<&str> = ls.present().into_iter().map(class).collect();
    let ft: BTreeSet<&str> = fs.present().into_iter().map(class).collect();
    let evidence = json!({
        "local_collection": lc, "local_field": lf, "local": ls.to_json(),
        "foreign_collection": fc, "foreign_field": ff, "foreign": fs.to_json(),
        "foreign_field_indexed": foreign_indexed,
    });
    let mismatch = !lt.is_empty() && !ft.is_empty() && lt.is_disjoint(&ft);
    if mismatch {
        out.push(Finding::new(
            CHECK,
            Some(stage),
            Severity::Error,
            format!(
                "{} joins {lc}.{lf} ({}) to {fc}.{ff} ({}): the types never match, so no sampled document finds a partner and every joined array is empty",
                stage.name, describe(ls), describe(fs)
            ),
            evidence,
        ));
    } else if !lt.is_empty() && !ft.is_empty() && lt != ft {
        out.push(Finding::new(
            CHECK,
            Some(stage),
            Severity::Warning,
            format!(
                "{} joins {lc}.{lf} ({}) to {fc}.{ff} ({}): only the shared types can match",
                stage.name,
                describe(ls),
                describe(fs)
            ),
            evidence,
        ));
    } else {
        out.push(Finding::new(
            CHECK,
            Some(stage),
            Severity::Info,
            format!(
                "{} joins {lc}.{lf} ({}) to {fc}.{ff} ({})",
                stage.name,
                describe(ls),
                describe(fs)
            ),
            evidence,
        ));
    }
    if !foreign_indexed {
        out.push(Finding::new(
            CHECK,
            Some(stage),
            Severity::Warning,
            format!(
                "{fc}.{ff} has no index: {} scans {fc} once per input document",
                stage.name
            ),
            json!({ "foreign_collection": fc, "foreign_field": ff, "foreign_field_indexed": false }),
        ));
    }
    mismatch
}

async fn lookup(
    probe: &mut Probe,
    t: &Target,
    stage: &Stage,
    limits: &Limits,
    out: &mut Vec<Finding>,
    joined: &mut Vec<(String, bool)>,
) -> Result<(), DiagnoseError> {
    let Some(spec) = stage.body.as_document() else {
        return Ok(());
    };
    let as_field = spec.get_str("as").unwrap_or("").to_string();
    if spec.get("from").is_some_and(|f| f.as_str().is_none()) {
        out.push(Finding::new(
            CHECK,
            Some(stage),
            Severity::Info,
            "$lookup from another database: its fields are not sampled".into(),
            json!({}),
        ));
        joined.push((as_field, false));
        return Ok(());
    }
    let (Ok(from), Ok(lf), Ok(ff)) = (
        from_coll(spec),
        spec.get_str("localField"),
        spec.get_str("foreignField"),
    ) else {
        out.push(Finding::new(
            CHECK,
            Some(stage),
            Severity::Info,
            "$lookup with a sub-pipeline and no localField/foreignField: no join fields to compare"
                .into(),
            json!({}),
        ));
        joined.push((as_field, false));
        return Ok(());
    };
    let local = fields::sample(probe, &t.db, &t.collection, lf, limits.sample).await?;
    let foreign = fields::sample(probe, &t.db, from, ff, limits.sample).await?;
    let indexes = fields::index_keys(probe, &t.db, from).await?;
    let indexed = ff == "_id" || fields::indexed(&indexes, ff);
    let mismatch = compare(
        stage,
        (&t.collection, lf, &local),
        (from, ff, &foreign),
        indexed,
        out,
    );
    joined.push((as_field, mismatch));
    Ok(())
}

fn from_coll(spec: &Document) -> bson::error::Result<&str> {
    // `from` is a name, or {db, coll} for another database (not sampled).
    spec.get_str("from")
}

async fn graph_lookup(
    probe: &mut Probe,
    t: &Target,
    stage: &Stage,
    limits: &Limits,
    out: &mut Vec<Finding>,
) -> Result<(), DiagnoseError> {
    let Some(spec) = stage.body.as_document() else {
        return Ok(());
    };
    let (Ok(from), Ok(to), Some(start)) = (
        spec.get_str("from"),
        spec.get_str("connectToField"),
        spec.get("startWith").and_then(field_ref),
    ) else {
        return Ok(());
    };
    let local = fields::sample(probe, &t.db, &t.collection, start, limits.sample).await?;
    let foreign = fields::sample(probe, &t.db, from, to, limits.sample).await?;
    let indexes = fields::index_keys(probe, &t.db, from).await?;
    let indexed = to == "_id" || fields::indexed(&indexes, to);
    compare(
        stage,
        (&t.collection, start, &local),
        (from, to, &foreign),
        indexed,
        out,
    );
    Ok(())
}

async fn unwind(
    probe: &mut Probe,
    t: &Target,
    stage: &Stage,
    limits: &Limits,
    out: &mut Vec<Finding>,
    joined: &[(String, bool)],
) -> Result<(), DiagnoseError> {
    let (path, preserve) = match &stage.body {
        Bson::Document(d) => (
            d.get("path").and_then(field_ref),
            d.get_bool("preserveNullAndEmptyArrays").unwrap_or(false),
        ),
        v => (field_ref(v), false),
    };
    let Some(path) = path else { return Ok(()) };
    if let Some((_, mismatch)) = joined.iter().find(|(f, _)| f == path) {
        if *mismatch && !preserve {
            out.push(Finding::new(
                CHECK,
                Some(stage),
                Severity::Error,
                format!("$unwind over `{path}`, the $lookup's output: with the join types never matching, every array is empty and $unwind drops every document"),
                json!({ "field": path, "from_lookup": true, "preserveNullAndEmptyArrays": preserve }),
            ));
        }
        return Ok(());
    }
    let s = fields::sample(probe, &t.db, &t.collection, path, limits.sample).await?;
    let missing = s.count("missing") + s.count("null");
    let non_array = s
        .present()
        .into_iter()
        .filter(|ty| *ty != "array" && *ty != "null")
        .map(|ty| s.count(ty))
        .sum::<u64>();
    let evidence = json!({
        "field": path, "collection": t.collection, "sample": s.to_json(),
        "missing_or_null": missing, "non_array": non_array,
        "preserveNullAndEmptyArrays": preserve,
    });
    if missing > 0 && !preserve {
        out.push(Finding::new(
            CHECK,
            Some(stage),
            Severity::Warning,
            format!(
                "$unwind over `{path}`: {missing} of {} sampled documents lack it (or hold null) and are silently dropped; set preserveNullAndEmptyArrays to keep them",
                s.documents
            ),
            evidence,
        ));
    } else if non_array > 0 {
        out.push(Finding::new(
            CHECK,
            Some(stage),
            Severity::Info,
            format!(
                "$unwind over `{path}`: {non_array} of {} sampled documents hold a non-array ({}), unwound as one element",
                s.documents,
                describe(&s)
            ),
            evidence,
        ));
    } else {
        out.push(Finding::new(
            CHECK,
            Some(stage),
            Severity::Info,
            format!("$unwind over `{path}`: {}", describe(&s)),
            evidence,
        ));
    }
    Ok(())
}

async fn group(
    probe: &mut Probe,
    t: &Target,
    stage: &Stage,
    limits: &Limits,
    out: &mut Vec<Finding>,
) -> Result<(), DiagnoseError> {
    let Some(id) = stage.body.as_document().and_then(|d| d.get("_id")) else {
        return Ok(());
    };
    let keys: Vec<&str> = match id {
        Bson::Document(d) => d.values().filter_map(field_ref).collect(),
        v => field_ref(v).into_iter().collect(),
    };
    // A key still holds the collection's own field when the stages before
    // only filter, order, add a join's array or unwind another field.
    let reshaped = |key: &str| {
        t.stages[..stage.index]
            .iter()
            .any(|s| match s.name.as_str() {
                "$match" | "$sort" | "$limit" | "$skip" => false,
                "$lookup" | "$graphLookup" => s
                    .body
                    .as_document()
                    .and_then(|d| d.get_str("as").ok())
                    .is_none_or(|a| key == a || key.starts_with(&format!("{a}."))),
                "$unwind" => match &s.body {
                    Bson::Document(d) => d.get("path").and_then(field_ref),
                    v => field_ref(v),
                }
                .is_none_or(|p| key == p || key.starts_with(&format!("{p}."))),
                _ => true,
            })
    };
    let (keys, derived): (Vec<&str>, Vec<&str>) = keys.into_iter().partition(|k| !reshaped(k));
    if !derived.is_empty() {
        out.push(Finding::new(
            CHECK,
            Some(stage),
            Severity::Info,
            format!(
                "$group keys {derived:?} come from earlier stages' output: not sampled from {}",
                t.collection
            ),
            json!({ "keys": derived }),
        ));
    }
    for key in keys {
        let s = fields::sample(probe, &t.db, &t.collection, key, limits.sample).await?;
        let mixed = s.types.len() > 1;
        out.push(Finding::new(
            CHECK,
            Some(stage),
            if mixed {
                Severity::Warning
            } else {
                Severity::Info
            },
            format!(
                "$group key `{key}`: {}{}",
                describe(&s),
                if mixed {
                    ": values of different types form different groups"
                } else {
                    ""
                }
            ),
            json!({ "key": key, "collection": t.collection, "sample": s.to_json() }),
        ));
    }
    Ok(())
}
