//! ReplyView: what mongotap reads from a reply body.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use bson::rawdoc;
use mongotap_proto::ReplyView;

#[test]
fn cursor_batches_are_counted_on_demand() {
    let first = rawdoc! {
        "cursor": { "firstBatch": [{ "a": 1 }, { "a": 2 }, { "a": 3 }], "id": 42_i64, "ns": "shop.items" },
        "ok": 1.0,
    };
    let v = ReplyView::parse(&first).unwrap();
    assert_eq!((v.cursor_id, v.cursor_ns), (Some(42), Some("shop.items")));
    assert_eq!(v.batch_len(), 3);
    assert!(!v.is_error());

    let next = rawdoc! { "cursor": { "nextBatch": [], "id": 0_i64 }, "ok": 1 };
    let v = ReplyView::parse(&next).unwrap();
    assert_eq!((v.cursor_id, v.batch_len()), (Some(0), 0));

    let plain = rawdoc! { "n": 1, "ok": 1 };
    assert_eq!(ReplyView::parse(&plain).unwrap().batch_len(), 0);
}

#[test]
fn failures_and_write_errors_are_errors() {
    let failed = rawdoc! { "ok": 0, "code": 50, "codeName": "MaxTimeMSExpired", "errmsg": "x" };
    let v = ReplyView::parse(&failed).unwrap();
    assert!(v.is_failure() && v.is_error());
    assert_eq!(v.error_code(), Some(50));

    let write = rawdoc! { "n": 0, "writeErrors": [{ "index": 0, "code": 11000 }], "ok": 1 };
    let v = ReplyView::parse(&write).unwrap();
    assert!(!v.is_failure() && v.is_error());
    assert_eq!((v.write_errors, v.error_code()), (1, Some(11000)));
}
