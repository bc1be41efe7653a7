//! Completion webhooks (DESIGN.md "Webhook"): after a job's results and terminal
//! status are stored, POST a signed JSON event to the job's `webhook.url` and to the
//! worker-wide `FLEET_WEBHOOK_URL`.
//!
//! The worker hands events to a [`Notifier`] and moves on: [`Notifier::job_finished`]
//! never waits on the network. Deliveries run in background tasks with bounded
//! memory however slow or dead a receiver is:
//!
//! ```text
//! job_finished ──► one body per target (masked, serialised once, signed)
//!                   │ a pending slot free? (queue_size in all) ── no ──► recorded "queue full"
//!                   ▼
//!                 task: attempt ⇄ backoff (a sender slot only while a request is in flight)
//!                   ▼
//!                 status.json `webhooks[]` ← {url, delivery_id, event, delivered, attempts, …}
//! ```
//!
//! A webhook never changes the job's outcome: its fate is recorded next to it in
//! status.json and counted in `fleet_webhook_deliveries_total{outcome}`.
//!
//! # Signatures
//!
//! `X-Fleet-Signature: sha256=<hex HMAC-SHA256(secret, body)>` over the exact bytes
//! sent. The job's URL is signed with the value of the variable its
//! `webhook.secret_env` names, the worker's URL with `FLEET_WEBHOOK_SECRET`; both are
//! read from the worker's environment. A job that names a secret the worker does
//! not have gets no unsigned delivery: it is recorded as not delivered.

mod deliver;
pub mod payload;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use self::deliver::Pending;
use crate::agent::Masker;
use crate::config;
use crate::job::status::WebhookDelivery;
use crate::job::{JobResult, JobSpec};
use crate::store::Store;
use crate::telemetry::metrics;

pub use payload::{EVENT_COMPLETED, EVENT_STARTED, sign, verify};

/// How deliveries are made. [`WebhookSettings::new`] gives production defaults;
/// every field is public so tests (and flags) can tighten them.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The worker-wide URL (`FLEET_WEBHOOK_URL`): receives every job's events.
    pub url: Option<String>,
    /// The variable holding the worker-wide URL's signing secret (`FLEET_WEBHOOK_SECRET`).
    pub secret_env: String,
    /// Also send `job.started` when a run starts (off by default).
    pub send_started: bool,
    /// Deliveries pending at once (waiting, sending or between attempts); past it a
    /// new delivery is dropped and recorded as such instead of growing memory.
    pub queue_size: usize,
    /// Requests in flight at once, over all receivers.
    pub senders: usize,
    /// Deadline of one attempt (connect, send, response head).
    pub attempt_timeout: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest a receiver's `Retry-After` is honoured for.
    pub max_retry_after: Duration,
    /// No attempt starts later than this after the first.
    pub max_elapsed: Duration,
    /// Deadline for recording a delivery in status.json.
    pub store_timeout: Duration,
    /// Job webhooks may reach loopback, private and link-local addresses
    /// (`FLEET_WEBHOOK_ALLOW_PRIVATE`); off, they are refused by the resolved
    /// address. The worker-wide URL is the operator's own and never restricted.
    pub allow_private: bool,
}

impl WebhookSettings {
    /// Defaults: 1024 pending, 4 senders, 10 s per attempt, 8 attempts with backoff
    /// from 1 s doubling to 60 s (±jitter), Retry-After up to 5 min, 15 min in all.
    pub fn new(url: Option<String>, secret_env: impl Into<String>) -> WebhookSettings {
        WebhookSettings {
            url,
            secret_env: secret_env.into(),
            send_started: false,
            queue_size: 1024,
            senders: 4,
            attempt_timeout: Duration::from_secs(10),
            max_attempts: 8,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
            max_elapsed: Duration::from_secs(900),
            store_timeout: Duration::from_secs(30),
            allow_private: false,
        }
    }

    /// The worker-wide URL and secret variable from the environment
    /// (`FLEET_WEBHOOK_URL`, `FLEET_WEBHOOK_SECRET`), production defaults otherwise.
    pub fn from_env() -> WebhookSettings {
        WebhookSettings::new(
            config::env(config::ENV_WEBHOOK_URL),
            config::ENV_WEBHOOK_SECRET,
        )
    }
}

/// An HTTP client suited to webhooks: redirects are not followed (a redirected POST
/// may arrive as a GET without its body), connections time out after 10 s.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
}

/// [`http_client`] that connects to public addresses only, through no proxy (a
/// proxy would resolve the name itself): for job URLs.
fn guarded_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(30))
        .no_proxy()
        .dns_resolver(std::sync::Arc::new(crate::policy::PublicOnly))
        .build()
}

/// Sends job events to webhooks in the background. Cheap to clone: every clone
/// shares the same pending slots, senders and tasks. Must be created inside a
/// Tokio runtime.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    /// For job URLs unless `allow_private`: connects to public addresses only.
    job_client: reqwest::Client,
    store: Store,
    settings: WebhookSettings,
    /// One permit per pending delivery: the memory bound.
    pending: Arc<Semaphore>,
    /// One permit per request in flight.
    senders: Semaphore,
    tasks: TaskTracker,
    cancel: CancellationToken,
    runtime: tokio::runtime::Handle,
}

/// Where one event goes and how it is signed.
struct Target {
    url: String,
    /// A job's URL (the policy's address rule applies), not the worker's.
    from_job: bool,
    /// `Err` when the job names a secret variable the worker does not have.
    secret: Result<Option<String>, String>,
}

impl Notifier {
    /// A notifier delivering with `client` (see [`http_client`]) and recording
    /// outcomes in `store`.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn new(client: reqwest::Client, store: Store, settings: WebhookSettings) -> Notifier {
        let job_client = if settings.allow_private {
            client.clone()
        } else {
            guarded_client().expect("the webhook client was built once already")
        };
        let inner = Inner {
            client,
            job_client,
            store,
            pending: Arc::new(Semaphore::new(settings.queue_size.max(1))),
            senders: Semaphore::new(settings.senders.max(1)),
            settings,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            runtime: tokio::runtime::Handle::current(),
        };
        Notifier {
            inner: Arc::new(inner),
        }
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.inner.settings
    }

    /// Queues `job.completed` for the job's URL and the worker's. Call it after
    /// result.json and the terminal status are stored. Returns at once.
    pub fn job_finished(&self, spec: &JobSpec, result: &JobResult) {
        let masker = self.masker(spec);
        for target in self.targets(spec) {
            let id = payload::delivery_id(&spec.id, result.attempt, EVENT_COMPLETED, &target.url);
            let body = payload::completed(spec, result, &id, &self.inner.store, &masker);
            self.enqueue(spec, EVENT_COMPLETED, target, id, body);
        }
    }

    /// Queues `job.started` when [`WebhookSettings::send_started`] is on; otherwise
    /// does nothing. Call it once the run is claimed. Returns at once.
    pub fn job_started(&self, spec: &JobSpec, attempt: u32, worker: &str) {
        if !self.inner.settings.send_started {
            return;
        }
        let masker = self.masker(spec);
        for target in self.targets(spec) {
            let id = payload::delivery_id(&spec.id, attempt, EVENT_STARTED, &target.url);
            let body = payload::started(spec, attempt, worker, &id, &self.inner.store, &masker);
            self.enqueue(spec, EVENT_STARTED, target, id, body);
        }
    }

    /// Deliveries queued or in progress now.
    pub fn pending(&self) -> usize {
        self.inner.settings.queue_size.max(1) - self.inner.pending.available_permits()
    }

    /// For a draining worker: waits up to `grace` for pending deliveries, then stops
    /// the rest (each recorded as not delivered) and waits for them to be recorded
    /// (bounded by the store deadline). Events queued afterwards still go out.
    pub async fn shutdown(&self, grace: Duration) {
        let tasks = &self.inner.tasks;
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            warn!(
                pending = self.pending(),
                "webhook deliveries still pending at shutdown; giving up on them"
            );
            self.inner.cancel.cancel();
            let _ = tokio::time::timeout(self.inner.settings.store_timeout, tasks.wait()).await;
        }
        tasks.reopen();
    }

    /// The job's URL (signed with its `secret_env`) and the worker's (signed with
    /// the worker's secret, if any); one delivery when both are the same URL.
    fn targets(&self, spec: &JobSpec) -> Vec<Target> {
        let mut out = Vec::new();
        if let Some(w) = &spec.webhook {
            let secret = match &w.secret_env {
                None => Ok(None),
                Some(name) => config::env(name).map(Some).ok_or_else(|| {
                    format!("signing secret {name} is not set in the worker's environment")
                }),
            };
            out.push(Target {
                url: w.url.clone(),
                from_job: true,
                secret,
            });
        }
        if let Some(url) = &self.inner.settings.url {
            if !out.iter().any(|t| &t.url == url) {
                out.push(Target {
                    url: url.clone(),
                    from_job: false,
                    secret: Ok(config::env(&self.inner.settings.secret_env)),
                });
            }
        }
        out
    }

    /// Every secret value the job could have put in its output: its named secrets,
    /// its LLM key, and the signing secrets. The agent masked its output already;
    /// this is the second line of defence.
    fn masker(&self, spec: &JobSpec) -> Masker {
        let key_env = spec
            .llm
            .api_key_env
            .as_deref()
            .unwrap_or(config::ENV_LLM_API_KEY);
        let names = spec
            .secrets
            .iter()
            .map(String::as_str)
            .chain([key_env, self.inner.settings.secret_env.as_str()])
            .chain(spec.webhook.as_ref().and_then(|w| w.secret_env.as_deref()));
        Masker::new(names.filter_map(config::env))
    }

    fn enqueue(
        &self,
        spec: &JobSpec,
        event: &'static str,
        target: Target,
        delivery_id: String,
        body: Vec<u8>,
    ) {
        let inner = &self.inner;
        let guarded = target.from_job && !inner.settings.allow_private;
        let mut secret = target.secret;
        if let Some(v) = guarded
            .then(|| crate::policy::literal_webhook_refusal(&target.url))
            .flatten()
        {
            secret = Err(v.to_string());
        }
        let p = Pending {
            job_id: spec.id.clone(),
            event,
            url: target.url,
            delivery_id,
            signature: secret
                .as_ref()
                .ok()
                .and_then(|s| s.as_ref())
                .map(|s| sign(s.as_bytes(), &body)),
            body: Bytes::from(body),
        };
        if let Err(why) = secret {
            metrics()
                .webhook_deliveries
                .with_label_values(&["failed"])
                .inc();
            warn!(job_id = %p.job_id, url = %p.url, why, "webhook not sent");
            let rec = p.record(false, 0, None, Some(why));
            let inner = self.inner.clone();
            self.spawn(async move { record(&inner, &p.job_id, rec).await });
            return;
        }
        let Ok(slot) = inner.pending.clone().try_acquire_owned() else {
            metrics()
                .webhook_deliveries
                .with_label_values(&["failed"])
                .inc();
            warn!(job_id = %p.job_id, url = %p.url, queue_size = inner.settings.queue_size, "webhook queue full; delivery dropped");
            let rec = p.record(
                false,
                0,
                None,
                Some(format!(
                    "queue full ({} pending)",
                    inner.settings.queue_size
                )),
            );
            // Recording takes no pending slot: a full queue must still be visible.
            let inner = self.inner.clone();
            self.spawn(async move { record(&inner, &p.job_id, rec).await });
            return;
        };
        debug!(job_id = %p.job_id, delivery_id = %p.delivery_id, url = %p.url, event, "webhook queued");
        let inner = self.inner.clone();
        self.spawn(async move {
            let client = if guarded {
                &inner.job_client
            } else {
                &inner.client
            };
            let rec =
                deliver::deliver(client, &inner.settings, &inner.senders, &inner.cancel, &p).await;
            drop(slot);
            record(&inner, &p.job_id, rec).await;
        });
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.inner.tasks.spawn_on(task, &self.inner.runtime);
    }
}

/// Adds or replaces (by delivery id) the delivery's entry in status.json.
async fn record(inner: &Inner, job_id: &str, rec: WebhookDelivery) {
    let update = inner.store.update_status(job_id, |s| {
        match s
            .webhooks
            .iter_mut()
            .find(|w| w.delivery_id == rec.delivery_id)
        {
            Some(w) => *w = rec.clone(),
            None => s.webhooks.push(rec.clone()),
        }
        true
    });
    match tokio::time::timeout(inner.settings.store_timeout, update).await {
        Ok(Ok(Some(_))) => {}
        Ok(Ok(None)) => debug!(job_id, "no status record to note the webhook delivery in"),
        Ok(Err(e)) => warn!(job_id, error = %e, "recording the webhook delivery failed"),
        Err(_) => warn!(job_id, "recording the webhook delivery timed out"),
    }
}
