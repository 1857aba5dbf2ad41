//! Arbitrary bytes as a client or server stream: cut frames with `decode`
//! until it needs more bytes or refuses, and parse each frame with its
//! opcode's parser (decompressing OP_COMPRESSED at the 48 MB limit) and
//! every document with `CommandView` (and the rewriter) and `ReplyView`.
#![no_main]

use bson::RawDocument;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mongotap_proto::rewrite::{rewrite, Limits};
use mongotap_proto::{
    decode, op_compressed, op_msg, op_query, op_reply, sniff, CommandView, OpCode, ReplyView,
    MAX_MESSAGE_LEN,
};

fuzz_target!(|data: &[u8]| {
    let _ = sniff::foreign_protocol(data);
    let mut buf = BytesMut::from(data);
    loop {
        match decode(&mut buf, MAX_MESSAGE_LEN) {
            Ok(Some(frame)) => {
                assert_eq!(frame.bytes.len(), frame.header.message_length as usize);
                message(frame.header.op_code, &frame.bytes, true);
            }
            Ok(None) => break,
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
});

fn message(op: OpCode, m: &[u8], may_decompress: bool) {
    match op {
        OpCode::Msg => {
            if let Ok(msg) = op_msg::parse(m) {
                command(msg.body);
                for s in &msg.sequences {
                    for d in s.iter() {
                        command(d.expect("parse validated the sequence"));
                    }
                }
            }
        }
        OpCode::Query => {
            if let Ok(q) = op_query::parse(m) {
                let _ = (q.db(), q.is_command());
                command(q.command());
            }
        }
        OpCode::Reply => {
            if let Ok(r) = op_reply::parse(m) {
                for d in r.iter() {
                    command(d.expect("parse validated the documents"));
                }
            }
        }
        OpCode::Compressed if may_decompress => {
            if let Ok(out) = op_compressed::decompress(m, MAX_MESSAGE_LEN) {
                let header = mongotap_proto::Header::parse(&out).expect("header written");
                assert_eq!(header.message_length as usize, out.len());
                assert!(out.len() <= MAX_MESSAGE_LEN);
                assert_ne!(header.op_code, OpCode::Compressed);
                message(header.op_code, &out, false);
            }
        }
        _ => {}
    }
}

fn command(doc: &RawDocument) {
    if let Ok(r) = ReplyView::parse(doc) {
        let _ = (r.is_error(), r.error_code(), r.batch_len());
    }
    if let Ok(v) = CommandView::parse(doc) {
        let _ = (
            v.collection(),
            v.stages().count(),
            v.is_sensitive(),
            v.is_awaitable_hello(),
            format!("{v:?}"),
        );
        let limits = Limits {
            default_max_time_ms: Some(30_000),
            max_time_ms_cap: Some(60_000),
            allow_disk_use: true,
        };
        if let Ok(Some(new)) = rewrite(&v, &limits) {
            let out = RawDocument::from_bytes(&new.body).expect("rewrite emits a valid document");
            let first = out
                .iter()
                .next()
                .expect("not empty")
                .expect("valid element");
            assert_eq!(first.0.as_str(), v.name);
            assert!(out.iter().all(|kv| kv.is_ok()));
        }
    }
}
