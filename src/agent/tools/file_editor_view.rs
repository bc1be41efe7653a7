//! The editor's `view`: a file numbered like `cat -n` (optionally a line range),
//! or a directory two levels deep; both cut at [`MAX_RESPONSE_LEN_CHAR`] with
//! upstream's notices.

use super::{Fs, MAX_RESPONSE_LEN_CHAR, Result, invalid, io_error, lines_between, read_text};
use crate::workspace::PathKind;

/// Upstream's notices, verbatim: models trained on them know what to do next.
pub(super) const TEXT_FILE_CONTENT_TRUNCATED_NOTICE: &str = "<response clipped><NOTE>Due to the max output limit, only part of this file has been shown to you. You should retry this tool after you have searched inside the file with `grep -n` in order to find the line numbers of what you are looking for.</NOTE>";
pub(super) const DIRECTORY_CONTENT_TRUNCATED_NOTICE: &str = "<response clipped><NOTE>Due to the max output limit, only part of this directory has been shown to you. You should use `ls -la` instead to view large directories incrementally.</NOTE>";

pub(super) async fn view_file<F: Fs>(
    fs: &F,
    path: &str,
    kind: Option<PathKind>,
    range: Option<&[i64]>,
) -> Result<String> {
    let content = read_text(fs, path, kind).await?;
    let range = match range {
        None | Some([]) => return Ok(make_output(&content, path, 1)),
        Some(r) => r,
    };
    let shown = format!("{range:?}");
    let &[start, end] = range else {
        return Err(invalid(
            "view_range",
            &shown,
            "It should be a list of two integers.",
        ));
    };
    let num_lines = content.split_inclusive('\n').count() as i64;
    if start < 1 || start > num_lines {
        return Err(invalid(
            "view_range",
            &shown,
            &format!(
                "Its first element `{start}` should be within the range of lines of the file: [1, {num_lines}]."
            ),
        ));
    }
    let mut warning = None;
    let end = if end == -1 {
        num_lines
    } else if end > num_lines {
        warning = Some(format!(
            "We only show up to {num_lines} since there're only {num_lines} lines in this file."
        ));
        num_lines
    } else {
        end
    };
    if end < start {
        return Err(invalid(
            "view_range",
            &shown,
            &format!(
                "Its second element `{end}` should be greater than or equal to the first element `{start}`."
            ),
        ));
    }
    let part = lines_between(&content, start as usize - 1, end as usize);
    let part: Vec<&str> = part.lines().collect();
    let out = make_output(&part.join("\n"), path, start as usize);
    Ok(match warning {
        Some(w) => format!("NOTE: {w}\n{out}"),
        None => out,
    })
}

pub(super) async fn view_dir<F: Fs>(fs: &F, path: &str, range: Option<&[i64]>) -> Result<String> {
    if let Some(r) = range.filter(|r| !r.is_empty()) {
        return Err(invalid(
            "view_range",
            format!("{r:?}"),
            "The `view_range` parameter is not allowed when `path` points to a directory.",
        ));
    }
    let snap = fs.list(path).await.map_err(|e| io_error(e, "read", path))?;
    let dirs: std::collections::HashSet<&str> =
        snap.dirs.iter().map(|d| d.trim_end_matches('/')).collect();
    let mut entries: Vec<&str> = snap
        .files
        .keys()
        .map(|k| k.as_str())
        .chain(dirs.iter().copied())
        .collect();
    entries.sort_unstable();
    entries.dedup();
    let hidden = entries
        .iter()
        .filter(|e| !e.contains('/') && e.starts_with('.'))
        .count();
    let visible = |e: &&&str| !e.split('/').any(|p| p.starts_with('.') || p.is_empty());
    let base = if path == "/" { "" } else { path };
    let line = |e: &str| format!("{base}/{e}{}", if dirs.contains(e) { "/" } else { "" });
    let mut lines = vec![format!("{base}/")];
    // Upstream's order: each top-level entry, then (for a directory) its children.
    for top in entries.iter().filter(|e| !e.contains('/')).filter(visible) {
        lines.push(line(top));
        let prefix = format!("{top}/");
        lines.extend(
            entries
                .iter()
                .filter(|e| {
                    e.strip_prefix(&prefix)
                        .is_some_and(|rest| !rest.contains('/'))
                })
                .filter(visible)
                .map(|e| line(e)),
        );
    }
    let mut msg = format!(
        "Here's the files and directories up to 2 levels deep in {path}, excluding hidden items:\n{}",
        lines.join("\n")
    );
    if hidden > 0 {
        msg.push_str(&format!(
            "\n\n{hidden} hidden files/directories in this directory are excluded. You can use 'ls -la {path}' to see them."
        ));
    }
    Ok(maybe_truncate(
        &msg,
        MAX_RESPONSE_LEN_CHAR,
        DIRECTORY_CONTENT_TRUNCATED_NOTICE,
    ))
}

/// Upstream's `_make_output`: cut, then numbered like `cat -n`.
pub(super) fn make_output(content: &str, description: &str, start_line: usize) -> String {
    let content = maybe_truncate(
        content,
        MAX_RESPONSE_LEN_CHAR,
        TEXT_FILE_CONTENT_TRUNCATED_NOTICE,
    );
    // A final newline ends the last line; it adds no empty one (upstream 1.58).
    let mut lines: Vec<&str> = content.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut out = format!("Here's the result of running `cat -n` on {description}:\n");
    for (i, line) in lines.iter().enumerate() {
        out.push_str(&format!("{:6}\t{line}\n", i + start_line));
    }
    out
}

/// Upstream's `maybe_truncate`: at most `limit` characters, the notice in the
/// middle, the head getting the odd character.
pub(super) fn maybe_truncate(content: &str, limit: usize, notice: &str) -> String {
    let n = content.chars().count();
    if n <= limit {
        return content.to_string();
    }
    let notice_len = notice.chars().count();
    if notice_len >= limit {
        return notice.chars().take(limit).collect();
    }
    let available = limit - notice_len;
    let head = available / 2 + available % 2;
    let tail = available - head;
    let head_str: String = content.chars().take(head).collect();
    let tail_str: String = content.chars().skip(n - tail).collect();
    format!("{head_str}{notice}{tail_str}")
}
