//! A counting proxy for the Docker engine API.
//!
//! `ApiCounter::start` listens on a unix socket and forwards every connection to
//! the engine's socket, byte for byte, in both directions. On the way it reads the
//! client → engine stream as HTTP/1.1 (request line and headers; bodies skipped by
//! Content-Length or chunked framing) and counts each request by method and path
//! template: `POST /containers/{id}/start`, `GET /images/{id}/json`, `HEAD /_ping`
//! (the API version prefix and the query string dropped, ids and names replaced by
//! `{id}`). A request that upgrades its connection (attach, exec start: an
//! `Upgrade:` header or `Connection: Upgrade`) hands the connection over to a raw
//! stream: after it, that direction is copied without being read.
//!
//! The engine → client direction is never parsed. One thread accepts, two more per
//! connection copy; the counts are read and cleared through `Counts`.
//!
//! The parser's checks are in `self_test` (run by `cargo test --bench fleet`, or by
//! `--self-test`): the bench has `harness = false`, so `#[test]` functions would be
//! compiled but never run.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow, bail};

/// Longest request head (request line + headers) or chunk-size line the parser
/// keeps; past it the stream is not HTTP as we know it and is only copied.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Key for a connection whose client → engine bytes could not be read as HTTP.
pub const UNPARSED: &str = "(unparsed bytes)";

// ---------------------------------------------------------------------------
// Counts

/// What the proxy has seen since the last reset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// "METHOD /path/{id}/template" → requests.
    pub by_endpoint: BTreeMap<String, u64>,
    /// Client connections accepted.
    pub connections: u64,
    /// Requests that upgraded (hijacked) their connection.
    pub upgrades: u64,
    /// Every request as sent ("METHOD /v1.41/containers/fleet-…/start?…"), in
    /// the order the proxy read their heads, across all connections.
    pub requests: Vec<String>,
}

impl Tally {
    /// Requests of every endpoint.
    pub fn total(&self) -> u64 {
        self.by_endpoint.values().sum()
    }
}

/// A handle on the proxy's counts; cheap to clone, shared with its threads.
#[derive(Clone, Default)]
pub struct Counts(Arc<Mutex<Tally>>);

impl Counts {
    pub fn snapshot(&self) -> Tally {
        self.0.lock().unwrap().clone()
    }

    pub fn reset(&self) {
        *self.0.lock().unwrap() = Tally::default();
    }

    fn request(&self, r: &Request) {
        let mut t = self.0.lock().unwrap();
        *t.by_endpoint.entry(r.endpoint()).or_default() += 1;
        t.requests.push(format!("{} {}", r.method, r.target));
        if r.upgrade {
            t.upgrades += 1;
        }
    }

    fn unparsed(&self) {
        *self
            .0
            .lock()
            .unwrap()
            .by_endpoint
            .entry(UNPARSED.into())
            .or_default() += 1;
    }

    fn connection(&self) {
        self.0.lock().unwrap().connections += 1;
    }
}

// ---------------------------------------------------------------------------
// Path templates

/// Collection-level verbs under `/{kind}/`: not ids.
const COLLECTION_VERBS: [&str; 8] = [
    "json",
    "create",
    "prune",
    "search",
    "load",
    "get",
    "pull",
    "privileges",
];

/// Actions that may end an image or plugin path (whose names contain `/`).
const NAMED_ACTIONS: [&str; 9] = [
    "json", "history", "push", "tag", "get", "enable", "disable", "upgrade", "set",
];

/// Object kinds whose second path segment is an id or a name.
const ID_KINDS: [&str; 9] = [
    "containers",
    "exec",
    "volumes",
    "networks",
    "secrets",
    "configs",
    "services",
    "tasks",
    "nodes",
];

/// "/v1.41/containers/3f2a…/start?stream=1" → "/containers/3f2a…/start": the
/// query and the API version prefix dropped, names and ids kept.
pub fn path_of(target: &str) -> &str {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if is_version(first) {
        let rest = &path.trim_start_matches('/')[first.len()..];
        return if rest.is_empty() { "/" } else { rest };
    }
    path
}

/// "/v1.41/containers/3f2a…/start?stream=1" → "/containers/{id}/start".
pub fn path_template(target: &str) -> String {
    let segs: Vec<&str> = path_of(target)
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let Some(&kind) = segs.first() else {
        return "/".into();
    };
    let mut out: Vec<&str> = vec![kind];
    if segs.len() > 1 {
        let second = segs[1];
        if COLLECTION_VERBS.contains(&second) {
            out.extend(&segs[1..]);
        } else if ID_KINDS.contains(&kind) {
            out.push("{id}");
            out.extend(&segs[2..]);
        } else if matches!(kind, "images" | "plugins" | "distribution") {
            // The name runs to the last segment unless that is a known action.
            let last = segs[segs.len() - 1];
            out.push("{id}");
            if segs.len() > 2 && NAMED_ACTIONS.contains(&last) {
                out.push(last);
            }
        } else {
            out.extend(&segs[1..]);
        }
    }
    format!("/{}", out.join("/"))
}

/// "v1.41" and the like.
fn is_version(seg: &str) -> bool {
    seg.strip_prefix('v').is_some_and(|v| {
        !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.') && v.contains('.')
    })
}

// ---------------------------------------------------------------------------
// The request parser

/// One request as counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub upgrade: bool,
}

impl Request {
    pub fn endpoint(&self) -> String {
        format!("{} {}", self.method, path_template(&self.target))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request line (blank lines before it are skipped).
    RequestLine,
    /// Reading header lines.
    Headers,
    /// Skipping this many body bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping this many chunk bytes.
    ChunkData(u64),
    /// Reading the CRLF after a chunk's data.
    ChunkEnd,
    /// Reading trailer lines after the last chunk.
    Trailers,
    /// Upgraded or unreadable: everything after is copied, not read.
    Raw,
}

/// Reads one client → server HTTP/1.1 byte stream incrementally: bytes may arrive
/// split anywhere.
#[derive(Debug)]
pub struct ReqParser {
    state: State,
    line: Vec<u8>,
    cur: Option<Request>,
    content_length: Option<u64>,
    chunked: bool,
    /// Set when the stream stopped being HTTP (not by an upgrade).
    pub broken: bool,
}

impl Default for ReqParser {
    fn default() -> Self {
        ReqParser {
            state: State::RequestLine,
            line: Vec::new(),
            cur: None,
            content_length: None,
            chunked: false,
            broken: false,
        }
    }
}

impl ReqParser {
    /// True once the connection has been handed over (upgrade) or given up on.
    pub fn is_raw(&self) -> bool {
        self.state == State::Raw
    }

    /// Feeds the next bytes; completed requests are pushed to `out` as soon as
    /// their head is in (before their body).
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Request>) {
        while !data.is_empty() {
            match self.state {
                State::Raw => return,
                State::Body(n) | State::ChunkData(n) => {
                    let k = (data.len() as u64).min(n);
                    data = &data[k as usize..];
                    let left = n - k;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::RequestLine,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkEnd,
                        (_, l) => State::ChunkData(l),
                    };
                }
                _ => {
                    // Line-oriented states: collect up to the next LF.
                    match data.iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            self.line.extend_from_slice(&data[..=i]);
                            data = &data[i + 1..];
                            let line = std::mem::take(&mut self.line);
                            self.on_line(&line, out);
                        }
                        None => {
                            self.line.extend_from_slice(data);
                            if self.line.len() > MAX_LINE_BYTES {
                                self.give_up();
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    fn give_up(&mut self) {
        self.state = State::Raw;
        self.broken = true;
        self.line.clear();
    }

    fn on_line(&mut self, raw: &[u8], out: &mut Vec<Request>) {
        let line = trim_eol(raw);
        match self.state {
            State::RequestLine => {
                if line.is_empty() {
                    return;
                }
                let Ok(text) = std::str::from_utf8(line) else {
                    return self.give_up();
                };
                let mut parts = text.split(' ');
                let (Some(method), Some(target), Some(version)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return self.give_up();
                };
                if !version.starts_with("HTTP/1.")
                    || method.is_empty()
                    || !method.bytes().all(|b| b.is_ascii_uppercase())
                {
                    return self.give_up();
                }
                self.cur = Some(Request {
                    method: method.into(),
                    target: target.into(),
                    upgrade: false,
                });
                self.content_length = None;
                self.chunked = false;
                self.state = State::Headers;
            }
            State::Headers => {
                if line.is_empty() {
                    return self.end_of_head(out);
                }
                let text = String::from_utf8_lossy(line);
                let Some((name, value)) = text.split_once(':') else {
                    return self.give_up();
                };
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                let cur = self.cur.as_mut().expect("a request line came first");
                match name.as_str() {
                    "content-length" => match value.parse::<u64>() {
                        Ok(n) => self.content_length = Some(n),
                        Err(_) => self.give_up(),
                    },
                    "transfer-encoding" => {
                        self.chunked = value
                            .split(',')
                            .any(|t| t.trim().eq_ignore_ascii_case("chunked"));
                    }
                    "upgrade" => cur.upgrade = true,
                    "connection"
                        if value
                            .split(',')
                            .any(|t| t.trim().eq_ignore_ascii_case("upgrade")) =>
                    {
                        cur.upgrade = true;
                    }
                    _ => {}
                }
            }
            State::ChunkSize => {
                let text = String::from_utf8_lossy(line);
                let size = text.split(';').next().unwrap_or("").trim();
                match u64::from_str_radix(size, 16) {
                    Ok(0) => self.state = State::Trailers,
                    Ok(n) => self.state = State::ChunkData(n),
                    Err(_) => self.give_up(),
                }
            }
            State::ChunkEnd => {
                if line.is_empty() {
                    self.state = State::ChunkSize;
                } else {
                    self.give_up();
                }
            }
            State::Trailers => {
                if line.is_empty() {
                    self.state = State::RequestLine;
                }
            }
            State::Body(_) | State::ChunkData(_) | State::Raw => unreachable!(),
        }
    }

    fn end_of_head(&mut self, out: &mut Vec<Request>) {
        let req = self.cur.take().expect("a request line came first");
        let upgrade = req.upgrade;
        out.push(req);
        self.state = if upgrade {
            State::Raw
        } else if self.chunked {
            State::ChunkSize
        } else {
            match self.content_length {
                Some(n) if n > 0 => State::Body(n),
                _ => State::RequestLine,
            }
        };
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

// ---------------------------------------------------------------------------
// The proxy

/// The engine socket this machine's Docker clients use: `DOCKER_HOST=unix://…`
/// when set, else /var/run/docker.sock. An error for a non-unix DOCKER_HOST.
pub fn engine_socket() -> Result<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if !h.is_empty() => match h.strip_prefix("unix://") {
            Some(p) => Ok(PathBuf::from(p)),
            None => bail!("DOCKER_HOST={h} is not a unix socket"),
        },
        _ => Ok(PathBuf::from("/var/run/docker.sock")),
    }
}

type Live = Arc<Mutex<BTreeMap<u64, (UnixStream, UnixStream)>>>;

/// A running proxy; stopped (listener closed, open connections shut down, the
/// socket file removed) when dropped.
pub struct ApiCounter {
    path: PathBuf,
    counts: Counts,
    stop: Arc<AtomicBool>,
    live: Live,
    accept: Option<JoinHandle<()>>,
}

impl ApiCounter {
    /// Listens on `socket` (which must not exist) and forwards to `upstream`.
    pub fn start(socket: &Path, upstream: &Path) -> Result<ApiCounter> {
        // Fail here, not in the first client, when the engine is not there.
        UnixStream::connect(upstream)
            .with_context(|| format!("connecting to the engine at {}", upstream.display()))?;
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("listening on {}", socket.display()))?;
        let counts = Counts::default();
        let stop = Arc::new(AtomicBool::new(false));
        let live: Live = Arc::default();
        let accept = {
            let (counts, stop, live) = (counts.clone(), stop.clone(), live.clone());
            let upstream = upstream.to_path_buf();
            std::thread::Builder::new()
                .name("apicount-accept".into())
                .spawn(move || accept_loop(listener, upstream, counts, stop, live))?
        };
        Ok(ApiCounter {
            path: socket.to_path_buf(),
            counts,
            stop,
            live,
            accept: Some(accept),
        })
    }

    pub fn counts(&self) -> Counts {
        self.counts.clone()
    }

    /// `unix:///…` for DOCKER_HOST or `docker -H`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }
}

impl Drop for ApiCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for (_, (a, b)) in std::mem::take(&mut *self.live.lock().unwrap()) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    listener: UnixListener,
    upstream: PathBuf,
    counts: Counts,
    stop: Arc<AtomicBool>,
    live: Live,
) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        let Ok(engine) = UnixStream::connect(&upstream) else {
            // The client sees its connection closed, as with a dead engine.
            continue;
        };
        counts.connection();
        let id = NEXT.fetch_add(1, Ordering::SeqCst);
        if let (Ok(a), Ok(b)) = (client.try_clone(), engine.try_clone()) {
            live.lock().unwrap().insert(id, (a, b));
        }
        let (counts, live) = (counts.clone(), live.clone());
        let _ = std::thread::Builder::new()
            .name(format!("apicount-{id}"))
            .spawn(move || {
                if let Err(e) = serve(client, engine, &counts) {
                    // Broken pipes and resets end connections; nothing to report.
                    let _ = e;
                }
                live.lock().unwrap().remove(&id);
            });
    }
}

/// Copies both ways until both directions are closed; counts requests on the way up.
fn serve(client: UnixStream, engine: UnixStream, counts: &Counts) -> Result<()> {
    let (c2, e2) = (client.try_clone()?, engine.try_clone()?);
    let down = std::thread::Builder::new()
        .name("apicount-down".into())
        .spawn(move || {
            let (mut from, mut to) = (e2, c2);
            let r = std::io::copy(&mut from, &mut to);
            // The engine is done writing: so is the client's side of it.
            let _ = to.shutdown(Shutdown::Write);
            if r.is_err() {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
            }
        })?;
    let up = copy_counting(&client, &engine, counts);
    let _ = engine.shutdown(Shutdown::Write);
    if up.is_err() {
        let _ = client.shutdown(Shutdown::Both);
        let _ = engine.shutdown(Shutdown::Both);
    }
    down.join().map_err(|_| anyhow!("copy thread panicked"))?;
    up
}

fn copy_counting(mut from: &UnixStream, mut to: &UnixStream, counts: &Counts) -> Result<()> {
    let mut parser = ReqParser::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut reqs = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        // Counted before it is forwarded: the order of `requests` is never later
        // than the order the engine got them in.
        if !parser.is_raw() {
            parser.feed(&buf[..n], &mut reqs);
            for r in reqs.drain(..) {
                counts.request(&r);
            }
            if parser.broken {
                counts.unparsed();
                parser.broken = false;
            }
        }
        to.write_all(&buf[..n])?;
    }
}

// ---------------------------------------------------------------------------
// Self-test

/// Feeds `stream` in pieces of `step` bytes; returns the endpoints and whether
/// the parser ended raw.
fn parse_in_steps(stream: &[u8], step: usize) -> (Vec<String>, bool) {
    let mut p = ReqParser::default();
    let mut out = Vec::new();
    for piece in stream.chunks(step.max(1)) {
        p.feed(piece, &mut out);
    }
    (out.iter().map(Request::endpoint).collect(), p.is_raw())
}

fn check_stream(name: &str, stream: &[u8], want: &[&str], want_raw: bool) -> Result<()> {
    for step in [1, 2, 3, 7, 64, stream.len()] {
        let (got, raw) = parse_in_steps(stream, step);
        if got != want || raw != want_raw {
            bail!(
                "{name} (fed {step} bytes at a time): got {got:?} raw={raw}, want {want:?} raw={want_raw}"
            );
        }
    }
    Ok(())
}

/// The parser's and the proxy's checks; an error names the first that failed.
pub fn self_test() -> Result<()> {
    for (target, want) in [
        ("/v1.41/containers/3f2a9c/start", "/containers/{id}/start"),
        ("/v1.41/containers/create?name=x", "/containers/create"),
        ("/containers/json?all=1", "/containers/json"),
        ("/_ping", "/_ping"),
        ("/v1.47/exec/ab12/start", "/exec/{id}/start"),
        ("/v1.41/exec/ab12/json", "/exec/{id}/json"),
        (
            "/v1.41/containers/fleet-job-1/archive?path=%2Fworkspace",
            "/containers/{id}/archive",
        ),
        (
            "/v1.41/images/agent-fleet/workspace:latest/json",
            "/images/{id}/json",
        ),
        ("/v1.41/images/agent-fleet/workspace:latest", "/images/{id}"),
        ("/images/create?fromImage=x", "/images/create"),
        ("/v1.41/volumes/vol-1", "/volumes/{id}"),
        ("/v1.41/volumes/create", "/volumes/create"),
        ("/v1.41/networks/n1/connect", "/networks/{id}/connect"),
        ("/v1.41/version", "/version"),
        ("/v1.41/events?filters=x", "/events"),
        ("/v1.41/containers/prune", "/containers/prune"),
        ("/", "/"),
    ] {
        let got = path_template(target);
        if got != want {
            bail!("path_template({target:?}) = {got:?}, want {want:?}");
        }
    }
    for (target, want) in [
        (
            "/v1.41/containers/fleet-a-1/start?x=1",
            "/containers/fleet-a-1/start",
        ),
        ("/containers/create?name=fleet-a-1", "/containers/create"),
        ("/v1.41", "/"),
        ("/volumes/v1.2", "/volumes/v1.2"),
    ] {
        let got = path_of(target);
        if got != want {
            bail!("path_of({target:?}) = {got:?}, want {want:?}");
        }
    }

    // Keep-alive, a Content-Length body that holds what looks like a request.
    let fake = b"GET /v1.41/containers/fake/json HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut s = Vec::new();
    s.extend_from_slice(b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\n");
    s.extend_from_slice(
        format!(
            "POST /v1.41/containers/create?name=a HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\ncontent-length: {}\r\n\r\n",
            fake.len()
        )
        .as_bytes(),
    );
    s.extend_from_slice(fake);
    s.extend_from_slice(b"POST /v1.41/containers/abc/start HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    s.extend_from_slice(b"GET /v1.41/containers/abc/json HTTP/1.1\r\nHost: docker\r\n\r\n");
    check_stream(
        "keep-alive with a content-length body",
        &s,
        &[
            "HEAD /_ping",
            "POST /containers/create",
            "POST /containers/{id}/start",
            "GET /containers/{id}/json",
        ],
        false,
    )?;

    // Chunked (with an extension, a chunk that looks like a request, a trailer).
    let mut s = Vec::new();
    s.extend_from_slice(
        b"PUT /v1.41/containers/abc/archive?path=%2F HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    s.extend_from_slice(format!("{:x};ext=1\r\n", fake.len()).as_bytes());
    s.extend_from_slice(fake);
    s.extend_from_slice(b"\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n");
    s.extend_from_slice(b"HEAD /_ping HTTP/1.1\r\n\r\n");
    check_stream(
        "chunked body",
        &s,
        &["PUT /containers/{id}/archive", "HEAD /_ping"],
        false,
    )?;

    // Upgrade: exec start hijacks the connection; what follows is not HTTP.
    for upgrade_header in ["Connection: Upgrade\r\nUpgrade: tcp", "Upgrade: tcp"] {
        let mut s = Vec::new();
        s.extend_from_slice(b"POST /v1.41/exec/e1/json HTTP/1.1\r\n\r\n");
        s.extend_from_slice(
            format!(
                "POST /v1.41/exec/e1/start HTTP/1.1\r\n{upgrade_header}\r\nContent-Length: 2\r\n\r\n{{}}"
            )
            .as_bytes(),
        );
        s.extend_from_slice(fake);
        check_stream(
            &format!("upgrade ({upgrade_header:?})"),
            &s,
            &["POST /exec/{id}/json", "POST /exec/{id}/start"],
            true,
        )?;
    }
    let s = b"POST /v1.41/containers/c/attach?stream=1 HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
    check_stream(
        "connection token list with upgrade",
        s,
        &["POST /containers/{id}/attach"],
        true,
    )?;

    // Not HTTP: given up on, copied raw.
    let mut p = ReqParser::default();
    let mut out = Vec::new();
    p.feed(b"\x16\x03\x01 binary\r\n", &mut out);
    if !(out.is_empty() && p.is_raw() && p.broken) {
        bail!("a non-HTTP stream was not given up on: {out:?}");
    }

    proxy_self_test()
}

/// The proxy end to end against a stand-in engine: bytes pass unchanged both
/// ways, keep-alive requests are counted, reset clears.
fn proxy_self_test() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("apicount-").tempdir()?;
    let engine_path = dir.path().join("engine.sock");
    let engine = UnixListener::bind(&engine_path)?;
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK";
    let served = {
        let received = received.clone();
        std::thread::spawn(move || -> Result<()> {
            // The proxy's own probe at start, then the client's connection.
            let (probe, _) = engine.accept()?;
            drop(probe);
            let (mut s, _) = engine.accept()?;
            let mut buf = [0u8; 4096];
            let mut replies = 0;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                let mut r = received.lock().unwrap();
                r.extend_from_slice(&buf[..n]);
                // One reply per complete request head seen so far.
                let heads = r.windows(4).filter(|w| w == b"\r\n\r\n").count();
                while replies < heads {
                    s.write_all(reply)?;
                    replies += 1;
                }
            }
        })
    };
    let proxy = ApiCounter::start(&dir.path().join("proxy.sock"), &engine_path)?;
    let counts = proxy.counts();
    let mut c = UnixStream::connect(proxy.url().trim_start_matches("unix://"))?;
    let sent = b"HEAD /_ping HTTP/1.1\r\n\r\nGET /v1.41/containers/x/json HTTP/1.1\r\n\r\n";
    c.write_all(sent)?;
    let mut got = vec![0u8; 2 * reply.len()];
    c.read_exact(&mut got)
        .context("reading the two replies through the proxy")?;
    if got != [&reply[..], &reply[..]].concat() {
        bail!("the client did not receive the engine's bytes unchanged");
    }
    c.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)?;
    served
        .join()
        .map_err(|_| anyhow!("stand-in engine panicked"))??;
    if received.lock().unwrap().as_slice() != sent {
        bail!("the engine did not receive the client's bytes unchanged");
    }
    // The counting thread may still be finishing.
    let mut t = counts.snapshot();
    for _ in 0..100 {
        if t.total() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        t = counts.snapshot();
    }
    let want: BTreeMap<String, u64> = [("HEAD /_ping", 1), ("GET /containers/{id}/json", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    if t.by_endpoint != want || t.connections != 1 {
        bail!("proxy counted {t:?}, want {want:?} over 1 connection");
    }
    counts.reset();
    if counts.snapshot() != Tally::default() {
        bail!("reset left counts behind");
    }
    drop(proxy);
    if dir.path().join("proxy.sock").exists() {
        bail!("the proxy's socket file outlived it");
    }
    Ok(())
}
