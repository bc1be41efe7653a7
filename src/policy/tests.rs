//! The worker policy against jobs that try each escape, and the variables that allow them.

use std::collections::HashMap;

use super::*;
use crate::job::{ParseOptions, job_from_value};

fn job(extra: serde_json::Value) -> JobSpec {
    let mut v = serde_json::json!({"id": "j1", "task": "t", "image": "img"});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    job_from_value(v, &ParseOptions::default()).unwrap()
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| m.get(k).cloned()
}

fn default_policy() -> Policy {
    Policy::from_lookup("http://llm.internal/v1/", env(&[])).unwrap()
}

fn refused(p: &Policy, spec: &JobSpec) -> String {
    let worker = env(&[
        ("FLEET_QUEUE", "amqp://u:longpassword@h"),
        ("LLM_API_KEY", "sk-worker-key"),
    ]);
    p.check_fields(spec, &worker).unwrap_err().to_string()
}

#[test]
fn a_default_worker_refuses_every_escape() {
    let p = default_policy();
    let cases = [
        (
            serde_json::json!({"secrets": ["FLEET_QUEUE"]}),
            "secrets: FLEET_QUEUE is not in FLEET_JOB_SECRETS",
        ),
        (
            serde_json::json!({"llm": {"base_url": "http://any-host/v1", "api_key_env": "AWS_SECRET_ACCESS_KEY"}}),
            "llm.base_url: http://any-host/v1 is not in FLEET_LLM_ENDPOINTS",
        ),
        (
            serde_json::json!({"llm": {"api_key_env": "AWS_SECRET_ACCESS_KEY"}}),
            "llm.api_key_env: AWS_SECRET_ACCESS_KEY is not in FLEET_JOB_SECRETS",
        ),
        (
            serde_json::json!({"webhook": {"url": "https://h/x", "secret_env": "FLEET_WEBHOOK_SECRET"}}),
            "webhook.secret_env: FLEET_WEBHOOK_SECRET is not in FLEET_JOB_SECRETS",
        ),
        (
            serde_json::json!({"limits": {"network": "host"}}),
            "limits.network: host is refused",
        ),
        (
            serde_json::json!({"limits": {"network": "bridge"}}),
            "limits.network: bridge is not in FLEET_JOB_NETWORKS",
        ),
        (
            serde_json::json!({"limits": {"pids": 9223372036854775807i64}}),
            "limits.pids: 9223372036854775807 is over FLEET_MAX_PIDS = 4096",
        ),
        (
            serde_json::json!({"limits": {"memory_mb": 1000000}}),
            "limits.memory_mb: 1000000 is over FLEET_MAX_MEMORY_MB",
        ),
        (
            serde_json::json!({"limits": {"cpus": 64}}),
            "limits.cpus: 64 is over FLEET_MAX_CPUS",
        ),
        (
            serde_json::json!({"limits": {"timeout_secs": 999999}}),
            "limits.timeout_secs: 999999 is over FLEET_MAX_TIMEOUT_SECS",
        ),
        (
            serde_json::json!({"limits": {"max_iterations": 100000}}),
            "limits.max_iterations: 100000 is over FLEET_MAX_ITERATIONS",
        ),
        (
            serde_json::json!({"limits": {"disk_mb": 99999999}}),
            "limits.disk_mb: 99999999 is over FLEET_MAX_DISK_MB",
        ),
        (
            serde_json::json!({"input": {"store_key": "jobs/other-team-job/input.tar.gz"}}),
            "input.store_key: jobs/other-team-job/input.tar.gz is another job's record",
        ),
        (
            serde_json::json!({"input": {"store_key": "/batches/b-1.json"}}),
            "input.store_key: /batches/b-1.json is another job's record",
        ),
        (
            serde_json::json!({"limits": {"user": "root"}}),
            "limits.user: root is root",
        ),
        (
            serde_json::json!({"limits": {"user": "0:0"}}),
            "limits.user: 0:0 is root",
        ),
    ];
    for (extra, want) in cases {
        let got = refused(&p, &job(extra.clone()));
        assert!(got.starts_with(want), "{extra}: {got}");
        assert!(!got.contains('\n'));
        assert!(
            !got.contains("longpassword") && !got.contains("sk-worker-key"),
            "{got}"
        );
    }
    // The worker's own key with its own endpoint, and ordinary jobs, run.
    let worker = env(&[("LLM_API_KEY", "sk-worker-key")]);
    p.check_fields(
        &job(serde_json::json!({"llm": {"api_key_env": "LLM_API_KEY"}})),
        &worker,
    )
    .unwrap();
    p.check_fields(
        &job(serde_json::json!({"llm": {"base_url": "http://llm.internal/v1"}})),
        &worker,
    )
    .unwrap();
    p.check_fields(
        &job(serde_json::json!({"input": {"store_key": "jobs/j1/input.tar.gz"}})),
        &worker,
    )
    .unwrap();
    p.check_fields(
        &job(serde_json::json!({"input": {"store_key": "inputs/repo.tar.gz"}})),
        &worker,
    )
    .unwrap();
    p.check_fields(
        &job(serde_json::json!({"limits": {"user": "1000:1000", "read_only_root": true}})),
        &worker,
    )
    .unwrap();
    // ... but not to another endpoint, even an allowed one.
    let p2 = Policy::from_lookup(
        "http://llm.internal/v1",
        env(&[("FLEET_LLM_ENDPOINTS", "https://other/v1")]),
    )
    .unwrap();
    let got = refused(
        &p2,
        &job(
            serde_json::json!({"llm": {"base_url": "https://other/v1", "api_key_env": "LLM_API_KEY"}}),
        ),
    );
    assert!(
        got.starts_with("llm.api_key_env: LLM_API_KEY goes only to the worker's LLM_BASE_URL"),
        "{got}"
    );
}

#[test]
fn the_policy_variables_allow_what_they_list() {
    let p = Policy::from_lookup(
        "http://llm.internal/v1",
        env(&[
            ("FLEET_JOB_SECRETS", "TEAM_TOKEN, TEAM_KEY"),
            ("FLEET_LLM_ENDPOINTS", "https://team-llm/v1/"),
            ("FLEET_JOB_NETWORKS", "bridge,host"),
            ("FLEET_ALLOW_HOST_NETWORK", "1"),
            ("FLEET_MAX_PIDS", "100000"),
            ("FLEET_JOB_USERS", "root"),
        ]),
    )
    .unwrap();
    let worker = env(&[
        ("TEAM_TOKEN", "team-token-value"),
        ("TEAM_KEY", "team-key-value"),
    ]);
    let j = job(serde_json::json!({
        "secrets": ["TEAM_TOKEN"],
        "llm": {"base_url": "https://team-llm/v1", "api_key_env": "TEAM_KEY"},
        "webhook": {"url": "https://h/x", "secret_env": "TEAM_TOKEN"},
        "limits": {"network": "host", "pids": 50000, "user": "root"}
    }));
    p.check_fields(&j, &worker).unwrap();
    // `host` listed without FLEET_ALLOW_HOST_NETWORK stays refused.
    let p = Policy::from_lookup("http://x", env(&[("FLEET_JOB_NETWORKS", "host")])).unwrap();
    assert!(
        refused(&p, &job(serde_json::json!({"limits": {"network": "host"}})))
            .contains("FLEET_ALLOW_HOST_NETWORK=1")
    );
}

#[test]
fn short_values_and_system_workdirs_are_refused_even_when_trusted() {
    let j = job(serde_json::json!({"secrets": ["SHORT"]}));
    let e = check_values(&j, &env(&[("SHORT", "abc")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "secrets: the value of SHORT has 3 characters; values shorter than 6 cannot be masked"
    );
    check_values(&j, &env(&[("SHORT", "abcdef")])).unwrap();
    for w in ["/proc", "/sys/fs", "/dev/"] {
        let j = job(serde_json::json!({"workdir": w}));
        assert!(
            check_values(&j, &env(&[]))
                .unwrap_err()
                .to_string()
                .starts_with("workdir:"),
            "{w}"
        );
    }
}

#[test]
fn bad_policy_values_are_errors_that_name_the_variable() {
    let e = Policy::from_lookup("http://x", env(&[("FLEET_MAX_PIDS", "lots")]))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("FLEET_MAX_PIDS=\"lots\""), "{e}");
    let e = Policy::from_lookup("http://x", env(&[("FLEET_WEBHOOK_ALLOW_PRIVATE", "yes")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("FLEET_WEBHOOK_ALLOW_PRIVATE"), "{e}");
    let e = Policy::from_lookup("http://x", env(&[("FLEET_LLM_ENDPOINTS", "ftp://x")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("FLEET_LLM_ENDPOINTS"), "{e}");
}

#[test]
fn addresses_are_classified() {
    for ip in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
    ] {
        assert!(address_class(ip.parse().unwrap()).is_some(), "{ip}");
    }
    for ip in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
        assert!(address_class(ip.parse().unwrap()).is_none(), "{ip}");
    }
    assert!(literal_webhook_refusal("http://127.0.0.1:8080/x").is_some());
    assert!(literal_webhook_refusal("http://user@[::1]:8080/x").is_some());
    assert!(literal_webhook_refusal("https://1.1.1.1/x").is_none());
    // Other spellings of an address, as the HTTP client reads them.
    assert!(literal_webhook_refusal("http://2130706433/x").is_some());
    assert!(literal_webhook_refusal("http://0x7f.1/x").is_some());
    assert!(literal_webhook_refusal("http://[::ffff:169.254.169.254]/x").is_some());
    assert!(literal_webhook_refusal("https://example.com/x").is_none());
}

#[tokio::test]
async fn a_webhook_name_is_checked_by_its_resolved_address() {
    let e = check_webhook_address("http://localhost:9/hook")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("webhook.url: localhost resolves to ") && e.contains("loopback"),
        "{e}"
    );
    let e = check_webhook_address("http://169.254.169.254/latest")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("link-local"), "{e}");
}
