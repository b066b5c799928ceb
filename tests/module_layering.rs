//! The modules of `src/` depend on each other one way only: the layering `src/lib.rs`
//! describes. Read from the sources: every `crate::` path outside `#[cfg(test)]` code, per
//! top-level module. No two modules may import each other, directly or in a loop.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The order of the layers, lowest first: a module may import only modules listed before
/// it. Kept in step with the table in `src/lib.rs`.
const LAYERS: [&str; 14] = [
    "protocol",
    "log_budget",
    "metrics",
    "runtime",
    "port_owner",
    "auth",
    "topic",
    "config",
    "tls",
    "spool",
    "bridge",
    "cluster",
    "broker",
    "server",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/bridge/lane.rs`: `bridge`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(name) => Some(name.to_string()),
        None => Some(first.to_string()),
    }
}

/// The code of a file before its first top-level `#[cfg(test)]`, without comments.
fn production_code(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let line = line.split("//").next().unwrap_or("");
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// The top-level modules `code` names through `crate::`: `crate::a::b`, and each first
/// segment of `crate::{a::x, b}`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut segment_start = true;
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && c == ',' {
                    segment_start = true;
                    continue;
                }
                if segment_start {
                    if c.is_alphanumeric() || c == '_' {
                        name.push(c);
                    } else if !name.is_empty() {
                        found.insert(std::mem::take(&mut name));
                        segment_start = false;
                    }
                }
            }
            if !name.is_empty() {
                found.insert(name);
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
        rest = after;
    }
    found.remove("self");
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        let code = production_code(&fs::read_to_string(&file).unwrap());
        let entry = graph.entry(module.clone()).or_default();
        for imported in imports(&code) {
            if imported != module {
                entry.insert(imported);
            }
        }
    }
    graph
}

#[test]
fn the_parser_finds_plain_and_grouped_paths() {
    let found = imports(
        "use crate::protocol::{A, B};\nuse crate::{bridge::x, config::{Y, Z}, runtime};\nlet m = crate::metrics::new();",
    );
    let expected: BTreeSet<String> = ["bridge", "config", "metrics", "protocol", "runtime"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn every_module_imports_only_modules_below_it() {
    let graph = graph();
    let rank = |name: &str| LAYERS.iter().position(|layer| *layer == name);
    let mut wrong = Vec::new();
    for (module, imported) in &graph {
        let Some(own) = rank(module) else {
            wrong.push(format!("{module}: not in LAYERS (add it where it belongs)"));
            continue;
        };
        for other in imported {
            match rank(other) {
                Some(theirs) if theirs < own => {}
                _ => wrong.push(format!("{module} imports {other}")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n  {}\ngraph: {graph:#?}",
        wrong.join("\n  ")
    );
}

#[test]
fn no_two_modules_import_each_other_even_in_a_loop() {
    let graph = graph();
    // Depth-first search for a cycle, reporting the first one found.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
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
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        let cycle = visit(module, &graph, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "import cycle: {}",
            cycle.unwrap().join(" -> ")
        );
    }
    // The bridge reports tickets and never reaches into the broker; the metrics own their
    // types.
    assert!(!graph["bridge"].contains("broker"), "{:?}", graph["bridge"]);
    assert!(graph["metrics"].is_empty(), "{:?}", graph["metrics"]);
}
