//! `DOCKER_HOST` honoured as the docker CLI does, never a silent fall-back to the
//! local socket: `fleet run` against a TCP proxy of the engine (socat, whose own
//! log shows the connections), against TLS with client certificates
//! (`DOCKER_TLS_VERIFY`, stunnel in front of that proxy), and against nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::tlsutil::{Stunnel, make_certs};
use crate::util::Batch;

const ENGINE_SOCKET: &str = "/var/run/docker.sock";

/// `socat` relaying 127.0.0.1:`port` to the engine's unix socket, killed when dropped.
struct Socat {
    child: Child,
    log: PathBuf,
}

impl Socat {
    fn start(dir: &Path, port: u16) -> Socat {
        let log = dir.join(format!("socat-{port}.log"));
        let child = Command::new("socat")
            .args(["-d", "-d"])
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("UNIX-CONNECT:{ENGINE_SOCKET}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("socat (scripts/services/tools.sh installs it)");
        let mut s = Socat { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                s.child.try_wait().unwrap().is_none(),
                "socat exited: {}",
                s.log()
            );
            assert!(Instant::now() < deadline, "socat did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Connections socat accepted (the probe of `start` is one).
    fn accepted(&self) -> usize {
        self.log().matches("accepting connection from").count()
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn job(b: &mut Batch, name: &str) -> String {
    b.job(
        name,
        json!({"task": "t"}),
        json!({"steps": [
            {"tool": "terminal", "args": {"command": "echo via-tcp > out.txt"}},
            {"tool": "finish", "args": {"message": "done"}}
        ]}),
    )
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("error")).collect()
}

#[test]
fn docker_host_at_a_tcp_proxy_of_the_engine_is_used() {
    let mut b = Batch::new();
    let proxy = Socat::start(b.dir.path(), 18202);
    let before = proxy.accepted();
    b.env("DOCKER_HOST", "tcp://127.0.0.1:18202");
    let id = job(&mut b, "tcp");
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.result(&id)["outcome"], "succeeded");
    assert!(b.store_text(&id, "patch.diff").contains("via-tcp"));
    assert!(
        proxy.accepted() > before,
        "the engine was not reached through DOCKER_HOST:\n{}",
        proxy.log()
    );
}

#[test]
fn docker_host_with_tls_verify_uses_the_cert_path() {
    let mut b = Batch::new();
    let certs = b.dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs);
    // The docker CLI's file names in DOCKER_CERT_PATH.
    let cert_path = b.dir.path().join("docker-certs");
    std::fs::create_dir_all(&cert_path).unwrap();
    for (from, to) in [
        ("ca.pem", "ca.pem"),
        ("client.pem", "cert.pem"),
        ("client.key", "key.pem"),
    ] {
        std::fs::copy(certs.join(from), cert_path.join(to)).unwrap();
    }
    let _plain = Socat::start(b.dir.path(), 18205);
    let tls = Stunnel::start(&certs, 18204, "127.0.0.1:18205", true);
    b.env("DOCKER_HOST", "tcp://127.0.0.1:18204");
    b.env("DOCKER_TLS_VERIFY", "1");
    b.env("DOCKER_CERT_PATH", cert_path.to_str().unwrap());
    let id = job(&mut b, "tls");
    let out = b.run();
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, tls.log());
    assert_eq!(out.result(&id)["outcome"], "succeeded");
    assert!(tls.sessions() >= 1, "no TLS session:\n{}", tls.log());

    // The same endpoint without the client certificate: refused, not bypassed.
    let mut b2 = Batch::new();
    std::fs::remove_file(cert_path.join("key.pem")).unwrap();
    b2.env("DOCKER_HOST", "tcp://127.0.0.1:18204");
    b2.env("DOCKER_TLS_VERIFY", "1");
    b2.env("DOCKER_CERT_PATH", cert_path.to_str().unwrap());
    job(&mut b2, "tls-nokey");
    let out = b2.run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    let errors = error_lines(&out.stderr);
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].contains("key.pem"), "{}", errors[0]);
}

#[test]
fn docker_host_at_nothing_is_a_clear_error_not_a_fallback() {
    // Nothing listens there (this suite's port range; a socket that does not
    // exist); the local socket works. Unreachable, not misconfigured: exit 1.
    for host in ["tcp://127.0.0.1:18298", "unix:///nonexistent/docker.sock"] {
        let mut b = Batch::new();
        b.env("DOCKER_HOST", host);
        job(&mut b, "nothing");
        let out = b.run();
        assert_eq!(out.code, 1, "{host}: {}", out.stderr);
        let errors = error_lines(&out.stderr);
        assert_eq!(errors.len(), 1, "{host}: {}", out.stderr);
        assert!(errors[0].contains(host), "{}", errors[0]);
        assert!(errors[0].contains("DOCKER_HOST"), "{}", errors[0]);
        assert!(
            out.results.is_empty(),
            "{host}: jobs ran: {:?}",
            out.results
        );
    }
}

#[test]
fn a_docker_host_this_build_cannot_honour_is_refused_naming_it() {
    for (host, what) in [
        ("ssh://me@engine", "ssh://"),
        ("engine:2375", "expected unix:///path or tcp://host:port"),
        ("unix://relative.sock", "absolute path"),
    ] {
        let mut b = Batch::new();
        b.env("DOCKER_HOST", host);
        job(&mut b, "bad");
        let out = b.run();
        assert_eq!(out.code, 2, "{host}: {}", out.stderr);
        let errors = error_lines(&out.stderr);
        assert_eq!(errors.len(), 1, "{host}: {}", out.stderr);
        assert!(
            errors[0].contains(&format!("DOCKER_HOST={host:?}")),
            "{}",
            errors[0]
        );
        assert!(errors[0].contains(what), "{}", errors[0]);
    }
}
