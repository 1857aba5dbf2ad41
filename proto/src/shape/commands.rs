//! The top of a shape: which commands have one, and which of their fields
//! enter it, in a fixed order whatever order the client sent them in.
//!
//! The shape is `{cmdNs: {db, coll}, command, <query or statements>,
//! projection, sort, update, arrayFilters, min, max, hint, collation, let,
//! limit, skip, <flags>}`, each part only when present. A field is read
//! the same way whichever command carries it: the server rejects a
//! command with a field it does not take, so such a shape is never run.
//! Fields that do not change what a query does (batchSize, maxTimeMS,
//! comment, readConcern, lsid, ...) are left out.

use super::sink::{HashSink, Sink};
use super::stages::pipeline;
use super::values::{
    each_element, expression, filter_value, kept, literal, open_array, open_document, projection,
    sort, structure, update,
};
use super::MAX_STATEMENTS;
use crate::command::{as_bool, as_i64, CommandView};
use crate::op_msg::DocSequence;
use bson::raw::{cstr, CStr, RawBsonRef, RawDocument};

pub(crate) fn has_shape(name: &str) -> bool {
    Command::from_name(name).is_some()
}

/// The commands that have a shape.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Command {
    Find,
    Aggregate,
    Count,
    Distinct,
    Update,
    Delete,
    FindAndModify,
}

impl Command {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "find" => Command::Find,
            "aggregate" => Command::Aggregate,
            "count" => Command::Count,
            "distinct" => Command::Distinct,
            "update" => Command::Update,
            "delete" => Command::Delete,
            // The server accepts both spellings; they are one command.
            "findAndModify" | "findandmodify" => Command::FindAndModify,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Command::Find => "find",
            Command::Aggregate => "aggregate",
            Command::Count => "count",
            Command::Distinct => "distinct",
            Command::Update => "update",
            Command::Delete => "delete",
            Command::FindAndModify => "findAndModify",
        }
    }
}

/// The first copy of each top-level field a shape may use, found in one
/// pass so the shape can list them in its own order.
#[derive(Default)]
struct Fields<'a> {
    filter: Option<RawBsonRef<'a>>,
    projection: Option<RawBsonRef<'a>>,
    sort: Option<RawBsonRef<'a>>,
    hint: Option<RawBsonRef<'a>>,
    collation: Option<RawBsonRef<'a>>,
    let_: Option<RawBsonRef<'a>>,
    limit: Option<RawBsonRef<'a>>,
    skip: Option<RawBsonRef<'a>>,
    min: Option<RawBsonRef<'a>>,
    max: Option<RawBsonRef<'a>>,
    key: Option<RawBsonRef<'a>>,
    pipeline: Option<RawBsonRef<'a>>,
    statements: Option<RawBsonRef<'a>>,
    update: Option<RawBsonRef<'a>>,
    array_filters: Option<RawBsonRef<'a>>,
    /// find's boolean options and findAndModify's flags, in `FLAGS` order.
    flags: [Option<RawBsonRef<'a>>; FLAGS.len()],
}

/// Boolean options kept in a shape when present. `remove`, `new` and
/// `upsert` are findAndModify's (update statements' `upsert` is read per
/// statement).
const FLAGS: [&CStr; 11] = [
    cstr!("singleBatch"),
    cstr!("allowDiskUse"),
    cstr!("returnKey"),
    cstr!("showRecordId"),
    cstr!("tailable"),
    cstr!("awaitData"),
    cstr!("noCursorTimeout"),
    cstr!("oplogReplay"),
    cstr!("remove"),
    cstr!("new"),
    cstr!("upsert"),
];

impl<'a> Fields<'a> {
    /// Skips the first element: it is the command name.
    fn collect(doc: &'a RawDocument) -> Self {
        let mut fields = Fields::default();
        for element in doc.iter_elements().skip(1).flatten() {
            let key = element.key().as_str();
            let slot = match key {
                // find's filter, count/distinct/findAndModify's query.
                "filter" | "query" => &mut fields.filter,
                "projection" | "fields" => &mut fields.projection,
                "sort" => &mut fields.sort,
                "hint" => &mut fields.hint,
                "collation" => &mut fields.collation,
                "let" => &mut fields.let_,
                "limit" => &mut fields.limit,
                "skip" => &mut fields.skip,
                "min" => &mut fields.min,
                "max" => &mut fields.max,
                "key" => &mut fields.key,
                "pipeline" => &mut fields.pipeline,
                "updates" | "deletes" => &mut fields.statements,
                "update" => &mut fields.update,
                "arrayFilters" => &mut fields.array_filters,
                // In FLAGS order.
                "singleBatch" => &mut fields.flags[0],
                "allowDiskUse" => &mut fields.flags[1],
                "returnKey" => &mut fields.flags[2],
                "showRecordId" => &mut fields.flags[3],
                "tailable" => &mut fields.flags[4],
                "awaitData" => &mut fields.flags[5],
                "noCursorTimeout" => &mut fields.flags[6],
                "oplogReplay" => &mut fields.flags[7],
                "remove" => &mut fields.flags[8],
                "new" => &mut fields.flags[9],
                "upsert" => &mut fields.flags[10],
                _ => continue,
            };
            // Decoded only once it is known to be wanted: most of a
            // body ($db, lsid, cursor, ...) is not part of a shape.
            if slot.is_none() {
                *slot = element.value().ok();
            }
        }
        fields
    }
}

/// Walks a command's shape into `s`; `None` (and nothing written) when the
/// command has no shape.
pub(crate) fn walk<'a, S: Sink<'a>>(
    view: &CommandView<'a>,
    sequences: &[DocSequence<'a>],
    s: &mut S,
) -> Option<()> {
    let command = Command::from_name(view.name)?;
    let fields = Fields::collect(view.doc);
    s.open_document(cstr!("cmdNs"));
    if let Some(db) = view.db {
        s.string(cstr!("db"), db);
    }
    if let Some(collection) = view.collection() {
        s.string(cstr!("coll"), collection);
    }
    s.close();
    s.string(cstr!("command"), command.name());
    // Top-level fields sit at depth 1, inside the shape document.
    let depth = 1;
    match command {
        Command::Find | Command::Count | Command::Distinct | Command::FindAndModify => {
            let query_key = if command == Command::Find {
                cstr!("filter")
            } else {
                cstr!("query")
            };
            if command == Command::Distinct {
                if let Some(key) = fields.key {
                    kept(s, cstr!("key"), key, depth);
                }
            }
            // No filter and `{}` match the same documents: one shape.
            match fields.filter {
                Some(value) => filter_value(s, query_key, value, depth),
                None => {
                    s.open_document(query_key);
                    s.close();
                }
            }
        }
        Command::Aggregate => match fields.pipeline {
            Some(RawBsonRef::Array(stages)) => pipeline(s, cstr!("pipeline"), stages, depth),
            Some(other) => literal(s, cstr!("pipeline"), other),
            None => {}
        },
        Command::Update | Command::Delete => statements(s, command, &fields, sequences, depth),
    }
    if let Some(value) = fields.projection {
        projection(s, cstr!("projection"), value, depth);
    }
    if let Some(value) = fields.sort {
        sort(s, cstr!("sort"), value, depth);
    }
    if let Some(value) = fields.update {
        update(s, cstr!("update"), value, depth);
    }
    if let Some(value) = fields.array_filters {
        array_filters(s, value, depth);
    }
    if command == Command::Find {
        // Index bounds: their fields say which index, their values do not.
        if let Some(value) = fields.min {
            structure(s, cstr!("min"), value, depth);
        }
        if let Some(value) = fields.max {
            structure(s, cstr!("max"), value, depth);
        }
    }
    // Index choice and collation say how a query runs; neither holds data
    // (the server keeps collation as sent too).
    if let Some(value) = fields.hint {
        kept(s, cstr!("hint"), value, depth);
    }
    if let Some(value) = fields.collation {
        kept(s, cstr!("collation"), value, depth);
    }
    if let Some(value) = fields.let_ {
        expression(s, cstr!("let"), value, depth);
    }
    if let Some(value) = fields.limit {
        literal(s, cstr!("limit"), value);
    }
    if let Some(value) = fields.skip {
        literal(s, cstr!("skip"), value);
    }
    for (key, value) in FLAGS.into_iter().zip(fields.flags) {
        if let Some(value) = value {
            flag(s, key, value);
        }
    }
    Some(())
}

fn flag<'a, S: Sink<'a>>(s: &mut S, key: &'static CStr, value: RawBsonRef<'a>) {
    match as_bool(value) {
        Some(flag) => s.boolean(key, flag),
        None => literal(s, key, value),
    }
}

fn array_filters<'a, S: Sink<'a>>(s: &mut S, value: RawBsonRef<'a>, depth: usize) {
    let key = cstr!("arrayFilters");
    let RawBsonRef::Array(filters) = value else {
        return literal(s, key, value);
    };
    if open_array(s, key, depth) {
        each_element(s, filters.iter_elements(), |s, index, value| {
            filter_value(s, index, value, depth + 1)
        });
        s.close();
    }
}

/// An update's or delete's statements, from the body's array and then
/// from the document sequence of the same name. A run of statements with
/// one shape is written once, and at most `MAX_STATEMENTS` are written.
fn statements<'a, S: Sink<'a>>(
    s: &mut S,
    command: Command,
    fields: &Fields<'a>,
    sequences: &[DocSequence<'a>],
    depth: usize,
) {
    let (key, identifier) = if command == Command::Update {
        (cstr!("updates"), "updates")
    } else {
        (cstr!("deletes"), "deletes")
    };
    let from_body = match fields.statements {
        Some(RawBsonRef::Array(array)) => Some(array.into_iter()),
        _ => None,
    };
    let body = from_body.into_iter().flatten().map(|value| match value {
        Ok(RawBsonRef::Document(doc)) => Some(doc),
        _ => None,
    });
    let sequenced = sequences
        .iter()
        .filter(|sequence| sequence.identifier == identifier)
        .flat_map(|sequence| sequence.iter())
        .map(Result::ok);
    if !open_array(s, key, depth) {
        return;
    }
    let mut previous = None;
    let mut written = 0;
    for doc in body.chain(sequenced) {
        // The decision uses a hash of its own, whatever the sink, so the
        // hash and the document skip the same statements.
        let mut own = HashSink::new();
        statement(&mut own, command, doc, depth + 1);
        let this = own.finish();
        if previous == Some(this) {
            continue;
        }
        if written == MAX_STATEMENTS {
            s.string(cstr!(""), "?more");
            break;
        }
        statement(s, command, doc, depth + 1);
        previous = Some(this);
        written += 1;
    }
    s.close();
}

/// One statement: `{q, u, multi, upsert, ...}` or `{q, limit, ...}`. A
/// statement that is not a document is `?invalid`.
fn statement<'a, S: Sink<'a>>(
    s: &mut S,
    command: Command,
    doc: Option<&'a RawDocument>,
    depth: usize,
) {
    let key = cstr!("");
    let Some(doc) = doc else {
        return s.string(key, super::values::INVALID);
    };
    if !open_document(s, key, depth) {
        return;
    }
    let depth = depth + 1;
    let get = |name: &str| doc.get(name).ok().flatten();
    match get("q") {
        Some(q) => filter_value(s, cstr!("q"), q, depth),
        None => {
            s.open_document(cstr!("q"));
            s.close();
        }
    }
    if command == Command::Update {
        if let Some(u) = get("u") {
            update(s, cstr!("u"), u, depth);
        }
        // Absent and false are the same statement.
        let multi = get("multi").and_then(as_bool).unwrap_or(false);
        s.boolean(cstr!("multi"), multi);
        let upsert = get("upsert").and_then(as_bool).unwrap_or(false);
        s.boolean(cstr!("upsert"), upsert);
        if let Some(value) = get("arrayFilters") {
            array_filters(s, value, depth);
        }
        if let Some(value) = get("c") {
            structure(s, cstr!("c"), value, depth);
        }
    } else {
        // 0 deletes every match, 1 deletes one: the limit is the shape.
        match get("limit") {
            Some(limit) => match as_i64(limit) {
                Some(n) => s.int(cstr!("limit"), i32::from(n != 0)),
                None => literal(s, cstr!("limit"), limit),
            },
            None => s.int(cstr!("limit"), 0),
        }
    }
    if let Some(value) = get("hint") {
        kept(s, cstr!("hint"), value, depth);
    }
    if let Some(value) = get("collation") {
        kept(s, cstr!("collation"), value, depth);
    }
    s.close();
}
