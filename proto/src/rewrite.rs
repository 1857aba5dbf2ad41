//! Guardrail rewrites of a command body: inject or lower `maxTimeMS`, and
//! set `allowDiskUse` where the command accepts it.
//!
//! The new body is spliced from the original bytes: every element that is
//! not changed is copied byte for byte, the command name stays first, a
//! changed field is replaced where it stands (never duplicated), and a
//! changed number keeps its BSON type unless the new value does not fit.

use crate::command::{as_i64, CommandView};
use crate::DecodeError;
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

#[derive(Debug, Clone, PartialEq)]
pub struct Rewritten {
    /// The complete new body document.
    pub body: Vec<u8>,
    pub changes: Vec<FieldChange>,
    /// The maxTimeMS now in force, when there is one.
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
    if never_rewrite(view.name) {
        return Ok(None);
    }
    let mut changes = Vec::new();
    let mut edits: Vec<Edit> = Vec::new();

    // maxTimeMS: always the top-level field, for explain too.
    let current = view.doc.get("maxTimeMS").map_err(bson_err)?;
    let current_value = current.and_then(as_i64);
    let mut in_force = current_value.filter(|&v| v > 0);
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
        let kind = current.map(|c| c.element_type());
        edits.push(Edit {
            key: "maxTimeMS",
            value: number_bytes(kind, new),
        });
        changes.push(FieldChange {
            field: "maxTimeMS",
            before: current_value,
            after: new,
        });
        in_force = Some(new);
    }

    // allowDiskUse: on aggregate/find itself, or inside explain's command.
    if limits.allow_disk_use {
        if accepts_allow_disk_use(view.name) {
            if view.doc.get("allowDiskUse").map_err(bson_err)?.is_none() {
                edits.push(Edit {
                    key: "allowDiskUse",
                    value: (ElementType::Boolean, vec![1]),
                });
                changes.push(allow_disk_use_change());
            }
        } else if let Some(inner_view) = view.explain_view() {
            // An explained command that does not parse (`{explain: {}}`) is
            // the server's to reject; failing here would close the connection.
            let inner = inner_view.doc;
            let absent = inner.get("allowDiskUse").map_err(bson_err)?.is_none();
            if accepts_allow_disk_use(inner_view.name) && absent {
                let new_inner = splice(
                    inner,
                    &[Edit {
                        key: "allowDiskUse",
                        value: (ElementType::Boolean, vec![1]),
                    }],
                )?;
                edits.push(Edit {
                    key: "explain",
                    value: (ElementType::EmbeddedDocument, new_inner),
                });
                changes.push(allow_disk_use_change());
            }
        }
    }
    if edits.is_empty() {
        return Ok(None);
    }
    Ok(Some(Rewritten {
        body: splice(view.doc, &edits)?,
        changes,
        max_time_ms: in_force,
    }))
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

/// A field to set: its key, and its new type and value bytes.
struct Edit {
    key: &'static str,
    value: (ElementType, Vec<u8>),
}

/// The value bytes for a number, keeping the original type when it can
/// hold the value (int32 stays int32, int64 stays int64, double stays
/// double); a new field is int32 when it fits. A double that cannot hold
/// the value exactly (above 2^53) would round, possibly above the cap, so
/// that value becomes an int64.
fn number_bytes(kind: Option<ElementType>, v: i64) -> (ElementType, Vec<u8>) {
    let exact_double = (v as f64) as i128 == i128::from(v);
    match (kind, i32::try_from(v)) {
        (Some(ElementType::Double), _) if exact_double => {
            (ElementType::Double, (v as f64).to_le_bytes().to_vec())
        }
        (Some(ElementType::Int64), _) | (_, Err(_)) => {
            (ElementType::Int64, v.to_le_bytes().to_vec())
        }
        (_, Ok(small)) => (ElementType::Int32, small.to_le_bytes().to_vec()),
    }
}

/// Copies `doc` element by element, replacing each edited key where it
/// stands and appending the edited keys that were absent.
fn splice(doc: &RawDocument, edits: &[Edit]) -> Result<Vec<u8>, DecodeError> {
    let bytes = doc.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 32);
    out.extend_from_slice(&[0; 4]);
    let mut done = vec![false; edits.len()];
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
                write_element(&mut out, &edits[i]);
                done[i] = true;
            }
            // A duplicate of an edited key: drop it, never leave two.
            Some(_) => {}
            None => out.extend_from_slice(&bytes[offset..end]),
        }
        offset = end;
    }
    for (edit, done) in edits.iter().zip(done) {
        if !done {
            write_element(&mut out, edit);
        }
    }
    out.push(0);
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

fn write_element(out: &mut Vec<u8>, edit: &Edit) {
    out.push(edit.value.0 as u8);
    out.extend_from_slice(edit.key.as_bytes());
    out.push(0);
    out.extend_from_slice(&edit.value.1);
}
