//! The fields that carry member addresses in each reply, and how each is
//! rewritten. Every other element is copied as raw bytes, in order.

use super::splice::{bson_err, elements, has_any_key, DocWriter, Element};
use super::{lower, AddressMap, ReplyKind};
use crate::DecodeError;
use bson::raw::{RawBsonRef, RawDocument};
use bson::spec::ElementType;

/// The new body, or `None` when it would be byte-identical to `doc`.
pub(super) fn rewrite_body(
    doc: &RawDocument,
    kind: ReplyKind,
    map: &mut dyn AddressMap,
) -> Result<Option<Vec<u8>>, DecodeError> {
    if !names_members(doc, kind)? {
        return Ok(None);
    }
    // Addresses are short; most rewrites fit without growing.
    let mut out = Vec::with_capacity(doc.as_bytes().len() + 64);
    write_body(doc, kind, map, &mut out)?;
    Ok((out != doc.as_bytes()).then_some(out))
}

/// Whether `doc` has a top-level field that can name a member, so that a
/// reply without one (a mongos or standalone hello) is passed on without
/// writing anything.
pub(super) fn names_members(doc: &RawDocument, kind: ReplyKind) -> Result<bool, DecodeError> {
    let keys: &[&str] = match kind {
        ReplyKind::Hello => &["hosts", "passives", "arbiters", "primary", "me"],
        ReplyKind::ReplSetGetStatus => &["members", "syncSourceHost", "syncingTo"],
        ReplyKind::ReplSetGetConfig => &["config"],
    };
    has_any_key(doc, keys)
}

/// Appends the rewritten `doc` to `out`.
pub(super) fn write_body(
    doc: &RawDocument,
    kind: ReplyKind,
    map: &mut dyn AddressMap,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    match kind {
        ReplyKind::Hello => hello(doc, map, out),
        ReplyKind::ReplSetGetStatus => status(doc, map, out),
        ReplyKind::ReplSetGetConfig => config(doc, map, out),
    }
}

/// hello / isMaster: the member lists, `primary` and `me`.
fn hello(
    doc: &RawDocument,
    map: &mut dyn AddressMap,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let mut w = DocWriter::begin(out);
    for element in elements(doc) {
        let element = element?;
        match element.key() {
            key @ ("hosts" | "passives" | "arbiters") => {
                // A list that is not an array cannot be mapped, so none of
                // it is passed on; nor is an item that is not a string.
                let RawBsonRef::Array(list) = element.raw.value().map_err(bson_err)? else {
                    continue;
                };
                w.key(out, ElementType::Array, key);
                let mut items = DocWriter::begin(out);
                for item in list {
                    if let RawBsonRef::String(member) = item.map_err(bson_err)? {
                        if let Some(address) = map.advertise(&lower(member)) {
                            items.push_string(out, &address);
                        }
                    }
                }
                items.end(out);
            }
            "primary" => {
                if let Some(address) = mapped_string(&element, map) {
                    w.string(out, "primary", &address);
                }
            }
            "me" => w.string(out, "me", map.me()),
            _ => w.copy(out, &element),
        }
    }
    w.end(out);
    Ok(())
}

/// replSetGetStatus: `members[].name` (an unmapped member is removed),
/// `members[].syncSourceHost` and the top-level `syncSourceHost` (unmapped:
/// empty, as the server says when there is no sync source), and the same
/// for `syncingTo`, its name before 4.4.
fn status(
    doc: &RawDocument,
    map: &mut dyn AddressMap,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let mut w = DocWriter::begin(out);
    for element in elements(doc) {
        let element = element?;
        match element.key() {
            "members" => member_list(&element, "name", map, out, &mut w, status_member)?,
            key @ ("syncSourceHost" | "syncingTo") => sync_source(&element, key, map, out, &mut w),
            _ => w.copy(out, &element),
        }
    }
    w.end(out);
    Ok(())
}

fn status_member(
    doc: &RawDocument,
    name: &str,
    map: &mut dyn AddressMap,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let mut w = DocWriter::begin(out);
    for element in elements(doc) {
        let element = element?;
        match element.key() {
            "name" => w.string(out, "name", name),
            key @ ("syncSourceHost" | "syncingTo") => sync_source(&element, key, map, out, &mut w),
            _ => w.copy(out, &element),
        }
    }
    w.end(out);
    Ok(())
}

/// A sync source mapped, or emptied when it cannot be.
fn sync_source(
    element: &Element<'_>,
    key: &str,
    map: &mut dyn AddressMap,
    out: &mut Vec<u8>,
    w: &mut DocWriter,
) {
    let address = mapped_string(element, map);
    w.string(out, key, address.as_deref().unwrap_or(""));
}

/// replSetGetConfig: `config.members[].host`; an unmapped member is removed.
fn config(
    doc: &RawDocument,
    map: &mut dyn AddressMap,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let mut w = DocWriter::begin(out);
    for element in elements(doc) {
        let element = element?;
        let config = match element.key() {
            "config" => element.raw.value().map_err(bson_err)?.as_document(),
            _ => None,
        };
        match config {
            Some(config) => {
                w.key(out, ElementType::EmbeddedDocument, "config");
                let mut inner = DocWriter::begin(out);
                for element in elements(config) {
                    let element = element?;
                    match element.key() {
                        "members" => {
                            member_list(&element, "host", map, out, &mut inner, config_member)?
                        }
                        _ => inner.copy(out, &element),
                    }
                }
                inner.end(out);
            }
            None => w.copy(out, &element),
        }
    }
    w.end(out);
    Ok(())
}

fn config_member(
    doc: &RawDocument,
    host: &str,
    _map: &mut dyn AddressMap,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let mut w = DocWriter::begin(out);
    for element in elements(doc) {
        let element = element?;
        match element.key() {
            "host" => w.string(out, "host", host),
            _ => w.copy(out, &element),
        }
    }
    w.end(out);
    Ok(())
}

/// Writes one member's document, given its address already mapped.
type WriteMember =
    fn(&RawDocument, &str, &mut dyn AddressMap, &mut Vec<u8>) -> Result<(), DecodeError>;

/// Writes a `members` array whose documents name their member in
/// `address_key`, each through `write_member` with the mapped address.
/// A member whose address cannot be mapped, or is missing, is removed:
/// it must not reach a driver.
fn member_list(
    element: &Element<'_>,
    address_key: &str,
    map: &mut dyn AddressMap,
    out: &mut Vec<u8>,
    w: &mut DocWriter,
    write_member: WriteMember,
) -> Result<(), DecodeError> {
    let RawBsonRef::Array(list) = element.raw.value().map_err(bson_err)? else {
        // Not a list of members, but it may still name one: drop it.
        return Ok(());
    };
    w.key(out, ElementType::Array, element.key());
    let mut items = DocWriter::begin(out);
    for item in list {
        let RawBsonRef::Document(member) = item.map_err(bson_err)? else {
            continue;
        };
        let Some(RawBsonRef::String(address)) = member.get(address_key).map_err(bson_err)? else {
            continue;
        };
        let Some(address) = map.advertise(&lower(address)) else {
            continue;
        };
        items.index(out, ElementType::EmbeddedDocument);
        write_member(member, &address, map, out)?;
    }
    items.end(out);
    Ok(())
}

/// The element's string value, lower-cased and mapped; `None` when it is
/// not a string or cannot be mapped.
fn mapped_string(element: &Element<'_>, map: &mut dyn AddressMap) -> Option<String> {
    match element.raw.value() {
        Ok(RawBsonRef::String(member)) if !member.is_empty() => map.advertise(&lower(member)),
        _ => None,
    }
}
