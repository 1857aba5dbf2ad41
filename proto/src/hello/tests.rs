use super::*;
use crate::op_msg::{DocSequence, CHECKSUM_PRESENT, EXHAUST_ALLOWED, MORE_TO_COME};
use bson::oid::ObjectId;
use bson::raw::RawDocumentBuf;
use bson::{rawdoc, Timestamp};

const LIMIT: usize = MAX_MESSAGE_LEN;

/// Three members behind listeners; anything else is unknown.
struct Listeners {
    me: &'static str,
    /// Every address the rewriter asked about, in order.
    asked: Vec<String>,
}

impl Listeners {
    fn new() -> Self {
        Listeners {
            me: "proxy:30002",
            asked: Vec::new(),
        }
    }
}

impl AddressMap for Listeners {
    fn advertise(&mut self, member: &str) -> Option<String> {
        self.asked.push(member.to_owned());
        let listener = match member {
            "db-a.internal:27017" => "proxy:30001",
            "db-b.internal:27017" => "proxy:30002",
            "db-c.internal:27017" => "proxy:30003",
            // Maps to itself: a rewrite through it changes no byte.
            "proxy:30001" => "proxy:30001",
            _ => return None,
        };
        Some(listener.to_owned())
    }
    fn me(&self) -> &str {
        self.me
    }
}

fn secondary_hello() -> RawDocumentBuf {
    rawdoc! {
        "topologyVersion": { "processId": ObjectId::from_bytes([7; 12]), "counter": 6_i64 },
        "hosts": ["DB-A.Internal:27017", "db-b.internal:27017", "db-x.internal:27017"],
        "passives": ["db-c.internal:27017"],
        "arbiters": ["db-x.internal:27018"],
        "setName": "rs0",
        "setVersion": 3,
        "isWritablePrimary": false,
        "secondary": true,
        "primary": "DB-A.Internal:27017",
        "me": "db-b.internal:27017",
        "electionId": ObjectId::from_bytes([9; 12]),
        "maxWireVersion": 21,
        "ok": 1.0,
        "$clusterTime": { "clusterTime": Timestamp { time: 5, increment: 1 } },
    }
}

const HELLO_ADDRESS_KEYS: &[&str] = &["hosts", "passives", "arbiters", "primary", "me"];

fn msg(doc: &RawDocument, flags: u32) -> Vec<u8> {
    op_msg::encode(41, 40, flags, doc, &[])
}

fn strings(doc: &RawDocument, key: &str) -> Option<Vec<String>> {
    let list = doc.get(key).ok()??.as_array()?;
    list.into_iter()
        .map(|item| item.ok().and_then(|v| v.as_str()).map(str::to_owned))
        .collect()
}

fn string<'a>(doc: &'a RawDocument, key: &str) -> Option<&'a str> {
    doc.get(key).ok()??.as_str()
}

/// The raw bytes of every element whose key is not in `skip`, in order.
fn other_elements(doc: &RawDocument, skip: &[&str]) -> Vec<(String, Vec<u8>)> {
    splice::elements(doc)
        .map(|e| e.expect("valid element"))
        .filter(|e| !skip.contains(&e.key()))
        .map(|e| (e.key().to_owned(), e.value.to_vec()))
        .collect()
}

fn keys(doc: &RawDocument) -> Vec<String> {
    doc.iter_elements()
        .map(|e| e.expect("valid element").key().as_str().to_owned())
        .collect()
}

fn rewrite_msg(frame: &[u8], kind: ReplyKind) -> Vec<u8> {
    rewrite_reply(frame, kind, &mut Listeners::new(), LIMIT)
        .expect("rewrites")
        .expect("something changes")
}

#[test]
fn hello_members_are_lower_cased_mapped_and_the_unknown_removed() {
    let hello = secondary_hello();
    let mut map = Listeners::new();
    let out = rewrite_reply(&msg(&hello, 0), ReplyKind::Hello, &mut map, LIMIT)
        .expect("rewrites")
        .expect("something changes");
    let body = op_msg::parse(&out).expect("valid OP_MSG").body;

    let hosts = strings(body, "hosts").expect("hosts");
    assert_eq!(hosts, ["proxy:30001", "proxy:30002"]);
    assert_eq!(
        strings(body, "passives").expect("passives"),
        ["proxy:30003"]
    );
    assert_eq!(
        strings(body, "arbiters").expect("arbiters"),
        Vec::<String>::new()
    );
    assert_eq!(string(body, "primary"), Some("proxy:30001"));
    assert_eq!(string(body, "me"), Some("proxy:30002"));
    // The map saw every address once, lower-cased; `me` is not looked up.
    assert_eq!(
        map.asked,
        [
            "db-a.internal:27017",
            "db-b.internal:27017",
            "db-x.internal:27017",
            "db-c.internal:27017",
            "db-x.internal:27018",
            "db-a.internal:27017",
        ]
    );
    // Everything else is byte-identical, and every key keeps its place.
    assert_eq!(
        other_elements(body, HELLO_ADDRESS_KEYS),
        other_elements(&hello, HELLO_ADDRESS_KEYS)
    );
    assert_eq!(keys(body), keys(&hello));
}

#[test]
fn an_unmapped_primary_is_removed_and_an_absent_me_is_not_added() {
    let hello = rawdoc! {
        "hosts": ["db-a.internal:27017", "db-x.internal:27017"],
        "setName": "rs0",
        "primary": "db-x.internal:27017",
        "ok": 1,
    };
    let out = rewrite_msg(&msg(&hello, 0), ReplyKind::Hello);
    let body = op_msg::parse(&out).expect("valid OP_MSG").body;
    assert_eq!(keys(body), ["hosts", "setName", "ok"]);
    assert_eq!(strings(body, "hosts").expect("hosts"), ["proxy:30001"]);
}

#[test]
fn op_msg_keeps_ids_flags_and_sequences_and_recomputes_the_checksum() {
    let hello = secondary_hello();
    let extra = rawdoc! { "n": 1 };
    let sequence = [DocSequence {
        identifier: "documents",
        documents: extra.as_bytes(),
    }];
    let flags = CHECKSUM_PRESENT | MORE_TO_COME | EXHAUST_ALLOWED;
    let frame = op_msg::encode(1234, 99, flags, &hello, &sequence);
    let out = rewrite_msg(&frame, ReplyKind::Hello);

    let header = Header::parse(&out).expect("header");
    assert_eq!((header.request_id, header.response_to), (1234, 99));
    assert_eq!(header.message_length as usize, out.len());
    // parse verifies the CRC-32C against the new bytes.
    let parsed = op_msg::parse(&out).expect("valid OP_MSG, checksum included");
    assert_eq!(parsed.flags, flags);
    assert!(parsed.more_to_come() && parsed.exhaust_allowed());
    assert_eq!(parsed.sequences.as_slice(), &sequence);
    let (sections, crc) = out.split_at(out.len() - 4);
    assert_eq!(crc, crc32c::crc32c(sections).to_le_bytes());
    assert_ne!(crc, &frame[frame.len() - 4..], "the old checksum was kept");
    assert_eq!(string(parsed.body, "me"), Some("proxy:30002"));
}

#[test]
fn legacy_op_reply_is_rewritten_with_its_fields_kept() {
    let hello = secondary_hello();
    let trailing = rawdoc! { "x": 1 };
    let mut documents = hello.as_bytes().to_vec();
    documents.extend_from_slice(trailing.as_bytes());
    let reply = OpReply {
        response_flags: 8,
        cursor_id: 77,
        starting_from: 3,
        number_returned: 2,
        documents: &documents,
    };
    let frame = op_reply::encode(500, 499, &reply);
    let out = rewrite_msg(&frame, ReplyKind::Hello);

    let header = Header::parse(&out).expect("header");
    assert_eq!((header.request_id, header.response_to), (500, 499));
    assert_eq!(header.op_code, OpCode::Reply);
    let parsed = op_reply::parse(&out).expect("valid OP_REPLY");
    assert_eq!(
        (
            parsed.response_flags,
            parsed.cursor_id,
            parsed.starting_from,
            parsed.number_returned
        ),
        (8, 77, 3, 2)
    );
    let first = parsed.first().expect("first document");
    assert_eq!(
        strings(first, "hosts").expect("hosts"),
        ["proxy:30001", "proxy:30002"]
    );
    assert_eq!(string(first, "me"), Some("proxy:30002"));
    let second = parsed.iter().nth(1).expect("second").expect("valid");
    assert_eq!(second.as_bytes(), trailing.as_bytes());
}

#[test]
fn op_compressed_is_recompressed_with_the_same_compressor() {
    let hello = secondary_hello();
    for compressor in [
        Compressor::Snappy,
        Compressor::Zlib,
        Compressor::Zstd,
        Compressor::Noop,
    ] {
        let inner = op_msg::encode(8, 7, CHECKSUM_PRESENT, &hello, &[]);
        let frame = op_compressed::compress(&inner, compressor).expect("compresses");
        let mut map = Listeners::new();
        let rewrite =
            rewrite_reply_with_facts(&frame, ReplyKind::Hello, &mut map, LIMIT).expect("rewrites");
        let out = rewrite.frame.expect("something changes");

        let header = Header::parse(&out).expect("header");
        assert_eq!((header.request_id, header.response_to), (8, 7));
        let compressed = op_compressed::parse(&out, LIMIT).expect("valid OP_COMPRESSED");
        assert_eq!(compressed.compressor, compressor);
        assert_eq!(compressed.original_opcode, OpCode::Msg);
        let message = op_compressed::decompress(&out, LIMIT).expect("decompresses");
        let body = op_msg::parse(&message).expect("valid OP_MSG").body;
        assert_eq!(
            strings(body, "hosts").expect("hosts"),
            ["proxy:30001", "proxy:30002"],
            "{compressor:?}"
        );
        assert_eq!(string(body, "me"), Some("proxy:30002"));
        // The facts come from the same decompression, before mapping.
        let facts = rewrite.facts.expect("hello facts");
        assert_eq!(facts.me.as_deref(), Some("db-b.internal:27017"));
    }
}

#[test]
fn replies_with_nothing_to_rewrite_are_forwarded() {
    let mongos = rawdoc! {
        "isWritablePrimary": true, "msg": "isdbgrid", "maxWireVersion": 21, "ok": 1.0,
    };
    let standalone = rawdoc! { "isWritablePrimary": true, "maxWireVersion": 21, "ok": 1.0 };
    // Already advertises mongotap: mapping changes no byte.
    let mapped = rawdoc! { "hosts": ["proxy:30001"], "me": "proxy:30002", "ok": 1.0 };
    for doc in [&mongos, &standalone, &mapped] {
        let reply = OpReply {
            response_flags: 8,
            cursor_id: 0,
            starting_from: 0,
            number_returned: 1,
            documents: doc.as_bytes(),
        };
        for frame in [msg(doc, CHECKSUM_PRESENT), op_reply::encode(3, 2, &reply)] {
            let mut map = Listeners::new();
            let out = rewrite_reply(&frame, ReplyKind::Hello, &mut map, LIMIT);
            assert_eq!(out, Ok(None), "{doc:?}");
        }
    }
    // Not a reply mongotap rewrites.
    let query = crate::op_query::encode(
        1,
        0,
        &crate::op_query::OpQuery {
            flags: 0,
            full_collection_name: "admin.$cmd",
            number_to_skip: 0,
            number_to_return: -1,
            query: &standalone,
            return_fields_selector: None,
        },
    );
    let out = rewrite_reply(&query, ReplyKind::Hello, &mut Listeners::new(), LIMIT);
    assert_eq!(out, Ok(None));
}

#[test]
fn repl_set_get_status_maps_names_and_sync_sources() {
    let status = rawdoc! {
        "set": "rs0",
        "myState": 2,
        "syncSourceHost": "DB-A.Internal:27017",
        "members": [
            { "_id": 0, "name": "DB-A.Internal:27017", "stateStr": "PRIMARY", "syncSourceHost": "" },
            { "_id": 1, "name": "db-x.internal:27017", "stateStr": "SECONDARY" },
            { "_id": 2, "name": "db-b.internal:27017", "syncSourceHost": "db-x.internal:27017", "self": true },
        ],
        "ok": 1.0,
    };
    let out = rewrite_msg(&msg(&status, 0), ReplyKind::ReplSetGetStatus);
    let body = op_msg::parse(&out).expect("valid OP_MSG").body;

    assert_eq!(string(body, "syncSourceHost"), Some("proxy:30001"));
    assert_eq!(keys(body), keys(&status));
    let members = body
        .get("members")
        .ok()
        .flatten()
        .and_then(|m| m.as_array())
        .expect("members");
    let members: Vec<&RawDocument> = members
        .into_iter()
        .map(|m| {
            m.ok()
                .and_then(|m| m.as_document())
                .expect("member document")
        })
        .collect();
    assert_eq!(members.len(), 2, "the unmapped member is removed");
    assert_eq!(string(members[0], "name"), Some("proxy:30001"));
    assert_eq!(string(members[0], "syncSourceHost"), Some(""));
    assert_eq!(string(members[0], "stateStr"), Some("PRIMARY"));
    assert_eq!(string(members[1], "name"), Some("proxy:30002"));
    assert_eq!(
        string(members[1], "syncSourceHost"),
        Some(""),
        "unmapped sync source emptied"
    );
    assert_eq!(keys(members[1]), ["_id", "name", "syncSourceHost", "self"]);
    // Re-numbered: a driver reads the array keys "0", "1".
    let array = body
        .get("members")
        .ok()
        .flatten()
        .and_then(|m| m.as_array())
        .expect("members");
    let index_keys: Vec<String> = array
        .iter_elements()
        .map(|e| e.expect("valid element").key().as_str().to_owned())
        .collect();
    assert_eq!(index_keys, ["0", "1"]);
}

#[test]
fn repl_set_get_config_maps_hosts_and_removes_the_unknown() {
    let config = rawdoc! {
        "config": {
            "_id": "rs0",
            "version": 5,
            "members": [
                { "_id": 0, "host": "db-a.internal:27017", "priority": 1.0 },
                { "_id": 1, "host": "db-x.internal:27017", "priority": 1.0 },
                { "_id": 2, "host": "DB-C.internal:27017", "hidden": true },
            ],
            "settings": { "chainingAllowed": true },
        },
        "ok": 1.0,
    };
    let out = rewrite_msg(&msg(&config, 0), ReplyKind::ReplSetGetConfig);
    let body = op_msg::parse(&out).expect("valid OP_MSG").body;
    let inner = body
        .get("config")
        .ok()
        .flatten()
        .and_then(|c| c.as_document())
        .expect("config");
    assert_eq!(keys(inner), ["_id", "version", "members", "settings"]);
    let before = config
        .get("config")
        .ok()
        .flatten()
        .and_then(|c| c.as_document())
        .expect("config");
    assert_eq!(
        other_elements(inner, &["members"]),
        other_elements(before, &["members"])
    );
    let hosts: Vec<(i32, String)> = inner
        .get("members")
        .ok()
        .flatten()
        .and_then(|m| m.as_array())
        .expect("members")
        .into_iter()
        .map(|m| {
            let m = m.ok().and_then(|m| m.as_document()).expect("member");
            let id = m.get_i32("_id").expect("_id");
            (id, string(m, "host").expect("host").to_owned())
        })
        .collect();
    assert_eq!(
        hosts,
        [(0, "proxy:30001".to_owned()), (2, "proxy:30003".to_owned())]
    );
}

/// Maps every member to one long name.
struct LongNames;

impl AddressMap for LongNames {
    fn advertise(&mut self, _member: &str) -> Option<String> {
        Some(format!("{}:1", "m".repeat(200)))
    }
    fn me(&self) -> &str {
        "proxy:1"
    }
}

#[test]
fn a_rewrite_longer_than_the_limit_is_refused() {
    let frame = msg(&secondary_hello(), 0);
    let unlimited = rewrite_reply(&frame, ReplyKind::Hello, &mut LongNames, LIMIT)
        .expect("rewrites")
        .expect("something changes");
    let limit = unlimited.len() - 1;
    let out = rewrite_reply(&frame, ReplyKind::Hello, &mut LongNames, limit);
    assert_eq!(
        out,
        Err(DecodeError::LengthTooLarge {
            claimed: unlimited.len() as i64,
            limit
        })
    );
}

mod arbitrary;
mod facts;
