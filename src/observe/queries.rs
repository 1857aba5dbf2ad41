//! Query shapes on the request side: each request's `ShapeHash` (one walk
//! over the raw command), and the shape itself, built as a document only
//! the first time the process sees a hash.
//!
//! A connection keeps the shapes it has seen in a small cache keyed by
//! hash, so a repeat costs the hash and one lookup, and equal shapes share
//! one `Arc` (the sample buffer groups runs by pointer). Only a hash new to
//! the connection takes the process-wide lock.
//!
//! Before the walk, a second small cache is keyed by a hash of the
//! command's bytes (body and document sequences): a command repeated byte
//! for byte (a polling loop, the same lookup again; a driver's session id
//! stays the same across a pooled session's commands) skips the walk, and
//! hashing ~100 bytes costs a small fraction of it. A command whose
//! literals differ misses and pays the walk, plus that hash.

use mongotap_proto::op_msg::DocSequence;
use mongotap_proto::shape::{has_shape, shape_doc, shape_hash, ShapeHash};
use mongotap_proto::CommandView;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};

/// A query shape: its hash, and the shape as relaxed extended JSON (only
/// placeholders, operators and names: never a literal value).
#[derive(Debug)]
pub struct QueryShape {
    pub hash: ShapeHash,
    pub shape: serde_json::Value,
}

/// Shapes a connection remembers. A connection runs a handful of shapes;
/// one that invents more just rebuilds its cache now and then.
const CONN_CACHE_MAX: usize = 32;

/// One connection's shapes, owned by its request observer.
#[derive(Default)]
pub struct ShapeCache {
    last: Option<Arc<QueryShape>>,
    entries: HashMap<ShapeHash, Arc<QueryShape>, ahash::RandomState>,
    /// Shapes by a hash of the command's bytes (see the module's notes).
    by_bytes: HashMap<u64, Arc<QueryShape>, ahash::RandomState>,
    bytes_hasher: ahash::RandomState,
}

/// Commands a connection remembers byte for byte.
const BYTES_CACHE_MAX: usize = 64;

impl ShapeCache {
    /// The shape of `view`, or `None` for a command without one.
    pub fn get(
        &mut self,
        view: &CommandView<'_>,
        sequences: &[DocSequence<'_>],
        shared: &ShapeTexts,
    ) -> Option<Arc<QueryShape>> {
        if !has_shape(view.name) {
            return None;
        }
        let bytes = self.bytes_key(view, sequences);
        if let Some(shape) = self.by_bytes.get(&bytes) {
            return Some(shape.clone());
        }
        let shape = self.by_shape(view, sequences, shared)?;
        if self.by_bytes.len() >= BYTES_CACHE_MAX {
            self.by_bytes.clear();
        }
        self.by_bytes.insert(bytes, shape.clone());
        Some(shape)
    }

    /// A hash of the body's and the sequences' bytes. Equal bytes have the
    /// same shape; a 64-bit collision between two commands one connection
    /// sends within 64 commands of each other is not a practical concern.
    fn bytes_key(&self, view: &CommandView<'_>, sequences: &[DocSequence<'_>]) -> u64 {
        let mut h = self.bytes_hasher.build_hasher();
        h.write(view.doc.as_bytes());
        for s in sequences {
            h.write(s.identifier.as_bytes());
            h.write_u8(0);
            h.write(s.documents);
        }
        h.finish()
    }

    /// The walk, then the caches by shape hash.
    fn by_shape(
        &mut self,
        view: &CommandView<'_>,
        sequences: &[DocSequence<'_>],
        shared: &ShapeTexts,
    ) -> Option<Arc<QueryShape>> {
        let hash = shape_hash(view, sequences)?;
        if let Some(last) = self.last.as_ref().filter(|s| s.hash == hash) {
            return Some(last.clone());
        }
        let shape = match self.entries.get(&hash) {
            Some(s) => s.clone(),
            None => {
                let shape = shared.get_or_build(hash, || render(view, sequences));
                if self.entries.len() >= CONN_CACHE_MAX {
                    self.entries.clear();
                }
                self.entries.insert(hash, shape.clone());
                shape
            }
        };
        self.last = Some(shape.clone());
        Some(shape)
    }
}

/// The canonical shape as relaxed extended JSON.
fn render(view: &CommandView<'_>, sequences: &[DocSequence<'_>]) -> serde_json::Value {
    shape_doc(view, sequences)
        .and_then(|raw| bson::Document::try_from(raw.as_ref()).ok())
        .map(|doc| bson::Bson::Document(doc).into_relaxed_extjson())
        .unwrap_or(serde_json::Value::Null)
}

/// Every shape the process has seen, up to `max`: each shape document is
/// built once, whichever connection sees it first. Past `max` a new shape
/// is built and handed back unshared (the stats fold it into `other`
/// anyway), so a client inventing shapes cannot grow this.
pub struct ShapeTexts {
    shapes: Mutex<HashMap<ShapeHash, Arc<QueryShape>, ahash::RandomState>>,
    max: usize,
}

impl ShapeTexts {
    pub fn new(max: usize) -> Self {
        ShapeTexts {
            shapes: Mutex::default(),
            max,
        }
    }

    fn get_or_build(
        &self,
        hash: ShapeHash,
        build: impl FnOnce() -> serde_json::Value,
    ) -> Arc<QueryShape> {
        if let Some(s) = self.lock().get(&hash) {
            return s.clone();
        }
        // Built outside the lock: another connection may build the same
        // shape meanwhile; the first one stored wins.
        let shape = Arc::new(QueryShape {
            hash,
            shape: build(),
        });
        let mut shapes = self.lock();
        if let Some(s) = shapes.get(&hash) {
            return s.clone();
        }
        if shapes.len() < self.max {
            shapes.insert(hash, shape.clone());
        }
        shape
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ShapeHash, Arc<QueryShape>, ahash::RandomState>> {
        self.shapes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn shape_of(
        cache: &mut ShapeCache,
        texts: &ShapeTexts,
        body: &bson::RawDocument,
    ) -> Option<Arc<QueryShape>> {
        let view = CommandView::parse(body).expect("view");
        cache.get(&view, &[], texts)
    }

    /// Repeats on one connection share one `Arc`, two connections share
    /// the process's copy, and the shape holds placeholders, not values.
    #[test]
    fn shapes_are_shared_and_hold_no_values() {
        let texts = ShapeTexts::new(10);
        let (mut one, mut two) = (ShapeCache::default(), ShapeCache::default());
        let a =
            rawdoc! { "find": "orders", "filter": { "customerId": "secret-4242" }, "$db": "shop" };
        let b = rawdoc! { "find": "orders", "filter": { "customerId": "other-1" }, "$db": "shop" };
        let c = rawdoc! { "find": "orders", "filter": { "customerId": 987654321 }, "$db": "shop" };
        let sa = shape_of(&mut one, &texts, &a).expect("find has a shape");
        let sb = shape_of(&mut two, &texts, &b).expect("find has a shape");
        assert!(Arc::ptr_eq(&sa, &sb));
        let sc = shape_of(&mut one, &texts, &c).expect("find has a shape");
        assert_ne!(sa.hash, sc.hash);
        assert!(Arc::ptr_eq(
            &sa,
            &shape_of(&mut one, &texts, &a).expect("shape")
        ));
        assert_eq!(one.by_bytes.len(), 2, "a and c, byte for byte");
        let text = sa.shape.to_string();
        assert!(
            text.contains("?string") && !text.contains("secret"),
            "{text}"
        );
        let hello = rawdoc! { "hello": 1, "$db": "admin" };
        assert!(shape_of(&mut one, &texts, &hello).is_none());
    }

    /// Update statements travel in a document sequence: two commands with
    /// one body and different statements are told apart, by bytes and by
    /// shape.
    #[test]
    fn sequences_count_in_the_byte_key() {
        use mongotap_proto::op_msg;
        let texts = ShapeTexts::new(10);
        let mut cache = ShapeCache::default();
        let body = rawdoc! { "update": "orders", "$db": "shop" };
        let set = rawdoc! { "q": { "a": 1 }, "u": { "$set": { "b": 2 } } };
        let inc = rawdoc! { "q": { "a": 1 }, "u": { "$inc": { "b": 2 } } };
        let mut shapes = Vec::new();
        for statement in [&set, &inc, &set] {
            let seq = [op_msg::DocSequence {
                identifier: "updates",
                documents: statement.as_bytes(),
            }];
            let view = CommandView::parse(&body).expect("view");
            shapes.push(cache.get(&view, &seq, &texts).expect("update has a shape"));
        }
        assert_ne!(shapes[0].hash, shapes[1].hash);
        assert!(Arc::ptr_eq(&shapes[0], &shapes[2]));
        assert_eq!(cache.by_bytes.len(), 2);
    }

    /// Past `max`, shapes are still built but no longer kept.
    #[test]
    fn the_process_table_is_bounded() {
        let texts = ShapeTexts::new(1);
        let mut cache = ShapeCache::default();
        for coll in ["a", "b", "c"] {
            let body = rawdoc! { "find": coll, "$db": "db" };
            assert!(shape_of(&mut cache, &texts, &body).is_some());
        }
        assert_eq!(texts.lock().len(), 1);
    }
}
