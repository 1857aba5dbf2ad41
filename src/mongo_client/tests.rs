use super::error::check_ok;
use super::scram::{client_nonce, Scram};
use super::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bson::rawdoc;
use mongotap_proto::{DecodeError, MAX_MESSAGE_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";

#[test]
fn scram_sha256_rfc7677_vector() {
    let mut s = Scram::new("user", "pencil", CLIENT_NONCE);
    assert_eq!(s.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
    let client_final = s.client_final(SERVER_FIRST).unwrap();
    assert_eq!(
        client_final,
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    );
    s.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        .unwrap();
    let err = s
        .verify_server_final("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        .unwrap_err();
    assert!(err.contains("does not match"), "{err}");
    assert!(s.verify_server_final("e=invalid-proof").is_err());
}

#[test]
fn scram_rejects_bad_server_first() {
    let mut s = Scram::new("user", "pencil", CLIENT_NONCE);
    // The server's nonce must extend ours.
    let other = SERVER_FIRST.replace("r=rOpr", "r=XXpr");
    assert!(s.client_final(&other).unwrap_err().contains("nonce"));
    let weak = SERVER_FIRST.replace("i=4096", "i=1");
    assert!(s.client_final(&weak).unwrap_err().contains("iterations"));
    assert!(s.client_final("e=unknown-user").is_err());
}

#[test]
fn scram_escapes_user_names() {
    let s = Scram::new("a=b,c", "p", "n");
    assert_eq!(s.client_first(), "n,,n=a=3Db=2Cc,r=n");
}

#[test]
fn nonces_differ() {
    assert_ne!(client_nonce(), client_nonce());
    assert_eq!(B64.decode(client_nonce()).unwrap().len(), 24);
}

#[test]
fn ok_zero_becomes_an_error_with_code() {
    let reply = rawdoc! { "ok": 0.0, "errmsg": "no", "code": 13, "codeName": "Unauthorized" };
    let err = check_ok("h:1", "find", reply).unwrap_err();
    assert_eq!(err.code(), Some(13));
    assert_eq!(err.code_name(), Some("Unauthorized"));
    assert!(err.to_string().contains("find failed"), "{err}");
    assert!(check_ok("h:1", "ping", rawdoc! { "ok": 1 }).is_ok());
    assert!(check_ok("h:1", "ping", rawdoc! { "x": 1 }).is_err());
}

/// A server on a socket pair: checks request ids increment and the
/// reply is matched and returned.
#[tokio::test]
async fn round_trip_over_a_stream() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut ids = Vec::new();
        while ids.len() < 2 {
            match mongotap_proto::decode(&mut buf, MAX_MESSAGE_LEN).unwrap() {
                Some(f) => {
                    ids.push(f.header.request_id);
                    let body = rawdoc! { "ok": 1, "n": f.header.request_id };
                    let out = op_msg::encode(100, f.header.request_id, 0, &body, &[]);
                    b.write_all(&out).await.unwrap();
                }
                None => {
                    b.read_buf(&mut buf).await.unwrap();
                }
            }
        }
        ids
    });
    let mut c = UpstreamClient::from_stream(Box::new(a), "test");
    let r1 = c
        .command(&rawdoc! { "ping": 1, "$db": "admin" })
        .await
        .unwrap();
    let r2 = c
        .command(&rawdoc! { "ping": 1, "$db": "admin" })
        .await
        .unwrap();
    assert_eq!(r1.get_i32("n").unwrap() + 1, r2.get_i32("n").unwrap());
    assert_eq!(server.await.unwrap(), vec![1, 2]);
}

/// The server's side of a test: the next whole frame from the client.
async fn next_frame(
    server: &mut tokio::io::DuplexStream,
    buf: &mut BytesMut,
) -> mongotap_proto::Frame {
    loop {
        if let Some(f) = mongotap_proto::decode(buf, MAX_MESSAGE_LEN).unwrap() {
            return f;
        }
        assert!(server.read_buf(buf).await.unwrap() > 0, "client closed");
    }
}

fn msg(request_id: i32, response_to: i32, flags: u32, body: &RawDocument) -> Vec<u8> {
    op_msg::encode(request_id, response_to, flags, body, &[])
}

fn n_of(doc: &RawDocument) -> i32 {
    doc.get_i32("n").unwrap()
}

/// A captured frame goes out byte for byte but for its ids: a fresh
/// requestID and responseTo 0.
#[tokio::test]
async fn raw_frames_go_out_as_given_under_fresh_ids() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let mut c = UpstreamClient::from_stream(Box::new(a), "test");
    let body = rawdoc! { "find": "c", "filter": { "x": 1 }, "$db": "d" };
    // As a capture holds it: another connection's ids.
    let captured = msg(777, 99, 0, &body);
    let mut frame = captured.clone();
    let id = c.send_frame(&mut frame).await.unwrap();
    assert_eq!(id, 1);

    let mut buf = BytesMut::new();
    let got = next_frame(&mut b, &mut buf).await;
    assert_eq!(got.header.request_id, 1);
    assert_eq!(got.header.response_to, 0);
    assert_eq!(got.bytes.len(), captured.len());
    assert_eq!(got.bytes[..4], captured[..4], "length unchanged");
    assert_eq!(got.bytes[12..], captured[12..], "opcode and body unchanged");

    b.write_all(&msg(50, 1, 0, &rawdoc! { "ok": 1, "n": 7 }))
        .await
        .unwrap();
    let r = c.read_reply(n_of).await.unwrap().unwrap();
    assert_eq!(
        (r.value, r.more_to_come, r.op_code),
        (7, false, OpCode::Msg)
    );
    assert!(
        c.read_reply(n_of).await.unwrap().is_none(),
        "one reply only"
    );

    let mut short = vec![0u8; 15];
    assert!(matches!(
        c.send_frame(&mut short).await,
        Err(ClientError::ShortFrame { len: 15, .. })
    ));
}

/// An exhaust stream: each reply's responseTo is the previous reply's
/// requestID, and the stream ends at the first reply without moreToCome.
/// After it the connection takes commands again.
#[tokio::test]
async fn more_to_come_replies_are_followed_to_the_last() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let req = next_frame(&mut b, &mut buf).await;
        let more = op_msg::MORE_TO_COME;
        let mut out = msg(
            500,
            req.header.request_id,
            more,
            &rawdoc! { "ok": 1, "n": 1 },
        );
        out.extend(msg(501, 500, more, &rawdoc! { "ok": 1, "n": 2 }));
        out.extend(msg(502, 501, 0, &rawdoc! { "ok": 1, "n": 3 }));
        // Split mid-frame, as TCP may.
        b.write_all(&out[..30]).await.unwrap();
        tokio::task::yield_now().await;
        b.write_all(&out[30..]).await.unwrap();
        let ping = next_frame(&mut b, &mut buf).await;
        let reply = msg(503, ping.header.request_id, 0, &rawdoc! { "ok": 1, "n": 4 });
        b.write_all(&reply).await.unwrap();
    });
    let mut c = UpstreamClient::from_stream(Box::new(a), "test");
    let exhaust = op_msg::EXHAUST_ALLOWED;
    let mut frame = msg(0, 0, exhaust, &rawdoc! { "getMore": 1i64, "$db": "d" });
    c.send_frame(&mut frame).await.unwrap();
    let mut seen = Vec::new();
    while let Some(r) = c.read_reply(n_of).await.unwrap() {
        seen.push((r.value, r.more_to_come));
    }
    assert_eq!(seen, vec![(1, true), (2, true), (3, false)]);
    let ping = c.command(&rawdoc! { "ping": 1, "$db": "admin" }).await;
    assert_eq!(n_of(&ping.unwrap()), 4);
    server.await.unwrap();
}

/// A moreToCome request awaits nothing. A server that answers it anyway
/// (FerretDB does for w:0 writes) has its stray reply dropped; a reply to
/// a request never sent is an error.
#[tokio::test]
async fn strays_are_dropped_and_unknown_replies_refused() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let mut c = UpstreamClient::from_stream(Box::new(a), "test");
    let w0 = rawdoc! { "insert": "c", "writeConcern": { "w": 0 }, "$db": "d" };
    let mut frame = msg(0, 0, op_msg::MORE_TO_COME, &w0);
    let w0_id = c.send_frame(&mut frame).await.unwrap();
    assert!(c.read_reply(n_of).await.unwrap().is_none());

    let mut stray = msg(60, w0_id, 0, &rawdoc! { "ok": 1, "n": -1 });
    stray.extend(msg(61, w0_id + 1, 0, &rawdoc! { "ok": 1, "n": 2 }));
    b.write_all(&stray).await.unwrap();
    let r = c.command(&rawdoc! { "ping": 1, "$db": "admin" }).await;
    assert_eq!(n_of(&r.unwrap()), 2);

    b.write_all(&msg(62, 999, 0, &rawdoc! { "ok": 1 }))
        .await
        .unwrap();
    let err = c
        .command(&rawdoc! { "ping": 1, "$db": "admin" })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("responseTo 999"), "{err}");
}

/// A read cut short by a timeout keeps what it read and what it awaits:
/// retried, it returns the reply. A command started meanwhile would
/// interleave with the awaited reply, so it is refused.
#[tokio::test]
async fn a_cancelled_read_resumes_and_blocks_new_commands() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let mut c = UpstreamClient::from_stream(Box::new(a), "test");
    let mut frame = msg(0, 0, 0, &rawdoc! { "ping": 1, "$db": "admin" });
    let id = c.send_frame(&mut frame).await.unwrap();
    let reply = msg(70, id, 0, &rawdoc! { "ok": 1, "n": 9 });
    b.write_all(&reply[..20]).await.unwrap();
    let wait = Duration::from_millis(50);
    assert!(tokio::time::timeout(wait, c.read_reply(n_of))
        .await
        .is_err());
    let err = c
        .command(&rawdoc! { "ping": 1, "$db": "admin" })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Poisoned { .. }), "{err}");
    b.write_all(&reply[20..]).await.unwrap();
    let r = c.read_reply(n_of).await.unwrap().unwrap();
    assert_eq!(r.value, 9);
}

/// A reply claiming more than the 48 MB limit is refused from its header,
/// before its body is waited for or allocated.
#[tokio::test]
async fn an_oversized_reply_is_refused_from_its_header() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let mut c = UpstreamClient::from_stream(Box::new(a), "test");
    let mut header = Vec::new();
    mongotap_proto::Header {
        message_length: 100_000_000,
        request_id: 80,
        response_to: 1,
        op_code: OpCode::Msg,
    }
    .write_to(&mut header);
    b.write_all(&header).await.unwrap();
    let err = c
        .command(&rawdoc! { "ping": 1, "$db": "admin" })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Decode {
                source: DecodeError::LengthTooLarge {
                    claimed: 100_000_000,
                    ..
                },
                ..
            }
        ),
        "{err}"
    );
}

/// The handshake names the application and the driver; a later hello
/// carries no `client`, which servers refuse to have changed.
#[tokio::test]
async fn handshake_then_hello() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let f = next_frame(&mut b, &mut buf).await;
            bodies.push(op_msg::parse(&f.bytes).unwrap().body.to_owned());
            let reply = msg(90, f.header.request_id, 0, &rawdoc! { "ok": 1 });
            b.write_all(&reply).await.unwrap();
        }
        bodies
    });
    let mut c = UpstreamClient::from_stream(Box::new(a), "test");
    c.handshake("mongotap-test").await.unwrap();
    c.hello().await.unwrap();
    let bodies = server.await.unwrap();
    let client = bodies[0].get_document("client").unwrap();
    let app = client.get_document("application").unwrap();
    assert_eq!(app.get_str("name").unwrap(), "mongotap-test");
    let driver = client.get_document("driver").unwrap();
    assert_eq!(driver.get_str("name").unwrap(), "mongotap");
    assert_eq!(bodies[0].get_str("$db").unwrap(), "admin");
    assert_eq!(bodies[1], rawdoc! { "hello": 1, "$db": "admin" });
}
