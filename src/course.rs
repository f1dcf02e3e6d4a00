//! The student skeleton (docs/course.md). Solution regions in the Raft core
//! are marked
//!
//! ```text
//! // BEGIN SOLUTION <milestone>
//! ...the solution...
//! // SKELETON            (optional: what the student starts from instead)
//! // ...code, commented out...
//! // END SOLUTION
//! ```
//!
//! [`write_skeleton`] copies the project and replaces each region of the
//! chosen milestone, and of every later one, by its SKELETON lines
//! (uncommented) or, without them, by `todo!()`. The copy still compiles;
//! the milestone's tests fail until the student fills the regions in.

use std::fs;
use std::io;
use std::path::Path;

/// The milestones, in the order a course hands them out.
pub const MILESTONES: [&str; 5] = ["election", "replication", "persistence", "snapshots", "kv"];

const BEGIN: &str = "// BEGIN SOLUTION ";
const SKELETON: &str = "// SKELETON";
const END: &str = "// END SOLUTION";

/// What `write_skeleton` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub files_copied: usize,
    /// (file, milestone) of every region replaced
    pub regions_removed: Vec<(String, String)>,
}

/// Replace the regions of `milestones` in one source file's text. Errors name
/// the line of a malformed region.
pub fn strip_regions(
    text: &str,
    milestones: &[&str],
    file: &str,
) -> Result<(String, Vec<String>), String> {
    let mut out = String::new();
    let mut removed = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((number, line)) = lines.next() {
        let Some(milestone) = line.trim().strip_prefix(BEGIN) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let milestone = milestone.trim();
        if !MILESTONES.contains(&milestone) {
            return Err(format!(
                "{file}:{}: unknown milestone {milestone:?}",
                number + 1
            ));
        }
        let keep = !milestones.contains(&milestone);
        let indent = &line[..line.len() - line.trim_start().len()];
        let mut skeleton: Option<Vec<String>> = None;
        let mut closed = false;
        for (_, inner) in lines.by_ref() {
            let trimmed = inner.trim();
            if trimmed == END {
                closed = true;
                break;
            }
            if trimmed == SKELETON {
                skeleton = Some(Vec::new());
                continue;
            }
            match skeleton.as_mut() {
                Some(skeleton_lines) => {
                    let code = trimmed.strip_prefix("//").unwrap_or(trimmed);
                    skeleton_lines.push(code.strip_prefix(' ').unwrap_or(code).to_string());
                }
                None if keep => {
                    out.push_str(inner);
                    out.push('\n');
                }
                None => {}
            }
        }
        if !closed {
            return Err(format!(
                "{file}:{}: BEGIN SOLUTION without END SOLUTION",
                number + 1
            ));
        }
        if keep {
            continue;
        }
        removed.push(milestone.to_string());
        match skeleton {
            Some(skeleton_lines) => {
                for code in skeleton_lines {
                    if !code.is_empty() {
                        out.push_str(indent);
                        out.push_str(&code);
                    }
                    out.push('\n');
                }
            }
            None => {
                out.push_str(&format!(
                    "{indent}todo!(\"milestone {milestone}: write this part (docs/course.md)\")\n"
                ));
            }
        }
    }
    Ok((out, removed))
}

/// The milestones removed for a handout starting at `milestone` (it and every later one).
pub fn milestones_from(milestone: &str) -> Option<&'static [&'static str]> {
    let at = MILESTONES.iter().position(|&m| m == milestone)?;
    Some(&MILESTONES[at..])
}

/// Copy the project at `root` to `out` (which must not exist), with the
/// solution regions of `milestones` replaced.
pub fn write_skeleton(root: &Path, out: &Path, milestones: &[&str]) -> io::Result<Summary> {
    if out.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists; choose a new directory", out.display()),
        ));
    }
    let mut summary = Summary::default();
    copy_dir(root, root, out, milestones, &mut summary)?;
    Ok(summary)
}

fn copy_dir(
    root: &Path,
    dir: &Path,
    out: &Path,
    milestones: &[&str],
    summary: &mut Summary,
) -> io::Result<()> {
    fs::create_dir_all(out)?;
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let path = entry.path();
        if dir == root && matches!(name.to_str(), Some("target" | "data" | ".git")) {
            continue;
        }
        let target = out.join(&name);
        if entry.file_type()?.is_dir() {
            copy_dir(root, &path, &target, milestones, summary)?;
            continue;
        }
        summary.files_copied += 1;
        if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path)?;
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            let (stripped, removed) = strip_regions(&text, milestones, &relative)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            for milestone in removed {
                summary.regions_removed.push((relative.clone(), milestone));
            }
            fs::write(&target, stripped)?;
        } else {
            fs::copy(&path, &target)?;
        }
    }
    Ok(())
}

/// `raft-kv skeleton` flags.
#[derive(clap::Args, Debug)]
pub struct SkeletonArgs {
    /// Where to write the student copy (must not exist yet).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// The first milestone the students write: its regions and every later
    /// milestone's are removed. One of election, replication, persistence,
    /// snapshots, kv.
    #[arg(long, default_value = "election")]
    pub milestone: String,
    /// The project to copy (default: this checkout).
    #[arg(long, default_value = env!("CARGO_MANIFEST_DIR"))]
    pub from: std::path::PathBuf,
}

/// Run `raft-kv skeleton`; returns the exit code.
pub fn run_skeleton(args: SkeletonArgs) -> i32 {
    let Some(milestones) = milestones_from(&args.milestone) else {
        eprintln!(
            "raft-kv: error: unknown milestone {:?}; expected one of {}",
            args.milestone,
            MILESTONES.join(", ")
        );
        return 2;
    };
    match write_skeleton(&args.from, &args.out, milestones) {
        Ok(summary) => {
            println!(
                "wrote {} ({} files); removed {} solution regions of {}",
                args.out.display(),
                summary.files_copied,
                summary.regions_removed.len(),
                milestones.join(", ")
            );
            for (file, milestone) in &summary.regions_removed {
                println!("  {milestone:12} {file}");
            }
            0
        }
        Err(error) => {
            eprintln!("raft-kv: error: {error}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written with #> for // so that the skeleton of this file leaves it alone.
    const MARKED: &str = "fn a() -> u32 {
    #> BEGIN SOLUTION election
    1 + 1
    #> END SOLUTION
}
fn b() {
    let x = 1;
    #> BEGIN SOLUTION kv
    println!(\"{x}\");
    #> SKELETON
    #> let _ = x;
    #> END SOLUTION
}
";

    fn source() -> String {
        MARKED.replace("#>", "//")
    }

    #[test]
    fn regions_of_chosen_milestones_become_todo_or_their_skeleton() {
        let (out, removed) = strip_regions(&source(), &["election", "kv"], "f.rs").unwrap();
        assert!(out.contains("    todo!(\"milestone election"), "{out}");
        assert!(!out.contains("1 + 1"));
        assert!(out.contains("    let _ = x;\n"));
        assert!(!out.contains("println!"));
        assert!(!out.contains("SOLUTION"));
        assert_eq!(removed, ["election", "kv"]);
    }

    #[test]
    fn regions_of_other_milestones_keep_the_solution_without_markers() {
        let (out, removed) = strip_regions(&source(), &["kv"], "f.rs").unwrap();
        assert!(out.contains("    1 + 1\n"));
        assert!(!out.contains("SOLUTION") && !out.contains("SKELETON"));
        assert_eq!(removed, ["kv"]);
    }

    #[test]
    fn malformed_regions_are_refused_with_their_line() {
        let error = strip_regions("// BEGIN SOLUTION election\nx\n", &[], "f.rs").unwrap_err();
        assert!(error.starts_with("f.rs:1:"), "{error}");
        let error = strip_regions("// BEGIN SOLUTION nope\n// END SOLUTION\n", &[], "f.rs");
        assert!(error.unwrap_err().contains("unknown milestone"));
    }

    #[test]
    fn milestones_from_includes_every_later_one() {
        assert_eq!(
            milestones_from("persistence").unwrap(),
            ["persistence", "snapshots", "kv"]
        );
        assert!(milestones_from("nope").is_none());
    }
}
