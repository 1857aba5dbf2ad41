//! Shaping of values by what they mean where they stand: a query filter,
//! an aggregation expression, a sort, a projection, an update, or a literal
//! structure whose keys are kept and whose leaves are not.

use super::sink::Sink;
use super::stages::pipeline;
use super::MAX_DEPTH;
use crate::command::{as_bool, as_i64};
use bson::raw::{cstr, CStr, RawArray, RawBsonRef, RawDocument};
use bson::spec::ElementType;

pub(crate) const DEPTH_LIMIT: &str = "?depthLimit";
pub(crate) const INVALID: &str = "?invalid";
const EMPTY_OR_MIXED_ARRAY: &str = "?array<>";

/// The placeholder for a value of type `t`, and for an array of them.
/// Arrays themselves are handled by [`literal_placeholder`].
fn placeholders(t: ElementType) -> (&'static str, &'static str) {
    use ElementType as T;
    match t {
        T::String | T::Symbol => ("?string", "?array<?string>"),
        T::Int32 | T::Int64 | T::Double | T::Decimal128 => ("?number", "?array<?number>"),
        T::EmbeddedDocument => ("?object", "?array<?object>"),
        T::Array => ("?array", "?array<?array>"),
        T::ObjectId => ("?objectId", "?array<?objectId>"),
        T::Boolean => ("?bool", "?array<?bool>"),
        T::DateTime => ("?date", "?array<?date>"),
        T::Null => ("?null", "?array<?null>"),
        T::RegularExpression => ("?regex", "?array<?regex>"),
        T::Binary => ("?binData", "?array<?binData>"),
        T::Timestamp => ("?timestamp", "?array<?timestamp>"),
        T::JavaScriptCode => ("?javascript", "?array<?javascript>"),
        T::JavaScriptCodeWithScope => ("?javascriptWithScope", "?array<?javascriptWithScope>"),
        T::DbPointer => ("?dbPointer", "?array<?dbPointer>"),
        T::MinKey => ("?minKey", "?array<?minKey>"),
        T::MaxKey => ("?maxKey", "?array<?maxKey>"),
        T::Undefined => ("?undefined", "?array<?undefined>"),
    }
}

/// The type placeholder standing for a literal value.
pub(crate) fn literal_placeholder(value: RawBsonRef<'_>) -> &'static str {
    match value {
        RawBsonRef::Array(array) => array_placeholder(array),
        other => placeholders(other.element_type()).0,
    }
}

/// `?array<T>` when every element has placeholder `T` (ints and doubles
/// alike are `?number`), else `?array<>`. Only the type bytes are read.
fn array_placeholder(array: &RawArray) -> &'static str {
    let mut common: Option<(&'static str, &'static str)> = None;
    for element in array.iter_elements() {
        let Ok(element) = element else {
            return INVALID;
        };
        let this = placeholders(element.element_type());
        match common {
            None => common = Some(this),
            Some(seen) if seen.0 == this.0 => {}
            Some(_) => return EMPTY_OR_MIXED_ARRAY,
        }
    }
    common.map_or(EMPTY_OR_MIXED_ARRAY, |(_, array_of)| array_of)
}

pub(crate) fn literal<'a, S: Sink<'a>>(s: &mut S, key: &'a CStr, value: RawBsonRef<'a>) {
    s.string(key, literal_placeholder(value));
}

/// Opens a document at `key`, or writes `?depthLimit` there instead and
/// returns false when `depth` is at the limit.
pub(crate) fn open_document<'a, S: Sink<'a>>(s: &mut S, key: &'a CStr, depth: usize) -> bool {
    if depth >= MAX_DEPTH {
        s.string(key, DEPTH_LIMIT);
        return false;
    }
    s.open_document(key);
    true
}

pub(crate) fn open_array<'a, S: Sink<'a>>(s: &mut S, key: &'a CStr, depth: usize) -> bool {
    if depth >= MAX_DEPTH {
        s.string(key, DEPTH_LIMIT);
        return false;
    }
    s.open_array(key);
    true
}

/// Calls `each` with every element of a document (or array, whose keys
/// the sinks ignore). An element that does not decode is written as
/// `?invalid` and ends the container: what follows it cannot be trusted.
pub(crate) fn each_element<'a, S: Sink<'a>>(
    s: &mut S,
    elements: bson::raw::RawIter<'a>,
    mut each: impl FnMut(&mut S, &'a CStr, RawBsonRef<'a>),
) {
    for element in elements {
        match element.and_then(|e| Ok((e.key(), e.value()?))) {
            Ok((key, value)) => each(s, key, value),
            Err(_) => {
                s.string(cstr!("?invalid"), INVALID);
                return;
            }
        }
    }
}

/// Whether a document's first key is an operator (`{$gt: 5}`), which
/// makes the whole document an operator document rather than a value.
pub(crate) fn starts_with_operator(doc: &RawDocument) -> bool {
    match doc.iter_elements().next() {
        Some(Ok(first)) => first.key().as_str().starts_with('$'),
        _ => false,
    }
}

/// A query filter (`find.filter`, `$match`, `q`).
pub(crate) fn filter<'a, S: Sink<'a>>(
    s: &mut S,
    key: &'a CStr,
    doc: &'a RawDocument,
    depth: usize,
) {
    if !open_document(s, key, depth) {
        return;
    }
    each_element(s, doc.iter_elements(), |s, name, value| {
        filter_element(s, name, value, depth + 1)
    });
    s.close();
}

/// A filter, or the literal placeholder when the value is not a document.
pub(crate) fn filter_value<'a, S: Sink<'a>>(
    s: &mut S,
    key: &'a CStr,
    value: RawBsonRef<'a>,
    depth: usize,
) {
    match value {
        RawBsonRef::Document(doc) => filter(s, key, doc, depth),
        other => literal(s, key, other),
    }
}

fn filter_element<'a, S: Sink<'a>>(s: &mut S, name: &'a CStr, value: RawBsonRef<'a>, depth: usize) {
    match (name.as_str(), value) {
        ("$and" | "$or" | "$nor", RawBsonRef::Array(clauses)) => {
            if !open_array(s, name, depth) {
                return;
            }
            each_element(s, clauses.iter_elements(), |s, index, clause| {
                filter_value(s, index, clause, depth + 1)
            });
            s.close();
        }
        ("$expr", value) => expression(s, name, value, depth),
        // $text, $where, $jsonSchema, $comment, ...: keys kept, values not.
        (op, value) if op.starts_with('$') => structure(s, name, value, depth),
        (_, RawBsonRef::Document(ops)) if starts_with_operator(ops) => {
            operators(s, name, ops, depth)
        }
        // Equality with a value, a sub-document included (`?object`).
        (_, value) => literal(s, name, value),
    }
}

/// The operators applied to one field: `{$gt: 5, $in: [1, 2]}`.
fn operators<'a, S: Sink<'a>>(s: &mut S, key: &'a CStr, ops: &'a RawDocument, depth: usize) {
    if !open_document(s, key, depth) {
        return;
    }
    each_element(s, ops.iter_elements(), |s, op, value| {
        match (op.as_str(), value) {
            ("$elemMatch", RawBsonRef::Document(inner)) => filter(s, op, inner, depth + 1),
            ("$not", RawBsonRef::Document(inner)) => operators(s, op, inner, depth + 1),
            // Geo operators: `{$geometry: {type, coordinates}}` and the like.
            (_, RawBsonRef::Document(inner)) if starts_with_operator(inner) => {
                structure(s, op, value, depth + 1)
            }
            // `$in: [1, 2, 3]` is one `?array<?number>`, whatever its length.
            (_, value) => literal(s, op, value),
        }
    });
    s.close();
}

/// Keys kept, every leaf a placeholder: for values that have a structure
/// but no field paths or operators worth telling apart ($text, geo).
pub(crate) fn structure<'a, S: Sink<'a>>(
    s: &mut S,
    key: &'a CStr,
    value: RawBsonRef<'a>,
    depth: usize,
) {
    let RawBsonRef::Document(doc) = value else {
        return literal(s, key, value);
    };
    if !open_document(s, key, depth) {
        return;
    }
    each_element(s, doc.iter_elements(), |s, name, value| {
        structure(s, name, value, depth + 1)
    });
    s.close();
}

/// Identifiers kept as sent: collection and field names in stages,
/// hints, collations. Strings and booleans are kept, other leaves are
/// placeholders.
pub(crate) fn kept<'a, S: Sink<'a>>(s: &mut S, key: &'a CStr, value: RawBsonRef<'a>, depth: usize) {
    match value {
        RawBsonRef::String(text) => s.string(key, text),
        RawBsonRef::Boolean(flag) => s.boolean(key, flag),
        RawBsonRef::Document(doc) => {
            if open_document(s, key, depth) {
                each_element(s, doc.iter_elements(), |s, name, value| {
                    kept(s, name, value, depth + 1)
                });
                s.close();
            }
        }
        RawBsonRef::Array(array) => {
            if open_array(s, key, depth) {
                each_element(s, array.iter_elements(), |s, index, value| {
                    kept(s, index, value, depth + 1)
                });
                s.close();
            }
        }
        // An index key pattern's directions (`{a: 1, b: -1}`) say which
        // index: kept, normalised to 1/-1.
        other => match as_i64(other) {
            Some(n) => s.int(key, if n < 0 { -1 } else { 1 }),
            None => literal(s, key, other),
        },
    }
}

/// An aggregation expression: field paths (`"$a"`, `"$$var"`) and operator
/// names are kept, constants become placeholders. An array made only of
/// constants is one literal, as the server folds it.
pub(crate) fn expression<'a, S: Sink<'a>>(
    s: &mut S,
    key: &'a CStr,
    value: RawBsonRef<'a>,
    depth: usize,
) {
    match value {
        RawBsonRef::String(path) if path.starts_with('$') => s.string(key, path),
        RawBsonRef::Array(items) if !is_constant_array(items, depth) => {
            if open_array(s, key, depth) {
                each_element(s, items.iter_elements(), |s, index, item| {
                    expression(s, index, item, depth + 1)
                });
                s.close();
            }
        }
        RawBsonRef::Document(doc) if !doc.is_empty() => {
            if let Some(inner) = literal_operand(doc) {
                return literal(s, key, inner);
            }
            if open_document(s, key, depth) {
                each_element(s, doc.iter_elements(), |s, name, value| {
                    expression(s, name, value, depth + 1)
                });
                s.close();
            }
        }
        other => literal(s, key, other),
    }
}

/// The value of `{$literal: value}`, read from the first key only.
fn literal_operand(doc: &RawDocument) -> Option<RawBsonRef<'_>> {
    let first = doc.iter_elements().next()?.ok()?;
    if first.key().as_str() == "$literal" {
        first.value().ok()
    } else {
        None
    }
}

/// No field path or sub-document anywhere inside: a constant.
fn is_constant_array(items: &RawArray, depth: usize) -> bool {
    if depth >= MAX_DEPTH {
        return false;
    }
    items.into_iter().all(|item| match item {
        Ok(RawBsonRef::String(text)) => !text.starts_with('$'),
        Ok(RawBsonRef::Array(inner)) => is_constant_array(inner, depth + 1),
        Ok(RawBsonRef::Document(_)) | Err(_) => false,
        Ok(_) => true,
    })
}

/// A sort: directions normalised to 1/-1, `{$meta: "textScore"}` kept.
pub(crate) fn sort<'a, S: Sink<'a>>(s: &mut S, key: &'a CStr, value: RawBsonRef<'a>, depth: usize) {
    let RawBsonRef::Document(doc) = value else {
        return literal(s, key, value);
    };
    if !open_document(s, key, depth) {
        return;
    }
    each_element(
        s,
        doc.iter_elements(),
        |s, field, direction| match direction {
            RawBsonRef::Document(_) => kept(s, field, direction, depth + 1),
            other => match as_i64(other) {
                Some(n) => s.int(field, if n < 0 { -1 } else { 1 }),
                None => literal(s, field, other),
            },
        },
    );
    s.close();
}

/// A projection: inclusion and exclusion become `true`/`false` (as the
/// server writes them), sub-projections nest, `$elemMatch` is a filter,
/// `$meta` is kept, `$slice` and computed values are shaped.
pub(crate) fn projection<'a, S: Sink<'a>>(
    s: &mut S,
    key: &'a CStr,
    value: RawBsonRef<'a>,
    depth: usize,
) {
    let RawBsonRef::Document(doc) = value else {
        return literal(s, key, value);
    };
    if !open_document(s, key, depth) {
        return;
    }
    each_element(s, doc.iter_elements(), |s, field, spec| match spec {
        RawBsonRef::Document(ops) if starts_with_operator(ops) => {
            if open_document(s, field, depth + 1) {
                each_element(s, ops.iter_elements(), |s, op, arg| {
                    match (op.as_str(), arg) {
                        ("$elemMatch", RawBsonRef::Document(inner)) => {
                            filter(s, op, inner, depth + 2)
                        }
                        ("$meta", RawBsonRef::String(_)) => kept(s, op, arg, depth + 2),
                        ("$slice", arg) => literal(s, op, arg),
                        (_, arg) => expression(s, op, arg, depth + 2),
                    }
                });
                s.close();
            }
        }
        RawBsonRef::Document(_) => projection(s, field, spec, depth + 1),
        RawBsonRef::String(path) if path.starts_with('$') => s.string(field, path),
        // `1`, `5` and `true` all include; `0` and `false` exclude.
        other => match as_bool(other) {
            Some(flag) => s.boolean(field, flag),
            None => literal(s, field, other),
        },
    });
    s.close();
}

/// An update: a pipeline, modifiers (`{$set: {a: "?string"}}`), or a
/// replacement document (its field names, placeholder values).
pub(crate) fn update<'a, S: Sink<'a>>(
    s: &mut S,
    key: &'a CStr,
    value: RawBsonRef<'a>,
    depth: usize,
) {
    match value {
        RawBsonRef::Array(stages) => pipeline(s, key, stages, depth),
        RawBsonRef::Document(doc) if starts_with_operator(doc) => {
            if !open_document(s, key, depth) {
                return;
            }
            each_element(s, doc.iter_elements(), |s, modifier, fields| match fields {
                RawBsonRef::Document(fields) => {
                    if open_document(s, modifier, depth + 1) {
                        each_element(s, fields.iter_elements(), |s, field, value| match value {
                            // `{$push: {a: {$each: [...], $slice: 3}}}`
                            RawBsonRef::Document(ops) if starts_with_operator(ops) => {
                                structure(s, field, value, depth + 2)
                            }
                            other => literal(s, field, other),
                        });
                        s.close();
                    }
                }
                other => literal(s, modifier, other),
            });
            s.close();
        }
        RawBsonRef::Document(replacement) => {
            if open_document(s, key, depth) {
                each_element(s, replacement.iter_elements(), |s, field, value| {
                    literal(s, field, value)
                });
                s.close();
            }
        }
        other => literal(s, key, other),
    }
}
