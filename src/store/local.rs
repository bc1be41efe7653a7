//! The local-directory store: keys are relative paths below a root directory.
//! Writes go to a temporary file then rename, so a reader never sees half a record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

    pub async fn lock_key(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .locks
            .lock()
            .expect("locks")
            .entry(key.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
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
            out.retain(|k| k.starts_with(&prefix) && !k.contains(".tmp-"));
            out.sort();
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
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
