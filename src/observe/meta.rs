//! Who is on the other end of a connection, from the handshake's `client`
//! document, and a compact summary of each command for tracking.

use mongotap_proto::rewrite::FieldChange;
use mongotap_proto::CommandView;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

/// From the first hello/isMaster: `client.application.name`,
/// `client.driver.{name,version}` and `client.os.type`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// A command's pipeline shape: its stage names joined with '>'
/// (`$match>$group`). Written where it is needed: once into a
/// `CommandSummary`, or straight into a log event.
pub struct Shape<'v, 'a>(pub &'v CommandView<'a>);

impl std::fmt::Display for Shape<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, stage) in self.0.stages().enumerate() {
            if i > 0 {
                f.write_str(">")?;
            }
            f.write_str(stage)?;
        }
        Ok(())
    }
}

impl CommandSummary {
    fn new(v: &CommandView<'_>, key: &SummaryKey<'_>) -> CommandSummary {
        let stages: Vec<Arc<str>> = v.stages().map(Arc::from).collect();
        let shape = Shape(v).to_string().into();
        CommandSummary {
            command: v.name.into(),
            db: key.db.into(),
            collection: key.collection.into(),
            stages,
            shape,
            max_time_ms: key.max_time_ms,
            allow_disk_use: key.allow_disk_use,
        }
    }

    /// Whether this summary describes the command `key` was read from.
    fn describes(&self, v: &CommandView<'_>, key: &SummaryKey<'_>) -> bool {
        *self.command == *v.name
            && *self.collection == *key.collection
            && *self.db == *key.db
            && self.max_time_ms == key.max_time_ms
            && self.allow_disk_use == key.allow_disk_use
            && self.stages.iter().map(|s| &**s).eq(v.stages())
    }
}

/// The parts of a command a summary is made of, borrowed from the frame,
/// with the limits in force after a rewrite.
struct SummaryKey<'a> {
    db: &'a str,
    collection: &'a str,
    max_time_ms: Option<i64>,
    allow_disk_use: Option<bool>,
}

impl<'a> SummaryKey<'a> {
    fn new(v: &CommandView<'a>, db_fallback: &'a str, changes: &[FieldChange]) -> Self {
        let mut key = SummaryKey {
            db: v.db.unwrap_or(db_fallback),
            collection: v.collection().unwrap_or(""),
            max_time_ms: v.max_time_ms,
            allow_disk_use: v
                .allow_disk_use
                .or_else(|| v.explain_view().and_then(|e| e.allow_disk_use)),
        };
        for c in changes {
            match c.field {
                "maxTimeMS" => key.max_time_ms = Some(c.after),
                _ => key.allow_disk_use = Some(true),
            }
        }
        key
    }
}

/// A per-connection cache, so a connection that repeats the same command
/// shape does not allocate a new summary for each request. The last
/// summary is checked first: most connections repeat one command.
#[derive(Default)]
pub struct SummaryCache {
    last: Option<Arc<CommandSummary>>,
    entries: HashMap<u64, Arc<CommandSummary>>,
    hasher: ahash::RandomState,
}

const SUMMARY_CACHE_MAX: usize = 64;

impl SummaryCache {
    /// The summary of `v`, with the limits in force after `changes`.
    pub fn get(
        &mut self,
        v: &CommandView<'_>,
        db_fallback: &str,
        changes: &[FieldChange],
        shared: &Interner<CommandSummary>,
    ) -> Arc<CommandSummary> {
        let key = SummaryKey::new(v, db_fallback, changes);
        if let Some(last) = self.last.as_ref().filter(|s| s.describes(v, &key)) {
            return last.clone();
        }
        let mut h = self.hasher.build_hasher();
        v.name.hash(&mut h);
        key.db.hash(&mut h);
        key.collection.hash(&mut h);
        for s in v.stages() {
            s.hash(&mut h);
        }
        key.max_time_ms.hash(&mut h);
        key.allow_disk_use.hash(&mut h);
        let hash = h.finish();
        let summary = match self.entries.get(&hash) {
            // Guard against a hash collision mislabelling a command.
            Some(s) if s.describes(v, &key) => s.clone(),
            _ => {
                let summary = shared.intern(CommandSummary::new(v, &key));
                if self.entries.len() >= SUMMARY_CACHE_MAX {
                    self.entries.clear();
                }
                self.entries.insert(hash, summary.clone());
                summary
            }
        };
        self.last = Some(summary.clone());
        summary
    }
}

/// Shares equal values across connections: a thousand connections running
/// the same command all point at one summary, instead of each reading its
/// own copy on every request. With many busy connections, the memory a
/// request touches is what the proxy pays for in cache misses. Only values
/// first seen by some connection go through here (a connection's own
/// cache answers the rest). Past `max` entries new values are handed back
/// unshared, so a client inventing names cannot grow it without bound.
pub struct Interner<T> {
    values: Mutex<HashSet<Arc<T>, ahash::RandomState>>,
    max: usize,
}

impl<T: Eq + Hash> Interner<T> {
    pub fn new(max: usize) -> Self {
        Interner {
            values: Mutex::new(HashSet::default()),
            max,
        }
    }

    pub fn intern(&self, value: T) -> Arc<T> {
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = values.get(&value) {
            return shared.clone();
        }
        let value = Arc::new(value);
        if values.len() < self.max {
            values.insert(value.clone());
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(app: &str) -> ClientMeta {
        ClientMeta {
            app: app.into(),
            ..ClientMeta::default()
        }
    }

    #[test]
    fn equal_values_share_one_allocation_up_to_the_bound() {
        let interner = Interner::new(2);
        let (a1, a2) = (interner.intern(meta("a")), interner.intern(meta("a")));
        assert!(Arc::ptr_eq(&a1, &a2));
        let b = interner.intern(meta("b"));
        assert!(!Arc::ptr_eq(&a1, &b));
        // Full: a third value is still returned, just not shared.
        let (c1, c2) = (interner.intern(meta("c")), interner.intern(meta("c")));
        assert_eq!(c1, c2);
        assert!(!Arc::ptr_eq(&c1, &c2));
        assert!(Arc::ptr_eq(&b, &interner.intern(meta("b"))));
    }
}
