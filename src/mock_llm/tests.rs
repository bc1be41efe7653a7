//! Unit tests of the request handler, called directly (no socket); the
//! integration tests drive the real server with the real client.

use super::*;

fn server(dir: &std::path::Path) -> Arc<Server> {
    Arc::new(Server {
        scripts: ScriptCache::new(dir.to_path_buf()),
        fails: FailCounters::new(100),
        served: ServedCounters::new(100),
        request_log: None,
        shutdown: CancellationToken::new(),
        next_id: AtomicU64::new(1),
    })
}

fn request(model: &str, task: &str, assistant_turns: usize) -> Bytes {
    let mut messages = vec![
        serde_json::json!({"role": "system", "content": "sys"}),
        serde_json::json!({"role": "user", "content": task}),
    ];
    for i in 0..assistant_turns {
        messages.push(serde_json::json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("c{i}"), "type": "function", "function": {"name": "t", "arguments": "{}"}}]}));
        messages.push(
            serde_json::json!({"role": "tool", "tool_call_id": format!("c{i}"), "content": "ok"}),
        );
    }
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({"model": model, "messages": messages})).unwrap(),
    )
}

async fn call(s: &Arc<Server>, body: Bytes) -> (u16, Option<String>, Value) {
    let resp = complete(State(s.clone()), body).await;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, retry_after, serde_json::from_slice(&bytes).unwrap())
}

fn write(dir: &std::path::Path, model: &str, script: &str) {
    std::fs::write(dir.join(format!("{model}.json")), script).unwrap();
}

#[tokio::test]
async fn serves_steps_by_assistant_count() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "m",
        r#"{"steps": [
            {"tool": "terminal", "args": {"command": "ls"}},
            {"calls": [{"tool": "think", "args": {"thought": "x"}}, {"tool": "finish", "args": {"message": "m"}}]},
            {"text": "bye"}
        ], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}"#,
    );
    let s = server(dir.path());
    let (st, _, v) = call(&s, request("m", "t", 0)).await;
    assert_eq!(st, 200);
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    assert_eq!(msg["tool_calls"][0]["id"], "call_0_0");
    assert_eq!(msg["tool_calls"][0]["function"]["name"], "terminal");
    assert_eq!(
        msg["tool_calls"][0]["function"]["arguments"],
        r#"{"command":"ls"}"#
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["usage"],
        serde_json::json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
    );

    let (_, _, v) = call(&s, request("m", "t", 1)).await;
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["id"], "call_1_1");

    let (_, _, v) = call(&s, request("m", "t", 2)).await;
    assert_eq!(v["choices"][0]["message"]["content"], "bye");
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let (st, _, v) = call(&s, request("m", "t", 3)).await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["code"], "script_exhausted");
}

#[tokio::test]
async fn failures_are_counted_per_conversation() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "m",
        r#"{"steps": [{"fail": {"status": 429, "times": 2, "retry_after_secs": 3}, "text": "ok"}]}"#,
    );
    let s = server(dir.path());
    for _ in 0..2 {
        let (st, ra, v) = call(&s, request("m", "task a", 0)).await;
        assert_eq!((st, ra.as_deref()), (429, Some("3")));
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }
    assert_eq!(call(&s, request("m", "task a", 0)).await.0, 200);
    assert_eq!(call(&s, request("m", "task a", 0)).await.0, 200);
    // Another task is another conversation with its own count.
    assert_eq!(call(&s, request("m", "task b", 0)).await.0, 429);
}

#[tokio::test]
async fn extension_failures() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "m",
        r#"{"steps": [
            {"fail": {"status": 400, "code": "context_length_exceeded"}, "text": "fits now"},
            {"fail": {"status": 200}, "empty": true}
        ]}"#,
    );
    let s = server(dir.path());
    let (st, _, v) = call(&s, request("m", "t", 0)).await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length")
    );
    assert_eq!(
        call(&s, request("m", "t", 0)).await.2["choices"][0]["message"]["content"],
        "fits now"
    );

    let (st, _, v) = call(&s, request("m", "t", 1)).await;
    assert_eq!(st, 200);
    assert_eq!(v["choices"], serde_json::json!([]));
    let (_, _, v) = call(&s, request("m", "t", 1)).await;
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
}

#[tokio::test]
async fn bad_requests_get_400_and_unknown_models_404() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "broken", r#"{"steps": [{"txt": "typo"}]}"#);
    let s = server(dir.path());
    for body in [
        "",
        "not json",
        "{}",
        r#"{"model": 5}"#,
        r#"{"model": "m", "messages": "x"}"#,
    ] {
        let (st, _, v) = call(&s, Bytes::from(body)).await;
        assert_eq!(st, 400, "{body}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    for model in ["../etc/passwd", "a/b", ".."] {
        assert_eq!(call(&s, request(model, "t", 0)).await.0, 400, "{model}");
    }
    let (st, _, v) = call(&s, request("nope", "t", 0)).await;
    assert_eq!(st, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    let (st, _, v) = call(&s, request("broken", "t", 0)).await;
    assert_eq!(st, 500);
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("broken.json") && m.contains("unknown field `txt`"),
        "{m}"
    );
}

#[tokio::test]
async fn keyed_by_the_first_user_message_in_parts() {
    let messages = vec![
        IncomingMessage {
            role: "system".into(),
            content: Some(Value::from("s")),
        },
        IncomingMessage {
            role: "user".into(),
            content: Some(serde_json::json!([{"type": "text", "text": "task"}])),
        },
        IncomingMessage {
            role: "user".into(),
            content: Some(Value::from("later")),
        },
    ];
    assert_eq!(first_user_message(&messages), "task");
    assert_eq!(first_user_message(&messages[..1]), "");
}

#[tokio::test]
async fn delays_end_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "slow",
        r#"{"steps": [{"delay_ms": 60000, "text": "late"}]}"#,
    );
    let s = server(dir.path());
    s.shutdown.cancel();
    let started = std::time::Instant::now();
    assert_eq!(call(&s, request("slow", "t", 0)).await.0, 503);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn summary_requests_text_calls_served_steps_and_provider_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "m",
        r#"{"steps": [
            {"tool": "terminal", "args": {"command": "ls", "timeout": 5}, "usage": {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 8}}},
            {"fail": {"context_length": "anthropic"}, "text": "done"}
        ], "summary": "SUMMARY TEXT", "step_by": "served", "text_calls": true}"#,
    );
    let log = dir.path().join("requests.jsonl");
    let mut s = server(dir.path());
    Arc::get_mut(&mut s).unwrap().request_log = Some(RequestLog::create(&log).unwrap());
    let (st, _, v) = call(&s, request("m", "t", 0)).await;
    assert_eq!(st, 200);
    let msg = &v["choices"][0]["message"];
    assert!(msg.get("tool_calls").is_none());
    assert_eq!(
        msg["content"],
        "<function=terminal>\n<parameter=command>ls</parameter>\n<parameter=timeout>5</parameter>\n</function>"
    );
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 8);
    // Served counting: the same request (no assistant message) is now step 1,
    // which fails once in Anthropic's words.
    let (st, _, v) = call(&s, request("m", "t", 0)).await;
    assert_eq!(st, 400);
    assert_eq!(
        v["error"]["message"],
        "prompt is too long: 208310 tokens > 200000 maximum"
    );
    // A summary request is answered from `summary` and does not advance.
    let summary = Bytes::from(
        serde_json::to_vec(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "summarise"}]})).unwrap(),
    );
    let (st, _, v) = call(&s, summary).await;
    assert_eq!(
        (st, v["choices"][0]["message"]["content"].as_str()),
        (200, Some("SUMMARY TEXT"))
    );
    let (st, _, v) = call(&s, request("m", "t", 0)).await;
    assert_eq!(
        (st, v["choices"][0]["message"]["content"].as_str()),
        (200, Some("done"))
    );
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(&str, u64)> = lines
        .iter()
        .map(|l| (l["kind"].as_str().unwrap(), l["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("step", 200),
            ("failure", 400),
            ("summary", 200),
            ("step", 200)
        ]
    );
    assert_eq!(lines[0]["request"]["messages"][1]["content"], "t");
}
