//! Traffic capture: every frame of the sampled connections, both ways,
//! redacted before anything is written, handed to a writer thread through
//! a bounded channel. When the channel is full the record is dropped and
//! counted; client traffic never waits for the disk.

use crate::config::CaptureConfig;
use arc_swap::ArcSwapOption;
use bson::{rawdoc, RawDocumentBuf};
use mongotap_proto::capture::{self as format, Direction, Record};
use mongotap_proto::op_msg;
use mongotap_proto::op_query::{self, OpQuery};
use mongotap_proto::op_reply::{self, OpReply};
use mongotap_proto::{CommandView, Header, OpCode};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn};
use wildmatch::WildMatch;

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("capture is already running (writing {0})")]
    Running(String),
    #[error("cannot create capture file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
}

/// One record on its way to the writer.
pub struct Item {
    pub mono_ns: u64,
    pub unix_ns: i64,
    pub conn: u64,
    pub direction: Direction,
    pub redacted: bool,
    pub client: Arc<str>,
    pub frame: Vec<u8>,
}

pub struct Capture {
    cfg: CaptureConfig,
    namespaces: Vec<WildMatch>,
    /// The live channel; `None` when capture is off. Loaded per frame.
    sender: ArcSwapOption<mpsc::Sender<Item>>,
    /// The writer thread and the first file it writes, while running.
    running: Mutex<Option<(std::thread::JoinHandle<()>, PathBuf)>>,
    epoch: Instant,
    /// Bumped at each start: a connection forgets what it linked during an
    /// earlier capture (see `observer::capture`).
    generation: AtomicU64,
    pub dropped: AtomicU64,
    pub written: Arc<AtomicU64>,
}

impl Capture {
    pub fn new(cfg: &CaptureConfig) -> Capture {
        Capture {
            namespaces: cfg.namespaces.iter().map(|g| WildMatch::new(g)).collect(),
            cfg: cfg.clone(),
            sender: ArcSwapOption::empty(),
            running: Mutex::new(None),
            epoch: Instant::now(),
            generation: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            written: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn is_on(&self) -> bool {
        self.sender.load().is_some()
    }

    /// Which capture run is (or was last) on. A frame that races a start
    /// may see the previous number; at worst one reply is judged as part of
    /// the earlier run.
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// Starts the writer; returns the first file's path.
    pub fn start(&self) -> Result<PathBuf, CaptureError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, path)) = running.as_ref() {
            return Err(CaptureError::Running(path.display().to_string()));
        }
        let mut writer = Writer::new(&self.cfg, self.written.clone());
        let path = writer.open_next()?;
        let (tx, rx) = mpsc::channel(self.cfg.channel_capacity);
        self.generation.fetch_add(1, Relaxed);
        let thread = std::thread::Builder::new()
            .name("mongotap-capture".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| CaptureError::Create {
                path: path.display().to_string(),
                source,
            })?;
        self.sender.store(Some(Arc::new(tx)));
        info!(event = "capture_started", path = %path.display(), "capture started: {}", path.display());
        *running = Some((thread, path.clone()));
        Ok(path)
    }

    /// Stops capturing; the writer drains what is queued and closes its file.
    pub fn stop(&self) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        self.sender.store(None);
        match running.take() {
            Some((thread, _)) => {
                // Dropping the last sender ends the writer's loop.
                let _ = thread.join();
                info!(
                    event = "capture_stopped",
                    written = self.written.load(Relaxed),
                    dropped = self.dropped.load(Relaxed),
                    "capture stopped"
                );
                true
            }
            None => false,
        }
    }

    /// Whether a new connection is captured (sampling is per connection).
    pub fn sample(&self, conn: u64) -> bool {
        let rate = self.cfg.sample_rate;
        if rate >= 1.0 {
            return true;
        }
        // A multiplicative hash spreads consecutive ids evenly.
        let h = conn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
        (h as f64 / (1u64 << 53) as f64) < rate
    }

    /// Whether the command passes the namespace and command filters.
    pub fn wants(&self, view: &CommandView<'_>) -> bool {
        if !self.cfg.commands.is_empty() && !self.cfg.commands.iter().any(|c| c == view.name) {
            return false;
        }
        if self.namespaces.is_empty() {
            return true;
        }
        let ns = format!(
            "{}.{}",
            view.db.unwrap_or(""),
            view.collection().unwrap_or("")
        );
        self.namespaces.iter().any(|g| g.matches(&ns))
    }

    pub fn filtered(&self) -> bool {
        !self.cfg.commands.is_empty() || !self.namespaces.is_empty()
    }

    /// Queues a frame (or its redaction marker). Never waits.
    pub fn record(
        &self,
        conn: u64,
        client: &Arc<str>,
        direction: Direction,
        frame: &[u8],
        redact: bool,
    ) {
        let guard = self.sender.load();
        let Some(tx) = guard.as_ref() else {
            return;
        };
        let (frame, redacted) = if redact {
            (marker(frame, direction), true)
        } else {
            (frame.to_vec(), false)
        };
        let item = Item {
            mono_ns: self.epoch.elapsed().as_nanos() as u64,
            unix_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
            conn,
            direction,
            redacted,
            client: client.clone(),
            frame,
        };
        if tx.try_send(item).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// A redaction marker with the frame's ids and opcode: the body keeps the
/// command name and says it was redacted; nothing else survives.
pub fn marker(frame: &[u8], direction: Direction) -> Vec<u8> {
    let Some(header) = Header::parse(frame) else {
        return Vec::new();
    };
    let name = command_name(frame).unwrap_or_default();
    let body: RawDocumentBuf = match direction {
        Direction::ToServer => match bson::raw::CString::try_from(name.as_str()) {
            Ok(key) if !name.is_empty() => {
                let mut d = RawDocumentBuf::new();
                d.append(key, 1);
                d.append(bson::raw::cstr!("$redacted"), true);
                d
            }
            _ => rawdoc! { "$redacted": true },
        },
        _ => rawdoc! { "$redacted": true },
    };
    let (id, to) = (header.request_id, header.response_to);
    match original_opcode(frame, &header) {
        OpCode::Query => op_query::encode(
            id,
            to,
            &OpQuery {
                flags: 0,
                full_collection_name: "admin.$cmd",
                number_to_skip: 0,
                number_to_return: -1,
                query: &body,
                return_fields_selector: None,
            },
        ),
        OpCode::Reply => op_reply::encode(
            id,
            to,
            &OpReply {
                response_flags: 0,
                cursor_id: 0,
                starting_from: 0,
                number_returned: 1,
                documents: body.as_bytes(),
            },
        ),
        _ => op_msg::encode(id, to, 0, &body, &[]),
    }
}

fn original_opcode(frame: &[u8], header: &Header) -> OpCode {
    if header.op_code == OpCode::Compressed {
        if let Some(b) = frame.get(16..20) {
            return OpCode::from_i32(i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
    }
    header.op_code
}

/// The command name of a request frame (decompressing if needed).
fn command_name(frame: &[u8]) -> Option<String> {
    mongotap_proto::message::with_message(frame, mongotap_proto::MAX_MESSAGE_LEN, |_, _, m| match m
    {
        mongotap_proto::message::Message::Msg(msg) => CommandView::parse(msg.body)
            .ok()
            .map(|v| v.name.to_string()),
        mongotap_proto::message::Message::Query(q) => CommandView::parse(q.command())
            .ok()
            .map(|v| v.name.to_string()),
        _ => None,
    })
    .ok()
    .flatten()
}

/// The writer thread's state: the current file and rotation.
struct Writer {
    base: PathBuf,
    max_bytes: u64,
    max_files: usize,
    seq: u64,
    files: Vec<PathBuf>,
    out: Option<std::io::BufWriter<std::fs::File>>,
    size: u64,
    written: Arc<AtomicU64>,
}

impl Writer {
    fn new(cfg: &CaptureConfig, written: Arc<AtomicU64>) -> Writer {
        Writer {
            base: PathBuf::from(&cfg.path),
            max_bytes: cfg.max_bytes,
            max_files: cfg.max_files,
            seq: 0,
            files: Vec::new(),
            out: None,
            size: 0,
            written,
        }
    }

    fn next_path(&mut self) -> PathBuf {
        // Continue after files an earlier run left, so nothing is overwritten.
        loop {
            self.seq += 1;
            let p = PathBuf::from(format!("{}-{:06}.mtcap", self.base.display(), self.seq));
            if !p.exists() {
                return p;
            }
        }
    }

    fn open_next(&mut self) -> Result<PathBuf, CaptureError> {
        if let Some(mut out) = self.out.take() {
            let _ = out.flush();
        }
        let path = self.next_path();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let create = |source| CaptureError::Create {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::File::create(&path).map_err(create)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        file.write_all(&format::encode_header(now))
            .map_err(create)?;
        self.size = format::HEADER_LEN as u64;
        self.out = Some(std::io::BufWriter::with_capacity(256 * 1024, file));
        self.files.push(path.clone());
        while self.files.len() > self.max_files {
            let old = self.files.remove(0);
            let _ = std::fs::remove_file(&old);
        }
        Ok(path)
    }

    /// Drains the channel in batches and sleeps 5 ms when it is empty.
    /// Waiting on the channel instead would make every queued record wake
    /// this thread (a futex call on the forwarding path) and flush per
    /// record, which measured at 1.6-2x mongotap's CPU per request; polling
    /// brings capture to within noise (bench/README.md).
    fn run(mut self, mut rx: mpsc::Receiver<Item>) {
        use tokio::sync::mpsc::error::TryRecvError;
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut dirty = false;
        loop {
            let mut got = 0;
            let closed = loop {
                let item = match rx.try_recv() {
                    Ok(item) => item,
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                };
                got += 1;
                buf.clear();
                format::encode_record(
                    &mut buf,
                    &Record {
                        mono_ns: item.mono_ns,
                        unix_ns: item.unix_ns,
                        conn: item.conn,
                        direction: item.direction,
                        redacted: item.redacted,
                        client: &item.client,
                        frame: &item.frame,
                    },
                );
                if self.size + buf.len() as u64 > self.max_bytes
                    && self.size > format::HEADER_LEN as u64
                {
                    if let Err(e) = self.open_next() {
                        warn!(event = "capture_failed", error = %e, "capture stopped: {e}");
                        return;
                    }
                }
                let Some(out) = self.out.as_mut() else { return };
                if let Err(e) = out.write_all(&buf) {
                    warn!(event = "capture_failed", error = %e, "capture stopped: cannot write: {e}");
                    return;
                }
                self.size += buf.len() as u64;
                self.written.fetch_add(1, Relaxed);
                dirty = true;
            };
            if closed {
                break;
            }
            if got == 0 {
                if dirty {
                    if let Some(out) = self.out.as_mut() {
                        let _ = out.flush();
                    }
                    dirty = false;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        if let Some(mut out) = self.out.take() {
            let _ = out.flush();
        }
    }
}
