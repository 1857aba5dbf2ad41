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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::oid::ObjectId;
use bson::RawDocumentBuf;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod answers;
mod conn;
mod who_connected;

use conn::serve;
pub use who_connected::socket_owner;

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
    /// How each member names itself in its answers: `host(addr)` unless
    /// `rename` gave it another name (the address of a TLS front, say).
    names: Mutex<Vec<String>>,
}

impl Shared {
    fn name(&self, i: usize) -> String {
        self.names.lock().expect("names")[i].clone()
    }
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
        let names = addrs.iter().map(|a| host(*a)).collect();
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
            names: Mutex::new(names),
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
        self.shared.name(i)
    }

    pub fn hosts(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.shared.name(i)).collect()
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
    /// Member `i` names itself `name` from now on: in hello (`hosts`,
    /// `primary`, `me`), replSetGetStatus and replSetGetConfig.
    pub fn rename(&self, i: usize, name: &str) {
        self.shared.names.lock().expect("names")[i] = name.to_string();
    }

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
