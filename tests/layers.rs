//! The module map in `src/lib.rs` tells the truth about the imports (issue 16): a top-level module
//! imports only modules listed below it (never one above, nor one on its own line), every
//! top-level module is on the map, and no two modules inside one import each other.
//!
//! Read from the source text, not from rustc, so it needs nothing but `std`: a `crate::x` path in
//! code (comments, doc links included, are left out) is an import of `x`, whether it is in a `use`,
//! a group `crate::{x, y::z}`, a path in an expression, or an attribute such as sqlx's
//! `migrator = "crate::store::..."`. Inside one module, a direct child's `super::y` or
//! `crate::m::y` is an import of its sibling `y`; unit tests (an inline `#[cfg(test)] mod tests`,
//! where `super` means the file itself, or a `tests.rs` of their own) are left out of that check,
//! since tests may share helpers across siblings. Not seen: an import through a parent's
//! re-export (`super::Name` where the parent re-exports `y::Name`); keep re-exports few for that
//! reason too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Imports that contradict the map while work in flight removes them; empty since issue 16's parts
/// merged. Each must still happen: once one is gone the test fails until its entry is deleted
/// here, so the list only shrinks. `(importer, imported, why)`; for a sibling cycle, the two module paths in order.
const PENDING: &[(&str, &str, &str)] = &[];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// `text` without its comments: `//` to the end of the line, doc comments included (a doc link
/// to `crate::x` is not an import). The crate writes no `/* */` comments.
fn code(text: &str) -> String {
    text.lines()
        .map(|line| line.find("//").map_or(line, |at| &line[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `code` up to its unit tests (`#[cfg(test)]` followed by `mod`), where `super` means the file
/// itself rather than its parent.
fn before_tests(code: &str) -> &str {
    let lines: Vec<&str> = code.lines().collect();
    let mut offset = 0;
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or("");
        if line.trim() == "#[cfg(test)]" && next.starts_with("mod ") {
            return &code[..offset];
        }
        offset += line.len() + 1;
    }
    code
}

fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first name of each path after `prefix` in `code`: `prefix a::b` gives `a`, and a group
/// `prefix {a::b, c::{d, e}}` gives `a` and `c`. Only where `prefix` starts a path: not
/// `$crate::`, not the second `super::` of `super::super::`.
fn names_after(code: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(prefix) {
        let start = from + at;
        from = start + prefix.len();
        if code[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':')
        {
            continue;
        }
        let rest = &code[from..];
        let Some(group) = rest.strip_prefix('{') else {
            names.push(ident(rest).to_owned());
            continue;
        };
        let (mut depth, mut expect_name) = (0usize, true);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => expect_name = true,
                c if c.is_whitespace() => {}
                c if expect_name && depth == 0 && (c.is_alphabetic() || c == '_') => {
                    names.push(ident(&group[i..]).to_owned());
                    expect_name = false;
                }
                _ => expect_name = false,
            }
        }
    }
    names.retain(|name| !name.is_empty());
    names
}

/// The map: each line of `lib.rs`'s `# Layout` list is a layer, top first; its modules are the
/// links before the line's first `:`.
fn layers() -> Vec<Vec<String>> {
    let lib = read(&src().join("lib.rs"));
    let docs = lib.lines().map_while(|line| line.strip_prefix("//!"));
    let mut in_layout = false;
    let mut layers = Vec::new();
    for line in docs {
        let line = line.trim_start();
        if line.starts_with('#') {
            in_layout = line == "# Layout";
        } else if in_layout && let Some(item) = line.strip_prefix("- ") {
            let head = item.split(':').next().unwrap_or("");
            let modules = head
                .split("[`")
                .skip(1)
                .filter_map(|link| link.split_once("`]").map(|(name, _)| name.to_owned()))
                .collect();
            layers.push(modules);
        }
    }
    assert!(!layers.is_empty(), "src/lib.rs has no `# Layout` list");
    layers
}

/// The top-level modules `lib.rs` declares.
fn declared() -> BTreeSet<String> {
    code(&read(&src().join("lib.rs")))
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod").or(line.trim().strip_prefix("mod")))
        .map(|rest| rest.trim().trim_end_matches(';').to_owned())
        .collect()
}

/// Which top-level module a file under `src/` belongs to.
fn top_level(file: &Path) -> String {
    let relative = file.strip_prefix(src()).unwrap();
    let first = relative.components().next().unwrap().as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// `(importer, imported) -> files`, between top-level modules.
fn imports() -> BTreeMap<(String, String), BTreeSet<String>> {
    let modules = declared();
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src()) {
        let name = file.file_name().unwrap();
        if file.parent() == Some(src().as_path()) && (name == "lib.rs" || name == "main.rs") {
            continue;
        }
        let from = top_level(&file);
        for to in names_after(&code(&read(&file)), "crate::") {
            if to != from && modules.contains(&to) {
                let shown = file.strip_prefix(src()).unwrap().display().to_string();
                edges.entry((from.clone(), to)).or_default().insert(shown);
            }
        }
    }
    edges
}

fn pending(from: &str, to: &str) -> bool {
    PENDING.iter().any(|(a, b, _)| *a == from && *b == to)
}

#[test]
fn every_top_level_module_is_on_the_map_exactly_once() {
    let mut seen = BTreeMap::<String, usize>::new();
    for module in layers().into_iter().flatten() {
        *seen.entry(module).or_default() += 1;
    }
    let declared = declared();
    let missing: Vec<_> = declared.iter().filter(|m| !seen.contains_key(*m)).collect();
    let unknown: Vec<_> = seen.keys().filter(|m| !declared.contains(*m)).collect();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).map(|(m, _)| m).collect();
    assert!(
        missing.is_empty() && unknown.is_empty() && twice.is_empty(),
        "src/lib.rs's map: not on it {missing:?}; on it but not a module {unknown:?}; on it twice {twice:?}"
    );
}

#[test]
fn no_module_imports_one_listed_above_it_or_beside_it() {
    let layers = layers();
    let layer_of: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, layer)| layer.iter().map(move |m| (m.as_str(), i)))
        .collect();
    let imports = imports();
    // The parser must see the imports that are there, or this test proves nothing.
    for expected in [("grpc", "issuer"), ("issuer", "store"), ("store", "domain")] {
        let expected = (expected.0.to_owned(), expected.1.to_owned());
        assert!(
            imports.contains_key(&expected),
            "{expected:?} not found: is the parser broken?"
        );
    }
    let mut wrong = Vec::new();
    for ((from, to), files) in &imports {
        let (Some(above), Some(below)) = (layer_of.get(from.as_str()), layer_of.get(to.as_str())) else {
            continue; // not on the map: the test above says so
        };
        if below <= above && !pending(from, to) {
            let place = if below == above { "beside" } else { "above" };
            wrong.push(format!("{from} imports {to}, listed {place} it, in {files:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the imports contradict src/lib.rs's map (move the code, or the map if the map is wrong):\n{}",
        wrong.join("\n")
    );
}

/// Each module's direct children, and which of their siblings each imports.
fn sibling_imports() -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut dirs = vec![];
    let mut todo = vec![src()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path.clone());
                dirs.push(path);
            }
        }
    }
    for dir in dirs {
        let module = dir
            .strip_prefix(src())
            .unwrap()
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("::");
        let mut children = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                children.insert(name);
            } else if let Some(stem) = name.strip_suffix(".rs")
                && stem != "mod"
            {
                children.insert(stem.to_owned());
            }
        }
        for child in &children {
            let own = dir.join(child);
            // (file, how many `super::` reach the parent from the file's own code)
            let files: Vec<(PathBuf, usize)> = if own.is_dir() {
                rust_files(&own)
                    .into_iter()
                    .map(|f| {
                        let depth = f.strip_prefix(&own).unwrap().components().count();
                        let up = if f.file_name().unwrap() == "mod.rs" {
                            depth
                        } else {
                            depth + 1
                        };
                        (f, up)
                    })
                    .collect()
            } else {
                vec![(dir.join(format!("{child}.rs")), 1)]
            };
            for (file, up) in files {
                // Test modules of their own (`mod tests;` in `tests.rs`) are left out, as inline
                // ones are (`before_tests`): tests may share helpers across siblings.
                if file.file_name().is_some_and(|name| name == "tests.rs") {
                    continue;
                }
                let code = code(&read(&file));
                let mut names = names_after(before_tests(&code), &format!("crate::{module}::"));
                names.extend(
                    names_after(before_tests(&code), &"super::".repeat(up))
                        .into_iter()
                        .filter(|name| name != "super"),
                );
                for sibling in names.into_iter().filter(|n| n != child && children.contains(n)) {
                    let shown = file.strip_prefix(src()).unwrap().display().to_string();
                    edges
                        .entry((format!("{module}::{child}"), format!("{module}::{sibling}")))
                        .or_default()
                        .insert(shown);
                }
            }
        }
    }
    edges
}

#[test]
fn no_two_modules_inside_one_import_each_other() {
    let edges = sibling_imports();
    // The parser must see the sibling imports that are there, or this test proves nothing.
    let expected = ("issuer::rotate".to_owned(), "issuer::rotation".to_owned());
    assert!(
        edges.contains_key(&expected),
        "{expected:?} not found: is the parser broken?"
    );
    let mut cycles = Vec::new();
    for ((a, b), files) in &edges {
        if a < b
            && let Some(back) = edges.get(&(b.clone(), a.clone()))
            && !pending(a, b)
        {
            cycles.push(format!("{a} ({files:?}) <-> {b} ({back:?})"));
        }
    }
    assert!(
        cycles.is_empty(),
        "modules that import each other (move what both need below both):\n{}",
        cycles.join("\n")
    );
}

#[test]
fn every_pending_exception_still_happens() {
    let imports = imports();
    let siblings = sibling_imports();
    let gone: Vec<_> = PENDING
        .iter()
        .filter(|(a, b, _)| {
            let key = (a.to_string(), b.to_string());
            let back = (b.to_string(), a.to_string());
            let cycle = siblings.contains_key(&key) && siblings.contains_key(&back);
            !imports.contains_key(&key) && !cycle
        })
        .map(|(a, b, why)| format!("{a} -> {b} ({why})"))
        .collect();
    assert!(
        gone.is_empty(),
        "fixed, so delete from PENDING in tests/layers.rs:\n{}",
        gone.join("\n")
    );
}
