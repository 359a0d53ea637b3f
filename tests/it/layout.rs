//! Development machine (tests): the layout rules of docs/ARCHITECTURE.md, checked on the source:
//! each file's first doc line names the qube it runs in, shared modules import no component,
//! components import only the layers below them, `dom0/` reaches `job/` only through `job::spec`
//! and `job::progress`, and programs use only the library.

use crate::support::REPO;
use std::path::{Path, PathBuf};

/// Components, lowest first, with the components (or `component::module` paths) each may use.
/// Everything else at the top of `src/` is shared and may use no component.
const COMPONENTS: &[(&str, &[&str])] = &[
    ("relay", &[]),
    ("agent", &[]),
    ("ssh", &["relay", "agent"]),
    ("job", &["relay", "agent", "ssh"]),
    ("dom0", &["relay", "job::spec", "job::progress"]),
];

/// What the first doc line may name before its first ':'.
const QUBES: &[&str] = &[
    "dom0",
    "sys-backup-mnt",
    "sys-backup",
    "ssh-backup",
    "Every qube",
    "Development machine",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&Path::new(REPO).join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(REPO).unwrap().to_string_lossy().into_owned();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The `prefix` paths a file's code (not its comments) uses: `crate::a::b` gives `a::b`,
/// `crate::{a, b::c}` gives `a` and `b::c`.
fn uses(text: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            rest = &rest[at + prefix.len()..];
            let path_chars = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let item: String = item.trim().chars().take_while(|&c| path_chars(c)).collect();
                    if !item.is_empty() {
                        found.push(item.trim_end_matches(':').to_string());
                    }
                }
            } else {
                let item: String = rest.chars().take_while(|&c| path_chars(c)).collect();
                found.push(item.trim_end_matches(':').to_string());
            }
        }
    }
    found
}

/// The component a path (`ssh::argv`, `relay`) belongs to, if any.
fn component_of(path: &str) -> Option<&'static str> {
    let first = path.split("::").next().unwrap_or("");
    COMPONENTS.iter().map(|(c, _)| *c).find(|c| *c == first)
}

#[test]
fn every_source_file_names_its_qube_in_its_first_doc_line() {
    for (file, text) in sources() {
        let first = text.lines().next().unwrap_or("");
        let head = first
            .strip_prefix("//! ")
            .and_then(|l| l.split(':').next())
            .unwrap_or("");
        assert!(
            QUBES.iter().any(|q| head.contains(q)),
            "{file}: the first line must be `//! QUBE: ...` naming one of {QUBES:?}, is {first:?}"
        );
    }
}

#[test]
fn shared_modules_import_no_component_and_components_only_lower_ones() {
    for (file, text) in sources() {
        let parts: Vec<&str> = file.split('/').collect();
        let area = match parts.as_slice() {
            ["src", "bin", ..] => continue,
            ["src", dir, _, ..] => Some(*dir),
            _ => None, // src/*.rs: shared
        };
        let allowed: &[&str] = match area {
            None => &[],
            Some(c) => {
                COMPONENTS
                    .iter()
                    .find(|(name, _)| *name == c)
                    .unwrap_or_else(|| panic!("{file}: folder {c} is not a component in this test"))
                    .1
            }
        };
        for used in uses(&text, "crate::") {
            let Some(target) = component_of(&used) else {
                continue; // a shared module
            };
            if Some(target) == area {
                continue;
            }
            assert!(
                allowed
                    .iter()
                    .any(|a| used == *a || used.starts_with(&format!("{a}::"))),
                "{file} uses crate::{used}; {} may use {allowed:?} (docs/ARCHITECTURE.md)",
                area.unwrap_or("a shared module")
            );
        }
    }
}

#[test]
fn programs_use_only_the_library() {
    for (file, text) in sources() {
        if !file.starts_with("src/bin/") {
            continue;
        }
        for line in text.lines() {
            let code = line.trim_start();
            assert!(
                !code.starts_with("mod ") && !code.starts_with("#[path"),
                "{file}: a program has no modules of its own, only the library: {line}"
            );
        }
        assert!(uses(&text, "crate::").is_empty(), "{file}");
    }
}

#[test]
fn the_import_scanner_sees_single_and_grouped_paths_and_skips_comments() {
    let text = "use crate::exit::{self, Program};\n// crate::ssh in a comment\n\
                use crate::{child, ssh::argv};\nlet x = crate::relay::relay(a, b);\n";
    assert_eq!(
        uses(text, "crate::"),
        ["exit", "child", "ssh::argv", "relay::relay"]
    );
}
