//! Frame level, with a raw socket through mongotap: what the hello rewriter
//! makes of each form of reply, and the member named in events and /inflight.

use super::endpoint::eventually;
use super::*;

fn strings(doc: &RawDocument, key: &str) -> Vec<String> {
    doc.get_array(key)
        .map(|a| {
            a.into_iter()
                .map(|v| v.unwrap().as_str().expect("string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn op_msg_body(frame: &[u8]) -> (Header, u32, RawDocumentBuf) {
    let header = Header::parse(frame).expect("header");
    assert_eq!(header.op_code, OpCode::Msg, "not an OP_MSG");
    let m = op_msg::parse(frame).expect("OP_MSG");
    (header, m.flags, m.body.to_owned())
}

/// A hello reply as mongotap must pass it to a client that dialled
/// `listen`: hosts, primary and me are mongotap's addresses, and the fields
/// drivers use to order primaries are the member's own.
fn assert_rewritten(p: &Proxied, member: usize, listen: SocketAddr, reply: &RawDocument) {
    let advertised: Vec<String> = p.listens.iter().map(|a| host(*a)).collect();
    assert_eq!(strings(reply, "hosts"), advertised, "{reply:?}");
    assert_eq!(
        reply.get_str("me").ok(),
        Some(host(listen).as_str()),
        "{reply:?}"
    );
    let primary = p.set.primary().expect("a primary");
    assert_eq!(
        reply.get_str("primary").ok(),
        Some(advertised[primary].as_str()),
        "{reply:?}"
    );
    assert_eq!(reply.get_str("setName").ok(), Some(SET_NAME), "{reply:?}");
    let tv = reply
        .get_document("topologyVersion")
        .expect("topologyVersion");
    assert_eq!(
        tv.get_object_id("processId").ok(),
        Some(p.set.process_id(member))
    );
    assert_eq!(
        tv.get_i64("counter").ok(),
        Some(p.set.counter()),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaust_hello_stream_is_rewritten_reply_by_reply() {
    let p = proxied(3).await;
    let member = 1;
    let listen = p.listens[member];
    let mut c = RawClient::connect(listen).await;
    let first = c.command(&rawdoc! { "hello": 1, "$db": "admin" }).await;
    assert_rewritten(&p, member, listen, &first);
    assert_eq!(first.get_bool("isWritablePrimary").ok(), Some(false));

    // A monitor's streaming hello: the first reply waits maxAwaitTimeMS.
    let tv = first.get_document("topologyVersion").unwrap().to_owned();
    let wait_ms = 400;
    let request_id = next_id();
    let awaitable = rawdoc! {
        "hello": 1,
        "topologyVersion": tv,
        "maxAwaitTimeMS": wait_ms as i64,
        "$db": "admin",
    };
    let started = tokio::time::Instant::now();
    c.send(&msg(request_id, 0, op_msg::EXHAUST_ALLOWED, &awaitable))
        .await;
    let frame = c.recv(T).await.expect("first streamed reply");
    let waited = started.elapsed();
    let (h1, flags, reply) = op_msg_body(&frame);
    assert!(
        waited >= Duration::from_millis(wait_ms - 50),
        "answered after {waited:?}, before maxAwaitTimeMS"
    );
    assert_eq!(h1.response_to, request_id);
    assert_ne!(flags & op_msg::MORE_TO_COME, 0, "moreToCome");
    assert_rewritten(&p, member, listen, &reply);

    // An election wakes the stream at once, with the new primary.
    let counter = p.set.counter();
    let started = tokio::time::Instant::now();
    let new_primary = p.set.step_down();
    assert_eq!(new_primary, member);
    let frame = c.recv(T).await.expect("reply after the election");
    assert!(
        started.elapsed() < Duration::from_millis(wait_ms / 2),
        "not woken"
    );
    let (h2, flags, reply) = op_msg_body(&frame);
    assert_eq!(
        h2.response_to, h1.request_id,
        "chained to the previous reply"
    );
    assert_ne!(flags & op_msg::MORE_TO_COME, 0);
    assert_rewritten(&p, member, listen, &reply);
    assert!(p.set.counter() > counter);
    assert_eq!(reply.get_bool("isWritablePrimary").ok(), Some(true));
    assert!(reply.get_object_id("electionId").is_ok(), "{reply:?}");

    // With nothing changing, the next reply comes when maxAwaitTimeMS
    // passes, still chained and rewritten.
    let started = tokio::time::Instant::now();
    let frame = c.recv(T).await.expect("next streamed reply");
    assert!(started.elapsed() >= Duration::from_millis(wait_ms - 50));
    let (h3, flags, reply) = op_msg_body(&frame);
    assert_eq!(h3.response_to, h2.request_id);
    assert_ne!(flags & op_msg::MORE_TO_COME, 0);
    assert_rewritten(&p, member, listen, &reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_hello_is_rewritten_and_recompressed() {
    let p = proxied(3).await;
    for (member, compressor) in [Compressor::Snappy, Compressor::Zlib, Compressor::Zstd]
        .into_iter()
        .enumerate()
    {
        let listen = p.listens[member];
        let mut c = RawClient::connect(listen).await;
        let offer = rawdoc! { "hello": 1, "compression": [compressor.name()], "$db": "admin" };
        let first = c.command(&offer).await;
        assert_eq!(
            strings(&first, "compression"),
            [compressor.name()],
            "{first:?}"
        );
        assert_rewritten(&p, member, listen, &first);

        let plain = msg(next_id(), 0, 0, &rawdoc! { "hello": 1, "$db": "admin" });
        c.send(&op_compressed::compress(&plain, compressor).unwrap())
            .await;
        let (raw, inner, used) = c.recv_decompressed(T).await.expect("reply");
        assert_eq!(
            used,
            Some(compressor),
            "reply not compressed with {compressor:?}"
        );
        let c_header = op_compressed::parse(&raw, MAX_MESSAGE_LEN).unwrap();
        assert_eq!(c_header.original_opcode, OpCode::Msg);
        assert_eq!(
            c_header.uncompressed_size + 16,
            inner.len(),
            "uncompressedSize"
        );
        let (_, _, reply) = op_msg_body(&inner);
        assert_rewritten(&p, member, listen, &reply);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_is_master_is_answered_with_a_rewritten_op_reply() {
    let p = proxied(3).await;
    let member = 2;
    let listen = p.listens[member];
    let mut c = RawClient::connect(listen).await;
    let request_id = next_id();
    c.send(&legacy_query(
        request_id,
        "admin",
        &rawdoc! { "isMaster": 1 },
    ))
    .await;
    let frame = c.recv(T).await.expect("OP_REPLY");
    let header = Header::parse(&frame).unwrap();
    assert_eq!(header.op_code, OpCode::Reply);
    assert_eq!(header.response_to, request_id);
    let reply = op_reply::parse(&frame).expect("OP_REPLY parses");
    assert_eq!(reply.number_returned, 1);
    let doc = reply.first().expect("one document");
    assert_rewritten(&p, member, listen, doc);
    assert_eq!(doc.get_bool("ismaster").ok(), Some(false), "{doc:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_host_is_removed_with_an_event() {
    let stranger = "db-x.example.net:27017";
    let p = proxied_with(3, |set| set.add_extra_host(stranger), "").await;
    // The set does list it.
    let mut direct = RawClient::connect(p.set.addr(0)).await;
    let truth = direct
        .command(&rawdoc! { "hello": 1, "$db": "admin" })
        .await;
    assert!(strings(&truth, "hosts").contains(&stranger.to_owned()));

    let mut c = RawClient::connect(p.listens[0]).await;
    let reply = c.command(&rawdoc! { "hello": 1, "$db": "admin" }).await;
    assert_rewritten(&p, 0, p.listens[0], &reply);
    let event = p
        .tap
        .wait_for_event_async("topology_member_unmapped", T)
        .await;
    assert_eq!(event["member"], stranger, "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_is_the_listener_dialled() {
    let p = proxied(3).await;
    for (member, listen) in p.listens.iter().enumerate() {
        let mut c = RawClient::connect(*listen).await;
        let reply = c.command(&rawdoc! { "hello": 1, "$db": "admin" }).await;
        assert_rewritten(&p, member, *listen, &reply);
        assert_eq!(
            reply.get_bool("isWritablePrimary").ok(),
            Some(p.set.primary() == Some(member))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repl_set_status_and_config_name_mongotap() {
    let p = proxied(3).await;
    let advertised: Vec<String> = p.listens.iter().map(|a| host(*a)).collect();
    let mut c = RawClient::connect(p.listens[1]).await;

    let status = c
        .command(&rawdoc! { "replSetGetStatus": 1, "$db": "admin" })
        .await;
    let members = status.get_array("members").expect("members");
    let (mut names, mut states) = (Vec::new(), Vec::new());
    for m in members {
        let m = m.unwrap().as_document().expect("member").to_owned();
        names.push(m.get_str("name").unwrap().to_owned());
        states.push(m.get_str("stateStr").unwrap().to_owned());
    }
    assert_eq!(names, advertised, "{status:?}");
    assert_eq!(states, ["PRIMARY", "SECONDARY", "SECONDARY"], "untouched");
    assert_eq!(status.get_str("set").ok(), Some(SET_NAME));

    let config = c
        .command(&rawdoc! { "replSetGetConfig": 1, "$db": "admin" })
        .await;
    let hosts: Vec<String> = config
        .get_document("config")
        .and_then(|c| c.get_array("members"))
        .expect("config.members")
        .into_iter()
        .map(|m| {
            let m = m.unwrap();
            m.as_document().unwrap().get_str("host").unwrap().to_owned()
        })
        .collect();
    assert_eq!(hosts, advertised, "{config:?}");
}

/// In replica-set mode a command's event and its /inflight row name the
/// member its listener leads to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_inflight_name_the_member() {
    let p = proxied_with(3, |_| {}, "[watch]\nslow_ms = 0\n").await;
    let db = unique_db("member_field");
    let mut c = RawClient::connect(p.listens[1]).await;
    let reply = c
        .command(&rawdoc! { "find": "items", "filter": {}, "$db": db.clone() })
        .await;
    assert_eq!(reply.get_f64("ok").ok(), Some(1.0), "{reply:?}");
    let want = db.clone();
    let slow = p
        .tap
        .wait_for(T, move |v| {
            v["event"] == "slow" && v["command"] == "find" && v["db"] == want.as_str()
        })
        .await
        .unwrap_or_else(|| panic!("no slow event for the find (slow_ms 0)"));
    assert_eq!(slow["member"], p.set.host(1), "{slow}");

    // A monitor's awaitable hello waits in the member: /inflight?all=true
    // lists it under that member.
    let member = 2;
    let mut m = RawClient::connect(p.listens[member]).await;
    let first = m.command(&rawdoc! { "hello": 1, "$db": "admin" }).await;
    let tv = first.get_document("topologyVersion").unwrap().to_owned();
    let awaitable = rawdoc! {
        "hello": 1,
        "topologyVersion": tv,
        "maxAwaitTimeMS": 5000_i64,
        "$db": "admin",
    };
    m.send(&msg(next_id(), 0, 0, &awaitable)).await;
    let mut rows = Value::Null;
    let listed = eventually(T, || {
        let (code, body) = p.tap.admin_get("/inflight?all=true");
        assert_eq!(code, 200, "{body}");
        rows = serde_json::from_str(&body).expect("inflight json");
        rows.as_array()
            .is_some_and(|r| r.iter().any(|r| r["command"] == "hello"))
    })
    .await;
    assert!(
        listed,
        "the awaiting hello is not in /inflight?all=true: {rows}"
    );
    let hello: Vec<&Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["command"] == "hello")
        .collect();
    assert!(
        hello.iter().all(|r| r["member"] == p.set.host(member)),
        "{hello:?}"
    );
}

/// A mongos answers hello with `msg: "isdbgrid"` and no hosts; in direct
/// mode mongotap passes it byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongos_hello_passes_unchanged_in_direct_mode() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mongos = |req: &Received| -> Vec<Step> {
        let body = rawdoc! {
            "isWritablePrimary": true,
            "msg": "isdbgrid",
            "topologyVersion": { "processId": bson::oid::ObjectId::new(), "counter": 0_i64 },
            "maxBsonObjectSize": 16_777_216,
            "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000,
            "localTime": bson::DateTime::now(),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": 7,
            "minWireVersion": 0,
            "maxWireVersion": 21,
            "ok": 1.0,
        };
        vec![Step::Send(scripted::reply(req, &body))]
    };
    let upstream = Scripted::start(recording(sent.clone(), mongos)).await;
    let tap = tokio::task::block_in_place(|| Mongotap::start(upstream.addr));
    let mut c = RawClient::connect(tap.listen).await;
    for _ in 0..2 {
        c.send(&msg(
            next_id(),
            0,
            0,
            &rawdoc! { "hello": 1, "$db": "admin" },
        ))
        .await;
        let got = c.recv(T).await.expect("reply");
        let upstream_sent = sent
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream replied");
        assert_eq!(got, upstream_sent, "the mongos hello changed on the way");
    }
}
