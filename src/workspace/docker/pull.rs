//! Getting a job's image onto the engine before its container is created.
//!
//! The pull policy (`FLEET_IMAGE_PULL`) says when to pull: `if-not-present` (the
//! default), `always`, or `never`. Pulls go through the engine (`POST
//! /images/create`) with the registry credentials of the Docker client config
//! ([`super::auth`]). One pull per image runs at a time: every job that needs an
//! image being pulled waits for that pull instead of starting its own (a batch of
//! thousands of jobs on one image makes one pull, not thousands). A pull has its own
//! deadline, runs in a task of its own (a job cancelled while waiting does not cut
//! the pull short for the others), and logs its progress.
//!
//! How a pull ends decides the job: an unknown image or tag and refused credentials
//! are final (`image_not_found`, `image_auth`); an unreachable registry, a timeout
//! or a registry error is an infrastructure fault, retried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::errors::Error as BollardError;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt, Shared};

use super::{API_DEADLINE, WorkspaceError, status_of, within};
use crate::telemetry::metrics;
use crate::workspace::calls::CallMeter;

/// When to pull a job's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull only when the engine does not have the image.
    IfNotPresent,
    /// Pull before every job (a moving tag is re-resolved; layers already there
    /// are not downloaded again).
    Always,
    /// Never pull: a missing image is `image_not_found`.
    Never,
}

#[derive(Debug, Clone, Copy)]
pub struct PullSettings {
    pub policy: PullPolicy,
    /// How long one pull may take in all.
    pub deadline: Duration,
}

impl Default for PullSettings {
    fn default() -> Self {
        PullSettings {
            policy: PullPolicy::IfNotPresent,
            deadline: Duration::from_secs(1800),
        }
    }
}

/// How a pull failed; cloneable so every waiter of one pull gets the outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    #[error("image {image:?} not found in its registry: {message}")]
    NotFound { image: String, message: String },
    #[error("pulling {image:?}: the registry refused the credentials: {message}")]
    Auth { image: String, message: String },
    #[error("pulling {image:?}: the registry is unreachable: {message}")]
    Unreachable { image: String, message: String },
    #[error("pulling {image:?}: not done after {deadline:?}")]
    Timeout { image: String, deadline: Duration },
    #[error("pulling {image:?}: {message}")]
    Other { image: String, message: String },
}

impl PullError {
    /// The `outcome` label of `fleet_image_pulls_total`.
    fn outcome(&self) -> &'static str {
        match self {
            PullError::NotFound { .. } => "not_found",
            PullError::Auth { .. } => "auth",
            PullError::Unreachable { .. } => "unreachable",
            PullError::Timeout { .. } => "timeout",
            PullError::Other { .. } => "error",
        }
    }
}

impl From<PullError> for WorkspaceError {
    fn from(e: PullError) -> WorkspaceError {
        match e {
            PullError::NotFound { image, message } => {
                tracing::debug!(image, message, "the registry has no such image");
                WorkspaceError::ImageNotFound { image }
            }
            PullError::Auth { image, message } => WorkspaceError::ImageAuth { image, message },
            other => WorkspaceError::Registry(other.to_string()),
        }
    }
}

/// `name[:tag|@digest]` → (name, tag or digest) as the engine's pull API wants them;
/// no tag means `latest`, as with `docker pull` (an empty tag would pull every tag).
pub fn split_reference(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

type PullFuture = Shared<BoxFuture<'static, Result<(), PullError>>>;

/// How long an image found on the engine is taken to be there without asking
/// again (a batch starts many jobs of one image; a removed image is noticed by
/// the next create, which forgets it).
const KNOWN_FOR: Duration = Duration::from_secs(30);
/// Images remembered at most (cleared when full).
const MAX_KNOWN: usize = 1024;

/// Pulls images for one engine, one pull per image at a time.
#[derive(Clone)]
pub struct Puller {
    docker: bollard::Docker,
    settings: PullSettings,
    in_flight: Arc<Mutex<HashMap<String, PullFuture>>>,
    /// Image reference → (id, when it was found).
    known: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl Puller {
    pub fn new(docker: bollard::Docker, settings: PullSettings) -> Puller {
        Puller {
            docker,
            settings,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            known: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Makes sure the engine has `image`, pulling it as the policy says.
    pub async fn ensure(&self, image: &str, meter: &CallMeter) -> Result<String, WorkspaceError> {
        if self.settings.policy != PullPolicy::Always {
            if let Some(id) = self.recall(image) {
                return Ok(id);
            }
            meter.tick();
            match within(API_DEADLINE, self.docker.inspect_image(image)).await? {
                Ok(found) => {
                    let id = found.id.unwrap_or_else(|| image.to_string());
                    self.remember(image, &id);
                    return Ok(id);
                }
                // The engine's own word that the reference is malformed (e.g. upper
                // case): no pull or retry can fix the job.
                Err(e) if status_of(&e) == Some(400) => {
                    return Err(WorkspaceError::ImageNotFound {
                        image: format!("{image} (not a valid reference: {e})"),
                    });
                }
                Err(e) if status_of(&e) == Some(404) => {
                    if self.settings.policy == PullPolicy::Never {
                        return Err(WorkspaceError::ImageNotFound {
                            image: format!("{image} (FLEET_IMAGE_PULL=never: not pulled)"),
                        });
                    }
                }
                Err(e) => return Err(super::from_bollard(e)),
            }
        }
        meter.tick();
        self.pull_once(image).await.map_err(WorkspaceError::from)?;
        // The id of what was pulled (the reference may move on later).
        meter.tick();
        match within(API_DEADLINE, self.docker.inspect_image(image)).await? {
            Ok(found) => Ok(found.id.unwrap_or_else(|| image.to_string())),
            Err(e) => Err(super::from_bollard(e)),
        }
    }

    /// The id of `image` if it was found on the engine a moment ago.
    fn recall(&self, image: &str) -> Option<String> {
        let known = self.known.lock().ok()?;
        let (id, at) = known.get(image)?;
        (at.elapsed() < KNOWN_FOR).then(|| id.clone())
    }

    fn remember(&self, image: &str, id: &str) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
            known.insert(image.to_string(), (id.to_string(), Instant::now()));
        }
    }

    /// Forgets what was known of `image` (a create said it is gone).
    pub fn forget(&self, image: &str) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(image);
        }
    }

    /// Joins the pull of `image` in flight, or starts one.
    async fn pull_once(&self, image: &str) -> Result<(), PullError> {
        let pull = {
            let mut map = self.in_flight.lock().expect("pull map");
            match map.get(image) {
                Some(p) => {
                    tracing::info!(image, "waiting for the pull already in flight");
                    p.clone()
                }
                None => {
                    let p = self.start(image);
                    map.insert(image.to_string(), p.clone());
                    p
                }
            }
        };
        pull.await
    }

    fn start(&self, image: &str) -> PullFuture {
        let (docker, settings, map) = (self.docker.clone(), self.settings, self.in_flight.clone());
        let image = image.to_string();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(settings.deadline, pull(&docker, &image)).await
            {
                Ok(r) => r,
                Err(_) => Err(PullError::Timeout {
                    image: image.clone(),
                    deadline: settings.deadline,
                }),
            };
            let secs = started.elapsed().as_secs_f64();
            metrics().image_pull_duration.observe(secs);
            let outcome = result.as_ref().err().map_or("pulled", PullError::outcome);
            metrics().image_pulls.with_label_values(&[outcome]).inc();
            match &result {
                Ok(()) => tracing::info!(image, secs, "image pulled"),
                Err(e) => tracing::warn!(image, secs, error = %e, "image pull failed"),
            }
            // Later jobs start a new pull (or find the image present).
            map.lock().expect("pull map").remove(&image);
            result
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(PullError::Other {
                    image: String::new(),
                    message: format!("the pull task ended abnormally: {e}"),
                })
            })
        }
        .boxed()
        .shared()
    }
}

/// One pull through the engine, its progress logged every few seconds.
async fn pull(docker: &bollard::Docker, image: &str) -> Result<(), PullError> {
    let credentials = super::auth::credentials_for(image)
        .await
        .map_err(|e| PullError::Auth {
            image: image.to_string(),
            message: e.to_string(),
        })?;
    let (name, tag) = split_reference(image);
    let options = CreateImageOptionsBuilder::new()
        .from_image(name)
        .tag(tag)
        .build();
    tracing::info!(
        image,
        authenticated = credentials.is_some(),
        "pulling image"
    );
    let mut stream = docker.create_image(Some(options), None, credentials);
    let mut progress = Progress::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => progress.update(image, &info),
            Err(e) => return Err(classify(image, e)),
        }
    }
    Ok(())
}

/// Bytes per layer, for a periodic "downloaded X of Y" line.
#[derive(Default)]
struct Progress {
    layers: HashMap<String, (i64, i64)>,
    last_log: Option<Instant>,
}

const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    fn update(&mut self, image: &str, info: &bollard::models::CreateImageInfo) {
        let status = info.status.as_deref().unwrap_or("");
        if let (Some(id), Some(d)) = (&info.id, &info.progress_detail)
            && status == "Downloading"
        {
            self.layers
                .insert(id.clone(), (d.current.unwrap_or(0), d.total.unwrap_or(0)));
        }
        match status {
            "Downloading" | "Extracting" | "Waiting" | "Verifying Checksum" => {}
            _ => tracing::debug!(image, layer = ?info.id, status, "pull"),
        }
        let due = self.last_log.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        if due && !self.layers.is_empty() {
            let (done, total) = self
                .layers
                .values()
                .fold((0, 0), |(a, b), (c, t)| (a + c, b + t));
            tracing::info!(
                image,
                layers = self.layers.len(),
                downloaded_mb = done as f64 / 1e6,
                total_mb = total as f64 / 1e6,
                "pull progress"
            );
            self.last_log = Some(Instant::now());
        }
    }
}

/// Sorts an engine error into final (unknown image, refused credentials) and
/// retryable. The engine reports registry failures as text in a 500 (or a stream
/// error), so beyond the 404 the wording it uses is all there is to go by; anything
/// not recognised is retried, the safe side for an infrastructure fault.
fn classify(image: &str, e: BollardError) -> PullError {
    let (status, message) = match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => (Some(status_code), message),
        BollardError::DockerStreamError { error } => (None, error),
        other => {
            return PullError::Unreachable {
                image: image.to_string(),
                message: format!("the Docker engine: {other}"),
            };
        }
    };
    let image = image.to_string();
    let lower = message.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    if has(&[
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "denied: ",
        "incorrect username or password",
    ]) {
        return PullError::Auth { image, message };
    }
    if matches!(status, Some(400 | 404))
        || has(&[
            "manifest unknown",
            "not found: manifest",
            "name unknown",
            "invalid reference format",
        ])
    {
        return PullError::NotFound { image, message };
    }
    if has(&[
        "dial tcp",
        "connection refused",
        "no such host",
        "i/o timeout",
        "tls handshake timeout",
        "connection reset",
        "network is unreachable",
        "eof",
    ]) {
        return PullError::Unreachable { image, message };
    }
    PullError::Other { image, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(split_reference("python:3.12"), ("python", "3.12"));
        assert_eq!(split_reference("python"), ("python", "latest"));
        assert_eq!(
            split_reference("127.0.0.1:5000/a/b"),
            ("127.0.0.1:5000/a/b", "latest")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/a/b:v1"),
            ("127.0.0.1:5000/a/b", "v1")
        );
        assert_eq!(
            split_reference("ghcr.io/o/i@sha256:abc"),
            ("ghcr.io/o/i", "sha256:abc")
        );
    }

    fn server(status: u16, message: &str) -> BollardError {
        BollardError::DockerResponseServerError {
            status_code: status,
            message: message.into(),
        }
    }

    /// The messages a Docker 20.10 engine gives for a registry on 127.0.0.1.
    #[test]
    fn classification() {
        let c = |e| classify("r/i:t", e).outcome();
        assert_eq!(
            c(server(
                404,
                "manifest for r/i:nope not found: manifest unknown: manifest unknown"
            )),
            "not_found"
        );
        assert_eq!(
            c(server(500, "unauthorized: authentication required")),
            "auth"
        );
        assert_eq!(
            c(server(
                500,
                "Head \"http://r/v2/i/manifests/t\": no basic auth credentials"
            )),
            "auth"
        );
        assert_eq!(
            c(server(
                500,
                "Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused"
            )),
            "unreachable"
        );
        assert_eq!(c(server(500, "toomanyrequests: slow down")), "error");
        assert_eq!(
            c(BollardError::DockerStreamError {
                error: "unexpected EOF".into()
            }),
            "unreachable"
        );
        // Final vs retried, as the worker sees it.
        assert!(!WorkspaceError::from(classify("i", server(404, "manifest unknown"))).retryable());
        assert!(!WorkspaceError::from(classify("i", server(500, "unauthorized"))).retryable());
        assert!(WorkspaceError::from(classify("i", server(500, "dial tcp: refused"))).retryable());
        assert!(WorkspaceError::from(classify("i", server(500, "toomanyrequests"))).retryable());
    }
}
