//! A first run without surprises: what the real `mongotap` binary prints
//! and says on the command line. check-config prints a config file, a
//! closed stdout is no panic, errors name the key or flag to change and say
//! the OS's reason once, and listen addresses may be host names.

// A test's helpers unwrap, expect and print on purpose: a panic there is a
// failed test. clippy.toml's allow-*-in-tests covers only #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::collections::HashMap;
use std::fs::File;
use std::net::{TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, rawdoc, Document};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use mongotap_proto::capture::{self, Direction, Record};
use serde_json::Value;

use support::{http_get, repo_file, unique_db, Ferret, Mongotap};

const BIN: &str = env!("CARGO_BIN_EXE_mongotap");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run mongotap {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write file");
    path
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The write end of a real pipe whose read end is already closed: what
/// `mongotap ... | head -1` leaves once head has exited. A FIFO gives one
/// with std alone: opened read-write (Linux allows it, so the write-only
/// open below does not block), opened again write-only, then the
/// read-write descriptor is closed, leaving no reader.
fn closed_pipe(dir: &Path) -> File {
    let fifo = dir.join(format!("stdout-{}.fifo", support::free_port()));
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success(), "mkfifo {}", fifo.display());
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open fifo read-write");
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("open fifo for writing");
    drop(reader);
    writer
}

/// Runs mongotap with stdout a closed pipe; returns the exit code and stderr.
fn run_into_closed_pipe(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(closed_pipe(dir))
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("run mongotap {args:?}: {e}"));
    (out.status.code(), text(&out.stderr))
}

#[test]
fn check_config_prints_a_config_file_that_checks_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = write(
        dir.path(),
        "first.toml",
        "[proxy]\nlisten = \"localhost:27100\"\n\
         [admin]\nlisten = \"0.0.0.0:9477\"\ntoken = \"tok-secret\"\n\
         [watch]\nslow_ms = 250\n\
         [explain]\nusername = \"reader\"\npassword = \"pw-secret\"\n\
         [[rewrite.rule]]\ncommands = [\"find\"]\nmax_time_ms_cap = 1000\n",
    );
    let out = run(&["check-config", s(&first)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let (head, body) = printed.split_once('\n').expect("two lines or more");
    assert_eq!(head, format!("# {}: ok", first.display()));
    // The values set, the defaults for the rest, secrets replaced.
    for line in [
        "[proxy]\nlisten = \"localhost:27100\"\nupstream = \"127.0.0.1:27017\"\n",
        "[admin]\nlisten = \"0.0.0.0:9477\"\ntoken = \"<redacted>\"\n",
        "[watch]\nslow_ms = 250\nstall_ms = 5000\n",
        "username = \"reader\"\npassword = \"<redacted>\"\n",
        "[[rewrite.rule]]\ncommands = [\"find\"]\n",
        "max_time_ms_cap = 1000\n",
    ] {
        assert!(body.contains(line), "no {line:?} in:\n{printed}");
    }
    for secret in ["tok-secret", "pw-secret"] {
        assert!(!printed.contains(secret), "{printed}");
    }

    // Fed back, it is a valid config with the same settings.
    let second = write(dir.path(), "second.toml", &printed);
    let again = run(&["check-config", s(&second)]);
    assert!(again.status.success(), "{}\n{printed}", text(&again.stderr));
    let reprinted = text(&again.stdout);
    assert_eq!(
        reprinted.split_once('\n').map(|(_, b)| b),
        Some(body),
        "printing the printed config changed it"
    );
}

/// A minimal capture: one connection's find on `ns` and its empty reply.
fn one_find_capture(dir: &Path, db: &str) -> PathBuf {
    let request = mongotap_proto::op_msg::encode(
        7,
        0,
        0,
        &rawdoc! { "find": "items", "filter": {}, "$db": db },
        &[],
    );
    let reply = mongotap_proto::op_msg::encode(
        8,
        7,
        0,
        &rawdoc! {
            "cursor": { "id": 0i64, "ns": format!("{db}.items"), "firstBatch": [] },
            "ok": 1.0,
        },
        &[],
    );
    let mut bytes = capture::encode_header(1_700_000_000_000_000_000).to_vec();
    for (mono_ns, direction, frame) in [
        (1_000, Direction::ToServer, &request),
        (2_000_000, Direction::ToClient, &reply),
    ] {
        capture::encode_record(
            &mut bytes,
            &Record {
                mono_ns,
                unix_ns: 1_700_000_000_000_000_000 + mono_ns as i64,
                conn: 1,
                direction,
                redacted: false,
                client: "127.0.0.1:50000",
                frame,
            },
        );
    }
    let path = dir.join("cap-000001.mtcap");
    std::fs::write(&path, bytes).expect("write capture");
    path
}

/// `println!` panics on EPIPE; every subcommand that prints must instead
/// end quietly, successfully, with its real work (files written) done.
#[test]
fn a_closed_stdout_ends_quietly_with_success() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = repo_file("config.toml");
    for args in [
        vec!["check-config", s(&shipped)],
        vec!["--help"],
        vec!["--version"],
        vec!["proxy", "--help"],
    ] {
        let (code, stderr) = run_into_closed_pipe(dir.path(), &args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }

    // capture export: the pcap is the one an export to an open stdout writes.
    let cap = one_find_capture(dir.path(), "cli_export");
    let open = dir.path().join("open.pcapng");
    let out = run(&["capture", "export", s(&cap), "--pcap", s(&open)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("2 records (1 connections, 1 capture files)"),
        "{}",
        text(&out.stdout)
    );
    let closed = dir.path().join("closed.pcapng");
    let (code, stderr) = run_into_closed_pipe(
        dir.path(),
        &["capture", "export", s(&cap), "--pcap", s(&closed)],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let written = std::fs::read(&closed).expect("read pcap");
    assert!(!written.is_empty());
    assert_eq!(written, std::fs::read(&open).expect("read pcap"));

    // replay against a real server: the report counts the capture's one find.
    let ferret = Ferret::start();
    let report = dir.path().join("report.json");
    let target = ferret.addr().to_string();
    let (code, stderr) = run_into_closed_pipe(
        dir.path(),
        &[
            "replay",
            s(&cap),
            "--target",
            &target,
            "--max-speed",
            "--report",
            s(&report),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&report).expect("read report")).expect("JSON");
    assert_eq!(report["requests"], 1, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let rows = report["commands"].as_array().expect("commands");
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!(rows[0]["command"], "find", "{report}");
    assert_eq!(rows[0]["count"], 1, "{report}");

    // diagnose prints its report the same way.
    let (code, stderr) = run_into_closed_pipe(
        dir.path(),
        &[
            "diagnose",
            "--upstream",
            &target,
            "--ns",
            "cli.orders",
            "--pipeline",
            r#"[{"$group": {"_id": "$g"}}]"#,
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A full disk behind a redirect is still an error, said once.
#[test]
fn a_failing_stdout_is_an_error() {
    let shipped = repo_file("config.toml");
    let out = Command::new(BIN)
        .args(["check-config", s(&shipped)])
        .stdout(File::create("/dev/full").expect("open /dev/full"))
        .output()
        .expect("run mongotap");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "mongotap: error: cannot write to stdout: No space left on device (os error 28)\n"
    );
}

#[test]
fn a_missing_config_file_says_the_os_error_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    let expected = format!(
        "mongotap: error: cannot read config file {}: No such file or directory (os error 2)\n",
        missing.display()
    );
    let out = run(&["check-config", s(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), expected);
    let out = run(&["proxy", "--config", s(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), expected);
}

#[test]
fn type_errors_name_the_key_and_the_type_in_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (body, says) in [
        (
            "[watch]\nslow_ms = \"fast\"\n",
            "watch.slow_ms (line 2, column 11): invalid type: string \"fast\", expected a non-negative integer",
        ),
        (
            "[proxy]\nmax_connections = -5\n",
            "proxy.max_connections (line 2, column 19): invalid value: integer `-5`, expected a non-negative integer",
        ),
        (
            "[watch]\nlog_values = \"yes\"\n",
            "watch.log_values (line 2, column 14): invalid type: string \"yes\", expected true or false",
        ),
        (
            "[capture]\nsample_rate = \"half\"\n",
            "capture.sample_rate (line 2, column 15): invalid type: string \"half\", expected a number",
        ),
    ] {
        let file = write(dir.path(), "bad.toml", body);
        let out = run(&["check-config", s(&file)]);
        assert_eq!(out.status.code(), Some(1), "{body}");
        assert_eq!(
            text(&out.stderr),
            format!("mongotap: error: config file {}: {says}\n", file.display())
        );
    }
}

/// Something else holds the port: the error names the setting and the flag.
#[test]
fn address_in_use_names_the_setting_to_change() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let addr = format!("127.0.0.1:{port}");
    for (args, setting) in [
        (
            ["--listen", addr.as_str(), "--admin", ""],
            "proxy.listen, or --listen",
        ),
        (
            ["--listen", "127.0.0.1:0", "--admin", addr.as_str()],
            "admin.listen, or --admin",
        ),
    ] {
        let mut all = vec!["proxy", "--upstream", "127.0.0.1:9"];
        all.extend_from_slice(&args);
        let out = run(&all);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let expected =
            format!("mongotap: error: cannot listen on {addr} ({setting}): address already in use");
        assert_eq!(stderr.lines().last(), Some(expected.as_str()), "{stderr}");
    }
}

/// `listen` and `admin` accept `localhost:PORT`, and a real driver gets
/// through it: mongotap's counts for the driver's app equal the commands
/// the driver's own monitor saw start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_admin_accept_host_names() {
    let ferret = Ferret::start();
    let upstream = ferret.addr().to_string();
    let tap = Mongotap::spawn(&[
        "proxy",
        "--listen",
        "localhost:0",
        "--upstream",
        &upstream,
        "--admin",
        "localhost:0",
        "--log-format",
        "json",
    ]);
    assert!(tap.listen.ip().is_loopback(), "{}", tap.listen);
    let uri = format!(
        "mongodb://localhost:{}/?directConnection=true",
        tap.listen.port()
    );

    let started: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut opts = ClientOptions::parse(&uri).await.expect("parse URI");
    opts.app_name = Some("cli-localhost".into());
    opts.server_selection_timeout = Some(Duration::from_secs(10));
    let seen = Arc::clone(&started);
    opts.command_event_handler = Some(EventHandler::callback(move |ev| {
        if let CommandEvent::Started(e) = ev {
            *seen.lock().unwrap().entry(e.command_name).or_default() += 1;
        }
    }));
    let client = Client::with_options(opts).expect("client");
    let db = unique_db("cli_localhost");
    let coll: Collection<Document> = client.database(&db).collection("items");
    coll.insert_many((0..5).map(|i| doc! { "_id": i }))
        .await
        .expect("insert through localhost");
    let found: Vec<Document> = coll
        .find(doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("cursor");
    assert_eq!(found.len(), 5);
    client.shutdown().await;
    let started = started.lock().unwrap().clone();
    assert_eq!(started.get("insert"), Some(&1), "{started:?}");
    assert_eq!(started.get("find"), Some(&1), "{started:?}");

    // The admin endpoint, reached through the name too.
    let admin_port = tap.admin.expect("admin address").port();
    let admin = format!("localhost:{admin_port}")
        .to_socket_addrs()
        .expect("resolve localhost")
        .next()
        .expect("an address");
    let count = |stats: &Value, command: &str| {
        stats["commands"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| {
                r["command"] == command && r["db"] == db.as_str() && r["app"] == "cli-localhost"
            })
            .and_then(|r| r["count"].as_u64())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let (status, body) = http_get(admin, "/stats");
        assert_eq!(status, 200, "{body}");
        let stats: Value = serde_json::from_str(&body).expect("JSON");
        if count(&stats, "find").is_some() || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        count(&stats, "insert"),
        started.get("insert").copied(),
        "{stats}"
    );
    assert_eq!(
        count(&stats, "find"),
        started.get("find").copied(),
        "{stats}"
    );
}

/// `proxy --help` states each flag's default; they must be the defaults
/// the proxy really uses, as check-config prints them for an empty file.
#[test]
fn help_states_the_real_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = write(dir.path(), "empty.toml", "");
    let out = run(&["check-config", s(&empty)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let help = text(&run(&["proxy", "--help"]).stdout);
    for (table, key, flag) in [
        ("proxy", "listen", "--listen"),
        ("proxy", "upstream", "--upstream"),
        ("admin", "listen", "--admin"),
        ("watch", "slow_ms", "--slow-ms"),
        ("watch", "stall_ms", "--stall-ms"),
        ("log", "format", "--log-format"),
        ("proxy", "runtime", "--runtime"),
    ] {
        let section = printed
            .split(&format!("[{table}]\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no [{table}] in {printed}"));
        let value = section
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {table}.{key} in {printed}"))
            .trim_matches('"');
        let stated = help
            .split(&format!("{flag} <"))
            .nth(1)
            .and_then(|h| h.split("[default: ").nth(1))
            .unwrap_or_else(|| panic!("{flag} states no default:\n{help}"));
        assert!(
            stated.starts_with(value),
            "{flag} states [default: {stated:.40}…], the proxy uses {value}"
        );
    }
}

/// With nothing at the upstream address, each client's connection is
/// closed with a line that says which setting points there.
#[test]
fn an_unreachable_upstream_names_the_setting() {
    // Free a moment ago and never listened on: connecting is refused.
    let upstream = format!("127.0.0.1:{}", support::free_port());
    let tap = Mongotap::spawn(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
        "--admin",
        "",
        "--log-format",
        "json",
    ]);
    let _client = std::net::TcpStream::connect(tap.listen).expect("connect to mongotap");
    let event = tap.wait_for_event("upstream_unreachable", Duration::from_secs(10));
    assert_eq!(
        event["error"],
        format!(
            "cannot connect to upstream {upstream} (proxy.upstream, or --upstream): Connection refused (os error 111)"
        ),
        "{event}"
    );
}
