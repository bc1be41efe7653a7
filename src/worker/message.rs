//! A message is a pointer to a stored job, never an authority over its records.
//! [`resolve`] reads the delivery, then the job it names: the stored `job.json`
//! wins over the message body, and an invalid message that names an existing job
//! is only dead-lettered — that job's records are left alone, and its own message
//! still runs it.

use tracing::warn;

use crate::job::{self, ErrorInfo, JobResult, JobSpec, Outcome, Phase, State, StatusRecord};
use crate::queue::Delivery;
use crate::store::{JobKeys, Store, StoreError};

/// Messages larger than this are dead-lettered unread.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The longest rejection reason kept: it travels in a dead letter's headers (an
/// AMQP header frame holds 128 KiB) and in the status record, and a hostile
/// message can make the parser quote a huge value.
const MAX_REASON_CHARS: usize = 1000;

/// What a delivery points at.
pub enum Pointer {
    /// Run this job (the stored one).
    Job(Box<JobSpec>),
    /// Dead-letter the message with this reason; records are handled already.
    Invalid(String),
    /// The job's records are being written (a submit in progress): look later.
    NotYet,
}

/// Reads a delivery's job, or says why it cannot be run.
///
/// A job from the broker (`from_broker`) needs an id, and may not name
/// `input.path`: that would be a directory on the worker's host (`fleet submit`
/// uploads it as `store_key`).
pub fn decode(d: &Delivery, from_broker: bool) -> Result<JobSpec, String> {
    if d.msg.body.len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "message of {} bytes exceeds {MAX_MESSAGE_BYTES}",
            d.msg.body.len()
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&d.msg.body).map_err(|e| format!("body is not a JSON job: {e}"))?;
    let has_id = value.get("id").is_some_and(|v| v.is_string());
    let spec = parse(value)?;
    if from_broker && !has_id && d.msg.job_id.is_empty() {
        // Parsing would give it a new UUID on every delivery: each retry or
        // redelivery would be another job.
        return Err(
            "invalid job: id: a queued job needs an id (the job's `id` or the \
                    message id)"
                .into(),
        );
    }
    if !d.msg.job_id.is_empty() && spec.id != d.msg.job_id {
        return Err(format!(
            "message id {:?} does not match the job id {:?}",
            d.msg.job_id, spec.id
        ));
    }
    check_runnable(&spec, from_broker)?;
    Ok(spec)
}

fn parse(value: serde_json::Value) -> Result<JobSpec, String> {
    job::job_from_value(value, &job::ParseOptions::default())
        .map_err(|(field, message)| format!("invalid job: {field}: {message}"))
}

fn check_runnable(spec: &JobSpec, from_broker: bool) -> Result<(), String> {
    if from_broker && matches!(spec.input, Some(job::Input::Path { .. })) {
        return Err(
            "invalid job: input.path: a queued job cannot read the worker's \
                    files; upload the input (fleet submit stores it as input.store_key)"
                .into(),
        );
    }
    Ok(())
}

pub fn clip_reason(reason: String) -> String {
    if reason.chars().count() <= MAX_REASON_CHARS {
        return reason;
    }
    let head: String = reason.chars().take(MAX_REASON_CHARS).collect();
    format!("{head}… ({} bytes in all)", reason.len())
}

/// Resolves a delivery to the stored job it names (see the module doc).
pub async fn resolve(
    store: &Store,
    d: &Delivery,
    from_broker: bool,
    worker: &str,
) -> Result<Pointer, StoreError> {
    let decoded = decode(d, from_broker).map_err(clip_reason);
    let id = match &decoded {
        Ok(spec) => spec.id.clone(),
        Err(_) => d.msg.job_id.clone(),
    };
    if !job::parse::valid_id(&id) {
        return Ok(Pointer::Invalid(
            decoded.err().unwrap_or_else(|| "invalid job id".into()),
        ));
    }
    let key = JobKeys(&id);
    let stored = store.get(&key.job()).await?;
    let status = store.status(&id).await?;
    match (decoded, stored) {
        (Err(reason), Some(_)) => Ok(Pointer::Invalid(format!(
            "{reason} (job {id} exists; its records are left alone)"
        ))),
        (Err(reason), None) => {
            if status.is_none() {
                record_rejected(store, &id, &reason, worker).await?;
            }
            Ok(Pointer::Invalid(reason))
        }
        (Ok(spec), Some(body)) => {
            let value: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return Ok(Pointer::Invalid(format!("stored job.json of {id}: {e}"))),
            };
            let stored = match parse(value).and_then(|s| check_runnable(&s, from_broker).map(|_| s))
            {
                Ok(s) => s,
                Err(e) => {
                    return Ok(Pointer::Invalid(clip_reason(format!(
                        "stored job.json of {id}: {e}"
                    ))));
                }
            };
            if stored.id != id {
                return Ok(Pointer::Invalid(format!(
                    "stored job.json of {id} names the job {:?}",
                    stored.id
                )));
            }
            if serde_json::to_value(&stored).ok() != serde_json::to_value(&spec).ok() {
                warn!(job_id = %id, "the message differs from the stored job; running the stored job");
            }
            if status.is_none() {
                create_status(store, &stored).await?;
            }
            Ok(Pointer::Job(Box::new(stored)))
        }
        (Ok(_), None) if status.is_some() => Ok(Pointer::NotYet),
        (Ok(spec), None) => {
            // Published by someone who did not write the records first: the
            // message becomes the stored job, unless someone stored one meanwhile.
            let body = serde_json::to_vec_pretty(&spec).expect("jobs serialise");
            if !store.put_if_absent(&key.job(), body.into()).await? {
                return Ok(Pointer::NotYet);
            }
            create_status(store, &spec).await?;
            Ok(Pointer::Job(Box::new(spec)))
        }
    }
}

async fn create_status(store: &Store, spec: &JobSpec) -> Result<(), StoreError> {
    let rec = StatusRecord::queued(&spec.id, spec.batch_id.clone());
    let body = serde_json::to_vec_pretty(&rec).expect("records serialise");
    store
        .put_if_absent(&JobKeys(&spec.id).status(), body.into())
        .await
        .map(drop)
}

/// An invalid message naming an id that no job has: `rejected` records, written
/// only if no status record appeared meanwhile.
async fn record_rejected(
    store: &Store,
    id: &str,
    reason: &str,
    worker: &str,
) -> Result<(), StoreError> {
    let e = ErrorInfo {
        kind: "invalid_job".into(),
        phase: Phase::Validate,
        retryable: false,
        message: reason.into(),
    };
    let mut rec = StatusRecord::queued(id, None);
    rec.error = Some(e.clone());
    rec.transition(State::Rejected, Some(worker), Some(reason.to_string()));
    let body = serde_json::to_vec_pretty(&rec).expect("records serialise");
    if store
        .put_if_absent(&JobKeys(id).status(), body.into())
        .await?
    {
        let r = JobResult::unrun(id, Outcome::Rejected, 0, Some(e), Some(worker));
        store.put_json(&JobKeys(id).result(), &r).await?;
        crate::telemetry::metrics()
            .jobs_finished
            .with_label_values(&["rejected"])
            .inc();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_reason_is_clipped_on_a_char_boundary() {
        let short = "invalid job: id: \"..\"".to_string();
        assert_eq!(clip_reason(short.clone()), short);
        let huge = format!("invalid job: image: {:?}", "é".repeat(300_000));
        let clipped = clip_reason(huge.clone());
        assert!(
            clipped.len() < 2 * MAX_REASON_CHARS + 64,
            "{}",
            clipped.len()
        );
        assert!(clipped.ends_with(&format!("({} bytes in all)", huge.len())));
    }
}
