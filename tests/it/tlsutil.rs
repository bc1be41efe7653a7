//! TLS for the tests: a CA made by the test (openssl), certificates signed by it,
//! and stunnel as a TLS terminator in front of a plain service (the broker, the
//! Docker engine's socket). stunnel's own log shows the TLS sessions it accepted.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/services/tools.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate `<name>.pem` / `<name>.key` signed by the CA in `dir`.
fn sign(dir: &Path, name: &str, cn: &str, ext: &str) {
    let (key, csr, pem, extf) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", cn,
        ],
    );
    std::fs::write(dir.join(&extf), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &extf,
        ],
    );
}

/// In `dir`: a CA (`ca.pem`), a server certificate for 127.0.0.1 (`server.pem`,
/// `server.key`) and a client certificate (`client.pem`, `client.key`). Returns
/// the CA file.
pub fn make_certs(dir: &Path) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=fleet test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    sign(
        dir,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    );
    sign(
        dir,
        "client",
        "/CN=fleet test client",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=clientAuth\n",
    );
    dir.join("ca.pem")
}

/// stunnel in the foreground, killed (by its pid) when dropped.
pub struct Stunnel {
    child: Child,
    log: PathBuf,
}

impl Stunnel {
    /// TLS on 127.0.0.1:`port` (the server certificate of [`make_certs`] in `dir`)
    /// to `upstream` (`host:port` or a unix socket path). With `client_certs`, only
    /// clients with a certificate from the CA get through.
    pub fn start(dir: &Path, port: u16, upstream: &str, client_certs: bool) -> Stunnel {
        let log = dir.join(format!("stunnel-{port}.log"));
        let conf = dir.join(format!("stunnel-{port}.conf"));
        let verify = if client_certs {
            format!(
                "verifyChain = yes\nrequireCert = yes\nCAfile = {}\n",
                dir.join("ca.pem").display()
            )
        } else {
            String::new()
        };
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = 6\noutput = {}\n\n[tls]\naccept = 127.0.0.1:{port}\nconnect = {upstream}\ncert = {}\nkey = {}\n{verify}",
                log.display(),
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            ),
        )
        .unwrap();
        let child = Command::new("stunnel4")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel4 (scripts/services/tools.sh installs it)");
        let mut s = Stunnel { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                s.child.try_wait().unwrap().is_none(),
                "stunnel exited: {}",
                s.log()
            );
            assert!(
                Instant::now() < deadline,
                "stunnel did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// TLS handshakes stunnel completed ("TLS accepted: new session negotiated").
    pub fn sessions(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("accepted: new session") || l.contains("accepted: previous session")
            })
            .count()
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
