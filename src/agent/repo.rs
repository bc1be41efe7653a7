//! The repository's own instructions, read from the workspace once the input
//! has landed (AGENT-SPEC.md "Repository instructions"), in upstream's formats:
//!
//! - `AGENTS.md` and `.openhands/microagents/repo.md`: always on;
//! - `.openhands/skills/*.md`, `.agents/skills/*.md`: Markdown with optional
//!   YAML frontmatter (`name`, `description`, `triggers: [..]`). Without
//!   `triggers` a skill is always on (in the system prompt); with them it is
//!   added to the conversation when a user message mentions one (whole word,
//!   any case);
//! - `.agents/skills/<name>/SKILL.md` (the AgentSkills layout): listed in the
//!   prompt by name, description and path for the model to read when useful,
//!   and added whole when its triggers are mentioned.
//!
//! The repository is not trusted: candidates are found by one `sh` loop (glob
//! and `test` are shell builtins, so an image with nothing but `sh` works) that
//! skips symlinks anywhere on the path, then read through the workspace's file
//! API under size caps. A file over its cap, unreadable, or with frontmatter
//! that does not parse is skipped with a one-line note naming the file and the
//! problem, shown to the model and logged; it never stops the run.

use std::time::Duration;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;
use yaml_rust2::{Yaml, YamlLoader};

use crate::workspace::{PathKind, Workspace};

/// One file's cap; instructions go into every request.
pub const MAX_FILE_BYTES: u64 = 32 * 1024;
/// All files together.
pub const MAX_TOTAL_BYTES: u64 = 96 * 1024;
/// Candidates looked at, at most.
const MAX_FILES: usize = 32;
/// Frontmatter nodes parsed, at most (YAML is cheap to make expensive).
const MAX_YAML_EVENTS: usize = 2_000;
/// Keywords kept per skill: each is searched for in the task.
const MAX_TRIGGERS: usize = 20;
/// Finding and reading the files, in all.
const DEADLINE: Duration = Duration::from_secs(30);

/// Prints the candidate paths, relative to the workdir, one a line: regular
/// files with no symlink anywhere on their path.
const FIND_SCRIPT: &str = r#"nolink() { p=$1; while :; do [ -L "$p" ] && return 1; case $p in */*) p=${p%/*};; *) return 0;; esac; done; }
n=0
for f in AGENTS.md .openhands/microagents/repo.md .openhands/skills/*.md .agents/skills/*.md .agents/skills/*/SKILL.md; do
  case $f in *"
"*) continue;; esac
  [ -f "$f" ] && nolink "$f" || continue
  printf '%s\n' "$f"
  n=$((n+1)); [ "$n" -ge 32 ] && break
done
exit 0"#;

/// One instruction file.
#[derive(Debug, Clone, PartialEq)]
pub struct Skill {
    pub name: String,
    /// Path relative to the workdir.
    pub source: String,
    pub content: String,
    pub description: Option<String>,
    /// Lower-case keywords; empty: always on.
    pub triggers: Vec<String>,
    /// An AgentSkills `SKILL.md`: listed, read on demand.
    pub listed: bool,
}

/// What the repository asks of the agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoInstructions {
    pub skills: Vec<Skill>,
    /// Files skipped, and why (one line each).
    pub notes: Vec<String>,
}

impl RepoInstructions {
    /// The always-on part of the system prompt: the always-on files, the list
    /// of skills to read on demand or that come with keywords, and the notes.
    pub fn render_always(&self) -> String {
        let mut out = String::new();
        let always: Vec<&Skill> = self
            .skills
            .iter()
            .filter(|s| s.triggers.is_empty() && !s.listed)
            .collect();
        if !always.is_empty() {
            out.push_str("<REPO_INSTRUCTIONS>\nThe repository's own instructions for agents:\n");
            for s in always {
                out.push_str(&format!("\n[{}]\n{}\n", s.source, s.content.trim()));
            }
            out.push_str("</REPO_INSTRUCTIONS>");
        }
        let on_demand: Vec<&Skill> = self
            .skills
            .iter()
            .filter(|s| s.listed || !s.triggers.is_empty())
            .collect();
        if !on_demand.is_empty() {
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str("<AVAILABLE_SKILLS>\nSkills of this repository (read one with file_editor when it helps; \
those with keywords are added when a message mentions one):\n");
            for s in on_demand {
                out.push_str(&format!("- {} ({})", s.name, s.source));
                if let Some(d) = &s.description {
                    out.push_str(&format!(": {}", one_line(d)));
                }
                if !s.triggers.is_empty() {
                    out.push_str(&format!(" [keywords: {}]", s.triggers.join(", ")));
                }
                out.push('\n');
            }
            out.push_str("</AVAILABLE_SKILLS>");
        }
        if !self.notes.is_empty() {
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str("Repository instruction files that were not loaded:\n");
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }

    /// The keyword-triggered skills `message` mentions, with the keyword that
    /// matched each, in file order.
    pub fn triggered_by<'a>(&'a self, message: &str) -> Vec<(&'a Skill, &'a str)> {
        let lower = message.to_lowercase();
        self.skills
            .iter()
            .filter_map(|s| {
                s.triggers
                    .iter()
                    .find(|t| mentions(&lower, t))
                    .map(|t| (s, t.as_str()))
            })
            .collect()
    }
}

/// The message text added to the conversation for a triggered skill.
pub fn render_triggered(skill: &Skill, keyword: &str) -> String {
    format!(
        "<SKILL name=\"{}\" source=\"{}\" keyword=\"{keyword}\">\nThe repository has this guidance for what the \
message above mentions:\n{}\n</SKILL>",
        skill.name,
        skill.source,
        skill.content.trim()
    )
}

/// Whole-token, case-insensitive: `git` does not fire on `github`.
fn mentions(lower_message: &str, keyword: &str) -> bool {
    if keyword.is_empty() {
        return false;
    }
    let word = |c: char| c.is_alphanumeric();
    lower_message.match_indices(keyword).any(|(i, _)| {
        let before = lower_message[..i].chars().next_back();
        let after = lower_message[i + keyword.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

fn one_line(s: &str) -> String {
    let line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else {
        line
    }
}

/// Reads the repository's instructions from `ws` (its workdir). Never fails:
/// a workspace problem leaves them empty, logged. With `listed` (the workdir's
/// files and whether each is a symlink, complete), the files are picked from it
/// as [`FIND_SCRIPT`] would pick them, and no command runs.
pub async fn load(ws: &Workspace, listed: Option<&[(String, bool)]>) -> RepoInstructions {
    match tokio::time::timeout(DEADLINE, load_inner(ws, listed)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!("reading repository instructions timed out; going on without them");
            RepoInstructions {
                notes: vec!["reading the instruction files timed out".into()],
                ..Default::default()
            }
        }
    }
}

/// The instruction files among `listed`, in the order [`FIND_SCRIPT`] prints
/// them: AGENTS.md, repo.md, then each skills pattern's matches sorted; no
/// symlink, nothing below one (a listing never goes below one), 32 at most.
pub fn pick(listed: &[(String, bool)]) -> String {
    let group = |rel: &str| match rel {
        "AGENTS.md" => 0,
        ".openhands/microagents/repo.md" => 1,
        r if r.starts_with(".openhands/skills/") => 2,
        r if r.ends_with("/SKILL.md") => 4,
        _ => 3,
    };
    let mut found: Vec<&str> = listed
        .iter()
        // A name with a newline would read as two names below.
        .filter(|(rel, link)| !link && !rel.contains('\n') && expected_path(rel))
        .map(|(rel, _)| rel.as_str())
        .collect();
    found.sort_by(|a, b| group(a).cmp(&group(b)).then(a.cmp(b)));
    found.truncate(MAX_FILES);
    found.iter().map(|r| format!("{r}\n")).collect()
}

async fn load_inner(ws: &Workspace, listed: Option<&[(String, bool)]>) -> RepoInstructions {
    let workdir = ws.workdir().trim_end_matches('/').to_string();
    let mut out = RepoInstructions::default();
    let found = match listed {
        Some(l) => pick(l),
        None => match ws.exec(FIND_SCRIPT, &workdir, DEADLINE, 64 * 1024).await {
            Ok(o) => o.output,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for repository instructions");
                return out;
            }
        },
    };
    let mut total = 0u64;
    // Only names of the expected shapes: a file name with a newline in it must
    // not smuggle in a line naming some other (unchecked) path.
    for rel in found.lines().filter(|l| expected_path(l)).take(MAX_FILES) {
        let path = format!("{workdir}/{rel}");
        let size = match ws.stat(&path).await {
            Ok(Some(PathKind::File { size })) => size,
            Ok(_) => continue,
            Err(e) => {
                out.notes.push(format!("{rel}: cannot be read ({e})"));
                continue;
            }
        };
        if size > MAX_FILE_BYTES {
            out.notes.push(format!(
                "{rel}: {size} bytes is over the {MAX_FILE_BYTES}-byte limit"
            ));
            continue;
        }
        if total + size > MAX_TOTAL_BYTES {
            out.notes.push(format!(
                "{rel}: skipped, the instruction files reached {MAX_TOTAL_BYTES} bytes in all"
            ));
            continue;
        }
        let bytes = match ws.read_file(&path).await {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => {
                out.notes.push(format!("{rel}: cannot be read ({e})"));
                continue;
            }
        };
        // The size was checked before reading; a file that grew since is cut.
        let bytes = &bytes[..bytes.len().min(MAX_FILE_BYTES as usize)];
        total += bytes.len() as u64;
        match parse_skill(rel, &String::from_utf8_lossy(bytes)) {
            Ok(s) => out.skills.push(s),
            Err(problem) => out.notes.push(format!("{rel}: {problem}")),
        }
    }
    for n in &out.notes {
        tracing::warn!(note = %n, "repository instruction file skipped");
    }
    tracing::info!(
        files = out.skills.len(),
        skipped = out.notes.len(),
        "repository instructions read"
    );
    out
}

/// Whether `rel` is a path the find script may print: the fixed files, a
/// Markdown file directly in a skills folder, or a `SKILL.md` one level down.
fn expected_path(rel: &str) -> bool {
    let plain = |name: &str| !name.is_empty() && !name.contains('/') && !name.starts_with('.');
    if rel == "AGENTS.md" || rel == ".openhands/microagents/repo.md" {
        return true;
    }
    for dir in [".openhands/skills/", ".agents/skills/"] {
        if let Some(rest) = rel.strip_prefix(dir) {
            if let Some(name) = rest.strip_suffix(".md") {
                if plain(name) {
                    return true;
                }
            }
            if dir == ".agents/skills/" {
                if let Some(name) = rest.strip_suffix("/SKILL.md") {
                    return plain(name);
                }
            }
        }
    }
    false
}

/// One file's skill. `rel` decides its kind; the error is the problem, one line.
pub fn parse_skill(rel: &str, text: &str) -> Result<Skill, String> {
    let text = text.trim_start_matches('\u{feff}');
    let always_file = rel == "AGENTS.md" || rel == ".openhands/microagents/repo.md";
    let listed = rel.ends_with("/SKILL.md");
    let stem = if listed {
        rel.trim_end_matches("/SKILL.md")
            .rsplit('/')
            .next()
            .unwrap_or(rel)
    } else {
        rel.rsplit('/')
            .next()
            .unwrap_or(rel)
            .trim_end_matches(".md")
    };
    let (front, body) = split_frontmatter(text);
    let mut skill = Skill {
        name: stem.to_string(),
        source: rel.to_string(),
        content: body.to_string(),
        description: None,
        triggers: Vec::new(),
        listed,
    };
    // AGENTS.md is plain Markdown: a leading `---` block is its own business.
    let Some(front) = front.filter(|_| !always_file || rel.ends_with("repo.md")) else {
        if always_file {
            skill.content = text.to_string();
        }
        return Ok(skill);
    };
    let meta = parse_yaml(front).map_err(|e| format!("frontmatter is not valid YAML ({e})"))?;
    if let Yaml::Hash(h) = &meta {
        let get = |k: &str| h.get(&Yaml::String(k.into()));
        if let Some(Yaml::String(n)) = get("name") {
            skill.name = one_line(n);
        }
        if let Some(Yaml::String(d)) = get("description") {
            skill.description = Some(d.clone());
        }
        match get("triggers") {
            None | Some(Yaml::Null) => {}
            Some(Yaml::Array(items)) => {
                for t in items.iter().take(MAX_TRIGGERS) {
                    match t {
                        Yaml::String(s) if !s.trim().is_empty() => {
                            skill.triggers.push(s.trim().to_lowercase())
                        }
                        _ => return Err("`triggers` must be a list of strings".into()),
                    }
                }
            }
            Some(_) => return Err("`triggers` must be a list of strings".into()),
        }
    } else if !matches!(meta, Yaml::Null) {
        return Err("frontmatter must be a mapping (`key: value` lines)".into());
    }
    if always_file {
        skill.triggers.clear();
    }
    Ok(skill)
}

/// The frontmatter (between a first line `---` and the next `---` line) and
/// the rest. Without a closing line there is no frontmatter.
fn split_frontmatter(text: &str) -> (Option<&str>, &str) {
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return (None, text);
    };
    let mut at = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return (Some(&rest[..at]), &rest[at + line.len()..]);
        }
        at += line.len();
    }
    (None, text)
}

/// Parses YAML, refusing aliases (a few lines of anchors and aliases expand
/// into billions of nodes) and documents over [`MAX_YAML_EVENTS`] nodes.
fn parse_yaml(text: &str) -> Result<Yaml, String> {
    struct Guard {
        events: usize,
        alias: bool,
    }
    impl MarkedEventReceiver for Guard {
        fn on_event(&mut self, ev: Event, _mark: Marker) {
            self.events += 1;
            if matches!(ev, Event::Alias(_)) {
                self.alias = true;
            }
        }
    }
    let mut g = Guard {
        events: 0,
        alias: false,
    };
    Parser::new_from_str(text)
        .load(&mut g, false)
        .map_err(|e| e.to_string())?;
    if g.alias {
        return Err("anchors and aliases are not supported".into());
    }
    if g.events > MAX_YAML_EVENTS {
        return Err(format!("more than {MAX_YAML_EVENTS} nodes"));
    }
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().next().unwrap_or(Yaml::Null))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_listing_is_picked_in_the_order_the_find_script_prints() {
        let l = |p: &str, link: bool| (p.to_string(), link);
        let listed = vec![
            l(".agents/skills/b/SKILL.md", false),
            l(".agents/skills/a.md", false),
            l(".openhands/skills/z.md", false),
            l(".openhands/skills/a.md", false),
            l(".openhands/skills/link.md", true),
            l(".openhands/skills/.hidden.md", false),
            l(".openhands/microagents/repo.md", false),
            l("AGENTS.md", false),
            l("src/AGENTS.md", false),
            l(".openhands/skills/x\nAGENTS.md", false),
        ];
        assert_eq!(
            super::pick(&listed),
            "AGENTS.md\n.openhands/microagents/repo.md\n.openhands/skills/a.md\n\
             .openhands/skills/z.md\n.agents/skills/a.md\n.agents/skills/b/SKILL.md\n"
        );
    }

    use super::*;

    #[test]
    fn skill_files_follow_upstreams_format() {
        let s = parse_skill(
            ".openhands/skills/testing.md",
            "---\nname: run-tests\ndescription: How to run the tests\ntriggers:\n  - pytest\n  - Test Suite\n---\nUse `make test`.\n",
        )
        .unwrap();
        assert_eq!(s.name, "run-tests");
        assert_eq!(s.triggers, vec!["pytest", "test suite"]);
        assert_eq!(s.content, "Use `make test`.\n");
        let s = parse_skill(".agents/skills/style.md", "Always use tabs.").unwrap();
        assert!(s.triggers.is_empty() && s.name == "style" && !s.listed);
        let s = parse_skill(
            ".agents/skills/deploy/SKILL.md",
            "---\ndescription: Deploying\n---\nsteps",
        )
        .unwrap();
        assert!(s.listed && s.name == "deploy");
        // AGENTS.md is always on, whatever its first lines.
        let s = parse_skill("AGENTS.md", "---\ntriggers: [x]\n---\nbody").unwrap();
        assert!(s.triggers.is_empty() && s.content.contains("body"));
    }

    #[test]
    fn broken_frontmatter_is_a_one_line_problem() {
        for (text, want) in [
            ("---\ntriggers: [unclosed\n---\nbody", "not valid YAML"),
            (
                "---\ntriggers: pytest\n---\nbody",
                "must be a list of strings",
            ),
            (
                "---\ntriggers: [1, {a: b}]\n---\nbody",
                "must be a list of strings",
            ),
            ("---\n- a\n- b\n---\nbody", "must be a mapping"),
            ("---\na: &x [1,2]\nb: [*x, *x, *x]\n---\nbody", "aliases"),
        ] {
            let e = parse_skill(".openhands/skills/x.md", text).unwrap_err();
            assert!(e.contains(want) && !e.contains('\n'), "{text}: {e}");
        }
        // No closing line: the whole file is the content.
        let s = parse_skill(".openhands/skills/x.md", "---\nname: y\nbody").unwrap();
        assert_eq!(s.name, "x");
    }

    #[test]
    fn only_expected_paths_are_read() {
        for ok in [
            "AGENTS.md",
            ".openhands/microagents/repo.md",
            ".openhands/skills/a.md",
            ".agents/skills/b.md",
            ".agents/skills/c/SKILL.md",
        ] {
            assert!(expected_path(ok), "{ok}");
        }
        for bad in [
            "b.md",
            "../x.md",
            ".openhands/skills/a/b.md",
            ".openhands/skills/.md",
            "/etc/shadow",
            "",
        ] {
            assert!(!expected_path(bad), "{bad}");
        }
    }

    #[test]
    fn keywords_match_whole_words_in_any_case() {
        let r = RepoInstructions {
            skills: vec![
                parse_skill(
                    ".openhands/skills/git.md",
                    "---\ntriggers: [git]\n---\nGit rules",
                )
                .unwrap(),
                parse_skill(
                    ".openhands/skills/db.md",
                    "---\ntriggers: [postgres]\n---\nDB rules",
                )
                .unwrap(),
            ],
            notes: vec![],
        };
        assert!(r.triggered_by("Push it to GitHub").is_empty());
        let t = r.triggered_by("Fix the GIT hook, then check Postgres.");
        assert_eq!(
            t.iter()
                .map(|(s, k)| (s.name.as_str(), *k))
                .collect::<Vec<_>>(),
            vec![("git", "git"), ("db", "postgres")]
        );
        let p = r.render_always();
        assert!(
            p.contains("<AVAILABLE_SKILLS>")
                && p.contains("[keywords: git]")
                && !p.contains("Git rules")
        );
        assert!(render_triggered(t[0].0, t[0].1).contains("Git rules"));
    }
}
