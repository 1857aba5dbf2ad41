//! A scripted replica set (issue 17): members on their own ports that answer
//! hello themselves, as a real set's members do, and forward every other
//! command to one real FerretDB, so drivers get real data behind a topology
//! the test controls.
//!
//! Each member:
//! - answers `hello`/`isMaster`/`ismaster` (OP_MSG, or legacy OP_QUERY with
//!   an OP_REPLY) with `setName`, `hosts`, `primary`, `me`,
//!   `topologyVersion`, `electionId` (primary only) and the usual limits;
//! - holds an awaitable hello (`topologyVersion` + `maxAwaitTimeMS`) until
//!   the topology changes or the time passes and, when the request allowed
//!   exhaust, streams moreToCome replies, each answering the previous one;
//! - negotiates compression when a hello offers it and answers a compressed
//!   request compressed with the same compressor, hello included (a real
//!   server never compresses hello; this one does, so a test can see what a
//!   proxy makes of a compressed hello reply);
//! - rejects writes while secondary with NotWritablePrimary (10107), with
//!   the RetryableWriteError label on a retryable write, as MongoDB 4.4+;
//! - answers `replSetGetStatus` and `replSetGetConfig`;
//! - forwards everything else byte for byte (decompressed first when it
//!   came compressed) over its own FerretDB connection per client
//!   connection, and relays the replies;
//! - records who connected: each accepted connection's peer address and the
//!   process that owns the peer's socket (`connections_not_from`).
//!
//! `step_down`/`elect` move the primary as an election does: a new term
//! (`electionId`), a new `topologyVersion` counter, every awaiting hello
//! answered at once.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::oid::ObjectId;
use bson::{doc, Bson, Document, RawDocument, RawDocumentBuf};
use bytes::BytesMut;
use mongotap_proto::op_compressed::{self, Compressor};
use mongotap_proto::{op_msg, op_query, Header, OpCode, MAX_MESSAGE_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::scripted::{negotiate, next_id};

pub const SET_NAME: &str = "rs0";

/// Commands a secondary refuses with NotWritablePrimary.
const WRITES: &[&str] = &[
    "insert",
    "update",
    "delete",
    "findAndModify",
    "findandmodify",
    "create",
    "drop",
    "dropDatabase",
    "createIndexes",
    "dropIndexes",
    "renameCollection",
    "collMod",
];

/// The writes a driver retries (retryable writes spec), which get the
/// RetryableWriteError label when they carry a txnNumber.
const RETRYABLE_WRITES: &[&str] = &[
    "insert",
    "update",
    "delete",
    "findAndModify",
    "findandmodify",
];

/// One connection a member accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Index of the member that accepted it.
    pub member: usize,
    /// The connecting socket's address.
    pub peer: SocketAddr,
    /// The process that owned the connecting socket when it was accepted
    /// (None: not found, for example it closed at once).
    pub owner: Option<u32>,
}

/// The set's current state, shared by its members.
struct State {
    primary: Option<usize>,
    /// The election term, in `electionId`.
    term: u64,
    /// `topologyVersion.counter`, bumped on every change.
    counter: i64,
    /// Host names `hosts` lists besides the members (not real members).
    extra_hosts: Vec<String>,
    /// Members shut down by `shutdown`.
    down: Vec<bool>,
}

struct Shared {
    /// FerretDB, where every other command goes.
    upstream: SocketAddr,
    addrs: Vec<SocketAddr>,
    /// `topologyVersion.processId` of each member.
    process_ids: Vec<ObjectId>,
    state: Mutex<State>,
    /// The counter, for awaiting hellos to watch.
    changed: watch::Sender<i64>,
    accepted: Mutex<Vec<Accepted>>,
    /// Every hello-ish request the members received: (member, command).
    hellos: Mutex<Vec<(usize, RawDocumentBuf)>>,
    next_conn_id: AtomicI32,
    refused_writes: AtomicUsize,
}

/// A scripted replica set; every member stops on drop.
pub struct ReplSet {
    shared: Arc<Shared>,
    /// One per member: cancelling it closes the listener and its connections.
    stops: Vec<CancellationToken>,
}

impl Drop for ReplSet {
    fn drop(&mut self) {
        for stop in &self.stops {
            stop.cancel();
        }
    }
}

/// `127.0.0.1:PORT`, the form the members report themselves in.
pub fn host(addr: SocketAddr) -> String {
    format!("{}:{}", addr.ip(), addr.port())
}

impl ReplSet {
    /// `n` members in front of `upstream` (a FerretDB); member 0 is primary.
    pub async fn start(upstream: SocketAddr, n: usize) -> ReplSet {
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind member"));
        }
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("member addr"))
            .collect();
        let (changed, _) = watch::channel(1);
        let shared = Arc::new(Shared {
            upstream,
            process_ids: (0..n).map(|_| ObjectId::new()).collect(),
            addrs,
            state: Mutex::new(State {
                primary: Some(0),
                term: 1,
                counter: 1,
                extra_hosts: Vec::new(),
                down: vec![false; n],
            }),
            changed,
            accepted: Mutex::default(),
            hellos: Mutex::default(),
            next_conn_id: AtomicI32::new(1),
            refused_writes: AtomicUsize::new(0),
        });
        let mut stops = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let stop = CancellationToken::new();
            tokio::spawn(accept(shared.clone(), i, listener, stop.clone()));
            stops.push(stop);
        }
        ReplSet { shared, stops }
    }

    pub fn len(&self) -> usize {
        self.shared.addrs.len()
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.shared.addrs[i]
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.shared.addrs.clone()
    }

    /// Member `i` as `hosts` names it.
    pub fn host(&self, i: usize) -> String {
        host(self.shared.addrs[i])
    }

    pub fn hosts(&self) -> Vec<String> {
        self.shared.addrs.iter().map(|a| host(*a)).collect()
    }

    /// A `mongodb://` URI that connects straight to the set, no proxy.
    pub fn uri(&self) -> String {
        format!(
            "mongodb://{}/?replicaSet={SET_NAME}",
            self.hosts().join(",")
        )
    }

    pub fn primary(&self) -> Option<usize> {
        self.shared.state.lock().expect("state").primary
    }

    /// The member `i`'s topologyVersion.processId.
    pub fn process_id(&self, i: usize) -> ObjectId {
        self.shared.process_ids[i]
    }

    /// The current topologyVersion.counter (the same on every member).
    pub fn counter(&self) -> i64 {
        self.shared.state.lock().expect("state").counter
    }

    /// Moves the primary to the next live member, as an election after a
    /// `replSetStepDown` does, and wakes every awaiting hello. Returns the
    /// new primary.
    pub fn step_down(&self) -> usize {
        self.step_down_announced_after(Duration::ZERO)
    }

    /// `step_down`, with the awaiting hellos woken only after `delay`, as
    /// when a write reaches the old primary before its monitors hear of the
    /// election: meanwhile the old primary already refuses writes (with a
    /// newer topologyVersion, so the driver marks it unknown and retries),
    /// and a fresh hello already tells the new state.
    pub fn step_down_announced_after(&self, delay: Duration) -> usize {
        let next = {
            let st = self.shared.state.lock().expect("state");
            let n = self.len();
            let from = st.primary.unwrap_or(n - 1);
            (1..=n)
                .map(|k| (from + k) % n)
                .find(|&i| !st.down[i] && Some(i) != st.primary)
                .expect("a live member to elect")
        };
        self.change_announced_after(delay, |st| {
            st.primary = Some(next);
            st.term += 1;
        });
        next
    }

    /// Makes member `i` primary in a new term and wakes every awaiting hello.
    pub fn elect(&self, i: usize) {
        self.change(|st| {
            st.primary = Some(i);
            st.term += 1;
        });
    }

    /// How many writes the members refused as secondaries.
    pub fn refused_writes(&self) -> usize {
        self.shared.refused_writes.load(Ordering::Relaxed)
    }

    /// Lists `name` in every member's `hosts`: a host that is no real member.
    pub fn add_extra_host(&self, name: &str) {
        self.change(|st| st.extra_hosts.push(name.to_owned()));
    }

    /// Closes member `i`'s listener and every connection it holds. A primary
    /// shut down hands over to the next live member first.
    pub fn shutdown(&self, i: usize) {
        if self.primary() == Some(i) {
            self.step_down();
        }
        self.stops[i].cancel();
        self.change(|st| st.down[i] = true);
    }

    fn change(&self, f: impl FnOnce(&mut State)) {
        self.change_announced_after(Duration::ZERO, f);
    }

    /// Applies `f` and bumps the counter now; wakes the awaiting hellos
    /// after `delay`.
    fn change_announced_after(&self, delay: Duration, f: impl FnOnce(&mut State)) {
        let counter = {
            let mut st = self.shared.state.lock().expect("state");
            f(&mut st);
            st.counter += 1;
            st.counter
        };
        if delay.is_zero() {
            self.shared.changed.send_replace(counter);
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // Never move the watch backwards past a later change.
            shared.changed.send_if_modified(|c| {
                let newer = counter > *c;
                if newer {
                    *c = counter;
                }
                newer
            });
        });
    }

    /// Every connection the members accepted so far.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.shared.accepted.lock().expect("accepted").clone()
    }

    /// The accepted connections whose connecting socket was not owned by
    /// process `pid`: empty when every connection came from that process.
    pub fn connections_not_from(&self, pid: u32) -> Vec<Accepted> {
        self.accepted()
            .into_iter()
            .filter(|a| a.owner != Some(pid))
            .collect()
    }

    /// Every hello, isMaster or ismaster the members received, with the
    /// index of the member.
    pub fn hellos(&self) -> Vec<(usize, RawDocumentBuf)> {
        self.shared.hellos.lock().expect("hellos").clone()
    }
}

async fn accept(shared: Arc<Shared>, me: usize, listener: TcpListener, stop: CancellationToken) {
    loop {
        // Cancel-safe: accept() loses nothing when the other branch wins.
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let local = shared.addrs[me];
        // Found before the connection is served, while the peer surely
        // still holds the socket.
        let owner = tokio::task::spawn_blocking(move || socket_owner(peer, local))
            .await
            .unwrap_or(None);
        shared.accepted.lock().expect("accepted").push(Accepted {
            member: me,
            peer,
            owner,
        });
        tokio::spawn(serve(shared.clone(), me, stream, stop.child_token()));
    }
}

/// `/proc/net/tcp`'s form of an IPv4 address: the address as a
/// little-endian u32 and the port, both in upper-case hex.
fn proc_addr(addr: SocketAddr) -> Option<String> {
    match addr {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

/// The process owning the TCP socket bound to `local` and connected to
/// `remote` (Linux: its inode in /proc/net/tcp, then every process's fds).
pub fn socket_owner(local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let (l, r) = (proc_addr(local)?, proc_addr(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // f[1] local address, f[2] remote address, f[9] inode
        (f.len() > 9 && f[1] == l && f[2] == r && f[9] != "0").then(|| f[9].to_owned())
    })?;
    let target = format!("socket:[{inode}]");
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = proc.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        let owns = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == target));
        if owns {
            return Some(pid);
        }
    }
    None
}

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
struct Request {
    header: Header,
    /// The frame as it arrived.
    raw: Vec<u8>,
    /// The message without compression (== raw when it was not compressed).
    plain: Vec<u8>,
    compressor: Option<Compressor>,
    flags: u32,
    command: Option<RawDocumentBuf>,
    name: String,
    /// The OP_QUERY's namespace ends in `.$cmd`.
    legacy_command: bool,
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
struct Awaiting {
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
struct Conn {
    shared: Arc<Shared>,
    me: usize,
    id: i32,
    /// Replies to the client go through the writer task.
    tx: mpsc::UnboundedSender<Vec<u8>>,
    stop: CancellationToken,
    /// Negotiated by the first hello that offered compression.
    compressor: Option<Compressor>,
    /// The FerretDB connection, opened by the first forwarded command.
    upstream: Option<OwnedWriteHalf>,
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

async fn serve(shared: Arc<Shared>, me: usize, stream: TcpStream, stop: CancellationToken) {
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

    fn topology_version(&self, counter: i64) -> Document {
        doc! { "processId": self.shared.process_ids[self.me], "counter": counter }
    }

    /// This member's hello reply, in MongoDB's field order.
    fn hello_doc(&self, legacy_names: bool, hello_ok: bool) -> RawDocumentBuf {
        let st = self.shared.state.lock().expect("state");
        let primary = st.primary == Some(self.me);
        let mut hosts: Vec<Bson> = self
            .shared
            .addrs
            .iter()
            .map(|a| Bson::String(host(*a)))
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
            d.insert("primary", host(self.shared.addrs[p]));
        }
        d.insert("me", host(self.shared.addrs[self.me]));
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

    fn not_writable_primary(&self, req: &Request) -> RawDocumentBuf {
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

    fn status_doc(&self) -> RawDocumentBuf {
        let st = self.shared.state.lock().expect("state");
        let members: Vec<Bson> = self
            .shared
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let (state, state_str) = if st.down[i] {
                    (8, "(not reachable/healthy)")
                } else if st.primary == Some(i) {
                    (1, "PRIMARY")
                } else {
                    (2, "SECONDARY")
                };
                let mut m = doc! {
                    "_id": i as i32,
                    "name": host(*a),
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

    fn config_doc(&self) -> RawDocumentBuf {
        let st = self.shared.state.lock().expect("state");
        let members: Vec<Bson> = self
            .shared
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                Bson::Document(doc! {
                    "_id": i as i32,
                    "host": host(*a),
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

fn maybe_compress(message: Vec<u8>, compressor: Option<Compressor>) -> Vec<u8> {
    match compressor {
        Some(c) => op_compressed::compress(&message, c).expect("compress reply"),
        None => message,
    }
}

/// An OP_REPLY carrying `body`, answering request `response_to`.
fn legacy_reply(response_to: i32, body: &RawDocument) -> Vec<u8> {
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

/// The electionId MongoDB derives from a term: 0x7fffffff, then the term.
fn election_id(term: u64) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    bytes[4..].copy_from_slice(&term.to_be_bytes());
    ObjectId::from_bytes(bytes)
}
