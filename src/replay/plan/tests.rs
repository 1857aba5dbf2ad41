//! Unit tests for building the plan from capture records.

use super::*;
use crate::config::RewriteConfig;
use bson::rawdoc;
use mongotap_proto::capture::{encode_header, encode_record};
use mongotap_proto::op_query::{self, OpQuery};

fn msg(id: i32, to: i32, flags: u32, body: &RawDocument) -> Vec<u8> {
    op_msg::encode(id, to, flags, body, &[])
}

fn rec(out: &mut Vec<u8>, at: u64, conn: u64, up: bool, redacted: bool, frame: &[u8]) {
    encode_record(
        out,
        &Record {
            mono_ns: at,
            unix_ns: at as i64,
            conn,
            direction: if up {
                Direction::ToServer
            } else {
                Direction::ToClient
            },
            redacted,
            client: "127.0.0.1:5000",
            frame,
        },
    );
}

/// hello, a redacted saslStart, find → getMore on cursor 77, a w:0
/// insert and a legacy OP_QUERY count, each with its capture time.
fn capture() -> tempfile::NamedTempFile {
    let mut b = encode_header(0).to_vec();
    let hello =
        rawdoc! { "hello": 1, "client": { "application": { "name": "shop" } }, "$db": "admin" };
    rec(&mut b, 10, 1, true, false, &msg(1, 0, 0, &hello));
    rec(
        &mut b,
        20,
        1,
        false,
        false,
        &msg(100, 1, 0, &rawdoc! { "ok": 1 }),
    );
    let marker = rawdoc! { "saslStart": 1, "$redacted": true };
    rec(&mut b, 30, 1, true, true, &msg(2, 0, 0, &marker));
    rec(
        &mut b,
        40,
        1,
        false,
        true,
        &msg(101, 2, 0, &rawdoc! { "$redacted": true }),
    );
    let find =
        rawdoc! { "find": "items", "batchSize": 2, "$db": "shop", "$clusterTime": { "t": 1 } };
    rec(&mut b, 1_000, 1, true, false, &msg(3, 0, 0, &find));
    let first =
        rawdoc! { "cursor": { "id": 77i64, "ns": "shop.items", "firstBatch": [{}, {}] }, "ok": 1 };
    rec(&mut b, 1_500, 1, false, false, &msg(102, 3, 0, &first));
    let more = rawdoc! { "getMore": 77i64, "collection": "items", "$db": "shop" };
    rec(&mut b, 2_000, 1, true, false, &msg(4, 0, 0, &more));
    let next = rawdoc! { "cursor": { "id": 0i64, "ns": "shop.items", "nextBatch": [{}] }, "ok": 1 };
    rec(&mut b, 2_600, 1, false, false, &msg(103, 4, 0, &next));
    let insert = rawdoc! { "insert": "items", "writeConcern": { "w": 0 }, "$db": "shop" };
    rec(
        &mut b,
        3_000,
        1,
        true,
        false,
        &msg(5, 0, MORE_TO_COME, &insert),
    );
    let count = rawdoc! { "count": "items" };
    let query = op_query::encode(
        6,
        0,
        &OpQuery {
            flags: 0,
            full_collection_name: "shop.$cmd",
            number_to_skip: 0,
            number_to_return: -1,
            query: &count,
            return_fields_selector: None,
        },
    );
    rec(&mut b, 4_000, 1, true, false, &query);
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, &b).unwrap();
    f
}

#[test]
fn plan_keeps_commands_and_what_the_capture_saw() {
    let f = capture();
    let plan = load(&[f.path().to_path_buf()], None).unwrap();
    assert_eq!(plan.records, 10);
    assert_eq!(plan.conns.len(), 1);
    let conn = &plan.conns[0];
    assert_eq!(conn.app, "shop");
    let names: Vec<&str> = conn.ops.iter().map(|o| o.command.as_str()).collect();
    assert_eq!(names, ["find", "getMore", "insert", "count"]);
    assert_eq!(plan.skipped.get("handshake (hello)"), Some(&1));
    assert_eq!(plan.skipped.get("redacted"), Some(&1));
    assert_eq!(plan.start_ns, 1_000);
    assert_eq!(plan.opened_cursors.get(&77), Some(&1));

    let find = &conn.ops[0];
    assert_eq!(find.namespace, "shop.items");
    assert_eq!(find.captured.docs, 2);
    assert_eq!(find.captured.cursor_id, Some(77));
    assert_eq!(find.captured.latency_ns, Some(500));
    let body = op_msg::parse(&find.frame).unwrap().body.to_owned();
    assert!(body.get("$clusterTime").unwrap().is_none());
    assert_eq!(body.get_str("find").unwrap(), "items");

    let get_more = &conn.ops[1];
    assert_eq!(get_more.captured.docs, 1);
    assert_eq!(get_more.captured.cursor_id, Some(0));
    assert_eq!(get_more.captured.latency_ns, Some(600));

    let insert = &conn.ops[2];
    assert!(insert.fire_and_forget);
    assert_eq!(insert.captured.latency_ns, None);
    assert!(op_msg::parse(&insert.frame).unwrap().more_to_come());

    // The legacy command goes out as OP_MSG with $db from the namespace.
    let count = &conn.ops[3];
    let msg = op_msg::parse(&count.frame).unwrap();
    assert_eq!(msg.body.get_str("$db").unwrap(), "shop");
    assert_eq!(count.namespace, "shop.items");
}

#[test]
fn config_rules_apply_in_enforce_mode_only() {
    let f = capture();
    let files = [f.path().to_path_buf()];
    let rules = |mode: &str| {
        let text = format!(
            "[rewrite]\nmode = \"{mode}\"\n[[rewrite.rule]]\ncommands = [\"find\"]\ndefault_max_time_ms = 777\n"
        );
        let cfg = crate::config::Config::from_toml(&text).unwrap();
        Policy::compile(&cfg.rewrite)
    };
    let plan = load(&files, Some(&rules("enforce"))).unwrap();
    let find = &plan.conns[0].ops[0];
    assert!(find.rewritten);
    let body = op_msg::parse(&find.frame).unwrap().body.to_owned();
    assert_eq!(
        body.get_i64("maxTimeMS")
            .ok()
            .or(body.get_i32("maxTimeMS").ok().map(i64::from)),
        Some(777)
    );
    assert!(
        !plan.conns[0].ops[1].rewritten,
        "getMore is never rewritten"
    );

    let plan = load(&files, Some(&rules("dry-run"))).unwrap();
    assert!(!plan.conns[0].ops[0].rewritten);
    let plan = load(&files, Some(&Policy::compile(&RewriteConfig::default()))).unwrap();
    assert!(!plan.conns[0].ops[0].rewritten);
}

#[test]
fn with_first_replaces_only_the_command_value() {
    let doc = rawdoc! { "getMore": 5i64, "collection": "c", "$db": "d" };
    let out = with_first(&doc, RawBsonRef::Int64(9));
    assert_eq!(
        out,
        rawdoc! { "getMore": 9i64, "collection": "c", "$db": "d" }
    );
}
