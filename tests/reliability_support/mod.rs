//! Helpers for the reliability, limits, load and security tests: process
//! figures from /proc, counters from /metrics, config files, and raw
//! wire-protocol frames. (A directory, not `tests/*.rs`, so cargo does not
//! build it as a test of its own.)

#![allow(dead_code)]

use crate::scripted;
use crate::support::Mongotap;
use bson::{rawdoc, RawDocumentBuf};
use mongotap_proto::op_msg;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A field of /proc/PID/status, as its first number (kB for Vm* fields).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resident memory in KiB.
pub fn rss_kb(pid: u32) -> u64 {
    proc_status(pid, "VmRSS")
}

/// Open file descriptors.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// OS threads.
pub fn threads(pid: u32) -> u64 {
    proc_status(pid, "Threads")
}

/// True while the process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The value of an unlabelled metric (`name` as exposed, e.g.
/// `mongotap_unknown_opcodes_total`) from /metrics.
pub fn metric(tap: &Mongotap, name: &str) -> f64 {
    let (status, body) = tap.admin_get("/metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    body.lines()
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
}

/// `metric` for async tests: the admin GET runs on the blocking pool.
pub async fn metric_async(tap: &Mongotap, name: &str) -> f64 {
    let admin = tap.admin.expect("admin endpoint");
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let (_, body) = crate::support::http_get(admin, "/metrics");
        body.lines()
            .find_map(|l| {
                let (key, value) = l.split_once(' ')?;
                (key == name).then(|| value.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
    })
    .await
    .expect("metrics task")
}

/// GET on the admin endpoint from the blocking pool (async tests).
pub async fn admin_get(tap: &Mongotap, path: &str) -> (u16, String) {
    let admin = tap.admin.expect("admin endpoint");
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || crate::support::http_get(admin, &path))
        .await
        .expect("admin task")
}

/// `/inflight` as JSON rows.
pub async fn inflight(tap: &Mongotap) -> Vec<serde_json::Value> {
    let (status, body) = admin_get(tap, "/inflight").await;
    assert_eq!(status, 200, "/inflight: {body}");
    serde_json::from_str::<serde_json::Value>(&body)
        .expect("/inflight is JSON")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Writes `text` as a config file in `dir` and returns its path.
pub fn config_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("mongotap.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Starts mongotap in front of `upstream` with `config` (TOML text) from
/// the blocking pool, so the test's runtime keeps serving a scripted
/// upstream meanwhile. The directory holds the file; keep it alive.
pub async fn start_with_config(
    upstream: SocketAddr,
    config: &str,
) -> (Mongotap, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(&dir, config).display().to_string();
    let tap =
        tokio::task::spawn_blocking(move || Mongotap::start_with(upstream, &["--config", &path]))
            .await
            .expect("start mongotap");
    (tap, dir)
}

/// A driver-like handshake: hello with client metadata.
pub fn hello(app: &str) -> RawDocumentBuf {
    rawdoc! {
        "hello": 1,
        "$db": "admin",
        "client": {
            "application": { "name": app },
            "driver": { "name": "mongotap-tests", "version": "0" },
            "os": { "type": "linux" },
        },
    }
}

/// An OP_MSG request frame with a fresh requestID; returns (id, bytes).
pub fn request(body: &RawDocumentBuf) -> (i32, Vec<u8>) {
    let id = scripted::next_id();
    (id, op_msg::encode(id, 0, 0, body, &[]))
}

/// The responseTo of a reply frame.
pub fn response_to(frame: &[u8]) -> i32 {
    i32::from_le_bytes(frame[8..12].try_into().expect("header"))
}

/// The body of an OP_MSG reply frame.
pub fn reply_body(frame: &[u8]) -> RawDocumentBuf {
    op_msg::parse(frame).expect("OP_MSG reply").body.to_owned()
}

/// `ok` of a reply body as a number.
pub fn ok_of(body: &RawDocumentBuf) -> f64 {
    match body.get("ok") {
        Ok(Some(bson::RawBsonRef::Double(f))) => f,
        Ok(Some(bson::RawBsonRef::Int32(i))) => i.into(),
        Ok(Some(bson::RawBsonRef::Int64(i))) => i as f64,
        other => panic!("reply has no numeric ok: {other:?} in {body:?}"),
    }
}

/// Polls `f` every 20 ms until it returns true, or panics with `what`.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
