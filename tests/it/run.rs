//! `fleet run` end to end: the real binary, real Docker containers, the scripted
//! LLM in-process, a local store in a temporary directory.

use serde_json::json;

use crate::util::{Batch, containers_for};

#[test]
fn success_writes_every_file_and_a_patch() {
    let mut b = Batch::new();
    let input = b.input(&[("hello.txt", "helo\n")]);
    let id = b.job(
        "fix",
        json!({"task": "fix the greeting", "input": {"path": input},
               "artifacts": ["out/*.txt"]}),
        json!({"steps": [
            {"tool": "terminal", "args": {"command": "cat hello.txt && mkdir -p out && echo report > out/r.txt"}},
            {"tool": "file_editor", "args": {"command": "str_replace", "path": "/workspace/hello.txt", "old_str": "helo", "new_str": "hello"}},
            {"tool": "finish", "args": {"message": "fixed"}}
        ], "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}),
    );
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.result(&id);
    assert_eq!(r["outcome"], "succeeded");
    assert_eq!(r["final_message"], "fixed");
    assert_eq!(r["steps"], 3);
    for f in [
        "job.json",
        "status.json",
        "result.json",
        "patch.diff",
        "events.jsonl",
        "metrics.json",
    ] {
        assert!(b.store_file(&id, f).is_some(), "{f} missing");
    }
    let patch = b.store_text(&id, "patch.diff");
    assert!(patch.contains("-helo\n+hello\n"), "{patch}");
    assert!(patch.contains("+++ b/out/r.txt"), "{patch}");
    assert_eq!(b.store_text(&id, "artifacts/out/r.txt"), "report\n");
    let status: serde_json::Value =
        serde_json::from_str(&b.store_text(&id, "status.json")).unwrap();
    assert_eq!(status["state"], "succeeded");
    let states: Vec<&str> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "running", "succeeded"]);
    let metrics: serde_json::Value =
        serde_json::from_str(&b.store_text(&id, "metrics.json")).unwrap();
    assert_eq!(metrics["tokens"]["prompt"], 3000);
    let events = b.store_text(&id, "events.jsonl");
    assert!(
        events
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
    assert!(events.contains("\"kind\":\"ActionEvent\""));
    assert_eq!(containers_for(&id), 0, "container left behind");
}

#[test]
fn stuck_on_repeated_action_and_observation() {
    let mut b = Batch::new();
    let id = b.job(
        "loop",
        json!({"task": "loop"}),
        json!({"steps": [{"tool": "terminal", "args": {"command": "echo same"}}], "repeat_last": true}),
    );
    let out = b.run();
    assert_eq!(out.code, 1);
    let r = out.result(&id);
    assert_eq!(r["outcome"], "stuck");
    assert_eq!(r["stuck_pattern"], "action_observation");
    assert_eq!(containers_for(&id), 0);
}

#[test]
fn stuck_on_action_error_after_exactly_one_nudge() {
    let mut b = Batch::new();
    let id = b.job(
        "errs",
        json!({"task": "errors"}),
        json!({"steps": [{"tool": "terminal", "args": "{not json"}], "repeat_last": true}),
    );
    let out = b.run();
    let r = out.result(&id);
    assert_eq!(r["outcome"], "stuck", "{r}");
    assert_eq!(r["stuck_pattern"], "action_error");
    let events = b.store_text(&id, "events.jsonl");
    let nudges = events
        .lines()
        .filter(|l| l.contains("\"nudge\":true"))
        .count();
    assert_eq!(nudges, 1, "{events}");
}

#[test]
fn max_iterations_is_its_own_outcome() {
    let mut b = Batch::new();
    let id = b.job(
        "cap",
        json!({"task": "count", "limits": {"max_iterations": 3}}),
        json!({"steps": [
            {"tool": "terminal", "args": {"command": "echo 1"}},
            {"tool": "terminal", "args": {"command": "echo 2"}},
            {"tool": "terminal", "args": {"command": "echo 3"}},
            {"tool": "finish", "args": {"message": "too late"}}
        ]}),
    );
    let r = b.run().result(&id);
    assert_eq!(r["outcome"], "max_iterations");
    assert_eq!(r["steps"], 3);
}

#[test]
fn timeout_kills_the_container_within_twice_the_limit() {
    let mut b = Batch::new();
    let id = b.job(
        "slow",
        json!({"task": "sleep", "limits": {"timeout_secs": 4, "command_timeout_secs": 600}}),
        json!({"steps": [{"tool": "terminal", "args": {"command": "sleep 300"}}]}),
    );
    let r = b.run().result(&id);
    assert_eq!(r["outcome"], "timed_out");
    assert_eq!(r["error"]["kind"], "timed_out");
    let secs = r["duration_secs"].as_f64().unwrap();
    assert!(secs < 8.0, "took {secs}s for a 4s limit");
    assert!(b.store_file(&id, "patch.diff").is_some());
    assert_eq!(containers_for(&id), 0, "container not killed");
}

#[test]
fn budget_exceeded_stops_the_run() {
    let mut b = Batch::new();
    let id = b.job(
        "spend",
        json!({"task": "spend", "limits": {"max_cost_usd": 0.01},
               "llm": {"price": {"input_per_mtok": 10.0, "output_per_mtok": 10.0}}}),
        json!({"steps": [{"tool": "think", "args": {"thought": "hmm"}}], "repeat_last": true,
               "usage": {"prompt_tokens": 400, "completion_tokens": 100}}),
    );
    let r = b.run().result(&id);
    assert_eq!(r["outcome"], "budget_exceeded");
    // 5,000 tokens at $10/Mtok = $0.005 per step: the second step reaches $0.01.
    assert_eq!(r["steps"], 2);
    assert!(r["cost_usd"].as_f64().unwrap() >= 0.01);
}

#[test]
fn llm_503_twice_then_success_counts_retries() {
    let mut b = Batch::new();
    let id = b.job(
        "flaky",
        json!({"task": "t"}),
        json!({"steps": [{"fail": {"status": 503, "times": 2}, "tool": "finish", "args": {"message": "ok"}}]}),
    );
    let r = b.run().result(&id);
    assert_eq!(r["outcome"], "succeeded");
    let m: serde_json::Value = serde_json::from_str(&b.store_text(&id, "metrics.json")).unwrap();
    assert_eq!(m["llm"]["retries"], 2, "{m}");
    assert_eq!(m["llm"]["requests"], 3, "{m}");
}

#[test]
fn llm_401_fails_at_once_without_retries() {
    let mut b = Batch::new();
    let id = b.job(
        "auth",
        json!({"task": "t"}),
        json!({"steps": [{"fail": {"status": 401, "times": 99}, "tool": "finish", "args": {"message": "never"}}]}),
    );
    let out = b.run();
    assert_eq!(out.code, 1);
    let r = out.result(&id);
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["error"]["kind"], "llm_auth");
    assert_eq!(r["error"]["retryable"], false);
    assert_eq!(r["attempt"], 1, "a 401 is not an infrastructure fault");
    let m: serde_json::Value = serde_json::from_str(&b.store_text(&id, "metrics.json")).unwrap();
    assert_eq!(m["llm"]["requests"], 1, "{m}");
}

#[test]
fn heavy_output_flood_is_truncated_and_memory_stays_flat() {
    let mut b = Batch::new();
    let id = b.job(
        "flood",
        json!({"task": "flood", "limits": {"command_timeout_secs": 300}}),
        json!({"steps": [
            {"tool": "terminal", "args": {"command": "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 200000000; echo; echo done"}},
            {"tool": "finish", "args": {"message": "ok"}}
        ]}),
    );
    let out = b.run();
    let r = out.result(&id);
    assert_eq!(r["outcome"], "succeeded", "{}", out.stderr);
    let events = b.store_text(&id, "events.jsonl");
    let obs: serde_json::Value = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["kind"] == "ObservationEvent")
        .unwrap();
    let content = obs["content"].as_str().unwrap();
    assert!(
        content.len() < 40_000,
        "observation of {} bytes",
        content.len()
    );
    assert!(
        content.contains("response clipped") && content.contains("done"),
        "tail kept"
    );
    assert!(
        out.peak_rss_mb < 100.0,
        "worker peak RSS {} MB",
        out.peak_rss_mb
    );
}

#[test]
fn secrets_never_reach_the_store() {
    let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4().simple());
    let mut b = Batch::new();
    b.env("FLEET_IT_TOKEN", &secret);
    let id = b.job(
        "secret",
        json!({"task": "print the token", "secrets": ["FLEET_IT_TOKEN"]}),
        json!({"steps": [
            {"tool": "terminal", "args": {"command": "echo token=$FLEET_IT_TOKEN && echo $FLEET_IT_TOKEN > leak.txt"}},
            {"tool": "finish", "args": {"message": "done"}}
        ]}),
    );
    let out = b.run();
    assert_eq!(out.result(&id)["outcome"], "succeeded");
    let events = b.store_text(&id, "events.jsonl");
    assert!(events.contains("token=<secret-hidden>"), "{events}");
    for (path, body) in b.all_store_files() {
        assert!(!body.contains(&secret), "secret found in {path}");
    }
    assert!(!out.stdout.contains(&secret) && !out.stderr.contains(&secret));
}

#[test]
fn unknown_image_fails_with_a_clear_error() {
    let mut b = Batch::new();
    // Not pulled: pulls and their errors are tests/it/images.rs.
    b.env("FLEET_IMAGE_PULL", "never");
    let id = b.job(
        "noimg",
        json!({"task": "t", "image": "agent-fleet/no-such-image:404"}),
        json!({"steps": [{"tool": "finish", "args": {"message": "x"}}]}),
    );
    let out = b.run();
    assert_eq!(out.code, 1);
    let r = out.result(&id);
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["error"]["kind"], "image_not_found");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agent-fleet/no-such-image:404")
    );
    assert!(out.stdout.contains("image_not_found"));
}

#[test]
fn file_editor_errors_are_observations() {
    let mut b = Batch::new();
    let input = b.input(&[("a.txt", "x\nx\n")]);
    let id = b.job(
        "editor",
        json!({"task": "edit", "input": {"path": input}}),
        json!({"steps": [
            {"tool": "file_editor", "args": {"command": "create", "path": "/workspace/a.txt", "file_text": "y"}},
            {"tool": "file_editor", "args": {"command": "str_replace", "path": "/workspace/a.txt", "old_str": "x", "new_str": "z"}},
            {"tool": "file_editor", "args": {"command": "str_replace", "path": "/workspace/a.txt", "old_str": "nope", "new_str": "z"}},
            {"tool": "file_editor", "args": {"command": "view", "path": "relative.txt"}},
            {"tool": "file_editor", "args": {"command": "view", "path": "/workspace/missing.txt"}},
            {"tool": "finish", "args": {"message": "done"}}
        ]}),
    );
    let r = b.run().result(&id);
    assert_eq!(r["outcome"], "succeeded");
    let events: Vec<serde_json::Value> = b
        .store_text(&id, "events.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let obs: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "ObservationEvent" && e["tool_name"] == "file_editor")
        .collect();
    assert_eq!(obs.len(), 5);
    assert!(obs.iter().all(|o| o["is_error"] == true), "{obs:?}");
    let text = |i: usize| obs[i]["content"].as_str().unwrap().to_string();
    assert!(text(0).contains("already exists"), "{}", text(0));
    assert!(
        text(1).contains("Multiple occurrences") && text(1).contains("[1, 2]"),
        "{}",
        text(1)
    );
    assert!(text(2).contains("did not appear verbatim"), "{}", text(2));
    assert!(text(3).contains("absolute path"), "{}", text(3));
    assert!(text(4).contains("does not exist"), "{}", text(4));
    assert!(!events.iter().any(|e| e["kind"] == "AgentErrorEvent"));
}

#[test]
fn a_batch_runs_concurrently_with_exit_code_one_when_any_fails() {
    let mut b = Batch::new();
    let ok: Vec<String> = (0..3)
        .map(|i| {
            b.job(
                &format!("ok{i}"),
                json!({"task": "t"}),
                json!({"steps": [{"text": "all done"}]}),
            )
        })
        .collect();
    let bad = b.job(
        "bad",
        json!({"task": "t", "limits": {"max_iterations": 1}}),
        json!({"steps": [{"tool": "think", "args": {"thought": "x"}}]}),
    );
    let out = b.run_with(&["--concurrency", "4"]);
    assert_eq!(out.code, 1);
    for id in &ok {
        assert_eq!(out.result(id)["outcome"], "succeeded");
    }
    assert_eq!(out.result(&bad)["outcome"], "max_iterations");
}

/// A tiny HTTP receiver on 127.0.0.1 answering 200 to every request; returns the
/// address and the bodies received.
fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut s = stream;
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            // Read the head, then the body by Content-Length.
            loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len = text[..i]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= i + 4 + len {
                        g.lock().unwrap().push(text[i + 4..].to_string());
                        break;
                    }
                }
            }
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (addr, got)
}

#[test]
fn completion_webhook_is_sent_after_results_are_stored() {
    let (addr, got) = receiver();
    let mut b = Batch::new();
    b.env("FLEET_IT_HOOK_SECRET", "hook-secret-value");
    let id = b.job(
        "hook",
        json!({"task": "t", "webhook": {"url": format!("http://{addr}/hook"), "secret_env": "FLEET_IT_HOOK_SECRET"}}),
        json!({"steps": [{"tool": "finish", "args": {"message": "done"}}]}),
    );
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let bodies = got.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let payload: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(payload["event"], "job.completed");
    assert_eq!(payload["job_id"], id.as_str());
    assert_eq!(payload["outcome"], "succeeded");
    let status: serde_json::Value =
        serde_json::from_str(&b.store_text(&id, "status.json")).unwrap();
    assert_eq!(status["webhooks"][0]["delivered"], true, "{status}");
    assert_eq!(status["webhooks"][0]["delivery_id"], payload["delivery_id"]);
}

#[test]
fn ctrl_c_cancels_running_and_queued_jobs_and_removes_containers() {
    let mut b = Batch::new();
    let slow = json!({"steps": [{"tool": "terminal", "args": {"command": "sleep 60"}}]});
    let running = b.job(
        "running",
        json!({"task": "t", "limits": {"command_timeout_secs": 120}}),
        slow.clone(),
    );
    let queued = b.job("queued", json!({"task": "t"}), slow);
    b.interrupt_after = Some(std::time::Duration::from_secs(4));
    let out = b.run_with(&["--concurrency", "1"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let r = out.result(&running);
    assert_eq!(r["outcome"], "cancelled", "{r}");
    assert!(r["duration_secs"].as_f64().unwrap() < 30.0);
    assert_eq!(out.result(&queued)["outcome"], "cancelled");
    for id in [&running, &queued] {
        let status: serde_json::Value =
            serde_json::from_str(&b.store_text(id, "status.json")).unwrap();
        assert_eq!(status["state"], "cancelled");
        assert!(b.store_file(id, "patch.diff").is_some());
        assert_eq!(containers_for(id), 0, "container left for {id}");
    }
}
