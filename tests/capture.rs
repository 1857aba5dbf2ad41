//! Capture (issue 8) with the real binary, real drivers and real FerretDB:
//! the pcapng export decoded by tshark, redaction of a SCRAM login in the
//! capture bytes and in the logs, drops under a tiny channel, rotation, and
//! the token on the admin capture routes.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use mongotap_proto::capture::Direction;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::captures::{capture_files, read_records, Rec};
use support::{unique_db, Ferret, Mongotap};

/// The first key of an OP_MSG frame's body.
fn command_name(frame: &[u8]) -> Option<String> {
    let msg = mongotap_proto::op_msg::parse(frame).ok()?;
    let (k, _) = msg.body.iter().next()?.ok()?;
    Some(k.as_str().to_string())
}

/// A config with capture on, writing to `dir/cap`.
fn capture_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("mongotap.toml");
    let text = format!(
        "[capture]\nenabled = true\npath = \"{}\"\ncontrol_token = \"tok-123\"\n{extra}",
        dir.join("cap").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn start_capturing(ferret: &Ferret, config: &Path) -> Mongotap {
    Mongotap::start_with(
        ferret.addr(),
        &["--config", config.to_str().expect("utf-8")],
    )
}

async fn client(uri: &str) -> Client {
    let mut opts = ClientOptions::parse(uri).await.expect("parse URI");
    opts.app_name = Some("capture-tests".into());
    opts.server_selection_timeout = Some(Duration::from_secs(10));
    Client::with_options(opts).expect("client")
}

/// Inserts, a find that needs getMores, an aggregate, an update, a delete.
async fn crud(uri: &str, db: &str, big: bool) {
    let client = client(uri).await;
    let coll: Collection<Document> = client.database(db).collection("items");
    let docs: Vec<Document> = (0..20)
        .map(|i| doc! { "_id": i, "n": i, "grp": i % 3 })
        .collect();
    coll.insert_many(docs).await.expect("insert_many");
    if big {
        // One frame larger than a TCP segment of the export (65,000 bytes).
        let blob = "x".repeat(200_000);
        coll.insert_one(doc! { "_id": "big", "blob": blob })
            .await
            .expect("insert big");
    }
    let found: Vec<Document> = coll
        .find(doc! { "n": { "$gte": 0 } })
        .batch_size(3)
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("find cursor");
    assert_eq!(found.len(), 20);
    let grouped: Vec<Document> = coll
        .aggregate(vec![
            doc! { "$group": { "_id": "$grp", "n": { "$sum": 1 } } },
        ])
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("aggregate cursor");
    // The big document has no grp: it makes a group of its own.
    assert_eq!(grouped.len(), 3 + usize::from(big));
    coll.update_many(doc! { "grp": 0 }, doc! { "$set": { "flag": true } })
        .await
        .expect("update");
    coll.delete_many(doc! { "grp": 1 }).await.expect("delete");
    client.shutdown().await;
}

/// POST with an optional bearer token; returns the status and body.
fn http_post(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    support::http_request(addr, "POST", path, token)
}

/// `mongotap capture export`, checked to succeed.
fn export(files: &Path, out: &Path, link: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_mongotap"))
        .args(["capture", "export"])
        .arg(files)
        .arg("--pcap")
        .arg(out)
        .args(["--link", link])
        .output()
        .expect("run mongotap capture export");
    assert!(
        out.status.success(),
        "capture export --link {link} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim_end());
}

/// tshark's fields for every MongoDB PDU in `pcap`, one line per packet.
fn tshark(pcap: &Path, extra: &[&str], fields: &[&str]) -> Vec<String> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args(extra);
    cmd.args(["-Y", "mongo", "-T", "fields", "-E", "occurrence=f"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("run tshark ({e}): install the Debian package `tshark` (scripts/test does)")
    });
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_decodes_as_mongodb_in_tshark() {
    let ferret = Ferret::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tap = start_capturing(&ferret, &capture_config(dir.path(), ""));
    crud(&tap.uri(), &unique_db("export"), true).await;
    // SIGTERM: mongotap drains, then flushes and closes the capture.
    assert!(tap.terminate(Duration::from_secs(20)).success());
    let records = read_records(&capture_files(dir.path()));
    assert!(records.len() > 20, "{} records", records.len());
    let largest = records.iter().map(|r| r.frame.len()).max().unwrap_or(0);
    assert!(largest > 200_000, "the big insert is one frame: {largest}");

    // Upper-PDU: tshark needs no option.
    let pcap = dir.path().join("upper.pcapng");
    export(&dir.path().join("cap"), &pcap, "upper-pdu");
    let lines = tshark(&pcap, &[], &["mongo.opcode", "mongo.message_length"]);
    assert_eq!(lines.len(), records.len(), "one MongoDB PDU per record");
    assert!(lines.iter().all(|l| l.starts_with("2013\t")), "{lines:?}");
    let lengths: Vec<usize> = lines
        .iter()
        .filter_map(|l| l.split('\t').nth(1)?.parse().ok())
        .collect();
    let mut want: Vec<usize> = records.iter().map(|r| r.frame.len()).collect();
    let mut got = lengths.clone();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(
        got, want,
        "tshark's message lengths are the frames' lengths"
    );

    // TCP: the big frame spans several segments and is reassembled.
    let pcap = dir.path().join("tcp.pcapng");
    export(&dir.path().join("cap"), &pcap, "tcp");
    let lines = tshark(
        &pcap,
        &["-d", "tcp.port==27017,mongo"],
        &["mongo.opcode", "mongo.message_length", "tcp.srcport"],
    );
    assert_eq!(lines.len(), records.len(), "one MongoDB PDU per record");
    assert!(lines.iter().all(|l| l.starts_with("2013\t")), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.split('\t').nth(1) == Some(&largest.to_string())),
        "the {largest}-byte frame was reassembled: {lines:?}"
    );
}

/// The password, and the three base64 alignments it can take inside a
/// longer base64 string (each without the characters that depend on its
/// neighbours).
fn secret_forms(password: &str) -> Vec<Vec<u8>> {
    let mut forms = vec![password.as_bytes().to_vec()];
    for shift in 0..3 {
        let mut input = vec![0u8; shift];
        input.extend_from_slice(password.as_bytes());
        let encoded = base64(&input);
        // Skip the characters that mix in the prefix, and the last 4, which
        // mix in whatever follows.
        let start = (shift * 4).div_ceil(3) + 1;
        let end = encoded.len().saturating_sub(4);
        if start < end {
            forms.push(encoded.as_bytes()[start..end].to_vec());
        }
    }
    forms
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

const USER: &str = "capuser";
const PASSWORD: &str = "Capt-Redact-Pw-5521-zq";

/// pymongo logging in with SCRAM-SHA-256 through mongotap, then working.
const PY_AUTH_APP: &str = r#"
import json, sys, pymongo
c = pymongo.MongoClient(sys.argv[1], directConnection=True, appname="capture-auth",
                        serverSelectionTimeoutMS=10000)
coll = c[sys.argv[2]]["items"]
coll.insert_many([{"i": i} for i in range(10)])
print(json.dumps({"count": coll.count_documents({})}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_login_never_reaches_the_capture_or_the_logs() {
    let ferret = Ferret::start_with_args(&[
        "--test-enable-new-auth",
        "--setup-database=admin",
        &format!("--setup-username={USER}"),
        &format!("--setup-password={PASSWORD}"),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    // Everything mongotap can log, logged.
    let config = capture_config(
        dir.path(),
        "[watch]\ncommand_log = true\nslow_ms = 0\n[log]\nlevel = \"debug\"\n",
    );
    let mut tap = start_capturing(&ferret, &config);
    let uri = format!(
        "mongodb://{USER}:{PASSWORD}@{}/?authSource=admin&authMechanism=SCRAM-SHA-256",
        tap.listen
    );
    let db = unique_db("redact");
    let out = tokio::process::Command::new(support::python_path())
        .args(["-c", PY_AUTH_APP, &uri, &db])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("pymongo hung")
        .expect("run python");
    assert!(
        out.status.success(),
        "pymongo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("pymongo output");
    assert_eq!(result["count"], 10);
    assert!(tap.terminate(Duration::from_secs(20)).success());

    let files = capture_files(dir.path());
    let mut bytes = Vec::new();
    for f in &files {
        bytes.extend(std::fs::read(f).expect("read capture"));
    }
    let logs: String = tap
        .logs()
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for form in secret_forms(PASSWORD) {
        let text = String::from_utf8_lossy(&form);
        assert!(!contains(&bytes, &form), "capture holds {text:?}");
        assert!(!logs.contains(&*text), "logs hold {text:?}");
    }
    // The SCRAM messages themselves (client-first carries "n,,n=USER").
    assert!(!contains(&bytes, format!("n={USER}").as_bytes()));

    let records = read_records(&files);
    let redacted: Vec<&Rec> = records.iter().filter(|r| r.redacted).collect();
    let names: Vec<String> = redacted
        .iter()
        .filter(|r| r.direction == Direction::ToServer)
        .filter_map(|r| command_name(&r.frame))
        .collect();
    eprintln!("redacted requests: {names:?}");
    assert!(
        names.iter().any(|n| n == "saslContinue"),
        "saslContinue is recorded as a redacted marker: {names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n == "saslStart" || n == "hello" || n == "isMaster"),
        "saslStart (or the hello carrying it speculatively) is redacted: {names:?}"
    );
    for r in &redacted {
        let msg = mongotap_proto::op_msg::parse(&r.frame).expect("marker is OP_MSG");
        assert_eq!(
            msg.body.get_bool("$redacted").ok(),
            Some(true),
            "marker body: {:?}",
            msg.body
        );
        assert!(msg.body.get("payload").ok().flatten().is_none());
        assert!(msg.sequences.is_empty());
    }
    // The replies to the redacted requests are markers too.
    assert!(redacted.iter().any(|r| r.direction == Direction::ToClient));
    // Ordinary commands are still captured in full.
    assert!(records
        .iter()
        .any(|r| !r.redacted && command_name(&r.frame).as_deref() == Some("insert")));
}

/// Inserts `n` documents one by one and reads them back, with `[watch]
/// track` set as given; returns the capture's records once mongotap has
/// stopped and closed its file.
async fn capture_with_tracking(track: bool, n: i32) -> Vec<Rec> {
    let ferret = Ferret::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = capture_config(dir.path(), &format!("[watch]\ntrack = {track}\n"));
    let mut tap = start_capturing(&ferret, &config);
    let client = client(&tap.uri()).await;
    let coll: Collection<Document> = client.database(&unique_db("pairs")).collection("items");
    for i in 0..n {
        coll.insert_one(doc! { "_id": i }).await.expect("insert");
    }
    let found: Vec<Document> = coll
        .find(doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("find cursor");
    assert_eq!(found.len(), n as usize);
    client.shutdown().await;
    assert!(tap.terminate(Duration::from_secs(20)).success());
    read_records(&capture_files(dir.path()))
}

/// Replies follow their request's capture decision whether or not commands
/// are tracked: with `track = false` each insert and find the driver saw
/// complete is in the file with exactly one reply, as with tracking on.
/// (Monitor hellos are left out of the count: the driver may close its
/// monitoring connection with one in flight.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_captured_with_tracking_off() {
    const N: i32 = 5;
    for track in [false, true] {
        let records = capture_with_tracking(track, N).await;
        let header = |r: &Rec| mongotap_proto::Header::parse(&r.frame).expect("header");
        // (conn, requestID) of every captured request, and the workload's.
        let mut requests = std::collections::HashSet::new();
        let mut workload = std::collections::HashMap::new();
        let mut inserts = 0;
        let mut replies = 0;
        for r in &records {
            let h = header(r);
            let key = (r.conn, h.request_id);
            match r.direction {
                Direction::ToServer => {
                    requests.insert(key);
                    let name = command_name(&r.frame);
                    inserts += usize::from(name.as_deref() == Some("insert"));
                    if matches!(name.as_deref(), Some("insert" | "find")) {
                        workload.insert(key, 0);
                    }
                }
                Direction::ToClient => {
                    replies += 1;
                    let answers = (r.conn, h.response_to);
                    assert!(
                        requests.contains(&answers),
                        "track = {track}: a reply to {answers:?}, which no captured request sent"
                    );
                    if let Some(n) = workload.get_mut(&answers) {
                        *n += 1;
                    }
                }
            }
        }
        assert_eq!(inserts, N as usize, "track = {track}: insert requests");
        assert_eq!(
            workload.len(),
            N as usize + 1,
            "track = {track}: and one find"
        );
        assert!(
            workload.values().all(|&n| n == 1),
            "track = {track}: replies per request: {workload:?}"
        );
        assert!(replies > N as usize, "track = {track}: {replies} replies");
    }
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_channel_drops_and_counts_but_never_blocks_clients() {
    let ferret = Ferret::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = capture_config(dir.path(), "channel_capacity = 1\n");
    let tap = start_capturing(&ferret, &config);
    let client = client(&tap.uri()).await;
    let db = unique_db("overload");
    // 8 connections in a closed loop of insert + find by _id (indexed, so
    // FerretDB's cost does not grow with the collection).
    const OPS: i32 = 60;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let coll: Collection<Document> = client.database(&db).collection("items");
            tokio::spawn(async move {
                let pad = "p".repeat(4_000);
                for i in 0..OPS {
                    let id = t * 1_000 + i;
                    coll.insert_one(doc! { "_id": id, "pad": &pad })
                        .await
                        .expect("insert under capture overload");
                    let found = coll
                        .find_one(doc! { "_id": id })
                        .await
                        .expect("find under capture overload");
                    assert!(found.is_some());
                }
            })
        })
        .collect();
    // Generous: FerretDB on a loaded machine is slow; a blocked client
    // would never finish at all.
    let all = tokio::time::timeout(
        Duration::from_secs(180),
        futures_util::future::join_all(tasks),
    )
    .await
    .expect("the workload finished: capture never blocks clients");
    for t in all {
        t.expect("workload task");
    }
    let coll: Collection<Document> = client.database(&db).collection("items");
    assert_eq!(
        coll.count_documents(doc! {}).await.expect("count"),
        8 * OPS as u64
    );

    let (code, metrics) = tap.admin_get("/metrics");
    assert_eq!(code, 200);
    let dropped = metric(&metrics, "mongotap_capture_dropped_total")
        .unwrap_or_else(|| panic!("no mongotap_capture_dropped_total in:\n{metrics}"));
    assert!(
        dropped > 0.0,
        "a 1-record channel under 8 busy connections drops"
    );
    let admin = tap.admin.expect("admin");
    let (code, body) = http_post(admin, "/capture/stop", Some("tok-123"));
    assert_eq!(code, 200, "{body}");
    let stop: Value = serde_json::from_str(&body).expect("stop JSON");
    eprintln!("/capture/stop after the overload: {stop}");
    assert!(
        stop["dropped"].as_u64().unwrap_or(0) >= dropped as u64,
        "{stop}"
    );
    assert!(stop["written"].as_u64().unwrap_or(0) > 0, "{stop}");
    // What was written is still whole records.
    let records = read_records(&capture_files(dir.path()));
    assert_eq!(records.len() as u64, stop["written"].as_u64().unwrap_or(0));
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_newest_files() {
    let ferret = Ferret::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = capture_config(dir.path(), "max_bytes = 4096\nmax_files = 3\n");
    let mut tap = start_capturing(&ferret, &config);
    for round in 0..3 {
        crud(&tap.uri(), &unique_db(&format!("rotate{round}")), false).await;
    }
    assert!(tap.terminate(Duration::from_secs(20)).success());
    let files = capture_files(dir.path());
    assert_eq!(files.len(), 3, "max_files = 3 keeps three: {files:?}");
    let last = files.last().expect("a file").to_string_lossy().to_string();
    let seq: u64 = last
        .rsplit('-')
        .next()
        .and_then(|s| s.strip_suffix(".mtcap"))
        .and_then(|s| s.parse().ok())
        .expect("PATH-NNNNNN.mtcap");
    assert!(seq > 3, "older files were rotated out: {files:?}");
    for f in &files {
        let len = std::fs::metadata(f).expect("stat").len();
        // Every record of this workload is smaller than max_bytes.
        assert!(len <= 4096, "{} is {len} bytes", f.display());
    }
    // Across the kept files, records are in capture order.
    let records = read_records(&files);
    assert!(records.windows(2).all(|w| w[0].mono_ns <= w[1].mono_ns));
    assert!(records.iter().any(|r| r.conn > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_routes_need_the_token() {
    let ferret = Ferret::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("off.toml");
    std::fs::write(
        &path,
        format!(
            "[capture]\npath = \"{}\"\ncontrol_token = \"tok-123\"\n",
            dir.path().join("cap").display()
        ),
    )
    .expect("write config");
    let tap = start_capturing(&ferret, &path);
    let admin = tap.admin.expect("admin");
    for token in [None, Some("wrong")] {
        let (code, _) = http_post(admin, "/capture/start", token);
        assert_eq!(code, 401, "start with {token:?}");
        let (code, _) = http_post(admin, "/capture/stop", token);
        assert_eq!(code, 401, "stop with {token:?}");
    }
    assert!(capture_files(dir.path()).is_empty(), "nothing started");
    let (code, body) = http_post(admin, "/capture/start", Some("tok-123"));
    assert_eq!(code, 200, "{body}");
    let started: Value = serde_json::from_str(&body).expect("start JSON");
    assert_eq!(started["capturing"], true);
    crud(&tap.uri(), &unique_db("control"), false).await;
    let (code, body) = http_post(admin, "/capture/stop", Some("tok-123"));
    assert_eq!(code, 200, "{body}");
    let stopped: Value = serde_json::from_str(&body).expect("stop JSON");
    assert_eq!(stopped["was_running"], true);
    assert!(!read_records(&capture_files(dir.path())).is_empty());

    // Without capture.control_token the routes are refused outright.
    let path = dir.path().join("no-token.toml");
    std::fs::write(&path, "[capture]\nenabled = false\n").expect("write config");
    let tap = start_capturing(&ferret, &path);
    let (code, _) = http_post(tap.admin.expect("admin"), "/capture/start", Some("tok-123"));
    assert_eq!(code, 403);
}
