//! The base snapshot (the workspace as the input left it) kept on disk while the
//! job runs: its file contents go to one scratch file and only an index stays in
//! memory (path → offset, length, SHA-256), so a running job holds none of its
//! workspace. At collect time [`Base::sides`] pairs it with the final snapshot:
//! files whose content and mode did not change are dropped from both sides
//! unread, and only the base contents of changed or deleted files are read back.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::diff::Side;
use crate::workspace::Snapshot;

/// Where one file's content is in the scratch file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    offset: u64,
    len: u64,
    sha: [u8; 32],
}

/// The base snapshot on disk (see the module doc). The scratch file is removed
/// when this is dropped.
#[derive(Debug)]
pub struct Base {
    path: PathBuf,
    /// `None`: listed without content (too large), as in [`Snapshot::files`].
    files: BTreeMap<String, Option<Stored>>,
    modes: BTreeMap<String, u32>,
    stats: BTreeMap<String, (u64, u64)>,
    complete: bool,
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

impl Base {
    /// Writes the contents of `snap` to the file `path` and keeps the index.
    pub fn spill(snap: Snapshot, path: &Path) -> std::io::Result<Base> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut files = BTreeMap::new();
        let mut offset = 0u64;
        for (rel, content) in snap.files {
            let stored = match content {
                None => None,
                Some(b) => {
                    out.write_all(&b)?;
                    let s = Stored {
                        offset,
                        len: b.len() as u64,
                        sha: sha(&b),
                    };
                    offset += s.len;
                    Some(s)
                }
            };
            files.insert(rel, stored);
        }
        out.flush()?;
        give_back_freed_memory();
        Ok(Base {
            path: path.to_path_buf(),
            files,
            modes: snap.modes,
            stats: snap.stats,
            complete: !snap.truncated,
        })
    }

    /// The two sides of the patch against `after`, without the files that did not
    /// change. Files over `max_diff` are listed without content on both sides.
    pub fn sides(&self, after: Snapshot, max_diff: usize) -> std::io::Result<(Side, Side)> {
        let mut f = std::fs::File::open(&self.path)?;
        let mut before = Side {
            complete: self.complete,
            ..Side::default()
        };
        let mut now = Side {
            complete: !after.truncated,
            ..Side::default()
        };
        let mode = |m: &BTreeMap<String, u32>, p: &str| m.get(p).copied();
        let mut unchanged_paths = std::collections::BTreeSet::new();
        for (rel, content) in after.files {
            let unchanged = match (self.files.get(&rel), &content) {
                (Some(Some(s)), Some(b)) => s.len == b.len() as u64 && s.sha == sha(b),
                (Some(None), None) => self.stats.get(&rel) == after.stats.get(&rel),
                _ => false,
            };
            if unchanged && mode(&self.modes, &rel) == mode(&after.modes, &rel) {
                unchanged_paths.insert(rel);
                continue;
            }
            let content = content.filter(|b| b.len() <= max_diff);
            if content.is_none() {
                if let Some(st) = after.stats.get(&rel) {
                    now.stats.insert(rel.clone(), *st);
                }
            }
            if let Some(m) = mode(&after.modes, &rel) {
                now.modes.insert(rel.clone(), m);
            }
            now.files.insert(rel, content);
        }
        // The base side of every path left: changed, deleted, or unseen by `after`.
        for (rel, stored) in &self.files {
            if unchanged_paths.contains(rel) {
                continue;
            }
            let content = match stored {
                Some(s) if s.len as usize <= max_diff => {
                    let mut buf = vec![0u8; s.len as usize];
                    f.seek(SeekFrom::Start(s.offset))?;
                    f.read_exact(&mut buf)?;
                    Some(buf)
                }
                _ => None,
            };
            if content.is_none() {
                if let Some(st) = self.stats.get(rel) {
                    before.stats.insert(rel.clone(), *st);
                }
            }
            if let Some(m) = self.modes.get(rel) {
                before.modes.insert(rel.clone(), *m);
            }
            before.files.insert(rel.clone(), content);
        }
        Ok((before, now))
    }
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

impl Drop for Base {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::diff;

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

    #[test]
    fn the_patch_from_a_spilled_base_equals_the_patch_from_memory() {
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
        let in_memory = diff::patch(
            &Side {
                files: before.files.clone(),
                modes: before.modes.clone(),
                stats: before.stats.clone(),
                complete: true,
            },
            &Side {
                files: after.files.clone(),
                modes: after.modes.clone(),
                stats: after.stats.clone(),
                complete: true,
            },
        );
        let base = Base::spill(before, &dir.path().join("base")).unwrap();
        let (b, a) = base.sides(after, 1 << 20).unwrap();
        // Unchanged files are never read back or diffed.
        assert!(
            !b.files.contains_key("big") && !a.files.contains_key("big"),
            "{b:?}"
        );
        assert_eq!(diff::patch(&b, &a), in_memory);
        assert!(in_memory.text.contains("+2") && in_memory.text.contains("deleted file"));
        assert!(
            in_memory.text.contains("new mode 100755"),
            "{}",
            in_memory.text
        );
        let path = dir.path().join("base");
        assert!(path.exists());
        drop(base);
        assert!(!path.exists(), "the scratch file goes with the base");
    }
}
