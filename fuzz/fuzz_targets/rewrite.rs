//! The rewriter on arbitrary command bodies with arbitrary `Limits`.
//!
//! The input's first 17 bytes choose the limits (which are set, and their
//! values, including 0 and negatives that config validation would refuse);
//! the rest becomes a command document twice: built element by element from
//! a dictionary of the keys the rewriter cares about (so the fuzzer reaches
//! maxTimeMS, allowDiskUse and explain quickly), and taken as raw bytes.
//!
//! Invariants, whenever `rewrite` returns a new body:
//! - it parses, and every element in it does;
//! - the command name is still the first key;
//! - there is no duplicate `maxTimeMS`: exactly one when it changed, and
//!   never more than the client sent;
//! - a changed maxTimeMS is positive, at most the cap, never above a
//!   positive value the client sent, and getMore never gets one;
//! - every element the rewriter does not own is copied byte for byte, in
//!   order;
//! - rewriting the result again changes nothing.
#![no_main]

use bson::RawDocument;
use libfuzzer_sys::fuzz_target;
use mongotap_proto::command::as_i64;
use mongotap_proto::rewrite::{never_rewrite, rewrite, Limits};
use mongotap_proto::CommandView;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_at_checked(17) else {
        return;
    };
    let int = |b: &[u8]| i64::from_le_bytes(b.try_into().expect("8 bytes"));
    let limits = Limits {
        default_max_time_ms: (head[0] & 1 != 0).then(|| small(int(&head[1..9]), head[0] & 8 != 0)),
        max_time_ms_cap: (head[0] & 2 != 0).then(|| small(int(&head[9..17]), head[0] & 16 != 0)),
        allow_disk_use: head[0] & 4 != 0,
    };
    let mut input = Input(rest);
    let built = document(&mut input, 0, true);
    check(&built, &limits);
    check(rest, &limits);
});

/// Mostly realistic millisecond values, sometimes anything below 9e18 in
/// magnitude, negatives and 0 included. (The proto reads an integral double
/// at or past ±9e18 as not a number, as its proptest oracle does; the server
/// takes maxTimeMS only up to 2^31-1, so a rule past that means nothing.)
fn small(v: i64, wild: bool) -> i64 {
    if wild {
        v % 9_000_000_000_000_000_000
    } else {
        v % 100_000
    }
}

fn check(bytes: &[u8], limits: &Limits) {
    let Ok(doc) = RawDocument::from_bytes(bytes) else {
        return;
    };
    let Ok(view) = CommandView::parse(doc) else {
        return;
    };
    let Ok(Some(new)) = rewrite(&view, limits) else {
        return;
    };
    assert!(
        !never_rewrite(view.name),
        "{} must never be rewritten",
        view.name
    );
    let out = RawDocument::from_bytes(&new.body).expect("rewrite emits a valid document");
    let elements: Vec<_> = out
        .iter_elements()
        .map(|e| e.expect("every element of the rewritten body parses"))
        .collect();
    let keys: Vec<&str> = elements.iter().map(|e| e.key().as_str()).collect();
    assert_eq!(keys.first().copied(), Some(view.name), "command name first");

    let count = |d: &RawDocument, key: &str| {
        d.iter()
            .filter(|kv| kv.as_ref().is_ok_and(|(k, _)| k.as_str() == key))
            .count()
    };
    let before = count(doc, "maxTimeMS");
    let after = keys.iter().filter(|k| **k == "maxTimeMS").count();
    let changed = new.changes.iter().find(|c| c.field == "maxTimeMS");
    match changed {
        Some(c) => {
            assert_eq!(after, 1, "exactly one maxTimeMS after changing it");
            assert!(c.after > 0);
            if let Some(cap) = limits.max_time_ms_cap {
                assert!(c.after <= cap, "maxTimeMS {} above the cap {cap}", c.after);
            }
            if let Some(b) = c.before.filter(|&b| b > 0) {
                assert!(
                    c.after <= b,
                    "raised the client's maxTimeMS {b} to {}",
                    c.after
                );
            }
            assert_ne!(view.name, "getMore", "maxTimeMS injected into getMore");
            let value = out.get("maxTimeMS").expect("readable").expect("present");
            assert_eq!(
                as_i64(value),
                Some(c.after),
                "the value written is the one reported"
            );
        }
        None => assert_eq!(after, before, "maxTimeMS copies changed without a change"),
    }
    assert!(after <= before.max(1), "a duplicate maxTimeMS appeared");

    // Everything the rewriter does not own is copied as it was, in order.
    let owned = |k: &str| matches!(k, "maxTimeMS" | "allowDiskUse" | "explain");
    let untouched = |d: &RawDocument| -> Vec<Vec<u8>> {
        let bytes = d.as_bytes();
        let mut offset = 4;
        let mut out = Vec::new();
        for e in d.iter_elements().map_while(Result::ok) {
            let len = 1 + e.key().as_str().len() + 1 + e.size();
            if !owned(e.key().as_str()) {
                out.push(bytes[offset..offset + len].to_vec());
            }
            offset += len;
        }
        out
    };
    assert_eq!(
        untouched(doc),
        untouched(out),
        "an element was changed or reordered"
    );

    // A second pass has nothing left to do.
    let again = CommandView::parse(out).expect("the rewritten body parses as a command");
    match rewrite(&again, limits) {
        Ok(None) => {}
        Ok(Some(twice)) => panic!("a second rewrite changed {:?}", twice.changes),
        Err(e) => panic!("a second rewrite failed: {e}"),
    }
}

/// The unread fuzz input.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in out.iter_mut() {
            *b = self.byte();
        }
        out
    }
}

const NAMES: &[&str] = &[
    "find",
    "aggregate",
    "count",
    "distinct",
    "explain",
    "getMore",
    "hello",
    "insert",
    "update",
    "saslStart",
    "killCursors",
    "findAndModify",
];
const KEYS: &[&str] = &[
    "maxTimeMS",
    "allowDiskUse",
    "explain",
    "$db",
    "pipeline",
    "filter",
    "cursor",
    "comment",
    "collection",
    "verbosity",
    "lsid",
    "batchSize",
];

/// A BSON document from the input: a command name first (at the top level),
/// then elements whose keys mostly come from `KEYS`.
fn document(input: &mut Input<'_>, depth: u32, top: bool) -> Vec<u8> {
    let mut body = Vec::new();
    if top || input.byte() & 1 == 0 {
        let name = NAMES[input.byte() as usize % NAMES.len()];
        let first = input.byte();
        element(&mut body, name, first, input, depth);
    }
    let n = input.byte() % 8;
    for _ in 0..n {
        let k = input.byte();
        let key = if k < 240 {
            KEYS[k as usize % KEYS.len()].to_string()
        } else {
            format!("k{}", k - 240)
        };
        let kind = input.byte();
        element(&mut body, &key, kind, input, depth);
    }
    let mut doc = ((body.len() + 5) as i32).to_le_bytes().to_vec();
    doc.extend(body);
    doc.push(0);
    doc
}

fn element(out: &mut Vec<u8>, key: &str, kind: u8, input: &mut Input<'_>, depth: u32) {
    let mut push = |t: u8, value: &[u8]| {
        out.push(t);
        out.extend_from_slice(key.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
    };
    match kind % 10 {
        0 => push(0x10, &input.bytes::<4>()),
        1 => push(0x12, &input.bytes::<8>()),
        2 => {
            // Doubles: integral values, and sometimes any bit pattern.
            let raw = input.bytes::<8>();
            let v = if raw[0] & 1 == 0 {
                f64::from(i32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]))
            } else {
                f64::from_le_bytes(raw)
            };
            push(0x01, &v.to_le_bytes());
        }
        3 => push(0x08, &[input.byte() & 1]),
        4 => push(0x0A, &[]),
        5 => {
            let s = b"coll";
            let mut v = ((s.len() + 1) as i32).to_le_bytes().to_vec();
            v.extend_from_slice(s);
            v.push(0);
            push(0x02, &v);
        }
        6 | 7 if depth < 2 => {
            let d = document(input, depth + 1, kind % 10 == 6);
            push(0x03, &d);
        }
        8 if depth < 2 => {
            // An array: a document whose keys are "0", "1", ...
            let inner = document(input, depth + 1, false);
            push(0x04, &inner);
        }
        _ => push(0x10, &input.bytes::<4>()),
    }
}
