//! A borrowed view of a command reply, built in one pass over its
//! top-level keys: status, error code, write errors, cursor, topology.

use crate::command::{as_bool, as_i64};
use crate::DecodeError;
use bson::raw::{RawArray, RawBsonRef, RawDocument};

#[derive(Debug, Clone, Default)]
pub struct ReplyView<'a> {
    /// `ok` as a number or boolean; absent means the reply is not a command reply.
    pub ok: Option<bool>,
    pub code: Option<i32>,
    pub code_name: Option<&'a str>,
    pub errmsg: Option<&'a str>,
    /// Number of entries in `writeErrors` (inside an `ok: 1` reply).
    pub write_errors: usize,
    /// The first write error's code, when there is one.
    pub write_error_code: Option<i32>,
    pub write_concern_error: Option<&'a RawDocument>,
    /// `cursor.id`, when the reply carries a cursor.
    pub cursor_id: Option<i64>,
    pub cursor_ns: Option<&'a str>,
    /// `cursor.firstBatch` or `cursor.nextBatch`. Counting its documents
    /// walks the whole batch (101 documents by default for a find), so it
    /// is left to `batch_len`, for the callers that need the count.
    pub batch: Option<&'a RawArray>,
    pub has_topology_version: bool,
    /// hello's `hosts`: a replica set member list drivers will connect to.
    pub hosts: Option<&'a RawArray>,
    pub max_wire_version: Option<i64>,
    /// hello's `connectionId`: the server's own id of this connection,
    /// which `$currentOp` reports and `killOp` needs.
    pub connection_id: Option<i64>,
    /// hello's negotiated `compression` list.
    pub compression: Option<&'a RawArray>,
    /// `n`: count's result (also what an update or delete matched).
    pub n: Option<i64>,
}

impl<'a> ReplyView<'a> {
    pub fn parse(doc: &'a RawDocument) -> Result<Self, DecodeError> {
        let mut v = ReplyView::default();
        for kv in doc.iter() {
            let (key, value) = kv.map_err(|e| DecodeError::InvalidBson {
                opcode: "reply",
                what: "body",
                reason: e.to_string(),
            })?;
            match key.as_str() {
                "ok" => v.ok = as_bool(value),
                "code" => v.code = as_i64(value).map(|c| c as i32),
                "codeName" => v.code_name = value.as_str(),
                "errmsg" => v.errmsg = value.as_str(),
                "writeErrors" => {
                    if let Some(arr) = value.as_array() {
                        v.write_errors = arr.into_iter().count();
                        v.write_error_code = arr
                            .into_iter()
                            .next()
                            .and_then(|e| e.ok()?.as_document()?.get("code").ok()?)
                            .and_then(as_i64)
                            .map(|c| c as i32);
                    }
                }
                "writeConcernError" => v.write_concern_error = value.as_document(),
                "cursor" => {
                    if let Some(cursor) = value.as_document() {
                        v.read_cursor(cursor);
                    }
                }
                "topologyVersion" => v.has_topology_version = true,
                "hosts" => v.hosts = value.as_array(),
                "maxWireVersion" => v.max_wire_version = as_i64(value),
                "connectionId" => v.connection_id = as_i64(value),
                "compression" => v.compression = value.as_array(),
                "n" => v.n = as_i64(value),
                _ => {}
            }
        }
        Ok(v)
    }

    fn read_cursor(&mut self, cursor: &'a RawDocument) {
        for (key, value) in cursor.iter().flatten() {
            match (key.as_str(), value) {
                ("id", id) => self.cursor_id = as_i64(id),
                ("ns", RawBsonRef::String(ns)) => self.cursor_ns = Some(ns),
                ("firstBatch" | "nextBatch", RawBsonRef::Array(batch)) => self.batch = Some(batch),
                _ => {}
            }
        }
    }

    /// Documents in the cursor's batch (0 without one). Counts elements
    /// without decoding them: 1.3 µs for 101 small documents, against 1.9
    /// through the value iterator.
    pub fn batch_len(&self) -> usize {
        self.batch.map_or(0, |b| b.iter_elements().count())
    }

    /// The command failed outright (`ok: 0`).
    pub fn is_failure(&self) -> bool {
        self.ok == Some(false)
    }

    /// Failed, or succeeded with write errors or a write concern error.
    pub fn is_error(&self) -> bool {
        self.is_failure() || self.write_errors > 0 || self.write_concern_error.is_some()
    }

    /// The code that describes the error, if any.
    pub fn error_code(&self) -> Option<i32> {
        if self.is_failure() {
            return self.code;
        }
        self.write_error_code.or_else(|| {
            self.write_concern_error
                .and_then(|w| w.get("code").ok().flatten())
                .and_then(as_i64)
                .map(|c| c as i32)
        })
    }
}

/// Names for the codes operators meet when an aggregation hangs or fails.
pub fn code_name(code: i32) -> &'static str {
    match code {
        50 => "MaxTimeMSExpired",
        146 => "ExceededMemoryLimit",
        292 => "QueryExceededMemoryLimitNoDiskUseAllowed",
        43 => "CursorNotFound",
        11601 => "Interrupted",
        262 => "ExceededTimeLimit",
        11000 => "DuplicateKey",
        13 => "Unauthorized",
        18 => "AuthenticationFailed",
        26 => "NamespaceNotFound",
        59 => "CommandNotFound",
        72 => "InvalidOptions",
        _ => "",
    }
}
