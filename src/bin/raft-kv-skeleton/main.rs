//! `raft-kv-skeleton` (run as `raft-kv skeleton`): writes the student copy
//! of the project, with the solution regions of the chosen milestones
//! removed (docs/course.md; the regions and the copy are in `course.rs`).
//! It is a binary of its own, not part of the `raft_kv` library or of the
//! `raft-kv` binary: `raft-kv skeleton ARGS` runs this binary, which
//! `cargo build --release` puts beside it. tests/course.rs includes
//! `course.rs` as a module of its own.

mod course;

use clap::Parser;

use course::{milestones_from, write_skeleton, MILESTONES};

const EXIT_CODES: &str = "\
Exit codes:
  0  written
  2  any error: one line on stderr, starting 'raft-kv: error:'";

fn main() {
    let args: SkeletonArgs = raft_kv::cli::parse_or_exit();
    std::process::exit(run_skeleton(args));
}

/// Write a student copy of the project with solution regions removed (docs/course.md).
#[derive(Parser, Debug)]
#[command(name = "raft-kv-skeleton", after_help = EXIT_CODES)]
struct SkeletonArgs {
    /// Where to write the student copy (must not exist yet).
    #[arg(long)]
    out: std::path::PathBuf,
    /// The first milestone the students write: its regions and every later
    /// milestone's are removed. One of election, replication, persistence,
    /// snapshots, kv, membership.
    #[arg(long, default_value = "election")]
    milestone: String,
    /// The project to copy (default: this checkout).
    #[arg(long, default_value = env!("CARGO_MANIFEST_DIR"))]
    from: std::path::PathBuf,
}

/// Run `raft-kv skeleton`; returns the exit code.
fn run_skeleton(args: SkeletonArgs) -> i32 {
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
            for region in &summary.regions_removed {
                println!(
                    "  {:12} {}:{} {}",
                    region.milestone,
                    region.file,
                    region.line,
                    region.function.as_deref().unwrap_or("(imports)")
                );
            }
            0
        }
        Err(error) => {
            eprintln!("raft-kv: error: {error}");
            2
        }
    }
}
