//! The direction of the dependencies (docs/architecture.md): the Raft core
//! knows nothing of the key-value store, the storage, the server, the CLI or
//! the network libraries; the storage knows nothing of the key-value store or
//! the wire protocol. Read from the source, so that a `use` that breaks the
//! rule fails here rather than quietly coming back.

use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The lines of `file` that name one of `forbidden` as a path (comments
/// left out), as "file:line: text".
fn offending_lines(file: &Path, forbidden: &[&str]) -> Vec<String> {
    let text = fs::read_to_string(file).unwrap();
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for path in forbidden {
            let named = code.contains(&format!("{path}::"))
                || code.contains(&format!("{path};"))
                || code.contains(&format!("{path} as"))
                || code.contains(&format!("{path}::{{"));
            if named {
                found.push(format!(
                    "{}:{}: {}",
                    file.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    found
}

fn check(dir: &str, forbidden: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let found: Vec<String> = sources(&root)
        .iter()
        .flat_map(|file| offending_lines(file, forbidden))
        .collect();
    assert!(
        found.is_empty(),
        "{dir} must not depend on {forbidden:?}, but:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_raft_core_depends_on_nothing_outside_it() {
    check(
        "src/raft",
        &[
            "crate::kv",
            "crate::storage",
            "crate::server",
            "crate::cli",
            "crate::config",
            "crate::proto",
            "crate::sim",
            "tonic",
            "prost",
            "tokio",
        ],
    );
}

#[test]
fn the_storage_knows_neither_the_key_value_store_nor_the_wire() {
    check(
        "src/storage",
        &[
            "crate::kv",
            "crate::proto",
            "crate::server",
            "crate::cli",
            "tonic",
        ],
    );
}

#[test]
fn the_cli_does_not_reach_into_the_server() {
    check("src/cli", &["crate::server"]);
}

/// The check itself: a forbidden path is found wherever it is written.
#[test]
fn a_forbidden_use_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.rs");
    fs::write(
        &file,
        "use crate::kv::KvStore;\n// crate::kv:: in a comment\nfn f() { crate::kv::validate(); }\n",
    )
    .unwrap();
    assert_eq!(offending_lines(&file, &["crate::kv"]).len(), 2);
}

/// No function in the core is longer than about a screen (60 lines, the
/// skeleton's comments included, with a little slack), so that each reads
/// in one sitting beside its sentence of the paper.
#[test]
fn no_function_in_the_core_is_longer_than_a_screen() {
    const LIMIT: usize = 65;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/raft");
    let mut long = Vec::new();
    for file in sources(&root) {
        let text = fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let trimmed = line.trim_start();
            let is_fn = ["fn ", "pub fn ", "pub(super) fn ", "pub(crate) fn "]
                .iter()
                .any(|p| trimmed.starts_with(p));
            // A declaration, or a body on one line (`fn flush(&mut self) {}`).
            let one_line = [";", "{}"].iter().any(|end| line.trim_end().ends_with(end));
            if is_fn && !one_line {
                let indent = line.len() - trimmed.len();
                let close = format!("{}}}", " ".repeat(indent));
                let end = (i + 1..lines.len())
                    .find(|&j| lines[j].starts_with(&close))
                    .unwrap_or(lines.len() - 1);
                let length = end - i + 1;
                if length > LIMIT {
                    long.push(format!("{}:{}: {length} lines", file.display(), i + 1));
                }
                i = end;
            }
            i += 1;
        }
    }
    assert!(
        long.is_empty(),
        "functions over {LIMIT} lines:\n{}",
        long.join("\n")
    );
}
