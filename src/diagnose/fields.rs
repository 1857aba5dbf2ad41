//! Sampling a field: a bounded `find` with a projection of that one field,
//! counting the BSON types found (and documents lacking it). Only type
//! names and counts leave this module.

use super::probe::Probe;
use super::DiagnoseError;
use bson::{doc, Bson, Document};
use std::collections::BTreeMap;

/// Counts by BSON type name ("string", "objectId", "missing", ...).
pub type TypeCounts = BTreeMap<&'static str, u64>;

/// The type names of `$type` / the server's `$queryStats` placeholders.
pub fn type_name(v: &Bson) -> &'static str {
    match v {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Array(_) => "array",
        Bson::Document(_) => "object",
        Bson::Boolean(_) => "bool",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::JavaScriptCode(_) | Bson::JavaScriptCodeWithScope(_) => "javascript",
        Bson::Int32(_) => "int",
        Bson::Int64(_) => "long",
        Bson::Timestamp(_) => "timestamp",
        Bson::Binary(_) => "binData",
        Bson::ObjectId(_) => "objectId",
        Bson::DateTime(_) => "date",
        Bson::Symbol(_) => "symbol",
        Bson::Decimal128(_) => "decimal",
        Bson::Undefined => "undefined",
        Bson::MaxKey => "maxKey",
        Bson::MinKey => "minKey",
        Bson::DbPointer(_) => "dbPointer",
    }
}

pub fn as_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(f) if f.is_finite() => Some(*f as i64),
        _ => None,
    }
}

/// The value at a dotted path; `None` when a part is missing. An array on
/// the way is looked into by its first document (enough for a type sample).
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for part in parts {
        cur = match cur {
            Bson::Document(d) => d.get(part)?,
            Bson::Array(a) => a.iter().find_map(|e| e.as_document()?.get(part))?,
            _ => return None,
        };
    }
    Some(cur)
}

/// "$customerId" → "customerId"; anything else (an expression, "$$var") → None.
pub fn field_ref(v: &Bson) -> Option<&str> {
    let s = v.as_str()?;
    let f = s.strip_prefix('$')?;
    (!f.is_empty() && !f.starts_with('$')).then_some(f)
}

/// What a sample of one field found.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Documents read.
    pub documents: u64,
    /// By type name; documents without the field count as "missing".
    pub types: TypeCounts,
}

impl Sample {
    pub fn count(&self, ty: &str) -> u64 {
        self.types.get(ty).copied().unwrap_or(0)
    }

    /// The types present, "missing" left out.
    pub fn present(&self) -> Vec<&'static str> {
        self.types
            .keys()
            .copied()
            .filter(|t| *t != "missing")
            .collect()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "sampled": self.documents, "types": self.types })
    }
}

/// Reads up to `limit` documents of `db.coll`, projected to `path`, and
/// counts the types found there.
pub async fn sample(
    probe: &mut Probe,
    db: &str,
    coll: &str,
    path: &str,
    limit: i64,
) -> Result<Sample, DiagnoseError> {
    let mut projection = Document::new();
    projection.insert(path, 1);
    if path != "_id" && !path.starts_with("_id.") {
        projection.insert("_id", 0);
    }
    let reply = probe
        .command(doc! {
            "find": coll,
            "filter": {},
            "projection": projection,
            "limit": limit,
            "batchSize": limit,
            "singleBatch": true,
            "$db": db,
        })
        .await?;
    let mut out = Sample::default();
    let batch = reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .map_err(DiagnoseError::Bson)?;
    for d in batch.into_iter().flatten() {
        let Some(d) = d.as_document() else { continue };
        let Ok(d) = Document::try_from(d) else {
            continue;
        };
        out.documents += 1;
        let ty = get_path(&d, path).map_or("missing", type_name);
        *out.types.entry(ty).or_default() += 1;
    }
    Ok(out)
}

/// The key patterns of `db.coll`'s indexes (field names in order).
pub async fn index_keys(
    probe: &mut Probe,
    db: &str,
    coll: &str,
) -> Result<Vec<Vec<String>>, DiagnoseError> {
    let reply = match probe.command(doc! { "listIndexes": coll, "$db": db }).await {
        Ok(r) => r,
        // NamespaceNotFound: no collection, so no index.
        Err(DiagnoseError::Upstream(e)) if e.code() == Some(26) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    if let Ok(batch) = reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
    {
        for ix in batch.into_iter().flatten() {
            if let Some(key) = ix.as_document().and_then(|d| d.get_document("key").ok()) {
                out.push(
                    key.iter()
                        .flatten()
                        .map(|(k, _)| k.as_str().to_string())
                        .collect(),
                );
            }
        }
    }
    Ok(out)
}

/// Whether an index starts with `field`.
pub fn indexed(indexes: &[Vec<String>], field: &str) -> bool {
    indexes
        .iter()
        .any(|k| k.first().is_some_and(|f| f == field))
}
