//! One client connection to a member: reads requests, answers hello and the
//! commands a member answers itself (answers.rs), and relays the rest to
//! FerretDB.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::{RawDocument, RawDocumentBuf};
use bytes::BytesMut;
use mongotap_proto::op_compressed::{self, Compressor};
use mongotap_proto::{op_msg, op_query, Header, OpCode, MAX_MESSAGE_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Shared, WRITES};
use crate::scripted::{negotiate, next_id};

/// The next whole frame from `rd`, or None at EOF or on garbage.
/// Cancel-safe: what was read stays in `buf`.
async fn next_frame<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> Option<Vec<u8>> {
    loop {
        match mongotap_proto::decode(buf, MAX_MESSAGE_LEN) {
            Ok(Some(f)) => return Some(f.bytes.to_vec()),
            Ok(None) => {}
            Err(_) => return None,
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// One request, decompressed.
pub(super) struct Request {
    pub(super) header: Header,
    /// The frame as it arrived.
    pub(super) raw: Vec<u8>,
    /// The message without compression (== raw when it was not compressed).
    pub(super) plain: Vec<u8>,
    pub(super) compressor: Option<Compressor>,
    pub(super) flags: u32,
    pub(super) command: Option<RawDocumentBuf>,
    pub(super) name: String,
    /// The OP_QUERY's namespace ends in `.$cmd`.
    pub(super) legacy_command: bool,
}

fn parse_request(raw: Vec<u8>) -> Option<Request> {
    let mut header = Header::parse(&raw)?;
    let mut compressor = None;
    let plain = if header.op_code == OpCode::Compressed {
        compressor = Some(op_compressed::parse(&raw, MAX_MESSAGE_LEN).ok()?.compressor);
        let inner = op_compressed::decompress(&raw, MAX_MESSAGE_LEN).ok()?;
        header = Header::parse(&inner)?;
        inner
    } else {
        raw.clone()
    };
    let (command, flags, legacy_command) = match header.op_code {
        OpCode::Msg => match op_msg::parse(&plain) {
            Ok(m) => (Some(m.body.to_owned()), m.flags, false),
            Err(_) => (None, 0, false),
        },
        OpCode::Query => match op_query::parse(&plain) {
            Ok(q) => (Some(q.command().to_owned()), 0, q.is_command()),
            Err(_) => (None, 0, false),
        },
        _ => (None, 0, false),
    };
    let name = command
        .as_ref()
        .and_then(|c| c.iter().next()?.ok().map(|(k, _)| k.as_str().to_owned()))
        .unwrap_or_default();
    Some(Request {
        header,
        raw,
        plain,
        compressor,
        flags,
        command,
        name,
        legacy_command,
    })
}

/// An awaitable hello this connection holds, or the next reply of a stream.
pub(super) struct Awaiting {
    /// What the reply answers: the request, or the previous streamed reply.
    response_to: i32,
    deadline: Instant,
    max_await: Duration,
    /// The counter the client last saw.
    seen: i64,
    exhaust: bool,
    /// `hello` or the legacy `isMaster`/`ismaster` (which field names it uses).
    legacy_names: bool,
    compressor: Option<Compressor>,
}

/// What one client connection to a member holds.
pub(super) struct Conn {
    pub(super) shared: Arc<Shared>,
    pub(super) me: usize,
    pub(super) id: i32,
    /// Replies to the client go through the writer task.
    pub(super) tx: mpsc::UnboundedSender<Vec<u8>>,
    pub(super) stop: CancellationToken,
    /// Negotiated by the first hello that offered compression.
    pub(super) compressor: Option<Compressor>,
    /// The FerretDB connection, opened by the first forwarded command.
    pub(super) upstream: Option<OwnedWriteHalf>,
    relay: Arc<RelayState>,
}

/// Shared by a connection and its relay task.
#[derive(Default)]
struct RelayState {
    /// Requests that came compressed: their replies go back compressed.
    compressed: Mutex<HashMap<i32, Compressor>>,
    /// moreToCome requests: FerretDB v1.24 answers them anyway, and the
    /// client expects nothing.
    unanswered: Mutex<HashSet<i32>>,
}

pub(super) async fn serve(
    shared: Arc<Shared>,
    me: usize,
    stream: TcpStream,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    // Ends the writer and relay tasks with this one.
    let _guard = stop.clone().drop_guard();
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(write_out(wr, rx, stop.clone()));
    let mut changed = shared.changed.subscribe();
    let mut conn = Conn {
        id: shared.next_conn_id.fetch_add(1, Ordering::Relaxed),
        shared,
        me,
        tx,
        stop: stop.clone(),
        compressor: None,
        upstream: None,
        relay: Arc::default(),
    };
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut awaiting: Option<Awaiting> = None;
    loop {
        // Cancel-safe: next_frame keeps partial reads in `buf`, and the
        // awaiting branch only reads the watch and a clock.
        tokio::select! {
            _ = stop.cancelled() => return,
            frame = next_frame(&mut rd, &mut buf) => {
                let Some(raw) = frame else { return };
                // A new request ends any stream (the client moved on):
                // `awaiting` is replaced below.
                let Some(req) = parse_request(raw) else { return };
                match conn.handle(req).await {
                    Ok(next) => awaiting = next,
                    Err(()) => return,
                }
            }
            _ = wait_change(&mut changed, awaiting.as_ref()), if awaiting.is_some() => {
                let Some(a) = awaiting.take() else { continue };
                awaiting = conn.answer_awaited(a);
            }
        }
    }
}

/// Until the counter differs from what the awaiting hello saw, or its time
/// is up.
async fn wait_change(changed: &mut watch::Receiver<i64>, awaiting: Option<&Awaiting>) {
    let Some(a) = awaiting else {
        return std::future::pending().await;
    };
    let seen = a.seen;
    let _ = tokio::time::timeout_at(a.deadline, changed.wait_for(|c| *c != seen)).await;
}

async fn write_out(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    stop: CancellationToken,
) {
    loop {
        // Cancel-safe: recv() loses nothing.
        let bytes = tokio::select! {
            _ = stop.cancelled() => return,
            b = rx.recv() => match b { Some(b) => b, None => return },
        };
        if wr.write_all(&bytes).await.is_err() {
            stop.cancel();
            return;
        }
    }
}

impl Conn {
    fn send(&self, bytes: Vec<u8>) -> Result<(), ()> {
        self.tx.send(bytes).map_err(|_| ())
    }

    /// Answers one request; returns the awaitable hello it left waiting.
    async fn handle(&mut self, req: Request) -> Result<Option<Awaiting>, ()> {
        let is_hello = matches!(req.name.as_str(), "hello" | "isMaster" | "ismaster")
            && (req.header.op_code == OpCode::Msg || req.legacy_command);
        if is_hello {
            return self.hello(&req);
        }
        let reply = match req.name.as_str() {
            "replSetGetStatus" => Some(self.status_doc()),
            "replSetGetConfig" => Some(self.config_doc()),
            name if WRITES.contains(&name) && !self.is_primary() => {
                Some(self.not_writable_primary(&req))
            }
            _ => None,
        };
        match reply {
            Some(body) if req.header.op_code == OpCode::Query => {
                let bytes = legacy_reply(req.header.request_id, &body);
                self.send(maybe_compress(bytes, req.compressor))?;
                Ok(None)
            }
            Some(body) => {
                let bytes = op_msg::encode(next_id(), req.header.request_id, 0, &body, &[]);
                self.send(maybe_compress(bytes, req.compressor))?;
                Ok(None)
            }
            None => {
                self.forward(&req).await?;
                Ok(None)
            }
        }
    }

    fn is_primary(&self) -> bool {
        self.shared.state.lock().expect("state").primary == Some(self.me)
    }

    fn hello(&mut self, req: &Request) -> Result<Option<Awaiting>, ()> {
        let command = req.command.as_deref().ok_or(())?;
        self.shared
            .hellos
            .lock()
            .expect("hellos")
            .push((self.me, command.to_owned()));
        if self.compressor.is_none() {
            self.compressor = negotiate(command);
        }
        let legacy_names = req.name != "hello";
        let hello_ok = command.get_bool("helloOk").unwrap_or(false);
        let current = self.shared.state.lock().expect("state").counter;
        if req.header.op_code == OpCode::Query {
            let body = self.hello_doc(legacy_names, hello_ok);
            self.send(maybe_compress(
                legacy_reply(req.header.request_id, &body),
                req.compressor,
            ))?;
            return Ok(None);
        }
        let awaitable = command
            .get_document("topologyVersion")
            .ok()
            .zip(command.get("maxAwaitTimeMS").ok().flatten());
        let Some((tv, max_await)) = awaitable else {
            let body = self.hello_doc(legacy_names, hello_ok);
            let bytes = op_msg::encode(next_id(), req.header.request_id, 0, &body, &[]);
            self.send(maybe_compress(bytes, req.compressor))?;
            return Ok(None);
        };
        let max_await = Duration::from_millis(
            max_await
                .as_i64()
                .or_else(|| max_await.as_i32().map(i64::from))
                .or_else(|| max_await.as_f64().map(|f| f as i64))
                .unwrap_or(10_000)
                .max(0) as u64,
        );
        let exhaust = req.flags & op_msg::EXHAUST_ALLOWED != 0;
        let same_process =
            tv.get_object_id("processId").ok() == Some(self.shared.process_ids[self.me]);
        let counter = tv.get_i64("counter").unwrap_or(-1);
        let a = Awaiting {
            response_to: req.header.request_id,
            deadline: Instant::now() + max_await,
            max_await,
            seen: counter,
            exhaust,
            legacy_names,
            compressor: req.compressor,
        };
        if same_process && counter == current {
            return Ok(Some(a)); // wait for a change or the time
        }
        // The client's view is stale: answer now (and stream on if allowed).
        Ok(self.answer_awaited(Awaiting { seen: -1, ..a }))
    }

    /// Sends the reply an awaiting hello was waiting for; with exhaust,
    /// returns the next reply of the stream to wait for.
    fn answer_awaited(&mut self, a: Awaiting) -> Option<Awaiting> {
        let body = self.hello_doc(a.legacy_names, false);
        let id = next_id();
        let flags = if a.exhaust { op_msg::MORE_TO_COME } else { 0 };
        let bytes = op_msg::encode(id, a.response_to, flags, &body, &[]);
        self.send(maybe_compress(bytes, a.compressor)).ok()?;
        let counter = self.shared.state.lock().expect("state").counter;
        a.exhaust.then(|| Awaiting {
            response_to: id,
            deadline: Instant::now() + a.max_await,
            seen: counter,
            ..a
        })
    }

    /// Sends the request to FerretDB: the bytes as they came, or the
    /// decompressed message when they came compressed (FerretDB speaks no
    /// compression; the reply goes back compressed).
    async fn forward(&mut self, req: &Request) -> Result<(), ()> {
        if self.upstream.is_none() {
            let stream = TcpStream::connect(self.shared.upstream)
                .await
                .map_err(|_| ())?;
            let _ = stream.set_nodelay(true);
            let (rd, wr) = stream.into_split();
            tokio::spawn(relay(
                rd,
                self.tx.clone(),
                self.relay.clone(),
                self.stop.clone(),
            ));
            self.upstream = Some(wr);
        }
        let id = req.header.request_id;
        if let Some(c) = req.compressor {
            self.relay.compressed.lock().expect("relay").insert(id, c);
        }
        if req.header.op_code == OpCode::Msg && req.flags & op_msg::MORE_TO_COME != 0 {
            self.relay.unanswered.lock().expect("relay").insert(id);
        }
        let bytes = if req.compressor.is_some() {
            &req.plain
        } else {
            &req.raw
        };
        let up = self.upstream.as_mut().ok_or(())?;
        up.write_all(bytes).await.map_err(|_| ())
    }
}

/// FerretDB's replies back to the client, compressed where the request was.
async fn relay(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    state: Arc<RelayState>,
    stop: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        // Cancel-safe: next_frame keeps partial reads in `buf`.
        let frame = tokio::select! {
            _ = stop.cancelled() => return,
            f = next_frame(&mut rd, &mut buf) => match f { Some(f) => f, None => break },
        };
        let Some(header) = Header::parse(&frame) else {
            break;
        };
        if state
            .unanswered
            .lock()
            .expect("relay")
            .remove(&header.response_to)
        {
            continue;
        }
        let compressor = state
            .compressed
            .lock()
            .expect("relay")
            .remove(&header.response_to);
        if tx.send(maybe_compress(frame, compressor)).is_err() {
            break;
        }
    }
    // FerretDB went away: so does the client's connection.
    stop.cancel();
}

pub(super) fn maybe_compress(message: Vec<u8>, compressor: Option<Compressor>) -> Vec<u8> {
    match compressor {
        Some(c) => op_compressed::compress(&message, c).expect("compress reply"),
        None => message,
    }
}

/// An OP_REPLY carrying `body`, answering request `response_to`.
pub(super) fn legacy_reply(response_to: i32, body: &RawDocument) -> Vec<u8> {
    mongotap_proto::op_reply::encode(
        next_id(),
        response_to,
        &mongotap_proto::op_reply::OpReply {
            response_flags: 0,
            cursor_id: 0,
            starting_from: 0,
            number_returned: 1,
            documents: body.as_bytes(),
        },
    )
}
