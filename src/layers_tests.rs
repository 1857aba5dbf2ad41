//! Practice 13, enforced: the top-level modules of `src/` import each other
//! one way only. Reads every `src/**/*.rs`, collects the references to
//! `crate::<top>` (in `use` lines, paths, `$crate::` in macros, grouped
//! `crate::{a, b}` imports, and `super::` chains that climb to the crate
//! root), and fails with the circle when the graph of top-level modules
//! has one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → the other top-level modules it names.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of each path in `rest`, which follows `crate::`: one
/// name, or each item of a `{a, b::c}` group.
fn first_segments(rest: &str) -> Vec<&str> {
    let Some(group) = rest.strip_prefix('{') else {
        return vec![ident(rest)];
    };
    let mut names = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                names.push(ident(group[start..].trim_start()));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                names.push(ident(group[start..].trim_start()));
                start = i + 1;
            }
            _ => {}
        }
    }
    names
}

/// The top-level modules `text` names. `depth` is how many `super::` lead
/// from this file's module to the crate root.
fn references(text: &str, depth: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // Join the lines without their `//` comments, so that a grouped import
    // spread over several lines reads as one.
    let code: String = text
        .lines()
        .map(|l| l.find("//").map_or(l, |at| &l[..at]))
        .collect::<Vec<_>>()
        .join(" ");
    for (at, _) in code.match_indices("crate::") {
        out.extend(
            first_segments(&code[at + "crate::".len()..])
                .into_iter()
                .map(str::to_string),
        );
    }
    for (at, _) in code.match_indices("super::") {
        // Only the start of a chain: `super::super::x` is counted once.
        if code[..at].ends_with("super::") {
            continue;
        }
        let mut rest = &code[at..];
        let mut ups = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
            ups += 1;
        }
        if ups >= depth {
            out.extend(first_segments(rest).into_iter().map(str::to_string));
        }
    }
    out
}

/// The import graph between the top-level modules of `src`.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let top = |path: &Path| -> String {
        let rel = path.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("a path");
        let name = first.as_os_str().to_string_lossy();
        name.strip_suffix(".rs").unwrap_or(&name).to_string()
    };
    let modules: BTreeSet<String> = files.iter().map(|p| top(p)).collect();
    let mut graph = Graph::new();
    for path in &files {
        let from = top(path);
        let rel = path.strip_prefix(src).expect("under src");
        // src/a.rs and src/a/mod.rs are crate::a, one `super::` below the
        // root; src/a/b.rs is crate::a::b, two.
        let mut depth = rel.components().count();
        if rel.file_name().is_some_and(|n| n == "mod.rs") {
            depth -= 1;
        }
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let edges = graph.entry(from.clone()).or_default();
        for to in references(&text, depth) {
            if to != from && modules.contains(&to) {
                edges.insert(to);
            }
        }
    }
    graph
}

/// A circle in `graph`, as the modules along it with the first repeated
/// at the end, or `None`.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn top_level_modules_import_each_other_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    // The scan must see the edges that exist, or it would pass vacuously.
    assert!(
        graph["proxy"].contains("observe") && graph["observe"].contains("config"),
        "the scan misses known imports: {graph:#?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import circle between top-level modules of src/: {}\n(see the layer order at the top of main.rs; every edge: {graph:#?})",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_scan_reads_groups_macros_and_climbing_supers() {
    let text = "use crate::{a, b::{C, D}};\n\
                $crate::c::m!();\n\
                // crate::commented\n\
                use super::super::e::F;\n\
                use super::G;\n";
    let found: Vec<String> = references(text, 2).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "e"]);
    let mut graph = Graph::new();
    graph.entry("x".into()).or_default().insert("y".into());
    graph.entry("y".into()).or_default().insert("z".into());
    assert_eq!(find_cycle(&graph), None);
    graph.entry("z".into()).or_default().insert("x".into());
    assert_eq!(find_cycle(&graph).expect("a circle"), ["x", "y", "z", "x"]);
}
