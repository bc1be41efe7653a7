//! The webhook body and its signature (DESIGN.md "Webhook"). A body is built as a
//! JSON value, every string in it is masked, and it is serialised exactly once:
//! those bytes are what is signed, sent on every attempt, and verified by the
//! receiver.

use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use crate::agent::Masker;
use crate::job::{JobResult, JobSpec};
use crate::store::{JobKeys, Store};

/// `X-Fleet-Event` of a terminal state.
pub const EVENT_COMPLETED: &str = "job.completed";
/// `X-Fleet-Event` of a run starting (opt-in).
pub const EVENT_STARTED: &str = "job.started";

/// The agent's final message is cut to this many bytes (the whole message is in
/// result.json); a receiver that wants it all reads the result.
pub const FINAL_MESSAGE_LIMIT: usize = 4096;
/// Error messages are cut to this many bytes.
const ERROR_MESSAGE_LIMIT: usize = 1024;

/// The body of a `job.completed` delivery.
pub fn completed(
    spec: &JobSpec,
    result: &JobResult,
    delivery_id: &str,
    store: &Store,
    masker: &Masker,
) -> Vec<u8> {
    let (final_message, final_truncated) = match &result.final_message {
        Some(m) => {
            let (m, cut) = truncate(m, FINAL_MESSAGE_LIMIT);
            (Value::String(m.to_string()), cut)
        }
        None => (Value::Null, false),
    };
    let error = result.error.as_ref().map(|e| {
        json!({
            "kind": e.kind,
            "phase": e.phase,
            "retryable": e.retryable,
            "message": truncate(&e.message, ERROR_MESSAGE_LIMIT).0,
        })
    });
    let data = json!({
        "attempt": result.attempt,
        "steps": result.steps,
        "cost_usd": result.cost_usd,
        "duration_secs": result.duration_secs,
        "tokens": {"prompt": result.tokens.prompt, "completion": result.tokens.completion},
        "error": error,
        "stuck_pattern": result.stuck_pattern,
        "final_message": final_message,
        "final_message_truncated": final_truncated,
        "started_at": result.started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "finished_at": result.finished_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "worker": result.worker,
        "labels": spec.labels,
        "result": location(&spec.id, store),
    });
    envelope(
        EVENT_COMPLETED,
        delivery_id,
        spec,
        Value::String(result.outcome.as_str().into()),
        data,
        masker,
    )
}

/// The body of a `job.started` delivery.
pub fn started(
    spec: &JobSpec,
    attempt: u32,
    worker: &str,
    delivery_id: &str,
    store: &Store,
    masker: &Masker,
) -> Vec<u8> {
    let data = json!({
        "attempt": attempt,
        "worker": worker,
        "labels": spec.labels,
        "result": location(&spec.id, store),
    });
    envelope(EVENT_STARTED, delivery_id, spec, Value::Null, data, masker)
}

/// Where the job's records are: the store location of its folder and every key.
fn location(job_id: &str, store: &Store) -> Value {
    let k = JobKeys(job_id);
    json!({
        "location": store.locate(&k.dir()),
        "keys": {
            "job": k.job(),
            "status": k.status(),
            "result": k.result(),
            "patch": k.patch(),
            "events": k.events(),
            "metrics": k.metrics(),
            "artifacts": k.artifact(""),
        },
    })
}

fn envelope(
    event: &str,
    delivery_id: &str,
    spec: &JobSpec,
    outcome: Value,
    data: Value,
    masker: &Masker,
) -> Vec<u8> {
    let mut body = json!({
        "event": event,
        "delivery_id": delivery_id,
        "job_id": spec.id,
        "batch_id": spec.batch_id,
        "outcome": outcome,
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": data,
    });
    // Masking the value tree (not the serialised text) also catches secrets that
    // JSON escaping would have changed (quotes, backslashes, newlines).
    mask_value(&mut body, masker);
    serde_json::to_vec(&body).expect("a JSON value serialises")
}

fn mask_value(v: &mut Value, masker: &Masker) {
    if masker.is_empty() {
        return;
    }
    match v {
        Value::String(s) => *s = masker.mask(s),
        Value::Array(items) => items.iter_mut().for_each(|i| mask_value(i, masker)),
        Value::Object(map) => {
            let old = std::mem::take(map);
            let mut new = Map::with_capacity(old.len());
            for (k, mut v) in old {
                mask_value(&mut v, masker);
                new.insert(masker.mask(&k), v);
            }
            *map = new;
        }
        _ => {}
    }
}

/// The longest prefix of `s` of at most `max` bytes on a char boundary, and whether
/// anything was cut.
fn truncate(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`: the `X-Fleet-Signature` header value.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks an `X-Fleet-Signature` value against `body` in constant time; what a Rust
/// receiver would do.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The delivery id of one event of one attempt of a job to one URL, derived
/// from those alone (SHA-256, shown as a UUID): a completion sent again carries
/// the same id, so receivers dedupe by it.
pub fn delivery_id(job_id: &str, attempt: u32, event: &str, url: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [job_id, &attempt.to_string(), event, url] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d = hex::encode(&h.finalize()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &d[..8],
        &d[8..12],
        &d[12..16],
        &d[16..20],
        &d[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_id_is_a_function_of_job_attempt_event_and_url() {
        let id = delivery_id("j1", 2, EVENT_COMPLETED, "http://r/");
        assert_eq!(id, delivery_id("j1", 2, EVENT_COMPLETED, "http://r/"));
        assert_eq!(id.len(), 36);
        for other in [
            delivery_id("j2", 2, EVENT_COMPLETED, "http://r/"),
            delivery_id("j1", 3, EVENT_COMPLETED, "http://r/"),
            delivery_id("j1", 2, EVENT_STARTED, "http://r/"),
            delivery_id("j1", 2, EVENT_COMPLETED, "http://s/"),
            // No ambiguity from where one part ends.
            delivery_id("j12", 2, EVENT_COMPLETED, "http://r/"),
        ] {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &sig));
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", &sig));
        assert!(!verify(b"Jefe", b"x", "md5=00"));
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), ("h", true));
        assert_eq!(truncate("hello", 5), ("hello", false));
    }

    #[test]
    fn masks_keys_and_nested_strings() {
        let m = Masker::new(["hunter22".to_string()]);
        let mut v = json!({"a": ["x hunter22 y", {"hunter22": "q\"hunter22\""}], "n": 1});
        mask_value(&mut v, &m);
        let s = v.to_string();
        assert!(!s.contains("hunter22"), "{s}");
        assert!(s.contains("<secret-hidden>"));
    }
}
