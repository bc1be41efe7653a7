//! The patch: a git-style diff of the workspace against its input, computed from
//! two snapshots (no git needed in the image), in the form `git apply` takes:
//! text changes as unified hunks, binary changes as `GIT binary patch` literals
//! with full blob ids, mode changes (the executable bit) and symlinks (mode
//! `120000`, the target as content).
//!
//! A snapshot cut short by its size limit does not know the files it did not
//! read: the patch then leaves out every path that only one side saw (never a
//! deletion or creation of an unread file), its first line says it is incomplete,
//! and [`Patch::complete`] is false. Files too large to diff are left out the
//! same way.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::io::Write as _;

use sha1::{Digest, Sha1};
use similar::TextDiff;

#[cfg(test)]
use crate::workspace::MODE_EXEC;
use crate::workspace::MODE_LINK;

/// Files by relative path; `None` marks a file too large to diff.
pub type Files = BTreeMap<String, Option<Vec<u8>>>;

/// One side of the diff: its files, their git modes (absent = `100644`), and
/// whether it saw the whole workspace.
#[derive(Debug, Clone, Default)]
pub struct Side {
    pub files: Files,
    pub modes: BTreeMap<String, u32>,
    /// (size, mtime) of the files listed without content: a file too large to
    /// diff whose stat changed is named in the incomplete-patch header.
    pub stats: BTreeMap<String, (u64, u64)>,
    pub complete: bool,
}

impl Side {
    /// A complete side of plain files.
    pub fn of(files: Files) -> Side {
        Side {
            files,
            modes: BTreeMap::new(),
            stats: BTreeMap::new(),
            complete: true,
        }
    }

    fn mode(&self, path: &str) -> u32 {
        self.modes.get(path).copied().unwrap_or(0o100644)
    }
}

/// The patch text and whether it covers every change.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    pub text: String,
    pub complete: bool,
}

/// The first line of an incomplete patch (`git apply` skips text before the
/// first `diff --git`).
pub const INCOMPLETE_HEADER: &str = "# fleet: patch incomplete:";

const NULL_ID: &str = "0000000000000000000000000000000000000000";

fn is_binary(b: &[u8]) -> bool {
    b.iter().take(8000).any(|&c| c == 0) || std::str::from_utf8(b).is_err()
}

/// The patch from `before` to `after`. Empty text when nothing changed.
pub fn patch(before: &Side, after: &Side) -> Patch {
    let mut out = String::new();
    let mut left_out = Vec::new();
    let paths: BTreeSet<&String> = before.files.keys().chain(after.files.keys()).collect();
    for path in paths {
        path_diff(&mut out, &mut left_out, path, before, after);
    }
    let header = incomplete_header(before.complete && after.complete, &left_out);
    if let Some(h) = &header {
        out.insert_str(0, h);
    }
    Patch {
        text: out,
        complete: header.is_none(),
    }
}

/// Appends the diff of one `path` between the sides to `out` (nothing when it
/// did not change or one side cannot know it); a path too large to diff goes to
/// `left_out` instead. [`patch`] is this over every path, then
/// [`incomplete_header`]: a caller that holds one path's contents at a time
/// (sides of a single path) builds the same patch path by path.
pub fn path_diff(
    out: &mut String,
    left_out: &mut Vec<String>,
    path: &str,
    before: &Side,
    after: &Side,
) {
    let (old, new) = (before.files.get(path), after.files.get(path));
    let (old_mode, new_mode) = (before.mode(path), after.mode(path));
    let unread_same = matches!((old, new), (Some(None), Some(None)))
        && before.stats.get(path) == after.stats.get(path);
    if old == new && (old.is_none() || old_mode == new_mode) && (old != Some(&None) || unread_same)
    {
        return;
    }
    // One side did not see the path: unknown unless that side is complete.
    if (old.is_none() && !before.complete) || (new.is_none() && !after.complete) {
        return;
    }
    let (old, new) = (old.map(Option::as_deref), new.map(Option::as_deref));
    if matches!(old, Some(None)) || matches!(new, Some(None)) {
        left_out.push(path.to_string());
        return;
    }
    let (old, new) = (old.flatten(), new.flatten());
    let kind_changed =
        old.is_some() && new.is_some() && (old_mode == MODE_LINK) != (new_mode == MODE_LINK);
    if kind_changed {
        // git writes a file↔symlink change as a deletion and a creation.
        file_diff(out, path, old, None, old_mode, new_mode);
        file_diff(out, path, None, new, old_mode, new_mode);
    } else {
        file_diff(out, path, old, new, old_mode, new_mode);
    }
}

/// The first line of the patch when it does not cover every change: a side
/// was cut short (`sides_complete` false) or files were too large to diff.
pub fn incomplete_header(sides_complete: bool, left_out: &[String]) -> Option<String> {
    let mut reasons = Vec::new();
    if !sides_complete {
        reasons.push(
            "a workspace snapshot hit its size limit, so files it did not read are left out"
                .to_string(),
        );
    }
    if !left_out.is_empty() {
        let shown: Vec<&str> = left_out.iter().take(20).map(String::as_str).collect();
        let more = left_out.len().saturating_sub(shown.len());
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        reasons.push(format!("too large to diff: {}{tail}", shown.join(", ")));
    }
    (!reasons.is_empty()).then(|| format!("{INCOMPLETE_HEADER} {}\n", reasons.join("; ")))
}

/// The unified diff of two complete sides of plain files (see [`patch`]).
pub fn unified(before: &Files, after: &Files) -> String {
    patch(&Side::of(before.clone()), &Side::of(after.clone())).text
}

fn file_diff(
    out: &mut String,
    path: &str,
    old: Option<&[u8]>,
    new: Option<&[u8]>,
    old_mode: u32,
    new_mode: u32,
) {
    let _ = writeln!(
        out,
        "diff --git {} {}",
        quoted("a/", path),
        quoted("b/", path)
    );
    match (old, new) {
        (None, Some(_)) => {
            let _ = writeln!(out, "new file mode {new_mode:o}");
        }
        (Some(_), None) => {
            let _ = writeln!(out, "deleted file mode {old_mode:o}");
        }
        _ if old_mode != new_mode => {
            let _ = writeln!(out, "old mode {old_mode:o}\nnew mode {new_mode:o}");
        }
        _ => {}
    }
    if old == new {
        return; // a mode change only
    }
    let from = if old.is_some() {
        quoted("a/", path)
    } else {
        "/dev/null".into()
    };
    let to = if new.is_some() {
        quoted("b/", path)
    } else {
        "/dev/null".into()
    };
    if old.is_some_and(is_binary) || new.is_some_and(is_binary) {
        let (a, b) = (
            old.map_or(NULL_ID.into(), blob_id),
            new.map_or(NULL_ID.into(), blob_id),
        );
        let _ = writeln!(out, "index {a}..{b}\nGIT binary patch");
        literal(out, new.unwrap_or_default());
        literal(out, old.unwrap_or_default());
        return;
    }
    let old_text = String::from_utf8_lossy(old.unwrap_or_default());
    let new_text = String::from_utf8_lossy(new.unwrap_or_default());
    let diff = TextDiff::from_lines(old_text.as_ref(), new_text.as_ref());
    let _ = write!(
        out,
        "{}",
        diff.unified_diff().context_radius(3).header(&from, &to)
    );
    if !out.ends_with('\n') {
        out.push('\n');
    }
}

/// `prefix` + `path` as git writes a name in a patch: C-quoted (`"a/x\ny"`) when
/// it holds a control character, a quote or a backslash, so a file name made by a
/// job can never break the patch into lines of its own choosing.
fn quoted(prefix: &str, path: &str) -> String {
    if !path
        .chars()
        .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        return format!("{prefix}{path}");
    }
    let mut q = String::from("\"");
    q.push_str(prefix);
    for c in path.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    q.push_str(&format!("\\{b:03o}"));
                }
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// Git's blob id of `content`: SHA-1 of `blob <len>\0<content>`.
fn blob_id(content: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    hex::encode(h.finalize())
}

/// One `literal` hunk of a git binary patch: the zlib-deflated content in git's
/// base85, 52 bytes a line, each line led by its length (A–Z = 1–26, a–z = 27–52).
fn literal(out: &mut String, content: &[u8]) {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(content).expect("writing to memory");
    let deflated = z.finish().expect("writing to memory");
    let _ = writeln!(out, "literal {}", content.len());
    for line in deflated.chunks(52) {
        let n = line.len() as u8;
        out.push(if n <= 26 {
            (b'A' + n - 1) as char
        } else {
            (b'a' + n - 27) as char
        });
        base85(out, line);
        out.push('\n');
    }
    out.push('\n');
}

const B85: &[u8; 85] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~";

fn base85(out: &mut String, data: &[u8]) {
    for group in data.chunks(4) {
        let mut word = [0u8; 4];
        word[..group.len()].copy_from_slice(group);
        let mut v = u32::from_be_bytes(word);
        let mut chars = [0u8; 5];
        for c in chars.iter_mut().rev() {
            *c = B85[(v % 85) as usize];
            v /= 85;
        }
        out.extend(chars.iter().map(|&c| c as char));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(items: &[(&str, &str)]) -> Files {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn added_changed_deleted() {
        let before = files(&[("a.txt", "one\ntwo\n"), ("gone.txt", "x\n")]);
        let after = files(&[("a.txt", "one\nthree\n"), ("new.txt", "hi\n")]);
        let d = unified(&before, &after);
        assert!(
            d.contains("diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n"),
            "{d}"
        );
        assert!(d.contains("-two\n+three\n"), "{d}");
        assert!(
            d.contains("new file mode 100644\n--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+hi\n"),
            "{d}"
        );
        assert!(
            d.contains("deleted file mode 100644\n--- a/gone.txt\n+++ /dev/null\n"),
            "{d}"
        );
        assert_eq!(unified(&before, &before), "");
    }

    #[test]
    fn a_truncated_side_never_deletes_or_creates_unread_files() {
        let before = Side::of(files(&[
            ("a.txt", "1\n"),
            ("b.txt", "2\n"),
            ("c.txt", "3\n"),
        ]));
        // The after snapshot stopped before b.txt and c.txt; a.txt changed.
        let mut after = Side::of(files(&[("a.txt", "one\n")]));
        after.complete = false;
        let p = patch(&before, &after);
        assert!(!p.complete);
        assert!(p.text.starts_with(INCOMPLETE_HEADER), "{}", p.text);
        assert!(p.text.contains("+one\n"), "{}", p.text);
        assert!(!p.text.contains("deleted file"), "{}", p.text);
        assert!(!p.text.contains("b.txt"), "{}", p.text);
        // The base was cut short: files only the after side saw may be old ones.
        let mut before = Side::of(files(&[("a.txt", "1\n")]));
        before.complete = false;
        let p = patch(
            &before,
            &Side::of(files(&[("a.txt", "1\n"), ("z.txt", "z\n")])),
        );
        assert!(!p.complete && !p.text.contains("new file"), "{}", p.text);
    }

    #[test]
    fn a_large_file_that_changed_makes_the_patch_incomplete() {
        let mut before = Side::of(Files::new());
        before.files.insert("big.bin".into(), None);
        before.stats.insert("big.bin".into(), (5 << 20, 100));
        let mut after = before.clone();
        assert_eq!(
            patch(&before, &after),
            Patch {
                text: String::new(),
                complete: true
            }
        );
        after.stats.insert("big.bin".into(), (5 << 20, 200));
        let p = patch(&before, &after);
        assert!(
            !p.complete && p.text.contains("too large to diff: big.bin"),
            "{}",
            p.text
        );
    }

    #[test]
    fn base85_matches_git() {
        // git's own encoding of these bytes (from `git diff --binary`).
        let mut s = String::new();
        base85(&mut s, &[0, 0, 0, 0]);
        assert_eq!(s, "00000");
        let mut s = String::new();
        base85(&mut s, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(s, "|NsC0");
        assert_eq!(blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }

    /// Writes a side to a directory as real files, modes and symlinks.
    fn materialise(dir: &std::path::Path, side: &Side) {
        use std::os::unix::fs::PermissionsExt;
        for (path, body) in &side.files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let body = body.as_ref().unwrap();
            match side.mode(path) {
                MODE_LINK => {
                    std::os::unix::fs::symlink(std::str::from_utf8(body).unwrap(), &p).unwrap()
                }
                m => {
                    std::fs::write(&p, body).unwrap();
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m & 0o777))
                        .unwrap();
                }
            }
        }
    }

    /// What a directory holds, as a side (regular files, the exec bit, symlinks).
    fn read_back(dir: &std::path::Path) -> Side {
        use std::os::unix::fs::PermissionsExt;
        let mut side = Side::of(Files::new());
        fn walk(root: &std::path::Path, dir: &std::path::Path, side: &mut Side) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if rel == ".git" {
                    continue;
                }
                let t = e.file_type().unwrap();
                if t.is_dir() {
                    walk(root, &e.path(), side);
                } else if t.is_symlink() {
                    let target = std::fs::read_link(e.path()).unwrap();
                    side.files.insert(
                        rel.clone(),
                        Some(target.to_string_lossy().as_bytes().to_vec()),
                    );
                    side.modes.insert(rel, MODE_LINK);
                } else {
                    let m = e.metadata().unwrap().permissions().mode();
                    if m & 0o111 != 0 {
                        side.modes.insert(rel.clone(), MODE_EXEC);
                    }
                    side.files
                        .insert(rel, Some(std::fs::read(e.path()).unwrap()));
                }
            }
        }
        walk(dir, dir, &mut side);
        side
    }

    #[test]
    fn real_git_apply_reproduces_binary_mode_and_symlink_changes() {
        let bin_old: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut bin_new = bin_old.clone();
        bin_new[100] ^= 0xff;
        bin_new.extend([0u8, 1, 2, 3]);
        let mut before = Side::of(files(&[
            ("text.txt", "a\nb\nc\n"),
            ("run.sh", "#!/bin/sh\necho hi\n"),
            ("gone.txt", "bye\n"),
            ("link", "text.txt"),
            ("becomes-link", "plain\n"),
            ("no-newline.txt", "x"),
        ]));
        before.files.insert("blob.bin".into(), Some(bin_old));
        before
            .files
            .insert("gone.bin".into(), Some(vec![0, 159, 146, 150]));
        before.modes.insert("link".into(), MODE_LINK);
        let mut after = Side::of(files(&[
            ("text.txt", "a\nB\nc\n"),
            ("we\"ird\nname\t\\x\u{1}.txt", "+++ b/injected\n"),
            ("run.sh", "#!/bin/sh\necho hi\n"),
            ("link", "run.sh"),
            ("becomes-link", "text.txt"),
            ("new-link", "sub/deep.txt"),
            ("sub/deep.txt", "deep\n"),
            ("tool", "#!/bin/sh\n"),
            ("no-newline.txt", "y"),
        ]));
        after.files.insert("blob.bin".into(), Some(bin_new));
        after
            .files
            .insert("new.bin".into(), Some(vec![0xff, 0, 0xfe, 1, 2]));
        after.files.insert("empty.bin".into(), Some(Vec::new()));
        for (p, m) in [
            ("run.sh", MODE_EXEC),
            ("tool", MODE_EXEC),
            ("link", MODE_LINK),
            ("becomes-link", MODE_LINK),
            ("new-link", MODE_LINK),
        ] {
            after.modes.insert(p.into(), m);
        }
        let p = patch(&before, &after);
        assert!(p.complete, "{}", p.text);
        let dir = tempfile::tempdir().unwrap();
        materialise(dir.path(), &before);
        let pdir = tempfile::tempdir().unwrap();
        let patch_file = pdir.path().join("p.diff");
        std::fs::write(&patch_file, &p.text).unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("git (the patch must apply with a real git)");
            assert!(
                out.status.success(),
                "git {args:?}: {}\n--- patch\n{}",
                String::from_utf8_lossy(&out.stderr),
                p.text
            );
        };
        git(&["init", "-q"]);
        git(&["apply", "--check", patch_file.to_str().unwrap()]);
        git(&["apply", patch_file.to_str().unwrap()]);
        let got = read_back(dir.path());
        assert_eq!(got.files, after.files, "{}", p.text);
        assert_eq!(got.modes, after.modes, "{}", p.text);
    }

    #[test]
    fn an_incomplete_patch_still_applies() {
        let before = Side::of(files(&[("a.txt", "1\n"), ("b.txt", "2\n")]));
        let mut after = Side::of(files(&[("a.txt", "one\n")]));
        after.complete = false;
        let p = patch(&before, &after);
        let dir = tempfile::tempdir().unwrap();
        materialise(dir.path(), &before);
        let f = dir.path().join(".patch");
        std::fs::write(&f, &p.text).unwrap();
        let out = std::process::Command::new("git")
            .args(["apply", ".patch"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.txt")).unwrap(),
            "one\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("b.txt")).unwrap(),
            "2\n"
        );
    }
}
