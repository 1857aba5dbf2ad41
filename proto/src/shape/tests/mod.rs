//! Shapes of sample commands, asserted whole, and the properties the
//! module promises: literals never show, values never split a shape,
//! structure always does, and hash and document agree.

mod properties;

use super::{shape_doc, shape_hash, ShapeHash};
use crate::command::CommandView;
use crate::op_msg::DocSequence;
use bson::oid::ObjectId;
use bson::{doc, Document, RawDocumentBuf};

pub(super) fn raw(command: &Document) -> RawDocumentBuf {
    RawDocumentBuf::try_from(command).unwrap()
}

pub(super) fn hash(command: &Document) -> Option<ShapeHash> {
    let raw = raw(command);
    shape_hash(&CommandView::parse(&raw).unwrap(), &[])
}

pub(super) fn shape(command: &Document) -> Document {
    let raw = raw(command);
    let view = CommandView::parse(&raw).unwrap();
    Document::try_from(shape_doc(&view, &[]).unwrap()).unwrap()
}

fn find(collection: &str, filter: Document) -> Document {
    doc! { "find": collection, "filter": filter, "$db": "shop" }
}

#[test]
fn finds_differing_only_in_literals_share_a_shape() {
    let a = find(
        "orders",
        doc! { "customerId": "c-1", "total": { "$gt": 10 } },
    );
    let b = find(
        "orders",
        doc! { "customerId": "c-2", "total": { "$gt": 99.5 } },
    );
    assert_eq!(hash(&a), hash(&b));
    assert_eq!(shape(&a), shape(&b));
}

#[test]
fn a_literal_of_another_type_is_another_shape() {
    let by_string = find("orders", doc! { "customerId": "c-1" });
    let by_oid = find("orders", doc! { "customerId": ObjectId::new() });
    assert_ne!(hash(&by_string), hash(&by_oid));
    assert_eq!(
        shape(&by_oid).get_document("filter").unwrap(),
        &doc! { "customerId": "?objectId" }
    );
}

#[test]
fn operators_and_field_names_are_kept() {
    let gt = find("orders", doc! { "total": { "$gt": 1 } });
    let lt = find("orders", doc! { "total": { "$lt": 1 } });
    let other_field = find("orders", doc! { "amount": { "$gt": 1 } });
    assert_ne!(hash(&gt), hash(&lt));
    assert_ne!(hash(&gt), hash(&other_field));
}

#[test]
fn collections_and_databases_split_shapes() {
    let filter = doc! { "status": "A" };
    let orders = find("orders", filter.clone());
    let users = find("users", filter.clone());
    let mut elsewhere = orders.clone();
    elsewhere.insert("$db", "archive");
    assert_ne!(hash(&orders), hash(&users));
    assert_ne!(hash(&orders), hash(&elsewhere));
}

#[test]
fn in_arrays_of_any_length_share_a_shape() {
    let short = find("orders", doc! { "status": { "$in": [1] } });
    let long = find("orders", doc! { "status": { "$in": [1, 2.5, 3_i64, 4] } });
    assert_eq!(hash(&short), hash(&long));
    let filter = doc! { "status": { "$in": "?array<?number>" } };
    assert_eq!(shape(&long).get_document("filter").unwrap(), &filter);
    let mixed = find("orders", doc! { "status": { "$in": [1, "a"] } });
    let empty = find("orders", doc! { "status": { "$in": [] } });
    assert_ne!(hash(&short), hash(&mixed));
    assert_eq!(hash(&mixed), hash(&empty), "both are ?array<>");
}

#[test]
fn the_shape_of_a_find_in_full() {
    let command = doc! {
        "find": "orders",
        "filter": {
            "status": "A",
            "$or": [{ "total": { "$gte": 100, "$lt": 500 } }, { "vip": true }],
            "tags": { "$in": ["a", "b"] },
            "address": { "city": "Paris" },
        },
        "projection": { "_id": 0, "total": 1, "items": { "$slice": 3 } },
        "sort": { "createdAt": -1.0, "total": 1_i64 },
        "limit": 20,
        "skip": 40,
        "hint": { "status": 1 },
        "collation": { "locale": "fr" },
        "singleBatch": false,
        "batchSize": 5,
        "maxTimeMS": 1000,
        "$db": "shop",
        "lsid": { "id": 1 },
    };
    let expected = doc! {
        "cmdNs": { "db": "shop", "coll": "orders" },
        "command": "find",
        "filter": {
            "status": "?string",
            "$or": [{ "total": { "$gte": "?number", "$lt": "?number" } }, { "vip": "?bool" }],
            "tags": { "$in": "?array<?string>" },
            "address": "?object",
        },
        "projection": { "_id": false, "total": true, "items": { "$slice": "?number" } },
        "sort": { "createdAt": -1, "total": 1 },
        "hint": { "status": 1 },
        "collation": { "locale": "fr" },
        "limit": "?number",
        "skip": "?number",
        "singleBatch": false,
    };
    assert_eq!(shape(&command), expected);
}

#[test]
fn the_shape_of_an_aggregate_in_full() {
    let command = doc! {
        "aggregate": "orders",
        "pipeline": [
            { "$match": { "status": "A", "total": { "$gt": 5 } } },
            { "$lookup": { "from": "customers", "localField": "customerId",
                "foreignField": "_id", "as": "customer",
                "pipeline": [{ "$match": { "active": true } }] } },
            { "$unwind": "$customer" },
            { "$group": { "_id": "$customerId", "total": { "$sum": "$amount" },
                "n": { "$sum": 1 }, "big": { "$max": { "$multiply": ["$amount", 1.2] } } } },
            { "$addFields": { "label": { "$concat": ["$name", " (vip)"] } } },
            { "$sort": { "total": -1 } },
            { "$skip": 10 },
            { "$limit": 5 },
            { "$count": "rows" },
            { "$out": "report" },
        ],
        "cursor": {},
        "let": { "minimum": 3 },
        "$db": "shop",
    };
    let expected = doc! {
        "cmdNs": { "db": "shop", "coll": "orders" },
        "command": "aggregate",
        "pipeline": [
            { "$match": { "status": "?string", "total": { "$gt": "?number" } } },
            { "$lookup": { "from": "customers", "localField": "customerId",
                "foreignField": "_id", "as": "customer",
                "pipeline": [{ "$match": { "active": "?bool" } }] } },
            { "$unwind": "$customer" },
            { "$group": { "_id": "$customerId", "total": { "$sum": "$amount" },
                "n": { "$sum": "?number" },
                "big": { "$max": { "$multiply": ["$amount", "?number"] } } } },
            { "$addFields": { "label": { "$concat": ["$name", "?string"] } } },
            { "$sort": { "total": -1 } },
            { "$skip": "?number" },
            { "$limit": "?number" },
            { "$count": "rows" },
            { "$out": "report" },
        ],
        "let": { "minimum": "?number" },
    };
    assert_eq!(shape(&command), expected);
}

fn aggregate(pipeline: Vec<Document>) -> Document {
    doc! { "aggregate": "orders", "pipeline": pipeline, "cursor": {}, "$db": "shop" }
}

#[test]
fn aggregates_differing_only_in_literals_share_a_shape() {
    let a = aggregate(vec![
        doc! { "$match": { "sku": "x" } },
        doc! { "$limit": 1 },
    ]);
    let b = aggregate(vec![
        doc! { "$match": { "sku": "y" } },
        doc! { "$limit": 500 },
    ]);
    assert_eq!(hash(&a), hash(&b));
    let skip = aggregate(vec![doc! { "$match": { "sku": "x" } }, doc! { "$skip": 1 }]);
    let reordered = aggregate(vec![
        doc! { "$limit": 1 },
        doc! { "$match": { "sku": "x" } },
    ]);
    assert_ne!(hash(&a), hash(&skip));
    assert_ne!(hash(&a), hash(&reordered));
}

fn update_body() -> Document {
    doc! { "update": "orders", "ordered": true, "$db": "shop" }
}

fn statements() -> Vec<Document> {
    vec![
        doc! { "q": { "_id": 1 }, "u": { "$set": { "status": "B" }, "$inc": { "n": 1 } } },
        doc! { "q": { "_id": 2 }, "u": { "$set": { "status": "C" }, "$inc": { "n": 5 } } },
        doc! { "q": { "sku": "x" }, "u": { "name": "new", "price": 3 }, "upsert": true },
        doc! { "q": {}, "u": [{ "$set": { "total": { "$add": ["$a", 1] } } }], "multi": true },
    ]
}

#[test]
fn the_shape_of_an_update_in_full() {
    let mut command = update_body();
    command.insert("updates", statements());
    let expected = doc! {
        "cmdNs": { "db": "shop", "coll": "orders" },
        "command": "update",
        "updates": [
            // The two first statements have one shape: written once.
            { "q": { "_id": "?number" },
              "u": { "$set": { "status": "?string" }, "$inc": { "n": "?number" } },
              "multi": false, "upsert": false },
            { "q": { "sku": "?string" }, "u": { "name": "?string", "price": "?number" },
              "multi": false, "upsert": true },
            { "q": {}, "u": [{ "$set": { "total": { "$add": ["$a", "?number"] } } }],
              "multi": true, "upsert": false },
        ],
    };
    assert_eq!(shape(&command), expected);
}

#[test]
fn updates_in_a_document_sequence_shape_as_in_the_body() {
    let mut in_body = update_body();
    in_body.insert("updates", statements());
    let raw_in_body = raw(&in_body);
    let body_view = CommandView::parse(&raw_in_body).unwrap();

    let raw_bare = raw(&update_body());
    let bare_view = CommandView::parse(&raw_bare).unwrap();
    let mut sequence_bytes = Vec::new();
    for statement in statements() {
        sequence_bytes.extend_from_slice(raw(&statement).as_bytes());
    }
    let sequences = [DocSequence {
        identifier: "updates",
        documents: &sequence_bytes,
    }];

    assert_eq!(
        shape_hash(&body_view, &[]),
        shape_hash(&bare_view, &sequences)
    );
    assert_eq!(
        shape_doc(&body_view, &[]),
        shape_doc(&bare_view, &sequences)
    );
    // A sequence of another name is not the statements.
    let wrong = [DocSequence {
        identifier: "documents",
        documents: &sequence_bytes,
    }];
    assert_ne!(shape_hash(&body_view, &[]), shape_hash(&bare_view, &wrong));
}

#[test]
fn delete_count_distinct_and_find_and_modify() {
    let delete =
        doc! { "delete": "orders", "deletes": [{ "q": { "a": 1 }, "limit": 1 }], "$db": "shop" };
    let expected = doc! {
        "cmdNs": { "db": "shop", "coll": "orders" }, "command": "delete",
        "deletes": [{ "q": { "a": "?number" }, "limit": 1 }],
    };
    assert_eq!(shape(&delete), expected);

    let count = doc! { "count": "orders", "query": { "a": "x" }, "limit": 3, "$db": "shop" };
    let expected = doc! {
        "cmdNs": { "db": "shop", "coll": "orders" }, "command": "count",
        "query": { "a": "?string" }, "limit": "?number",
    };
    assert_eq!(shape(&count), expected);

    let distinct = doc! { "distinct": "orders", "key": "sku", "query": { "a": 1 }, "$db": "shop" };
    let expected = doc! {
        "cmdNs": { "db": "shop", "coll": "orders" }, "command": "distinct",
        "key": "sku", "query": { "a": "?number" },
    };
    assert_eq!(shape(&distinct), expected);

    let fam = doc! {
        "findandmodify": "orders", "query": { "_id": 7 }, "sort": { "at": 1 },
        "update": { "$set": { "state": "done" } }, "new": true, "$db": "shop",
    };
    let expected = doc! {
        "cmdNs": { "db": "shop", "coll": "orders" }, "command": "findAndModify",
        "query": { "_id": "?number" }, "sort": { "at": 1 },
        "update": { "$set": { "state": "?string" } }, "new": true,
    };
    assert_eq!(shape(&fam), expected);
}

#[test]
fn commands_without_a_shape_have_none() {
    for command in [
        doc! { "hello": 1, "$db": "admin" },
        doc! { "getMore": 5_i64, "collection": "orders", "$db": "shop" },
        doc! { "insert": "orders", "documents": [{ "a": 1 }], "$db": "shop" },
        doc! { "explain": { "find": "orders" }, "$db": "shop" },
    ] {
        let raw = raw(&command);
        let view = CommandView::parse(&raw).unwrap();
        assert_eq!(shape_hash(&view, &[]), None);
        assert_eq!(shape_doc(&view, &[]), None);
    }
}

#[test]
fn no_literal_value_reaches_the_shape_document() {
    let secret_id = ObjectId::new();
    let command = doc! {
        "aggregate": "orders",
        "pipeline": [
            { "$match": { "owner": "secret-42", "pin": 987654321, "id": secret_id,
                "$expr": { "$eq": ["$code", "secret-43"] },
                "note": { "$regex": "secret-44", "$options": "i" },
                "deep": { "$elemMatch": { "k": "secret-45", "v": { "$in": [987654322] } } } } },
            { "$group": { "_id": { "$concat": ["$a", "secret-46"] }, "s": { "$sum": 987654323 } } },
            { "$project": { "x": { "$literal": "secret-47" }, "y": "secret-48" } },
            { "$addFields": { "z": { "k": "secret-49" } } },
            { "$limit": 987654324 },
        ],
        "let": { "v": "secret-50" },
        "cursor": {},
        "$db": "shop",
    };
    let text = format!("{}", shape(&command));
    for literal in ["secret", "98765432", &secret_id.to_hex()] {
        assert!(!text.contains(literal), "{literal} in {text}");
    }
}

#[test]
fn display_is_sixteen_hex_digits() {
    assert_eq!(ShapeHash(0xab).to_string(), "00000000000000ab");
    let h = hash(&find("orders", doc! {})).unwrap();
    assert_eq!(h.to_string().len(), 16);
}

/// The hash of one fixed shape never changes: dashboards and stored
/// statistics key on it across versions and machines.
#[test]
fn the_hash_is_stable() {
    let h = hash(&find("orders", doc! { "a": 1 })).unwrap();
    assert_eq!(h, hash(&find("orders", doc! { "a": 2 })).unwrap());
    assert_eq!(h.to_string(), STABLE_FIND_HASH);
}

// Pinned when the token format was written: a change here is a change
// of every stored shape hash, to be made on purpose.
const STABLE_FIND_HASH: &str = "ff52a0e81690cf79";

#[test]
fn nesting_past_the_limit_is_cut_off() {
    let mut filter = doc! { "a": 1 };
    for _ in 0..200 {
        filter = doc! { "$and": [filter] };
    }
    let command = find("orders", filter);
    let text = format!("{}", shape(&command));
    assert!(text.contains("?depthLimit"), "{text}");
    assert!(hash(&command).is_some());
}

/// ns per `shape_hash` call on bench-decode's request documents:
/// `cargo test -p mongotap-proto --release -- --ignored --nocapture shape_hash_cost`
#[test]
#[ignore]
fn shape_hash_cost() {
    use std::hint::black_box;
    use std::time::Instant;
    let find = doc! { "find": "coll", "filter": { "sku": "sku-000001", "status": "A" },
    "limit": 1, "singleBatch": true, "$db": "db" };
    let aggregate = doc! { "aggregate": "coll", "pipeline": [
    { "$match": { "sku": "sku-000001", "status": "A" } }, { "$limit": 1 } ],
    "cursor": {}, "$db": "db" };
    for (name, command) in [("find", find), ("aggregate", aggregate)] {
        let raw = raw(&command);
        let view = CommandView::parse(&raw).unwrap();
        // The fastest of several rounds: other work on a shared machine
        // only ever adds time.
        let iterations = 200_000u32;
        let mut best = f64::MAX;
        for _ in 0..10 {
            let started = Instant::now();
            for _ in 0..iterations {
                black_box(shape_hash(black_box(&view), &[]));
            }
            let ns = started.elapsed().as_nanos() as f64 / f64::from(iterations);
            best = best.min(ns);
        }
        println!("shape_hash {name}: {best:.1} ns");
    }
}
