//! The client's retry policy, kept apart from the HTTP plumbing so it can be tested
//! without a server: which failures are transient, how an error reply maps to
//! [`LlmError`], how long to wait (`Retry-After`, exponential backoff with jitter).
//!
//! Transient: connection errors, timeouts, 429, 500/502/503/504 and a 200 with no
//! choices. Everything else is final at once (400/401/403/404/422 among them): the
//! same request would be refused again.

use std::time::Duration;

use backon::ExponentialBuilder;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

use super::{LlmError, LlmSettings};

/// How much of a server's error message an [`LlmError`] carries.
const MESSAGE_LIMIT: usize = 300;

/// What one failed HTTP attempt means for the retry loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Worth another attempt (connection, timeout, 429, 500/502/503/504, no choices).
    Transient,
    Auth,
    NotFound,
    ContextLength,
    BadRequest,
    /// A 5xx outside the transient list (501, 505, …): not retried here, but still an
    /// unavailable LLM for the job (an infrastructure fault).
    ServerFault,
    /// A 2xx body we could not read, or a status we do not expect.
    Protocol,
    /// A reply body over the client's cap: the same request would get it again.
    TooLarge,
}

/// One failed attempt, as the retry loop sees it.
#[derive(Debug, Clone)]
pub(crate) struct AttemptError {
    pub failure: Failure,
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// The server's `Retry-After` (or `retry-after-ms`), when given.
    pub retry_after: Option<Duration>,
    /// Safe to log and to store: the server's error text (trimmed) or our own
    /// description; never the request or the credentials.
    pub message: String,
}

impl AttemptError {
    pub fn transient(&self) -> bool {
        self.failure == Failure::Transient
    }

    /// The error the caller sees once the loop gave up after `attempts` attempts.
    pub fn into_llm_error(self, attempts: u32) -> LlmError {
        let AttemptError {
            failure,
            status,
            message,
            ..
        } = self;
        match failure {
            Failure::Transient | Failure::ServerFault => LlmError::Unavailable {
                attempts,
                status,
                message,
            },
            Failure::Auth => LlmError::Auth {
                status: status.unwrap_or(401),
                message,
            },
            Failure::NotFound => LlmError::NotFound { message },
            Failure::ContextLength => LlmError::ContextLength { message },
            Failure::BadRequest => LlmError::BadRequest {
                status: status.unwrap_or(400),
                message,
            },
            Failure::Protocol => LlmError::Protocol(message),
            Failure::TooLarge => LlmError::ReplyTooLarge(message),
        }
    }
}

/// Classifies a non-2xx reply from its status and body.
pub(crate) fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> AttemptError {
    let (message, code) = error_details(body);
    let failure = match status {
        429 | 500 | 502 | 503 | 504 => Failure::Transient,
        401 | 403 => Failure::Auth,
        404 => Failure::NotFound,
        400..=499 if super::context_errors::is_context_length(code.as_deref(), &message) => {
            Failure::ContextLength
        }
        400..=499 => Failure::BadRequest,
        500..=599 => Failure::ServerFault,
        _ => Failure::Protocol,
    };
    let message = if message.is_empty() {
        format!("HTTP {status} with no error message")
    } else {
        message
    };
    AttemptError {
        failure,
        status: Some(status),
        retry_after,
        message: trim(&message),
    }
}

/// The message and code of an error body. OpenAI sends
/// `{"error":{"message","type","code"}}`; other servers send `{"error":"…"}`,
/// `{"message":"…"}` or `{"detail":"…"}`, or plain text.
fn error_details(body: &[u8]) -> (String, Option<String>) {
    let text = || String::from_utf8_lossy(body).trim().to_string();
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (text(), None);
    };
    let as_text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let (message, code) = match v.get("error") {
        Some(e @ Value::Object(_)) => (as_text(e.get("message")), as_text(e.get("code"))),
        Some(Value::String(s)) => (Some(s.clone()), None),
        _ => (
            as_text(v.get("message")).or_else(|| as_text(v.get("detail"))),
            as_text(v.get("code")),
        ),
    };
    (message.unwrap_or_else(text), code)
}

/// Cuts a message to [`MESSAGE_LIMIT`] characters (on a char boundary).
pub(crate) fn trim(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(MESSAGE_LIMIT) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `Retry-After` (delta-seconds or an HTTP date, RFC 9110 §10.2.3), or the
/// millisecond `retry-after-ms` some OpenAI-compatible providers send instead.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    get("retry-after").and_then(|v| parse_retry_after(v, Utc::now()))
}

/// Parses a `Retry-After` value relative to `now`; a date in the past means "now".
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Some servers send fractional seconds although the RFC does not allow them.
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let at = http_date(value)?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// IMF-fixdate, plus the two obsolete forms RFC 9110 says recipients must accept.
fn http_date(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = DateTime::parse_from_rfc2822(value) {
        return Some(d.with_timezone(&Utc));
    }
    ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(value, f).ok())
        .map(|d| d.and_utc())
}

/// The backoff between attempts: `min_backoff` doubling up to `max_backoff`, each
/// wait stretched by a random jitter of up to 100% (backon's jitter), so a wait lies
/// in `[base, 2 × base)`; `max_attempts - 1` waits in all.
pub(crate) fn backoff(settings: &LlmSettings) -> ExponentialBuilder {
    let max = settings.max_backoff;
    ExponentialBuilder::default()
        .with_min_delay(settings.min_backoff.min(max))
        .with_max_delay(max)
        .with_factor(2.0)
        .with_max_times(settings.max_attempts.saturating_sub(1) as usize)
        .with_jitter()
}

/// The wait before the next attempt: at least the server's `Retry-After`, which is
/// capped at twice `max_backoff` so a hostile or confused server cannot park a job.
pub(crate) fn next_wait(
    backoff: Duration,
    retry_after: Option<Duration>,
    max_backoff: Duration,
) -> Duration {
    let cap = max_backoff.saturating_mul(2);
    match retry_after {
        Some(ra) => backoff.max(ra.min(cap)),
        None => backoff,
    }
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:05 2015", now),
            Some(Duration::from_secs(5))
        );
        // A date already past means "retry now", not an error.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn retry_after_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        // The millisecond form is more precise and wins when both are sent.
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
    }

    fn failure(status: u16, body: &str) -> Failure {
        classify(status, body.as_bytes(), None).failure
    }

    #[test]
    fn classification() {
        for s in [429, 500, 502, 503, 504] {
            assert_eq!(failure(s, ""), Failure::Transient, "{s}");
        }
        assert_eq!(failure(401, ""), Failure::Auth);
        assert_eq!(failure(403, ""), Failure::Auth);
        assert_eq!(failure(404, ""), Failure::NotFound);
        assert_eq!(
            failure(
                400,
                r#"{"error":{"message":"bad","type":"invalid_request_error"}}"#
            ),
            Failure::BadRequest
        );
        assert_eq!(failure(422, "unprocessable"), Failure::BadRequest);
        assert_eq!(failure(501, ""), Failure::ServerFault);
        assert_eq!(
            failure(
                400,
                r#"{"error":{"message":"x","code":"context_length_exceeded"}}"#
            ),
            Failure::ContextLength
        );
        assert_eq!(
            failure(
                400,
                r#"{"error":{"message":"This model's maximum context length is 8192 tokens"}}"#
            ),
            Failure::ContextLength
        );
        assert_eq!(
            failure(400, r#"{"detail":"Too many tokens in prompt"}"#),
            Failure::ContextLength
        );
        assert_eq!(
            failure(400, "context length exceeded"),
            Failure::ContextLength
        );
    }

    #[test]
    fn error_messages_are_extracted_and_trimmed() {
        let e = classify(
            400,
            br#"{"error":{"message":"  temperature out of range ","code":null}}"#,
            None,
        );
        assert_eq!(e.message, "temperature out of range");
        assert_eq!(
            classify(400, br#"{"error":"plain"}"#, None).message,
            "plain"
        );
        assert_eq!(
            classify(400, br#"{"message":"flat"}"#, None).message,
            "flat"
        );
        assert_eq!(
            classify(502, b"<html>bad gateway</html>", None).message,
            "<html>bad gateway</html>"
        );
        assert_eq!(
            classify(503, b"", None).message,
            "HTTP 503 with no error message"
        );
        let long = "é".repeat(1000);
        let m = classify(400, long.as_bytes(), None).message;
        assert_eq!(m.chars().count(), MESSAGE_LIMIT + 1);
        assert!(m.ends_with('…'));
    }

    #[test]
    fn final_errors() {
        let e = classify(503, b"busy", None).into_llm_error(5);
        assert!(
            matches!(
                e,
                LlmError::Unavailable {
                    attempts: 5,
                    status: Some(503),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.retryable());
        let e = classify(429, b"slow down", None).into_llm_error(3);
        assert_eq!(e.kind(), "llm_rate_limited");
        let e = classify(403, b"no", None).into_llm_error(1);
        assert!(matches!(e, LlmError::Auth { status: 403, .. }));
        assert!(!e.retryable());
        let e = classify(422, b"{}", None).into_llm_error(1);
        assert!(matches!(e, LlmError::BadRequest { status: 422, .. }));
    }

    fn settings(attempts: u32, min_ms: u64, max_ms: u64) -> LlmSettings {
        let mut s = LlmSettings::new("m", "http://x");
        s.max_attempts = attempts;
        s.min_backoff = Duration::from_millis(min_ms);
        s.max_backoff = Duration::from_millis(max_ms);
        s
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        for _ in 0..50 {
            let waits: Vec<Duration> = backoff(&settings(5, 8_000, 64_000)).build().collect();
            assert_eq!(waits.len(), 4, "max_attempts counts the first attempt");
            for (w, base) in waits.iter().zip([8_000u64, 16_000, 32_000, 64_000]) {
                let base = Duration::from_millis(base);
                assert!(
                    *w >= base && *w <= base * 2,
                    "{w:?} not in [{base:?}, 2×{base:?}]"
                );
            }
        }
        // The cap holds however many attempts are allowed.
        let waits: Vec<Duration> = backoff(&settings(12, 10, 50)).build().collect();
        assert_eq!(waits.len(), 11);
        assert!(
            waits
                .iter()
                .all(|w| *w >= Duration::from_millis(10) && *w <= Duration::from_millis(100))
        );
        // One attempt in all: no wait at all; zero is treated the same.
        assert_eq!(backoff(&settings(1, 10, 50)).build().count(), 0);
        assert_eq!(backoff(&settings(0, 10, 50)).build().count(), 0);
        // A minimum above the maximum is clamped rather than trusted.
        let w = backoff(&settings(2, 500, 100)).build().next().unwrap();
        assert!(w <= Duration::from_millis(200));
    }

    #[test]
    fn retry_after_raises_the_wait_up_to_a_cap() {
        let max = Duration::from_secs(10);
        let b = Duration::from_secs(1);
        assert_eq!(next_wait(b, None, max), b);
        assert_eq!(
            next_wait(b, Some(Duration::from_secs(5)), max),
            Duration::from_secs(5)
        );
        assert_eq!(next_wait(b, Some(Duration::from_millis(10)), max), b);
        assert_eq!(
            next_wait(b, Some(Duration::from_secs(3600)), max),
            Duration::from_secs(20)
        );
    }
}
