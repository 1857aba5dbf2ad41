//! A small reader of the Prometheus text format, enough to check
//! `/metrics` figures by value: every sample line as (name, labels, value).
//! Written here rather than borrowed from mongotap, so a bug in mongotap's
//! encoder cannot hide in the test's decoder.

#![allow(dead_code)]

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample line of `text` (comments and blank lines skipped). Panics
/// on a line it cannot read: a test must not pass on a scrape it misread.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_line(l).unwrap_or_else(|| panic!("unreadable metrics line: {l:?}")))
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, rest) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, rest)
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, BTreeMap::new(), rest)
        }
    };
    // A sample may carry a timestamp after the value; mongotap sends none.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"} rest` → the labels and `rest`; handles `\"`, `\\`, `\n`.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches(',');
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest.trim_start()));
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        s = &rest[end + 1..];
    }
}

/// The samples named `name` whose labels include every pair in `want`.
pub fn select<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// A histogram's cumulative bucket counts as (upper bound in µs, count),
/// ascending, `u64::MAX` for +Inf.
pub fn buckets_us(samples: &[Sample], family: &str, want: &[(&str, &str)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = select(samples, &format!("{family}_bucket"), want)
        .iter()
        .map(|s| {
            let le = &s.labels["le"];
            let bound = if le == "+Inf" {
                u64::MAX
            } else {
                let secs: f64 = le.parse().unwrap_or_else(|_| panic!("bad le {le:?}"));
                (secs * 1e6).round() as u64
            };
            (bound, s.value as u64)
        })
        .collect();
    out.sort();
    out
}

/// The one sample named `name` with these labels.
pub fn one(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let found = select(samples, name, want);
    assert_eq!(found.len(), 1, "{name} {want:?}: {found:?}");
    found[0].value
}
