//! Replica-set mode (issue 17): real drivers given `replicaSet=rs0` and one
//! mongotap listener discover, monitor and fail over entirely through
//! mongotap, in front of a scripted replica set (tests/support/replset.rs)
//! whose members answer hello themselves and forward everything else to one
//! real FerretDB.
//!
//! Ground truth comes from outside mongotap: the scripted set knows who is
//! primary, its topologyVersion and who connected to it (by process, from
//! /proc); the drivers report their own topology description, their
//! acknowledged inserts and their slowest write; FerretDB, asked directly,
//! counts the documents.
//!
//! - `scripted_set_fails_over_with_<driver>_directly`: the fixture itself,
//!   no mongotap: each driver discovers the three members, fails over on a
//!   step-down with no write error, and every connection came from it.
//! - `<driver>_fails_over_through_mongotap`: the same through mongotap. The
//!   driver's topology lists exactly mongotap's listeners; no write error
//!   escapes; the slowest write stays well under 5 s; FerretDB holds exactly
//!   the acknowledged inserts; every connection the members accepted came
//!   from the mongotap process; /stats splits the inserts by member.
//! - `topology_endpoint_follows_the_set`: /topology and
//!   `mongotap_topology_member_up` against the set's own state, through a
//!   step-down and a member shut down.
//! - Frame-level, with a raw socket through mongotap: an exhaust hello
//!   stream rewritten reply by reply, compressed hellos, the legacy OP_QUERY
//!   isMaster, an unmapped host removed, `me` per listener, replSetGetStatus
//!   and replSetGetConfig rewritten, and a mongos hello unchanged in direct
//!   mode.
//! - `events_and_inflight_name_the_member`: a command's `slow` event and an
//!   awaiting hello's /inflight row carry the member their listener leads to.
//! - `unlisted_members_get_listeners_from_member_ports`: discovery.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/prom.rs"]
mod prom;
#[path = "support/replset.rs"]
mod replset;
#[path = "support/scripted.rs"]
mod scripted;
mod support;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bson::{rawdoc, RawDocument, RawDocumentBuf};
use mongotap_proto::op_compressed::{self, Compressor};
use mongotap_proto::{op_msg, op_reply, Header, OpCode, MAX_MESSAGE_LEN};
use replset::{host, ReplSet, SET_NAME};
use scripted::{legacy_query, msg, next_id, recording, RawClient, Received, Scripted, Step};
use serde_json::Value;
use support::{client_path, free_port, unique_db, Ferret, Mongotap};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const T: Duration = Duration::from_secs(10);
/// How long a driver program may take to start and discover the set.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(60);
/// Writes keep flowing this long before the step-down, and after it.
const BEFORE_STEP_DOWN: Duration = Duration::from_millis(800);
const AFTER_STEP_DOWN: Duration = Duration::from_millis(1500);
/// The monitors hear of the election this long after the old primary
/// starts refusing writes, so a write or two meets NotWritablePrimary and
/// must be retried.
const ANNOUNCE_DELAY: Duration = Duration::from_millis(300);
/// The failover budget the issue sets: well under 5 s.
const FAILOVER_BUDGET_MS: f64 = 5000.0;

/// One FerretDB for the tests of this file that run at the same time: it
/// stops when the last of them drops it, so nothing outlives the run.
fn ferret() -> Arc<Ferret> {
    static SHARED: Mutex<Weak<Ferret>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = slot.upgrade() {
        return f;
    }
    let f = Arc::new(tokio::task::block_in_place(Ferret::start));
    *slot = Arc::downgrade(&f);
    f
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `n` consecutive ports that were all free a moment ago.
fn free_port_range(n: u16) -> (u16, u16) {
    for _ in 0..50 {
        let first = free_port();
        let Some(last) = first.checked_add(n - 1) else {
            continue;
        };
        let held: Vec<_> = (first..=last)
            .map_while(|p| TcpListener::bind(local(p)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return (first, last);
        }
    }
    panic!("no {n} consecutive free ports");
}

/// A scripted set, mongotap in replica-set mode in front of it, and the
/// FerretDB behind it.
struct Proxied {
    set: ReplSet,
    tap: Mongotap,
    /// mongotap's listener for each listed member, in member order.
    listens: Vec<SocketAddr>,
    ferret: Arc<Ferret>,
}

impl Proxied {
    /// The addresses mongotap advertises, as hello names them.
    fn advertised(&self) -> BTreeSet<String> {
        self.listens.iter().map(|a| host(*a)).collect()
    }

    fn uri(&self) -> String {
        format!("mongodb://{}/?replicaSet={SET_NAME}", host(self.listens[0]))
    }
}

/// `[health]` quick enough for tests, `[topology]` in replica-set mode with
/// `extra` appended to the table, and one `[[topology.member]]` per pair;
/// `tables` comes first (other tables, such as `[watch]`).
fn config(tables: &str, members: &[(SocketAddr, SocketAddr)], extra: &str) -> String {
    let mut toml = format!(
        "{tables}\n[health]\ninterval_ms = 200\n\n[topology]\nmode = \"replica-set\"\n{extra}\n"
    );
    for (upstream, listen) in members {
        toml.push_str(&format!(
            "\n[[topology.member]]\nupstream = \"{}\"\nlisten = \"{}\"\n",
            host(*upstream),
            host(*listen)
        ));
    }
    toml
}

/// A set of `n` members, every one listed in mongotap's config.
async fn proxied(n: usize) -> Proxied {
    proxied_with(n, |_| {}, "").await
}

/// `proxied`, with `prepare` run on the set before mongotap starts and
/// `tables` added to the config.
async fn proxied_with(n: usize, prepare: impl FnOnce(&ReplSet), tables: &str) -> Proxied {
    let ferret = ferret();
    let set = ReplSet::start(ferret.addr(), n).await;
    prepare(&set);
    let listens: Vec<SocketAddr> = (0..n).map(|_| local(free_port())).collect();
    let pairs: Vec<_> = set.addrs().into_iter().zip(listens.clone()).collect();
    let toml = config(tables, &pairs, "");
    let tap = tokio::task::block_in_place(|| {
        let mut tap = Mongotap::spawn_config(&toml, &[]);
        tap.wait_listening(&listens);
        tap
    });
    Proxied {
        set,
        tap,
        listens,
        ferret,
    }
}

// ---------------------------------------------------------------------------
// Drivers

#[derive(Clone, Copy, Debug)]
enum Driver {
    Python,
    Go,
    Node,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Python => "python",
            Driver::Go => "go",
            Driver::Node => "node",
        }
    }

    /// The failover program: `<program> URI DB APP`, JSON lines on stdout,
    /// one stdin line to stop (see tests/clients/python/failover.py).
    fn command(self) -> tokio::process::Command {
        match self {
            Driver::Python => {
                let mut cmd = tokio::process::Command::new(support::python_path());
                cmd.arg(support::repo_file("tests/clients/python/failover.py"));
                cmd
            }
            Driver::Go => {
                let mut cmd = tokio::process::Command::new(client_path(
                    "MONGOTAP_GO_CLIENT",
                    "clients/go/mongotap-go-client",
                ));
                cmd.arg("failover");
                cmd
            }
            Driver::Node => {
                let dir = client_path("MONGOTAP_NODE_CLIENT_DIR", "clients/node");
                let mut cmd = tokio::process::Command::new("node");
                cmd.arg(dir.join("client.js")).arg("failover");
                cmd
            }
        }
    }
}

/// A running failover program.
struct Session {
    driver: Driver,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Its `ready` line.
    ready: Value,
}

impl Session {
    async fn start(driver: Driver, uri: &str, db: &str) -> Session {
        let app = format!("failover-{}", driver.name());
        let mut child = driver
            .command()
            .args([uri, db, &app])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start the {driver:?} failover client: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut s = Session {
            driver,
            child,
            stdin,
            lines,
            ready: Value::Null,
        };
        s.ready = s.next_event("ready").await;
        s
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the driver is running")
    }

    async fn next_event(&mut self, name: &str) -> Value {
        let driver = self.driver;
        let deadline = tokio::time::Instant::now() + DRIVER_TIMEOUT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{driver:?}: no `{name}` line in {DRIVER_TIMEOUT:?}"))
                .expect("read the driver's stdout")
                .unwrap_or_else(|| panic!("{driver:?} exited before its `{name}` line"));
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{driver:?} printed non-JSON ({e}): {line}"));
            if v["event"] == name {
                return v;
            }
        }
    }

    /// Stops the write loop and returns the `done` line.
    async fn stop(mut self) -> Value {
        self.stdin.write_all(b"stop\n").await.expect("stop line");
        self.stdin.flush().await.expect("flush");
        let done = self.next_event("done").await;
        let status = tokio::time::timeout(T, self.child.wait())
            .await
            .expect("the driver exits")
            .expect("wait");
        assert!(status.success(), "{:?} exited with {status}", self.driver);
        done
    }
}

/// What a failover run saw.
struct Failover {
    ready: Value,
    done: Value,
    /// The member the step-down elected.
    new_primary: usize,
    /// The driver program's process id.
    pid: u32,
    /// Writes the old primary refused after the step-down.
    refused: usize,
}

/// Starts the driver, lets it write, steps the primary down, lets it write
/// on, and stops it.
async fn fail_over(driver: Driver, uri: &str, db: &str, set: &ReplSet) -> Failover {
    let session = Session::start(driver, uri, db).await;
    let pid = session.pid();
    tokio::time::sleep(BEFORE_STEP_DOWN).await;
    let new_primary = set.step_down_announced_after(ANNOUNCE_DELAY);
    tokio::time::sleep(AFTER_STEP_DOWN).await;
    let ready = session.ready.clone();
    let done = session.stop().await;
    Failover {
        ready,
        done,
        new_primary,
        pid,
        refused: set.refused_writes(),
    }
}

fn servers(topology: &Value) -> BTreeSet<String> {
    topology["servers"]
        .as_array()
        .unwrap_or_else(|| panic!("no servers in {topology}"))
        .iter()
        .map(|s| s.as_str().expect("address").to_owned())
        .collect()
}

/// Counts the documents of `db.items` by asking FerretDB itself.
async fn count_in_ferret(ferret: &Ferret, db: &str) -> i64 {
    let mut c = RawClient::connect(ferret.addr()).await;
    let reply = c.command(&rawdoc! { "count": "items", "$db": db }).await;
    assert_eq!(reply.get_f64("ok").ok(), Some(1.0), "{reply:?}");
    reply
        .get_i32("n")
        .map(i64::from)
        .or_else(|_| reply.get_i64("n"))
        .unwrap_or_else(|_| panic!("count reply: {reply:?}"))
}

/// The checks every failover run must pass, direct or through mongotap:
/// `addresses[i]` is how the driver should name member i.
async fn assert_failed_over(run: &Failover, addresses: &[String], ferret: &Ferret, db: &str) {
    let (ready, done) = (&run.ready, &run.done);
    let want: BTreeSet<String> = addresses.iter().cloned().collect();
    let before = &ready["topology"];
    let after = &done["topology_after"];
    assert_eq!(servers(before), want, "topology before: {before}");
    assert_eq!(before["primary"], addresses[0], "{before}");
    assert_eq!(servers(after), want, "topology after: {after}");
    assert_eq!(after["primary"], addresses[run.new_primary], "{after}");
    let primaries = done["primaries"].as_array().expect("primaries");
    assert_eq!(
        primaries.last(),
        Some(&Value::from(addresses[run.new_primary].clone())),
        "{done}"
    );

    assert!(
        run.refused > 0,
        "no write met NotWritablePrimary: the retry path went untested"
    );
    let errors = done["errors"].as_array().expect("errors");
    assert!(errors.is_empty(), "write errors escaped: {errors:#?}");
    let max_ms = done["max_write_ms"].as_f64().expect("max_write_ms");
    assert!(
        max_ms < FAILOVER_BUDGET_MS,
        "a write took {max_ms} ms across the failover"
    );
    let inserted = done["inserted"].as_i64().expect("inserted");
    assert!(inserted > 10, "too few writes to span the failover: {done}");
    assert_eq!(
        done["count"].as_i64(),
        Some(inserted),
        "driver's count: {done}"
    );
    assert_eq!(
        count_in_ferret(ferret, db).await,
        inserted,
        "FerretDB's count"
    );
}

/// The fixture on its own: the driver connects to the members directly.
async fn fails_over_directly(driver: Driver) {
    let ferret = ferret();
    let set = ReplSet::start(ferret.addr(), 3).await;
    let db = unique_db(&format!("direct_{}", driver.name()));
    // One seed, as through mongotap: the driver discovers the rest.
    let uri = format!("mongodb://{}/?replicaSet={SET_NAME}", set.host(0));
    let run = fail_over(driver, &uri, &db, &set).await;
    assert_failed_over(&run, &set.hosts(), &ferret, &db).await;
    let strangers = set.connections_not_from(run.pid);
    assert!(
        strangers.is_empty(),
        "connections not from the driver (pid {}): {strangers:?}",
        run.pid
    );
    // And the check tells processes apart: none of them came from this one.
    let accepted = set.accepted();
    assert!(accepted.len() >= 3, "{accepted:?}");
    assert_eq!(
        set.connections_not_from(std::process::id()).len(),
        accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_set_fails_over_with_python_directly() {
    fails_over_directly(Driver::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_set_fails_over_with_go_directly() {
    fails_over_directly(Driver::Go).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_set_fails_over_with_node_directly() {
    fails_over_directly(Driver::Node).await;
}

/// A driver through one mongotap listener.
async fn fails_over_through_mongotap(driver: Driver) {
    let p = proxied(3).await;
    let db = unique_db(&format!("tap_{}", driver.name()));
    let run = fail_over(driver, &p.uri(), &db, &p.set).await;
    let advertised: Vec<String> = p.listens.iter().map(|a| host(*a)).collect();
    assert_failed_over(&run, &advertised, &p.ferret, &db).await;
    // Never a member's own address.
    for topology in [&run.ready["topology"], &run.done["topology_after"]] {
        for member in p.set.hosts() {
            assert!(!servers(topology).contains(&member), "{topology}");
        }
    }
    let strangers = p.set.connections_not_from(p.tap.pid());
    assert!(
        strangers.is_empty(),
        "connections that bypassed mongotap (pid {}): {strangers:?}",
        p.tap.pid()
    );

    // /stats splits the inserts by member: the old and the new primary
    // acknowledged them all between them, the third member none.
    let app = format!("failover-{}", driver.name());
    let inserted = run.done["inserted"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + T;
    let rows = loop {
        let rows = successes_by_member(&p.tap, &app, "insert");
        if rows.iter().map(|r| r.1).sum::<u64>() >= inserted
            || tokio::time::Instant::now() > deadline
        {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let of = |i: usize| -> u64 {
        let member = p.set.host(i);
        rows.iter().filter(|r| r.0 == member).map(|r| r.1).sum()
    };
    assert_eq!(of(0) + of(run.new_primary), inserted, "{rows:?}");
    assert!(of(0) > 0 && of(run.new_primary) > 0, "{rows:?}");
}

/// /stats rows of `app` for `command`, as (member, count - errors).
fn successes_by_member(tap: &Mongotap, app: &str, command: &str) -> Vec<(String, u64)> {
    let (code, body) = tap.admin_get("/stats");
    assert_eq!(code, 200, "{body}");
    let stats: Value = serde_json::from_str(&body).expect("stats json");
    stats["commands"]
        .as_array()
        .expect("commands")
        .iter()
        .filter(|r| r["app"] == app && r["command"] == command)
        .map(|r| {
            let ok = r["count"].as_u64().unwrap_or(0) - r["errors"].as_u64().unwrap_or(0);
            (r["member"].as_str().unwrap_or("").to_owned(), ok)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fails_over_through_mongotap() {
    fails_over_through_mongotap(Driver::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_fails_over_through_mongotap() {
    fails_over_through_mongotap(Driver::Go).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_fails_over_through_mongotap() {
    fails_over_through_mongotap(Driver::Node).await;
}

// ---------------------------------------------------------------------------
// /topology and /metrics

fn topology(tap: &Mongotap) -> Value {
    let (code, body) = tap.admin_get("/topology");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/topology is not JSON ({e}): {body}"))
}

/// /topology's row for member address `member`.
fn row<'a>(topology: &'a Value, member: &str) -> &'a Value {
    topology["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["member"] == member)
        .unwrap_or_else(|| panic!("no row for {member}: {topology}"))
}

fn member_up(tap: &Mongotap) -> Vec<prom::Sample> {
    let (code, body) = tap.admin_get("/metrics");
    assert_eq!(code, 200, "{body}");
    prom::parse(&body)
        .into_iter()
        .filter(|s| s.name == "mongotap_topology_member_up")
        .collect()
}

/// Polls `check` until it returns true or `timeout` passes.
async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The state /topology should give each member, from the set's truth.
fn states_of(set: &ReplSet) -> Vec<&'static str> {
    (0..set.len())
        .map(|i| {
            if set.primary() == Some(i) {
                "primary"
            } else {
                "secondary"
            }
        })
        .collect()
}

fn states_in(topology: &Value, set: &ReplSet) -> Vec<String> {
    (0..set.len())
        .map(|i| {
            row(topology, &set.host(i))["state"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_endpoint_follows_the_set() {
    let p = proxied(3).await;
    let want = states_of(&p.set);
    let shown = eventually(T, || states_in(&topology(&p.tap), &p.set) == want).await;
    let t = topology(&p.tap);
    assert!(
        shown,
        "states {:?}, want {want:?}: {t}",
        states_in(&t, &p.set)
    );
    assert_eq!(t["mode"], "replica-set", "{t}");
    assert_eq!(t["set_name"], SET_NAME, "{t}");
    assert_eq!(t["members"].as_array().unwrap().len(), 3, "{t}");
    for i in 0..3 {
        let r = row(&t, &p.set.host(i));
        assert_eq!(r["upstream"], p.set.host(i), "{r}");
        assert_eq!(r["listen"], host(p.listens[i]), "{r}");
        assert_eq!(r["advertise"], host(p.listens[i]), "{r}");
        assert_eq!(r["configured"], true, "{r}");
        assert_eq!(r["up"], true, "{r}");
        // Probed every 200 ms: a last hello much older than that is wrong.
        let age = r["last_hello_age_ms"].as_f64().unwrap_or(f64::MAX);
        assert!((0.0..3000.0).contains(&age), "last hello {age} ms ago: {r}");
    }
    let up = member_up(&p.tap);
    for i in 0..3 {
        let member = p.set.host(i);
        assert_eq!(
            prom::one(&up, "mongotap_topology_member_up", &[("member", &member)]),
            1.0
        );
    }

    // An election: /topology follows within a few probes.
    p.set.step_down();
    let want = states_of(&p.set);
    assert_eq!(want, ["secondary", "primary", "secondary"]);
    let shown = eventually(Duration::from_secs(5), || {
        states_in(&topology(&p.tap), &p.set) == want
    })
    .await;
    let t = topology(&p.tap);
    assert!(
        shown,
        "after the step-down {:?}: {t}",
        states_in(&t, &p.set)
    );

    // A member that goes away is down in both views; the others stay up.
    p.set.shutdown(2);
    let gone = p.set.host(2);
    let down = eventually(Duration::from_secs(5), || {
        let up = member_up(&p.tap);
        prom::one(&up, "mongotap_topology_member_up", &[("member", &gone)]) == 0.0
    })
    .await;
    assert!(down, "member_up never went to 0: {:?}", member_up(&p.tap));
    let t = topology(&p.tap);
    assert_eq!(row(&t, &gone)["up"], false, "{t}");
    let up = member_up(&p.tap);
    for i in 0..2 {
        let member = p.set.host(i);
        assert_eq!(
            prom::one(&up, "mongotap_topology_member_up", &[("member", &member)]),
            1.0,
            "{member}"
        );
        assert_eq!(row(&t, &member)["up"], true, "{t}");
    }
}

// ---------------------------------------------------------------------------
// Frame level

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

// ---------------------------------------------------------------------------
// Discovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_members_get_listeners_from_member_ports() {
    let ferret = ferret();
    let set = ReplSet::start(ferret.addr(), 3).await;
    let (first, last) = free_port_range(4);
    let seed = local(free_port());
    let toml = config(
        "",
        &[(set.addr(0), seed)],
        &format!("member_ports = \"{first}-{last}\"\n"),
    );
    let mut tap = tokio::task::block_in_place(|| {
        let mut tap = Mongotap::spawn_config(&toml, &[]);
        tap.wait_listening(&[seed]);
        tap
    });

    // Each other member gets a listener from the range, once.
    let deadline = tokio::time::Instant::now() + T;
    let added = loop {
        let added = tap.events("topology_member_added");
        if added.len() >= 2 || tokio::time::Instant::now() > deadline {
            break added;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut listens = vec![seed];
    for i in 1..3 {
        let member = set.host(i);
        let events: Vec<&Value> = added.iter().filter(|e| e["member"] == member).collect();
        assert_eq!(events.len(), 1, "{member}: {added:#?}");
        let listen: SocketAddr = events[0]["listen"].as_str().unwrap().parse().unwrap();
        assert!(
            (first..=last).contains(&listen.port()),
            "{listen} outside the range"
        );
        assert_eq!(events[0]["advertise"], host(listen));
        listens.push(listen);
    }
    assert!(
        !added.iter().any(|e| e["member"] == set.host(0)),
        "the listed member was added again: {added:#?}"
    );
    tokio::task::block_in_place(|| tap.wait_listening(&listens[1..]));

    // The driver sees only mongotap, and its writes land.
    let p = Proxied {
        set,
        tap,
        listens,
        ferret,
    };
    let db = unique_db("discovered");
    let session = Session::start(Driver::Python, &p.uri(), &db).await;
    let done = session.stop().await;
    let seen = servers(&done["topology_after"]);
    assert_eq!(seen, p.advertised(), "{done}");
    assert_eq!(done["topology_after"]["primary"], host(p.listens[0]));
    let inserted = done["inserted"].as_i64().unwrap();
    assert!(done["errors"].as_array().unwrap().is_empty(), "{done}");
    assert_eq!(count_in_ferret(&p.ferret, &db).await, inserted);
    let strangers = p.set.connections_not_from(p.tap.pid());
    assert!(strangers.is_empty(), "bypassed mongotap: {strangers:?}");
}
