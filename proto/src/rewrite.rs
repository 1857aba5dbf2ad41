//! Guardrail rewrites of a command body: inject or lower `maxTimeMS`, and
//! set `allowDiskUse` where the command accepts it.
//!
//! The new body is spliced from the original bytes: every element that is
//! not changed is copied byte for byte, the command name stays first, a
//! changed field is replaced where it stands (never duplicated), and a
//! changed number keeps its BSON type unless the new value does not fit.

use crate::command::{as_i64, CommandView};
use crate::DecodeError;
use arrayvec::ArrayVec;
use bson::raw::RawDocument;
use bson::spec::ElementType;

/// What a rule asks for. `None` leaves that part alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Set when the command has no maxTimeMS.
    pub default_max_time_ms: Option<i64>,
    /// Lower any larger value to this; 0 (unlimited) and absent count as larger.
    pub max_time_ms_cap: Option<i64>,
    /// Set allowDiskUse: true where it is absent and the command accepts it.
    pub allow_disk_use: bool,
}

/// One field that changed, for the `rewritten` event.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    pub field: &'static str,
    /// The value before, or `None` when the field was absent.
    pub before: Option<i64>,
    pub after: i64,
}

/// What one rewrite changes: at most the two fields, kept inline so a
/// rewrite on the forwarding path allocates nothing but its frame.
pub type Changes = ArrayVec<FieldChange, 2>;

#[derive(Debug, Clone, PartialEq)]
pub struct Rewritten {
    /// The complete new body document.
    pub body: Vec<u8>,
    pub changes: Changes,
    /// The maxTimeMS now in force, when there is one.
    pub max_time_ms: Option<i64>,
}

/// A rewrite worked out for one command, before any byte is written: the
/// proxy writes the new body straight into the outgoing frame with
/// `write_body`; `rewrite` writes it into a body of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    edits: ArrayVec<Edit, 2>,
    pub changes: Changes,
    /// The maxTimeMS in force after the rewrite, when there is one.
    pub max_time_ms: Option<i64>,
}

/// Commands that must never get an injected maxTimeMS: getMore (the server
/// rejects it on non-awaitData cursors), cursor and session housekeeping,
/// the handshake, and authentication.
pub fn never_rewrite(name: &str) -> bool {
    matches!(
        name,
        "getMore"
            | "killCursors"
            | "hello"
            | "isMaster"
            | "ismaster"
            | "endSessions"
            | "killSessions"
            | "abortTransaction"
            | "commitTransaction"
            | "logout"
    ) || crate::command::is_sensitive_command(name)
}

/// allowDiskUse is accepted by aggregate and (from 4.4) find; count,
/// distinct and getMore reject unknown fields.
fn accepts_allow_disk_use(name: &str) -> bool {
    matches!(name, "aggregate" | "find")
}

/// Plans and applies the rewrite. Returns `None` when nothing changes.
pub fn rewrite(view: &CommandView<'_>, limits: &Limits) -> Result<Option<Rewritten>, DecodeError> {
    let Some(plan) = plan(view, limits) else {
        return Ok(None);
    };
    let mut body = Vec::with_capacity(plan.body_len(view));
    plan.write_body(view, &mut body)?;
    Ok(Some(Rewritten {
        body,
        changes: plan.changes,
        max_time_ms: plan.max_time_ms,
    }))
}

/// Works out what `limits` change in the command, from the view alone
/// (no pass over the body). `None` when nothing changes.
pub fn plan(view: &CommandView<'_>, limits: &Limits) -> Option<Plan> {
    if never_rewrite(view.name) {
        return None;
    }
    let mut plan = Plan {
        edits: ArrayVec::new(),
        changes: ArrayVec::new(),
        max_time_ms: None,
    };

    // maxTimeMS: always the top-level field, for explain too.
    let current = view.max_time_ms_field;
    let current_value = current.and_then(|f| as_i64(f.value));
    plan.max_time_ms = current_value.filter(|&v| v > 0);
    let target = match (current, current_value) {
        (None, _) => limits
            .default_max_time_ms
            .map(|d| limits.max_time_ms_cap.map_or(d, |cap| d.min(cap)))
            .or(limits.max_time_ms_cap),
        (Some(_), Some(cur)) => limits.max_time_ms_cap.filter(|&cap| cur <= 0 || cur > cap),
        // A non-numeric maxTimeMS is the server's to reject; leave it.
        (Some(_), None) => None,
    };
    if let Some(new) = target.filter(|&v| v > 0) {
        plan.edits.push(Edit {
            key: "maxTimeMS",
            value: number_value(current.map(|c| c.value.element_type()), new),
            span: current.map(|c| c.span),
        });
        plan.changes.push(FieldChange {
            field: "maxTimeMS",
            before: current_value,
            after: new,
        });
        plan.max_time_ms = Some(new);
    }

    // allowDiskUse: on aggregate/find itself, or inside explain's command.
    if limits.allow_disk_use {
        if accepts_allow_disk_use(view.name) {
            if view.allow_disk_use_field.is_none() {
                plan.edits.push(Edit {
                    key: "allowDiskUse",
                    value: Value::True,
                    span: None,
                });
                plan.changes.push(allow_disk_use_change());
            }
        } else if let Some(inner_view) = view.explain_view() {
            // An explained command that does not parse (`{explain: {}}`) is
            // the server's to reject; failing here would close the connection.
            if accepts_allow_disk_use(inner_view.name) && inner_view.allow_disk_use_field.is_none()
            {
                // `explain` is the first element; its value is the inner command.
                plan.edits.push(Edit {
                    key: "explain",
                    value: Value::Document(with_allow_disk_use(inner_view.doc.as_bytes())),
                    span: Some(view.first_span),
                });
                plan.changes.push(allow_disk_use_change());
            }
        }
    }
    (!plan.edits.is_empty()).then_some(plan)
}

impl Plan {
    /// The new body's length, give or take: enough to size a buffer.
    pub fn body_len(&self, view: &CommandView<'_>) -> usize {
        view.doc.as_bytes().len() + self.edits.iter().map(Edit::len).sum::<usize>()
    }

    /// Appends the new body to `out`. Every element that does not change is
    /// copied byte for byte, in order; a changed field is replaced where it
    /// stands, and a new one goes at the end.
    pub fn write_body(&self, view: &CommandView<'_>, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let start = out.len();
        if view.rewrite_key_repeated {
            splice_walking(view.doc, &self.edits, out)?;
        } else {
            splice_spans(view.doc.as_bytes(), &self.edits, out)?;
        }
        let len = (out.len() - start) as i32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }
}

fn allow_disk_use_change() -> FieldChange {
    FieldChange {
        field: "allowDiskUse",
        before: None,
        after: 1,
    }
}

fn bson_err(e: impl ToString) -> DecodeError {
    DecodeError::InvalidBson {
        opcode: "command",
        what: "body",
        reason: e.to_string(),
    }
}

/// A field to set: its key, its new value, and where the field stands
/// now (`None`: absent, append it).
#[derive(Debug, Clone, PartialEq)]
struct Edit {
    key: &'static str,
    value: Value,
    span: Option<(usize, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int32(i32),
    Int64(i64),
    Double(f64),
    True,
    /// A whole embedded document (explain's command with allowDiskUse).
    Document(Vec<u8>),
}

impl Edit {
    /// The element's length on the wire.
    fn len(&self) -> usize {
        let value = match &self.value {
            Value::Int32(_) => 4,
            Value::Int64(_) | Value::Double(_) => 8,
            Value::True => 1,
            Value::Document(d) => d.len(),
        };
        1 + self.key.len() + 1 + value
    }

    fn write(&self, out: &mut Vec<u8>) {
        let kind = match &self.value {
            Value::Int32(_) => ElementType::Int32,
            Value::Int64(_) => ElementType::Int64,
            Value::Double(_) => ElementType::Double,
            Value::True => ElementType::Boolean,
            Value::Document(_) => ElementType::EmbeddedDocument,
        };
        out.push(kind as u8);
        out.extend_from_slice(self.key.as_bytes());
        out.push(0);
        match &self.value {
            Value::Int32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Int64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Double(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::True => out.push(1),
            Value::Document(d) => out.extend_from_slice(d),
        }
    }
}

/// The value for a number, keeping the original type when it can hold the
/// value (int32 stays int32, int64 stays int64, double stays double); a new
/// field is int32 when it fits. A double that cannot hold the value exactly
/// (above 2^53) would round, possibly above the cap, so that value becomes
/// an int64.
fn number_value(kind: Option<ElementType>, v: i64) -> Value {
    let exact_double = (v as f64) as i128 == i128::from(v);
    match (kind, i32::try_from(v)) {
        (Some(ElementType::Double), _) if exact_double => Value::Double(v as f64),
        (Some(ElementType::Int64), _) | (_, Err(_)) => Value::Int64(v),
        (_, Ok(small)) => Value::Int32(small),
    }
}

/// `doc` with `allowDiskUse: true` appended (the caller checked it is absent).
fn with_allow_disk_use(doc: &[u8]) -> Vec<u8> {
    let edit = Edit {
        key: "allowDiskUse",
        value: Value::True,
        span: None,
    };
    let mut out = Vec::with_capacity(doc.len() + edit.len());
    out.extend_from_slice(&doc[..doc.len() - 1]);
    edit.write(&mut out);
    out.push(0);
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

/// Splices by the spans the view recorded: copy up to each replaced field,
/// write its new element, skip the old one; append the absent ones. The
/// length prefix is left for the caller to fill.
fn splice_spans(bytes: &[u8], edits: &[Edit], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let mut replaced: ArrayVec<&Edit, 2> = edits.iter().filter(|e| e.span.is_some()).collect();
    replaced.sort_by_key(|e| e.span.map(|s| s.0));
    out.extend_from_slice(&[0; 4]);
    let mut copied = 4;
    for edit in replaced {
        let Some((start, end)) = edit.span else {
            continue;
        };
        if start < copied || end > bytes.len() - 1 {
            return Err(bson_err("a rewritten field lies outside the document"));
        }
        out.extend_from_slice(&bytes[copied..start]);
        edit.write(out);
        copied = end;
    }
    out.extend_from_slice(&bytes[copied..bytes.len() - 1]);
    for edit in edits.iter().filter(|e| e.span.is_none()) {
        edit.write(out);
    }
    out.push(0);
    Ok(())
}

/// Copies `doc` element by element, replacing each edited key where it
/// stands, dropping repeats of an edited key (never leave two), and
/// appending the edited keys that were absent. Only used when the command
/// repeats maxTimeMS or allowDiskUse; the length prefix is the caller's.
fn splice_walking(doc: &RawDocument, edits: &[Edit], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let bytes = doc.as_bytes();
    out.extend_from_slice(&[0; 4]);
    let mut done = [false; 2];
    let mut offset = 4;
    for element in doc.iter_elements() {
        let element = element.map_err(bson_err)?;
        let key = element.key().as_str();
        let len = 1 + key.len() + 1 + element.size();
        let end = offset + len;
        if end > bytes.len() - 1 {
            return Err(bson_err("element runs past the end of the document"));
        }
        match edits.iter().position(|e| e.key == key) {
            Some(i) if !done[i] => {
                edits[i].write(out);
                done[i] = true;
            }
            // A repeat of an edited key: drop it.
            Some(_) => {}
            None => out.extend_from_slice(&bytes[offset..end]),
        }
        offset = end;
    }
    for (edit, done) in edits.iter().zip(done) {
        if !done {
            edit.write(out);
        }
    }
    out.push(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    /// The span splice (used unless a key repeats) and the walking splice
    /// must write the same bytes.
    #[test]
    fn span_and_walking_splices_agree() {
        let limits = Limits {
            default_max_time_ms: Some(5000),
            max_time_ms_cap: Some(10_000),
            allow_disk_use: true,
        };
        let docs = [
            rawdoc! { "find": "c", "filter": { "a": 1 }, "$db": "d" },
            rawdoc! { "aggregate": "c", "maxTimeMS": 0_i64, "pipeline": [], "$db": "d" },
            rawdoc! { "find": "c", "maxTimeMS": 60_000.0, "allowDiskUse": false, "$db": "d" },
            rawdoc! { "count": "c", "maxTimeMS": 99_999, "query": {}, "$db": "d" },
            rawdoc! { "explain": { "aggregate": "c", "pipeline": [] }, "verbosity": "q", "$db": "d" },
            rawdoc! { "explain": { "find": "c" }, "maxTimeMS": 20_000, "$db": "d" },
        ];
        for doc in &docs {
            let view = CommandView::parse(doc).expect("parses");
            let plan = plan(&view, &limits).expect("something changes");
            let mut by_span = Vec::new();
            splice_spans(doc.as_bytes(), &plan.edits, &mut by_span).expect("splices");
            let mut walked = Vec::new();
            splice_walking(doc, &plan.edits, &mut walked).expect("splices");
            assert_eq!(by_span, walked, "{doc:?}");
            let mut body = Vec::new();
            plan.write_body(&view, &mut body).expect("writes");
            let out = RawDocument::from_bytes(&body).expect("valid BSON");
            assert_eq!(
                out.iter().count(),
                doc.iter().count() + plan.edits.iter().filter(|e| e.span.is_none()).count()
            );
        }
    }
}
