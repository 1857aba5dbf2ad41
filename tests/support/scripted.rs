//! A scripted MongoDB upstream, for what a real server will not do on
//! demand: never reply, stream exhaust or hello replies, answer compressed
//! or checksummed, or fail with a chosen code. It records every frame it
//! receives, byte for byte, so tests can assert what mongotap forwarded.

#![allow(dead_code)]

use bson::{rawdoc, RawDocumentBuf};
use bytes::BytesMut;
use mongotap_proto::op_compressed::{self, Compressor};
use mongotap_proto::{op_msg, op_query, Header, OpCode, MAX_MESSAGE_LEN};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One frame as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub header: Header,
    /// Every byte of the frame as it arrived.
    pub raw: Vec<u8>,
    /// The command document (decompressed; OP_QUERY's query), when there is one.
    pub command: Option<RawDocumentBuf>,
    pub compressor: Option<Compressor>,
    /// OP_MSG flag bits (of the decompressed message).
    pub flags: u32,
    /// Which connection (0, 1, ... in the order their first frames arrived;
    /// mongotap's health probe connections are not numbered).
    pub conn: usize,
}

impl Received {
    pub fn name(&self) -> String {
        self.command
            .as_ref()
            .and_then(|c| c.iter().next()?.ok().map(|(k, _)| k.as_str().to_string()))
            .unwrap_or_default()
    }
}

/// What the upstream does in answer to one request, in order.
pub enum Step {
    Send(Vec<u8>),
    Sleep(Duration),
    /// Close the connection.
    Close,
}

pub type Script = Arc<dyn Fn(&Received) -> Vec<Step> + Send + Sync>;

pub struct Scripted {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

static NEXT_ID: AtomicI32 = AtomicI32::new(1_000_000);

/// A fresh requestID for a reply.
pub fn next_id() -> i32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl Scripted {
    pub async fn start(
        script: impl Fn(&Received) -> Vec<Step> + Send + Sync + 'static,
    ) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind scripted");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let sink = received.clone();
        let task = tokio::spawn(async move {
            let conns = Arc::new(AtomicUsize::new(0));
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, conns.clone(), script.clone(), sink.clone()));
            }
        });
        Scripted {
            addr,
            received,
            task,
        }
    }

    /// Answers hello and every other command with a plain success.
    pub async fn ok() -> Scripted {
        Scripted::start(default_reply).await
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// Waits until a frame matching `pred` has arrived.
    pub async fn wait_for(&self, pred: impl Fn(&Received) -> bool, timeout: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.received().into_iter().find(|r| pred(r)) {
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("scripted upstream never received the expected frame");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// mongotap's health probe (its own connection, app "mongotap-health")
/// hellos every upstream every `health.interval_ms`. The scripted upstream
/// answers it with a plain hello reply and leaves it out of `received` and
/// of the connection numbers, so tests see only what their clients caused.
fn is_health_probe(first: &Received) -> bool {
    first.name() == "hello"
        && first.command.as_ref().is_some_and(|c| {
            c.get_document("client")
                .and_then(|c| c.get_document("application"))
                .and_then(|a| a.get_str("name"))
                .is_ok_and(|name| name == "mongotap-health")
        })
}

async fn serve(
    mut stream: TcpStream,
    conns: Arc<AtomicUsize>,
    script: Script,
    sink: Arc<Mutex<Vec<Received>>>,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // Numbered at its first frame, unless that frame is the health probe's.
    let mut conn: Option<usize> = None;
    let mut probe = false;
    loop {
        let frame = loop {
            match mongotap_proto::decode(&mut buf, MAX_MESSAGE_LEN) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(_) => return,
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let mut received = describe(&frame.bytes, 0);
        if conn.is_none() && !probe {
            probe = is_health_probe(&received);
            if !probe {
                conn = Some(conns.fetch_add(1, Ordering::Relaxed));
            }
        }
        let steps = if probe {
            default_reply(&received)
        } else {
            received.conn = conn.unwrap_or_default();
            sink.lock().expect("lock").push(received.clone());
            script(&received)
        };
        for step in steps {
            match step {
                Step::Send(bytes) => {
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Close => return,
            }
        }
    }
}

fn describe(raw: &[u8], conn: usize) -> Received {
    let mut header = Header::parse(raw).expect("header");
    let mut compressor = None;
    let message = if header.op_code == OpCode::Compressed {
        compressor = Some(
            op_compressed::parse(raw, MAX_MESSAGE_LEN)
                .expect("compressed")
                .compressor,
        );
        let inner = op_compressed::decompress(raw, MAX_MESSAGE_LEN).expect("decompress");
        header = Header::parse(&inner).expect("inner header");
        inner
    } else {
        raw.to_vec()
    };
    let (command, flags) = match header.op_code {
        OpCode::Msg => match op_msg::parse(&message) {
            Ok(m) => (Some(m.body.to_owned()), m.flags),
            Err(_) => (None, 0),
        },
        OpCode::Query => match op_query::parse(&message) {
            Ok(q) => (Some(q.command().to_owned()), 0),
            Err(_) => (None, 0),
        },
        _ => (None, 0),
    };
    Received {
        header,
        raw: raw.to_vec(),
        command,
        compressor,
        flags,
        conn,
    }
}

/// An OP_MSG with the given ids and flags.
pub fn msg(request_id: i32, response_to: i32, flags: u32, body: &RawDocumentBuf) -> Vec<u8> {
    op_msg::encode(request_id, response_to, flags, body, &[])
}

/// An OP_MSG reply to `req`.
pub fn reply(req: &Received, body: &RawDocumentBuf) -> Vec<u8> {
    msg(next_id(), req.header.request_id, 0, body)
}

/// The hello reply of a standalone server that speaks OP_MSG.
pub fn hello_reply_doc() -> RawDocumentBuf {
    rawdoc! {
        "isWritablePrimary": true,
        "ismaster": true,
        "maxBsonObjectSize": 16_777_216,
        "maxMessageSizeBytes": 48_000_000,
        "maxWriteBatchSize": 100_000,
        "minWireVersion": 0,
        "maxWireVersion": 21,
        "ok": 1.0,
    }
}

/// hello gets a hello reply; everything else `{ok: 1}`.
pub fn default_reply(req: &Received) -> Vec<Step> {
    let body = match req.name().as_str() {
        "hello" | "isMaster" | "ismaster" => hello_reply_doc(),
        _ => rawdoc! { "ok": 1.0 },
    };
    if req.header.op_code == OpCode::Query {
        return vec![Step::Send(legacy_reply(req, &body))];
    }
    if req.flags & op_msg::MORE_TO_COME != 0 {
        return vec![];
    }
    vec![Step::Send(reply(req, &body))]
}

/// An OP_REPLY carrying one document, answering an OP_QUERY.
pub fn legacy_reply(req: &Received, body: &RawDocumentBuf) -> Vec<u8> {
    mongotap_proto::op_reply::encode(
        next_id(),
        req.header.request_id,
        &mongotap_proto::op_reply::OpReply {
            response_flags: 0,
            cursor_id: 0,
            starting_from: 0,
            number_returned: 1,
            documents: body.as_bytes(),
        },
    )
}

/// A raw-socket client: sends frames and reads whole frames back.
pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.set_nodelay(true);
        RawClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// The next whole frame, or `None` when the connection closes or
    /// `timeout` passes.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(f)) = mongotap_proto::decode(&mut self.buf, MAX_MESSAGE_LEN) {
                return Some(f.bytes.to_vec());
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Sends a command and returns the reply body.
    pub async fn command(&mut self, body: &RawDocumentBuf) -> RawDocumentBuf {
        let id = next_id();
        self.send(&msg(id, 0, 0, body)).await;
        let frame = self.recv(Duration::from_secs(10)).await.expect("reply");
        op_msg::parse(&frame).expect("reply parses").body.to_owned()
    }

    /// True when the proxy has closed this connection.
    pub async fn is_closed(&mut self, timeout: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(timeout, self.stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

// ---------------------------------------------------------------------------
// Compression, recording and driver-shaped replies (tests/drivers.rs).
// Additions only: nothing above changes behaviour.

/// The command names a server never compresses, in either direction.
pub const NEVER_COMPRESSED: &[&str] = &[
    "hello",
    "isMaster",
    "ismaster",
    "saslStart",
    "saslContinue",
    "getnonce",
    "authenticate",
    "createUser",
    "updateUser",
    "copydbsaslstart",
    "copydbgetnonce",
    "copydb",
];

/// The compressor a server that supports snappy, zlib and zstd picks from a
/// hello's `compression` list: the client's first supported one.
pub fn negotiate(hello: &bson::RawDocument) -> Option<Compressor> {
    let list = hello.get_array("compression").ok()?;
    list.into_iter()
        .filter_map(|v| v.ok()?.as_str())
        .find_map(|name| match name {
            "snappy" => Some(Compressor::Snappy),
            "zlib" => Some(Compressor::Zlib),
            "zstd" => Some(Compressor::Zstd),
            _ => None,
        })
}

/// A hello reply that accepts `compressor`, as a server that negotiated it.
pub fn hello_reply_with(compressor: Option<Compressor>) -> RawDocumentBuf {
    let mut body = hello_reply_doc();
    if let Some(c) = compressor {
        let mut list = bson::RawArrayBuf::new();
        list.push(c.name());
        body.append(bson::cstr!("compression"), list);
    }
    body
}

/// The document sequences of a received OP_MSG (decompressed first if it
/// came compressed), as (identifier, number of documents).
pub fn sequences(req: &Received) -> Vec<(String, usize)> {
    let plain = match req.compressor {
        Some(_) => match op_compressed::decompress(&req.raw, MAX_MESSAGE_LEN) {
            Ok(p) => p,
            Err(_) => return Vec::new(),
        },
        None => req.raw.clone(),
    };
    match op_msg::parse(&plain) {
        Ok(m) => m
            .sequences
            .iter()
            .map(|s| (s.identifier.to_owned(), s.iter().count()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// How many documents an insert carries, in a `documents` sequence or in
/// the body's `documents` array.
pub fn inserted_documents(req: &Received) -> usize {
    let in_sequence: usize = sequences(req)
        .iter()
        .filter(|(id, _)| id == "documents")
        .map(|(_, n)| n)
        .sum();
    let in_body = req
        .command
        .as_deref()
        .and_then(|c| c.get_array("documents").ok())
        .map_or(0, |a| a.into_iter().count());
    in_sequence + in_body
}

/// The smallest reply each command a driver sends in the compression test
/// accepts: ping and anything unknown get `{ok: 1}`, an insert `{n: <its
/// document count>}` and a find one document (`{_id: 1}`) in an exhausted
/// cursor.
pub fn minimal_reply_doc(req: &Received) -> RawDocumentBuf {
    let command = req.command.as_deref();
    let db = command
        .and_then(|c| c.get_str("$db").ok())
        .unwrap_or("test");
    match req.name().as_str() {
        "insert" => rawdoc! { "n": inserted_documents(req) as i32, "ok": 1.0 },
        "find" => {
            let coll = command.and_then(|c| c.get_str("find").ok()).unwrap_or("c");
            rawdoc! {
                "cursor": {
                    "firstBatch": [{ "_id": 1 }],
                    "id": 0_i64,
                    "ns": format!("{db}.{coll}"),
                },
                "ok": 1.0,
            }
        }
        _ => rawdoc! { "ok": 1.0 },
    }
}

/// A script for a server that supports snappy, zlib and zstd: a hello (OP_MSG
/// or legacy OP_QUERY) that offers `compression` gets the first compressor it
/// supports back, and from then on every reply on that connection except to
/// the never-compressed commands is OP_COMPRESSED with that compressor.
/// Other commands get `minimal_reply_doc`.
pub fn compressing() -> impl Fn(&Received) -> Vec<Step> + Send + Sync + 'static {
    let negotiated: Mutex<std::collections::HashMap<usize, Compressor>> = Mutex::default();
    move |req: &Received| {
        let name = req.name();
        if matches!(name.as_str(), "hello" | "isMaster" | "ismaster") {
            let chosen = req.command.as_deref().and_then(negotiate);
            if let Some(c) = chosen {
                negotiated.lock().expect("lock").insert(req.conn, c);
            }
            let body = hello_reply_with(chosen);
            if req.header.op_code == OpCode::Query {
                return vec![Step::Send(legacy_reply(req, &body))];
            }
            return vec![Step::Send(reply(req, &body))];
        }
        if req.flags & op_msg::MORE_TO_COME != 0 {
            return vec![];
        }
        let plain = reply(req, &minimal_reply_doc(req));
        let chosen = negotiated.lock().expect("lock").get(&req.conn).copied();
        match chosen {
            Some(c) if !NEVER_COMPRESSED.contains(&name.as_str()) => vec![Step::Send(
                op_compressed::compress(&plain, c).expect("compress reply"),
            )],
            _ => vec![Step::Send(plain)],
        }
    }
}

impl Scripted {
    /// An upstream that negotiates compression (see `compressing`).
    pub async fn compressing() -> Scripted {
        Scripted::start(compressing()).await
    }
}

/// Wraps `script` so that every frame it sends is also appended to `sent`,
/// for tests that compare what the client received with what the upstream
/// sent, byte for byte.
pub fn recording(
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    script: impl Fn(&Received) -> Vec<Step> + Send + Sync + 'static,
) -> impl Fn(&Received) -> Vec<Step> + Send + Sync + 'static {
    move |req: &Received| {
        let steps = script(req);
        let mut log = sent.lock().expect("lock");
        for step in &steps {
            if let Step::Send(bytes) = step {
                log.push(bytes.clone());
            }
        }
        steps
    }
}

/// A legacy OP_QUERY command (`db.$cmd`, numberToReturn -1), as drivers send
/// their first `isMaster`.
pub fn legacy_query(request_id: i32, db: &str, command: &RawDocumentBuf) -> Vec<u8> {
    op_query::encode(
        request_id,
        0,
        &op_query::OpQuery {
            flags: 0,
            full_collection_name: &format!("{db}.$cmd"),
            number_to_skip: 0,
            number_to_return: -1,
            query: command,
            return_fields_selector: None,
        },
    )
}

impl RawClient {
    /// The next frame, decompressed if it came as OP_COMPRESSED, with the
    /// compressor it used.
    pub async fn recv_decompressed(
        &mut self,
        timeout: Duration,
    ) -> Option<(Vec<u8>, Vec<u8>, Option<Compressor>)> {
        let raw = self.recv(timeout).await?;
        let header = Header::parse(&raw).expect("header");
        if header.op_code != OpCode::Compressed {
            return Some((raw.clone(), raw, None));
        }
        let c = op_compressed::parse(&raw, MAX_MESSAGE_LEN)
            .expect("OP_COMPRESSED")
            .compressor;
        let inner = op_compressed::decompress(&raw, MAX_MESSAGE_LEN).expect("decompress");
        Some((raw, inner, Some(c)))
    }
}
