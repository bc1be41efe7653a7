//! The base snapshot (the workspace as the input left it) kept on disk while the
//! job runs, and its pairing with the final snapshot at collect time. Both are
//! [`Spilled`] snapshots: their contents went to scratch files as they were read
//! and only an index (path → offset, length, SHA-256) is in memory, so neither a
//! running job nor its collection holds the workspace. [`Base::sides`] drops the
//! files whose content and mode did not change from both sides unread, and reads
//! back only the contents of changed, created or deleted files.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use super::diff::{self, Side};
use crate::workspace::Snapshot;
use crate::workspace::spill::{Spilled, Stored};

/// The base snapshot on disk (see the module doc). The scratch file is removed
/// when this is dropped.
#[derive(Debug)]
pub struct Base(Spilled);

impl From<Spilled> for Base {
    fn from(s: Spilled) -> Base {
        Base(s)
    }
}

impl Base {
    /// The snapshot on disk.
    pub fn spilled(&self) -> &Spilled {
        &self.0
    }

    /// Every file's path and whether it is a symlink; `None` when the snapshot
    /// was cut short (it may not list everything).
    pub fn listing(&self) -> Option<Vec<(String, bool)>> {
        if self.0.truncated {
            return None;
        }
        let link = |p: &str| self.0.modes.get(p) == Some(&crate::workspace::MODE_LINK);
        Some(self.0.files.keys().map(|p| (p.clone(), link(p))).collect())
    }

    /// Writes the contents of an in-memory `snap` to the file `path` and keeps the
    /// index.
    pub fn spill(snap: Snapshot, path: &Path) -> std::io::Result<Base> {
        let b = Spilled::from_snapshot(snap, path)?;
        give_back_freed_memory();
        Ok(Base(b))
    }

    /// The patch of `after` (the final snapshot, also on disk) against the base,
    /// written to the file `out` one path at a time: files whose length, SHA-256
    /// and mode did not change are never read, and only one path's contents and
    /// its piece of the patch (masked by `mask` as it is made) are in memory at
    /// once. Files over `max_diff` are left out as too large to diff. The same
    /// text as [`diff::patch`] of both sides in memory.
    pub fn write_patch(
        &self,
        after: &Spilled,
        max_diff: usize,
        mask: &dyn Fn(&str) -> String,
        out: &Path,
    ) -> std::io::Result<PatchFile> {
        let base = &self.0;
        let (mut fb, mut fa) = (base.open()?, after.open()?);
        let complete = |s: &Spilled| Side {
            complete: !s.truncated,
            ..Side::default()
        };
        let mode = |m: &BTreeMap<String, u32>, p: &str| m.get(p).copied();
        // The header (if any) comes first, known only at the end: the body goes
        // to an anonymous scratch file beside `out` and is copied after it.
        let dir = out.parent().unwrap_or(Path::new("."));
        let mut body = std::io::BufWriter::new(tempfile::tempfile_in(dir)?);
        let mut left_out = Vec::new();
        let paths: BTreeSet<&String> = base.files.keys().chain(after.files.keys()).collect();
        let mut piece = String::new();
        for rel in paths {
            let (b, a) = (base.files.get(rel), after.files.get(rel));
            let unchanged = match (b, a) {
                (Some(Some(b)), Some(Some(a))) => b.len == a.len && b.sha == a.sha,
                (Some(None), Some(None)) => base.stats.get(rel) == after.stats.get(rel),
                _ => false,
            };
            if unchanged && mode(&base.modes, rel) == mode(&after.modes, rel) {
                continue;
            }
            let (mut before, mut now) = (complete(base), complete(after));
            if let Some(stored) = b {
                add(&mut before, &mut fb, base, rel, stored, max_diff)?;
            }
            if let Some(stored) = a {
                add(&mut now, &mut fa, after, rel, stored, max_diff)?;
            }
            piece.clear();
            diff::path_diff(&mut piece, &mut left_out, rel, &before, &now);
            if !piece.is_empty() {
                body.write_all(mask(&piece).as_bytes())?;
            }
        }
        let header = diff::incomplete_header(!base.truncated && !after.truncated, &left_out);
        let mut body = body.into_inner().map_err(|e| e.into_error())?;
        body.seek(SeekFrom::Start(0))?;
        let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
        if let Some(h) = &header {
            file.write_all(mask(h).as_bytes())?;
        }
        std::io::copy(&mut body, &mut file)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        Ok(PatchFile {
            bytes: file.metadata()?.len(),
            complete: header.is_none(),
        })
    }
}

/// What [`Base::write_patch`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchFile {
    pub bytes: u64,
    pub complete: bool,
}

/// Puts `rel` on `side`, its content read back from `f` (the scratch file of
/// `snap`) when it is at most `max_diff` bytes.
fn add(
    side: &mut Side,
    f: &mut std::fs::File,
    snap: &Spilled,
    rel: &str,
    stored: &Option<Stored>,
    max_diff: usize,
) -> std::io::Result<()> {
    let content = match stored {
        Some(s) if s.len as usize <= max_diff => Some(Spilled::read_from(f, s)?),
        _ => None,
    };
    if content.is_none()
        && let Some(st) = snap.stats.get(rel)
    {
        side.stats.insert(rel.to_string(), *st);
    }
    if let Some(m) = snap.modes.get(rel) {
        side.modes.insert(rel.to_string(), *m);
    }
    side.files.insert(rel.to_string(), content);
    Ok(())
}

/// The snapshot's contents were freed just now; glibc keeps freed blocks of a
/// thread's arena resident, so the next snapshot (read on another thread) would
/// double the worker's footprint. Hand them back to the system.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(items: &[(&str, Option<&str>)], truncated: bool) -> Snapshot {
        Snapshot {
            files: items
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(|s| s.as_bytes().to_vec())))
                .collect(),
            truncated,
            ..Snapshot::default()
        }
    }

    fn side(s: &Snapshot) -> Side {
        Side {
            files: s.files.clone(),
            modes: s.modes.clone(),
            stats: s.stats.clone(),
            complete: !s.truncated,
        }
    }

    /// The patch written from both snapshots spilled, and the file it went to.
    fn from_disk(
        dir: &Path,
        before: Snapshot,
        after: Snapshot,
        mask: &dyn Fn(&str) -> String,
    ) -> (String, PatchFile) {
        let base = Base::spill(before, &dir.join("base")).unwrap();
        let after = Spilled::from_snapshot(after, &dir.join("after")).unwrap();
        let out = dir.join("patch.diff");
        let done = base.write_patch(&after, 1 << 20, mask, &out).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(done.bytes, text.len() as u64);
        for (p, what) in [
            (dir.join("base"), "base"),
            (after.path().to_path_buf(), "after"),
        ] {
            assert!(p.exists(), "{what}");
        }
        drop((base, after));
        assert!(
            !dir.join("base").exists() && !dir.join("after").exists(),
            "the scratch files go with the snapshots"
        );
        (text, done)
    }

    fn same(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn the_patch_from_spilled_snapshots_equals_the_patch_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let before = snap(
            &[
                ("same.txt", Some("s\n")),
                ("changed.txt", Some("1\n")),
                ("gone.txt", Some("g\n")),
                ("big", None),
            ],
            false,
        );
        let mut after = snap(
            &[
                ("same.txt", Some("s\n")),
                ("changed.txt", Some("2\n")),
                ("new.txt", Some("n\n")),
                ("big", None),
            ],
            false,
        );
        after
            .modes
            .insert("same.txt".into(), crate::workspace::MODE_EXEC);
        let in_memory = diff::patch(&side(&before), &side(&after));
        let (text, done) = from_disk(dir.path(), before, after, &same);
        assert_eq!(text, in_memory.text);
        assert!(done.complete && in_memory.complete);
        assert!(in_memory.text.contains("+2") && in_memory.text.contains("deleted file"));
        assert!(
            in_memory.text.contains("new mode 100755"),
            "{}",
            in_memory.text
        );
    }

    #[test]
    fn incomplete_binary_link_and_masked_patches_match_too() {
        use crate::workspace::{MODE_EXEC, MODE_LINK};
        let mut before = snap(
            &[
                ("a.txt", Some("token=SECRET\n")),
                ("b.txt", Some("2\n")),
                ("link", Some("a.txt")),
                ("run.sh", Some("#!/bin/sh\n")),
                ("large", None),
            ],
            false,
        );
        before.files.insert("bin".into(), Some(vec![0, 1, 2, 3]));
        before.modes.insert("link".into(), MODE_LINK);
        before.stats.insert("large".into(), (5 << 20, 1));
        // The final snapshot stopped before `z.txt`; `large` changed on disk.
        let mut after = snap(
            &[
                ("a.txt", Some("token=SECRET again\n")),
                ("b.txt", Some("2\n")),
                ("link", Some("b.txt")),
                ("run.sh", Some("#!/bin/sh\n")),
                ("large", None),
            ],
            true,
        );
        after.files.insert("bin".into(), Some(vec![0, 1, 2, 4, 0]));
        after.modes.insert("link".into(), MODE_LINK);
        after.modes.insert("run.sh".into(), MODE_EXEC);
        after.stats.insert("large".into(), (5 << 20, 2));
        before
            .files
            .insert("z.txt".into(), Some(b"unread\n".to_vec()));
        let mask = |s: &str| s.replace("SECRET", "<secret-hidden>");
        let dir = tempfile::tempdir().unwrap();
        let in_memory = diff::patch(&side(&before), &side(&after));
        let (text, done) = from_disk(dir.path(), before, after, &mask);
        assert_eq!(text, mask(&in_memory.text));
        assert!(!done.complete && !in_memory.complete);
        assert!(text.starts_with(diff::INCOMPLETE_HEADER), "{text}");
        assert!(text.contains("too large to diff: large"), "{text}");
        assert!(text.contains("GIT binary patch"), "{text}");
        assert!(text.contains("new mode 100755"), "{text}");
        assert!(
            !text.contains("SECRET") && !text.contains("z.txt"),
            "{text}"
        );
    }
}
