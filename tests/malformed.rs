//! Bad input on one connection must cost only that connection.
//!
//! Raw sockets send garbage, oversized, truncated and otherwise malformed
//! frames through mongotap to a real FerretDB. Each must close its own
//! connection with a `decode_error` event that says what was wrong, while an
//! already-open second connection keeps getting answers.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bson::{rawdoc, RawBsonRef, RawDocument, RawDocumentBuf};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{unique_db, Ferret, Mongotap};

const T: Duration = Duration::from_secs(5);
const OP_MSG: i32 = 2013;

/// A bare wire-protocol connection, so tests can send bytes no driver would.
struct RawConn {
    stream: TcpStream,
    next_id: i32,
}

impl RawConn {
    async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connect to mongotap");
        RawConn { stream, next_id: 1 }
    }

    fn local(&self) -> String {
        self.stream.local_addr().expect("local_addr").to_string()
    }

    /// Sends `{ping: 1}` as OP_MSG and checks the reply says ok.
    async fn ping(&mut self) {
        self.next_id += 1;
        let frame = op_msg(self.next_id, 0, 0, &rawdoc! { "ping": 1, "$db": "admin" });
        self.stream.write_all(&frame).await.expect("send ping");
        let reply = tokio::time::timeout(T, self.read_frame())
            .await
            .expect("no ping reply in time")
            .expect("connection closed instead of answering ping");
        // The reply's body follows the header, flagBits and the section kind.
        let body = RawDocument::from_bytes(&reply[21..]).expect("reply body");
        let ok = match body.get("ok").expect("ok field") {
            Some(RawBsonRef::Double(f)) => f,
            Some(RawBsonRef::Int32(i)) => i.into(),
            other => panic!("unexpected ok {other:?}"),
        };
        assert_eq!(ok, 1.0, "ping failed: {body:?}");
    }

    /// One whole frame, or None at EOF.
    async fn read_frame(&mut self) -> Option<Vec<u8>> {
        let mut header = [0u8; 16];
        self.stream.read_exact(&mut header).await.ok()?;
        let len = i32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let mut frame = header.to_vec();
        frame.resize(len, 0);
        self.stream.read_exact(&mut frame[16..]).await.ok()?;
        Some(frame)
    }

    /// True once the peer closed (EOF or reset), false if still open at `T`.
    async fn closed_by_peer(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        let wait = async {
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // a reply to something earlier: keep reading
                }
            }
        };
        tokio::time::timeout(T, wait).await.is_ok()
    }
}

/// An OP_MSG frame with one kind-0 body section.
fn op_msg(request_id: i32, response_to: i32, flags: u32, body: &RawDocumentBuf) -> Vec<u8> {
    let mut payload = flags.to_le_bytes().to_vec();
    payload.push(0);
    payload.extend_from_slice(body.as_bytes());
    frame(request_id, response_to, OP_MSG, &payload)
}

/// A header whose messageLength is computed from `payload`.
fn frame(request_id: i32, response_to: i32, op_code: i32, payload: &[u8]) -> Vec<u8> {
    let len = i32::try_from(16 + payload.len()).expect("small frame");
    header(len, request_id, response_to, op_code)
        .into_iter()
        .chain(payload.iter().copied())
        .collect()
}

fn header(message_length: i32, request_id: i32, response_to: i32, op_code: i32) -> Vec<u8> {
    [message_length, request_id, response_to, op_code]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// The start of a TLS 1.2/1.3 ClientHello record, as a driver with tls=true
/// would send it: record type 22, version 3.1, then a handshake of type 1.
fn tls_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03]; // client_version TLS 1.2
    body.extend((0..32u8).map(|i| i.wrapping_mul(37))); // random
    body.push(0); // session id length
    body.extend([0x00, 0x02, 0x13, 0x01]); // one cipher suite
    body.extend([0x01, 0x00]); // compression: null
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend(handshake);
    record
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Half-close after sending, so mongotap sees EOF mid-frame.
    then_eof: bool,
    /// A fragment the event's `reason` must contain (lowercase).
    reason: &'static str,
}

fn cases() -> Vec<Case> {
    let ping = rawdoc! { "ping": 1, "$db": "admin" };
    let mut bad_section = op_msg(7, 0, 0, &ping);
    bad_section[20] = 9; // the section kind byte: only 0 and 1 exist
    let mut bad_bson = op_msg(8, 0, 0, &ping);
    bad_bson[21..25].copy_from_slice(&1000i32.to_le_bytes()); // document longer than the frame
    let whole = op_msg(9, 0, 0, &ping);
    vec![
        Case {
            name: "negative length",
            bytes: header(-1, 1, 0, OP_MSG),
            then_eof: false,
            reason: "below the 16-byte header",
        },
        Case {
            name: "length shorter than a header",
            bytes: [header(8, 2, 0, OP_MSG), vec![0; 8]].concat(),
            then_eof: false,
            reason: "below the 16-byte header",
        },
        Case {
            // Rejected from the header alone: nothing is allocated or awaited.
            name: "oversize length",
            bytes: header(48_000_001, 3, 0, OP_MSG),
            then_eof: false,
            reason: "exceeds the limit",
        },
        Case {
            name: "HTTP request",
            bytes: b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            then_eof: false,
            reason: "http",
        },
        Case {
            name: "TLS ClientHello",
            bytes: tls_client_hello(),
            then_eof: false,
            reason: "tls",
        },
        Case {
            name: "unknown OP_MSG section kind",
            bytes: bad_section,
            then_eof: false,
            reason: "section",
        },
        Case {
            name: "unknown required OP_MSG flag bit",
            bytes: op_msg(10, 0, 1 << 2, &ping),
            then_eof: false,
            reason: "flag",
        },
        Case {
            name: "BSON length past the frame",
            bytes: bad_bson,
            then_eof: false,
            reason: "body",
        },
        Case {
            name: "truncated frame",
            bytes: whole[..whole.len() - 5].to_vec(),
            then_eof: true,
            reason: "truncated",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_own_connection() {
    let ferret = Ferret::start();
    let proxy = Mongotap::start(ferret.addr());
    let mut good = RawConn::connect(proxy.listen).await;
    good.ping().await;

    let cases = cases();
    for case in &cases {
        let mut bad = RawConn::connect(proxy.listen).await;
        let client = bad.local();
        bad.stream
            .write_all(&case.bytes)
            .await
            .expect("send bad bytes");
        if case.then_eof {
            bad.stream.shutdown().await.expect("half-close");
        }
        assert!(
            bad.closed_by_peer().await,
            "{}: mongotap left the connection open",
            case.name
        );

        let wanted = client.clone();
        let event = proxy
            .wait_for(T, move |v| {
                v["event"] == "decode_error" && v["client"] == wanted.as_str()
            })
            .await
            .unwrap_or_else(|| panic!("{}: no decode_error event for {client}", case.name));
        let reason = event["reason"].as_str().unwrap_or_default().to_lowercase();
        assert!(
            reason.contains(case.reason),
            "{}: reason {reason:?} does not mention {:?}",
            case.name,
            case.reason
        );

        // The connection opened before the bad one is untouched.
        good.ping().await;
    }

    // One event per bad connection, none for the good one.
    assert_eq!(proxy.events("decode_error").len(), cases.len());

    // A pooled driver client through the same proxy still does real work.
    let client = mongodb::Client::with_uri_str(proxy.uri())
        .await
        .expect("client");
    let coll = client
        .database(&unique_db("malformed"))
        .collection::<Document>("c");
    coll.insert_many((0..5).map(|i| doc! { "_id": i }))
        .await
        .expect("insert");
    let docs: Vec<Document> = coll
        .find(doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("docs");
    assert_eq!(docs.len(), 5);
    good.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_closes_the_client_and_says_where() {
    let mut ferret = Ferret::start();
    let proxy = Mongotap::start(ferret.addr());
    let upstream = ferret.addr().to_string();
    ferret.kill();

    let mut conn = RawConn::connect(proxy.listen).await;
    // The write may already fail if mongotap closed first; either is fine.
    let ping = op_msg(1, 0, 0, &rawdoc! { "ping": 1, "$db": "admin" });
    let _ = conn.stream.write_all(&ping).await;
    assert!(
        conn.closed_by_peer().await,
        "client kept open with no upstream"
    );
    // The log must name the upstream and carry the OS error.
    let wanted = upstream.clone();
    proxy
        .wait_for(T, move |v| {
            let text = v.to_string().to_lowercase();
            text.contains(&wanted) && text.contains("refused")
        })
        .await
        .unwrap_or_else(|| panic!("no log line names {upstream} and the refusal"));

    // Once the server is back, new connections work again.
    ferret.restart();
    let mut conn = RawConn::connect(proxy.listen).await;
    conn.ping().await;
}
