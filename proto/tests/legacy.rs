//! OP_QUERY and OP_REPLY, the legacy handshake's opcodes: round trips and
//! malformed messages.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use bson::{rawdoc, RawDocumentBuf};
use bytes::BytesMut;
use common::{concat, put_i32, MAX};
use mongotap_proto::op_query::{self, OpQuery};
use mongotap_proto::op_reply::{self, OpReply, CURSOR_NOT_FOUND, QUERY_FAILURE};
use mongotap_proto::{decode, CommandView, DecodeError, Frame, OpCode, HEADER_LEN};

fn cut(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let f = decode(&mut buf, MAX).unwrap().unwrap();
    assert!(buf.is_empty());
    f
}

#[test]
fn op_query_round_trip() {
    let query = rawdoc! { "isMaster": 1, "client": { "application": { "name": "legacy" } } };
    let fields = rawdoc! { "ismaster": 1 };
    for selector in [None, Some(&*fields)] {
        let q = OpQuery {
            flags: 4, // SlaveOk
            full_collection_name: "admin.$cmd",
            number_to_skip: 0,
            number_to_return: -1,
            query: &query,
            return_fields_selector: selector,
        };
        let bytes = op_query::encode(11, 0, &q);
        let f = cut(&bytes);
        assert_eq!(f.header.op_code, OpCode::Query);
        assert_eq!(f.header.request_id, 11);
        let parsed = op_query::parse(&f.bytes).unwrap();
        assert_eq!(parsed, q);
        assert_eq!(parsed.db(), "admin");
        assert!(parsed.is_command());
        assert_eq!(parsed.command().as_bytes(), query.as_bytes());
        let view = CommandView::parse(parsed.command()).unwrap();
        assert_eq!(view.name, "isMaster");
        assert!(view.is_hello());
    }
}

#[test]
fn op_query_wrapped_command_and_legacy_find() {
    let wrapped = rawdoc! {
        "$query": { "count": "items", "query": {} },
        "$readPreference": { "mode": "secondaryPreferred" },
    };
    let q = OpQuery {
        flags: 0,
        full_collection_name: "shop.$cmd",
        number_to_skip: 0,
        number_to_return: 1,
        query: &wrapped,
        return_fields_selector: None,
    };
    let bytes = op_query::encode(1, 0, &q);
    let parsed = op_query::parse(&bytes).unwrap();
    assert_eq!(parsed.db(), "shop");
    let view = CommandView::parse(parsed.command()).unwrap();
    assert_eq!(view.name, "count");
    assert_eq!(view.collection(), Some("items"));

    let filter = rawdoc! { "x": 1 };
    let find = OpQuery {
        full_collection_name: "shop.items.archive",
        query: &filter,
        ..q
    };
    let find_bytes = op_query::encode(2, 0, &find);
    let parsed = op_query::parse(&find_bytes).unwrap();
    assert_eq!(parsed.db(), "shop");
    assert!(!parsed.is_command());
    assert_eq!(parsed.command().as_bytes(), filter.as_bytes());

    let no_dot = OpQuery {
        full_collection_name: "nodot",
        ..find
    };
    assert_eq!(
        op_query::parse(&op_query::encode(3, 0, &no_dot))
            .unwrap()
            .db(),
        "nodot"
    );
}

fn query_bytes() -> Vec<u8> {
    let query = rawdoc! { "isMaster": 1 };
    op_query::encode(
        1,
        0,
        &OpQuery {
            flags: 0,
            full_collection_name: "admin.$cmd",
            number_to_skip: 0,
            number_to_return: -1,
            query: &query,
            return_fields_selector: None,
        },
    )
}

#[test]
fn op_query_trailing_bytes() {
    let mut bytes = query_bytes();
    bytes.extend_from_slice(&[5, 0, 0, 0, 0, 9, 9]);
    assert_eq!(
        op_query::parse(&bytes).unwrap_err(),
        DecodeError::TrailingBytes {
            opcode: "OP_QUERY",
            extra: 2
        }
    );
}

#[test]
fn op_query_truncated_everywhere() {
    let bytes = query_bytes();
    for n in 0..bytes.len() {
        assert!(op_query::parse(&bytes[..n]).is_err(), "cut at {n}");
    }
}

#[test]
fn op_query_collection_name_without_nul_or_utf8() {
    let mut body = 0i32.to_le_bytes().to_vec();
    body.extend_from_slice(b"admin.$cmd");
    let bytes = common::frame(2004, 1, 0, &body, 0);
    assert_eq!(
        op_query::parse(&bytes).unwrap_err(),
        DecodeError::BadCString {
            opcode: "OP_QUERY",
            what: "fullCollectionName"
        }
    );
    let mut body = 0i32.to_le_bytes().to_vec();
    body.extend_from_slice(b"adm\xffin\0");
    body.extend_from_slice(&[0; 8]);
    body.extend_from_slice(rawdoc! {}.as_bytes());
    assert!(matches!(
        op_query::parse(&common::frame(2004, 1, 0, &body, 0)),
        Err(DecodeError::BadCString { .. })
    ));
}

fn reply_docs(n: i32) -> Vec<RawDocumentBuf> {
    (0..n).map(|i| rawdoc! { "i": i, "ok": 1.0 }).collect()
}

#[test]
fn op_reply_round_trip() {
    for n in [0, 1, 3] {
        let docs = concat(&reply_docs(n));
        let reply = OpReply {
            response_flags: CURSOR_NOT_FOUND | QUERY_FAILURE,
            cursor_id: 0x7fff_ffff_ffff_fff0,
            starting_from: 5,
            number_returned: n,
            documents: &docs,
        };
        let bytes = op_reply::encode(12, 11, &reply);
        let f = cut(&bytes);
        assert_eq!(f.header.op_code, OpCode::Reply);
        assert_eq!(f.header.response_to, 11);
        let parsed = op_reply::parse(&f.bytes).unwrap();
        assert_eq!(parsed, reply);
        let got: Vec<&[u8]> = parsed.iter().map(|d| d.unwrap().as_bytes()).collect();
        let want = reply_docs(n);
        let want: Vec<&[u8]> = want.iter().map(|d| d.as_bytes()).collect();
        assert_eq!(got, want);
        assert_eq!(parsed.first().map(|d| d.as_bytes()), want.first().copied());
    }
}

#[test]
fn op_reply_number_returned_mismatch() {
    let docs = concat(&reply_docs(2));
    for claimed in [0, 1, 3, -1] {
        let reply = OpReply {
            response_flags: 0,
            cursor_id: 0,
            starting_from: 0,
            number_returned: claimed,
            documents: &docs,
        };
        assert!(
            matches!(
                op_reply::parse(&op_reply::encode(1, 0, &reply)),
                Err(DecodeError::InvalidBson {
                    opcode: "OP_REPLY",
                    ..
                })
            ),
            "numberReturned {claimed}"
        );
    }
}

#[test]
fn op_reply_document_length_lies() {
    let docs = concat(&reply_docs(1));
    let reply = OpReply {
        response_flags: 0,
        cursor_id: 0,
        starting_from: 0,
        number_returned: 1,
        documents: &docs,
    };
    let good = op_reply::encode(1, 0, &reply);
    let at = HEADER_LEN + 20;
    for len in [i32::MIN, -1, 0, 4, docs.len() as i32 + 1, i32::MAX] {
        let mut bad = good.clone();
        put_i32(&mut bad, at, len);
        assert!(op_reply::parse(&bad).is_err(), "length {len}");
    }
    // Trailing garbage after the last document.
    let mut bad = good.clone();
    bad.extend_from_slice(&[1, 2]);
    assert!(op_reply::parse(&bad).is_err());
    for n in 0..good.len() {
        assert!(op_reply::parse(&good[..n]).is_err(), "cut at {n}");
    }
}
