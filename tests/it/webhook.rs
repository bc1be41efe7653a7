//! Completion webhooks against a real HTTP receiver (axum on 127.0.0.1:0): the
//! signature over the exact bytes, retries with one delivery id, no retry on 4xx,
//! Retry-After, dead receivers that delay nothing, bounded queueing, secret
//! masking, and the outcome recorded in status.json of a local store.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_fleet::job::status::WebhookDelivery;
use agent_fleet::job::{self, ErrorInfo, JobResult, JobSpec, Outcome, Phase, StatusRecord, Tokens};
use agent_fleet::results::webhook::{self, Notifier, WebhookSettings};
use agent_fleet::store::{JobKeys, Store};
use agent_fleet::telemetry::metrics;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    /// A status with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone)]
struct Got {
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

struct Inner {
    script: VecDeque<Reply>,
    then: Reply,
    got: Vec<Got>,
}

/// An in-process webhook receiver answering from a script, then `then` forever.
#[derive(Clone)]
struct Receiver {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
}

impl Receiver {
    async fn start(script: &[Reply], then: Reply) -> Receiver {
        let inner = Arc::new(Mutex::new(Inner {
            script: script.iter().copied().collect(),
            then,
            got: Vec::new(),
        }));
        let app = Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { inner, addr }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.inner.lock().unwrap().got.clone()
    }

    /// Waits until `n` requests arrived.
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Got> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} requests arrived within {within:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn hook(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Bytes) -> Response {
    let reply = {
        let mut i = inner.lock().unwrap();
        i.got.push(Got {
            at: Instant::now(),
            headers,
            body,
        });
        let then = i.then;
        i.script.pop_front().unwrap_or(then)
    };
    match reply {
        Reply::Status(s) => (StatusCode::from_u16(s).unwrap(), "answer").into_response(),
        Reply::RetryAfter(s, secs) => (
            StatusCode::from_u16(s).unwrap(),
            [("retry-after", secs.to_string())],
            "slow down",
        )
            .into_response(),
        Reply::Hang => std::future::pending().await,
    }
}

/// Sets a variable of this test process (each test runs in its own process, and
/// before any other thread reads the environment).
fn set_env(name: &str, value: &str) {
    // SAFETY: nextest runs every test in its own process; the current-thread
    // runtime of #[tokio::test] has no other thread reading the environment.
    unsafe { std::env::set_var(name, value) };
}

fn spec(id: &str, extra: Value) -> JobSpec {
    let mut v = json!({"id": id, "task": "do it", "image": "img"});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    job::job_from_value(v, &job::ParseOptions::default()).expect("a valid job")
}

fn result(spec: &JobSpec, outcome: Outcome, final_message: &str) -> JobResult {
    let now = Utc::now();
    JobResult {
        job_id: spec.id.clone(),
        outcome,
        attempt: 1,
        final_message: Some(final_message.to_string()),
        steps: 7,
        cost_usd: 0.25,
        tokens: Tokens {
            prompt: 1200,
            completion: 80,
            ..Tokens::default()
        },
        duration_secs: 12.5,
        stuck_pattern: None,
        error: None,
        started_at: now,
        finished_at: now,
        worker: Some("w1".into()),
        patch_complete: true,
    }
}

/// A local store with the job's queued status record.
async fn store_with(dir: &tempfile::TempDir, specs: &[&JobSpec]) -> Store {
    let store = Store::open(dir.path().to_str().unwrap())
        .await
        .expect("open a local store");
    for s in specs {
        store
            .put_json(
                &JobKeys(&s.id).status(),
                &StatusRecord::queued(&s.id, s.batch_id.clone()),
            )
            .await
            .unwrap();
    }
    store
}

/// Production defaults with millisecond backoffs.
fn fast() -> WebhookSettings {
    WebhookSettings {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(5),
        max_elapsed: Duration::from_secs(20),
        store_timeout: Duration::from_secs(5),
        // The receivers listen on loopback.
        allow_private: true,
        ..WebhookSettings::new(None, "FLEET_TEST_WEBHOOK_UNSET")
    }
}

fn notifier(store: &Store, settings: WebhookSettings) -> Notifier {
    Notifier::new(
        webhook::http_client().expect("HTTP client"),
        store.clone(),
        settings,
    )
}

/// Waits until the job's status.json holds `n` webhook delivery records.
async fn recorded(store: &Store, job_id: &str, n: usize) -> Vec<WebhookDelivery> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hooks = store
            .status(job_id)
            .await
            .unwrap()
            .expect("status record")
            .webhooks;
        if hooks.len() >= n {
            return hooks;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} deliveries recorded: {hooks:?}",
            hooks.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn counter(outcome: &str) -> u64 {
    metrics()
        .webhook_deliveries
        .with_label_values(&[outcome])
        .get()
}

#[tokio::test]
async fn signature_verifies_against_the_exact_bytes_received() {
    set_env("FLEET_TEST_HOOK_SECRET", "s3cret-signing-key");
    let rx = Receiver::start(&[], Reply::Status(200)).await;
    let mut s = spec(
        "sig-1",
        json!({"webhook": {"url": rx.url(), "secret_env": "FLEET_TEST_HOOK_SECRET"}}),
    );
    s.batch_id = Some("batch-9".into());
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(&dir, &[&s]).await;
    notifier(&store, fast()).job_finished(&s, &result(&s, Outcome::Succeeded, "all done"));

    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    let g = &got[0];
    assert!(
        webhook::verify(
            b"s3cret-signing-key",
            &g.body,
            &g.header("x-fleet-signature")
        ),
        "signature over the body"
    );
    assert!(!webhook::verify(
        b"another-key",
        &g.body,
        &g.header("x-fleet-signature")
    ));
    assert_eq!(
        g.header("x-fleet-signature"),
        webhook::sign(b"s3cret-signing-key", &g.body)
    );
    assert_eq!(g.header("x-fleet-event"), "job.completed");
    assert_eq!(g.header("content-type"), "application/json");

    let body = g.json();
    assert_eq!(body["event"], "job.completed");
    assert_eq!(body["delivery_id"], g.header("x-fleet-delivery"));
    assert_eq!(body["job_id"], "sig-1");
    assert_eq!(body["batch_id"], "batch-9");
    assert_eq!(body["outcome"], "succeeded");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    let d = &body["data"];
    assert_eq!(
        (
            d["steps"].as_u64(),
            d["cost_usd"].as_f64(),
            d["duration_secs"].as_f64()
        ),
        (Some(7), Some(0.25), Some(12.5))
    );
    assert_eq!(d["tokens"], json!({"prompt": 1200, "completion": 80}));
    assert_eq!(d["final_message"], "all done");
    assert_eq!(d["result"]["keys"]["result"], "jobs/sig-1/result.json");
    assert!(
        d["result"]["location"]
            .as_str()
            .unwrap()
            .contains("jobs/sig-1")
    );

    let hooks = recorded(&store, "sig-1", 1).await;
    assert_eq!(hooks[0].url, rx.url());
    assert_eq!(hooks[0].delivery_id, g.header("x-fleet-delivery"));
    assert_eq!(
        (hooks[0].delivered, hooks[0].attempts, hooks[0].last_status),
        (true, 1, Some(200))
    );
    assert_eq!(hooks[0].event, "job.completed");
    assert_eq!(counter("delivered"), 1);
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_same_delivery_three_times() {
    let rx = Receiver::start(
        &[Reply::Status(500), Reply::Status(503)],
        Reply::Status(200),
    )
    .await;
    let s = spec("retry-1", json!({"webhook": {"url": rx.url()}}));
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(&dir, &[&s]).await;
    notifier(&store, fast()).job_finished(&s, &result(&s, Outcome::Failed, "no luck"));

    let hooks = recorded(&store, "retry-1", 1).await;
    let got = rx.got();
    assert_eq!(got.len(), 3, "three attempts");
    let id = got[0].header("x-fleet-delivery");
    assert!(
        got.iter().all(|g| g.header("x-fleet-delivery") == id),
        "one delivery id on every attempt"
    );
    assert!(
        got.iter().all(|g| g.body == got[0].body),
        "the same bytes on every attempt"
    );
    assert!(
        got[0].header("x-fleet-signature").is_empty(),
        "no secret, no signature"
    );
    assert_eq!(
        (hooks[0].delivered, hooks[0].attempts, hooks[0].last_status),
        (true, 3, Some(200))
    );
    assert_eq!(hooks[0].delivery_id, id);
    assert_eq!(
        (counter("retried"), counter("delivered"), counter("failed")),
        (2, 1, 0)
    );
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let rx = Receiver::start(&[], Reply::Status(400)).await;
    let s = spec("bad-1", json!({"webhook": {"url": rx.url()}}));
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(&dir, &[&s]).await;
    notifier(&store, fast()).job_finished(&s, &result(&s, Outcome::Stuck, "loop"));

    let hooks = recorded(&store, "bad-1", 1).await;
    // Longer than several backoffs: a retry would have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.got().len(), 1);
    let h = &hooks[0];
    assert_eq!(
        (h.delivered, h.attempts, h.last_status),
        (false, 1, Some(400))
    );
    assert!(h.last_error.as_deref().unwrap().contains("400"), "{h:?}");
    assert_eq!((counter("failed"), counter("retried")), (1, 0));
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let rx = Receiver::start(&[Reply::RetryAfter(429, 1)], Reply::Status(204)).await;
    let s = spec("ra-1", json!({"webhook": {"url": rx.url()}}));
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(&dir, &[&s]).await;
    notifier(&store, fast()).job_finished(&s, &result(&s, Outcome::Succeeded, "ok"));

    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    let gap = got[1].at - got[0].at;
    // The backoff alone would be 20–40 ms.
    assert!(
        gap >= Duration::from_millis(950),
        "second attempt after {gap:?}"
    );
    let hooks = recorded(&store, "ra-1", 1).await;
    assert_eq!(
        (hooks[0].delivered, hooks[0].attempts, hooks[0].last_status),
        (true, 2, Some(204))
    );
}

#[tokio::test]
async fn a_dead_receiver_delays_neither_the_worker_nor_the_next_job() {
    let dead = Receiver::start(&[], Reply::Hang).await;
    let live = Receiver::start(&[], Reply::Status(200)).await;
    let a = spec("dead-a", json!({"webhook": {"url": dead.url()}}));
    let b = spec("live-b", json!({"webhook": {"url": live.url()}}));
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(&dir, &[&a, &b]).await;
    let settings = WebhookSettings {
        attempt_timeout: Duration::from_secs(30),
        ..fast()
    };
    let n = notifier(&store, settings);

    let t = Instant::now();
    n.job_finished(&a, &result(&a, Outcome::Succeeded, "a"));
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(100),
        "job_finished took {took:?}"
    );
    dead.wait_for(1, Duration::from_secs(5)).await;

    // The next job's delivery goes out while the first one still waits.
    let t = Instant::now();
    n.job_finished(&b, &result(&b, Outcome::Succeeded, "b"));
    live.wait_for(1, Duration::from_secs(2)).await;
    let hooks = recorded(&store, "live-b", 1).await;
    assert!(hooks[0].delivered);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(
        n.pending(),
        1,
        "only the dead receiver's delivery is pending"
    );

    // A draining worker gives up on it and says so in status.json.
    tokio::time::timeout(
        Duration::from_secs(10),
        n.shutdown(Duration::from_millis(100)),
    )
    .await
    .expect("shutdown is bounded");
    let hooks = recorded(&store, "dead-a", 1).await;
    assert!(!hooks[0].delivered);
    assert_eq!(hooks[0].attempts, 1);
    assert!(
        hooks[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("shut down"),
        "{hooks:?}"
    );
}

#[tokio::test]
async fn a_full_queue_drops_the_delivery_and_records_it() {
    let dead = Receiver::start(&[], Reply::Hang).await;
    let a = spec("full-a", json!({"webhook": {"url": dead.url()}}));
    let b = spec("full-b", json!({"webhook": {"url": dead.url()}}));
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(&dir, &[&a, &b]).await;
    let n = notifier(
        &store,
        WebhookSettings {
            queue_size: 1,
            attempt_timeout: Duration::from_secs(30),
            ..fast()
        },
    );

    n.job_finished(&a, &result(&a, Outcome::Succeeded, "a"));
    n.job_finished(&b, &result(&b, Outcome::Succeeded, "b"));
    let hooks = recorded(&store, "full-b", 1).await;
    assert!(!hooks[0].delivered);
    assert_eq!(hooks[0].attempts, 0);
    assert!(
        hooks[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("queue full"),
        "{hooks:?}"
    );
    assert_eq!(dead.wait_for(1, Duration::from_secs(5)).await.len(), 1);
    assert_eq!(counter("failed"), 1);
}

#[tokio::test]
async fn a_secret_value_never_appears_in_a_payload() {
    let secret = "tok-4f9c2a77e1-\"quoted\"\n";
    set_env("FLEET_TEST_HOOK_TOKEN", secret);
    let rx = Receiver::start(&[], Reply::Status(200)).await;
    let s = spec(
        "mask-1",
        json!({
            "secrets": ["FLEET_TEST_HOOK_TOKEN"],
            "labels": {"note": format!("label {secret}")},
            "webhook": {"url": rx.url()},
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(&dir, &[&s]).await;
    let mut r = result(
        &s,
        Outcome::Failed,
        &format!("the token is {secret} indeed"),
    );
    r.error = Some(ErrorInfo {
        kind: "x".into(),
        phase: Phase::Agent,
        retryable: false,
        message: format!("failed with {secret}"),
    });
    r.stuck_pattern = Some(secret.to_string());
    notifier(&store, fast()).job_finished(&s, &r);

    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    let raw = String::from_utf8(got[0].body.to_vec()).unwrap();
    let escaped = serde_json::to_string(secret).unwrap();
    assert!(!raw.contains("tok-4f9c2a77e1"), "{raw}");
    assert!(!raw.contains(escaped.trim_matches('"')), "{raw}");
    let body = got[0].json();
    assert_eq!(
        body["data"]["final_message"],
        "the token is <secret-hidden> indeed"
    );
    assert_eq!(
        body["data"]["error"]["message"],
        "failed with <secret-hidden>"
    );
    assert_eq!(body["data"]["labels"]["note"], "label <secret-hidden>");
}

#[tokio::test]
async fn the_worker_url_gets_started_and_completed_events_signed_with_its_secret() {
    set_env("FLEET_TEST_WORKER_HOOK_SECRET", "worker-wide-key");
    let job_rx = Receiver::start(&[], Reply::Status(200)).await;
    let worker_rx = Receiver::start(&[], Reply::Status(200)).await;
    let s = spec("both-1", json!({"webhook": {"url": job_rx.url()}}));
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(&dir, &[&s]).await;
    let settings = WebhookSettings {
        url: Some(worker_rx.url()),
        secret_env: "FLEET_TEST_WORKER_HOOK_SECRET".into(),
        send_started: true,
        ..fast()
    };
    let n = notifier(&store, settings);
    n.job_started(&s, 1, "w1");
    let started = worker_rx.wait_for(1, Duration::from_secs(10)).await;
    n.job_finished(&s, &result(&s, Outcome::Succeeded, "done"));

    let got = worker_rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(started[0].header("x-fleet-event"), "job.started");
    assert_eq!(started[0].json()["outcome"], Value::Null);
    assert_eq!(started[0].json()["data"]["attempt"], 1);
    assert_eq!(got[1].header("x-fleet-event"), "job.completed");
    for g in &got {
        assert!(webhook::verify(
            b"worker-wide-key",
            &g.body,
            &g.header("x-fleet-signature")
        ));
    }
    // The job's own URL has no secret: unsigned, but delivered too.
    let job_got = job_rx.wait_for(2, Duration::from_secs(10)).await;
    assert!(job_got[0].header("x-fleet-signature").is_empty());
    assert_ne!(
        job_got[1].header("x-fleet-delivery"),
        got[1].header("x-fleet-delivery")
    );

    let hooks = recorded(&store, "both-1", 4).await;
    assert!(hooks.iter().all(|h| h.delivered && h.attempts == 1));
    assert_eq!(hooks.iter().filter(|h| h.event == "job.started").count(), 2);
    assert_eq!(hooks.iter().filter(|h| h.url == worker_rx.url()).count(), 2);
}

#[tokio::test]
async fn a_job_naming_a_missing_secret_gets_no_unsigned_delivery() {
    let rx = Receiver::start(&[], Reply::Status(200)).await;
    let s = spec(
        "nosecret-1",
        json!({"webhook": {"url": rx.url(), "secret_env": "FLEET_TEST_HOOK_NOT_SET"}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(&dir, &[&s]).await;
    notifier(&store, fast()).job_finished(&s, &result(&s, Outcome::Succeeded, "ok"));

    let hooks = recorded(&store, "nosecret-1", 1).await;
    assert!(!hooks[0].delivered);
    assert_eq!(hooks[0].attempts, 0);
    assert!(
        hooks[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("FLEET_TEST_HOOK_NOT_SET"),
        "{hooks:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.got().is_empty());
}

#[tokio::test]
async fn connection_errors_are_retried_up_to_the_attempt_limit() {
    // A port nothing listens on: every attempt is refused at connect.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = spec(
        "refused-1",
        json!({"webhook": {"url": format!("http://127.0.0.1:{port}/hook")}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(&dir, &[&s]).await;
    notifier(
        &store,
        WebhookSettings {
            max_attempts: 3,
            ..fast()
        },
    )
    .job_finished(&s, &result(&s, Outcome::Succeeded, "ok"));

    let hooks = recorded(&store, "refused-1", 1).await;
    let h = &hooks[0];
    assert_eq!((h.delivered, h.attempts, h.last_status), (false, 3, None));
    assert!(
        h.last_error
            .as_deref()
            .unwrap()
            .contains("connection failed"),
        "{h:?}"
    );
    assert_eq!((counter("retried"), counter("failed")), (2, 1));
}
