//! The agent as real models meet it, end to end: `fleet run` (the real binary,
//! real Docker containers) against the scripted LLM started here, in the test
//! process, with its request log on. What the fleet sent is read from that log
//! — the scripted LLM's own record — not from the fleet's events.

use std::path::PathBuf;

use agent_fleet::mock_llm::{MockLlm, MockOptions};
use serde_json::{Value, json};

use crate::util::{Batch, RunOutput};

/// A batch whose jobs talk to a scripted LLM of this process.
struct Scripted {
    batch: Batch,
    mock: MockLlm,
    log: PathBuf,
}

impl Scripted {
    async fn new() -> Scripted {
        let batch = Batch::new();
        let log = batch.dir.path().join("requests.jsonl");
        let mock = MockLlm::start_with(
            batch.dir.path().join("scripts"),
            "127.0.0.1:0".parse().unwrap(),
            MockOptions {
                request_log: Some(log.clone()),
            },
        )
        .await
        .expect("scripted LLM");
        Scripted { batch, mock, log }
    }

    /// Adds a job whose model is `name-<suffix>` (so `claude-…` and `gpt-…`
    /// names pick those families), pointed at this process's scripted LLM.
    fn job(&mut self, name: &str, mut job: Value, script: Value) -> String {
        let llm = job
            .as_object_mut()
            .unwrap()
            .entry("llm")
            .or_insert(json!({}));
        llm["base_url"] = self.mock.base_url().into();
        self.batch.job(name, job, script)
    }

    async fn run(&self) -> RunOutput {
        let batch = &self.batch;
        // `fleet run` blocks; the scripted LLM answers on this runtime meanwhile.
        tokio::task::block_in_place(|| batch.run())
    }

    /// The requests the scripted LLM received for `model`, in order. Every
    /// request the fleet sends carries an output-token limit: checked here, for
    /// all of them.
    fn requests(&self, model: &str) -> Vec<Value> {
        let reqs: Vec<Value> = std::fs::read_to_string(&self.log)
            .expect("request log")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("log line"))
            .filter(|l| l["model"] == model)
            .collect();
        for r in &reqs {
            let body = &r["request"];
            let limit = body["max_tokens"]
                .as_u64()
                .or(body["max_completion_tokens"].as_u64());
            assert!(
                limit.is_some_and(|n| n > 0),
                "no output-token limit: {body}"
            );
        }
        reqs
    }

    fn result(&self, out: &RunOutput, id: &str) -> Value {
        out.result(id)
    }

    fn metrics(&self, id: &str) -> Value {
        serde_json::from_str(&self.batch.store_text(id, "metrics.json")).unwrap()
    }
}

/// The text of every message of a request, joined (content parts included).
fn all_text(request: &Value) -> String {
    request["request"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn system_text(request: &Value) -> String {
    let m = &request["request"]["messages"][0];
    assert_eq!(m["role"], "system");
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts[0]["text"].as_str().unwrap().to_string(),
        other => panic!("system content {other}"),
    }
}

fn think(t: &str) -> Value {
    json!({"tool": "think", "args": {"thought": t}})
}

#[tokio::test(flavor = "multi_thread")]
async fn tolerant_tool_calls_and_summaries_that_do_not_hide_a_repeat() {
    let mut s = Scripted::new().await;
    let tolerant = s.job(
        "tolerant",
        json!({"task": "write two files"}),
        json!({"steps": [
            {"tool": "execute_bash", "args": {"command": "echo hi > a.txt", "summary": "write a", "security_risk": "LOW"}},
            {"tool": "str_replace_editor", "args": {"path": "/workspace/b.txt", "file_text": "from the editor\n", "summary": "create b", "security_risk": "MEDIUM"}},
            {"tool": "bash", "args": {"command": "cat a.txt b.txt", "timeout": "30", "summary": "check"}},
            {"tool": "file_editor", "args": {"path": "/workspace/missing.txt"}},
            {"tool": "finish", "args": {"message": "done", "summary": "finish"}}
        ]}),
    );
    let repeat = s.job(
        "repeat",
        json!({"task": "look around"}),
        json!({"steps": [
            {"tool": "terminal", "args": {"command": "ls /", "summary": "list the root"}},
            {"tool": "terminal", "args": {"command": "ls /", "summary": "look at the root again"}},
            {"tool": "terminal", "args": {"command": "ls /", "summary": "one more look"}},
            {"tool": "terminal", "args": {"command": "ls /", "summary": "and again"}},
            {"tool": "finish", "args": {"message": "never reached"}}
        ]}),
    );
    let out = s.run().await;

    let r = s.result(&out, &tolerant);
    assert_eq!(r["outcome"], "succeeded", "{}", out.stderr);
    let reqs = s.requests(&tolerant);
    assert_eq!(reqs.len(), 5);
    // An error observation reaches the model under the marker line.
    let last_msg = reqs[4]["request"]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last_msg["role"], "tool");
    let content = last_msg["content"].as_str().unwrap();
    assert!(
        content.starts_with("[The tool call failed; the error follows.]\n"),
        "{content}"
    );
    // What the model got back after `bash cat a.txt b.txt`: both files, made by
    // the old-named tools, and no error marker anywhere.
    let last = all_text(&reqs[3]);
    assert!(last.contains("hi\nfrom the editor"), "{last}");
    assert!(!last.contains("[The tool call failed"), "{last}");
    // The history sent back uses the current names, without summary/risk.
    let calls: Vec<&Value> = reqs[3]["request"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["tool_calls"].as_array().into_iter().flatten())
        .collect();
    let names: Vec<&str> = calls
        .iter()
        .map(|c| c["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["terminal", "file_editor", "terminal"]);
    assert!(calls.iter().all(|c| {
        !c["function"]["arguments"]
            .as_str()
            .unwrap()
            .contains("summary")
    }));
    // Summaries are kept on the actions in the log.
    let events = s.batch.store_text(&tolerant, "events.jsonl");
    assert!(
        events.contains(r#""summary":"write a""#) && events.contains(r#""security_risk":"MEDIUM""#)
    );

    let r = s.result(&out, &repeat);
    assert_eq!(r["outcome"], "stuck");
    assert_eq!(r["stuck_pattern"], "action_observation");
    // Stuck before a fifth request was ever sent.
    assert_eq!(s.requests(&repeat).len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn repository_and_job_instructions_reach_the_first_request() {
    let mut s = Scripted::new().await;
    let big = "x".repeat(200 * 1024);
    let input = s.batch.input(&[
        (
            "AGENTS.md",
            "# Agents\nAlways run `make check` (AGENTS-MARKER).\n",
        ),
        (".openhands/microagents/repo.md", "REPO-MD-MARKER\n"),
        (
            ".openhands/skills/deploy.md",
            "---\nname: deploying\ntriggers: [deploy]\n---\nDEPLOY-GUIDE-MARKER\n",
        ),
        (
            ".openhands/skills/unused.md",
            "---\ntriggers: [kubernetes]\n---\nUNUSED-MARKER\n",
        ),
        (
            ".openhands/skills/broken.md",
            "---\ntriggers: [deploy\n---\nBROKEN-MARKER\n",
        ),
        (".agents/skills/style.md", "STYLE-MARKER\n"),
        (
            ".agents/skills/release/SKILL.md",
            "---\ndescription: Cutting a release\n---\nRELEASE-MARKER\n",
        ),
        (".agents/skills/huge.md", &big),
    ]);
    // A skill that is a link to a file outside the repository is never read
    // (/etc/passwd: present in every image, so its absence below means something).
    std::os::unix::fs::symlink(
        "/etc/passwd",
        PathBuf::from(&input).join(".agents/skills/passwd.md"),
    )
    .unwrap();
    // Nor is a linked AGENTS.md, even named again by a file name with a newline.
    let hostile = s
        .batch
        .input(&[(".openhands/skills/x\nAGENTS.md", "NEWLINE-NAME-MARKER\n")]);
    std::os::unix::fs::symlink("/etc/passwd", PathBuf::from(&hostile).join("AGENTS.md")).unwrap();
    let hostile_id = s.job(
        "instructions-hostile",
        json!({"task": "t", "input": {"path": hostile}}),
        json!({"steps": [{"tool": "finish", "args": {"message": "ok"}}]}),
    );
    s.batch.env("AGENT_TEST_TOKEN", "s3cr3t-value-123");
    let id = s.job(
        "instructions",
        json!({"task": "Please deploy the service.", "input": {"path": input},
               "instructions": "JOB-PLAYBOOK-MARKER: keep commits small.",
               "secrets": ["AGENT_TEST_TOKEN"]}),
        json!({"steps": [{"tool": "finish", "args": {"message": "ok"}}]}),
    );
    let out = s.run().await;
    assert_eq!(
        s.result(&out, &id)["outcome"],
        "succeeded",
        "{}",
        out.stderr
    );
    let reqs = s.requests(&id);
    let first = &reqs[0];
    let system = system_text(first);
    for marker in [
        "AGENTS-MARKER",
        "REPO-MD-MARKER",
        "STYLE-MARKER",
        "JOB-PLAYBOOK-MARKER",
        "`AGENT_TEST_TOKEN`",
    ] {
        assert!(
            system.contains(marker),
            "{marker} missing from the system prompt:\n{system}"
        );
    }
    // Listed, not inlined: the AgentSkills file and the keyword skills.
    assert!(
        system.contains("release (.agents/skills/release/SKILL.md): Cutting a release"),
        "{system}"
    );
    assert!(!system.contains("RELEASE-MARKER") && !system.contains("UNUSED-MARKER"));
    // Skipped with a note naming the file and the problem.
    assert!(
        system.contains(".openhands/skills/broken.md: frontmatter is not valid YAML"),
        "{system}"
    );
    assert!(
        system.contains(".agents/skills/huge.md: 204800 bytes is over"),
        "{system}"
    );
    assert!(
        !system.contains("BROKEN-MARKER")
            && !system.contains("passwd")
            && !system.contains("root:x:")
    );
    assert_eq!(s.result(&out, &hostile_id)["outcome"], "succeeded");
    let hostile_system = system_text(&s.requests(&hostile_id)[0]);
    assert!(!hostile_system.contains("root:x:"), "{hostile_system}");
    assert!(
        !hostile_system.contains("NEWLINE-NAME-MARKER"),
        "{hostile_system}"
    );
    let text = all_text(first);
    assert!(!text.contains("s3cr3t-value-123"));
    // The task mentions `deploy`: that skill is in the first request too.
    assert!(text.contains("DEPLOY-GUIDE-MARKER"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_carry_caching_and_output_limits_and_cached_tokens_are_priced() {
    let mut s = Scripted::new().await;
    let usage_openai = json!({"prompt_tokens": 1000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 800}});
    let gpt = s.job(
        "gpt-cache",
        json!({"task": "t", "llm": {"temperature": 0.2,
               "price": {"input_per_mtok": 2.0, "output_per_mtok": 10.0, "cache_read_per_mtok": 0.5}}}),
        json!({"steps": [think("a"), {"tool": "finish", "args": {"message": "ok"}}], "usage": usage_openai}),
    );
    let usage_anthropic = json!({"prompt_tokens": 2000, "completion_tokens": 50,
                                 "cache_read_input_tokens": 1500, "cache_creation_input_tokens": 400});
    let claude = s.job(
        "claude-cache",
        json!({"task": "t", "llm": {"max_output_tokens": 4000, "reasoning_effort": "low",
               "price": {"input_per_mtok": 3.0, "output_per_mtok": 15.0,
                         "cache_read_per_mtok": 0.3, "cache_write_per_mtok": 3.75}}}),
        json!({"steps": [think("a"), think("b"), {"tool": "finish", "args": {"message": "ok"}}], "usage": usage_anthropic}),
    );
    let out = s.run().await;
    for id in [&gpt, &claude] {
        assert_eq!(s.result(&out, id)["outcome"], "succeeded", "{}", out.stderr);
    }

    let reqs = s.requests(&gpt);
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        let body = &r["request"];
        assert_eq!(body["prompt_cache_key"], format!("fleet-{gpt}"));
        assert_eq!(body["max_completion_tokens"], 8192);
        assert_eq!(body["temperature"], 0.2);
        assert!(
            body["messages"][0]["content"].is_string(),
            "no cache marks for OpenAI"
        );
    }
    // 200 fresh × $2 + 800 cached × $0.5 + 100 out × $10, per million, twice.
    let r = s.result(&out, &gpt);
    assert!(
        (r["cost_usd"].as_f64().unwrap() - 2.0 * 1800.0 / 1e6).abs() < 1e-9,
        "{r}"
    );
    assert_eq!(r["tokens"]["cache_read"], 1600);
    let m = s.metrics(&gpt);
    assert_eq!(m["llm"]["cache_read_tokens"], 1600);

    let reqs = s.requests(&claude);
    assert_eq!(reqs.len(), 3);
    for (i, r) in reqs.iter().enumerate() {
        let body = &r["request"];
        assert_eq!(body["max_tokens"], 4000);
        assert!(body.get("prompt_cache_key").is_none() && body.get("temperature").is_none());
        assert_eq!(
            body["thinking"],
            json!({"type": "enabled", "budget_tokens": 2000})
        );
        let msgs = body["messages"].as_array().unwrap();
        assert_eq!(
            msgs[0]["content"][0]["cache_control"]["type"], "ephemeral",
            "request {i}"
        );
        let last = msgs.last().unwrap();
        assert_eq!(
            last["content"][0]["cache_control"]["type"], "ephemeral",
            "request {i}: {last}"
        );
    }
    // 100 fresh × $3 + 1500 read × $0.3 + 400 written × $3.75 + 50 out × $15, three times.
    let r = s.result(&out, &claude);
    let want = 3.0 * (300.0 + 450.0 + 1500.0 + 750.0) / 1e6;
    assert!((r["cost_usd"].as_f64().unwrap() - want).abs() < 1e-9, "{r}");
    let m = s.metrics(&claude);
    assert_eq!(
        (
            m["tokens"]["cache_read"].as_u64(),
            m["tokens"]["cache_write"].as_u64()
        ),
        (Some(4500), Some(1200))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prompt_too_long_is_condensed_with_an_llm_summary_and_the_job_succeeds() {
    let mut s = Scripted::new().await;
    let mut steps: Vec<Value> = (1..=6)
        .map(|i| json!({"tool": "terminal", "args": {"command": format!("echo step-{i}")}}))
        .collect();
    // Step 7 overflows once, in Anthropic's words.
    steps.push(json!({"fail": {"context_length": "anthropic"}, "tool": "terminal", "args": {"command": "echo after"}}));
    steps.push(json!({"tool": "finish", "args": {"message": "done"}}));
    let overflow = s.job(
        "claude-overflow",
        json!({"task": "count"}),
        json!({"steps": steps, "step_by": "served", "summary": "LLM-SUMMARY-MARKER: echoed steps 1 to 6"}),
    );
    // The window trigger: a prompt of 190k tokens on a 200k Claude window.
    let mut steps: Vec<Value> = (1..=6)
        .map(|i| json!({"tool": "terminal", "args": {"command": format!("echo w{i}")}}))
        .collect();
    steps[5]["usage"] = json!({"prompt_tokens": 190000, "completion_tokens": 10});
    steps.push(json!({"tool": "finish", "args": {"message": "done"}}));
    let window = s.job(
        "claude-window",
        json!({"task": "count"}),
        json!({"steps": steps, "step_by": "served", "summary": "WINDOW-SUMMARY-MARKER"}),
    );
    // `llm.condenser_model`: the summary is asked of another model.
    let condenser = format!(
        "condenser-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    std::fs::write(
        s.batch.dir.path().join(format!("scripts/{condenser}.json")),
        json!({"steps": [{"text": "not a summary request"}], "summary": "CONDENSER-MODEL-SUMMARY"})
            .to_string(),
    )
    .unwrap();
    let mut steps: Vec<Value> = (1..=6)
        .map(|i| json!({"tool": "terminal", "args": {"command": format!("echo c{i}")}}))
        .collect();
    steps.push(json!({"fail": {"context_length": "openai"}, "tool": "finish", "args": {"message": "done"}}));
    let other = s.job(
        "gpt-condensed",
        json!({"task": "count", "llm": {"condenser_model": condenser}}),
        json!({"steps": steps, "step_by": "served"}),
    );
    let out = s.run().await;

    let r = s.result(&out, &other);
    assert_eq!(r["outcome"], "succeeded", "{}", out.stderr);
    let asked = s.requests(&condenser);
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["kind"], "summary");
    assert!(all_text(s.requests(&other).last().unwrap()).contains("CONDENSER-MODEL-SUMMARY"));

    let r = s.result(&out, &overflow);
    assert_eq!(r["outcome"], "succeeded", "{}", out.stderr);
    let reqs = s.requests(&overflow);
    let kinds: Vec<&str> = reqs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "step", "step", "step", "step", "step", "step", "failure", "summary", "step", "step"
        ]
    );
    assert!(reqs[6]["status"] == 400);
    // The summary request holds the forgotten commands; the retried step has
    // the LLM's summary in place of them, and fewer messages.
    let summary_req = all_text(&reqs[7]);
    assert!(summary_req.contains("echo step-2"), "{summary_req}");
    let retried = all_text(&reqs[8]);
    assert!(retried.contains("LLM-SUMMARY-MARKER"), "{retried}");
    assert!(!retried.contains("echo step-2"), "{retried}");
    let before = reqs[6]["request"]["messages"].as_array().unwrap().len();
    let after = reqs[8]["request"]["messages"].as_array().unwrap().len();
    assert!(after < before, "{after} < {before}");

    let r = s.result(&out, &window);
    assert_eq!(r["outcome"], "succeeded", "{}", out.stderr);
    let kinds: Vec<String> = s
        .requests(&window)
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "step", "step", "step", "step", "step", "step", "summary", "step"
        ]
    );
    assert!(all_text(&s.requests(&window)[7]).contains("WINDOW-SUMMARY-MARKER"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_job_runs_through_text_tool_calls() {
    let mut s = Scripted::new().await;
    let id = s.job(
        "text-calls",
        json!({"task": "make a file", "llm": {"native_tools": false}}),
        json!({"text_calls": true, "steps": [
            {"text": "I will write the file.", "tool": "terminal", "args": {"command": "printf 'line one\\nline two\\n' > notes.txt"}},
            {"tool": "file_editor", "args": {"command": "view", "path": "/workspace/notes.txt", "view_range": [2, 2]}},
            {"tool": "finish", "args": {"message": "wrote notes.txt"}}
        ]}),
    );
    let out = s.run().await;
    let r = s.result(&out, &id);
    assert_eq!(r["outcome"], "succeeded", "{}", out.stderr);
    assert_eq!(r["final_message"], "wrote notes.txt");
    let reqs = s.requests(&id);
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert!(
            r["request"].get("tools").is_none(),
            "no native tools are sent"
        );
        assert!(system_text(r).contains("<function=FUNCTION_NAME>"));
    }
    // The results came back as text, from the calls the model wrote as text:
    // the editor saw the file the terminal made, and `view_range` (sent as the
    // text "[2, 2]") was coerced to a list.
    let last = all_text(&reqs[2]);
    assert!(last.contains("EXECUTION RESULT of [terminal]:"), "{last}");
    assert!(
        last.contains("EXECUTION RESULT of [file_editor]:"),
        "{last}"
    );
    let viewed = last
        .split("EXECUTION RESULT of [file_editor]:")
        .nth(1)
        .unwrap();
    assert!(
        viewed.contains("2\tline two") && !viewed.contains("line one"),
        "{viewed}"
    );
    assert!(
        last.contains("<function=terminal>"),
        "the model's own calls are replayed as text: {last}"
    );
    let patch = s.batch.store_text(&id, "patch.diff");
    assert!(patch.contains("+line one"), "{patch}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reasoning_and_thinking_blocks_go_back_where_the_provider_needs_them() {
    let mut s = Scripted::new().await;
    let block =
        json!({"type": "thinking", "thinking": "I should look first.", "signature": "sig-abc"});
    let script = json!({"steps": [
        {"tool": "terminal", "args": {"command": "true"}, "reasoning": "REASONING-MARKER", "thinking_blocks": [block]},
        {"tool": "finish", "args": {"message": "ok"}}
    ]});
    let deepseek = s.job("deepseek-reasoner", json!({"task": "t"}), script.clone());
    let claude = s.job("claude-think", json!({"task": "t"}), script);
    let out = s.run().await;
    for id in [&deepseek, &claude] {
        assert_eq!(s.result(&out, id)["outcome"], "succeeded", "{}", out.stderr);
    }
    let assistant = |id: &str| {
        let reqs = s.requests(id);
        reqs[1]["request"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["role"] == "assistant")
            .cloned()
            .unwrap()
    };
    let a = assistant(&deepseek);
    assert_eq!(a["reasoning_content"], "REASONING-MARKER", "{a}");
    let a = assistant(&claude);
    assert!(a.get("reasoning_content").is_none(), "{a}");
    assert_eq!(a["thinking_blocks"][0]["signature"], "sig-abc", "{a}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_built_in_price_table_makes_a_budget_trip_without_configuration() {
    let mut s = Scripted::new().await;
    // Model `gpt-4o-<suffix>`: $2.50 per million input tokens from the table,
    // so 100k prompt tokens cost $0.25 a step and a $0.50 budget lasts two.
    let id = s.job(
        "gpt-4o",
        json!({"task": "t", "limits": {"max_cost_usd": 0.5}}),
        json!({"steps": [think("a"), think("b"), think("c"), {"tool": "finish", "args": {"message": "ok"}}],
               "usage": {"prompt_tokens": 100000, "completion_tokens": 0}}),
    );
    let out = s.run().await;
    let r = s.result(&out, &id);
    assert_eq!(r["outcome"], "budget_exceeded", "{r}");
    assert_eq!(r["steps"], 2);
    assert!((r["cost_usd"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{r}");
    assert_eq!(s.requests(&id).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_mock_llm_keeps_a_request_log() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.json"),
        r#"{"steps": [{"text": "hello"}]}"#,
    )
    .unwrap();
    let log = dir.path().join("log.jsonl");
    let mut child = std::process::Command::new(crate::util::fleet())
        .args(["mock-llm", "--addr", "127.0.0.1:0", "--scripts"])
        .arg(dir.path())
        .arg("--request-log")
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn fleet mock-llm");
    let stdout = child.stdout.take().unwrap();
    // Ends the server whatever happens below.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: signalling the child this test started, by its pid.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
            let _ = self.0.wait();
        }
    }
    let server = Stop(child);
    let mut url = String::new();
    std::io::BufReader::new(stdout).read_line(&mut url).unwrap();
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
    let resp = reqwest::Client::new()
        .post(format!("{}/chat/completions", url.trim()))
        .json(&body)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(server);
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            line["model"].as_str(),
            line["kind"].as_str(),
            line["step"].as_u64(),
            line["status"].as_u64()
        ),
        (Some("m"), Some("step"), Some(0), Some(200))
    );
    assert_eq!(line["request"], body);
}
