//! The store: where jobs, their status records and their results live (DESIGN.md
//! "Store layout"). A local directory is the embedded default; S3 is the fleet's.
//! Both take the same keys ([`keys`]) and are reached through the [`Store`] enum.
//!
//! A run's writes go through the `*_owned` methods: each is made only while the
//! job's status record still names the run's [`Owner`] token, so a run that lost
//! its job (a paused worker whose lease ran out) cannot write over its successor.
//! Status writes are airtight on both backends (S3: `If-Match` on the record read;
//! local: the job's `flock`). Other files of a run are airtight locally (check and
//! write under the lock); on S3 the record is checked just before the write, so
//! only a request already on the wire when its worker froze can still land.

pub mod keys;
pub mod local;
pub mod s3;

use std::path::Path;

use bytes::Bytes;

pub use keys::JobKeys;

use crate::job::{Owner, StatusRecord};

/// Store failures. Unavailability is an infrastructure fault (retried); a corrupt
/// record is not.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store i/o on {key}: {source}")]
    Io { key: String, source: std::io::Error },
    #[error("{key}: unsafe key")]
    BadKey { key: String },
    #[error("{key}: corrupt record: {message}")]
    Corrupt { key: String, message: String },
    #[error("{key}: changed by someone else")]
    Conflict { key: String },
    /// The run's owner token is no longer in the job's status record: another
    /// run holds the job (or it ended). The run must stop and write nothing.
    #[error("job {job_id}: this run lost ownership (the record names {holder})")]
    Lost { job_id: String, holder: String },
}

impl StoreError {
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Io { .. } | StoreError::Conflict { .. }
        )
    }
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "store_unavailable",
            StoreError::Io { .. } => "store_io",
            StoreError::BadKey { .. } => "store_bad_key",
            StoreError::Corrupt { .. } => "store_corrupt",
            StoreError::Conflict { .. } => "store_conflict",
            StoreError::Lost { .. } => "ownership_lost",
        }
    }
}

/// A version tag for compare-and-swap writes of status records.
pub type Version = Option<String>;

#[derive(Clone)]
pub enum Store {
    Local(local::LocalStore),
    S3(s3::S3Store),
}

impl Store {
    /// `s3://bucket/prefix` or a directory.
    pub async fn open(spec: &str) -> Result<Store, StoreError> {
        if spec.starts_with("s3://") {
            return Ok(Store::S3(
                s3::S3Store::connect(s3::S3Settings::from_spec(spec)?).await?,
            ));
        }
        Ok(Store::Local(local::LocalStore::open(Path::new(spec))?))
    }

    /// Where a key is, for people (a path or an s3:// URL).
    pub fn locate(&self, key: &str) -> String {
        match self {
            Store::Local(s) => s.locate(key),
            Store::S3(s) => s.locate(key),
        }
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        check(key)?;
        let n = body.len() as u64;
        match self {
            Store::Local(s) => s.put(key, body).await?,
            Store::S3(s) => s.put(key, body).await?,
        }
        crate::telemetry::metrics().store_uploaded_bytes.inc_by(n);
        Ok(())
    }

    /// Uploads a file from disk (large objects stream, never held in memory whole).
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<u64, StoreError> {
        check(key)?;
        let n = match self {
            Store::Local(s) => s.put_file(key, path).await?,
            Store::S3(s) => s.put_file(key, path).await?,
        };
        crate::telemetry::metrics().store_uploaded_bytes.inc_by(n);
        Ok(n)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        check(key)?;
        match self {
            Store::Local(s) => s.get(key).await,
            Store::S3(s) => s.get(key).await,
        }
    }

    /// Downloads `key` to the file `dest`, streamed (never whole in memory);
    /// false when nothing is stored there.
    pub async fn get_to_file(&self, key: &str, dest: &Path) -> Result<bool, StoreError> {
        check(key)?;
        match self {
            Store::Local(s) => s.get_to_file(key, dest).await,
            Store::S3(s) => s.get_to_file(key, dest).await,
        }
    }

    /// Keys under `prefix` (recursive), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Local(s) => s.list(prefix).await,
            Store::S3(s) => s.list(prefix).await,
        }
    }

    /// Reads a JSON record.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.get(key).await? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    key: key.to_string(),
                    message: e.to_string(),
                }),
        }
    }

    pub async fn put_json<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_vec_pretty(value).expect("records serialise");
        self.put(key, Bytes::from(body)).await
    }

    /// The job's status record.
    pub async fn status(&self, job_id: &str) -> Result<Option<StatusRecord>, StoreError> {
        self.get_json(&JobKeys(job_id).status()).await
    }

    /// Applies `f` to the job's status record and writes it back. `f` returns false
    /// to leave it unchanged. Returns the record as stored after the call.
    pub async fn update_status(
        &self,
        job_id: &str,
        f: impl Fn(&mut StatusRecord) -> bool,
    ) -> Result<Option<StatusRecord>, StoreError> {
        let key = JobKeys(job_id).status();
        match self {
            Store::Local(s) => {
                let _guard = s.lock_key(&key).await?;
                let Some(mut rec) = self.get_json::<StatusRecord>(&key).await? else {
                    return Ok(None);
                };
                if f(&mut rec) {
                    self.put_json(&key, &rec).await?;
                }
                Ok(Some(rec))
            }
            Store::S3(s) => {
                let (rec, written) = s.update_status(&key, f).await?;
                crate::telemetry::metrics()
                    .store_uploaded_bytes
                    .inc_by(written);
                Ok(rec)
            }
        }
    }

    /// Like [`Store::update_status`], but only while the record names `owner`:
    /// `Err(StoreError::Lost)` (nothing written) once it does not. `f` returns
    /// false to leave the record unchanged. Returns the record as stored.
    pub async fn update_owned(
        &self,
        job_id: &str,
        owner: &Owner,
        f: impl Fn(&mut StatusRecord) -> bool,
    ) -> Result<StatusRecord, StoreError> {
        let holder = std::sync::Mutex::new(None::<String>);
        let rec = self
            .update_status(job_id, |r| {
                if !r.owned_by(owner) {
                    *holder.lock().expect("holder") = Some(holder_of(r));
                    return false;
                }
                *holder.lock().expect("holder") = None;
                f(r)
            })
            .await?;
        let lost = holder.lock().expect("holder").take();
        match (rec, lost) {
            (Some(rec), None) => Ok(rec),
            (None, _) => Err(StoreError::Lost {
                job_id: job_id.to_string(),
                holder: "nothing (no status record)".into(),
            }),
            (Some(_), Some(holder)) => Err(StoreError::Lost {
                job_id: job_id.to_string(),
                holder,
            }),
        }
    }

    /// Writes one file of a run while the job's record names `owner`; else
    /// `Err(StoreError::Lost)`, writing nothing.
    pub async fn put_owned(
        &self,
        job_id: &str,
        owner: &Owner,
        key: &str,
        body: Bytes,
    ) -> Result<(), StoreError> {
        let _guard = self.owned_guard(job_id, owner).await?;
        self.put(key, body).await
    }

    /// [`Store::put_file`] under the same condition as [`Store::put_owned`].
    pub async fn put_file_owned(
        &self,
        job_id: &str,
        owner: &Owner,
        key: &str,
        path: &Path,
    ) -> Result<u64, StoreError> {
        let _guard = self.owned_guard(job_id, owner).await?;
        self.put_file(key, path).await
    }

    /// Checks that the record names `owner`, holding the job's lock (local store)
    /// until the guard is dropped.
    async fn owned_guard(
        &self,
        job_id: &str,
        owner: &Owner,
    ) -> Result<Option<local::KeyLock>, StoreError> {
        let key = JobKeys(job_id).status();
        let guard = match self {
            Store::Local(s) => Some(s.lock_key(&key).await?),
            Store::S3(_) => None,
        };
        let rec = self.get_json::<StatusRecord>(&key).await?;
        match rec {
            Some(r) if r.owned_by(owner) => Ok(guard),
            r => Err(StoreError::Lost {
                job_id: job_id.to_string(),
                holder: r
                    .as_ref()
                    .map_or("nothing (no status record)".into(), holder_of),
            }),
        }
    }

    /// Writes `body` only when nothing is stored at `key` yet (S3: `If-None-Match: *`).
    /// Returns false, writing nothing, when something is.
    pub async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        check(key)?;
        let n = body.len() as u64;
        let written = match self {
            Store::Local(s) => {
                let _guard = s.lock_key(key).await?;
                if s.get(key).await?.is_some() {
                    false
                } else {
                    s.put(key, body).await?;
                    true
                }
            }
            Store::S3(s) => s.put_if_absent(key, body).await?,
        };
        if written {
            crate::telemetry::metrics().store_uploaded_bytes.inc_by(n);
        }
        Ok(written)
    }

    /// Whether the store answers, for readiness probes: the directory exists, or the
    /// bucket answers HeadBucket within a few seconds.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => match tokio::fs::metadata(s.root()).await {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(StoreError::Unavailable(format!(
                    "{}: not a directory",
                    s.root().display()
                ))),
                Err(e) => Err(StoreError::Io {
                    key: s.root().display().to_string(),
                    source: e,
                }),
            },
            Store::S3(s) => s.ping().await,
        }
    }
}

/// Who a record says holds the job, for the `Lost` error.
fn holder_of(r: &StatusRecord) -> String {
    match &r.owner {
        Some(o) => format!("{o} ({})", r.state),
        None => format!("no owner ({})", r.state),
    }
}

fn check(key: &str) -> Result<(), StoreError> {
    if keys::is_safe(key) {
        Ok(())
    } else {
        Err(StoreError::BadKey {
            key: key.to_string(),
        })
    }
}
