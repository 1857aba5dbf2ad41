//! Aggregation pipelines, stage by stage: each stage's argument is shaped
//! by what it is (a filter, a sort, expressions, names of collections and
//! fields).

use super::sink::Sink;
use super::values::{
    each_element, expression, filter_value, kept, literal, open_array, open_document, projection,
    sort, structure,
};
use bson::raw::{CStr, RawArray, RawBsonRef};

/// A pipeline: an array of one-key stage documents.
pub(crate) fn pipeline<'a, S: Sink<'a>>(
    s: &mut S,
    key: &'a CStr,
    stages: &'a RawArray,
    depth: usize,
) {
    if !open_array(s, key, depth) {
        return;
    }
    each_element(s, stages.iter_elements(), |s, index, stage| match stage {
        RawBsonRef::Document(stage) => {
            if open_document(s, index, depth + 1) {
                each_element(s, stage.iter_elements(), |s, name, argument| {
                    stage_argument(s, name, argument, depth + 2)
                });
                s.close();
            }
        }
        other => literal(s, index, other),
    });
    s.close();
}

/// A pipeline, or the literal placeholder when the value is not an array.
fn pipeline_value<'a, S: Sink<'a>>(s: &mut S, key: &'a CStr, value: RawBsonRef<'a>, depth: usize) {
    match value {
        RawBsonRef::Array(stages) => pipeline(s, key, stages, depth),
        other => literal(s, key, other),
    }
}

fn stage_argument<'a, S: Sink<'a>>(
    s: &mut S,
    name: &'a CStr,
    argument: RawBsonRef<'a>,
    depth: usize,
) {
    match name.as_str() {
        "$match" => filter_value(s, name, argument, depth),
        "$sort" => sort(s, name, argument, depth),
        "$project" => projection(s, name, argument, depth),
        "$limit" | "$skip" => literal(s, name, argument),
        // Names of fields and collections: `$unwind: "$items"`,
        // `$count: "total"`, `$unset: ["a", "b"]`, `$out: "archive"`.
        "$unwind" | "$count" | "$unset" | "$out" => kept(s, name, argument, depth),
        "$lookup" | "$graphLookup" | "$unionWith" | "$merge" => {
            named_fields(s, name, argument, depth)
        }
        "$facet" => {
            let RawBsonRef::Document(facets) = argument else {
                return literal(s, name, argument);
            };
            if open_document(s, name, depth) {
                each_element(s, facets.iter_elements(), |s, facet, stages| {
                    pipeline_value(s, facet, stages, depth + 1)
                });
                s.close();
            }
        }
        // Search and geo stages take literal structures, not expressions.
        "$geoNear" | "$sample" | "$search" | "$searchMeta" | "$vectorSearch" => {
            structure(s, name, argument, depth)
        }
        // $group, $addFields/$set, $replaceRoot/$replaceWith, $bucket,
        // $sortByCount, $redact, $setWindowFields, ... and unknown stages:
        // expressions keep field paths and accumulators, drop constants.
        _ => expression(s, name, argument, depth),
    }
}

/// Stages whose argument names collections and fields ($lookup,
/// $graphLookup, $unionWith, $merge): the names are kept, sub-pipelines,
/// filters and expressions are shaped, anything else is a structure.
fn named_fields<'a, S: Sink<'a>>(
    s: &mut S,
    name: &'a CStr,
    argument: RawBsonRef<'a>,
    depth: usize,
) {
    let RawBsonRef::Document(fields) = argument else {
        // `$unionWith: "other"`, `$merge: "target"`: a collection name.
        return kept(s, name, argument, depth);
    };
    if !open_document(s, name, depth) {
        return;
    }
    each_element(s, fields.iter_elements(), |s, field, value| {
        let depth = depth + 1;
        match (field.as_str(), value) {
            ("pipeline", value) => pipeline_value(s, field, value, depth),
            // $merge's whenMatched is a mode name or a pipeline.
            ("whenMatched", RawBsonRef::Array(stages)) => pipeline(s, field, stages, depth),
            ("let" | "startWith", value) => expression(s, field, value, depth),
            ("restrictSearchWithMatch", value) => filter_value(s, field, value, depth),
            (
                "from" | "coll" | "into" | "on" | "as" | "localField" | "foreignField"
                | "connectFromField" | "connectToField" | "depthField" | "whenMatched"
                | "whenNotMatched",
                value,
            ) => kept(s, field, value, depth),
            (_, value) => structure(s, field, value, depth),
        }
    });
    s.close();
}
