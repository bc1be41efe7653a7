//! Snapshots that keep their contents on disk: [`Builder`] is what both backends'
//! snapshot readers fill, file by file as they read; it keeps the contents in
//! memory ([`Snapshot`]) or writes each one to a scratch file as soon as it is read
//! ([`Spilled`]: only an index of path → offset, length, SHA-256 stays in memory).
//! A spilled snapshot of a workspace therefore costs the worker its index and one
//! file at a time, whatever the snapshot limit.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Snapshot;

/// Where one file's content is in the scratch file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    offset: u64,
    pub len: u64,
    pub sha: [u8; 32],
}

/// A snapshot on disk (see the module doc). The scratch file is removed when
/// this is dropped.
#[derive(Debug)]
pub struct Spilled {
    path: PathBuf,
    /// `None`: listed without content (too large), as in [`Snapshot::files`].
    pub files: BTreeMap<String, Option<Stored>>,
    pub modes: BTreeMap<String, u32>,
    pub stats: BTreeMap<String, (u64, u64)>,
    pub truncated: bool,
}

/// The SHA-256 a [`Stored`] content is compared by.
pub fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

impl Spilled {
    /// Writes the contents of an in-memory `snap` to the file `path`.
    pub fn from_snapshot(snap: Snapshot, path: &Path) -> std::io::Result<Spilled> {
        let mut b = Builder::spilling(path, u64::MAX)?;
        for (rel, content) in snap.files {
            match content {
                Some(c) => {
                    b.content(rel, c)?;
                }
                None => {
                    b.snap.files.insert(rel, None);
                }
            }
        }
        b.snap.modes = snap.modes;
        b.snap.stats = snap.stats;
        b.snap.truncated = snap.truncated;
        b.into_spilled()
    }

    /// Opens the scratch file for [`Spilled::read_from`].
    pub fn open(&self) -> std::io::Result<File> {
        File::open(&self.path)
    }

    /// One file's content, read back from `f` (see [`Spilled::open`]).
    pub fn read_from(f: &mut File, s: &Stored) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; s.len as usize];
        f.seek(SeekFrom::Start(s.offset))?;
        f.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// The content of `rel` when the snapshot read it.
    pub fn read(&self, rel: &str) -> std::io::Result<Option<Vec<u8>>> {
        match self.files.get(rel) {
            Some(Some(s)) => Self::read_from(&mut self.open()?, s).map(Some),
            _ => Ok(None),
        }
    }

    /// Where the contents are.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Spilled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Out {
    path: PathBuf,
    w: BufWriter<File>,
    offset: u64,
    index: BTreeMap<String, Stored>,
}

/// What a snapshot reader fills (see the module doc). The reader lists entries
/// in `snap` directly (dirs, modes, stats, files too large to read) and hands
/// every content it reads to [`Builder::content`], which applies the total limit.
pub struct Builder {
    pub snap: Snapshot,
    total: u64,
    max_total: u64,
    out: Option<Out>,
}

/// What [`Builder::entry`] made of an archive entry.
pub enum Added {
    /// Listed (and read, when small enough); go on.
    Listed,
    /// The total was reached: the snapshot is truncated, stop reading.
    Full,
    /// Not a directory, regular file or symlink: the caller's to handle.
    Other,
}

impl Builder {
    /// Adds a directory, a regular file (its content when at most `max_file`
    /// bytes, else its size and mtime only) or a symlink (its target as content)
    /// read from an archive, at `rel`.
    pub fn entry<R: Read>(
        &mut self,
        rel: String,
        entry: &mut tar::Entry<'_, R>,
        max_file: u64,
    ) -> std::io::Result<Added> {
        let content = match entry.header().entry_type() {
            tar::EntryType::Directory => {
                self.snap.dirs.push(rel);
                return Ok(Added::Listed);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if entry.size() > max_file {
                    let mtime = entry.header().mtime().unwrap_or(0);
                    self.snap.stats.insert(rel.clone(), (entry.size(), mtime));
                    self.snap.files.insert(rel, None);
                    return Ok(Added::Listed);
                }
                if entry.header().mode().is_ok_and(|m| m & 0o111 != 0) {
                    self.snap.modes.insert(rel.clone(), super::MODE_EXEC);
                }
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut data)?;
                data
            }
            tar::EntryType::Symlink => {
                self.snap.modes.insert(rel.clone(), super::MODE_LINK);
                entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default()
            }
            _ => return Ok(Added::Other),
        };
        Ok(if self.content(rel, content)? {
            Added::Listed
        } else {
            Added::Full
        })
    }

    /// Contents kept in memory.
    pub fn in_memory(max_total: u64) -> Builder {
        Builder {
            snap: Snapshot::default(),
            total: 0,
            max_total,
            out: None,
        }
    }

    /// Contents written to the new file `path` as they are read.
    pub fn spilling(path: &Path, max_total: u64) -> std::io::Result<Builder> {
        let w = BufWriter::new(File::create(path)?);
        let mut b = Builder::in_memory(max_total);
        b.out = Some(Out {
            path: path.to_path_buf(),
            w,
            offset: 0,
            index: BTreeMap::new(),
        });
        Ok(b)
    }

    /// A spilling builder when `spill` names a file, else an in-memory one.
    pub fn new(spill: Option<&Path>, max_total: u64) -> std::io::Result<Builder> {
        match spill {
            Some(p) => Builder::spilling(p, max_total),
            None => Ok(Builder::in_memory(max_total)),
        }
    }

    /// Adds a file read in full. `Ok(false)` when it would pass the total: the
    /// snapshot is then marked truncated and the reader stops.
    pub fn content(&mut self, rel: String, content: Vec<u8>) -> std::io::Result<bool> {
        let len = content.len() as u64;
        if self.total.saturating_add(len) > self.max_total {
            self.snap.truncated = true;
            return Ok(false);
        }
        self.total += len;
        match &mut self.out {
            None => {
                self.snap.files.insert(rel, Some(content));
            }
            Some(out) => {
                out.w.write_all(&content)?;
                let s = Stored {
                    offset: out.offset,
                    len,
                    sha: sha(&content),
                };
                out.offset += len;
                out.index.insert(rel.clone(), s);
                // Listed here too (as unread) so the reader sees every path it added.
                self.snap.files.insert(rel, None);
            }
        }
        Ok(true)
    }

    /// The content already added for `rel` (a hard link to it).
    pub fn get(&mut self, rel: &str) -> std::io::Result<Option<Vec<u8>>> {
        match &mut self.out {
            None => Ok(self.snap.files.get(rel).cloned().flatten()),
            Some(out) => match out.index.get(rel) {
                None => Ok(None),
                Some(s) => {
                    out.w.flush()?;
                    Spilled::read_from(&mut File::open(&out.path)?, s).map(Some)
                }
            },
        }
    }

    /// The in-memory snapshot (a spilling builder's contents are left on disk).
    pub fn into_snapshot(mut self) -> Snapshot {
        self.snap.dirs.sort();
        if let Some(out) = self.out.take() {
            let _ = std::fs::remove_file(&out.path);
        }
        std::mem::take(&mut self.snap)
    }

    /// The spilled snapshot; an error for a builder made by [`Builder::in_memory`].
    pub fn into_spilled(mut self) -> std::io::Result<Spilled> {
        let Some(mut out) = self.out.take() else {
            return Err(std::io::Error::other("snapshot was not spilled"));
        };
        out.w.flush()?;
        let mut files: BTreeMap<String, Option<Stored>> = BTreeMap::new();
        for (rel, _) in std::mem::take(&mut self.snap.files) {
            let stored = out.index.remove(&rel);
            files.insert(rel, stored);
        }
        Ok(Spilled {
            path: out.path,
            files,
            modes: std::mem::take(&mut self.snap.modes),
            stats: std::mem::take(&mut self.snap.stats),
            truncated: self.snap.truncated,
        })
    }
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("snap", &self.snap)
            .field("total", &self.total)
            .field("spill", &self.out.as_ref().map(|o| &o.path))
            .finish()
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        if let Some(out) = &self.out {
            let _ = std::fs::remove_file(&out.path);
        }
    }
}
