//! docs/paper-map.md names a file and functions for every rule of the
//! paper; this test fails when a named file or function no longer exists,
//! so the map stays true as the code moves.

use std::fs;
use std::path::Path;

#[test]
fn every_file_and_function_in_the_paper_map_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = fs::read_to_string(root.join("docs/paper-map.md")).expect("docs/paper-map.md");
    let mut checked = 0;
    let mut missing = Vec::new();
    for line in map.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | rule | `file` | `fn`, `fn` |
        if cells.len() < 4 || !cells[2].starts_with("`src/") {
            continue;
        }
        let file = cells[2].trim_matches('`');
        let source = fs::read_to_string(root.join(file))
            .unwrap_or_else(|_| panic!("paper-map names {file}, which does not exist"));
        for item in cells[3].split(',').map(|s| s.trim().trim_matches('`')) {
            // `Type::method` → method; `struct Name` → struct Name
            let needle = match item.strip_prefix("struct ") {
                Some(name) => format!("struct {name} "),
                None => format!("fn {}(", item.rsplit("::").next().unwrap()),
            };
            let generic = needle.replace('(', "<");
            if !source.contains(&needle) && !source.contains(&generic) {
                missing.push(format!("{file}: {item}"));
            }
            checked += 1;
        }
    }
    assert!(
        checked > 40,
        "the map should name many functions; found {checked}"
    );
    assert!(
        missing.is_empty(),
        "paper-map names missing code: {missing:#?}"
    );
}
