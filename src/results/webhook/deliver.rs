//! One delivery, attempt by attempt: POST the signed body, classify the answer,
//! wait (exponential backoff with jitter, or the receiver's `Retry-After`) and try
//! again while it is worth it. Retried: connection errors, timeouts, 429 and 5xx.
//! Final at once: every other status (a 4xx will be refused again; a 3xx is not
//! followed, since a redirected POST may lose its body).

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER, USER_AGENT};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::WebhookSettings;
use crate::job::status::WebhookDelivery;
use crate::telemetry::metrics;

/// How much of a refusing receiver's body goes into `last_error`.
const BODY_SNIPPET: usize = 200;

/// A delivery ready to send: the body is final and signed.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub job_id: String,
    pub event: &'static str,
    pub url: String,
    pub delivery_id: String,
    pub body: Bytes,
    /// `X-Fleet-Signature`, when the target has a secret.
    pub signature: Option<String>,
}

impl Pending {
    /// The status.json record of this delivery after `attempts` attempts.
    pub fn record(
        &self,
        delivered: bool,
        attempts: u32,
        last_status: Option<u16>,
        last_error: Option<String>,
    ) -> WebhookDelivery {
        WebhookDelivery {
            url: self.url.clone(),
            delivery_id: self.delivery_id.clone(),
            event: self.event.to_string(),
            delivered,
            attempts,
            last_status,
            last_error,
        }
    }
}

/// What one attempt means for the loop.
enum Attempt {
    Delivered(u16),
    /// Worth another try; `retry_after` is the receiver's wish, when it said one.
    Transient {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    Final {
        status: Option<u16>,
        error: String,
    },
}

/// Sends `p` until it is delivered, refused, or out of attempts/time. `senders`
/// bounds the requests in flight across all deliveries; a delivery waiting to
/// retry holds no sender, so a dead receiver cannot starve the others.
pub(crate) async fn deliver(
    client: &reqwest::Client,
    s: &WebhookSettings,
    senders: &Semaphore,
    cancel: &CancellationToken,
    p: &Pending,
) -> WebhookDelivery {
    let first = Instant::now();
    let mut waits = backoff(s).build();
    let mut attempts = 0u32;
    loop {
        let outcome = {
            let _slot = tokio::select! {
                slot = senders.acquire() => slot.expect("the sender semaphore is never closed"),
                _ = cancel.cancelled() => return p.record(false, attempts, None, Some(shut_down(attempts))),
            };
            attempts += 1;
            tokio::select! {
                a = attempt(client, s, p, attempts) => a,
                _ = cancel.cancelled() => return p.record(false, attempts, None, Some(shut_down(attempts))),
            }
        };
        let (status, error, retry_after) = match outcome {
            Attempt::Delivered(status) => {
                metrics()
                    .webhook_deliveries
                    .with_label_values(&["delivered"])
                    .inc();
                debug!(delivery_id = %p.delivery_id, attempts, status, "webhook delivered");
                return p.record(true, attempts, Some(status), None);
            }
            Attempt::Final { status, error } => return give_up(p, attempts, status, error),
            Attempt::Transient {
                status,
                error,
                retry_after,
            } => (status, error, retry_after),
        };
        let Some(backoff) = waits.next() else {
            return give_up(p, attempts, status, error);
        };
        // The receiver's Retry-After wins over a shorter backoff, up to a cap, so a
        // confused receiver cannot park a delivery for days.
        let wait = match retry_after {
            Some(ra) => backoff.max(ra.min(s.max_retry_after)),
            None => backoff,
        };
        if first.elapsed() + wait > s.max_elapsed {
            return give_up(
                p,
                attempts,
                status,
                format!("{error}; gave up after {:?}", first.elapsed()),
            );
        }
        metrics()
            .webhook_deliveries
            .with_label_values(&["retried"])
            .inc();
        debug!(delivery_id = %p.delivery_id, attempts, ?status, error, ?wait, "webhook attempt failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return p.record(false, attempts, status, Some(shut_down(attempts))),
        }
    }
}

fn shut_down(attempts: u32) -> String {
    format!("worker shut down after {attempts} attempt(s)")
}

fn give_up(p: &Pending, attempts: u32, status: Option<u16>, error: String) -> WebhookDelivery {
    metrics()
        .webhook_deliveries
        .with_label_values(&["failed"])
        .inc();
    warn!(job_id = %p.job_id, delivery_id = %p.delivery_id, url = %p.url, attempts, ?status, error, "webhook not delivered");
    p.record(false, attempts, status, Some(error))
}

/// `min_backoff` doubling up to `max_backoff`, each wait stretched by a random
/// jitter of up to 100% (backon's), `max_attempts - 1` waits in all.
fn backoff(s: &WebhookSettings) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(s.min_backoff.min(s.max_backoff))
        .with_max_delay(s.max_backoff)
        .with_factor(2.0)
        .with_max_times(s.max_attempts.saturating_sub(1) as usize)
        .with_jitter()
}

/// One POST under the attempt deadline (which covers connecting, sending and the
/// response head; the body snippet of a refusal is read under what is left).
async fn attempt(client: &reqwest::Client, s: &WebhookSettings, p: &Pending, n: u32) -> Attempt {
    let deadline = tokio::time::Instant::now() + s.attempt_timeout;
    let mut req = client
        .post(&p.url)
        .header(CONTENT_TYPE, "application/json")
        .header(
            USER_AGENT,
            concat!("agent-fleet/", env!("CARGO_PKG_VERSION")),
        )
        .header("X-Fleet-Event", p.event)
        .header("X-Fleet-Delivery", &p.delivery_id)
        .timeout(s.attempt_timeout)
        .body(p.body.clone());
    if let Some(sig) = &p.signature {
        req = req.header("X-Fleet-Signature", sig);
    }
    let resp = match tokio::time::timeout_at(deadline, req.send()).await {
        Err(_) => return timed_out(s),
        Ok(Err(e)) if e.is_timeout() => return timed_out(s),
        Ok(Err(e)) if e.is_builder() => {
            return Attempt::Final {
                status: None,
                error: format!("invalid request: {e}"),
            };
        }
        Ok(Err(e)) => {
            return Attempt::Transient {
                status: None,
                error: format!("connection failed: {}", chain(&e)),
                retry_after: None,
            };
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Attempt::Delivered(status);
    }
    let retry_after = retry_after(resp.headers(), Utc::now());
    let snippet = tokio::time::timeout_at(deadline, snippet(resp))
        .await
        .unwrap_or_default();
    let error = if snippet.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {snippet}")
    };
    debug!(attempt = n, status, "webhook answer");
    match status {
        429 | 500..=599 => Attempt::Transient {
            status: Some(status),
            error,
            retry_after,
        },
        300..=399 => Attempt::Final {
            status: Some(status),
            error: format!("{error} (redirects are not followed)"),
        },
        _ => Attempt::Final {
            status: Some(status),
            error,
        },
    }
}

fn timed_out(s: &WebhookSettings) -> Attempt {
    Attempt::Transient {
        status: None,
        error: format!("no answer within {:?}", s.attempt_timeout),
        retry_after: None,
    }
}

/// The error and its sources on one line (reqwest's top level says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// The first bytes of a refusal's body, as text on one line; never the whole body,
/// however large the receiver makes it.
async fn snippet(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < BODY_SNIPPET {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    buf.truncate(BODY_SNIPPET);
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(crate) fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:30 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:00:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn backoff_has_max_attempts_minus_one_waits() {
        let s = WebhookSettings {
            max_attempts: 4,
            ..WebhookSettings::new(None, "X")
        };
        assert_eq!(backoff(&s).build().count(), 3);
    }
}
