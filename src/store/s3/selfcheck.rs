//! The store self-check: proof, on a scratch key, that the S3 endpoint honours the
//! conditional writes the one-run-per-job guarantee rests on. Some S3-compatible
//! servers (and proxies in front of them) drop `If-Match` / `If-None-Match`; on such
//! a store two workers could both claim a job and run it twice without a word, so a
//! worker refuses to start on one, and `/readyz` reports it.

use bytes::Bytes;

use super::{Precondition, S3Store};
use crate::store::StoreError;

/// What the check writes under: a key of its own per run, removed afterwards.
fn scratch_key(run_id: &str) -> String {
    format!("_fleet/selfcheck/{run_id}")
}

impl S3Store {
    /// Creates a scratch object, then tries two writes a correct store must refuse:
    /// `If-None-Match: *` over the existing object, and `If-Match` with an ETag that
    /// is no longer current. Either accepted → [`StoreError::Unsupported`] naming the
    /// endpoint and the header it ignored. The scratch object is deleted at the end
    /// (best effort: a leftover is a few bytes under `_fleet/selfcheck/`).
    pub async fn check_conditional_writes(&self, run_id: &str) -> Result<(), StoreError> {
        let key = scratch_key(run_id);
        let result = self.probe(&key).await;
        if let Err(e) = self.delete(&key).await {
            tracing::warn!(key, error = %e, "could not delete the self-check object");
        }
        result
    }

    async fn probe(&self, key: &str) -> Result<(), StoreError> {
        let body = |n: u8| Bytes::from(format!("{{\"fleet_selfcheck\":{n}}}"));
        if !self.put_if(key, body(1), &Precondition::IfAbsent).await? {
            // A fresh per-run key already there: someone else wrote it, or the
            // store answers 412 to everything; either way not a store to trust.
            return Err(self.unsupported("refused If-None-Match: * on a new key"));
        }
        if self.put_if(key, body(2), &Precondition::IfAbsent).await? {
            return Err(self.unsupported("ignores If-None-Match: * (overwrote an existing key)"));
        }
        let Some((_, Some(stale))) = self.get_versioned(key).await? else {
            return Err(self.unsupported("returned no ETag for an object it just stored"));
        };
        self.put(key, body(3)).await?;
        if self
            .put_if(key, body(4), &Precondition::IfMatch(stale))
            .await?
        {
            return Err(self.unsupported("ignores If-Match (accepted a stale ETag)"));
        }
        Ok(())
    }

    fn unsupported(&self, what: &str) -> StoreError {
        let endpoint = self
            .settings
            .endpoint
            .clone()
            .unwrap_or_else(|| "AWS S3".to_string());
        StoreError::Unsupported(format!(
            "the S3 endpoint {endpoint} (bucket {}) {what}: conditional writes are required so that a job runs once",
            self.bucket()
        ))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let object = &self.object_key(key);
        self.run("DeleteObject", key, || async move {
            self.client
                .delete_object()
                .bucket(self.bucket())
                .key(object)
                .send()
                .await
                .map(drop)
                .map_err(super::error::Failure::from_sdk)
        })
        .await
    }
}
