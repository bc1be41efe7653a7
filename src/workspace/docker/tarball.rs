//! The tar side of the archive API, with no I/O: building the small archives that
//! create directories and files, and reading Docker's archives of a file or a tree.

use std::io::Read;

use crate::workspace::WorkspaceError;
use crate::workspace::spill::{Added, Builder};

/// An archive of directory entries (`rel_dirs`, in order, mode 0755) and at most
/// one file, all relative to the directory it is uploaded to, owned by `owner`
/// (uid, gid; root without one).
pub(super) fn build_tar(
    rel_dirs: &[String],
    file: Option<(&str, &[u8], u32)>,
    owner: Option<(u64, u64)>,
) -> Result<Vec<u8>, WorkspaceError> {
    let (uid, gid) = owner.unwrap_or((0, 0));
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut b = tar::Builder::new(Vec::new());
    for dir in rel_dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(mtime);
        h.set_uid(uid);
        h.set_gid(gid);
        b.append_data(&mut h, format!("{dir}/"), std::io::empty())?;
    }
    if let Some((name, data, mode)) = file {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(mtime);
        h.set_uid(uid);
        h.set_gid(gid);
        b.append_data(&mut h, name, data)?;
    }
    Ok(b.into_inner()?)
}

/// The single entry Docker sends for a file path.
#[derive(Debug, PartialEq)]
pub(super) enum Entry {
    File(Vec<u8>),
    Link(String),
}

pub(super) fn first_file(reader: &mut dyn Read, shown: &str) -> Result<Entry, WorkspaceError> {
    let path_err = |message: &str| WorkspaceError::Path {
        path: shown.to_string(),
        message: message.to_string(),
    };
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries()?;
    let Some(entry) = entries.next() else {
        return Err(path_err("empty archive from docker"));
    };
    let mut entry = entry?;
    match entry.header().entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut data)?;
            Ok(Entry::File(data))
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            Ok(Entry::Link(target))
        }
        tar::EntryType::Directory => Err(path_err("is a directory")),
        _ => Err(path_err("is not a regular file")),
    }
}

#[derive(Debug)]
pub(super) enum Tree {
    Dir(Builder),
    Link(String),
}

/// Reads a directory's archive (entries named `<dirname>/…`) into the snapshot
/// builder `b` (which keeps the contents in memory or spills them to disk).
/// Symlinks are kept as files whose content is the link target (as git does), and
/// hard links as a copy of the file they point at.
///
/// With `root`, the archive is not the engine's but one a program in the
/// workspace wrote (`shelltar.rs`), so nothing in it is taken on trust: every
/// entry (and every hard link's target) must be `root` or below it, named
/// without `..` or a leading `/`, or the whole archive is refused.
pub(super) fn read_tree(
    reader: &mut dyn Read,
    shown: &str,
    max_file: u64,
    mut b: Builder,
    root: Option<&str>,
) -> Result<Tree, WorkspaceError> {
    let mut archive = tar::Archive::new(reader);
    let refuse = |name: &str| WorkspaceError::Path {
        path: shown.to_string(),
        message: format!("the archive names {name:?}, outside the directory"),
    };
    for (i, entry) in archive.entries()?.enumerate() {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if let Some(root) = root {
            if !confined(&name, root) {
                return Err(refuse(&name));
            }
            if kind == tar::EntryType::Link {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if !confined(&target, root) {
                    return Err(refuse(&target));
                }
            }
        }
        let Some(rel) = strip_root(&name) else {
            if i > 0 {
                continue;
            }
            // The first entry is `dir` itself.
            match kind {
                tar::EntryType::Directory => continue,
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned());
                    return Ok(Tree::Link(target.unwrap_or_default()));
                }
                _ => {
                    return Err(WorkspaceError::Path {
                        path: shown.to_string(),
                        message: "is not a directory".into(),
                    });
                }
            }
        };
        if kind == tar::EntryType::Link {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let data = match strip_root(&target) {
                Some(t) => b.get(&t)?,
                None => None,
            };
            match data {
                Some(data) => {
                    if !b.content(rel, data)? {
                        break;
                    }
                }
                None => {
                    b.snap.files.insert(rel, None);
                }
            }
            continue;
        }
        // Devices, fifos (`Other`): nothing to diff or collect.
        if let Added::Full = b.entry(rel, &mut entry, max_file)? {
            break;
        }
    }
    Ok(Tree::Dir(b))
}

/// Whether `name` is `root` or below it: relative, `.` segments aside its first
/// segment is `root`, and no segment is `..`.
fn confined(name: &str, root: &str) -> bool {
    if name.starts_with('/') {
        return false;
    }
    let mut parts = segments(name);
    parts.next() == Some(root) && parts.all(|p| p != "..")
}

/// The segments of an archive entry's name, empty and `.` ones left out.
fn segments(name: &str) -> impl Iterator<Item = &str> {
    name.split('/').filter(|p| !p.is_empty() && *p != ".")
}

/// `dirname/a/b` → `a/b`; `None` for the root entry itself (`dirname`, `dirname/`, `.`).
fn strip_root(name: &str) -> Option<String> {
    let mut parts = segments(name);
    parts.next()?;
    let rest: Vec<&str> = parts.collect();
    (!rest.is_empty()).then(|| rest.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar shaped like Docker's download of `/workspace`.
    fn docker_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            b.append_data(&mut h, name, data).unwrap();
        };
        add("workspace/", tar::EntryType::Directory, b"", None);
        add("workspace/a.txt", tar::EntryType::Regular, b"hello", None);
        add(
            "workspace/big.bin",
            tar::EntryType::Regular,
            &[0u8; 100],
            None,
        );
        add("workspace/sub/", tar::EntryType::Directory, b"", None);
        add(
            "workspace/sub/b.txt",
            tar::EntryType::Regular,
            b"world",
            None,
        );
        add(
            "workspace/sub/hard",
            tar::EntryType::Link,
            b"",
            Some("workspace/sub/b.txt"),
        );
        add("workspace/ln", tar::EntryType::Symlink, b"", Some("a.txt"));
        b.into_inner().unwrap()
    }

    fn tree(tar: &[u8], max_file: u64, max_total: u64) -> Tree {
        read_tree(
            &mut &tar[..],
            "/workspace",
            max_file,
            Builder::in_memory(max_total),
            None,
        )
        .unwrap()
    }

    fn snapshot(tar: &[u8], max_file: u64, max_total: u64) -> crate::workspace::Snapshot {
        let Tree::Dir(b) = tree(tar, max_file, max_total) else {
            panic!("not a dir")
        };
        b.into_snapshot()
    }

    #[test]
    fn snapshot_maps_files_dirs_and_links() {
        let s = snapshot(&docker_tar(), 50, 1000);
        assert_eq!(s.dirs, vec!["sub".to_string()]);
        assert_eq!(s.files["a.txt"].as_deref(), Some(&b"hello"[..]));
        assert_eq!(
            s.files["big.bin"], None,
            "over max_file_bytes: listed, no content"
        );
        assert_eq!(s.files["sub/hard"].as_deref(), Some(&b"world"[..]));
        assert_eq!(s.files["ln"].as_deref(), Some(&b"a.txt"[..]));
        assert!(!s.truncated);
    }

    #[test]
    fn snapshot_stops_at_the_total_limit() {
        let s = snapshot(&docker_tar(), 50, 7);
        assert!(s.truncated);
        assert_eq!(
            s.files.get("a.txt").cloned().flatten().as_deref(),
            Some(&b"hello"[..])
        );
        assert!(!s.files.contains_key("sub/b.txt"));
    }

    #[test]
    fn a_spilled_snapshot_keeps_the_same_contents_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let b = Builder::spilling(&dir.path().join("s"), 1000).unwrap();
        let Tree::Dir(b) = read_tree(&mut &docker_tar()[..], "/workspace", 50, b, None).unwrap()
        else {
            panic!("not a dir")
        };
        let spilled = b.into_spilled().unwrap();
        let mem = snapshot(&docker_tar(), 50, 1000);
        assert_eq!(
            spilled.files.keys().collect::<Vec<_>>(),
            mem.files.keys().collect::<Vec<_>>()
        );
        for (rel, content) in &mem.files {
            assert_eq!(&spilled.read(rel).unwrap(), content, "{rel}");
        }
        assert_eq!(spilled.modes, mem.modes);
        assert_eq!(spilled.stats, mem.stats);
        assert!(!spilled.truncated);
    }

    /// A tar with one entry of each name, written raw (the tar crate's own
    /// builder refuses `..`, as a hostile program's would not).
    fn raw_tar(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, link) in entries {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_entry_type(*kind);
            h.set_size(0);
            h.set_mode(0o644);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn an_archive_from_the_workspace_must_stay_below_its_root() {
        let read = |t: &[u8]| {
            read_tree(
                &mut &t[..],
                "/workspace",
                50,
                Builder::in_memory(100),
                Some("workspace"),
            )
        };
        let dir = tar::EntryType::Directory;
        let file = tar::EntryType::Regular;
        // What `tar -C / ./workspace` writes is read like the engine's archive.
        let ok = raw_tar(&[("./workspace/", dir, None), ("./workspace/a", file, None)]);
        let Tree::Dir(b) = read(&ok).unwrap() else {
            panic!("not a dir")
        };
        assert!(b.into_snapshot().files.contains_key("a"));
        for bad in [
            raw_tar(&[
                ("workspace/", dir, None),
                ("workspace/../etc/passwd", file, None),
            ]),
            raw_tar(&[("workspace/", dir, None), ("/etc/passwd", file, None)]),
            raw_tar(&[("workspace/", dir, None), ("other/a", file, None)]),
            raw_tar(&[("../workspace/a", file, None)]),
            raw_tar(&[
                ("workspace/", dir, None),
                (
                    "workspace/h",
                    tar::EntryType::Link,
                    Some("workspace/../../etc/shadow"),
                ),
            ]),
        ] {
            assert!(
                matches!(read(&bad), Err(WorkspaceError::Path { .. })),
                "accepted {:?}",
                String::from_utf8_lossy(&bad[..100])
            );
        }
        // The engine's own archive is read as before.
        assert!(
            read_tree(
                &mut &ok[..],
                "/workspace",
                50,
                Builder::in_memory(100),
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn reads_single_entries() {
        let file = build_tar(&[], Some(("f.txt", b"data", 0o755)), None).unwrap();
        assert_eq!(
            first_file(&mut &file[..], "/f.txt").unwrap(),
            Entry::File(b"data".to_vec())
        );
        let dir = build_tar(&["d".to_string()], None, None).unwrap();
        assert!(matches!(
            first_file(&mut &dir[..], "/d"),
            Err(WorkspaceError::Path { .. })
        ));
        let not_dir = read_tree(&mut &file[..], "/f.txt", 10, Builder::in_memory(10), None);
        assert!(
            matches!(not_dir, Err(WorkspaceError::Path { .. })),
            "{not_dir:?}"
        );
    }

    #[test]
    fn built_tars_nest_directories() {
        let t = build_tar(
            &["a".into(), "a/b".into()],
            Some(("a/b/c", b"x", 0o600)),
            Some((1000, 1001)),
        )
        .unwrap();
        let mut ar = tar::Archive::new(&t[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                assert_eq!(e.header().uid().unwrap(), 1000);
                assert_eq!(e.header().gid().unwrap(), 1001);
                e.path().unwrap().to_string_lossy().into_owned()
            })
            .collect();
        assert_eq!(names, vec!["a/", "a/b/", "a/b/c"]);
    }

    #[test]
    fn strips_the_root_component() {
        assert_eq!(strip_root("workspace/a/b"), Some("a/b".into()));
        assert_eq!(strip_root("workspace/"), None);
        assert_eq!(strip_root("./"), None);
    }
}
