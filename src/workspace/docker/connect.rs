//! Which Docker engine a worker talks to, decided as the docker CLI decides it:
//! `DOCKER_HOST` (`unix://…`, `tcp://…`; unset means the local socket), with TLS on
//! `tcp://` when `DOCKER_TLS_VERIFY` is set (client certificate, key and CA from
//! `DOCKER_CERT_PATH`, default `~/.docker`). A value this build cannot honour is an
//! error that names it — never a silent fall-back to the local socket, which would
//! run jobs on another engine than the one configured.

use std::path::PathBuf;

use super::WorkspaceError;

/// Seconds bollard waits for an engine's answer to one request (the engine's
/// response headers; streams such as pulls and exec output are bounded by their
/// callers' own deadlines).
const REQUEST_TIMEOUT_SECS: u64 = 120;

const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

/// Where the engine is, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(String),
    Tcp(String),
    TcpTls { addr: String, certs: PathBuf },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(s) | Endpoint::Tcp(s) => f.write_str(s),
            Endpoint::TcpTls { addr, certs } => {
                write!(f, "{addr} (TLS, certificates in {})", certs.display())
            }
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Reads `DOCKER_HOST`, `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH` and `DOCKER_TLS`.
pub fn endpoint_from_env() -> Result<Endpoint, WorkspaceError> {
    let home = env("HOME").map(PathBuf::from);
    resolve(
        env("DOCKER_HOST").as_deref(),
        env("DOCKER_TLS_VERIFY").is_some(),
        env("DOCKER_TLS").is_some(),
        env("DOCKER_CERT_PATH").map(PathBuf::from),
        home,
    )
}

fn bad_host(host: &str, why: &str) -> WorkspaceError {
    WorkspaceError::Config(format!("DOCKER_HOST={host:?}: {why}"))
}

/// The docker CLI's rules, as a pure function of the environment's values.
fn resolve(
    host: Option<&str>,
    tls_verify: bool,
    tls: bool,
    cert_path: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Result<Endpoint, WorkspaceError> {
    let host = host.unwrap_or(DEFAULT_SOCKET).trim();
    if let Some(path) = host.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(bad_host(
                host,
                "a unix socket needs an absolute path (unix:///var/run/docker.sock)",
            ));
        }
        return Ok(Endpoint::Unix(host.to_string()));
    }
    let Some(rest) = host.strip_prefix("tcp://") else {
        let scheme = host.split_once("://").map(|(s, _)| s).unwrap_or("");
        let why = match scheme {
            "ssh" => {
                "ssh:// is not supported by this build; forward the engine's socket or use tcp:// with TLS"
            }
            "npipe" => "npipe:// is for Windows",
            "" => "expected unix:///path or tcp://host:port",
            _ => "unsupported scheme; expected unix:// or tcp://",
        };
        return Err(bad_host(host, why));
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        return Err(bad_host(host, "expected tcp://host:port"));
    }
    // The docker CLI's default ports: 2376 with TLS, 2375 without.
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with('[') && p.parse::<u16>().is_ok());
    let addr = if has_port {
        format!("tcp://{authority}")
    } else if authority.contains(':') && !authority.ends_with(']') {
        return Err(bad_host(host, "the port is not a number"));
    } else {
        format!(
            "tcp://{authority}:{}",
            if tls_verify || tls { 2376 } else { 2375 }
        )
    };
    if tls_verify {
        let certs = match cert_path.or_else(|| home.map(|h| h.join(".docker"))) {
            Some(p) => p,
            None => {
                return Err(WorkspaceError::Config(
                    "DOCKER_TLS_VERIFY is set but neither DOCKER_CERT_PATH nor HOME says where the certificates are".into(),
                ));
            }
        };
        return Ok(Endpoint::TcpTls { addr, certs });
    }
    if tls {
        // TLS without verifying the engine is not offered: it would trust anyone.
        return Err(WorkspaceError::Config(
            "DOCKER_TLS is set without DOCKER_TLS_VERIFY: TLS without verifying the engine is not supported; set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH".into(),
        ));
    }
    Ok(Endpoint::Tcp(addr))
}

/// A client for `endpoint` (no request is made yet).
pub fn client(endpoint: &Endpoint) -> Result<bollard::Docker, WorkspaceError> {
    let version = bollard::API_DEFAULT_VERSION;
    let made = match endpoint {
        Endpoint::Unix(s) => bollard::Docker::connect_with_unix(s, REQUEST_TIMEOUT_SECS, version),
        Endpoint::Tcp(s) => bollard::Docker::connect_with_http(s, REQUEST_TIMEOUT_SECS, version),
        Endpoint::TcpTls { addr, certs } => {
            for f in ["ca.pem", "cert.pem", "key.pem"] {
                if !certs.join(f).is_file() {
                    return Err(WorkspaceError::Config(format!(
                        "DOCKER_TLS_VERIFY is set but {} is missing (DOCKER_CERT_PATH)",
                        certs.join(f).display()
                    )));
                }
            }
            bollard::Docker::connect_with_ssl(
                addr,
                &certs.join("key.pem"),
                &certs.join("cert.pem"),
                &certs.join("ca.pem"),
                REQUEST_TIMEOUT_SECS,
                version,
            )
        }
    };
    made.map_err(|e| match e {
        // Nothing listens there (yet): the engine is unreachable, not misconfigured.
        bollard::errors::Error::SocketNotFoundError(_) => WorkspaceError::Unavailable(format!(
            "no Docker engine at {endpoint} (DOCKER_HOST): {e}"
        )),
        e => WorkspaceError::Config(format!("Docker at {endpoint}: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host: Option<&str>, verify: bool, tls: bool) -> Result<Endpoint, WorkspaceError> {
        resolve(host, verify, tls, None, Some(PathBuf::from("/home/u")))
    }

    #[test]
    fn the_cli_rules() {
        assert_eq!(
            r(None, false, false).unwrap(),
            Endpoint::Unix(DEFAULT_SOCKET.into())
        );
        // TLS settings do not apply to a unix socket (as with the docker CLI).
        assert_eq!(
            r(None, true, false).unwrap(),
            Endpoint::Unix(DEFAULT_SOCKET.into())
        );
        assert_eq!(
            r(Some("unix:///run/user/1000/docker.sock"), false, false).unwrap(),
            Endpoint::Unix("unix:///run/user/1000/docker.sock".into())
        );
        assert_eq!(
            r(Some("tcp://127.0.0.1:2375"), false, false).unwrap(),
            Endpoint::Tcp("tcp://127.0.0.1:2375".into())
        );
        assert_eq!(
            r(Some("tcp://engine"), false, false).unwrap(),
            Endpoint::Tcp("tcp://engine:2375".into())
        );
        assert_eq!(
            r(Some("tcp://engine/"), true, false).unwrap(),
            Endpoint::TcpTls {
                addr: "tcp://engine:2376".into(),
                certs: PathBuf::from("/home/u/.docker")
            }
        );
        assert_eq!(
            resolve(Some("tcp://e:1"), true, false, Some("/c".into()), None).unwrap(),
            Endpoint::TcpTls {
                addr: "tcp://e:1".into(),
                certs: PathBuf::from("/c")
            }
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_naming_it() {
        for host in [
            "ssh://me@engine",
            "npipe:////./pipe/docker_engine",
            "http//oops",
            "unix://relative.sock",
            "tcp://",
            "tcp://engine:port",
            "tcp://engine:2375/path",
            "fd://",
        ] {
            let e = r(Some(host), false, false).unwrap_err();
            assert!(matches!(e, WorkspaceError::Config(_)), "{host}: {e}");
            assert!(e.to_string().contains("DOCKER_HOST="), "{host}: {e}");
        }
        let e = r(Some("tcp://engine:2376"), false, true).unwrap_err();
        assert!(e.to_string().contains("DOCKER_TLS_VERIFY"), "{e}");
    }
}
