//! The parts of the checks that need no server: reading explain replies,
//! field paths and types, and the pipeline's stages.

use super::explain::{read, stage_stats};
use super::fields::{field_ref, get_path, type_name};
use super::{Target, CHECKS};
use bson::{doc, oid::ObjectId, Bson};

fn target(pipeline: Vec<bson::Document>) -> Target {
    Target::from_command(
        doc! { "aggregate": "orders", "pipeline": pipeline, "cursor": {} },
        "shop",
    )
    .expect("target")
}

/// A pipeline pushed down whole: the plan tree, read leaf first, with the
/// index scan seen as one.
#[test]
fn explain_reads_a_pushed_down_plan_leaf_first() {
    let reply = doc! {
        "queryPlanner": { "winningPlan": { "stage": "FETCH" } },
        "executionStats": {
            "executionStages": {
                "stage": "FETCH", "nReturned": 7, "executionTimeMillisEstimate": 30, "docsExamined": 7,
                "inputStage": { "stage": "IXSCAN", "nReturned": 7, "executionTimeMillisEstimate": 2, "keysExamined": 7 },
            },
        },
        "ok": 1.0,
    };
    let stats = stage_stats(&reply);
    let names: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["IXSCAN", "FETCH"]);
    assert_eq!(stats[0].index_used, Some(true));
    assert_eq!(stats[0].keys_examined, Some(7));
    assert_eq!(stats[1].docs_examined, Some(7));
    let mut out = Vec::new();
    read(
        &reply,
        &target(vec![doc! { "$match": { "a": 1 } }]),
        &mut out,
    );
    let slow = out.last().expect("a slowest-stage finding");
    assert_eq!(slow.evidence["slowest"], "FETCH");
    assert_eq!(slow.evidence["own_ms"], 28);
    assert_eq!(slow.evidence["total_ms"], 30);
}

/// FerretDB's answer: a SQLite plan, no numbers; the finding says so.
#[test]
fn explain_without_per_stage_numbers_says_so() {
    let reply =
        doc! { "queryPlanner": { "Plan": ["SCAN orders"] }, "explainVersion": "1", "ok": 1.0 };
    let mut out = Vec::new();
    read(
        &reply,
        &target(vec![doc! { "$match": { "a": 1 } }]),
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].evidence["per_stage"], false);
    assert!(out[0].message.contains("no per-stage numbers"));
}

#[test]
fn paths_types_and_field_references() {
    let d = doc! { "a": { "b": [ { "c": ObjectId::new() } ] }, "s": "x" };
    assert_eq!(get_path(&d, "a.b.c").map(type_name), Some("objectId"));
    assert_eq!(get_path(&d, "s").map(type_name), Some("string"));
    assert_eq!(get_path(&d, "a.z"), None);
    assert_eq!(
        field_ref(&Bson::String("$customerId".into())),
        Some("customerId")
    );
    assert_eq!(field_ref(&Bson::String("$$ROOT".into())), None);
    assert_eq!(field_ref(&Bson::String("plain".into())), None);
}

#[test]
fn a_pipeline_reads_into_stages_and_write_stages_are_seen() {
    let t = target(vec![doc! { "$match": {} }, doc! { "$out": "copy" }]);
    assert_eq!(t.stage_names(), ["$match", "$out"]);
    assert_eq!(t.writes().map(|s| s.index), Some(1));
    assert_eq!(CHECKS[0], "monitoring");
    assert!(Target::from_command(doc! { "aggregate": 1, "pipeline": [] }, "db").is_err());
}
