//! The student copy (`make skeleton`, src/bin/raft-kv-skeleton/) is a
//! student's handout, not the instructor's tree: these tests write the copy
//! of every milestone and read it as a student would. (This file stays out
//! of the copy: it needs the solution.)

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

// The skeleton generator is a binary of its own, not part of the library:
// its module is compiled into this test too.
#[path = "../src/bin/raft-kv-skeleton/course.rs"]
mod course;

use course::{
    find_regions, handout_path, milestones_from, solution_only_lines, write_skeleton, Handouts,
    INSTRUCTOR_ONLY, MILESTONES,
};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every file of a directory tree, as (relative path, text); binary files skipped.
fn files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(text) = fs::read_to_string(&path) {
                let relative = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((relative, text));
            }
        }
    }
    out
}

/// A handout names exactly the functions its milestone's regions are in:
/// one naming a function without a region, or missing one, fails here.
#[test]
fn each_handout_names_exactly_its_milestones_functions() {
    let regions = find_regions(root()).unwrap();
    for milestone in MILESTONES {
        assert!(
            regions.iter().any(|r| r.milestone == milestone),
            "no region of milestone {milestone}"
        );
    }
    let handouts = Handouts::read(root()).unwrap();
    handouts.check(&regions).unwrap();
}

/// For every milestone a course can start at: the copy has the student
/// README and the handouts of the milestones left to write, none of the
/// instructor's files, a marker naming the milestone at every emptied
/// region, and no line of the removed solutions anywhere — in code,
/// docs, or editor settings.
#[test]
fn the_copy_is_the_students_and_leaks_no_solution() {
    let handouts = Handouts::read(root()).unwrap();
    let solution_readme = fs::read_to_string(root().join("README.md")).unwrap();
    for (number, first) in MILESTONES.iter().enumerate() {
        let milestones = milestones_from(first).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("copy");
        let summary = write_skeleton(root(), &out, milestones).unwrap();
        let copy = files(&out);
        let text = |path: &str| {
            copy.iter()
                .find(|(p, _)| p == path)
                .map(|(_, t)| t.as_str())
        };

        assert_eq!(text("README.md"), Some(handouts.readme(first).as_str()));
        assert_ne!(text("README.md"), Some(solution_readme.as_str()));
        for path in INSTRUCTOR_ONLY {
            assert!(text(path).is_none(), "{first}: the copy has {path}");
        }
        for (i, m) in MILESTONES.iter().enumerate() {
            let handout = text(&handout_path(m));
            assert_eq!(
                handout.is_some(),
                i >= number,
                "{first}: handout of {m} present: {}",
                handout.is_some()
            );
            if let Some(handout) = handout {
                assert!(handout.contains(&format!("make test-{m}")));
            }
        }

        let markers: usize = copy
            .iter()
            .filter(|(p, _)| p.ends_with(".rs"))
            .map(|(_, t)| {
                t.lines()
                    .filter(|l| l.trim().starts_with("// TODO milestone "))
                    .count()
            })
            .sum();
        assert_eq!(
            markers,
            summary.regions_removed.len(),
            "{first}: one marker per emptied region"
        );
        for region in &summary.regions_removed {
            assert!(milestones.contains(&region.milestone.as_str()));
        }

        let solution = solution_only_lines(root(), milestones).unwrap();
        let mut leaks = Vec::new();
        assert!(solution.len() > 5, "{first}: {solution:?}");
        for (path, content) in &copy {
            assert!(
                !content.lines().any(|l| {
                    let l = l.trim();
                    l.starts_with("// BEGIN SOLUTION") || l == "// END SOLUTION"
                }),
                "{first}: {path} still has a region marker"
            );
            // A whole line of the solution; or, long enough not to be a
            // common expression, quoted within another line (docs).
            let lines: BTreeSet<_> = content.lines().map(str::trim).collect();
            leaks.extend(
                solution
                    .iter()
                    .filter(|line| {
                        lines.contains(line.as_str())
                            || (line.len() >= 30 && content.contains(line.as_str()))
                    })
                    .map(|line| format!("{first}: {path}: {line}")),
            );
        }
        assert!(
            leaks.is_empty(),
            "lines of the removed solution in the copy:\n{}",
            leaks.join("\n")
        );
    }
}
