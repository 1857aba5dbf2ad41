//! The driver matrix (issue 6): the official drivers for Go, Python, Node,
//! Java and Rust, each through mongotap, feature by feature.
//!
//! - `<driver>_workload_through_mongotap_matches_direct`: the shared workload
//!   (tests/clients/<driver>) runs straight against a FerretDB that requires
//!   SCRAM-SHA-256 and then through mongotap. Both runs must print the same
//!   results, equal to `expected_results()` for every driver, and mongotap's
//!   /stats must count, for the driver's appName, exactly the commands the
//!   driver's own command monitor saw start.
//! - `<driver>_workload_over_tls_through_mongotap`: the same workload through
//!   a mongotap that offers clients TLS, the driver verifying its certificate.
//! - `<driver>_negotiates_each_compressor`: against the scripted upstream
//!   (FerretDB does not compress), the driver negotiates snappy, zlib and
//!   zstd in turn through mongotap. The upstream must receive its commands as
//!   OP_COMPRESSED with that compressor, and /stats must count them.
//! - `go_monitor_and_mongotap_agree_on_a_stalled_aggregate`: the seed
//!   scenario. FerretDB is SIGSTOPped under a Go aggregate; the Go command
//!   monitor shows Started with no Succeeded, and mongotap's /inflight and
//!   `stalled` event carry the monitor's RequestID.
//! - Scripted-upstream fixtures driven by a raw socket: the legacy OP_QUERY
//!   handshake, a bulkWrite with two document sequences, and OP_COMPRESSED
//!   replies for each compressor, all forwarded byte for byte.
//!
//! The Go, Node and Java programs are built once per run by
//! scripts/clients.sh, which exports where they are; the Rust workload is a
//! module compiled into this test (tests/clients/rust/workload.rs).

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "clients/rust/workload.rs"]
mod rust_client;
#[path = "support/scripted.rs"]
mod scripted;
mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::{rawdoc, RawDocumentBuf};
use mongotap_proto::op_compressed::{self, Compressor};
use mongotap_proto::{op_msg, op_reply, Header, OpCode};
use scripted::{msg, next_id, recording, RawClient, Received, Scripted, Step};
use serde_json::{json, Value};
use support::{client_path, signal, unique_db, Ferret, Mongotap};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One client program run longer than this is a hang, not a slow machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long /stats may take to publish what a session recorded.
const STATS_TIMEOUT: Duration = Duration::from_secs(10);
const T: Duration = Duration::from_secs(10);

const USER: &str = "matrix";
const PASSWORD: &str = "matrix-secret";

const COMPRESSORS: [Compressor; 3] = [Compressor::Snappy, Compressor::Zlib, Compressor::Zstd];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Driver {
    Go,
    Python,
    Node,
    Java,
    Rust,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Go => "go",
            Driver::Python => "python",
            Driver::Node => "node",
            Driver::Java => "java",
            Driver::Rust => "rust",
        }
    }

    /// The appName this driver's workload connects with.
    fn app(self) -> String {
        format!("matrix-{}", self.name())
    }

    /// The command that runs this driver's client program (not Rust's, which
    /// runs in-process).
    fn command(self) -> tokio::process::Command {
        match self {
            Driver::Go => tokio::process::Command::new(client_path(
                "MONGOTAP_GO_CLIENT",
                "clients/go/mongotap-go-client",
            )),
            Driver::Python => {
                let mut cmd = tokio::process::Command::new(support::python_path());
                cmd.arg(support::repo_file("tests/clients/python/matrix.py"));
                cmd
            }
            Driver::Node => {
                let dir = client_path("MONGOTAP_NODE_CLIENT_DIR", "clients/node");
                let mut cmd = tokio::process::Command::new("node");
                cmd.arg(dir.join("client.js"));
                cmd
            }
            Driver::Java => {
                let jar = client_path(
                    "MONGOTAP_JAVA_CLIENT_JAR",
                    "clients/java/mongotap-java-client.jar",
                );
                let mut cmd = tokio::process::Command::new("java");
                cmd.arg("-jar").arg(jar);
                cmd
            }
            Driver::Rust => unreachable!("the Rust workload runs in-process"),
        }
    }
}

/// Runs one client program with `mode URI ARG APP` and returns the JSON its
/// last stdout line holds. Panics with its stderr if it fails or hangs.
async fn run(driver: Driver, mode: &str, uri: &str, arg: &str, app: &str) -> Value {
    if driver == Driver::Rust {
        let out = match mode {
            "workload" => rust_client::workload(uri, arg, app).await,
            "compress" => rust_client::compress(uri, arg, app).await,
            other => panic!("unknown mode {other}"),
        };
        return out.unwrap_or_else(|e| panic!("rust {mode} {uri} failed: {e}"));
    }
    let out = driver
        .command()
        .args([mode, uri, arg, app])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_TIMEOUT, out)
        .await
        .unwrap_or_else(|_| panic!("{driver:?} {mode} {uri} ran longer than {RUN_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("start the {driver:?} client: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{driver:?} {mode} {uri} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{driver:?} printed non-JSON ({e}):\n{stdout}\n{stderr}"))
}

/// What every driver's workload must report, direct or through mongotap,
/// given the users it authenticated as.
fn expected_results(users: &[String]) -> Value {
    // 30 documents {_id: i, n: i, grp: i % 3, tags: ["t<i%4>", "all"]}.
    let find_ids: Vec<i32> = (5..30).collect();
    // grp 1 (i % 3 == 1) is deleted; the w:0 insert adds 1000.
    let mut final_ids: Vec<i32> = (0..30).filter(|i| i % 3 != 1).collect();
    final_ids.push(1000);
    json!({
        "users": users,
        "inserted": 30,
        "duplicate_key_code": 11000,
        "find_ids": find_ids,
        // 25 documents, batchSize 4: 4 in the first batch, then 6 getMores.
        "find_getmores": 6,
        // n < 20, one group per tag: 5 groups, batchSize 2: 2 getMores.
        "aggregate": [
            {"_id": "all", "count": 20},
            {"_id": "t0", "count": 5},
            {"_id": "t1", "count": 5},
            {"_id": "t2", "count": 5},
            {"_id": "t3", "count": 5},
        ],
        "aggregate_getmores": 2,
        "update": {"matched": 10, "modified": 10},
        "deleted": 10,
        "w0_count": 1,
        "closed_cursor_first_batch": [0, 2],
        "kill_cursors": 1,
        "cursors_killed": 1,
        // CommandNotFound
        "unknown_command_code": 59,
        "final_ids": final_ids,
        "final_count": 21,
    })
}

/// A FerretDB that only serves clients that authenticated with SCRAM.
fn ferret_with_auth() -> Ferret {
    Ferret::start_with_args(&[
        "--test-enable-new-auth",
        "--setup-database=admin",
        &format!("--setup-username={USER}"),
        &format!("--setup-password={PASSWORD}"),
    ])
}

fn auth_uri(addr: std::net::SocketAddr) -> String {
    format!(
        "mongodb://{USER}:{PASSWORD}@{addr}/?directConnection=true&authMechanism=SCRAM-SHA-256&authSource=admin"
    )
}

fn stats(tap: &Mongotap) -> Vec<Value> {
    let (code, body) = tap.admin_get("/stats");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("stats json");
    v["commands"].as_array().cloned().unwrap_or_default()
}

/// /stats for one app, summed over namespaces: command -> (count, errors).
fn app_stats(tap: &Mongotap, app: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for row in stats(tap).iter().filter(|r| r["app"] == app) {
        let name = row["command"].as_str().unwrap_or_default().to_owned();
        let entry: &mut (u64, u64) = out.entry(name).or_default();
        entry.0 += row["count"].as_u64().unwrap_or(0);
        entry.1 += row["errors"].as_u64().unwrap_or(0);
    }
    out
}

/// Polls /stats until `done` holds for `app` (sessions publish in batches),
/// and returns the last view either way.
async fn wait_stats(
    tap: &Mongotap,
    app: &str,
    done: impl Fn(&BTreeMap<String, (u64, u64)>) -> bool,
) -> BTreeMap<String, (u64, u64)> {
    let deadline = tokio::time::Instant::now() + STATS_TIMEOUT;
    loop {
        let now = app_stats(tap, app);
        if done(&now) || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the driver can authenticate to FerretDB v1.24.2 with SCRAM. The
/// Rust driver cannot: it always sends `skipEmptyExchange: true` and requires
/// `done: true` in the reply to its final SCRAM message, but FerretDB answers
/// that message with `done: false` and waits for one more, empty, round (see
/// `rust_driver_scram_fails_alike_direct_and_through_mongotap`). Its workload
/// runs against a FerretDB without authentication instead.
fn scram_with_ferretdb(driver: Driver) -> bool {
    driver != Driver::Rust
}

/// Commands a driver sends fire-and-forget (OP_MSG moreToCome): no reply,
/// so no latency sample, so /stats does not count them. The Node driver
/// ends its sessions that way on close.
fn fire_and_forget(driver: Driver) -> &'static [&'static str] {
    match driver {
        Driver::Node => &["endSessions"],
        _ => &[],
    }
}

/// The shared workload, direct and through mongotap, for one driver.
async fn workload_matches_direct(driver: Driver) {
    let scram = scram_with_ferretdb(driver);
    let ferret = if scram {
        ferret_with_auth()
    } else {
        Ferret::start()
    };
    let tap = Mongotap::start(ferret.addr());
    let app = driver.app();
    let uri = |addr| {
        if scram {
            auth_uri(addr)
        } else {
            support::uri_for(addr)
        }
    };
    let users = if scram {
        vec![format!("admin.{USER}")]
    } else {
        vec![]
    };

    let direct = run(
        driver,
        "workload",
        &uri(ferret.addr()),
        &unique_db("direct"),
        &app,
    )
    .await;
    assert_eq!(
        direct["results"],
        expected_results(&users),
        "{driver:?} direct results differ from what every driver must see; driver {}",
        direct["driver"]
    );
    let proxied = run(
        driver,
        "workload",
        &uri(tap.listen),
        &unique_db("proxied"),
        &app,
    )
    .await;
    assert_eq!(
        proxied["results"], direct["results"],
        "{driver:?} results through mongotap differ from direct"
    );

    assert_counted(&tap, driver, &app, &proxied, scram).await;
}

/// Every command the driver's monitor saw start, /stats counts for its app,
/// no more and no fewer; failures count as errors; SCRAM went through.
async fn assert_counted(tap: &Mongotap, driver: Driver, app: &str, out: &Value, scram: bool) {
    let monitored: BTreeMap<String, u64> = out["commands"]
        .as_object()
        .expect("commands object")
        .iter()
        .filter(|(k, _)| !fire_and_forget(driver).contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.as_u64().expect("count")))
        .collect();
    let matches = |seen: &BTreeMap<String, (u64, u64)>| {
        monitored
            .iter()
            .all(|(name, n)| seen.get(name).map(|s| s.0) == Some(*n))
    };
    let seen = wait_stats(tap, app, matches).await;
    let counted: BTreeMap<&String, u64> = monitored
        .keys()
        .map(|name| (name, seen.get(name).map_or(0, |s| s.0)))
        .collect();
    let expected: BTreeMap<&String, u64> = monitored.iter().map(|(k, v)| (k, *v)).collect();
    assert_eq!(
        counted, expected,
        "/stats for app {app} (left) differs from the {driver:?} command monitor (right); all of /stats: {seen:?}"
    );
    // The failures count as errors: the duplicate key (a write error in an
    // ok:1 reply) and the unknown command.
    assert!(seen["insert"].1 >= 1, "no insert error counted: {seen:?}");
    assert_eq!(seen["mongotapNoSuchCommand"].1, 1, "{seen:?}");
    // SCRAM went through mongotap: the conversation ends with saslContinue
    // (saslStart may ride in hello as speculativeAuthenticate).
    assert_eq!(
        seen.get("saslContinue").is_some_and(|s| s.0 >= 1),
        scram,
        "saslContinue counted for {app}: {seen:?}"
    );
    let errors = tap.events("decode_error");
    assert!(errors.is_empty(), "unexpected decode errors: {errors:#?}");
}

/// A throwaway CA and a server certificate for 127.0.0.1 and localhost, as
/// PEM files in `dir`: (CA certificate, server certificate, server key).
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "mongotap driver matrix CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("leaf params");
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("leaf key");
    let cert = leaf.signed_by(&key, &issuer).expect("sign leaf");

    let files = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&files.0, ca_cert.pem()).expect("write CA");
    std::fs::write(&files.1, cert.pem()).expect("write cert");
    std::fs::write(&files.2, key.serialize_pem()).expect("write key");
    files
}

/// The shared workload through a mongotap that offers clients TLS
/// (`[tls.client]`), with the driver verifying mongotap's certificate
/// against a CA of the test's own (`tls=true&tlsCAFile=...`).
async fn workload_over_tls(driver: Driver) {
    let scram = scram_with_ferretdb(driver);
    let ferret = if scram {
        ferret_with_auth()
    } else {
        Ferret::start()
    };
    let dir = tempfile::Builder::new()
        .prefix("mongotap-matrix-tls-")
        .tempdir()
        .expect("temp dir");
    let (ca, cert, key) = tls_files(dir.path());
    let config = dir.path().join("mongotap.toml");
    std::fs::write(
        &config,
        format!(
            "[tls.client]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .expect("write config");
    let tap = Mongotap::start_with(
        ferret.addr(),
        &["--config", config.to_str().expect("UTF-8 path")],
    );
    let app = format!("{}-tls", driver.app());
    let base = if scram {
        auth_uri(tap.listen)
    } else {
        support::uri_for(tap.listen)
    };
    let uri = format!("{base}&tls=true&tlsCAFile={}", ca.display());
    let users = if scram {
        vec![format!("admin.{USER}")]
    } else {
        vec![]
    };

    let out = run(driver, "workload", &uri, &unique_db("tls"), &app).await;
    assert_eq!(
        out["results"],
        expected_results(&users),
        "{driver:?} results over TLS through mongotap"
    );
    assert_counted(&tap, driver, &app, &out, scram).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_workload_through_mongotap_matches_direct() {
    workload_matches_direct(Driver::Go).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_workload_through_mongotap_matches_direct() {
    workload_matches_direct(Driver::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_workload_through_mongotap_matches_direct() {
    workload_matches_direct(Driver::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_workload_through_mongotap_matches_direct() {
    workload_matches_direct(Driver::Java).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_workload_through_mongotap_matches_direct() {
    workload_matches_direct(Driver::Rust).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_workload_over_tls_through_mongotap() {
    workload_over_tls(Driver::Go).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_workload_over_tls_through_mongotap() {
    workload_over_tls(Driver::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_workload_over_tls_through_mongotap() {
    workload_over_tls(Driver::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_workload_over_tls_through_mongotap() {
    workload_over_tls(Driver::Java).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_workload_over_tls_through_mongotap() {
    workload_over_tls(Driver::Rust).await;
}

/// The SCRAM cells mean something only if the server refuses clients that
/// did not authenticate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferret_with_auth_refuses_unauthenticated_clients() {
    let ferret = ferret_with_auth();
    let tap = Mongotap::start(ferret.addr());
    let client = mongodb::Client::with_uri_str(tap.uri())
        .await
        .expect("client");
    let err = client
        .database("matrix")
        .collection::<mongodb::bson::Document>("items")
        .insert_one(mongodb::bson::doc! { "_id": 1 })
        .await
        .expect_err("an unauthenticated insert must fail");
    match *err.kind {
        mongodb::error::ErrorKind::Command(ref c) => assert_eq!(c.code, 13, "{err}"),
        _ => panic!("expected Unauthorized (13), got {err}"),
    }
}

/// Why the Rust cells for SCRAM say "cannot pass": FerretDB v1.24.2 ends
/// its SCRAM conversation one round later than the Rust driver accepts. The
/// failure is the same with and without mongotap in between, so it is not
/// mongotap's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_driver_scram_fails_alike_direct_and_through_mongotap() {
    let ferret = ferret_with_auth();
    let tap = Mongotap::start(ferret.addr());
    let mut errors = Vec::new();
    for addr in [ferret.addr(), tap.listen] {
        let err = rust_client::workload(
            &auth_uri(addr),
            &unique_db("rust_scram"),
            "matrix-rust-scram",
        )
        .await
        .expect_err("the Rust driver's SCRAM against FerretDB v1.24.2");
        assert!(
            err.contains("expected SCRAM authentication to have completed"),
            "{err}"
        );
        errors.push(err);
    }
    // mongotap saw the conversation: the hello that carried saslStart
    // (speculativeAuthenticate) and the client's final saslContinue.
    let seen = wait_stats(&tap, "matrix-rust-scram", |s| {
        s.contains_key("saslContinue")
    })
    .await;
    assert!(
        seen.get("saslContinue").is_some_and(|s| s.0 >= 1),
        "{seen:?}"
    );
    assert_eq!(errors.len(), 2);
}

/// The application name in a connection's first hello, if it has one.
fn hello_app(r: &Received) -> Option<String> {
    let cmd = r.command.as_ref()?;
    let client = cmd.get_document("client").ok()?;
    Some(
        client
            .get_document("application")
            .ok()?
            .get_str("name")
            .ok()?
            .to_owned(),
    )
}

/// How a driver sends a connection's first hello when no API version is
/// declared: Go, Node and Java still use the legacy OP_QUERY `isMaster`
/// (answered with OP_REPLY); pymongo and the Rust driver use OP_MSG.
fn handshake_opcode(driver: Driver) -> OpCode {
    match driver {
        Driver::Go | Driver::Node | Driver::Java => OpCode::Query,
        Driver::Python | Driver::Rust => OpCode::Msg,
    }
}

/// One driver negotiates each compressor in turn through mongotap.
async fn negotiates_each_compressor(driver: Driver) {
    let upstream = Scripted::compressing().await;
    let tap = Mongotap::start(upstream.addr);
    for c in COMPRESSORS {
        let app = format!("{}-{}", driver.app(), c.name());
        let out = run(driver, "compress", &tap.uri(), c.name(), &app).await;
        assert_eq!(
            out,
            json!({"compressor": c.name(), "ping": true, "inserted": 2, "found": [1]}),
            "{driver:?} with {}",
            c.name()
        );

        let frames = upstream.received();
        let conns: HashSet<usize> = frames
            .iter()
            .filter(|r| hello_app(r).as_deref() == Some(app.as_str()))
            .map(|r| r.conn)
            .collect();
        assert!(
            !conns.is_empty(),
            "no hello from {app} reached the upstream"
        );
        // The handshake: Go, Node and Java send their first hello as a legacy
        // OP_QUERY isMaster, which this upstream answers with OP_REPLY.
        for r in frames
            .iter()
            .filter(|r| hello_app(r).as_deref() == Some(app.as_str()))
        {
            assert_eq!(
                r.header.op_code,
                handshake_opcode(driver),
                "{app}: first hello was {}",
                r.name()
            );
        }
        for name in ["ping", "insert", "find"] {
            let sent: Vec<&Received> = frames
                .iter()
                .filter(|r| conns.contains(&r.conn) && r.name() == name)
                .collect();
            assert!(!sent.is_empty(), "{app}: no {name} reached the upstream");
            for r in sent {
                assert_eq!(
                    r.header.op_code,
                    OpCode::Msg,
                    "{app}: {name} decompresses to OP_MSG"
                );
                assert_eq!(
                    r.compressor,
                    Some(c),
                    "{app}: {name} must arrive as OP_COMPRESSED with {}",
                    c.name()
                );
                if name == "insert" {
                    assert_eq!(
                        scripted::sequences(r),
                        vec![("documents".to_owned(), 2)],
                        "{app}: insert_many's documents travel as a kind-1 sequence"
                    );
                    assert_eq!(scripted::inserted_documents(r), 2, "{app}");
                }
            }
        }
        // mongotap decompressed them to count them, under the driver's app.
        let seen = wait_stats(&tap, &app, |s| {
            ["ping", "insert", "find"]
                .iter()
                .all(|n| s.get(*n).is_some_and(|v| v.0 >= 1))
        })
        .await;
        for name in ["ping", "insert", "find"] {
            assert_eq!(
                seen.get(name).map(|s| s.0),
                Some(1),
                "{app}: /stats must count one {name}: {seen:?}"
            );
        }
    }
    let errors = tap.events("decode_error");
    assert!(errors.is_empty(), "unexpected decode errors: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_negotiates_each_compressor() {
    negotiates_each_compressor(Driver::Go).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_negotiates_each_compressor() {
    negotiates_each_compressor(Driver::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_negotiates_each_compressor() {
    negotiates_each_compressor(Driver::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_negotiates_each_compressor() {
    negotiates_each_compressor(Driver::Java).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_negotiates_each_compressor() {
    negotiates_each_compressor(Driver::Rust).await;
}

/// Reads the Go monitor's JSON lines until one matches `pred`.
async fn next_line_where(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<Value>,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .ok()?;
        let line = line.expect("read Go client stdout")?;
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("Go client printed non-JSON ({e}): {line}"));
        seen.push(v.clone());
        if pred(&v) {
            return Some(v);
        }
    }
}

/// The seed scenario: a Go app's aggregate hangs because the server is
/// stopped. The app's own command monitor and mongotap name the same request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_monitor_and_mongotap_agree_on_a_stalled_aggregate() {
    let ferret = Ferret::start();
    let stall_ms = 300;
    let tap = Mongotap::start_with(ferret.addr(), &["--stall-ms", &stall_ms.to_string()]);
    let app = "matrix-go-seed";
    let mut child = Driver::Go
        .command()
        .args(["monitor", &tap.uri(), &unique_db("seed"), app])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Go client");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();

    next_line_where(&mut lines, &mut seen, T, |v| v["event"] == "ready")
        .await
        .unwrap_or_else(|| panic!("the Go client never got ready: {seen:#?}"));
    signal(ferret.pid(), "STOP");
    stdin.write_all(b"go\n").await.expect("go-ahead");
    stdin.flush().await.expect("flush");

    let started = next_line_where(&mut lines, &mut seen, T, |v| {
        v["event"] == "started" && v["command"] == "aggregate"
    })
    .await
    .unwrap_or_else(|| panic!("no Started for aggregate: {seen:#?}"));
    let request_id = started["request_id"].as_i64().expect("request_id");

    let stalled = tap
        .wait_for(T, |v| {
            v["event"] == "stalled" && v["command"] == "aggregate"
        })
        .await
        .unwrap_or_else(|| panic!("no stalled event for the aggregate"));
    assert_eq!(
        stalled["request_id"].as_i64(),
        Some(request_id),
        "{stalled}"
    );
    assert_eq!(stalled["app"], app);

    let (code, body) = tap.admin_get("/inflight");
    assert_eq!(code, 200, "{body}");
    let inflight: Value = serde_json::from_str(&body).expect("inflight json");
    let row = inflight
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["command"] == "aggregate"))
        .unwrap_or_else(|| panic!("no aggregate in /inflight: {body}"));
    assert_eq!(row["request_id"].as_i64(), Some(request_id), "{row}");
    assert_eq!(row["app"], app);
    assert_eq!(
        row["stages"],
        json!(["$match", "$unwind", "$group", "$sort"])
    );

    // Still stopped: the Go side has Started and nothing else for it.
    let finished = next_line_where(&mut lines, &mut seen, Duration::from_millis(500), |v| {
        v["request_id"].as_i64() == Some(request_id) && v["event"] != "started"
    })
    .await;
    assert!(
        finished.is_none(),
        "the aggregate finished while the server was stopped: {finished:?}"
    );

    // Resumed, the same request completes: the ids were the same request all along.
    signal(ferret.pid(), "CONT");
    let succeeded = next_line_where(&mut lines, &mut seen, T, |v| {
        v["event"] == "succeeded" && v["command"] == "aggregate"
    })
    .await
    .unwrap_or_else(|| panic!("no Succeeded after SIGCONT: {seen:#?}"));
    assert_eq!(succeeded["request_id"].as_i64(), Some(request_id));
    let result = next_line_where(&mut lines, &mut seen, T, |v| v["event"] == "result")
        .await
        .unwrap_or_else(|| panic!("no result line: {seen:#?}"));
    assert_eq!(result["groups"], 2, "one group per tag");
    let status = tokio::time::timeout(T, child.wait())
        .await
        .expect("the Go client exits")
        .expect("wait");
    assert!(status.success(), "Go client exited with {status}");
}

/// A first hello (`hello` or legacy `isMaster`) with an appName, as a
/// driver's handshake.
fn hello_with_app(command: &str, app: &str) -> RawDocumentBuf {
    let client = rawdoc! {
        "application": { "name": app },
        "driver": { "name": "rawtest", "version": "1.0" },
        "os": { "type": "linux" },
    };
    match command {
        "hello" => rawdoc! { "hello": 1, "client": client },
        "isMaster" => rawdoc! { "isMaster": 1, "client": client },
        other => panic!("not a handshake command: {other}"),
    }
}

/// The legacy handshake: OP_QUERY isMaster to admin.$cmd, answered with
/// OP_REPLY, forwarded byte for byte both ways and counted under its app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_op_query_handshake_is_forwarded_exactly_and_counted() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let upstream = Scripted::start(recording(Arc::clone(&sent), scripted::default_reply)).await;
    let tap = Mongotap::start(upstream.addr);
    let mut client = RawClient::connect(tap.listen).await;
    let app = "legacy-handshake";

    let mut hello = hello_with_app("isMaster", app);
    hello.append(bson::cstr!("helloOk"), true);
    let query = scripted::legacy_query(next_id(), "admin", &hello);
    client.send(&query).await;
    let reply = client.recv(T).await.expect("OP_REPLY");

    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].header.op_code, OpCode::Query);
    assert_eq!(
        received[0].raw, query,
        "the upstream must get the OP_QUERY as sent"
    );
    assert_eq!(
        reply,
        sent.lock().expect("lock")[0],
        "the client must get the OP_REPLY as the upstream sent it"
    );
    let header = Header::parse(&reply).expect("header");
    assert_eq!(header.op_code, OpCode::Reply);
    let parsed = op_reply::parse(&reply).expect("OP_REPLY parses");
    assert_eq!(parsed.number_returned, 1);
    assert_eq!(
        parsed
            .first()
            .expect("a document")
            .get_bool("ismaster")
            .ok(),
        Some(true)
    );

    // The connection goes on with OP_MSG under the app the OP_QUERY named.
    client.command(&rawdoc! { "ping": 1, "$db": "admin" }).await;
    let seen = wait_stats(&tap, app, |s| {
        s.contains_key("isMaster") && s.contains_key("ping")
    })
    .await;
    assert_eq!(seen.get("isMaster").map(|s| s.0), Some(1), "{seen:?}");
    assert_eq!(seen.get("ping").map(|s| s.0), Some(1), "{seen:?}");
}

/// An OP_MSG built section by section, in the order given, so tests can put
/// document sequences before the body (sections may come in any order).
fn op_msg_sections(request_id: i32, flags: u32, sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = vec![0u8; 16];
    out.extend_from_slice(&flags.to_le_bytes());
    for (identifier, bytes) in sections {
        if identifier.is_empty() {
            out.push(0);
            out.extend_from_slice(bytes);
        } else {
            out.push(1);
            let size = (4 + identifier.len() + 1 + bytes.len()) as i32;
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(identifier.as_bytes());
            out.push(0);
            out.extend_from_slice(bytes);
        }
    }
    let len = out.len() as i32;
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&request_id.to_le_bytes());
    out[12..16].copy_from_slice(&2013_i32.to_le_bytes());
    out
}

fn concat(docs: &[RawDocumentBuf]) -> Vec<u8> {
    docs.iter().flat_map(|d| d.as_bytes().to_vec()).collect()
}

/// bulkWrite (server 8.0) carries its operations and namespaces as two
/// document sequences, `ops` and `nsInfo`. Both orders of sections are
/// forwarded byte for byte, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_write_with_two_document_sequences_is_forwarded_exactly() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let script = |req: &Received| -> Vec<Step> {
        if req.name() == "bulkWrite" {
            let body = rawdoc! {
                "cursor": { "id": 0_i64, "firstBatch": [], "ns": "admin.$cmd.bulkWrite" },
                "nErrors": 0, "nInserted": 1, "nMatched": 1, "nModified": 1,
                "nUpserted": 0, "nDeleted": 1, "ok": 1.0,
            };
            return vec![Step::Send(scripted::reply(req, &body))];
        }
        scripted::default_reply(req)
    };
    let upstream = Scripted::start(recording(Arc::clone(&sent), script)).await;
    let tap = Mongotap::start(upstream.addr);
    let mut client = RawClient::connect(tap.listen).await;
    let app = "bulkwrite-raw";
    let mut hello = hello_with_app("hello", app);
    hello.append(bson::cstr!("$db"), "admin");
    client.command(&hello).await;

    let ops = concat(&[
        rawdoc! { "insert": 0, "document": { "_id": 1 } },
        rawdoc! { "update": 1, "filter": { "_id": 2 }, "updateMods": { "$set": { "x": 1 } }, "multi": false },
        rawdoc! { "delete": 0, "filter": { "_id": 3 }, "multi": false },
    ]);
    let ns_info = concat(&[
        rawdoc! { "ns": "shop.orders" },
        rawdoc! { "ns": "shop.items" },
    ]);
    let body = rawdoc! { "bulkWrite": 1, "errorsOnly": false, "ordered": true, "$db": "admin" };
    let in_order = op_msg::encode(
        next_id(),
        0,
        0,
        &body,
        &[
            op_msg::DocSequence {
                identifier: "ops",
                documents: &ops,
            },
            op_msg::DocSequence {
                identifier: "nsInfo",
                documents: &ns_info,
            },
        ],
    );
    let sequences_first = op_msg_sections(
        next_id(),
        0,
        &[("nsInfo", &ns_info), ("", body.as_bytes()), ("ops", &ops)],
    );

    for frame in [&in_order, &sequences_first] {
        let parsed = op_msg::parse(frame).expect("the test frame parses");
        let ids: Vec<(&str, usize)> = parsed
            .sequences
            .iter()
            .map(|s| (s.identifier, s.iter().count()))
            .collect();
        assert!(
            ids.contains(&("ops", 3)) && ids.contains(&("nsInfo", 2)),
            "{ids:?}"
        );

        let before = sent.lock().expect("lock").len();
        client.send(frame).await;
        let reply = client.recv(T).await.expect("bulkWrite reply");
        let got = upstream.wait_for(|r| r.raw == *frame, T).await;
        assert_eq!(got.name(), "bulkWrite");
        let upstream_sent = sent.lock().expect("lock");
        assert_eq!(upstream_sent.len(), before + 1);
        assert_eq!(
            reply, upstream_sent[before],
            "the reply must arrive as sent"
        );
    }
    let seen = wait_stats(&tap, app, |s| s.get("bulkWrite").is_some_and(|v| v.0 >= 2)).await;
    assert_eq!(seen.get("bulkWrite").map(|s| s.0), Some(2), "{seen:?}");
    let errors = tap.events("decode_error");
    assert!(errors.is_empty(), "unexpected decode errors: {errors:#?}");
}

/// OP_COMPRESSED both ways for each compressor, from a raw socket: the
/// negotiation in hello, compressed commands (one with a document sequence)
/// and compressed replies, all forwarded byte for byte and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_replies_for_each_compressor_are_forwarded_exactly() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let upstream = Scripted::start(recording(Arc::clone(&sent), scripted::compressing())).await;
    let tap = Mongotap::start(upstream.addr);
    for c in COMPRESSORS {
        let app = format!("compressed-raw-{}", c.name());
        let mut client = RawClient::connect(tap.listen).await;
        let mut hello = hello_with_app("hello", &app);
        let mut offered = bson::RawArrayBuf::new();
        offered.push(c.name());
        hello.append(bson::cstr!("compression"), offered);
        hello.append(bson::cstr!("$db"), "admin");
        let reply = client.command(&hello).await;
        assert_eq!(
            reply
                .get_array("compression")
                .ok()
                .and_then(|a| a.get_str(0).ok()),
            Some(c.name()),
            "the upstream accepts {}",
            c.name()
        );

        let docs = concat(&[rawdoc! { "_id": 1 }, rawdoc! { "_id": 2 }]);
        let insert = op_msg::encode(
            next_id(),
            0,
            0,
            &rawdoc! { "insert": "c", "$db": "shop" },
            &[op_msg::DocSequence {
                identifier: "documents",
                documents: &docs,
            }],
        );
        let ping = msg(next_id(), 0, 0, &rawdoc! { "ping": 1, "$db": "admin" });
        for plain in [insert, ping] {
            let frame = op_compressed::compress(&plain, c).expect("compress");
            let before = sent.lock().expect("lock").len();
            client.send(&frame).await;
            let (raw, inner, used) = client.recv_decompressed(T).await.expect("reply");
            assert_eq!(
                used,
                Some(c),
                "the reply is OP_COMPRESSED with {}",
                c.name()
            );
            assert_eq!(
                raw,
                sent.lock().expect("lock")[before],
                "the reply arrives as sent"
            );
            let body = op_msg::parse(&inner).expect("reply OP_MSG").body.to_owned();
            assert_eq!(body.get_f64("ok").ok(), Some(1.0));
            let got = upstream.wait_for(|r| r.raw == frame, T).await;
            assert_eq!(got.compressor, Some(c));
        }
        let seen = wait_stats(&tap, &app, |s| {
            s.contains_key("insert") && s.contains_key("ping")
        })
        .await;
        assert_eq!(seen.get("insert").map(|s| s.0), Some(1), "{app}: {seen:?}");
        assert_eq!(seen.get("ping").map(|s| s.0), Some(1), "{app}: {seen:?}");
    }
    let errors = tap.events("decode_error");
    assert!(errors.is_empty(), "unexpected decode errors: {errors:#?}");
}
