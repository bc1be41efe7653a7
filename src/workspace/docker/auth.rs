//! Registry credentials from the Docker client's own configuration, found where the
//! docker CLI finds it: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
//! `credHelpers` (per registry) and `credsStore` (all registries) name a
//! `docker-credential-<name>` program asked with `get`; otherwise `auths` holds
//! `base64(user:password)` (or an identity token). No file, or no entry for the
//! registry, means an anonymous pull.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use bollard::auth::DockerCredentials;
use serde::Deserialize;

/// How long a credential helper may take to answer.
const HELPER_DEADLINE: Duration = Duration::from_secs(30);

/// Docker Hub's key in `auths` (what `docker login` writes for it).
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// Credentials could not be read: the job's pull fails as `image_auth`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// What a credential helper prints for `get`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperReply {
    username: String,
    secret: String,
}

/// The config file the docker CLI would read.
pub fn config_path() -> Option<PathBuf> {
    let nonempty = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match nonempty("DOCKER_CONFIG") {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => nonempty("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
    }
}

/// The registry host of an image reference, as Docker normalises it: the first path
/// component when it looks like a host (has `.` or `:`, or is `localhost`), else
/// Docker Hub.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// `auths` keys are written as `host`, `https://host` or `https://host/v1/`.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        other => other,
    }
}

/// Credentials for the registry of `image`, or None for an anonymous pull.
pub async fn credentials_for(image: &str) -> Result<Option<DockerCredentials>, AuthError> {
    let Some(path) = config_path() else {
        return Ok(None);
    };
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuthError(format!("reading {}: {e}", path.display()))),
    };
    let config: ConfigFile = serde_json::from_str(&text).map_err(|e| {
        AuthError(format!(
            "{}: not a Docker client config: {e}",
            path.display()
        ))
    })?;
    let registry = registry_of(image);
    let server = if registry == "docker.io" {
        DOCKER_HUB.to_string()
    } else {
        registry.to_string()
    };
    let helper = config
        .cred_helpers
        .iter()
        .find(|(k, _)| key_host(k) == registry)
        .map(|(_, v)| v.clone())
        .or(config.creds_store.clone())
        .filter(|h| !h.is_empty());
    if let Some(helper) = helper {
        return ask_helper(&helper, &server).await;
    }
    let Some(entry) = config
        .auths
        .iter()
        .find(|(k, _)| key_host(k) == registry)
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    from_entry(entry, &server, &path)
}

fn from_entry(
    entry: &AuthEntry,
    server: &str,
    path: &std::path::Path,
) -> Result<Option<DockerCredentials>, AuthError> {
    let (username, password) = match (&entry.auth, &entry.username, &entry.password) {
        (Some(auth), _, _) if !auth.is_empty() => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    AuthError(format!(
                        "{}: the auth of {server} is not base64 of user:password",
                        path.display()
                    ))
                })?;
            let (u, p) = raw.split_once(':').ok_or_else(|| {
                AuthError(format!(
                    "{}: the auth of {server} has no ':'",
                    path.display()
                ))
            })?;
            (Some(u.to_string()), Some(p.to_string()))
        }
        (_, u, p) => (u.clone(), p.clone()),
    };
    if username.is_none() && entry.identitytoken.is_none() {
        return Ok(None);
    }
    Ok(Some(DockerCredentials {
        username,
        password,
        identitytoken: entry.identitytoken.clone(),
        serveraddress: Some(server.to_string()),
        ..Default::default()
    }))
}

/// Runs `docker-credential-<helper> get` with the server on stdin.
async fn ask_helper(helper: &str, server: &str) -> Result<Option<DockerCredentials>, AuthError> {
    use tokio::io::AsyncWriteExt;
    let program = format!("docker-credential-{helper}");
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| AuthError(format!("credential helper {program}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let talk = async {
        stdin.write_all(server.as_bytes()).await?;
        drop(stdin);
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(HELPER_DEADLINE, talk)
        .await
        .map_err(|_| {
            AuthError(format!(
                "credential helper {program}: no answer within {HELPER_DEADLINE:?}"
            ))
        })?
        .map_err(|e| AuthError(format!("credential helper {program}: {e}")))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // The helpers' protocol: this message means "no credentials stored".
        if said.contains("credentials not found") {
            return Ok(None);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(AuthError(format!(
            "credential helper {program} failed ({}): {}",
            out.status,
            if said.is_empty() { err.trim() } else { &said }
        )));
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout).map_err(|e| {
        AuthError(format!(
            "credential helper {program}: unreadable answer: {e}"
        ))
    })?;
    // `<token>` as the user name marks an identity token (docker CLI convention).
    let creds = if reply.username == "<token>" {
        DockerCredentials {
            identitytoken: Some(reply.secret),
            serveraddress: Some(server.to_string()),
            ..Default::default()
        }
    } else {
        DockerCredentials {
            username: Some(reply.username),
            password: Some(reply.secret),
            serveraddress: Some(server.to_string()),
            ..Default::default()
        }
    };
    Ok(Some(creds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries() {
        assert_eq!(registry_of("python:3.12"), "docker.io");
        assert_eq!(registry_of("library/python"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/a/b:t"), "127.0.0.1:5000");
        assert_eq!(registry_of("ghcr.io/o/i@sha256:00"), "ghcr.io");
        assert_eq!(registry_of("localhost/x"), "localhost");
        assert_eq!(key_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(key_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(key_host("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn auth_entries() {
        let p = std::path::Path::new("config.json");
        let e = AuthEntry {
            auth: Some("ZmxlZXQ6czNjcmV0".into()),
            ..Default::default()
        };
        let c = from_entry(&e, "r:1", p).unwrap().unwrap();
        assert_eq!(c.username.as_deref(), Some("fleet"));
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.serveraddress.as_deref(), Some("r:1"));
        let bad = AuthEntry {
            auth: Some("not base64!".into()),
            ..Default::default()
        };
        assert!(from_entry(&bad, "r:1", p).is_err());
        assert!(
            from_entry(&AuthEntry::default(), "r:1", p)
                .unwrap()
                .is_none()
        );
    }
}
