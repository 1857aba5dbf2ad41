//! Replica-set mode (issue 17): real drivers given `replicaSet=rs0` and one
//! mongotap listener discover, monitor and fail over entirely through
//! mongotap, in front of a scripted replica set (tests/support/replset/)
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
//! - `tls_to_a_member_verifies_that_members_host_name`: TLS per member.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/prom.rs"]
mod prom;
#[path = "support/replset/mod.rs"]
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

// The crate root of an integration test resolves `mod x;` next to itself,
// so the parts in tests/topology/ are named by path.
#[path = "topology/drivers.rs"]
mod drivers;
#[path = "topology/endpoint.rs"]
mod endpoint;
#[path = "topology/frames.rs"]
mod frames;
#[path = "topology/tls.rs"]
mod tls;
