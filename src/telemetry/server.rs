//! The worker's HTTP endpoints for operators (DESIGN.md "Metrics"):
//!
//! - `GET /metrics`: every series of [`crate::telemetry::metrics`] in the Prometheus
//!   text format;
//! - `GET /healthz`: 200 while the process serves requests (liveness);
//! - `GET /readyz`: 200 only when every [`Readiness`] check passes (broker
//!   connected, store reachable, Docker reachable, …), else 503 with a JSON body
//!   naming the failing checks.
//!
//! Checks run concurrently, each under a deadline, on every `/readyz` request: a
//! probe sees the state of now, not of the last poll.

use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The default deadline of one readiness check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// What a readiness check may answer: `bool` (true = ready) or any `Result` whose
/// error displays why not.
pub trait CheckOutcome {
    fn into_check(self) -> Result<(), String>;
}

impl CheckOutcome for bool {
    fn into_check(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("not ready".into())
        }
    }
}

impl<T, E: Display> CheckOutcome for Result<T, E> {
    fn into_check(self) -> Result<(), String> {
        self.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The named checks behind `/readyz`. Built once at start-up:
///
/// ```ignore
/// let readiness = Readiness::new()
///     .check("broker", move || { let q = queue.clone(); async move { q.ping().await } })
///     .check("store", move || { let s = store.clone(); async move { s.ping().await } })
///     .check("docker", move || { let b = backend.clone(); async move { b.ping().await } });
/// ```
#[derive(Clone)]
pub struct Readiness {
    checks: Vec<(String, CheckFn)>,
    timeout: Duration,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl Readiness {
    /// No checks yet (ready); each check gets [`CHECK_TIMEOUT`].
    pub fn new() -> Readiness {
        Readiness {
            checks: Vec::new(),
            timeout: CHECK_TIMEOUT,
        }
    }

    /// Adds a check: `f` is called on every `/readyz` request and must answer within
    /// the deadline, or the check fails.
    pub fn check<F, Fut, R>(mut self, name: impl Into<String>, f: F) -> Readiness
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: CheckOutcome,
    {
        let f: CheckFn = Arc::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.into_check() })
        });
        self.checks.push((name.into(), f));
        self
    }

    /// The deadline of each check (default [`CHECK_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Readiness {
        self.timeout = timeout;
        self
    }

    /// Runs every check concurrently.
    pub async fn evaluate(&self) -> ReadyReport {
        let runs = self.checks.iter().map(|(name, f)| {
            let fut = f();
            let timeout = self.timeout;
            async move {
                let result = match tokio::time::timeout(timeout, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                CheckReport {
                    name: name.clone(),
                    ok: result.is_ok(),
                    error: result.err(),
                }
            }
        });
        let checks = futures_util::future::join_all(runs).await;
        let failing: Vec<String> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.clone())
            .collect();
        ReadyReport {
            ready: failing.is_empty(),
            failing,
            checks,
        }
    }
}

/// The `/readyz` body.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyReport {
    pub ready: bool,
    /// Names of the checks that failed.
    pub failing: Vec<String>,
    pub checks: Vec<CheckReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub name: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A running endpoint server.
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<io::Result<()>>,
}

impl MetricsServer {
    /// The address actually bound (the port chosen for `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the server to stop (after the shutdown token fired and open
    /// requests were answered).
    pub async fn stopped(self) -> io::Result<()> {
        self.task.await.map_err(io::Error::other)?
    }
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` until `shutdown`
/// fires. Fails at once when the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> io::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = router(readiness);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(MetricsServer { addr, task })
}

/// The routes, for serving on a listener of one's own.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(readiness))
}

async fn metrics() -> Response {
    let body = crate::telemetry::metrics().render();
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(readiness): State<Arc<Readiness>>) -> Response {
    let report = readiness.evaluate().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_names_failing_and_slow_checks() {
        let r = Readiness::new()
            .with_timeout(Duration::from_millis(50))
            .check("up", || async { true })
            .check("down", || async { Err::<(), _>("refused") })
            .check("slow", || async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                true
            });
        let report = r.evaluate().await;
        assert!(!report.ready);
        assert_eq!(report.failing, vec!["down".to_string(), "slow".to_string()]);
        assert_eq!(report.checks[1].error.as_deref(), Some("refused"));
        assert!(Readiness::new().evaluate().await.ready);
    }
}
