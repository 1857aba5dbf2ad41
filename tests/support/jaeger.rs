//! A real Jaeger (v2, the OTel-collector-based all-in-one, in-memory
//! storage) on free ports: OTLP/HTTP in, the query API out. Built and
//! cached by scripts/lib.sh (`ensure_jaeger`), found through
//! `MONGOTAP_JAEGER` or the cache.

use crate::support::{free_port, http_get};
use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Jaeger {
    child: Child,
    /// OTLP/HTTP receiver: mongotap's `otel.endpoint` is `http://{otlp}`.
    pub otlp: SocketAddr,
    /// The query API (`/api/traces`).
    pub query: SocketAddr,
    _dir: tempfile::TempDir,
}

fn jaeger_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MONGOTAP_JAEGER") {
        return p.into();
    }
    let home = std::env::var_os("HOME").expect("HOME");
    let cache = std::env::var_os("MONGOTAP_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(home).join(".cache/mongotap"));
    let path = cache.join("bin/jaeger");
    assert!(
        path.exists(),
        "Jaeger not found at {}: run scripts/test (it builds Jaeger once)",
        path.display()
    );
    path
}

impl Jaeger {
    /// Starts Jaeger; a free port can be taken between choosing and
    /// binding it (tests run in parallel), so it tries fresh ports again.
    pub fn start() -> Jaeger {
        let mut last = String::new();
        for _ in 0..3 {
            match Jaeger::try_start() {
                Ok(j) => return j,
                Err(e) => last = e,
            }
        }
        panic!("jaeger did not start: {last}");
    }

    fn try_start() -> Result<Jaeger, String> {
        let dir = tempfile::Builder::new()
            .prefix("mongotap-jaeger-")
            .tempdir()
            .expect("temp dir");
        let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let (otlp, query, grpc) = (local(free_port()), local(free_port()), local(free_port()));
        // Only what the tests use, each on its own free port.
        let config = format!(
            r#"
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: "{query}"
    grpc:
      endpoint: "{grpc}"
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      http:
        endpoint: "{otlp}"
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
        );
        let path = dir.path().join("jaeger.yaml");
        std::fs::write(&path, config).expect("write jaeger config");
        let log = std::fs::File::create(dir.path().join("jaeger.log")).expect("log file");
        let child = Command::new(jaeger_path())
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn jaeger");
        let mut j = Jaeger {
            child,
            otlp,
            query,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for addr in [otlp, query] {
            while TcpStream::connect(addr).is_err() {
                if let Ok(Some(status)) = j.child.try_wait() {
                    return Err(format!("jaeger exited ({status}): {}", j.log()));
                }
                if Instant::now() > deadline {
                    return Err(format!("jaeger not up within 30 s: {}", j.log()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(j)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("jaeger.log")).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.otlp)
    }

    /// The raw JSON of every trace of `service` (for the privacy check).
    pub fn traces_raw(&self, service: &str) -> String {
        let (status, body) = http_get(
            self.query,
            &format!("/api/traces?service={service}&limit=10000&lookback=1h"),
        );
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Every span of `service`, with `traceID` on each.
    pub fn spans(&self, service: &str) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.traces_raw(service)).expect("json");
        let mut out = Vec::new();
        for trace in v["data"].as_array().cloned().unwrap_or_default() {
            out.extend(trace["spans"].as_array().cloned().unwrap_or_default());
        }
        out
    }

    /// Waits until `pred` holds for the spans of `service`.
    pub async fn wait_spans(
        &self,
        service: &str,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans(service);
            if pred(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                let names: Vec<&Value> = spans.iter().map(|s| &s["operationName"]).collect();
                panic!("no {what} in Jaeger within 30 s; spans: {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A span's tag `key`, as Jaeger stores it.
pub fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

/// The first span named `name`.
pub fn named<'a>(spans: &'a [Value], name: &str) -> Option<&'a Value> {
    spans.iter().find(|s| s["operationName"] == name)
}
