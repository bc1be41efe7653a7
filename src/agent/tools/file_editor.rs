//! `file_editor`: view, create and edit files with upstream's rules and messages
//! (openhands-tools `FileEditor`). Every operation goes through the workspace's
//! file API (read, write, stat, snapshot) and never through a command, so the
//! editor works in an image that has no tools at all.
//!
//! Rules: paths are absolute; `create` never overwrites; `str_replace` needs a
//! unique verbatim match (retried once with surrounding whitespace stripped);
//! `view` numbers lines like `cat -n` and cuts at 16,000 characters; a directory
//! view lists two levels without hidden entries; files over 10 MB, binary files
//! and (here) non-UTF-8 files are refused; each file keeps its last 10 versions
//! for `undo_edit`. Mistakes are error observations, not agent errors.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;

use super::{Observation, fatal};
use crate::workspace::{PathKind, Snapshot, Workspace, WorkspaceError};
#[cfg(test)]
use view::{TEXT_FILE_CONTENT_TRUNCATED_NOTICE, maybe_truncate};
use view::{make_output, view_dir, view_file};

/// Output beyond this many characters is cut in the middle (upstream's constant).
pub const MAX_RESPONSE_LEN_CHAR: usize = 16_000;
/// Files larger than this are refused.
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
/// Versions kept per file for `undo_edit`.
pub const MAX_HISTORY_PER_FILE: usize = 10;
/// Bytes of undo history kept per conversation in all; the oldest versions go
/// first, so a run editing many large files cannot grow without bound.
const MAX_HISTORY_BYTES: usize = 64 * 1024 * 1024;
/// Lines shown around an edit.
const SNIPPET_CONTEXT_WINDOW: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    View,
    Create,
    StrReplace,
    Insert,
    UndoEdit,
}

/// The tool's arguments, as models send them.
#[derive(Debug, Clone, Deserialize)]
pub struct Args {
    pub command: Command,
    pub path: String,
    #[serde(default)]
    pub file_text: Option<String>,
    #[serde(default)]
    pub old_str: Option<String>,
    #[serde(default)]
    pub new_str: Option<String>,
    #[serde(default)]
    pub insert_line: Option<i64>,
    #[serde(default)]
    pub view_range: Option<Vec<i64>>,
}

/// The file operations the editor needs. The workspace implements it; tests use
/// an in-memory one.
pub(crate) trait Fs {
    async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, WorkspaceError>;
    async fn write(&self, path: &str, data: &[u8]) -> Result<(), WorkspaceError>;
    async fn stat(&self, path: &str) -> Result<Option<PathKind>, WorkspaceError>;
    /// The entries below `dir` (contents not needed).
    async fn list(&self, dir: &str) -> Result<Snapshot, WorkspaceError>;
}

impl Fs for Workspace {
    async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, WorkspaceError> {
        self.read_file(path).await
    }
    async fn write(&self, path: &str, data: &[u8]) -> Result<(), WorkspaceError> {
        self.write_file(path, data).await
    }
    async fn stat(&self, path: &str) -> Result<Option<PathKind>, WorkspaceError> {
        Workspace::stat(self, path).await
    }
    async fn list(&self, dir: &str) -> Result<Snapshot, WorkspaceError> {
        // Files over 0 bytes are listed without their content.
        self.snapshot(dir, 0, 1 << 20).await
    }
}

/// Why an operation did not happen.
enum EditError {
    /// A mistake or refusal the model should read.
    Tool(String),
    /// The workspace is gone: the run cannot go on.
    Fatal(WorkspaceError),
}

type Result<T, E = EditError> = std::result::Result<T, E>;

fn invalid(parameter: &str, value: impl std::fmt::Display, hint: &str) -> EditError {
    EditError::Tool(format!("Invalid `{parameter}` parameter: {value}. {hint}"))
}

fn missing(command: &str, parameter: &str) -> EditError {
    let hint = match (command, parameter) {
        ("str_replace", "old_str") => Some(
            "To replace text, first run `view` on the file and copy `old_str` EXACTLY from its output, including all \
             whitespace and line endings — `str_replace` fails if the anchor does not match byte-for-byte. To insert \
             new content after a known line, use `insert` (requires `insert_line` and `new_str`); to create a new file, \
             use `create` with `file_text`.",
        ),
        ("str_replace", "new_str") => Some(
            "`str_replace` needs `new_str` (the replacement text). It may be an empty string (\"\") to delete the text \
             matched by `old_str`.",
        ),
        ("create", "file_text") => Some(
            "`create` writes a NEW file and needs `file_text` with its full content. If the file already exists, use \
             `str_replace` (requires `old_str` copied from a prior `view`) or `insert`.",
        ),
        ("insert", "insert_line") => Some(
            "`insert` places text AFTER the given line number; provide `insert_line` (0 inserts before the first line) \
             and `new_str`. Run `view` first to pick the right line number.",
        ),
        ("insert", "new_str") => {
            Some("`insert` needs `new_str` (the text to insert after `insert_line`).")
        }
        _ => None,
    };
    let base = format!("Parameter `{parameter}` is required for command: {command}.");
    EditError::Tool(match hint {
        Some(h) => format!("{base}\n\nHint: {h}"),
        None => base,
    })
}

/// A workspace error during `doing` on `path`: fatal, or a message for the model.
fn io_error(e: WorkspaceError, doing: &str, path: &str) -> EditError {
    if fatal(&e) {
        EditError::Fatal(e)
    } else {
        EditError::Tool(format!("Ran into {e} while trying to {doing} {path}"))
    }
}

/// The editor of one conversation: its only state is the undo history.
pub struct FileEditor {
    workdir: String,
    history: HashMap<String, VecDeque<String>>,
    history_bytes: usize,
}

impl FileEditor {
    pub fn new(workdir: &str) -> FileEditor {
        FileEditor {
            workdir: workdir.to_string(),
            history: HashMap::new(),
            history_bytes: 0,
        }
    }

    /// Runs one call. `Err` only when the workspace is gone.
    pub(crate) async fn call<F: Fs>(
        &mut self,
        fs: &F,
        args: Args,
    ) -> Result<Observation, WorkspaceError> {
        match self.run(fs, args).await {
            Ok(text) => Ok(Observation::ok(text)),
            Err(EditError::Tool(msg)) => Ok(Observation::error(msg)),
            Err(EditError::Fatal(e)) => Err(e),
        }
    }

    async fn run<F: Fs>(&mut self, fs: &F, a: Args) -> Result<String> {
        let path = normalize(&a.path);
        let kind = self.validate_path(fs, a.command, &path).await?;
        match a.command {
            Command::View => match kind {
                Some(PathKind::Dir) => view_dir(fs, &path, a.view_range.as_deref()).await,
                _ => view_file(fs, &path, kind, a.view_range.as_deref()).await,
            },
            Command::Create => {
                let text = a.file_text.ok_or_else(|| missing("create", "file_text"))?;
                fs.write(&path, text.as_bytes())
                    .await
                    .map_err(|e| io_error(e, "write to", &path))?;
                // Upstream records the new content too: an undo after create restores it.
                self.push_history(&path, text);
                Ok(format!("File created successfully at: {path}"))
            }
            Command::StrReplace => {
                let old = a.old_str.ok_or_else(|| missing("str_replace", "old_str"))?;
                let new = a.new_str.ok_or_else(|| missing("str_replace", "new_str"))?;
                if new == old {
                    return Err(invalid(
                        "new_str",
                        &new,
                        "No replacement was performed. `new_str` and `old_str` must be different.",
                    ));
                }
                self.str_replace(fs, &path, kind, &old, &new).await
            }
            Command::Insert => {
                let line = a
                    .insert_line
                    .ok_or_else(|| missing("insert", "insert_line"))?;
                let new = a.new_str.ok_or_else(|| missing("insert", "new_str"))?;
                self.insert(fs, &path, kind, line, &new).await
            }
            Command::UndoEdit => {
                read_text(fs, &path, kind).await?;
                let Some(old) = self.pop_history(&path) else {
                    return Err(EditError::Tool(format!(
                        "No edit history found for {path}."
                    )));
                };
                fs.write(&path, old.as_bytes())
                    .await
                    .map_err(|e| io_error(e, "write to", &path))?;
                Ok(format!(
                    "Last edit to {path} undone successfully. {}",
                    make_output(&old, &path, 1)
                ))
            }
        }
    }

    /// Upstream's path checks; returns what is at the path.
    async fn validate_path<F: Fs>(
        &self,
        fs: &F,
        command: Command,
        path: &str,
    ) -> Result<Option<PathKind>> {
        if !path.starts_with('/') {
            let mut hint = "The path should be an absolute path, starting with `/`.".to_string();
            let suggested = format!("{}/{}", self.workdir.trim_end_matches('/'), path);
            if let Ok(Some(_)) = fs.stat(&suggested).await {
                hint.push_str(&format!(" Maybe you meant {suggested}?"));
            }
            return Err(invalid("path", path, &hint));
        }
        let kind = fs.stat(path).await.map_err(|e| io_error(e, "read", path))?;
        match (command, kind) {
            (Command::Create, Some(_)) => Err(invalid(
                "path",
                path,
                &format!(
                    "File already exists at: {path}. Cannot overwrite files using command `create`."
                ),
            )),
            (Command::Create, None) => Ok(None),
            (_, None) => Err(invalid(
                "path",
                path,
                &format!("The path {path} does not exist. Please provide a valid path."),
            )),
            (c, Some(PathKind::Dir)) if c != Command::View => Err(invalid(
                "path",
                path,
                &format!(
                    "The path {path} is a directory and only the `view` command can be used on directories."
                ),
            )),
            (_, kind) => Ok(kind),
        }
    }

    async fn str_replace<F: Fs>(
        &mut self,
        fs: &F,
        path: &str,
        kind: Option<PathKind>,
        old: &str,
        new: &str,
    ) -> Result<String> {
        let content = read_text(fs, path, kind).await?;
        let (mut old, mut new) = (old, new);
        let mut found: Vec<usize> = content.match_indices(old).map(|(i, _)| i).collect();
        if found.is_empty() {
            // Models often add or drop whitespace at the ends; upstream retries stripped.
            old = old.trim();
            new = new.trim();
            found = content.match_indices(old).map(|(i, _)| i).collect();
            if found.is_empty() {
                return Err(EditError::Tool(format!(
                    "No replacement was performed, old_str `{old}` did not appear verbatim in {path}."
                )));
            }
        }
        if found.len() > 1 {
            let mut lines: Vec<usize> = found.iter().map(|&i| line_of(&content, i)).collect();
            lines.dedup();
            return Err(EditError::Tool(format!(
                "No replacement was performed. Multiple occurrences of old_str `{old}` in lines {lines:?}. Please ensure it is unique."
            )));
        }
        let idx = found[0];
        let new_content = format!("{}{}{}", &content[..idx], new, &content[idx + old.len()..]);
        fs.write(path, new_content.as_bytes())
            .await
            .map_err(|e| io_error(e, "write to", path))?;

        let line = line_of(&content, idx);
        let start = line.saturating_sub(SNIPPET_CONTEXT_WINDOW);
        let end = line + SNIPPET_CONTEXT_WINDOW + new.matches('\n').count();
        let snippet = lines_between(&new_content, start, end);
        self.push_history(path, content);
        Ok(format!(
            "The file {path} has been edited. {}Review the changes and make sure they are as expected. Edit the file again if necessary.",
            make_output(&snippet, &format!("a snippet of {path}"), start + 1)
        ))
    }

    async fn insert<F: Fs>(
        &mut self,
        fs: &F,
        path: &str,
        kind: Option<PathKind>,
        line: i64,
        new: &str,
    ) -> Result<String> {
        let content = read_text(fs, path, kind).await?;
        let lines: Vec<&str> = content.split_inclusive('\n').collect();
        let num_lines = lines.len();
        if line < 0 || line as usize > num_lines {
            return Err(invalid(
                "insert_line",
                line,
                &format!("It should be within the range of allowed values: [0, {num_lines}]"),
            ));
        }
        let at = line as usize;
        let new_lines: Vec<&str> = new.split('\n').collect();
        let mut out = lines[..at].concat();
        // Upstream would glue the text onto a last line without a newline.
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        for l in &new_lines {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str(&lines[at..].concat());
        fs.write(path, out.as_bytes())
            .await
            .map_err(|e| io_error(e, "write to", path))?;

        let start = at.saturating_sub(SNIPPET_CONTEXT_WINDOW);
        let end = (num_lines + new_lines.len()).min(at + SNIPPET_CONTEXT_WINDOW + new_lines.len());
        let snippet = lines_between(&out, start, end);
        self.push_history(path, content);
        Ok(format!(
            "The file {path} has been edited. {}Review the changes and make sure they are as expected (correct indentation, no duplicate lines, etc). Edit the file again if necessary.",
            make_output(
                &snippet,
                "a snippet of the edited file",
                (at + 1).saturating_sub(SNIPPET_CONTEXT_WINDOW).max(1)
            )
        ))
    }

    fn push_history(&mut self, path: &str, content: String) {
        self.history_bytes += content.len();
        let h = self.history.entry(path.to_string()).or_default();
        h.push_back(content);
        if h.len() > MAX_HISTORY_PER_FILE {
            if let Some(old) = h.pop_front() {
                self.history_bytes -= old.len();
            }
        }
        while self.history_bytes > MAX_HISTORY_BYTES {
            let Some(h) = self
                .history
                .values_mut()
                .filter(|h| !h.is_empty())
                .max_by_key(|h| h.len())
            else {
                break;
            };
            if let Some(old) = h.pop_front() {
                self.history_bytes -= old.len();
            }
        }
    }

    fn pop_history(&mut self, path: &str) -> Option<String> {
        let old = self.history.get_mut(path)?.pop_back()?;
        self.history_bytes -= old.len();
        Some(old)
    }
}

/// `/a/b/` and `/a/b` are the same path (as for upstream's `Path`).
fn normalize(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() && path.starts_with('/') {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Reads a file the editor may work on: not too large, text, UTF-8.
async fn read_text<F: Fs>(fs: &F, path: &str, kind: Option<PathKind>) -> Result<String> {
    if let Some(PathKind::File { size }) = kind {
        if size > MAX_FILE_BYTES {
            return Err(EditError::Tool(format!(
                "File validation failed for {path}: File is too large ({:.1}MB). Maximum allowed size is {}MB.",
                size as f64 / 1024.0 / 1024.0,
                MAX_FILE_BYTES / 1024 / 1024
            )));
        }
    }
    let bytes = fs
        .read(path)
        .await
        .map_err(|e| io_error(e, "read", path))?
        .ok_or_else(|| {
            invalid(
                "path",
                path,
                &format!("The path {path} does not exist. Please provide a valid path."),
            )
        })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(EditError::Tool(format!(
            "File validation failed for {path}: File is too large ({:.1}MB). Maximum allowed size is {}MB.",
            bytes.len() as f64 / 1024.0 / 1024.0,
            MAX_FILE_BYTES / 1024 / 1024
        )));
    }
    if bytes[..bytes.len().min(8192)].contains(&0) {
        return Err(EditError::Tool(format!(
            "File validation failed for {path}: File appears to be binary and this file type cannot be read or edited by this tool."
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        EditError::Tool(format!(
            "File validation failed for {path}: File is not valid UTF-8 text and cannot be read or edited by this tool."
        ))
    })
}

/// 1-based line number of byte offset `idx`.
fn line_of(content: &str, idx: usize) -> usize {
    content[..idx].matches('\n').count() + 1
}

/// Lines `start..end` (0-based, end exclusive), with their line endings.
fn lines_between(content: &str, start: usize, end: usize) -> String {
    content
        .split_inclusive('\n')
        .skip(start)
        .take(end.saturating_sub(start))
        .collect()
}

#[path = "file_editor_view.rs"]
mod view;

#[cfg(test)]
#[path = "file_editor_tests.rs"]
mod tests;
