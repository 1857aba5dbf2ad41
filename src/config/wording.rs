//! Parse errors in words a user of the config file knows. serde names the
//! Rust type it wanted ("expected u64", "expected a sequence") and toml
//! gives a byte span but not the key; this module turns both into
//! `watch.slow_ms (line 2, column 11): invalid type: string "x", expected a
//! non-negative integer`.

use std::ops::Range;

/// One line: the key path when known, then where, then what is wrong.
pub fn describe(text: &str, key: Option<&str>, err: &toml::de::Error) -> String {
    let what = in_words(&err.message().trim().replace('\n', "; "));
    let at = err.span().map(|span| position(text, span));
    match (key, at) {
        (Some(key), Some((line, col))) => format!("{key} (line {line}, column {col}): {what}"),
        (Some(key), None) => format!("{key}: {what}"),
        (None, Some((line, col))) => format!("line {line}, column {col}: {what}"),
        (None, None) => what,
    }
}

/// 1-based line and column (in characters) of the span's start.
fn position(text: &str, span: Range<usize>) -> (usize, usize) {
    let start = span.start.min(text.len());
    // A span inside a multi-byte character cannot come from toml, but a
    // wrong column is better than a panic.
    let before = text.get(..start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// Replaces serde's Rust-flavoured names in "invalid type: X, expected Y"
/// and "invalid value: X, expected Y" with TOML words.
pub fn in_words(message: &str) -> String {
    // toml's answer when an enum key (rewrite.mode, log.format) holds a
    // number or a boolean; a wrong string lists the names instead.
    if message == "wanted string or table" {
        return "expected a string".into();
    }
    let (head, expected) = match message.rsplit_once(", expected ") {
        Some((head, expected)) => (head, Some(expected)),
        None => (message, None),
    };
    let head = match head.split_once(": ") {
        Some((kind, found)) if kind == "invalid type" || kind == "invalid value" => {
            format!("{kind}: {}", found_in_words(found))
        }
        _ => head.to_string(),
    };
    match expected {
        Some(e) => format!("{head}, expected {}", expected_in_words(e)),
        None => head,
    }
}

/// What the file held, as serde's `Unexpected` prints it.
fn found_in_words(found: &str) -> &str {
    match found {
        "sequence" => "an array",
        "map" => "a table",
        other => other,
    }
}

/// What the key needs, from the `expecting` text of serde's visitors.
fn expected_in_words(expected: &str) -> String {
    let words = match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a sequence" => "an array",
        "a map" => "a table",
        "option" => "a value",
        other if other.starts_with("struct ") => "a table",
        other => other,
    };
    words.to_string()
}
