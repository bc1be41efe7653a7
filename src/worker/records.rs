//! Records of jobs that end without a run (cancelled while queued, interrupted
//! before they started): result.json plus an empty patch and event log, so every
//! terminal job has the same files in the store.

use bytes::Bytes;

use crate::job::{JobResult, Outcome};
use crate::store::{JobKeys, Store, StoreError};

/// Writes result.json for a job that never ran, and empty patch.diff and
/// events.jsonl where none exist yet.
pub async fn store_unrun(
    store: &Store,
    job_id: &str,
    outcome: Outcome,
    attempt: u32,
) -> Result<JobResult, StoreError> {
    let key = JobKeys(job_id);
    let r = JobResult::unrun(job_id, outcome, attempt, None, None);
    store.put_json(&key.result(), &r).await?;
    for k in [key.patch(), key.events()] {
        if store.get(&k).await?.is_none() {
            store.put(&k, Bytes::new()).await?;
        }
    }
    Ok(r)
}
