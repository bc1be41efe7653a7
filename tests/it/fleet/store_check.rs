//! The store self-check against a store that ignores conditional writes: an HTTP
//! proxy (test code, not the fleet) in front of the S3 test server that drops
//! `If-Match` and `If-None-Match` from every request, as some S3-compatible servers
//! and gateways do. The proxy counts what it dropped: proof that the worker sent the
//! headers and the store never saw them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::Value;

use super::harness::{Fleet, poll, s3_endpoint};

struct Dropper {
    upstream: String,
    client: reqwest::Client,
    /// While false the proxy passes everything through.
    dropping: AtomicBool,
    dropped: AtomicUsize,
}

/// The header-dropping proxy on 127.0.0.1 (a port of its own), on a runtime of its own.
struct Proxy {
    url: String,
    state: Arc<Dropper>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    fn start(dropping: bool) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Dropper {
            upstream: s3_endpoint(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            dropping: AtomicBool::new(dropping),
            dropped: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move { axum::serve(listener, app).await });
        Proxy {
            url,
            state,
            _rt: rt,
        }
    }
}

async fn forward(State(p): State<Arc<Dropper>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 256 << 20)
        .await
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = p
        .client
        .request(parts.method.clone(), format!("{}{path}", p.upstream));
    for (name, value) in parts.headers.iter() {
        let n = name.as_str();
        if n == "host" || n == "content-length" {
            continue;
        }
        if p.dropping.load(Ordering::SeqCst) && (n == "if-match" || n == "if-none-match") {
            p.dropped.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        out = out.header(name, value);
    }
    let resp = match out.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Body::from(e.to_string()))
                .unwrap();
        }
    };
    let mut b = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            b = b.header(name, value);
        }
    }
    let bytes = resp.bytes().await.unwrap_or_default();
    b.body(Body::from(bytes)).unwrap()
}

#[test]
fn a_worker_refuses_a_store_that_ignores_conditional_writes() {
    let proxy = Proxy::start(true);
    let f = Fleet::with_endpoint(&proxy.url);
    let out = f.cli(
        &["worker", "--metrics-addr", "127.0.0.1:0"],
        Duration::from_secs(120),
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {}", out.stderr));
    // One line naming the endpoint and what it ignored.
    assert!(line.contains(&proxy.url), "{line}");
    assert!(line.contains("ignores If-None-Match"), "{line}");
    assert!(
        !out.stderr.contains("slots"),
        "the worker started: {}",
        out.stderr
    );
    assert!(proxy.state.dropped.load(Ordering::SeqCst) >= 1);
}

#[test]
fn readyz_reports_a_store_that_stops_honouring_conditional_writes() {
    let proxy = Proxy::start(false);
    let f = Fleet::with_endpoint(&proxy.url);
    let w = f.worker(1, &[]);
    let log = f.worker_log(&w);
    let base = log
        .lines()
        .find_map(|l| l.split("metrics on ").nth(1))
        .map(|u| u.trim().trim_end_matches("/metrics").to_string())
        .expect("metrics address in the worker's log");
    let readyz = || -> (u16, Value) {
        f.block_on(async {
            let r = reqwest::Client::new()
                .get(format!("{base}/readyz"))
                .timeout(Duration::from_secs(20))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
        })
    };
    let (code, body) = readyz();
    assert_eq!(code, 200, "{body}");
    // A gateway change later: the store now ignores the headers.
    proxy.state.dropping.store(true, Ordering::SeqCst);
    let body = poll(
        Duration::from_secs(60),
        "/readyz to report the store",
        || {
            let (code, body) = readyz();
            (code == 503).then_some(body)
        },
        || f.diagnostics(),
    );
    assert_eq!(
        body["failing"],
        serde_json::json!(["store_conditional_writes"]),
        "{body}"
    );
    let text = body.to_string();
    assert!(text.contains("If-None-Match"), "{text}");
}
