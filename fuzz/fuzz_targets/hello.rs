//! The replica-set address rewriter on arbitrary reply frames.
//!
//! The input's first byte chooses the reply kind and how the rest is used
//! (seeds in fuzz/seeds/hello):
//! as a whole frame (any opcode, compressed or not), or as a body document
//! wrapped in a valid OP_MSG (so the fuzzer reaches the rewriter without
//! first learning to frame). The map advertises `mongotap/<member>` for
//! members of even length and refuses the others.
//!
//! Invariants, whenever `rewrite_reply` returns a new frame:
//! - it is a message a client can read, with every top-level element valid,
//!   and it keeps the input's requestID and responseTo;
//! - for hello, every address left in hosts/passives/arbiters/primary is
//!   one the map gave, and `me` is the map's;
//! - every top-level element the rewriter does not own is copied byte for
//!   byte, in order.
#![no_main]

use bson::RawDocument;
use libfuzzer_sys::fuzz_target;
use mongotap_proto::hello::{rewrite_reply, AddressMap, ReplyKind};
use mongotap_proto::message::{with_message, Message};
use mongotap_proto::{op_msg, Header, MAX_MESSAGE_LEN};

const ME: &str = "mongotap/me";

struct EvenOnly;

impl AddressMap for EvenOnly {
    fn advertise(&mut self, member: &str) -> Option<String> {
        (member.len() % 2 == 0).then(|| format!("mongotap/{member}"))
    }
    fn me(&self) -> &str {
        ME
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    // Bits 0-1: the reply kind; bit 2: wrap the rest as a body; bit 3:
    // with a checksum.
    let kind = match choice & 3 {
        0 => ReplyKind::Hello,
        1 => ReplyKind::ReplSetGetStatus,
        _ => ReplyKind::ReplSetGetConfig,
    };
    if choice & 4 == 0 {
        check(rest, kind);
    } else if let Ok(body) = RawDocument::from_bytes(rest) {
        let flags = u32::from(choice & 8 != 0) * op_msg::CHECKSUM_PRESENT;
        check(&op_msg::encode(7, 6, flags, body, &[]), kind);
    }
});

fn check(frame: &[u8], kind: ReplyKind) {
    let Ok(Some(out)) = rewrite_reply(frame, kind, &mut EvenOnly, MAX_MESSAGE_LEN) else {
        return;
    };
    let before = Header::parse(frame).expect("a rewritten frame had a header");
    let after = Header::parse(&out).expect("the rewrite has a header");
    assert_eq!(
        (after.request_id, after.response_to),
        (before.request_id, before.response_to),
        "ids changed"
    );
    let original = first_document(frame).expect("a rewritten frame had a body");
    let body = first_document(&out).expect("the rewrite is readable");
    for element in body.iter_elements() {
        element.expect("every element of the rewrite parses");
    }
    let owned: &[&str] = match kind {
        ReplyKind::Hello => &["hosts", "passives", "arbiters", "primary", "me"],
        ReplyKind::ReplSetGetStatus => &["members", "syncSourceHost", "syncingTo"],
        ReplyKind::ReplSetGetConfig => &["config"],
    };
    assert_eq!(
        untouched(&original, owned),
        untouched(&body, owned),
        "an element was changed or reordered"
    );
    if kind == ReplyKind::Hello {
        // Only the owned elements are read: another may be invalid, copied
        // as the server sent it.
        for element in body.iter_elements().map(|e| e.expect("parses")) {
            let key = element.key().as_str();
            if !owned.contains(&key) {
                continue;
            }
            let value = element.value().expect("a rewritten value parses");
            match key {
                "hosts" | "passives" | "arbiters" => {
                    let list = value.as_array().expect("a member list stays an array");
                    for item in list {
                        let address = item.expect("parses").as_str().expect("a string");
                        assert!(address.starts_with("mongotap/"), "{address} passed on");
                    }
                }
                "primary" => {
                    let address = value.as_str().expect("a string");
                    assert!(address.starts_with("mongotap/"), "{address} passed on");
                }
                "me" => assert_eq!(value.as_str(), Some(ME)),
                _ => {}
            }
        }
    }
}

/// The reply document of an OP_MSG or OP_REPLY, decompressed if need be.
fn first_document(frame: &[u8]) -> Option<bson::RawDocumentBuf> {
    with_message(frame, MAX_MESSAGE_LEN, |_, _, message| match message {
        Message::Msg(msg) => Some(msg.body.to_owned()),
        Message::Reply(reply) => reply.first().map(ToOwned::to_owned),
        Message::Query(_) | Message::Unknown => None,
    })
    .ok()
    .flatten()
}

/// The raw bytes of each element not in `owned`, in order.
fn untouched(doc: &RawDocument, owned: &[&str]) -> Vec<Vec<u8>> {
    let bytes = doc.as_bytes();
    let mut offset = 4;
    let mut out = Vec::new();
    for e in doc.iter_elements().map_while(Result::ok) {
        let len = 1 + e.key().as_str().len() + 1 + e.size();
        if !owned.contains(&e.key().as_str()) {
            out.push(bytes[offset..offset + len].to_vec());
        }
        offset += len;
    }
    out
}
