//! CommandView: the fields mongotap reads from a command body, borrowed
//! from an OP_MSG that went through decode and parse.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use bson::raw::RawBsonRef;
use bson::{rawdoc, RawDocument, RawDocumentBuf};
use bytes::BytesMut;
use mongotap_proto::command::{as_bool, as_i64, is_sensitive_command};
use mongotap_proto::{decode, op_msg, CommandView, DecodeError};

/// Runs `f` on the view of `body` as it comes out of a real frame.
fn with_view<T>(body: &RawDocument, f: impl FnOnce(&CommandView<'_>) -> T) -> T {
    let bytes = op_msg::encode(1, 0, 0, body, &[]);
    let mut buf = BytesMut::from(&bytes[..]);
    let frame = decode(&mut buf, common::MAX).unwrap().unwrap();
    let msg = op_msg::parse(&frame.bytes).unwrap();
    let view = CommandView::parse(msg.body).unwrap();
    f(&view)
}

fn stages(body: &RawDocumentBuf) -> Vec<String> {
    with_view(body, |v| v.stages().map(str::to_string).collect())
}

#[test]
fn name_db_and_collection() {
    let find = rawdoc! { "find": "items", "filter": { "a": 1 }, "$db": "shop" };
    with_view(&find, |v| {
        assert_eq!(v.name, "find");
        assert_eq!(v.db, Some("shop"));
        assert_eq!(v.collection(), Some("items"));
        assert_eq!(v.doc.as_bytes(), find.as_bytes());
    });
    let agg = rawdoc! { "aggregate": "orders", "pipeline": [], "cursor": {}, "$db": "shop" };
    with_view(&agg, |v| {
        assert_eq!(v.name, "aggregate");
        assert_eq!(v.collection(), Some("orders"));
    });
    // A database-level aggregate names no collection.
    let db_agg = rawdoc! { "aggregate": 1, "pipeline": [{ "$currentOp": {} }], "$db": "admin" };
    with_view(&db_agg, |v| assert_eq!(v.collection(), None));
    let no_db = rawdoc! { "ping": 1 };
    with_view(&no_db, |v| {
        assert_eq!(v.name, "ping");
        assert_eq!(v.db, None);
        assert_eq!(v.collection(), None);
    });
}

#[test]
fn get_more_collection_and_large_cursor_id() {
    let id: i64 = 0x7fff_ffff_ffff_fff0;
    let body = rawdoc! { "getMore": id, "collection": "items", "batchSize": 100, "$db": "shop" };
    with_view(&body, |v| {
        assert_eq!(v.name, "getMore");
        assert_eq!(v.cursor_id, Some(id));
        assert_eq!(v.collection(), Some("items"));
        assert_eq!(v.db, Some("shop"));
    });
    // The raw bytes keep the int64 exactly (no trip through a double).
    let bytes = op_msg::encode(1, 0, 0, &body, &[]);
    let msg = op_msg::parse(&bytes).unwrap();
    assert_eq!(msg.body.get_i64("getMore").unwrap(), id);
    for id in [i64::MAX, i64::MIN, -1, 1] {
        let body = rawdoc! { "getMore": id, "collection": "c" };
        with_view(&body, |v| assert_eq!(v.cursor_id, Some(id)));
    }
    // `collection` on a command other than getMore is not the collection.
    let body = rawdoc! { "find": "items", "collection": "other" };
    with_view(&body, |v| assert_eq!(v.collection(), Some("items")));
}

#[test]
fn kill_cursors_ids() {
    let body = rawdoc! { "killCursors": "items", "cursors": [1_i64, 0x7fff_ffff_ffff_fff0_i64] };
    with_view(&body, |v| {
        let ids: Vec<i64> = v
            .cursors
            .unwrap()
            .into_iter()
            .map(|c| c.unwrap().as_i64().unwrap())
            .collect();
        assert_eq!(ids, [1, 0x7fff_ffff_ffff_fff0]);
        assert_eq!(v.collection(), Some("items"));
    });
}

#[test]
fn explain_forms() {
    let agg = rawdoc! {
        "explain": {
            "aggregate": "orders",
            "pipeline": [{ "$match": { "a": 1 } }, { "$group": { "_id": "$a" } }],
            "cursor": {},
        },
        "verbosity": "queryPlanner",
        "maxTimeMS": 500,
        "$db": "shop",
    };
    with_view(&agg, |v| {
        assert_eq!(v.name, "explain");
        assert_eq!(v.db, Some("shop"));
        assert_eq!(v.collection(), Some("orders"));
        assert_eq!(v.max_time_ms, Some(500));
        let inner = v.explain_view().unwrap();
        assert_eq!(inner.name, "aggregate");
    });
    assert_eq!(stages(&agg), ["$match", "$group"]);

    let find = rawdoc! { "explain": { "find": "items", "filter": {} }, "$db": "shop" };
    with_view(&find, |v| {
        assert_eq!(v.collection(), Some("items"));
        assert_eq!(v.stages().count(), 0);
    });
    // explain of a non-document is not an explain view.
    let odd = rawdoc! { "explain": "find" };
    with_view(&odd, |v| {
        assert!(v.explain_view().is_none());
        assert_eq!(v.collection(), Some("find"));
    });
}

#[test]
fn aggregate_stages_in_order_without_values() {
    let body = rawdoc! {
        "aggregate": "orders",
        "pipeline": [
            { "$match": { "status": "A" } },
            { "$lookup": { "from": "items", "localField": "i", "foreignField": "_id", "as": "x" } },
            { "$unwind": "$x" },
            { "$group": { "_id": "$x.sku", "n": { "$sum": 1 } } },
        ],
        "cursor": {},
        "$db": "shop",
    };
    assert_eq!(stages(&body), ["$match", "$lookup", "$unwind", "$group"]);
    // Non-document entries and empty stages are skipped, not fatal.
    let odd = rawdoc! { "aggregate": "c", "pipeline": [1, {}, { "$limit": 1 }] };
    assert_eq!(stages(&odd), ["$limit"]);
    let none = rawdoc! { "aggregate": "c", "pipeline": "nope" };
    assert!(stages(&none).is_empty());
}

#[test]
fn max_time_ms_types() {
    let cases = [
        (rawdoc! { "find": "c", "maxTimeMS": 1500_i32 }, Some(1500)),
        (rawdoc! { "find": "c", "maxTimeMS": 1500_i64 }, Some(1500)),
        (rawdoc! { "find": "c", "maxTimeMS": 1500.0 }, Some(1500)),
        (rawdoc! { "find": "c", "maxTimeMS": 0 }, Some(0)),
        (rawdoc! { "find": "c", "maxTimeMS": 1.5 }, None),
        (rawdoc! { "find": "c", "maxTimeMS": "1500" }, None),
        (rawdoc! { "find": "c", "maxTimeMS": f64::NAN }, None),
        (rawdoc! { "find": "c", "maxTimeMS": f64::INFINITY }, None),
        (rawdoc! { "find": "c" }, None),
    ];
    for (body, want) in cases {
        with_view(&body, |v| assert_eq!(v.max_time_ms, want, "{body:?}"));
    }
    assert_eq!(as_i64(RawBsonRef::Double(1e19)), None);
    assert_eq!(as_i64(RawBsonRef::Int64(i64::MIN)), Some(i64::MIN));
}

#[test]
fn allow_disk_use_and_bool_forms() {
    let cases = [
        (
            rawdoc! { "aggregate": "c", "allowDiskUse": true },
            Some(true),
        ),
        (
            rawdoc! { "aggregate": "c", "allowDiskUse": false },
            Some(false),
        ),
        (rawdoc! { "aggregate": "c", "allowDiskUse": 1 }, Some(true)),
        (
            rawdoc! { "aggregate": "c", "allowDiskUse": 0.0 },
            Some(false),
        ),
        (rawdoc! { "aggregate": "c", "allowDiskUse": "yes" }, None),
        (rawdoc! { "aggregate": "c" }, None),
    ];
    for (body, want) in cases {
        with_view(&body, |v| assert_eq!(v.allow_disk_use, want, "{body:?}"));
    }
    assert_eq!(as_bool(RawBsonRef::Int64(2)), Some(true));
    assert_eq!(as_bool(RawBsonRef::Null), None);
}

#[test]
fn comment_and_lsid() {
    let body = rawdoc! {
        "find": "c",
        "comment": "dashboard-42",
        "lsid": { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16] } },
        "$db": "shop",
    };
    with_view(&body, |v| {
        assert_eq!(v.comment.and_then(|c| c.as_str()), Some("dashboard-42"));
        let lsid = v.lsid.unwrap();
        assert_eq!(lsid.get_binary("id").unwrap().bytes, &[7; 16]);
    });
    let doc_comment = rawdoc! { "find": "c", "comment": { "team": "search" } };
    with_view(&doc_comment, |v| {
        let c = v.comment.unwrap().as_document().unwrap();
        assert_eq!(c.get_str("team").unwrap(), "search");
        assert!(v.lsid.is_none());
    });
}

#[test]
fn awaitable_hello() {
    let monitor = rawdoc! {
        "hello": 1,
        "topologyVersion": { "processId": bson::oid::ObjectId::new(), "counter": 0_i64 },
        "maxAwaitTimeMS": 10000,
        "$db": "admin",
    };
    with_view(&monitor, |v| {
        assert!(v.is_hello());
        assert!(v.is_awaitable_hello());
        assert_eq!(v.max_await_time_ms, Some(10000));
    });
    let legacy = rawdoc! { "isMaster": 1, "topologyVersion": {}, "maxAwaitTimeMS": 10000_i64 };
    with_view(&legacy, |v| assert!(v.is_awaitable_hello()));
    let plain = common::hello();
    with_view(&plain, |v| {
        assert!(v.is_hello());
        assert!(!v.is_awaitable_hello());
    });
    let no_wait = rawdoc! { "hello": 1, "topologyVersion": {} };
    with_view(&no_wait, |v| assert!(!v.is_awaitable_hello()));
    let not_hello = rawdoc! { "find": "c", "topologyVersion": {}, "maxAwaitTimeMS": 1 };
    with_view(&not_hello, |v| assert!(!v.is_awaitable_hello()));
}

#[test]
fn tailable_await_data_flags() {
    let body = rawdoc! { "find": "oplog.rs", "tailable": true, "awaitData": true };
    with_view(&body, |v| assert!(v.tailable && v.await_data));
    let body = rawdoc! { "find": "c" };
    with_view(&body, |v| assert!(!v.tailable && !v.await_data));
}

#[test]
fn sensitive_commands() {
    let sasl = rawdoc! {
        "saslStart": 1,
        "mechanism": "SCRAM-SHA-256",
        "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: b"n,,n=u,r=x".to_vec() },
        "$db": "admin",
    };
    with_view(&sasl, |v| assert!(v.is_sensitive()));
    let spec_auth = rawdoc! {
        "hello": 1,
        "speculativeAuthenticate": { "saslStart": 1, "mechanism": "SCRAM-SHA-256" },
        "$db": "admin",
    };
    with_view(&spec_auth, |v| {
        assert!(v.speculative_authenticate);
        assert!(v.is_sensitive());
    });
    let is_master_auth = rawdoc! { "ismaster": 1, "speculativeAuthenticate": {} };
    with_view(&is_master_auth, |v| assert!(v.is_sensitive()));
    with_view(&common::hello(), |v| assert!(!v.is_sensitive()));
    // Only hello makes speculativeAuthenticate sensitive.
    let find = rawdoc! { "find": "c", "speculativeAuthenticate": {} };
    with_view(&find, |v| assert!(!v.is_sensitive()));
    for name in [
        "authenticate",
        "saslStart",
        "saslContinue",
        "getnonce",
        "createUser",
        "updateUser",
        "copydbgetnonce",
        "copydbsaslstart",
        "copydb",
    ] {
        assert!(is_sensitive_command(name), "{name}");
    }
    for name in ["find", "hello", "insert", "dropUser"] {
        assert!(!is_sensitive_command(name), "{name}");
    }
}

#[test]
fn empty_and_malformed_documents() {
    let empty = rawdoc! {};
    assert!(matches!(
        CommandView::parse(&empty),
        Err(DecodeError::InvalidBson { .. })
    ));
    // A valid outer frame whose second element claims a string longer than
    // the document: the framing passes, the element scan must fail.
    let mut bytes = rawdoc! { "find": "c", "filter": "abc" }.into_bytes();
    let at = bytes.len() - 1 - 4 - 4; // int32 length of "abc\0"
    bytes[at..at + 4].copy_from_slice(&100_i32.to_le_bytes());
    let doc = RawDocument::from_bytes(&bytes).unwrap();
    assert!(CommandView::parse(doc).is_err());
    // Bad first element.
    let bytes = [8u8, 0, 0, 0, 0x20, b'x', 0, 0]; // 0x20 is no BSON type
    let doc = RawDocument::from_bytes(&bytes).unwrap();
    assert!(CommandView::parse(doc).is_err());
}
