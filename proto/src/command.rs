//! A borrowed view of a command document, built in one pass over its
//! top-level keys. Nothing is copied: names and values borrow from the frame.

use crate::DecodeError;
use bson::raw::{RawArray, RawBsonRef, RawDocument};
use std::ops::Range;

/// What mongotap needs to know about a command, borrowed from its body.
#[derive(Debug, Clone)]
pub struct CommandView<'a> {
    pub doc: &'a RawDocument,
    /// The first key: the command name (`find`, `aggregate`, `hello`, ...).
    pub name: &'a str,
    /// The first value, when it is a string (usually the collection).
    first_str: Option<&'a str>,
    /// `$db` (OP_MSG) or the database of `db.$cmd` (OP_QUERY, set by caller).
    pub db: Option<&'a str>,
    /// getMore's `collection` field.
    getmore_collection: Option<&'a str>,
    pub pipeline: Option<&'a RawArray>,
    pub max_time_ms: Option<i64>,
    pub allow_disk_use: Option<bool>,
    pub comment: Option<RawBsonRef<'a>>,
    pub lsid: Option<&'a RawDocument>,
    /// getMore's cursor id.
    pub cursor_id: Option<i64>,
    /// killCursors' ids.
    pub cursors: Option<&'a RawArray>,
    /// explain's inner command.
    pub explain: Option<&'a RawDocument>,
    pub has_topology_version: bool,
    pub max_await_time_ms: Option<i64>,
    /// A `cursor` sub-document with `tailable`/`awaitData` does not exist on
    /// the wire for find (they are top-level): these are find's flags.
    pub tailable: bool,
    pub await_data: bool,
    /// hello's `speculativeAuthenticate` (makes the hello sensitive).
    pub speculative_authenticate: bool,
    /// The first `maxTimeMS` element, value as sent, and where it sits.
    pub max_time_ms_field: Option<Field<'a>>,
    /// The first `allowDiskUse` element (any type), and where it sits.
    pub allow_disk_use_field: Option<Field<'a>>,
    /// `maxTimeMS` or `allowDiskUse` appears more than once. The rewrite
    /// then walks the whole body so it can drop the duplicates.
    pub rewrite_key_repeated: bool,
    /// Where the first element (the command name and its value) sits.
    pub(crate) first_span: (usize, usize),
}

/// One top-level element: its value and the byte range of the whole
/// element (type byte, key, value) within the document. A rewrite splices
/// around the range without walking the body again.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    pub value: RawBsonRef<'a>,
    pub span: (usize, usize),
}

impl Field<'_> {
    pub fn range(&self) -> Range<usize> {
        self.span.0..self.span.1
    }
}

/// Reads an integer field the way the server does: int32, int64, or a
/// double with an integral value.
pub fn as_i64(v: RawBsonRef<'_>) -> Option<i64> {
    match v {
        RawBsonRef::Int32(i) => Some(i.into()),
        RawBsonRef::Int64(i) => Some(i),
        RawBsonRef::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e18 => Some(d as i64),
        _ => None,
    }
}

/// Truthiness as the server reads boolean options.
pub fn as_bool(v: RawBsonRef<'_>) -> Option<bool> {
    match v {
        RawBsonRef::Boolean(b) => Some(b),
        other => as_i64(other).map(|i| i != 0),
    }
}

fn bson_err(reason: impl ToString) -> DecodeError {
    DecodeError::InvalidBson {
        opcode: "command",
        what: "body",
        reason: reason.to_string(),
    }
}

impl<'a> CommandView<'a> {
    /// Scans the top-level keys once. Fails on an empty document or on a
    /// malformed element.
    pub fn parse(doc: &'a RawDocument) -> Result<Self, DecodeError> {
        // Elements, not (key, value) pairs, so each one's place in the
        // document is known: a rewrite splices around those spans.
        let mut elements = doc.iter_elements();
        let first = match elements.next() {
            Some(Ok(e)) => e,
            Some(Err(e)) => return Err(bson_err(e)),
            None => return Err(bson_err("empty command document")),
        };
        let name = first.key().as_str();
        let first_value = first.value().map_err(bson_err)?;
        // Offsets are counted as the elements go by: they are contiguous
        // from the 4-byte length prefix on.
        let mut offset = 4 + element_len(name, first.size());
        let mut v = CommandView {
            doc,
            name,
            first_str: first_value.as_str(),
            db: None,
            getmore_collection: None,
            pipeline: None,
            max_time_ms: None,
            allow_disk_use: None,
            comment: None,
            lsid: None,
            cursor_id: None,
            cursors: None,
            explain: None,
            has_topology_version: false,
            max_await_time_ms: None,
            tailable: false,
            await_data: false,
            speculative_authenticate: false,
            max_time_ms_field: None,
            allow_disk_use_field: None,
            rewrite_key_repeated: false,
            first_span: (4, offset),
        };
        let first_field = Field {
            value: first_value,
            span: v.first_span,
        };
        match name {
            "getMore" => v.cursor_id = as_i64(first_value),
            "explain" => v.explain = first_value.as_document(),
            // A command named like a field a rewrite sets (only a hostile
            // or broken client sends one): that element is the field's
            // first copy, so a rewrite replaces it instead of adding a
            // second key of the same name.
            "maxTimeMS" => v.max_time_ms_field = Some(first_field),
            "allowDiskUse" => v.allow_disk_use_field = Some(first_field),
            _ => {}
        }
        for element in elements {
            let element = element.map_err(bson_err)?;
            let key = element.key().as_str();
            let start = offset;
            offset += element_len(key, element.size());
            // Every top-level value is decoded, so a malformed one (bad
            // UTF-8, a bad length inside) closes the connection with a
            // reason instead of being forwarded or copied by a rewrite.
            let value = element.value().map_err(bson_err)?;
            match key {
                "$db" => v.db = value.as_str(),
                "collection" => v.getmore_collection = value.as_str(),
                "pipeline" => v.pipeline = value.as_array(),
                "maxTimeMS" | "allowDiskUse" => {
                    let field = Field {
                        value,
                        span: (start, offset),
                    };
                    let slot = if key == "maxTimeMS" {
                        &mut v.max_time_ms_field
                    } else {
                        &mut v.allow_disk_use_field
                    };
                    // The first copy counts; a repeat makes a rewrite walk
                    // the body to drop it.
                    if slot.is_some() {
                        v.rewrite_key_repeated = true;
                    } else {
                        *slot = Some(field);
                        if key == "maxTimeMS" {
                            v.max_time_ms = as_i64(value);
                        } else {
                            v.allow_disk_use = as_bool(value);
                        }
                    }
                }
                "comment" => v.comment = Some(value),
                "lsid" => v.lsid = value.as_document(),
                "cursors" => v.cursors = value.as_array(),
                "topologyVersion" => v.has_topology_version = true,
                "maxAwaitTimeMS" => v.max_await_time_ms = as_i64(value),
                "tailable" => v.tailable = as_bool(value).unwrap_or(false),
                "awaitData" => v.await_data = as_bool(value).unwrap_or(false),
                "speculativeAuthenticate" => v.speculative_authenticate = true,
                _ => {}
            }
        }
        Ok(v)
    }

    /// The collection the command works on, when it names one.
    pub fn collection(&self) -> Option<&'a str> {
        if self.name == "getMore" {
            return self.getmore_collection;
        }
        if let Some(inner) = self.explain_view() {
            return inner.collection();
        }
        self.first_str
    }

    /// The explained command, for `{explain: {...}}`.
    pub fn explain_view(&self) -> Option<CommandView<'a>> {
        self.explain.and_then(|d| CommandView::parse(d).ok())
    }

    /// The pipeline's stage names in order (`$match`, `$group`, ...), no values.
    pub fn stages(&self) -> impl Iterator<Item = &'a str> + 'a {
        let pipeline = self
            .pipeline
            .or_else(|| self.explain_view().and_then(|e| e.pipeline));
        pipeline.into_iter().flat_map(|p| {
            p.into_iter().filter_map(|stage| {
                let stage = stage.ok()?.as_document()?;
                // The key only: decoding the stage's value is not needed.
                let first = stage.iter_elements().next()?.ok()?;
                Some(first.key().as_str())
            })
        })
    }

    /// `hello`/`isMaster` sent by a driver's monitor: it waits up to
    /// maxAwaitTimeMS for a topology change, so its duration is not latency.
    pub fn is_awaitable_hello(&self) -> bool {
        self.is_hello() && self.has_topology_version && self.max_await_time_ms.is_some()
    }

    pub fn is_hello(&self) -> bool {
        matches!(self.name, "hello" | "isMaster" | "ismaster")
    }

    /// Commands whose body and reply must never be logged or captured
    /// (command-monitoring spec), including a hello that carries auth.
    pub fn is_sensitive(&self) -> bool {
        is_sensitive_command(self.name) || (self.is_hello() && self.speculative_authenticate)
    }
}

/// The command-monitoring spec's list of redacted commands.
/// Case-insensitive, as the spec says, without allocating: this runs for
/// every command that capture, logging or a rewrite looks at.
pub fn is_sensitive_command(name: &str) -> bool {
    const SENSITIVE: [&str; 9] = [
        "authenticate",
        "saslstart",
        "saslcontinue",
        "getnonce",
        "createuser",
        "updateuser",
        "copydbgetnonce",
        "copydbsaslstart",
        "copydb",
    ];
    SENSITIVE.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// Bytes of one element: type byte, key, its NUL, and the value.
fn element_len(key: &str, value_size: usize) -> usize {
    1 + key.len() + 1 + value_size
}
