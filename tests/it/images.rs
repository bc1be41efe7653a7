//! Job images pulled from a real registry (scripts/services/registry.sh, htpasswd
//! auth on 127.0.0.1) by `fleet run`, with the credentials of a Docker client config
//! (`DOCKER_CONFIG`). The registry's own access log shows what was pulled.

use serde_json::{Value, json};

use crate::registry::{self, Pushed};
use crate::util::Batch;

fn finish() -> Value {
    json!({"steps": [
        {"tool": "terminal", "args": {"command": "echo pulled > proof.txt"}},
        {"tool": "finish", "args": {"message": "done"}}
    ]})
}

/// A batch whose `fleet run` sees only `docker_config` as the Docker client config.
fn batch_with_config(user: &str, password: &str) -> Batch {
    let mut b = Batch::new();
    let dir = registry::client_config(&b.dir.path().join("docker"), user, password);
    b.env("DOCKER_CONFIG", dir.to_str().unwrap());
    b.env("NO_COLOR", "1");
    b.env("RUST_LOG", "warn,agent_fleet=info");
    b
}

fn states(b: &Batch, id: &str) -> Vec<String> {
    let s: Value = serde_json::from_str(&b.store_text(id, "status.json")).unwrap();
    s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_job_image_is_pulled_with_the_client_configs_credentials() {
    let img = Pushed::new("pull");
    assert!(!img.present_locally());
    let mut b = batch_with_config(&registry::user(), &registry::password());
    let id = b.job("pull", json!({"task": "t", "image": img.image}), finish());
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.result(&id)["outcome"], "succeeded");
    assert!(b.store_text(&id, "patch.diff").contains("pulled"));
    // The registry resolved the tag once, for an authenticated client…
    let pulls = img.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert!(pulls[0].contains("\" 200 "), "{}", pulls[0]);
    // …and the engine has the image now.
    assert!(img.present_locally());
    assert!(out.stderr.contains("image pulled"), "{}", out.stderr);
}

#[test]
fn a_missing_tag_is_image_not_found_and_final() {
    registry::check();
    let image = format!("{}/fleet/workspace:no-such-tag", registry::addr());
    let mut b = batch_with_config(&registry::user(), &registry::password());
    let id = b.job("notag", json!({"task": "t", "image": image}), finish());
    let out = b.run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    let r = out.result(&id);
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["error"]["kind"], "image_not_found", "{r}");
    assert_eq!(r["error"]["retryable"], false);
    assert!(!states(&b, &id).contains(&"retrying".to_string()));
    // The registry was asked and said 404.
    let asked = registry::requests("fleet/workspace", "HEAD")
        .into_iter()
        .chain(registry::requests("fleet/workspace", "GET"))
        .filter(|l| l.contains("/manifests/no-such-tag "))
        .collect::<Vec<_>>();
    assert!(!asked.is_empty(), "the registry saw no request for the tag");
    assert!(asked.iter().all(|l| l.contains("\" 404 ")), "{asked:#?}");
}

#[test]
fn a_wrong_password_is_image_auth_and_final() {
    let img = Pushed::new("badpw");
    let mut b = batch_with_config(&registry::user(), "not-the-password");
    let id = b.job("badpw", json!({"task": "t", "image": img.image}), finish());
    let out = b.run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    let r = out.result(&id);
    assert_eq!(r["error"]["kind"], "image_auth", "{r}");
    assert_eq!(r["error"]["retryable"], false);
    assert!(!states(&b, &id).contains(&"retrying".to_string()));
    // The registry refused the credentials; nothing was served.
    let log = std::fs::read_to_string(registry::log_file()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("/v2/{}/manifests/v1", img.repo)) && l.contains("\" 401 ")),
        "no 401 for {} in the registry log",
        img.repo
    );
    assert!(
        img.pulls().iter().all(|l| !l.contains("\" 200 ")),
        "{:#?}",
        img.pulls()
    );
    assert!(!img.present_locally());
}

#[test]
fn no_credentials_for_a_private_registry_is_image_auth() {
    let img = Pushed::new("nocreds");
    let mut b = Batch::new();
    let empty = b.dir.path().join("empty-docker-config");
    std::fs::create_dir_all(&empty).unwrap();
    b.env("DOCKER_CONFIG", empty.to_str().unwrap());
    let id = b.job(
        "nocreds",
        json!({"task": "t", "image": img.image}),
        finish(),
    );
    let out = b.run();
    assert_eq!(
        out.result(&id)["error"]["kind"],
        "image_auth",
        "{}",
        out.stderr
    );
}

#[test]
fn an_unreachable_registry_is_retried_as_infrastructure() {
    // Nothing listens on this port of the test range.
    let image = "127.0.0.1:18299/fleet/workspace:v1";
    let mut b = batch_with_config("u", "p");
    b.env("FLEET_MAX_ATTEMPTS", "2");
    let id = b.job("unreach", json!({"task": "t", "image": image}), finish());
    let out = b.run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    let r = out.result(&id);
    assert_eq!(r["error"]["kind"], "registry_unavailable", "{r}");
    let st = states(&b, &id);
    assert!(st.contains(&"retrying".to_string()), "{st:?}");
}

#[test]
fn pull_policy_never_does_not_ask_the_registry() {
    let img = Pushed::new("never");
    let mut b = batch_with_config(&registry::user(), &registry::password());
    b.env("FLEET_IMAGE_PULL", "never");
    let id = b.job("never", json!({"task": "t", "image": img.image}), finish());
    let out = b.run();
    let r = out.result(&id);
    assert_eq!(r["error"]["kind"], "image_not_found", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("FLEET_IMAGE_PULL=never")
    );
    assert!(img.pulls().is_empty(), "{:#?}", img.pulls());
}

#[test]
fn pull_policy_always_pulls_an_image_already_present() {
    let img = Pushed::new("always");
    let mut b = batch_with_config(&registry::user(), &registry::password());
    let first = b.job(
        "always1",
        json!({"task": "t", "image": img.image}),
        finish(),
    );
    assert_eq!(b.run().result(&first)["outcome"], "succeeded");
    let before = img.pulls().len();
    assert_eq!(before, 1);
    assert!(img.present_locally());
    // Present now: if-not-present would not ask; always does.
    let mut b2 = batch_with_config(&registry::user(), &registry::password());
    b2.env("FLEET_IMAGE_PULL", "always");
    let second = b2.job(
        "always2",
        json!({"task": "t", "image": img.image}),
        finish(),
    );
    assert_eq!(b2.run().result(&second)["outcome"], "succeeded");
    let after = img.pulls().len();
    assert!(
        after > before,
        "the registry saw no new manifest request ({before} → {after})"
    );
}

#[test]
fn a_bad_pull_policy_is_refused_naming_the_variable() {
    let mut b = Batch::new();
    b.env("FLEET_IMAGE_PULL", "sometimes");
    b.job("x", json!({"task": "t"}), finish());
    let out = b.run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("FLEET_IMAGE_PULL=\"sometimes\""),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

#[test]
fn a_malformed_image_reference_is_final_not_retried() {
    // Passes the job file's charset check; the engine rejects upper case.
    let mut b = Batch::new();
    let id = b.job(
        "upper",
        json!({"task": "t", "image": "Fleet/UPPER-case:v1"}),
        finish(),
    );
    let out = b.run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    let r = out.result(&id);
    assert_eq!(r["error"]["kind"], "image_not_found", "{r}");
    assert!(!states(&b, &id).contains(&"retrying".to_string()));
}

#[test]
fn a_credential_helper_named_in_the_config_supplies_the_credentials() {
    use std::os::unix::fs::PermissionsExt;
    let img = Pushed::new("helper");
    let mut b = Batch::new();
    // A `docker-credential-<name>` program as the helpers' protocol has it: the
    // server on stdin, JSON on stdout; it notes what it was asked.
    let bin = b.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let asked = b.dir.path().join("asked");
    let helper = bin.join("docker-credential-fleettest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\necho \"$1 $server\" >> {asked}\nif [ \"$server\" = \"{addr}\" ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{pw}\"}}' \"$server\"\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
            asked = asked.display(),
            addr = registry::addr(),
            user = registry::user(),
            pw = registry::password(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = b.dir.path().join("docker");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.json"),
        json!({"credHelpers": {registry::addr(): "fleettest"}}).to_string(),
    )
    .unwrap();
    b.env("DOCKER_CONFIG", config.to_str().unwrap());
    b.env(
        "PATH",
        &format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
    );
    let id = b.job("helper", json!({"task": "t", "image": img.image}), finish());
    let out = b.run();
    assert_eq!(out.result(&id)["outcome"], "succeeded", "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&asked).unwrap().trim(),
        format!("get {}", registry::addr())
    );
    let pulls = img.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert!(pulls[0].contains("\" 200 "), "{}", pulls[0]);
}
