//! The trust boundary between job submitters and workers (the worker policy),
//! against a real worker, broker, S3 server and Docker. The evidence is what the
//! fleet does not write itself: what a receiver got, the objects in the store
//! (read back through the S3 API), Docker's own records of containers (`docker
//! events`, `docker inspect`).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_fleet::job::State;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde_json::{Value, json};

use super::harness::{Fleet, WAIT, poll};
use crate::util::containers_for;

/// A plain HTTP receiver on 127.0.0.1 that keeps every request it gets, raw
/// (request line, headers, body), and answers 200 with a small JSON body.
pub(super) struct RawReceiver {
    pub(super) port: u16,
    got: Arc<Mutex<Vec<String>>>,
}

impl RawReceiver {
    pub(super) fn start() -> RawReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Until the headers and the body they announce are in (or the peer stops).
                loop {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                keep.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).to_string());
                let body = r#"{"error": {"message": "receiver"}}"#;
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        RawReceiver { port, got }
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(super) fn got(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

/// Every object under the job's store prefix, as text (read back through S3).
fn store_objects(f: &Fleet, id: &str) -> Vec<(String, String)> {
    f.files(id)
        .into_iter()
        .map(|name| {
            let body = f.file(id, &name).unwrap_or_default();
            (name, String::from_utf8_lossy(&body).to_string())
        })
        .collect()
}

/// Docker's own record of containers created for `job_id` since `since`.
fn containers_created_since(job_id: &str, since: &str) -> usize {
    let until = chrono::Utc::now().timestamp().to_string();
    let out = Command::new("docker")
        .args([
            "events",
            "--since",
            since,
            "--until",
            &until,
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--filter",
            &format!("label=fleet.job_id={job_id}"),
            "--format",
            "{{.ID}}",
        ])
        .output()
        .expect("docker events");
    assert!(
        out.status.success(),
        "docker events: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The forms a value can leak in: raw, base64 (with and without padding, with a
/// trailing newline), URL-encoded, JSON-escaped.
fn leak_forms(v: &str) -> Vec<String> {
    let url: String = v
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let json = serde_json::to_string(v).unwrap();
    vec![
        v.to_string(),
        STANDARD.encode(v),
        STANDARD_NO_PAD.encode(v),
        STANDARD_NO_PAD.encode(format!("{v}\n")),
        url,
        json[1..json.len() - 1].to_string(),
    ]
}

fn assert_nowhere(values: &[&str], place: &str, text: &str) {
    for v in values {
        for form in leak_forms(v) {
            assert!(
                !text.contains(&form),
                "{place} holds {form:?} (a form of a worker value):\n{text}"
            );
        }
    }
}

/// With no policy variables set, each escape a job file can try is refused as
/// `rejected`/`policy` with a one-line message naming the field and the rule; no
/// container is created for it, no request reaches the endpoint or webhook it
/// names, and no worker value is in any stored object.
#[test]
fn a_default_worker_refuses_every_escape() {
    let worker_secret = format!("wk-{}", uuid::Uuid::new_v4().simple());
    let mut f = Fleet::new();
    f.set_env("FLEET_IT_WORKER_SECRET", &worker_secret);
    f.set_env("LLM_API_KEY", "sk-worker-llm-key-0123456789");
    let rx = RawReceiver::start();
    let finish = json!({"steps": [{"tool": "finish", "args": {"message": "done"}}]});
    let cases: Vec<(&str, Value, String)> = vec![
        (
            "key-to-any-host",
            json!({"llm": {"base_url": rx.url("/v1"), "api_key_env": "AWS_SECRET_ACCESS_KEY"}}),
            format!(
                "llm.base_url: {} is not in FLEET_LLM_ENDPOINTS",
                rx.url("/v1")
            ),
        ),
        (
            "worker-key-to-any-host",
            json!({"llm": {"base_url": rx.url("/v1")}}),
            "llm.base_url: ".into(),
        ),
        (
            "aws-key-env",
            json!({"llm": {"api_key_env": "AWS_SECRET_ACCESS_KEY"}}),
            "llm.api_key_env: AWS_SECRET_ACCESS_KEY is not in FLEET_JOB_SECRETS".into(),
        ),
        (
            "broker-password",
            json!({"secrets": ["FLEET_QUEUE"]}),
            "secrets: FLEET_QUEUE is not in FLEET_JOB_SECRETS".into(),
        ),
        (
            "worker-secret",
            json!({"secrets": ["FLEET_IT_WORKER_SECRET"]}),
            "secrets: FLEET_IT_WORKER_SECRET is not in FLEET_JOB_SECRETS".into(),
        ),
        (
            "host-network",
            json!({"limits": {"network": "host"}}),
            "limits.network: host is refused".into(),
        ),
        (
            "bridge-network",
            json!({"limits": {"network": "bridge"}}),
            "limits.network: bridge is not in FLEET_JOB_NETWORKS".into(),
        ),
        (
            "pids",
            json!({"limits": {"pids": 9223372036854775807i64}}),
            "limits.pids: 9223372036854775807 is over FLEET_MAX_PIDS = 4096".into(),
        ),
        (
            "memory",
            json!({"limits": {"memory_mb": 10000000}}),
            "limits.memory_mb: 10000000 is over FLEET_MAX_MEMORY_MB = 8192".into(),
        ),
        (
            "timeout",
            json!({"limits": {"timeout_secs": 100000000}}),
            "limits.timeout_secs: 100000000 is over FLEET_MAX_TIMEOUT_SECS".into(),
        ),
        (
            "disk",
            json!({"limits": {"disk_mb": 100000000}}),
            "limits.disk_mb: 100000000 is over FLEET_MAX_DISK_MB".into(),
        ),
        (
            "root-user",
            json!({"limits": {"user": "0"}}),
            "limits.user: 0 is root".into(),
        ),
        (
            "webhook-loopback",
            json!({"webhook": {"url": rx.url("/hook")}}),
            "webhook.url: 127.0.0.1 is a loopback address".into(),
        ),
        (
            "webhook-localhost",
            json!({"webhook": {"url": format!("http://localhost:{}/hook", rx.port)}}),
            "webhook.url: localhost resolves to ".into(),
        ),
        (
            "webhook-worker-secret",
            json!({"webhook": {"url": "https://hooks.example.invalid/x", "secret_env": "FLEET_IT_WORKER_SECRET"}}),
            "webhook.secret_env: FLEET_IT_WORKER_SECRET is not in FLEET_JOB_SECRETS".into(),
        ),
    ];
    let mut cases = cases;
    cases.push((
        "other-jobs-input",
        json!({"input": {"store_key": "jobs/another-teams-job/input.tar.gz"}}),
        "input.store_key: jobs/another-teams-job/input.tar.gz is another job's record".into(),
    ));
    let since = chrono::Utc::now().timestamp().to_string();
    let mut ids = Vec::new();
    for (name, job, _) in &cases {
        let mut job = job.clone();
        job["task"] = json!(format!("escape: {name}"));
        ids.push(f.add_job(name, job, finish.clone()));
    }
    f.worker(2, &[]);
    let sub = f.submit();
    assert_eq!(sub.job_ids, ids);
    let statuses = f.wait_terminal(&ids, WAIT);
    let worker_values = [
        worker_secret.as_str(),
        "sk-worker-llm-key-0123456789",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    ];
    for ((id, (name, _, want)), status) in ids.iter().zip(&cases).zip(&statuses) {
        assert_eq!(status.state, State::Rejected, "{name}: {status:?}");
        let r = f
            .result(id)
            .unwrap_or_else(|| panic!("{name}: no result.json"));
        let e = r
            .error
            .clone()
            .unwrap_or_else(|| panic!("{name}: no error"));
        assert_eq!(e.kind, "policy", "{name}: {e:?}");
        assert!(!e.retryable, "{name}");
        assert!(
            e.message.starts_with(want.as_str()),
            "{name}: {:?} does not start with {want:?}",
            e.message
        );
        assert!(!e.message.contains('\n'), "{name}: {:?}", e.message);
        // One try: rejected straight from queued, never running.
        assert!(
            !status.history.iter().any(|t| t.state == State::Running),
            "{name}: {status:?}"
        );
        assert_eq!(
            containers_created_since(id, &since),
            0,
            "{name}: a container was created"
        );
        assert_eq!(containers_for(id), 0, "{name}");
        for (key, text) in store_objects(&f, id) {
            assert_nowhere(
                &worker_values,
                &format!("{name}: store object {key}"),
                &text,
            );
        }
    }
    // Nothing at all reached the receiver the jobs named (LLM endpoint, webhooks).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rx.got(), Vec::<String>::new(), "the receiver got requests");
    // The worker is still serving: a plain job runs to the end.
    let ok = f.add_job("plain", json!({"task": "plain"}), finish);
    f.submit();
    let s = f.wait_terminal(&[ok], WAIT);
    assert_eq!(s[0].state, State::Succeeded, "{:?}", s[0]);
}

/// With the policy variables set, the same kinds of jobs run: an allowed secret
/// reaches the workspace (docker inspect shows it in the container's environment)
/// and is masked everywhere the job's output goes — events, patch, artifacts,
/// result/status, the webhook a receiver got, the worker's log — in its raw form,
/// base64, URL-encoded, JSON-escaped, each line of a multi-line value, and cut by
/// the output limit.
#[test]
fn allowed_secrets_reach_the_workspace_and_are_masked_everywhere() {
    let token = format!("Q7x{}/+&\"z", uuid::Uuid::new_v4().simple());
    let line1 = format!("L1{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
    let line2 = format!("L2{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
    let multi = format!("{line1}\n{line2}\n");
    let hook_secret = format!("hs-{}", uuid::Uuid::new_v4().simple());
    let mut f = Fleet::new();
    f.set_env("FLEET_IT_TEAM_TOKEN", &token);
    f.set_env("FLEET_IT_TEAM_CERT", &multi);
    f.set_env("FLEET_IT_HOOK_SECRET", &hook_secret);
    f.set_env(
        "FLEET_JOB_SECRETS",
        "FLEET_IT_TEAM_TOKEN,FLEET_IT_TEAM_CERT,FLEET_IT_HOOK_SECRET",
    );
    f.set_env("FLEET_WEBHOOK_ALLOW_PRIVATE", "1");
    f.set_env("FLEET_JOB_NETWORKS", "bridge");
    let rx = RawReceiver::start();
    // The commands print the value in every encoding; one puts it on the output
    // limit's cut (30 000 characters: 15 000 kept at each end).
    let commands = [
        r#"echo "raw=$FLEET_IT_TEAM_TOKEN"; printf %s "$FLEET_IT_TEAM_TOKEN" | base64; echo "$FLEET_IT_TEAM_TOKEN" | base64; printf %s "$FLEET_IT_TEAM_TOKEN" | base64 | tr -d ="#.to_string(),
        r#"printf %s "$FLEET_IT_TEAM_TOKEN" | sed 's|/|%2F|g; s|+|%2B|g; s|&|%26|g; s|"|%22|g'; echo; printf %s "$FLEET_IT_TEAM_TOKEN" | sed 's|"|\\"|g'; echo"#.to_string(),
        r#"printf %s "$FLEET_IT_TEAM_CERT" > cert.pem; printf '%s\n' "$FLEET_IT_TEAM_TOKEN" > token.txt; printf %s "$FLEET_IT_TEAM_TOKEN" | base64 > token.b64; cat cert.pem"#.to_string(),
        r#"head -c 14995 /dev/zero | tr '\0' a; printf %s "$FLEET_IT_TEAM_TOKEN"; head -c 40000 /dev/zero | tr '\0' b"#.to_string(),
        "sleep 4; echo slept".to_string(),
    ];
    let mut steps: Vec<Value> = commands
        .iter()
        .map(|c| json!({"tool": "terminal", "args": {"command": c}}))
        .collect();
    // The scripted LLM itself repeats the value (a model can): the final message.
    steps.push(json!({"tool": "finish", "args": {"message": format!("the token is {token}")}}));
    let id = f.add_job(
        "allowed",
        json!({
            "task": "use the token",
            "secrets": ["FLEET_IT_TEAM_TOKEN", "FLEET_IT_TEAM_CERT"],
            "webhook": {"url": rx.url("/hook"), "secret_env": "FLEET_IT_HOOK_SECRET"},
            "limits": {"network": "bridge"},
            "artifacts": ["token.txt", "token.b64", "cert.pem"]
        }),
        json!({"steps": steps}),
    );
    let w = f.worker(1, &[]);
    f.submit();
    // While it runs: the container has the value (it reached the workspace).
    let env = poll(
        WAIT,
        "the job's container",
        || {
            let out = Command::new("docker")
                .args(["ps", "-q", "--filter", &format!("label=fleet.job_id={id}")])
                .output()
                .ok()?;
            let cid = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()?
                .to_string();
            let out = Command::new("docker")
                .args(["inspect", "--format", "{{json .Config.Env}}", &cid])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).to_string())
        },
        || f.diagnostics(),
    );
    let env: Vec<String> = serde_json::from_str(&env).unwrap();
    assert!(
        env.contains(&format!("FLEET_IT_TEAM_TOKEN={token}")),
        "{env:?}"
    );
    assert!(
        env.contains(&format!("FLEET_IT_TEAM_CERT={multi}")),
        "{env:?}"
    );
    assert!(!env.iter().any(|e| e.contains(&hook_secret)), "{env:?}");
    let s = f.wait_terminal(std::slice::from_ref(&id), WAIT);
    assert_eq!(s[0].state, State::Succeeded, "{:?}", s[0]);
    let secrets = [
        token.as_str(),
        line1.as_str(),
        line2.as_str(),
        hook_secret.as_str(),
    ];
    let objects = store_objects(&f, &id);
    for want in [
        "events.jsonl",
        "patch.diff",
        "result.json",
        "status.json",
        "artifacts/token.txt",
        "artifacts/token.b64",
        "artifacts/cert.pem",
    ] {
        assert!(
            objects.iter().any(|(k, _)| k == want),
            "{want} missing: {:?}",
            objects.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
    }
    for (key, text) in &objects {
        assert_nowhere(&secrets, &format!("store object {key}"), text);
    }
    // The value on the cut: not even its first characters survive next to it.
    let events = &objects.iter().find(|(k, _)| k == "events.jsonl").unwrap().1;
    assert!(
        events.contains("<response clipped"),
        "no cut output in the events"
    );
    assert!(
        !events.contains(&token[..5]),
        "a piece of the value survived the cut"
    );
    assert!(events.contains("<secret-hidden>"));
    let patch = &objects.iter().find(|(k, _)| k == "patch.diff").unwrap().1;
    assert!(patch.contains("+<secret-hidden>"), "{patch}");
    // The webhook arrived (signed with the allowed secret), masked.
    let got = poll(
        WAIT,
        "the webhook",
        || {
            let g = rx.got();
            (!g.is_empty()).then_some(g)
        },
        || f.diagnostics(),
    );
    assert!(got[0].starts_with("POST /hook"), "{}", got[0]);
    assert!(
        got[0]
            .to_ascii_lowercase()
            .contains("x-fleet-signature: sha256="),
        "{}",
        got[0]
    );
    for g in &got {
        assert_nowhere(&secrets, "the webhook request", g);
    }
    assert!(got[0].contains("<secret-hidden>"), "{}", got[0]);
    // The worker's own log.
    assert_nowhere(&secrets, "the worker's log", &f.worker_log(&w));
    // Docker removed the container.
    let t = Instant::now();
    while containers_for(&id) > 0 && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(containers_for(&id), 0);
}

/// `fleet worker --print-policy` shows the policy the environment gives; a bad
/// policy value stops the worker with one line naming the variable (exit 2);
/// `fleet submit --policy-check` refuses early what a worker would reject.
#[test]
fn print_policy_bad_values_and_submit_policy_check() {
    let mut f = Fleet::new();
    let out = f.cli(&["worker", "--print-policy"], Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for want in [
        "FLEET_JOB_SECRETS            (none)",
        "FLEET_JOB_NETWORKS           none",
        "FLEET_MAX_PIDS               4096",
        "FLEET_WEBHOOK_ALLOW_PRIVATE  no",
    ] {
        assert!(
            out.stdout.contains(want),
            "{want:?} not in:\n{}",
            out.stdout
        );
    }
    let id = f.add_job(
        "checked",
        json!({"task": "t", "secrets": ["FLEET_QUEUE"]}),
        json!({"steps": []}),
    );
    let file = f.job_file();
    let out = f.cli(
        &["submit", file.to_str().unwrap(), "--policy-check"],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("job 0 (id \"{id}\"): refused by the worker policy: secrets: FLEET_QUEUE is not in FLEET_JOB_SECRETS")), "{}", out.stderr);
    assert!(f.status(&id).is_none(), "a refused submit stored the job");
    f.set_env("FLEET_MAX_PIDS", "lots");
    let out = f.cli(&["worker", "--print-policy"], Duration::from_secs(30));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("FLEET_MAX_PIDS=\"lots\": expected a number above 0"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

/// `fleet run` trusts its own job file: a job naming a variable of the
/// environment runs; `--policy worker` refuses the same job as a worker would.
#[test]
fn fleet_run_trusts_its_file_unless_told_to_apply_the_worker_policy() {
    let batch = || {
        let mut b = crate::util::Batch::new();
        b.env("FLEET_IT_RUN_TOKEN", "run-token-value-123");
        let script = json!({"steps": [
            {"tool": "terminal", "args": {"command": "echo $FLEET_IT_RUN_TOKEN"}},
            {"tool": "finish", "args": {"message": "done"}}
        ]});
        let id = b.job(
            "trusted",
            json!({"task": "t", "secrets": ["FLEET_IT_RUN_TOKEN"]}),
            script,
        );
        (b, id)
    };
    let (b, id) = batch();
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.result(&id)["outcome"], "succeeded");
    let events = b.store_text(&id, "events.jsonl");
    assert!(
        events.contains("<secret-hidden>") && !events.contains("run-token-value-123"),
        "{events}"
    );
    let (b, id) = batch();
    let out = b.run_with(&["--policy", "worker"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let r = out.result(&id);
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert_eq!(r["error"]["kind"], "policy", "{r}");
    assert_eq!(
        r["error"]["message"], "secrets: FLEET_IT_RUN_TOKEN is not in FLEET_JOB_SECRETS",
        "{r}"
    );
    // A value too short to be masked is refused even from a trusted file.
    let mut b = crate::util::Batch::new();
    b.env("FLEET_IT_SHORT", "abc");
    let id = b.job(
        "short",
        json!({"task": "t", "secrets": ["FLEET_IT_SHORT"]}),
        json!({"steps": []}),
    );
    let out = b.run();
    let r = out.result(&id);
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert_eq!(
        r["error"]["message"],
        "secrets: the value of FLEET_IT_SHORT has 3 characters; values shorter than 6 cannot be masked",
        "{r}"
    );
}

/// The webhook address rule at delivery: a job URL whose name resolves to
/// loopback, or a loopback literal, gets nothing (recorded as not delivered, with
/// the reason); the worker-wide URL on the same receiver is delivered.
#[test]
fn job_webhooks_connect_only_to_public_addresses() {
    use agent_fleet::results::webhook::{self, Notifier, WebhookSettings};
    use agent_fleet::store::Store;
    let rx = RawReceiver::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
        let settings = WebhookSettings {
            max_attempts: 1,
            ..WebhookSettings::new(Some(rx.url("/worker")), "FLEET_IT_GUARD_UNSET")
        };
        assert!(!settings.allow_private);
        let notifier = Notifier::new(webhook::http_client().unwrap(), store.clone(), settings);
        for (id, url) in [
            ("by-name", format!("http://localhost:{}/job", rx.port)),
            ("by-literal", rx.url("/job")),
        ] {
            let spec = agent_fleet::job::job_from_value(
                json!({"id": id, "task": "t", "image": "img", "webhook": {"url": url}}),
                &agent_fleet::job::ParseOptions::default(),
            )
            .unwrap();
            store
                .put_json(
                    &agent_fleet::store::JobKeys(id).status(),
                    &agent_fleet::job::StatusRecord::queued(id, None),
                )
                .await
                .unwrap();
            let r = agent_fleet::job::JobResult::unrun(
                id,
                agent_fleet::job::Outcome::Succeeded,
                1,
                None,
                None,
            );
            notifier.job_finished(&spec, &r);
        }
        notifier.shutdown(Duration::from_secs(20)).await;
        for id in ["by-name", "by-literal"] {
            let s = store.status(id).await.unwrap().unwrap();
            let job_hook = s
                .webhooks
                .iter()
                .find(|w| w.url.ends_with("/job"))
                .expect("job delivery recorded");
            assert!(!job_hook.delivered, "{id}: {job_hook:?}");
            let why = job_hook.last_error.clone().unwrap_or_default();
            assert!(why.contains("FLEET_WEBHOOK_ALLOW_PRIVATE"), "{id}: {why}");
            let worker_hook = s
                .webhooks
                .iter()
                .find(|w| w.url.ends_with("/worker"))
                .expect("worker delivery");
            assert!(worker_hook.delivered, "{id}: {worker_hook:?}");
        }
    });
    let got = rx.got();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|g| g.starts_with("POST /worker")), "{got:?}");
}

/// With `FLEET_LLM_ENDPOINTS` and `FLEET_JOB_SECRETS` set, a job's LLM requests go
/// to the endpoint it names with the key it names — and a job naming an endpoint
/// but no key gets none: the worker's own `LLM_API_KEY` never leaves for another
/// endpoint. Shown by the requests the endpoint got.
#[test]
fn an_allowed_endpoint_gets_the_named_key_and_never_the_workers() {
    let rx = RawReceiver::start();
    let team_key = format!("tk-{}", uuid::Uuid::new_v4().simple());
    let worker_key = format!("wk-{}", uuid::Uuid::new_v4().simple());
    let mut f = Fleet::new();
    f.set_env("LLM_API_KEY", &worker_key);
    f.set_env("FLEET_IT_TEAM_KEY", &team_key);
    f.set_env("FLEET_JOB_SECRETS", "FLEET_IT_TEAM_KEY");
    f.set_env("FLEET_LLM_ENDPOINTS", &rx.url("/v1"));
    f.set_env("FLEET_MAX_ATTEMPTS", "1");
    let steps = json!({"steps": [{"tool": "finish", "args": {"message": "done"}}]});
    let named = f.add_job(
        "named-key",
        json!({"task": "t", "llm": {"base_url": rx.url("/v1"), "api_key_env": "FLEET_IT_TEAM_KEY"}}),
        steps.clone(),
    );
    let keyless = f.add_job(
        "no-key",
        json!({"task": "t", "llm": {"base_url": rx.url("/v1/")}}),
        steps,
    );
    f.worker(2, &[]);
    f.submit();
    let s = f.wait_terminal(&[named.clone(), keyless.clone()], WAIT);
    // The receiver is no LLM: the jobs fail, but they ran (not rejected).
    for st in &s {
        assert_ne!(st.state, State::Rejected, "{st:?}");
    }
    let got = rx.got();
    let of = |id: &str| -> Vec<String> {
        got.iter()
            .filter(|g| g.contains(&format!("\"model\":\"{id}\"")))
            .map(|g| g.to_ascii_lowercase())
            .collect()
    };
    let (a, b) = (of(&named), of(&keyless));
    assert!(!a.is_empty() && !b.is_empty(), "requests: {got:?}");
    assert!(
        a.iter()
            .all(|r| r.contains(&format!("authorization: bearer {team_key}"))),
        "{a:?}"
    );
    assert!(b.iter().all(|r| !r.contains("authorization:")), "{b:?}");
    assert!(
        !got.iter().any(|g| g.contains(&worker_key)),
        "the worker's key left: {got:?}"
    );
}
