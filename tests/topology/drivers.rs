//! Real drivers fail over, directly against the scripted set and through
//! one mongotap listener, and discover members mongotap's config leaves out.

use super::endpoint::{eventually, topology};
use super::*;

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
pub(super) async fn count_in_ferret(ferret: &Ferret, db: &str) -> i64 {
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

// Discovery: members the config leaves out get listeners from member_ports.

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

// Demo

/// /topology as a table, one row per member.
fn print_topology(title: &str, topology: &Value) {
    println!(
        "\n{title}: set {}, mode {}",
        topology["set_name"], topology["mode"]
    );
    println!(
        "  {:<17} {:<17} {:<10} {:<5} {:>9}",
        "member", "advertise", "state", "up", "hello_age"
    );
    for m in topology["members"].as_array().expect("members") {
        println!(
            "  {:<17} {:<17} {:<10} {:<5} {:>7}ms",
            m["member"].as_str().unwrap_or("?"),
            m["advertise"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("?"),
            m["up"].to_string(),
            m["last_hello_age_ms"].to_string()
        );
    }
}

/// Waits until /topology shows `member` as primary.
async fn primary_shown(tap: &Mongotap, member: &str) {
    let shown = || {
        topology(tap)["members"].as_array().is_some_and(|ms| {
            ms.iter()
                .any(|m| m["member"] == member && m["state"] == "primary")
        })
    };
    assert!(
        eventually(T, shown).await,
        "/topology never showed {member} as primary"
    );
}

/// Not a check but a show: `scripts/demo --replica-set` runs it with
/// `--nocapture`. pymongo fails over through one mongotap listener while
/// /topology is printed before and after the step-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a demo: scripts/demo --replica-set"]
async fn demo_failover() {
    let p = proxied(3).await;
    let db = unique_db("demo_failover");
    println!("scripted replica set {SET_NAME}: {:?}", p.set.hosts());
    println!("mongotap listeners:            {:?}", p.advertised());
    println!("pymongo URI: {}", p.uri());
    let first = p.set.primary().expect("a primary");
    let first_host = p.set.host(first);
    // Printed once mongotap's probe has seen the primary.
    primary_shown(&p.tap, &first_host).await;
    print_topology("/topology before the step-down", &topology(&p.tap));

    println!("\npymongo writes in a loop; the primary steps down after {BEFORE_STEP_DOWN:?}");
    let run = fail_over(Driver::Python, &p.uri(), &db, &p.set).await;
    let new_host = p.set.host(run.new_primary);
    primary_shown(&p.tap, &new_host).await;
    print_topology("/topology after the step-down", &topology(&p.tap));

    println!("\npymongo's own topology before: {}", run.ready["topology"]);
    println!(
        "pymongo's own topology after:  {}",
        run.done["topology_after"]
    );
    println!(
        "writes: {} acknowledged, {} errors, slowest {} ms; the old primary refused {} (retried)",
        run.done["inserted"],
        run.done["errors"].as_array().map_or(0, Vec::len),
        run.done["max_write_ms"],
        run.refused
    );
    println!(
        "FerretDB holds {} documents",
        count_in_ferret(&p.ferret, &db).await
    );
}
