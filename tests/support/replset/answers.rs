//! The documents a member answers with itself: hello, NotWritablePrimary,
//! replSetGetStatus and replSetGetConfig.

use std::sync::atomic::Ordering;

use bson::oid::ObjectId;
use bson::{doc, Bson, Document, RawDocumentBuf};

use super::conn::{Conn, Request};
use super::{RETRYABLE_WRITES, SET_NAME};

impl Conn {
    pub(super) fn topology_version(&self, counter: i64) -> Document {
        doc! { "processId": self.shared.process_ids[self.me], "counter": counter }
    }

    /// This member's hello reply, in MongoDB's field order.
    pub(super) fn hello_doc(&self, legacy_names: bool, hello_ok: bool) -> RawDocumentBuf {
        let st = self.shared.state.lock().expect("state");
        let primary = st.primary == Some(self.me);
        let mut hosts: Vec<Bson> = self
            .shared
            .addrs
            .iter()
            .enumerate()
            .map(|(i, _)| Bson::String(self.shared.name(i)))
            .collect();
        hosts.extend(st.extra_hosts.iter().cloned().map(Bson::String));
        let mut d = Document::new();
        if hello_ok {
            d.insert("helloOk", true);
        }
        d.insert("topologyVersion", self.topology_version(st.counter));
        d.insert("hosts", hosts);
        d.insert("setName", SET_NAME);
        d.insert("setVersion", 1);
        d.insert(
            if legacy_names {
                "ismaster"
            } else {
                "isWritablePrimary"
            },
            primary,
        );
        d.insert("secondary", !primary);
        if let Some(p) = st.primary {
            d.insert("primary", self.shared.name(p));
        }
        d.insert("me", self.shared.name(self.me));
        if primary {
            d.insert("electionId", election_id(st.term));
        }
        d.insert("maxBsonObjectSize", 16_777_216);
        d.insert("maxMessageSizeBytes", 48_000_000);
        d.insert("maxWriteBatchSize", 100_000);
        d.insert("localTime", bson::DateTime::now());
        d.insert("logicalSessionTimeoutMinutes", 30);
        d.insert("connectionId", self.id);
        d.insert("minWireVersion", 0);
        d.insert("maxWireVersion", 21);
        d.insert("readOnly", false);
        if let Some(c) = self.compressor {
            d.insert("compression", vec![Bson::String(c.name().to_owned())]);
        }
        d.insert("ok", 1.0);
        RawDocumentBuf::try_from(&d).expect("hello reply encodes")
    }

    pub(super) fn not_writable_primary(&self, req: &Request) -> RawDocumentBuf {
        self.shared.refused_writes.fetch_add(1, Ordering::Relaxed);
        let counter = self.shared.state.lock().expect("state").counter;
        let command = req.command.as_deref();
        let retryable = RETRYABLE_WRITES.contains(&req.name.as_str())
            && command.is_some_and(|c| c.get("txnNumber").ok().flatten().is_some())
            && command.is_some_and(|c| c.get("autocommit").ok().flatten().is_none());
        let mut d = doc! {
            "topologyVersion": self.topology_version(counter),
            "ok": 0.0,
            "errmsg": "not primary",
            "code": 10107,
            "codeName": "NotWritablePrimary",
        };
        if retryable {
            d.insert(
                "errorLabels",
                vec![Bson::String("RetryableWriteError".into())],
            );
        }
        RawDocumentBuf::try_from(&d).expect("error reply encodes")
    }

    pub(super) fn status_doc(&self) -> RawDocumentBuf {
        let st = self.shared.state.lock().expect("state");
        let members: Vec<Bson> = self
            .shared
            .addrs
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let (state, state_str) = if st.down[i] {
                    (8, "(not reachable/healthy)")
                } else if st.primary == Some(i) {
                    (1, "PRIMARY")
                } else {
                    (2, "SECONDARY")
                };
                let mut m = doc! {
                    "_id": i as i32,
                    "name": self.shared.name(i),
                    "health": if st.down[i] { 0.0 } else { 1.0 },
                    "state": state,
                    "stateStr": state_str,
                };
                if i == self.me {
                    m.insert("self", true);
                }
                Bson::Document(m)
            })
            .collect();
        let my_state = if st.primary == Some(self.me) { 1 } else { 2 };
        let d = doc! {
            "set": SET_NAME,
            "date": bson::DateTime::now(),
            "myState": my_state,
            "term": st.term as i64,
            "members": members,
            "ok": 1.0,
        };
        RawDocumentBuf::try_from(&d).expect("status encodes")
    }

    pub(super) fn config_doc(&self) -> RawDocumentBuf {
        let st = self.shared.state.lock().expect("state");
        let members: Vec<Bson> = self
            .shared
            .addrs
            .iter()
            .enumerate()
            .map(|(i, _)| {
                Bson::Document(doc! {
                    "_id": i as i32,
                    "host": self.shared.name(i),
                    "arbiterOnly": false,
                    "buildIndexes": true,
                    "hidden": false,
                    "priority": 1.0,
                    "tags": {},
                    "secondaryDelaySecs": 0_i64,
                    "votes": 1,
                })
            })
            .collect();
        let d = doc! {
            "config": {
                "_id": SET_NAME,
                "version": 1,
                "term": st.term as i64,
                "members": members,
                "protocolVersion": 1_i64,
            },
            "ok": 1.0,
        };
        RawDocumentBuf::try_from(&d).expect("config encodes")
    }
}

/// The electionId MongoDB derives from a term: 0x7fffffff, then the term.
fn election_id(term: u64) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    bytes[4..].copy_from_slice(&term.to_be_bytes());
    ObjectId::from_bytes(bytes)
}
