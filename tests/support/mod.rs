//! Helpers shared by the integration tests: a real FerretDB, the real
//! `mongotap` binary and the pymongo runner.
//!
//! Every test starts its own processes on free ports and stops them on drop,
//! so tests run in parallel and nothing depends on a server started by hand.
//! `scripts/test` installs FerretDB and the Python venv and exports
//! `MONGOTAP_FERRETDB` and `MONGOTAP_PYTHON`; without them the helpers fall
//! back to the cache that script fills.

// Each test crate that declares `mod support;` uses a different subset.
#![allow(dead_code)]

pub mod captures;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a freshly spawned process may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A pymongo run longer than this is a hang, not a slow machine.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);

/// A TCP port that was free a moment ago. The listener is dropped before the
/// port is used, so callers that hand it to another process must tolerate
/// losing a race for it (see `Ferret::start`).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// The tool cache `scripts/lib.sh` installs into.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MONGOTAP_CACHE") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/mongotap")
}

/// `$MONGOTAP_<var>` if set, else `fallback` inside the cache, else a panic
/// that says how to get it installed.
fn tool_path(var: &str, fallback: &str, what: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return path.into();
    }
    let path = cache_dir().join(fallback);
    assert!(
        path.exists(),
        "{what} not found: set {var} or run scripts/test, which installs it into {}",
        path.display()
    );
    path
}

pub fn ferretdb_path() -> PathBuf {
    tool_path("MONGOTAP_FERRETDB", "bin/ferretdb", "FerretDB")
}

/// A file of this checkout. Read at run time: the build directory is shared
/// by clones at different paths (scripts/lib.sh), and cargo can reuse a
/// test binary compiled in another clone, whose compile-time
/// `CARGO_MANIFEST_DIR` would point into that clone.
#[allow(dead_code)] // not every test binary reads repository files
pub fn repo_file(relative: &str) -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    root.join(relative)
}

/// A driver-matrix client program built by scripts/clients.sh: `$var` if
/// set, else `fallback` inside the tool cache, else a panic saying how to
/// get it built.
pub fn client_path(var: &str, fallback: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return path.into();
    }
    let path = cache_dir().join(fallback);
    assert!(
        path.exists(),
        "{} not found: set {var} or run scripts/test, which builds it (scripts/clients.sh)",
        path.display()
    );
    path
}

pub fn python_path() -> PathBuf {
    tool_path("MONGOTAP_PYTHON", "venv/bin/python", "the pymongo venv")
}

/// A `mongodb://` URI for one server, never discovering other members.
pub fn uri_for(addr: SocketAddr) -> String {
    format!("mongodb://{addr}/?directConnection=true")
}

/// A database name no other test (or earlier run) uses: tests share nothing.
pub fn unique_db(test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{test}_{}_{seq}", std::process::id())
}

/// Polls until something accepts TCP on `addr`, or `child` exits.
fn wait_accepting(addr: SocketAddr, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        // Another process may hold the port we picked: only our child's
        // own listening socket counts.
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            && listens_on(child.id(), addr.port())
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("exited with {status} before accepting on {addr}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(format!("did not accept on {addr} within {START_TIMEOUT:?}"))
}

/// Whether process `pid` owns the socket listening on 127.0.0.1:`port`
/// (Linux: match the LISTEN socket's inode in /proc/net/tcp against the
/// process's file descriptors).
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true; // not Linux: trust the connect
    };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // f[1] local address, f[3] state (0A = LISTEN), f[9] inode
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9].to_string())
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let t = target.to_string_lossy();
            inodes.iter().any(|i| t == format!("socket:[{i}]"))
        })
    })
}

fn stop(child: &mut Child) {
    // Already exited is fine: tests may kill processes themselves.
    let _ = child.kill();
    let _ = child.wait();
}

/// A FerretDB (SQLite backend) in its own temporary directory, killed on drop.
pub struct Ferret {
    child: Child,
    port: u16,
    /// Extra command-line flags, kept for `restart`.
    args: Vec<String>,
    /// Holds the SQLite files and FerretDB's log; removed on drop.
    dir: tempfile::TempDir,
}

impl Ferret {
    pub fn start() -> Ferret {
        Ferret::start_with_args(&[])
    }

    /// Like `start`, with extra FerretDB flags (for example authentication:
    /// `--test-enable-new-auth --setup-username=U ...`).
    pub fn start_with_args(args: &[&str]) -> Ferret {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let dir = tempfile::Builder::new()
            .prefix("mongotap-ferretdb-")
            .tempdir()
            .expect("create FerretDB temp dir");
        let mut last_error = String::new();
        // free_port() can lose a race with another test; a few fresh ports
        // make that a non-event instead of a flaky failure.
        for _ in 0..3 {
            let port = free_port();
            let mut child = spawn_ferretdb(dir.path(), port, &args);
            match wait_accepting(SocketAddr::from(([127, 0, 0, 1], port)), &mut child) {
                Ok(()) => {
                    return Ferret {
                        child,
                        port,
                        args,
                        dir,
                    }
                }
                Err(e) => {
                    stop(&mut child);
                    last_error = e;
                }
            }
        }
        panic!(
            "FerretDB failed to start: {last_error}\n--- ferretdb.log ---\n{}",
            std::fs::read_to_string(dir.path().join("ferretdb.log")).unwrap_or_default()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn uri(&self) -> String {
        uri_for(self.addr())
    }

    /// For fault tests that SIGSTOP or SIGKILL the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server without restarting it: the port then refuses.
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Kills the server and starts a new one on the same port and data
    /// directory, so a proxy pointed at it reconnects and sees the same data.
    pub fn restart(&mut self) {
        stop(&mut self.child);
        self.child = spawn_ferretdb(self.dir.path(), self.port, &self.args);
        if let Err(e) = wait_accepting(self.addr(), &mut self.child) {
            panic!("FerretDB did not come back on port {}: {e}", self.port);
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ferretdb.log")).unwrap_or_default()
    }
}

impl Drop for Ferret {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn spawn_ferretdb(dir: &Path, port: u16, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("ferretdb.log"))
        .expect("open ferretdb.log");
    let path = ferretdb_path();
    Command::new(&path)
        .arg("--handler=sqlite")
        // The trailing slash matters: FerretDB wants a directory URI.
        .arg(format!("--sqlite-url=file:{}/", dir.display()))
        .arg(format!("--state-dir={}", dir.display()))
        .arg(format!("--listen-addr=127.0.0.1:{port}"))
        // Port 0: the default 8088 collides when several servers run at once.
        .arg("--debug-addr=127.0.0.1:0")
        .arg("--telemetry=disable")
        .arg("--log-level=warn")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log fd"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", path.display()))
}

/// The JSON lines mongotap wrote to stderr so far, filled by a reader thread.
#[derive(Default)]
struct LogLines {
    lines: Mutex<Vec<Value>>,
    /// Signalled on every new line and at EOF.
    changed: Condvar,
}

/// The real `mongotap` binary, killed on drop.
pub struct Mongotap {
    child: Child,
    /// The proxy's bound address, from the `listening` log line.
    pub listen: SocketAddr,
    /// The admin HTTP address, from the same line.
    pub admin: Option<SocketAddr>,
    logs: Arc<LogLines>,
    /// Holds the config file of `spawn_config`; removed on drop.
    config_dir: Option<tempfile::TempDir>,
}

impl Mongotap {
    /// `mongotap proxy` in front of `upstream`, on port 0, with JSON logs.
    pub fn start(upstream: SocketAddr) -> Mongotap {
        Mongotap::start_with(upstream, &[])
    }

    /// Like `start`, with extra flags appended (for example `--slow-ms 0`).
    pub fn start_with(upstream: SocketAddr, extra: &[&str]) -> Mongotap {
        let upstream = upstream.to_string();
        let mut args = vec![
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ];
        args.extend_from_slice(extra);
        Mongotap::spawn(&args)
    }

    /// Runs the binary with exactly `args` and waits for its `listening` line.
    /// `args` must select JSON logs, or the line cannot be parsed.
    pub fn spawn(args: &[&str]) -> Mongotap {
        Mongotap::spawn_inner(args, true)
    }

    /// `spawn`; without `require_listen`, a `listening` line with no
    /// `listen` address leaves `listen` unspecified (0.0.0.0:0).
    fn spawn_inner(args: &[&str], require_listen: bool) -> Mongotap {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mongotap"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mongotap");
        let logs = Arc::new(LogLines::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&logs);
        // A thread, not a task: it must keep draining stderr whatever runtime
        // the test uses, or mongotap would block on a full pipe.
        thread::spawn(move || read_logs(stderr, &sink));

        let listening = match wait_line(&logs, START_TIMEOUT, |v| v["message"] == "listening") {
            Some(line) => line,
            None => {
                stop(&mut child);
                panic!(
                    "mongotap never logged `listening` (args {args:?})\n{}",
                    dump(&logs)
                );
            }
        };
        let addr = |field: &str| -> Option<SocketAddr> { listening[field].as_str()?.parse().ok() };
        let listen = addr("listen")
            .or_else(|| (!require_listen).then(|| SocketAddr::from(([0, 0, 0, 0], 0))))
            .unwrap_or_else(|| panic!("`listening` line has no listen address: {listening}"));
        Mongotap {
            child,
            listen,
            admin: addr("admin"),
            logs,
            config_dir: None,
        }
    }

    /// mongotap in front of `upstream` with `admin.token = token` (the
    /// routes that need a token: the kill switch, /events), plus `extra`
    /// flags.
    pub fn with_token(upstream: SocketAddr, token: &str, extra: &[&str]) -> Mongotap {
        let upstream = upstream.to_string();
        let mut args = vec!["--listen", "127.0.0.1:0", "--upstream", &upstream];
        args.extend_from_slice(extra);
        Mongotap::spawn_config(&format!("[admin]\ntoken = \"{token}\"\n"), &args)
    }

    /// `mongotap proxy --config FILE` with `toml` as the file, the admin
    /// endpoint on port 0 and JSON logs, plus `extra` flags. For configs
    /// that name their own listeners (replica-set mode takes no
    /// `--listen`/`--upstream`): `listen` is the first `listening` line's
    /// address, and `wait_listening` waits for the others.
    pub fn spawn_config(toml: &str, extra: &[&str]) -> Mongotap {
        let dir = tempfile::Builder::new()
            .prefix("mongotap-config-")
            .tempdir()
            .expect("create config temp dir");
        let path = dir.path().join("mongotap.toml");
        std::fs::write(&path, toml).expect("write config");
        let path = path.to_string_lossy().into_owned();
        let mut args = vec![
            "proxy",
            "--config",
            &path,
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ];
        args.extend_from_slice(extra);
        let mut tap = Mongotap::spawn_inner(&args, false);
        tap.config_dir = Some(dir);
        tap
    }

    /// Waits until mongotap itself accepts on every address in `addrs` (its
    /// listeners may come up one after the other).
    pub fn wait_listening(&mut self, addrs: &[SocketAddr]) {
        // From the log, not by connecting: a test connection would make
        // mongotap dial the member behind that listener, and a replica-set
        // test counts who connected to the members. mongotap logs a
        // listener once it is bound (`listening`, `topology_member_added`),
        // and a bound listener queues connections until they are accepted.
        for addr in addrs {
            let want = addr.to_string();
            let found = wait_line(&self.logs, START_TIMEOUT, |v| {
                v["listen"] == want.as_str()
                    && (v["message"] == "listening" || v["event"] == "topology_member_added")
            });
            if found.is_none() {
                panic!(
                    "mongotap never logged a listener on {addr}\n{}",
                    dump(&self.logs)
                );
            }
        }
    }

    pub fn uri(&self) -> String {
        uri_for(self.listen)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far; lines that were not JSON appear as strings.
    pub fn logs(&self) -> Vec<Value> {
        self.logs.lines.lock().expect("log lock").clone()
    }

    /// Log lines whose `event` field is `name`.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|v| v["event"] == name)
            .collect()
    }

    /// The first log line with `event == name`, waiting up to `timeout`.
    /// Panics with the whole log if it never comes. Blocks the calling
    /// thread, so async tests should use `wait_for_event_async`.
    pub fn wait_for_event(&self, name: &str, timeout: Duration) -> Value {
        wait_line(&self.logs, timeout, |v| v["event"] == name)
            .unwrap_or_else(|| panic!("no `{name}` event within {timeout:?}\n{}", dump(&self.logs)))
    }

    /// `wait_for_event` that waits on a blocking-pool thread, so the test's
    /// own runtime keeps driving clients meanwhile.
    pub async fn wait_for_event_async(&self, name: &str, timeout: Duration) -> Value {
        let owned = name.to_owned();
        let found = self
            .wait_for(timeout, move |v| v["event"] == owned.as_str())
            .await;
        found
            .unwrap_or_else(|| panic!("no `{name}` event within {timeout:?}\n{}", dump(&self.logs)))
    }

    /// The first log line matching `pred`, waiting up to `timeout` on a
    /// blocking-pool thread so the test's runtime keeps driving clients.
    /// None if it never comes or mongotap exits first.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool + Send + 'static,
    ) -> Option<Value> {
        let logs = Arc::clone(&self.logs);
        tokio::task::spawn_blocking(move || wait_line(&logs, timeout, pred))
            .await
            .expect("wait task panicked")
    }

    /// GET `path` on the admin endpoint; returns the status code and body.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let admin = self.admin.expect("mongotap was started without --admin");
        http_get(admin, path)
    }

    /// Sends SIGTERM and waits for the exit status (mongotap drains first).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                stop(&mut self.child);
                panic!(
                    "mongotap did not exit within {timeout:?} of SIGTERM\n{}",
                    dump(&self.logs)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mongotap {
    fn drop(&mut self) {
        stop(&mut self.child);
        // Shows mongotap's own account next to a failing assertion.
        if thread::panicking() {
            eprintln!("--- mongotap log ---\n{}", dump(&self.logs));
        }
    }
}

/// Sends a signal by name (`STOP`, `CONT`, `KILL`, `TERM`) with kill(1), which
/// avoids a libc dependency for the few places tests need it.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

fn read_logs(stderr: std::process::ChildStderr, sink: &LogLines) {
    let echo = std::env::var_os("MONGOTAP_TEST_ECHO").is_some();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if echo {
            eprintln!("mongotap: {line}");
        }
        let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
        sink.lines.lock().expect("log lock").push(value);
        sink.changed.notify_all();
    }
    // EOF: wake waiters so they notice the process is gone.
    sink.lines.lock().expect("log lock").push(Value::Null);
    sink.changed.notify_all();
}

/// The first line matching `pred`, or None after `timeout` or at EOF.
fn wait_line(logs: &LogLines, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    let mut lines = logs.lines.lock().expect("log lock");
    loop {
        if let Some(found) = lines.iter().find(|v| pred(v)) {
            return Some(found.clone());
        }
        if lines.last() == Some(&Value::Null) {
            return None; // stderr closed: the process is gone
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        lines = logs.changed.wait_timeout(lines, left).expect("log lock").0;
    }
}

fn dump(logs: &LogLines) -> String {
    let lines = logs.lines.lock().expect("log lock");
    let mut out = String::new();
    for line in lines.iter().filter(|v| !v.is_null()) {
        match line {
            Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
        out.push('\n');
    }
    out
}

/// A minimal HTTP/1.0 GET: enough for /healthz, /stats and /metrics without
/// pulling an HTTP client into the dev-dependencies.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, None)
}

/// `method path` on the admin endpoint, with `Authorization: Bearer token`
/// when `token` is given, so a test sends exactly the request it means to;
/// returns the status code and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect admin {addr}: {e}"));
    // Long enough for /capture/stop, which flushes the capture file.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set_read_timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .expect("write request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response from {addr}{path}: {raw:?}"));
    (status, body.to_owned())
}

/// Runs `tests/clients/python/<script>` with the venv's python and returns
/// its stdout parsed as JSON. Panics with stderr if it fails or hangs.
pub async fn python(script: &str, args: &[&str]) -> Value {
    let path = repo_file("tests/clients/python").join(script);
    let run = tokio::process::Command::new(python_path())
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PYTHON_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("{script} {args:?} ran longer than {PYTHON_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("run {}: {e}", python_path().display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({}):\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{script} printed non-JSON ({e}):\n{stdout}\n{stderr}"))
}
