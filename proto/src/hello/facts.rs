//! What a hello reply says about the member that sent it and the set it
//! belongs to, read in one pass over its top-level keys.

use super::lower;
use crate::command::as_bool;
use bson::raw::{RawBsonRef, RawDocument};

/// The role a member claims in its hello reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemberState {
    /// `isWritablePrimary` (or the legacy `ismaster`) is true.
    Primary,
    /// `secondary` is true and the member is not hidden.
    Secondary,
    /// `arbiterOnly` is true.
    Arbiter,
    /// `hidden` is true: a secondary drivers must not be told about.
    Hidden,
    /// None of the above: a member starting up, recovering or removed, a
    /// standalone or a mongos.
    #[default]
    Unknown,
}

impl MemberState {
    /// The state as `/topology` and log lines spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Primary => "primary",
            MemberState::Secondary => "secondary",
            MemberState::Arbiter => "arbiter",
            MemberState::Hidden => "hidden",
            MemberState::Unknown => "unknown",
        }
    }
}

/// The facts of a hello reply, with addresses as the set names them
/// (lower-cased, before any mapping).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HelloFacts {
    pub set_name: Option<String>,
    pub state: MemberState,
    /// The address the member knows itself by.
    pub me: Option<String>,
    /// `hosts`, `passives` and `arbiters`, in that order, without repeats:
    /// the members a driver would connect to.
    pub members: Vec<String>,
}

/// Reads the facts of a hello reply. Fields of the wrong type or with a
/// malformed value are ignored, and reading stops where the document's
/// framing breaks: nothing here fails.
/// A reply that is not a hello allocates nothing.
pub fn hello_facts(doc: &RawDocument) -> HelloFacts {
    let mut facts = HelloFacts::default();
    let (mut primary, mut secondary, mut arbiter, mut hidden) = (false, false, false, false);
    let is_true = |value| as_bool(value) == Some(true);
    for element in doc.iter_elements().map_while(Result::ok) {
        let Ok(value) = element.value() else {
            continue;
        };
        match element.key().as_str() {
            "setName" => facts.set_name = value.as_str().map(str::to_owned),
            "isWritablePrimary" | "ismaster" => primary |= is_true(value),
            "secondary" => secondary = is_true(value),
            "arbiterOnly" => arbiter = is_true(value),
            "hidden" => hidden = is_true(value),
            "me" => facts.me = value.as_str().map(|me| lower(me).into_owned()),
            "hosts" | "passives" | "arbiters" => {
                let Some(list) = value.as_array() else {
                    continue;
                };
                for item in list.into_iter().map_while(Result::ok) {
                    if let RawBsonRef::String(address) = item {
                        let address = lower(address);
                        if !facts.members.iter().any(|m| *m == address) {
                            facts.members.push(address.into_owned());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    // A hidden member also reports `secondary: true`; it must not be
    // mistaken for one drivers may read from.
    facts.state = if primary {
        MemberState::Primary
    } else if hidden {
        MemberState::Hidden
    } else if secondary {
        MemberState::Secondary
    } else if arbiter {
        MemberState::Arbiter
    } else {
        MemberState::Unknown
    };
    facts
}
