//! The test registry (scripts/services/registry.sh): Debian's docker-registry on
//! 127.0.0.1 with htpasswd auth. Its access log is the evidence of what was pulled:
//! it is written by the registry, not by the fleet.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::TEST_IMAGE;

fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

pub fn addr() -> String {
    var("FLEET_TEST_REGISTRY", "127.0.0.1:18200")
}
pub fn user() -> String {
    var("FLEET_TEST_REGISTRY_USER", "fleet")
}
pub fn password() -> String {
    var("FLEET_TEST_REGISTRY_PASSWORD", "fleet-test-registry")
}
pub fn log_file() -> PathBuf {
    PathBuf::from(var(
        "FLEET_TEST_REGISTRY_LOG",
        &format!("/tmp/agent-fleet-registry-{}/registry.log", port()),
    ))
}
fn push_config() -> PathBuf {
    PathBuf::from(var(
        "FLEET_TEST_REGISTRY_PUSH_CONFIG",
        &format!("/tmp/agent-fleet-registry-{}/docker", port()),
    ))
}
fn port() -> String {
    addr().rsplit(':').next().unwrap().to_string()
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

/// Fails the test (never skips it) when the registry does not answer as ours.
pub fn check() {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("http://{}/v2/", addr()))
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        code,
        "401",
        "the test registry does not answer at {} (HTTP {code:?}); run `eval \"$(bash scripts/services/registry.sh up)\"`",
        addr()
    );
}

/// A repository of its own for one test: the test image pushed as
/// `<registry>/fleet/<name>-<id>:v1`, and removed from the engine so that a job
/// naming it must pull it. Removed from the engine again when dropped.
pub struct Pushed {
    pub image: String,
    pub repo: String,
    /// Manifest requests the push itself made (it checks the tag it wrote).
    baseline: usize,
}

impl Pushed {
    pub fn new(name: &str) -> Pushed {
        check();
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let repo = format!("fleet/{name}-{id}");
        let image = format!("{}/{repo}:v1", addr());
        assert!(docker(&["tag", TEST_IMAGE, &image]).status.success());
        let cfg = push_config();
        let out = docker(&["--config", cfg.to_str().unwrap(), "push", &image]);
        assert!(
            out.status.success(),
            "docker push {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(docker(&["rmi", &image]).status.success());
        // The registry logs a request after answering it: let the push's last lines land.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let baseline = manifest_lines(&repo).len();
        Pushed {
            image,
            repo,
            baseline,
        }
    }

    /// Pulls of this image since it was pushed, as the registry logged them: a pull
    /// resolves the tag (`HEAD` or `GET /v2/<repo>/manifests/v1`) once; the engine
    /// may then fetch the manifest by digest as well.
    pub fn pulls(&self) -> Vec<String> {
        manifest_lines(&self.repo)
            .into_iter()
            .skip(self.baseline)
            .filter(|l| l.contains("/manifests/v1 "))
            .collect()
    }

    /// Requests for this repository's manifests with `method`, from the registry's
    /// access log (`"GET /v2/<repo>/manifests/… HTTP/1.1" <status>`).
    pub fn manifest_requests(&self, method: &str) -> Vec<String> {
        requests(&self.repo, method)
    }

    pub fn present_locally(&self) -> bool {
        docker(&["image", "inspect", &self.image]).status.success()
    }
}

impl Drop for Pushed {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

/// Access-log lines of HEAD and GET requests to `/v2/<repo>/manifests/`, in order.
fn manifest_lines(repo: &str) -> Vec<String> {
    let log = std::fs::read_to_string(log_file()).unwrap_or_default();
    let (head, get) = (
        format!("\"HEAD /v2/{repo}/manifests/"),
        format!("\"GET /v2/{repo}/manifests/"),
    );
    log.lines()
        .filter(|l| l.contains(&head) || l.contains(&get))
        .map(str::to_string)
        .collect()
}

/// Access-log lines of `method` requests to `/v2/<repo>/manifests/`.
pub fn requests(repo: &str, method: &str) -> Vec<String> {
    let log = std::fs::read_to_string(log_file())
        .unwrap_or_else(|e| panic!("reading the registry log {}: {e}", log_file().display()));
    let needle = format!("\"{method} /v2/{repo}/manifests/");
    log.lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// A Docker client config directory (for `DOCKER_CONFIG`) with `auths` for the
/// test registry: `user:password` base64-encoded, as `docker login` writes it.
pub fn client_config(dir: &Path, user: &str, password: &str) -> PathBuf {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({"auths": {addr(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    dir.to_path_buf()
}
