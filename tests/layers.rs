//! The library's layers, checked from its own source: `api` ← `core` ← `runtime` ← `controller` ←
//! `operator`, with `authz` beside the controllers on `api`, `core` and `runtime` only. No file
//! imports a layer above its own, no two files import each other (directly or round a longer
//! circle), and the pure layers (`api`, `core`) never reach for an API client, a watch, tokio or
//! the clock.
//!
//! Paths are read as text: every `crate::` path and every `super::` path in code (comments are
//! left out). A grouped `use crate::{a, b}` would hide its parts from this check and is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A file's layer, from its path under `src/`; `None` for the binaries and `lib.rs` (the top).
fn layer(file: &str) -> Option<&'static str> {
    let first = file.split('/').next()?;
    Some(match first {
        "api" => "api",
        "core" => "core",
        "runtime" => "runtime",
        "controller" => "controller",
        "authz" => "authz",
        "operator.rs" => "operator",
        _ => return None,
    })
}

/// What each layer may import besides itself.
fn may_import(from: &str, to: &str) -> bool {
    let allowed: &[&str] = match from {
        "api" => &[],
        "core" => &["api"],
        "runtime" => &["api", "core"],
        "controller" => &["api", "core", "runtime"],
        "authz" => &["api", "core", "runtime"],
        "operator" => &["api", "core", "runtime", "controller"],
        _ => return true,
    };
    from == to || allowed.contains(&to)
}

/// Words a pure layer must not use: I/O against the API server, the async runtime, the clock.
const IMPURE: [&str; 7] = [
    "kube::Api",
    "kube::Client",
    "kube::runtime",
    "tokio",
    "Timestamp::now",
    "Instant::now",
    "SystemTime",
];

/// The code of `text`, without comments (line comments; block comments are not used here).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal (a URL) is rare enough in this tree to ignore.
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module path of the file `file` (relative to `src/`): `core/token/plan.rs` → `core::token::plan`.
fn module_of(file: &str) -> Vec<String> {
    let trimmed = file.trim_end_matches(".rs");
    let mut parts: Vec<String> = trimmed.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Every module path `file`'s code names, absolute: `crate::a::b` and `super::…` resolved.
fn paths_named(file: &str, code: &str) -> Result<Vec<Vec<String>>, String> {
    let module = module_of(file);
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for (at, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        // A word that only ends in `crate` or `super` (`tokenmint_crate::`) is not a path root.
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let rest = &code[at..];
        let mut segments: Vec<&str> = Vec::new();
        let mut tail = rest;
        loop {
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            segments.push(&tail[..end]);
            tail = &tail[end..];
            match tail.strip_prefix("::") {
                Some(next) if next.starts_with('{') && segments == ["crate"] => {
                    return Err(format!(
                        "{file}: a grouped `use crate::{{…}}` hides what it imports; one path per use"
                    ));
                }
                Some(next)
                    if next
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_') =>
                {
                    tail = next;
                }
                _ => break,
            }
        }
        let mut absolute = match segments.first() {
            Some(&"crate") => Vec::new(),
            Some(&"super") => module.clone(),
            _ => continue,
        };
        let mut rest = &segments[1..];
        if segments[0] == "super" {
            absolute.pop();
            while rest.first() == Some(&"super") {
                absolute.pop();
                rest = &rest[1..];
            }
        }
        absolute.extend(rest.iter().map(|s| (*s).to_owned()));
        found.push(absolute);
    }
    Ok(found)
}

/// The file a module path lands in: the longest prefix of it that is a file of `files`.
fn file_of(path: &[String], files: &BTreeSet<String>) -> Option<String> {
    (1..=path.len()).rev().find_map(|n| {
        let stem = path[..n].join("/");
        [format!("{stem}.rs"), format!("{stem}/mod.rs")]
            .into_iter()
            .find(|candidate| files.contains(candidate))
    })
}

/// What is wrong with the tree `sources` (path under `src/` → text): one line per finding.
fn findings(sources: &BTreeMap<String, String>) -> Vec<String> {
    let files: BTreeSet<String> = sources.keys().cloned().collect();
    let mut wrong = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in sources {
        let code = code(text);
        let Some(from) = layer(file) else { continue };
        if matches!(from, "api" | "core") {
            for word in IMPURE {
                if code.contains(word) {
                    wrong.push(format!(
                        "{file}: the {from} layer is pure but uses `{word}`"
                    ));
                }
            }
        }
        let named = match paths_named(file, &code) {
            Ok(named) => named,
            Err(e) => {
                wrong.push(e);
                continue;
            }
        };
        for path in named {
            let Some(target) = file_of(&path, &files) else {
                continue;
            };
            if let Some(to) = layer(&target)
                && !may_import(from, to)
            {
                wrong.push(format!(
                    "{file}: the {from} layer imports `{}` from the {to} layer above it",
                    path.join("::")
                ));
            }
            if target != *file {
                edges.entry(file.clone()).or_default().insert(target);
            }
        }
    }
    wrong.extend(circles(&edges));
    wrong
}

/// Every circle of imports between files, once each.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit(
        file: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|f| f == file) {
            let mut circle = stack[at..].to_vec();
            circle.push(file.to_owned());
            found.push(format!("import circle: {}", circle.join(" -> ")));
            return;
        }
        if !done.insert(file.to_owned()) {
            return;
        }
        stack.push(file.to_owned());
        for next in edges.get(file).into_iter().flatten() {
            visit(next, edges, stack, done, found);
        }
        stack.pop();
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for file in edges.keys() {
        visit(file, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

fn read_tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(relative, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn no_import_runs_up_a_layer_or_round_a_circle_and_the_core_stays_pure() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = read_tree(&src);
    for must in [
        "api/mod.rs",
        "core/mod.rs",
        "runtime/mod.rs",
        "controller/mod.rs",
    ] {
        assert!(
            sources.contains_key(must),
            "src/{must} is missing: the layers moved?"
        );
    }
    let wrong = findings(&sources);
    assert!(wrong.is_empty(), "layer rule broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_catches_an_upward_import_a_circle_an_impure_core_and_a_group() {
    let tree = |files: &[(&str, &str)]| -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
            .collect()
    };
    let upward = tree(&[
        ("core/plan.rs", "use crate::runtime::cache::TokenCache;"),
        ("runtime/cache.rs", ""),
    ]);
    assert_eq!(findings(&upward).len(), 1, "{:?}", findings(&upward));
    let commented = tree(&[
        ("core/plan.rs", "// see crate::runtime::cache::TokenCache"),
        ("runtime/cache.rs", ""),
    ]);
    assert!(findings(&commented).is_empty());
    let circle = tree(&[
        ("runtime/a.rs", "use crate::runtime::b::X;"),
        ("runtime/b.rs", "fn f() { super::a::y() }"),
    ]);
    assert!(
        findings(&circle)
            .iter()
            .any(|f| f.starts_with("import circle")),
        "{:?}",
        findings(&circle)
    );
    let impure = tree(&[("core/x.rs", "let now = Timestamp::now();")]);
    assert_eq!(findings(&impure).len(), 1);
    let authz = tree(&[
        ("authz/mod.rs", "use crate::controller::token::run;"),
        ("controller/token.rs", ""),
    ]);
    assert_eq!(findings(&authz).len(), 1);
    let grouped = tree(&[("runtime/a.rs", "use crate::{core, api};")]);
    assert_eq!(findings(&grouped).len(), 1);
    let fine = tree(&[
        ("controller/token.rs", "use crate::core::token::plan::Plan;"),
        (
            "core/token/plan.rs",
            "use crate::api::ApiToken; use super::secret::Held;",
        ),
        ("core/token/secret.rs", ""),
        ("api/mod.rs", ""),
    ]);
    assert!(findings(&fine).is_empty(), "{:?}", findings(&fine));
}
