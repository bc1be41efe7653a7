//! The local-directory store: keys are relative paths below a root directory.
//! Writes go to a temporary file then rename, so a reader never sees half a record.
//!
//! Several processes may share one directory (two `fleet worker`s on one host or
//! one network file system with working `flock`): every read-modify-write of a
//! job's records holds that job's lock, an in-process mutex plus `flock(2)` on
//! `jobs/<id>/.lock`, so two workers cannot both claim a job and a run that lost
//! ownership cannot write over its successor.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::StoreError;

#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// Per-key locks so read-modify-write of a status record is atomic in-process.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl LocalStore {
    pub fn open(root: &Path) -> Result<LocalStore, StoreError> {
        std::fs::create_dir_all(root).map_err(|source| StoreError::Io {
            key: root.display().to_string(),
            source,
        })?;
        let root = root.canonicalize().map_err(|source| StoreError::Io {
            key: root.display().to_string(),
            source,
        })?;
        Ok(LocalStore {
            root,
            locks: Default::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn locate(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }

    /// Takes the lock of the directory holding `key` (a job's records share
    /// `jobs/<id>/.lock`): first among this process's tasks, then across processes
    /// with `flock`. Waits at most [`LOCK_DEADLINE`].
    pub async fn lock_key(&self, key: &str) -> Result<KeyLock, StoreError> {
        let dir = match key.rfind('/') {
            Some(i) => &key[..i],
            None => "",
        };
        let m = self
            .locks
            .lock()
            .expect("locks")
            .entry(dir.to_string())
            .or_default()
            .clone();
        let local = tokio::time::timeout(LOCK_DEADLINE, m.lock_owned())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!("{key}: lock busy for {LOCK_DEADLINE:?}"))
            })?;
        let dir_path = self.root.join(dir);
        tokio::fs::create_dir_all(&dir_path)
            .await
            .map_err(Self::io(key))?;
        let path = dir_path.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Self::io(key))?;
        // Non-blocking attempts with short sleeps: a blocking flock would hold a
        // runtime thread, and this keeps the deadline.
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match try_flock(&file) {
                Ok(true) => break,
                Ok(false) if start.elapsed() < LOCK_DEADLINE => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Ok(false) => {
                    return Err(StoreError::Unavailable(format!(
                        "{}: locked by another process for {LOCK_DEADLINE:?}",
                        path.display()
                    )));
                }
                Err(e) => return Err(Self::io(key)(e)),
            }
        }
        Ok(KeyLock {
            _file: file,
            _local: local,
        })
    }

    fn io(key: &str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            key: key.to_string(),
            source,
        }
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let path = self.root.join(key);
        let tmp = tmp_path(&path);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(Self::io(key))?;
        }
        tokio::fs::write(&tmp, &body).await.map_err(Self::io(key))?;
        tokio::fs::rename(&tmp, &path).await.map_err(Self::io(key))
    }

    pub async fn put_file(&self, key: &str, src: &Path) -> Result<u64, StoreError> {
        let path = self.root.join(key);
        let tmp = tmp_path(&path);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(Self::io(key))?;
        }
        let n = tokio::fs::copy(src, &tmp).await.map_err(Self::io(key))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(Self::io(key))?;
        Ok(n)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match tokio::fs::read(self.root.join(key)).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io(key)(e)),
        }
    }

    /// Copies the object to the file `dest`; false when there is none.
    pub async fn get_to_file(&self, key: &str, dest: &Path) -> Result<bool, StoreError> {
        match tokio::fs::copy(self.root.join(key), dest).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Self::io(key)(e)),
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            // Walk only the directory the prefix names; filter the rest by string.
            let dir_part = match prefix.rfind('/') {
                Some(i) => &prefix[..i],
                None => "",
            };
            walk(&root, &root.join(dir_part), &mut out);
            out.retain(|k| {
                k.starts_with(&prefix)
                    && !k.contains(".tmp-")
                    && k.rsplit('/').next() != Some(LOCK_FILE)
            });
            out.sort();
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

/// The lock file of a directory's records (never listed as a key).
pub const LOCK_FILE: &str = ".lock";
/// The longest a record write waits for its lock.
pub const LOCK_DEADLINE: Duration = Duration::from_secs(10);

/// `flock(LOCK_EX | LOCK_NB)`: true when this open file now holds the lock, false
/// when another open file does. The lock goes with the descriptor (closing the
/// file releases it, also when the process dies).
fn try_flock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor owned by `file`, alive for the call; it
    // reads and writes no memory of ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// A held record lock: released (in-process and `flock`) when dropped.
pub struct KeyLock {
    _file: File,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".tmp-{}-{name}", uuid::Uuid::new_v4().simple()))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let p = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(root, &p, out),
            Ok(t) if t.is_file() => {
                if let Ok(rel) = p.strip_prefix(root) {
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_lock_holds_across_open_files_and_is_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalStore::open(dir.path()).unwrap();
        // A second store on the same directory stands for a second process: flock
        // locks open file descriptions, so it conflicts within one process too.
        let b = LocalStore::open(dir.path()).unwrap();
        let held = a.lock_key("jobs/j/status.json").await.unwrap();
        let mut other = File::options()
            .write(true)
            .open(dir.path().join("jobs/j/.lock"))
            .unwrap();
        assert!(!try_flock(&other).unwrap(), "held by the first store");
        let waiter = tokio::spawn(async move { b.lock_key("jobs/j/result.json").await.map(drop) });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "the second lock must wait");
        drop(held);
        waiter.await.unwrap().unwrap();
        std::io::Write::write_all(&mut other, b"").unwrap();
        a.put("jobs/j/status.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(a.list("jobs/").await.unwrap(), vec!["jobs/j/status.json"]);
    }
}
