//! Who is on the other end of a connection, from the handshake's `client`
//! document, and a compact summary of each command for tracking.

use mongotap_proto::CommandView;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// From the first hello/isMaster: `client.application.name`,
/// `client.driver.{name,version}` and `client.os.type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMeta {
    pub app: Arc<str>,
    pub driver: Arc<str>,
    pub driver_version: Arc<str>,
    pub os: Arc<str>,
}

impl Default for ClientMeta {
    fn default() -> Self {
        let unknown: Arc<str> = Arc::from("");
        ClientMeta {
            app: unknown.clone(),
            driver: unknown.clone(),
            driver_version: unknown.clone(),
            os: unknown,
        }
    }
}

impl ClientMeta {
    /// Reads the handshake's `client` document, if the hello has one.
    pub fn from_hello(hello: &CommandView<'_>) -> Option<ClientMeta> {
        let client = hello.doc.get_document("client").ok()?;
        let text = |doc: &str, field: &str| -> Arc<str> {
            client
                .get_document(doc)
                .ok()
                .and_then(|d| d.get_str(field).ok())
                .unwrap_or("")
                .into()
        };
        Some(ClientMeta {
            app: text("application", "name"),
            driver: text("driver", "name"),
            driver_version: text("driver", "version"),
            os: text("os", "type"),
        })
    }

    /// "name version", for logs and /inflight.
    pub fn driver_label(&self) -> String {
        match (self.driver.is_empty(), self.driver_version.is_empty()) {
            (true, _) => String::new(),
            (false, true) => self.driver.to_string(),
            (false, false) => format!("{} {}", self.driver, self.driver_version),
        }
    }
}

/// The parts of a command that tracking and stats keep: names only, never
/// values from filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSummary {
    pub command: Arc<str>,
    pub db: Arc<str>,
    pub collection: Arc<str>,
    /// Pipeline stage names in order, e.g. ["$match", "$group"].
    pub stages: Vec<Arc<str>>,
    /// The stages joined with '>': the pipeline shape.
    pub shape: Arc<str>,
    pub max_time_ms: Option<i64>,
    pub allow_disk_use: Option<bool>,
}

impl CommandSummary {
    fn from_view(v: &CommandView<'_>, db_fallback: &str) -> CommandSummary {
        let stages: Vec<Arc<str>> = v.stages().map(Arc::from).collect();
        let shape = stages
            .iter()
            .map(|s| &**s)
            .collect::<Vec<_>>()
            .join(">")
            .into();
        CommandSummary {
            command: v.name.into(),
            db: v.db.unwrap_or(db_fallback).into(),
            collection: v.collection().unwrap_or("").into(),
            stages,
            shape,
            max_time_ms: v.max_time_ms,
            allow_disk_use: v
                .allow_disk_use
                .or_else(|| v.explain_view().and_then(|e| e.allow_disk_use)),
        }
    }
}

/// A per-connection cache, so a connection that repeats the same command
/// shape does not allocate a new summary for each request.
#[derive(Default)]
pub struct SummaryCache {
    entries: HashMap<u64, Arc<CommandSummary>>,
}

const SUMMARY_CACHE_MAX: usize = 64;

impl SummaryCache {
    pub fn get(&mut self, v: &CommandView<'_>, db_fallback: &str) -> Arc<CommandSummary> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        v.name.hash(&mut h);
        v.db.unwrap_or(db_fallback).hash(&mut h);
        v.collection().hash(&mut h);
        for s in v.stages() {
            s.hash(&mut h);
        }
        v.max_time_ms.hash(&mut h);
        v.allow_disk_use.hash(&mut h);
        let key = h.finish();
        if let Some(s) = self.entries.get(&key) {
            // Guard against a hash collision mislabelling a command.
            if &*s.command == v.name && s.collection.as_ref() == v.collection().unwrap_or("") {
                return s.clone();
            }
        }
        let summary = Arc::new(CommandSummary::from_view(v, db_fallback));
        if self.entries.len() >= SUMMARY_CACHE_MAX {
            self.entries.clear();
        }
        self.entries.insert(key, summary.clone());
        summary
    }
}
