//! The base snapshot read from the input's own tar instead of from the
//! workspace: when the image ships nothing at the workdir, the workdir after the
//! upload is exactly the archive's files, so the round trip that would read them
//! back is skipped. Only an archive whose meaning is plain qualifies — relative
//! paths without `..`, each named once, regular files, directories and symlinks.
//! Anything else (hard links, devices, a path given twice, one that climbs out)
//! answers `None`, and the caller reads the workspace as before: what the engine
//! made of such an archive is the engine's to say.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use super::base::Base;
use crate::workspace::spill::{Added, Builder};

/// The base of a workdir that held nothing before `tar` was unpacked into it,
/// its contents written to the new file `spill`; `None` when the archive is not
/// plain enough to be sure (see the module doc).
pub fn base_from_input_tar(
    tar: &Path,
    max_file: u64,
    max_total: u64,
    spill: &Path,
) -> std::io::Result<Option<Base>> {
    let mut b = Builder::spilling(spill, max_total)?;
    let plain = read_plain(std::fs::File::open(tar)?, max_file, &mut b)?;
    if !plain {
        drop(b.into_snapshot());
        return Ok(None);
    }
    Ok(Some(Base::from(b.into_spilled()?)))
}

/// Fills `b` from the archive; false as soon as an entry is not plain.
fn read_plain(r: impl Read, max_file: u64, b: &mut Builder) -> std::io::Result<bool> {
    let mut seen = BTreeSet::new();
    let mut archive = tar::Archive::new(r);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(rel) = relative(&name) else {
            return Ok(false);
        };
        let kind = entry.header().entry_type();
        if rel.is_empty() {
            // The archive's own `./`.
            if kind.is_dir() {
                continue;
            }
            return Ok(false);
        }
        if !seen.insert(rel.clone()) {
            return Ok(false);
        }
        // A path below a file or a symlink would not land where it says.
        if ancestors(&rel).any(|a| !b.snap.dirs.contains(&a.to_string()) && seen.contains(a)) {
            return Ok(false);
        }
        match b.entry(rel, &mut entry, max_file)? {
            Added::Listed => {}
            Added::Full => break,
            Added::Other => return Ok(false),
        }
    }
    Ok(true)
}

/// `./a/b` and `a/b/` → `a/b`; `""` for the root; `None` for an absolute path,
/// a `..` component or a name that is not clean UTF-8 text.
fn relative(name: &str) -> Option<String> {
    if name.starts_with('/') || name.contains('\u{FFFD}') || name.contains('\\') {
        return None;
    }
    let mut parts = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// `a/b/c` → `a/b`, `a`.
fn ancestors(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(|(i, _)| &rel[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::{MODE_EXEC, MODE_LINK};

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], u32)]) -> tempfile::NamedTempFile {
        let mut t = tar::Builder::new(Vec::new());
        for (name, kind, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            // Names written raw: the tar crate refuses to build `..` or `/x`.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            let body: &[u8] = if *kind == tar::EntryType::Symlink {
                h.as_old_mut().linkname[..data.len()].copy_from_slice(data);
                &[]
            } else {
                data
            };
            h.set_size(body.len() as u64);
            h.set_cksum();
            t.append(&h, body).unwrap();
        }
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), t.into_inner().unwrap()).unwrap();
        f
    }

    fn base(t: &tempfile::NamedTempFile) -> Option<Base> {
        // The base owns its scratch file from here on (removed with it).
        let spill = tempfile::NamedTempFile::new()
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        base_from_input_tar(t.path(), 1 << 20, 1 << 30, &spill).unwrap()
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};

    #[test]
    fn a_plain_archive_is_its_own_base() {
        let t = tar_of(&[
            ("./", D, b"", 0o755),
            ("./src/", D, b"", 0o755),
            ("./src/a.txt", F, b"hello\n", 0o644),
            ("./run.sh", F, b"#!/bin/sh\n", 0o755),
            ("./link", L, b"src/a.txt", 0o777),
        ]);
        let b = base(&t).expect("plain");
        let s = b.spilled();
        assert_eq!(s.read("src/a.txt").unwrap().unwrap(), b"hello\n");
        assert_eq!(s.modes.get("run.sh"), Some(&MODE_EXEC));
        assert_eq!(s.modes.get("link"), Some(&MODE_LINK));
        assert_eq!(s.read("link").unwrap().unwrap(), b"src/a.txt");
    }

    #[test]
    fn anything_not_plain_is_left_to_the_workspace() {
        for bad in [
            tar_of(&[("../up.txt", F, b"x", 0o644)]),
            tar_of(&[("/etc/x", F, b"x", 0o644)]),
            tar_of(&[("a", F, b"1", 0o644), ("./a", F, b"2", 0o644)]),
            tar_of(&[("a", F, b"1", 0o644), ("b", H, b"", 0o644)]),
            tar_of(&[("l", L, b"/tmp", 0o777), ("l/x", F, b"1", 0o644)]),
            tar_of(&[("f", F, b"1", 0o644), ("f/x", F, b"1", 0o644)]),
            tar_of(&[("fifo", tar::EntryType::Fifo, b"", 0o644)]),
        ] {
            assert!(base(&bad).is_none());
        }
    }
}
