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
//! chosen milestone, and of every later one, by a `TODO milestone` marker
//! and its SKELETON lines (uncommented) or, without them, `todo!()`. The
//! copy still compiles, without warnings; the milestone's tests fail until
//! the student fills the regions in.
//!
//! The copy is the student's, not the instructor's: the files of
//! [`INSTRUCTOR_ONLY`] stay behind, and its README.md and `handout/*.md` are
//! written from [`HANDOUTS`], whose list of functions per milestone must
//! match the functions that hold that milestone's regions (checked when the
//! copy is written, and by tests/course.rs).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

/// The milestones, in the order a course hands them out.
pub const MILESTONES: [&str; 6] = [
    "election",
    "replication",
    "persistence",
    "snapshots",
    "kv",
    "membership",
];

/// Files the student copy leaves out: the instructor's notes, the source of
/// the handouts (the copy gets them written out), and the tests of the
/// skeleton itself, which need the solution.
pub const INSTRUCTOR_ONLY: [&str; 3] = ["docs/course.md", "docs/handouts.md", "tests/course.rs"];

/// The source of the student README and of one handout per milestone.
pub const HANDOUTS: &str = "docs/handouts.md";

const BEGIN: &str = "// BEGIN SOLUTION ";
const SKELETON: &str = "// SKELETON";
const END: &str = "// END SOLUTION";

/// One marked region of a source file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub file: String,
    /// 1-based line of its BEGIN marker
    pub line: usize,
    pub milestone: String,
    /// the function it is in; None for a region outside any (imports)
    pub function: Option<String>,
    /// the solution's lines, as written
    pub solution: Vec<String>,
    /// the stand-in's lines, uncommented; None: `todo!()`
    pub skeleton: Option<Vec<String>>,
    indent: String,
}

/// A source file as lines of plain text and regions.
enum Piece {
    Line(String),
    Region(Region),
}

/// 1 for election, 2 for replication, ...
pub fn milestone_number(milestone: &str) -> usize {
    MILESTONES
        .iter()
        .position(|&m| m == milestone)
        .map_or(0, |i| i + 1)
}

/// Where the copy holds the handout of `milestone`.
pub fn handout_path(milestone: &str) -> String {
    format!("handout/{}-{milestone}.md", milestone_number(milestone))
}

/// The name of the function declared on `line`, if it declares one.
fn declared_function(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        if word == "fn" {
            let name: String = words
                .next()?
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            return (!name.is_empty()).then_some(name);
        }
        if word.starts_with("//") {
            return None;
        }
    }
    None
}

fn parse(text: &str, file: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    // The innermost function opened above, with its indentation: a region
    // belongs to it if the region is indented deeper.
    let mut function: Option<(usize, String)> = None;
    let mut lines = text.lines().enumerate();
    while let Some((number, line)) = lines.next() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let Some(milestone) = line.trim().strip_prefix(BEGIN) else {
            if let Some(name) = declared_function(line) {
                function = Some((indent.len(), name));
            }
            pieces.push(Piece::Line(line.to_string()));
            continue;
        };
        let milestone = milestone.trim();
        if !MILESTONES.contains(&milestone) {
            return Err(format!(
                "{file}:{}: unknown milestone {milestone:?}",
                number + 1
            ));
        }
        let mut region = Region {
            file: file.to_string(),
            line: number + 1,
            milestone: milestone.to_string(),
            function: function
                .as_ref()
                .filter(|(depth, _)| *depth < indent.len())
                .map(|(_, name)| name.clone()),
            solution: Vec::new(),
            skeleton: None,
            indent: indent.to_string(),
        };
        let mut closed = false;
        for (_, inner) in lines.by_ref() {
            let trimmed = inner.trim();
            if trimmed == END {
                closed = true;
                break;
            }
            if trimmed == SKELETON {
                region.skeleton = Some(Vec::new());
                continue;
            }
            match region.skeleton.as_mut() {
                Some(skeleton_lines) => {
                    let code = trimmed.strip_prefix("//").unwrap_or(trimmed);
                    skeleton_lines.push(code.strip_prefix(' ').unwrap_or(code).to_string());
                }
                None => region.solution.push(inner.to_string()),
            }
        }
        if !closed {
            return Err(format!(
                "{file}:{}: BEGIN SOLUTION without END SOLUTION",
                number + 1
            ));
        }
        pieces.push(Piece::Region(region));
    }
    Ok(pieces)
}

/// The regions of one source file's text.
pub fn regions(text: &str, file: &str) -> Result<Vec<Region>, String> {
    Ok(parse(text, file)?
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Region(region) => Some(region),
            Piece::Line(_) => None,
        })
        .collect())
}

/// What marks a removed region in the copy, so that every emptied place
/// says which milestone fills it and where its handout is.
fn marker(region: &Region) -> String {
    let m = &region.milestone;
    // A stand-in that only names the given helpers (`let _ = ...`, which
    // also keeps the compiler from calling them unused) or ends in todo!()
    // is not code to keep.
    let is_code = |line: &String| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with("//") && !line.starts_with("let _ =")
    };
    let works = |lines: &Vec<String>| {
        lines.iter().any(is_code) && !lines.iter().any(|l| l.contains("todo!("))
    };
    let what = match (&region.function, &region.skeleton) {
        (None, _) => "the imports your code needs go here",
        (_, Some(lines)) if works(lines) => {
            "replace this stand-in, which keeps the earlier milestones working"
        }
        _ => "write this part",
    };
    format!(
        "// TODO milestone {} ({m}), {}: {what}.",
        milestone_number(m),
        handout_path(m)
    )
}

/// Replace the regions of `milestones` in one source file's text, each by
/// its marker and stand-in; keep the others' solutions, without markers.
/// Returns the new text and the regions replaced. Errors name the line of a
/// malformed region.
pub fn strip_regions(
    text: &str,
    milestones: &[&str],
    file: &str,
) -> Result<(String, Vec<Region>), String> {
    let mut out = String::new();
    let mut removed = Vec::new();
    for piece in parse(text, file)? {
        let region = match piece {
            Piece::Line(line) => {
                out.push_str(&line);
                out.push('\n');
                continue;
            }
            Piece::Region(region) => region,
        };
        if !milestones.contains(&region.milestone.as_str()) {
            for line in &region.solution {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        let indent = &region.indent;
        out.push_str(&format!("{indent}{}\n", marker(&region)));
        match &region.skeleton {
            Some(lines) => {
                for code in lines.iter().filter(|l| !l.is_empty()) {
                    out.push_str(&format!("{indent}{code}\n"));
                }
            }
            None => out.push_str(&format!(
                "{indent}todo!(\"milestone {} ({}): {} — {}\")\n",
                milestone_number(&region.milestone),
                region.milestone,
                region.function.as_deref().unwrap_or("?"),
                handout_path(&region.milestone),
            )),
        }
        removed.push(region);
    }
    Ok((out, removed))
}

/// The milestones removed for a handout starting at `milestone` (it and every later one).
pub fn milestones_from(milestone: &str) -> Option<&'static [&'static str]> {
    let at = MILESTONES.iter().position(|&m| m == milestone)?;
    Some(&MILESTONES[at..])
}

/// Every `.rs` file under `root` (but `target/`, `data/`, `.git/`), as
/// (path relative to `root`, text), in a stable order.
pub fn rust_sources(root: &Path) -> io::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    walk(root, root, &mut |relative, path| {
        if path.extension().is_some_and(|e| e == "rs") {
            files.push((relative.to_string(), fs::read_to_string(path)?));
        }
        Ok(())
    })?;
    Ok(files)
}

/// Every region in the project at `root`.
pub fn find_regions(root: &Path) -> io::Result<Vec<Region>> {
    let mut all = Vec::new();
    for (file, text) in rust_sources(root)? {
        all.extend(regions(&text, &file).map_err(invalid)?);
    }
    Ok(all)
}

fn invalid(error: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

fn walk(
    root: &Path,
    dir: &Path,
    visit: &mut dyn FnMut(&str, &Path) -> io::Result<()>,
) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if dir == root && matches!(entry.file_name().to_str(), Some("target" | "data" | ".git")) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            walk(root, &path, visit)?;
        } else {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            visit(&relative.display().to_string(), &path)?;
        }
    }
    Ok(())
}

/// The lines only the solution of `milestones` has: every line of their
/// regions that no other part of the project's Rust code has (outside
/// those regions), trimmed, and long enough to be telling. None of them
/// may appear anywhere in a student copy that starts at those milestones.
#[allow(dead_code)] // Only tests/course.rs, which includes this module, calls it.
pub fn solution_only_lines(root: &Path, milestones: &[&str]) -> io::Result<BTreeSet<String>> {
    let mut elsewhere = BTreeSet::new();
    let mut solution = BTreeSet::new();
    for (file, text) in rust_sources(root)? {
        for piece in parse(&text, &file).map_err(invalid)? {
            match piece {
                Piece::Line(line) => {
                    elsewhere.insert(line.trim().to_string());
                }
                Piece::Region(region) => {
                    let removed = milestones.contains(&region.milestone.as_str());
                    for line in &region.solution {
                        if removed {
                            solution.insert(line.trim().to_string());
                        } else {
                            elsewhere.insert(line.trim().to_string());
                        }
                    }
                    for line in region.skeleton.iter().flatten() {
                        elsewhere.insert(line.trim().to_string());
                    }
                }
            }
        }
    }
    Ok(solution
        .into_iter()
        .filter(|line| line.len() >= 16 && !elsewhere.contains(line))
        .collect())
}

/// The student's README and handouts, as read from [`HANDOUTS`].
#[derive(Debug)]
pub struct Handouts {
    /// the README template
    readme: String,
    /// per milestone: (title, text after its heading)
    milestones: Vec<(String, String, String)>,
}

impl Handouts {
    /// Parse the source: `# README`, then `# Milestone NAME: Title` per
    /// milestone, in order; other headings are part of the section they
    /// are in. Whatever precedes `# README` is for the instructor.
    pub fn parse(text: &str) -> Result<Handouts, String> {
        let mut readme = None;
        let mut milestones: Vec<(String, String, String)> = Vec::new();
        let mut current: Option<&mut String> = None;
        for line in text.lines() {
            if let Some(heading) = line.strip_prefix("# ") {
                if heading == "README" {
                    current = Some(readme.insert(String::new()));
                } else if let Some(rest) = heading.strip_prefix("Milestone ") {
                    let (name, title) = rest
                        .split_once(": ")
                        .ok_or_else(|| format!("{HANDOUTS}: {line:?} has no title"))?;
                    milestones.push((name.to_string(), title.to_string(), String::new()));
                    current = milestones.last_mut().map(|(_, _, body)| body);
                }
                if heading == "README" || heading.starts_with("Milestone ") {
                    continue;
                }
            }
            if let Some(body) = current.as_mut() {
                body.push_str(line);
                body.push('\n');
            }
        }
        let names: Vec<_> = milestones
            .iter()
            .map(|(name, _, _)| name.as_str())
            .collect();
        if names != MILESTONES {
            return Err(format!(
                "{HANDOUTS}: milestones {names:?}, expected {MILESTONES:?} in that order"
            ));
        }
        Ok(Handouts {
            readme: readme.ok_or_else(|| format!("{HANDOUTS}: no \"# README\" section"))?,
            milestones,
        })
    }

    pub fn read(root: &Path) -> io::Result<Handouts> {
        let text = fs::read_to_string(root.join(HANDOUTS)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{HANDOUTS}: {e} (make skeleton runs in the instructor's tree)"),
            )
        })?;
        Handouts::parse(&text).map_err(invalid)
    }

    fn milestone(&self, milestone: &str) -> &(String, String, String) {
        &self.milestones[milestone_number(milestone) - 1]
    }

    /// The (file, function) pairs the handout of `milestone` says the
    /// student writes: its bullets "- `file` `function`: ...".
    pub fn functions(&self, milestone: &str) -> BTreeSet<(String, String)> {
        let (_, _, body) = self.milestone(milestone);
        body.lines()
            .filter_map(|line| {
                let parts: Vec<_> = line.strip_prefix("- `")?.splitn(4, '`').collect();
                match parts[..] {
                    [file, " ", function, rest] if rest.starts_with(':') => {
                        Some((file.to_string(), function.to_string()))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Check every handout against the regions: each names exactly the
    /// functions that hold its milestone's regions.
    pub fn check(&self, regions: &[Region]) -> Result<(), String> {
        let mut problems = Vec::new();
        for milestone in MILESTONES {
            let named = self.functions(milestone);
            let found: BTreeSet<_> = regions
                .iter()
                .filter(|r| r.milestone == milestone)
                .filter_map(|r| Some((r.file.clone(), r.function.clone()?)))
                .collect();
            for (file, function) in named.difference(&found) {
                problems.push(format!(
                    "the {milestone} handout names {file} `{function}`, which has no {milestone} region"
                ));
            }
            for (file, function) in found.difference(&named) {
                problems.push(format!(
                    "{file} `{function}` has a {milestone} region the {milestone} handout does not name"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{HANDOUTS}: {}", problems.join("; ")))
        }
    }

    /// The handout of `milestone`: its text, then the tests that grade it,
    /// each with the first sentence of its doc comment, read from
    /// `tests/<milestone>.rs` so that the list cannot fall behind.
    pub fn handout(&self, milestone: &str, tests_source: &str) -> String {
        let (name, title, body) = self.milestone(milestone);
        let number = milestone_number(name);
        let mut out = format!("# Milestone {number}: {title}\n{body}");
        out.push_str(&format!(
            "\n## The tests (`tests/{name}.rs`)\n\nEach runs on the simulated cluster; \
             `make test-{name}` runs them all, `cargo test --profile course --test {name} NAME` one.\n\n"
        ));
        for (test, doc) in test_functions(tests_source) {
            out.push_str(&format!("- `{test}`: {doc}\n"));
        }
        out
    }

    /// The student README, for a copy whose first milestone to write is
    /// `first`: `{{milestones}}` becomes the table of the milestones to
    /// write, `{{given}}` a line on those already solved, `{{first}}` the
    /// first one's name and `{{first_handout}}` its handout.
    pub fn readme(&self, first: &str) -> String {
        let start = milestone_number(first);
        let mut table = String::from("| # | Milestone | Handout | Tests |\n|---|---|---|---|\n");
        for (name, title, _) in &self.milestones[start - 1..] {
            table.push_str(&format!(
                "| {} | {title} | [{path}]({path}) | `make test-{name}` |\n",
                milestone_number(name),
                path = handout_path(name)
            ));
        }
        let given: Vec<_> = self.milestones[..start - 1]
            .iter()
            .map(|(name, title, _)| format!("{} ({name})", title.to_lowercase()))
            .collect();
        let given = if given.is_empty() {
            String::new()
        } else {
            format!(
                "Already written for you, as in the finished system: {}. Their tests \
                 (`make test-{}`…) pass now and must keep passing.\n",
                given.join(", "),
                self.milestones[0].0
            )
        };
        self.readme
            .replace("{{milestones}}", &table)
            .replace("{{given}}", &given)
            .replace("{{first_handout}}", &handout_path(first))
            .replace("{{first}}", first)
    }
}

/// The `#[test]` functions of a test file, in order, with the first
/// sentence of each one's doc comment.
pub fn test_functions(source: &str) -> Vec<(String, String)> {
    let mut tests = Vec::new();
    let mut doc = String::new();
    let mut is_test = false;
    for line in source.lines().map(str::trim) {
        if let Some(text) = line.strip_prefix("///") {
            doc.push_str(text.trim());
            doc.push(' ');
        } else if line == "#[test]" {
            is_test = true;
        } else if let Some(name) = declared_function(line) {
            if is_test {
                let end = doc.find(". ").map_or(doc.trim_end().len(), |i| i + 1);
                tests.push((name, doc[..end].trim().to_string()));
            }
            doc.clear();
            is_test = false;
        } else if !line.starts_with("#[") {
            doc.clear();
        }
    }
    tests
}

/// What `write_skeleton` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub files_copied: usize,
    /// every region replaced
    pub regions_removed: Vec<Region>,
}

/// Copy the project at `root` to `out` (which must not exist), with the
/// solution regions of `milestones` (a suffix of [`MILESTONES`]) replaced,
/// the instructor's files left out, and the student's README and handouts
/// written.
pub fn write_skeleton(root: &Path, out: &Path, milestones: &[&str]) -> io::Result<Summary> {
    if out.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists; choose a new directory", out.display()),
        ));
    }
    let handouts = Handouts::read(root)?;
    handouts.check(&find_regions(root)?).map_err(invalid)?;
    let mut summary = Summary::default();
    fs::create_dir_all(out)?;
    walk(root, root, &mut |relative, path| {
        if INSTRUCTOR_ONLY.contains(&relative) {
            return Ok(());
        }
        let target = out.join(relative);
        fs::create_dir_all(target.parent().expect("a file has a parent"))?;
        summary.files_copied += 1;
        if relative == "README.md" {
            let first = milestones.first().copied().unwrap_or("kv");
            return fs::write(&target, handouts.readme(first));
        }
        if path.extension().is_none_or(|e| e != "rs") {
            fs::copy(path, &target)?;
            return Ok(());
        }
        let text = fs::read_to_string(path)?;
        let (stripped, removed) = strip_regions(&text, milestones, relative).map_err(invalid)?;
        summary.regions_removed.extend(removed);
        fs::write(&target, stripped)
    })?;
    for &milestone in milestones {
        let tests = fs::read_to_string(root.join(format!("tests/{milestone}.rs")))?;
        let path = out.join(handout_path(milestone));
        fs::create_dir_all(path.parent().expect("handout/"))?;
        fs::write(path, handouts.handout(milestone, &tests))?;
        summary.files_copied += 1;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written with #> for // so that the skeleton of this file leaves it alone.
    const MARKED: &str = "#> BEGIN SOLUTION election
use std::fmt;
#> SKELETON
#> END SOLUTION
fn a() -> u32 {
    #> BEGIN SOLUTION election
    1 + 1
    #> END SOLUTION
}
fn b() {
    let x = 1;
    #> BEGIN SOLUTION kv
    println!(\"{x}\");
    #> SKELETON
    #> let y = x + 1;
    #> END SOLUTION
}
";

    fn source() -> String {
        MARKED.replace("#>", "//")
    }

    #[test]
    fn regions_of_chosen_milestones_become_a_marker_and_todo_or_their_skeleton() {
        let (out, removed) = strip_regions(&source(), &["election", "kv"], "f.rs").unwrap();
        assert!(out.contains(
            "    // TODO milestone 1 (election), handout/1-election.md: write this part.\n    \
             todo!(\"milestone 1 (election): a — handout/1-election.md\")"
        ));
        assert!(
            out.starts_with("// TODO milestone 1 (election), handout/1-election.md: the imports")
        );
        assert!(!out.contains("1 + 1") && !out.contains("use std::fmt"));
        assert!(
            out.contains("    // TODO milestone 5 (kv), handout/5-kv.md: replace this stand-in")
        );
        assert!(out.contains("    let y = x + 1;\n"));
        assert!(!out.contains("println!"));
        assert!(!out.contains("SOLUTION"));
        let found: Vec<_> = removed
            .iter()
            .map(|r| (r.milestone.as_str(), r.function.as_deref()))
            .collect();
        assert_eq!(
            found,
            [
                ("election", None),
                ("election", Some("a")),
                ("kv", Some("b"))
            ]
        );
    }

    #[test]
    fn regions_of_other_milestones_keep_the_solution_without_markers() {
        let (out, removed) = strip_regions(&source(), &["kv"], "f.rs").unwrap();
        assert!(out.contains("    1 + 1\n"));
        assert!(out.starts_with("use std::fmt;\n"));
        assert!(!out.contains("SOLUTION") && !out.contains("SKELETON"));
        assert_eq!(out.matches("TODO milestone").count(), 1);
        assert_eq!(removed.len(), 1);
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
            ["persistence", "snapshots", "kv", "membership"]
        );
        assert!(milestones_from("nope").is_none());
    }

    fn handouts_source(election_functions: &str) -> String {
        let mut text = String::from(
            "for the instructor\n# README\nStart: {{first}}\n{{given}}{{milestones}}\n",
        );
        for (i, m) in MILESTONES.iter().enumerate() {
            text.push_str(&format!("# Milestone {m}: Part {i}\n"));
            if *m == "election" {
                text.push_str(election_functions);
            }
        }
        text
    }

    #[test]
    fn a_handout_must_name_exactly_the_functions_with_regions() {
        let (_, regions) = strip_regions(&source(), &MILESTONES, "f.rs").unwrap();
        let regions: Vec<_> = regions
            .into_iter()
            .filter(|r| r.milestone == "election")
            .collect();
        let good = Handouts::parse(&handouts_source("- `f.rs` `a`: it\n")).unwrap();
        assert_eq!(good.check(&regions), Ok(()));
        let extra =
            Handouts::parse(&handouts_source("- `f.rs` `a`: it\n- `f.rs` `c`: no\n")).unwrap();
        assert!(extra
            .check(&regions)
            .unwrap_err()
            .contains("`c`, which has no election region"));
        let missing = Handouts::parse(&handouts_source("")).unwrap();
        assert!(missing
            .check(&regions)
            .unwrap_err()
            .contains("does not name"));
    }

    #[test]
    fn the_readme_lists_the_milestones_left_to_write() {
        let handouts = Handouts::parse(&handouts_source("")).unwrap();
        let readme = handouts.readme("persistence");
        assert!(readme.starts_with("Start: persistence\n"), "{readme}");
        assert!(readme.contains("part 0 (election), part 1 (replication)"));
        assert!(readme.contains("| 3 | Part 2 | [handout/3-persistence.md]"));
        assert!(!readme.contains("| 2 |") && !readme.contains("for the instructor"));
    }

    #[test]
    fn test_functions_come_with_the_first_sentence_of_their_doc() {
        let source = "/// §5.2: one. Two.\n#[test]\nfn t_5_2() {}\n/// helper\nfn h() {}\n#[test]\nfn bare() {}\n";
        assert_eq!(
            test_functions(source),
            [
                ("t_5_2".to_string(), "§5.2: one.".to_string()),
                ("bare".to_string(), String::new())
            ]
        );
    }
}
