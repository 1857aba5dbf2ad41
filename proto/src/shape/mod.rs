//! Query shapes: what is left of a command once every literal value is
//! replaced by a placeholder for its type, so that requests which differ
//! only in their values group together (the server's `$queryStats` idea).
//!
//! One walker ([`commands`]) reads the raw command and emits canonical
//! tokens into a [`sink::Sink`]. [`shape_hash`] feeds them to a stable
//! hasher without building anything; [`shape_doc`] builds the document the
//! same tokens describe. Both come from the same walk, so two commands have
//! equal shape documents exactly when they have equal hashes (barring a
//! 64-bit collision).
//!
//! # Placeholders
//! A literal becomes a string naming its type, as the server's debug
//! serialization does: `?string` (also symbol), `?number` (int32, int64,
//! double, decimal128), `?objectId`, `?date`, `?bool`, `?null`, `?binData`,
//! `?regex`, `?timestamp`, `?object` (a literal sub-document),
//! `?javascript`, `?minKey`, ... An array literal becomes `?array<T>` when
//! all its elements share the placeholder `T` (an array of arrays is
//! `?array<?array>`), and `?array<>` when it is empty or mixed.
//!
//! Operators, field names, field paths (`"$customerId"`), stage names and
//! identifiers that name things rather than hold data (`$lookup.from`,
//! `$unwind`'s path, `$count`'s name, `distinct`'s key, hints, collations)
//! are kept.
//!
//! # Bounds
//! Nesting deeper than [`MAX_DEPTH`] becomes `?depthLimit`, and a value the
//! walker cannot decode becomes `?invalid` (the rest of its container is
//! skipped): a hostile body costs at most one pass and yields a partial
//! shape, never a panic. An update or delete batch contributes at most
//! [`MAX_STATEMENTS`] statements (then `?more`), and a run of statements
//! with one shape counts once, so a bulk of 1000 alike updates has the
//! shape of one.

mod commands;
mod sink;
mod stages;
mod values;

#[cfg(test)]
mod tests;

use crate::command::CommandView;
use crate::op_msg::DocSequence;
use bson::RawDocumentBuf;
use std::fmt;

/// Deeper nesting than this (counted from the command's top level) is cut
/// off with `?depthLimit`: a peer controls the depth, the stack does not
/// grow with it.
pub const MAX_DEPTH: usize = 32;

/// Statements of one update or delete batch that enter its shape.
pub const MAX_STATEMENTS: usize = 16;

/// The hash of a query shape: XXH3-64 (seed 0) of the walker's canonical
/// token stream. The algorithm is specified and seedless, so a hash is the
/// same across restarts, machines and mongotap instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShapeHash(pub u64);

impl fmt::Display for ShapeHash {
    /// 16 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Whether `name` is a command with a shape (find, aggregate, count,
/// distinct, update, delete, findAndModify): a check on the name alone.
pub fn has_shape(name: &str) -> bool {
    commands::has_shape(name)
}

/// The shape hash of a command, or `None` for a command without a shape
/// (anything but find, aggregate, count, distinct, update, delete and
/// findAndModify). `sequences` are the OP_MSG's document sequences (pass
/// `&[]` for OP_QUERY): update and delete statements may travel there.
///
/// Cheap enough for every request: one pass over the raw BSON (update and
/// delete statements are read twice, see [`MAX_STATEMENTS`]) into a stack
/// buffer; only a shape of more than 512 token bytes allocates, once.
pub fn shape_hash(view: &CommandView<'_>, sequences: &[DocSequence<'_>]) -> Option<ShapeHash> {
    let mut hash = sink::HashSink::new();
    commands::walk(view, sequences, &mut hash)?;
    Some(hash.finish())
}

/// The shape of a command as a document, for display: equal for two
/// commands exactly when their [`shape_hash`]es are. `None` as for
/// `shape_hash`. Allocates: meant for the first time a hash is seen.
pub fn shape_doc(view: &CommandView<'_>, sequences: &[DocSequence<'_>]) -> Option<RawDocumentBuf> {
    let mut doc = sink::DocSink::new();
    commands::walk(view, sequences, &mut doc)?;
    Some(doc.finish())
}
