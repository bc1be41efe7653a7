//! What an S3 failure means for the caller, and the outer retry. A transient
//! failure (endpoint down, timeout, 5xx, throttling, a body cut off) is retried
//! with backoff until the store's retry budget is spent, then becomes
//! `StoreError::Unavailable`; anything else (403, a missing bucket, a bad request)
//! fails at once as `StoreError::Io` naming the bucket and key.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use backon::{ExponentialBuilder, Retryable};

use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// Worth another try: the service or the path to it is having trouble.
    Transient,
    /// `NoSuchKey`.
    NotFound,
    /// A conditional write lost (412, or S3's 409 `ConditionalRequestConflict`).
    Precondition,
    /// Retrying would not help (credentials, bucket, request, local file).
    Fatal,
}

/// One failed S3 call (or a local read feeding it), classified.
#[derive(Debug)]
pub(super) struct Failure {
    pub class: Class,
    pub status: Option<u16>,
    pub message: String,
}

/// S3 error codes that mean "try again", whatever the HTTP status says.
const TRANSIENT_CODES: &[&str] = &[
    "InternalError",
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
];

impl Failure {
    pub fn from_sdk<E>(err: SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        match &err {
            SdkError::ServiceError(_) => {
                let code = err.code().unwrap_or("");
                let class = match (status, code) {
                    (_, c) if TRANSIENT_CODES.contains(&c) => Class::Transient,
                    (Some(s), _) if s >= 500 || s == 429 => Class::Transient,
                    (Some(412), _) | (_, "PreconditionFailed" | "ConditionalRequestConflict") => {
                        Class::Precondition
                    }
                    (_, "NoSuchKey") => Class::NotFound,
                    _ => Class::Fatal,
                };
                let http = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
                let code = if code.is_empty() { "error" } else { code };
                let message = format!("{code}: {}{http}", err.message().unwrap_or("no message"));
                Failure {
                    class,
                    status,
                    message,
                }
            }
            // A request the SDK could not build, or a dispatch refused by the client
            // itself (e.g. a body it cannot replay), is our bug or our input.
            SdkError::ConstructionFailure(_) => {
                Failure::fatal(DisplayErrorContext(&err).to_string())
            }
            SdkError::DispatchFailure(d) if d.is_user() => {
                Failure::fatal(DisplayErrorContext(&err).to_string())
            }
            // Connection refused/reset, DNS, attempt or operation timeouts, a response
            // that could not be read. Credentials that failed to load arrive here too
            // and are retried like the rest (STS and IMDS have bad moments; each load
            // is bounded); with none configured at all, the final error says so.
            SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ResponseError(_) => Failure {
                class: Class::Transient,
                status,
                message: DisplayErrorContext(&err).to_string(),
            },
            _ => Failure::fatal(DisplayErrorContext(&err).to_string()),
        }
    }

    pub fn fatal(message: impl Into<String>) -> Failure {
        Failure {
            class: Class::Fatal,
            status: None,
            message: message.into(),
        }
    }

    /// A response body that broke off mid-stream.
    pub fn body(err: aws_sdk_s3::primitives::ByteStreamError) -> Failure {
        Failure {
            class: Class::Transient,
            status: None,
            message: format!("reading the response body: {}", DisplayErrorContext(&err)),
        }
    }

    pub fn is_transient(&self) -> bool {
        self.class == Class::Transient
    }

    /// The store error for a call `op` on `key` (located at `location`), after
    /// `elapsed` spent on it and its retries.
    pub fn into_store_error(
        self,
        op: &str,
        key: &str,
        location: &str,
        elapsed: Duration,
    ) -> StoreError {
        use std::io::ErrorKind;
        match self.class {
            Class::Transient => StoreError::Unavailable(format!(
                "S3 {op} {location}: {} (gave up after {:.1}s of retries)",
                self.message,
                elapsed.as_secs_f64()
            )),
            Class::Precondition => StoreError::Conflict {
                key: key.to_string(),
            },
            Class::NotFound | Class::Fatal => {
                let kind = match self.status {
                    Some(401 | 403) => ErrorKind::PermissionDenied,
                    Some(404) => ErrorKind::NotFound,
                    Some(400) => ErrorKind::InvalidInput,
                    _ => ErrorKind::Other,
                };
                StoreError::Io {
                    key: location.to_string(),
                    source: std::io::Error::new(kind, format!("S3 {op}: {}", self.message)),
                }
            }
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Runs `call` until it succeeds, fails non-transiently, or `budget` is spent;
/// backoff 200 ms doubling to 5 s, with jitter. Each call has the SDK's own
/// deadlines and few retries inside it.
pub(super) async fn retrying<T, F, Fut>(
    budget: Duration,
    op: &str,
    location: &str,
    call: F,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let start = Instant::now();
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    call.retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &Failure| e.is_transient())
        // Never sleep past the budget; once it is spent, the last failure stands.
        .adjust(move |_, delay| {
            let left = budget.saturating_sub(start.elapsed());
            delay.filter(|_| !left.is_zero()).map(|d| d.min(left))
        })
        .notify(|e: &Failure, delay: Duration| {
            tracing::warn!(op, location, error = %e, retry_in_ms = delay.as_millis() as u64, "S3 call failed; retrying");
        })
        .await
}
