//! The query-shape table behind `/stats/queries`: one latency series per
//! (command, db, collection, shape hash), with errors, documents returned
//! and the apps that ran it. Bounded by `watch.max_shapes`; past it,
//! samples fold into one `other` row and are counted.

use super::{label, Outcome, Series, ERROR_BIT, OTHER};
use crate::observe::queries::QueryShape;
use mongotap_proto::shape::ShapeHash;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// App names listed per row; further ones are counted ("+N more").
const APPS_LISTED: usize = 8;
/// Further apps counted per row, at most: past it the count stops.
const APPS_COUNTED: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueryKey {
    pub command: Arc<str>,
    pub db: Arc<str>,
    pub collection: Arc<str>,
    /// `None` for the `other` row.
    pub hash: Option<ShapeHash>,
}

impl QueryKey {
    fn other() -> QueryKey {
        let other: Arc<str> = Arc::from(OTHER);
        QueryKey {
            command: other.clone(),
            db: other.clone(),
            collection: other,
            hash: None,
        }
    }
}

pub struct QueryEntry {
    /// `None` for the `other` row.
    pub shape: Option<Arc<QueryShape>>,
    pub series: Series,
    pub docs_returned: u64,
    apps: Vec<Arc<str>>,
    /// Hashes of the apps past `APPS_LISTED` (at most `APPS_COUNTED`).
    more_apps: HashSet<u64, ahash::RandomState>,
}

impl QueryEntry {
    fn new(shape: Option<Arc<QueryShape>>) -> Self {
        QueryEntry {
            shape,
            series: Series::new(),
            docs_returned: 0,
            apps: Vec::new(),
            more_apps: HashSet::default(),
        }
    }

    fn note_app(&mut self, app: &Arc<str>) {
        if self.apps.iter().any(|a| a == app) {
            return;
        }
        if self.apps.len() < APPS_LISTED {
            self.apps.push(app.clone());
        } else if self.more_apps.len() < APPS_COUNTED {
            let hash = self.more_apps.hasher().hash_one(&**app);
            self.more_apps.insert(hash);
        }
    }

    /// The sum of every latency recorded, in µs.
    pub fn total_us(&self) -> u64 {
        self.series.ok.sum_us.saturating_add(self.series.err.sum_us)
    }

    /// Ok and error samples together, for the Prometheus histogram.
    pub fn outcome(&self) -> Outcome {
        let (ok, err) = (&self.series.ok, &self.series.err);
        let mut all = ok.clone();
        for (a, b) in all.buckets.iter_mut().zip(err.buckets) {
            *a += b;
        }
        all.count += err.count;
        all.sum_us = all.sum_us.saturating_add(err.sum_us);
        all
    }
}

/// One batch's contribution to a row (see `QueryTable::record`).
pub struct QuerySample<'a> {
    pub command: &'a Arc<str>,
    pub db: &'a Arc<str>,
    pub collection: &'a Arc<str>,
    pub app: &'a Arc<str>,
    pub shape: &'a Arc<QueryShape>,
    /// Latencies in µs with `ERROR_BIT` for errors; may be empty (documents
    /// of a getMore belong to the shape that opened the cursor).
    pub values: &'a [u64],
    pub docs: u64,
}

#[derive(Default)]
pub struct QueryTable {
    entries: HashMap<QueryKey, QueryEntry, ahash::RandomState>,
}

impl QueryTable {
    /// Records samples; returns how many were folded into `other`.
    pub fn record(&mut self, s: QuerySample<'_>, max_shapes: usize) -> u64 {
        let key = QueryKey {
            command: s.command.clone(),
            db: s.db.clone(),
            collection: if s.collection.is_empty() {
                label("")
            } else {
                s.collection.clone()
            },
            hash: Some(s.shape.hash),
        };
        let (key, shape, folded) = if self.entries.contains_key(&key) || self.shapes() < max_shapes
        {
            (key, Some(s.shape.clone()), 0)
        } else {
            (QueryKey::other(), None, s.values.len() as u64)
        };
        let entry = self
            .entries
            .entry(key)
            .or_insert_with(|| QueryEntry::new(shape));
        for &v in s.values {
            entry.series.record(v & !ERROR_BIT, v & ERROR_BIT != 0);
        }
        entry.docs_returned = entry.docs_returned.saturating_add(s.docs);
        if s.app.is_empty() {
            entry.note_app(&label(""));
        } else {
            entry.note_app(s.app);
        }
        folded
    }

    /// Rows other than `other`.
    fn shapes(&self) -> usize {
        self.entries.len() - usize::from(self.entries.contains_key(&QueryKey::other()))
    }

    pub fn entries(&self) -> impl Iterator<Item = (&QueryKey, &QueryEntry)> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.series.all.is_empty())
    }

    /// The `n` rows with the most total time, busiest first.
    pub fn top_by_total(&self, n: usize) -> Vec<(&QueryKey, &QueryEntry)> {
        let mut rows: Vec<_> = self.entries().collect();
        rows.sort_by_key(|(_, e)| std::cmp::Reverse(e.total_us()));
        rows.truncate(n);
        rows
    }

    /// `/stats/queries`: the top `top` rows by `sort`, largest first.
    pub fn rows(&self, sort: QuerySort, top: usize) -> Vec<QueryRow> {
        let mut rows: Vec<(u64, QueryRow)> = self
            .entries()
            .map(|(k, e)| {
                let key = match sort {
                    QuerySort::Total => e.total_us(),
                    QuerySort::Count => e.series.all.len(),
                    QuerySort::P99 => e.series.quantile(0.99),
                    QuerySort::Max => e.series.max_us,
                    QuerySort::Errors => e.series.err.count,
                };
                (key, QueryRow::new(k, e))
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        rows.into_iter().take(top).map(|(_, r)| r).collect()
    }
}

/// What `/stats/queries` sorts by (`?sort=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuerySort {
    Total,
    Count,
    P99,
    Max,
    Errors,
}

impl QuerySort {
    pub const ACCEPTED: &'static str = "total, count, p99, max or errors";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "total" => QuerySort::Total,
            "count" => QuerySort::Count,
            "p99" => QuerySort::P99,
            "max" => QuerySort::Max,
            "errors" => QuerySort::Errors,
            _ => return None,
        })
    }
}

/// One row of `/stats/queries` (field names are a contract).
#[derive(Debug, Serialize)]
pub struct QueryRow {
    pub command: String,
    pub db: String,
    pub collection: String,
    /// The canonical shape; `null` on the `other` row.
    pub shape: serde_json::Value,
    /// 16 hex digits; `"other"` on the `other` row.
    pub shape_hash: String,
    pub count: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub docs_returned: u64,
    pub apps: Vec<String>,
}

impl QueryRow {
    fn new(k: &QueryKey, e: &QueryEntry) -> QueryRow {
        let mut apps: Vec<String> = e.apps.iter().map(|a| a.to_string()).collect();
        if !e.more_apps.is_empty() {
            apps.push(format!("+{} more", e.more_apps.len()));
        }
        QueryRow {
            command: k.command.to_string(),
            db: k.db.to_string(),
            collection: k.collection.to_string(),
            shape: e
                .shape
                .as_ref()
                .map_or(serde_json::Value::Null, |s| s.shape.clone()),
            shape_hash: k.hash.map_or_else(|| OTHER.to_string(), |h| h.to_string()),
            count: e.series.all.len(),
            errors: e.series.err.count,
            p50_us: e.series.quantile(0.5),
            p99_us: e.series.quantile(0.99),
            max_us: e.series.max_us,
            docs_returned: e.docs_returned,
            apps,
        }
    }
}
