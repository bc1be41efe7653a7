//! The S3 store against a real S3 API (moto's server, from scripts/services/s3.sh).
//! Endpoint from `FLEET_TEST_S3_ENDPOINT` (default http://127.0.0.1:9000), bucket
//! `fleet-test`, credentials test/test. Each test works under its own prefix. A
//! test fails when the server is not running.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_fleet::job::{State, StatusRecord};
use agent_fleet::store::s3::{S3Settings, S3Store, Timeouts};
use agent_fleet::store::{JobKeys, Store, StoreError};
use aws_sdk_s3::config::Credentials;
use bytes::Bytes;
use sha2::{Digest, Sha256};

const BUCKET: &str = "fleet-test";

fn endpoint() -> String {
    std::env::var("FLEET_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9000".to_string())
}

fn settings(endpoint: &str, bucket: &str) -> S3Settings {
    let mut s = S3Settings::new(bucket, &format!("it/{}", uuid::Uuid::new_v4().simple()));
    s.endpoint = Some(endpoint.to_string());
    s.region = "us-east-1".to_string();
    s.credentials = Some(Credentials::new("test", "test", None, None, "fleet-tests"));
    s.retry_budget = Duration::from_secs(20);
    s.validate_download_checksums = false;
    s
}

/// A store under a fresh prefix of the test bucket; panics when the server is down.
async fn store() -> (Store, S3Store) {
    let s3 = S3Store::connect(settings(&endpoint(), BUCKET))
        .await
        .expect("client");
    if let Err(e) = s3.ping().await {
        panic!(
            "the S3 test server does not answer at {} ({e}); run scripts/services/s3.sh",
            endpoint()
        );
    }
    (Store::S3(s3.clone()), s3)
}

#[tokio::test]
async fn put_get_list_under_the_prefix() {
    let (store, s3) = store().await;
    let prefix = s3.settings().prefix.clone();
    for key in [
        "jobs/b/status.json",
        "jobs/a/job.json",
        "jobs/a/artifacts/x/y.txt",
        "batches/1.json",
    ] {
        store
            .put(key, Bytes::from(format!("body of {key}")))
            .await
            .unwrap();
    }
    assert_eq!(
        store.get("jobs/a/job.json").await.unwrap().unwrap(),
        Bytes::from("body of jobs/a/job.json")
    );
    store
        .put("jobs/a/job.json", Bytes::from_static(b"v2"))
        .await
        .unwrap();
    assert_eq!(
        store.get("jobs/a/job.json").await.unwrap().unwrap(),
        Bytes::from_static(b"v2")
    );

    assert_eq!(
        store.list("jobs/").await.unwrap(),
        vec![
            "jobs/a/artifacts/x/y.txt",
            "jobs/a/job.json",
            "jobs/b/status.json"
        ]
    );
    assert_eq!(
        store.list("jobs/a/artifacts/").await.unwrap(),
        vec!["jobs/a/artifacts/x/y.txt"]
    );
    assert_eq!(store.list("").await.unwrap().len(), 4);
    assert!(store.list("nothing/").await.unwrap().is_empty());
    assert_eq!(
        store.locate("jobs/a/job.json"),
        format!("s3://{BUCKET}/{prefix}/jobs/a/job.json")
    );
    store.ping().await.unwrap();
}

#[tokio::test]
async fn list_pages_through_the_listing() {
    let mut s = settings(&endpoint(), BUCKET);
    s.list_page_size = Some(7);
    let store = Store::S3(S3Store::connect(s).await.unwrap());
    let keys: Vec<String> = (0..30).map(|i| format!("many/{i:03}")).collect();
    let puts = keys.iter().map(|k| store.put(k, Bytes::from_static(b"x")));
    for put in futures_util::future::join_all(puts).await {
        put.unwrap();
    }
    store
        .put("other/1", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(store.list("many/").await.unwrap(), keys);
}

#[tokio::test]
async fn open_takes_an_s3_spec() {
    // Builds the client only; no call is made.
    let store = Store::open("s3://fleet-test/some/prefix/").await.unwrap();
    assert_eq!(
        store.locate("jobs/a/job.json"),
        "s3://fleet-test/some/prefix/jobs/a/job.json"
    );
    let store = Store::open("s3://fleet-test").await.unwrap();
    assert_eq!(
        store.locate("jobs/a/job.json"),
        "s3://fleet-test/jobs/a/job.json"
    );
    assert!(Store::open("s3://x").await.is_err());
}

#[tokio::test]
async fn a_missing_key_is_none() {
    let (store, _) = store().await;
    assert!(store.get("jobs/nope/result.json").await.unwrap().is_none());
    assert!(store.status("nope").await.unwrap().is_none());
    assert!(
        store
            .update_status("nope", |_| true)
            .await
            .unwrap()
            .is_none()
    );
}

fn write_file(path: &Path, size: usize) -> String {
    // Cheap, non-repeating content: a counter hashed block by block.
    let mut data = Vec::with_capacity(size);
    let mut i = 0u64;
    while data.len() < size {
        data.extend_from_slice(&Sha256::digest(i.to_le_bytes()));
        i += 1;
    }
    data.truncate(size);
    std::fs::write(path, &data).unwrap();
    hex::encode(Sha256::digest(&data))
}

#[tokio::test]
async fn a_large_file_goes_up_in_parts_and_reads_back_identical() {
    let (store, s3) = store().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let size = 20 * 1024 * 1024 + 123;
    let sum = write_file(&path, size);

    let sent = store
        .put_file("jobs/big/artifacts/big.bin", &path)
        .await
        .unwrap();
    assert_eq!(sent, size as u64);
    let back = store
        .get("jobs/big/artifacts/big.bin")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.len(), size);
    assert_eq!(hex::encode(Sha256::digest(&back)), sum);

    // A multipart object's ETag ends in -<parts>: 8 + 8 + 4 MiB.
    let head = s3
        .client()
        .head_object()
        .bucket(BUCKET)
        .key(format!(
            "{}/jobs/big/artifacts/big.bin",
            s3.settings().prefix
        ))
        .send()
        .await
        .unwrap();
    assert!(
        head.e_tag().unwrap().trim_matches('"').ends_with("-3"),
        "etag {:?}",
        head.e_tag()
    );
    let pending = s3
        .client()
        .list_multipart_uploads()
        .bucket(BUCKET)
        .prefix(&s3.settings().prefix)
        .send()
        .await
        .unwrap();
    assert!(
        pending.uploads().is_empty(),
        "no multipart upload left open"
    );

    // A small file goes up whole.
    let small = dir.path().join("small.txt");
    let small_sum = write_file(&small, 1000);
    assert_eq!(
        store.put_file("jobs/big/patch.diff", &small).await.unwrap(),
        1000
    );
    let back = store.get("jobs/big/patch.diff").await.unwrap().unwrap();
    assert_eq!(hex::encode(Sha256::digest(&back)), small_sum);

    // A missing local file is an error naming it, not a retry loop.
    let err = store
        .put_file("jobs/big/x", &dir.path().join("missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
}

async fn seed_status(store: &Store, job: &str) {
    store
        .put_json(&JobKeys(job).status(), &StatusRecord::queued(job, None))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_status_updates_lose_nothing() {
    let (store, _) = store().await;
    seed_status(&store, "counter").await;
    let updaters = (0..2).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                store
                    .update_status("counter", |r| {
                        r.steps += 1;
                        true
                    })
                    .await
                    .unwrap();
            }
        })
    });
    for u in futures_util::future::join_all(updaters).await {
        u.unwrap();
    }
    assert_eq!(store.status("counter").await.unwrap().unwrap().steps, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claims_have_one_winner() {
    let (store, _) = store().await;
    for round in 0..4 {
        let job = format!("claim-{round}");
        seed_status(&store, &job).await;
        let contenders = (0..5).map(|w| {
            let (store, job) = (store.clone(), job.clone());
            tokio::spawn(async move {
                let me = format!("worker-{w}");
                let rec = store
                    .update_status(&job, |r| {
                        if r.state != State::Queued {
                            return false;
                        }
                        r.attempt += 1;
                        r.transition(State::Running, Some(&me), None);
                        true
                    })
                    .await
                    .unwrap()
                    .unwrap();
                rec.state == State::Running && rec.worker.as_deref() == Some(&me)
            })
        });
        let wins = futures_util::future::join_all(contenders)
            .await
            .into_iter()
            .filter(|w| *w.as_ref().unwrap())
            .count();
        assert_eq!(wins, 1, "round {round}");
        let rec = store.status(&job).await.unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.attempt, rec.history.len()),
            (State::Running, 1, 2)
        );
    }
}

#[tokio::test]
async fn put_if_absent_writes_once() {
    let (store, _) = store().await;
    assert!(
        store
            .put_if_absent("jobs/once/status.json", Bytes::from_static(b"first"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_if_absent("jobs/once/status.json", Bytes::from_static(b"second"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.get("jobs/once/status.json").await.unwrap().unwrap(),
        Bytes::from_static(b"first")
    );
}

#[tokio::test]
async fn a_wrong_bucket_fails_fast_and_clearly() {
    let _ = store().await;
    let bucket = format!(
        "fleet-missing-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let s3 = S3Store::connect(settings(&endpoint(), &bucket))
        .await
        .unwrap();
    let store = Store::S3(s3);
    let start = Instant::now();
    let err = store
        .put("jobs/x/job.json", Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "not retried: {:?}",
        start.elapsed()
    );
    let text = err.to_string();
    assert!(
        matches!(&err, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{text}"
    );
    assert!(
        text.contains(&bucket) && text.contains("jobs/x/job.json") && text.contains("NoSuchBucket"),
        "{text}"
    );
    assert!(store.get("jobs/x/job.json").await.is_err());
    assert!(store.ping().await.is_err());
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable_after_the_budget() {
    let port = free_port();
    let mut s = settings(&format!("http://127.0.0.1:{port}"), BUCKET);
    s.retry_budget = Duration::from_secs(2);
    let store = Store::S3(S3Store::connect(s).await.unwrap());
    let start = Instant::now();
    let err = store
        .put("jobs/x/job.json", Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.retryable());
    assert!(
        start.elapsed() >= Duration::from_secs(2) && start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    assert!(store.ping().await.is_err());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A second moto server of our own, on its own port, driven by the service script
/// (started and stopped by its saved PID); torn down on drop.
struct OwnServer {
    port: u16,
}

impl OwnServer {
    fn script(&self, cmd: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services/s3.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(cmd)
            .env("FLEET_TEST_S3_PORT", self.port.to_string())
            .output()
            .expect("run scripts/services/s3.sh");
        assert!(
            out.status.success(),
            "s3.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.script("down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_survives_an_endpoint_outage() {
    let server = Arc::new(OwnServer { port: free_port() });
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.script("up"))
        .await
        .unwrap();

    let mut s = settings(&format!("http://127.0.0.1:{}", server.port), BUCKET);
    // Short deadlines so the outage is ridden out by the outer retry, not by one
    // long-waiting attempt.
    s.timeouts = Timeouts {
        connect: Duration::from_millis(500),
        attempt: Duration::from_millis(700),
        operation: Duration::from_secs(2),
    };
    s.retry_budget = Duration::from_secs(30);
    let store = Store::S3(S3Store::connect(s).await.unwrap());
    store
        .put("jobs/o/before", Bytes::from_static(b"1"))
        .await
        .unwrap();

    let s = server.clone();
    tokio::task::spawn_blocking(move || s.script("stop"))
        .await
        .unwrap();
    let started = Instant::now();
    let put = tokio::spawn({
        let store = store.clone();
        async move { store.put("jobs/o/during", Bytes::from_static(b"2")).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !put.is_finished(),
        "the put cannot finish while the endpoint is down"
    );
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.script("start"))
        .await
        .unwrap();

    put.await
        .unwrap()
        .expect("the put succeeds once the endpoint is back");
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(
        store.get("jobs/o/during").await.unwrap().unwrap(),
        Bytes::from_static(b"2")
    );
    assert_eq!(
        store.get("jobs/o/before").await.unwrap().unwrap(),
        Bytes::from_static(b"1")
    );
}
