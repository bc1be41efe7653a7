//! The LLM client against the scripted server: both real, over a socket on
//! 127.0.0.1, scripts in a temporary directory. Backoffs are tiny so retries are
//! quick; the one test about `Retry-After` allows a long enough cap to honour it.

use std::time::{Duration, Instant};

use agent_fleet::job::Price;
use agent_fleet::llm::{ChatMessage, LlmClient, LlmError, LlmSettings, Role};
use agent_fleet::mock_llm::MockLlm;
use agent_fleet::telemetry::metrics;

struct Fixture {
    mock: MockLlm,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A server with one script per `(model, json)`.
    async fn new(scripts: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for (model, json) in scripts {
            std::fs::write(dir.path().join(format!("{model}.json")), json).unwrap();
        }
        let mock = MockLlm::start(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        Fixture { mock, dir }
    }

    fn settings(&self, model: &str) -> LlmSettings {
        let mut s = LlmSettings::new(model, self.mock.base_url());
        s.request_timeout = Duration::from_secs(5);
        s.max_attempts = 5;
        s.min_backoff = Duration::from_millis(10);
        s.max_backoff = Duration::from_millis(50);
        s
    }

    fn client(&self, model: &str) -> LlmClient {
        LlmClient::new(reqwest::Client::new(), self.settings(model))
    }
}

fn conversation(task: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::text(Role::System, "You are a test agent."),
        ChatMessage::text(Role::User, task),
    ]
}

/// Appends the assistant's reply and a result for each of its tool calls, as the
/// agent does, so the next request asks for the next step.
fn answer(messages: &mut Vec<ChatMessage>, reply: ChatMessage) {
    let results: Vec<ChatMessage> = reply
        .tool_calls
        .iter()
        .map(|c| ChatMessage::tool_result(&c.id, &c.function.name, "ok"))
        .collect();
    messages.push(reply);
    messages.extend(results);
}

const TWO_STEPS: &str = r#"{"steps": [
    {"tool": "terminal", "args": {"command": "echo hello > hello.txt"}},
    {"text": "all done"}
]}"#;

#[tokio::test]
async fn tool_call_is_served_by_step_count() {
    let f = Fixture::new(&[("two", TWO_STEPS)]).await;
    let client = f.client("two");
    let c = client
        .complete(&conversation("say hello"), &[])
        .await
        .unwrap();
    assert_eq!(c.message.role, Role::Assistant);
    assert_eq!(c.message.tool_calls.len(), 1);
    let call = &c.message.tool_calls[0];
    assert_eq!(call.function.name, "terminal");
    assert_eq!(call.kind, "function");
    let args: serde_json::Value = serde_json::from_str(&call.function.arguments).unwrap();
    assert_eq!(
        args,
        serde_json::json!({"command": "echo hello > hello.txt"})
    );
    // The same conversation asked again is the same step.
    let again = client
        .complete(&conversation("say hello"), &[])
        .await
        .unwrap();
    assert_eq!(again.message.tool_calls, c.message.tool_calls);
    assert_eq!(client.stats().requests, 2);
}

#[tokio::test]
async fn text_reply_after_a_tool_call() {
    let f = Fixture::new(&[("two", TWO_STEPS)]).await;
    let client = f.client("two");
    let mut messages = conversation("say hello");
    let tool = serde_json::json!({"type": "function", "function": {"name": "terminal", "parameters": {"type": "object"}}});
    let first = client
        .complete(&messages, std::slice::from_ref(&tool))
        .await
        .unwrap();
    answer(&mut messages, first.message);
    let second = client.complete(&messages, &[tool]).await.unwrap();
    assert_eq!(second.message.content.as_deref(), Some("all done"));
    assert!(second.message.tool_calls.is_empty());
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let f = Fixture::new(&[(
        "flaky",
        r#"{"steps": [{"fail": {"status": 503, "times": 2}, "text": "finally"}]}"#,
    )])
    .await;
    let retried_before = metrics().llm_requests.with_label_values(&["retried"]).get();
    let client = f.client("flaky");
    let c = client.complete(&conversation("t"), &[]).await.unwrap();
    assert_eq!(c.message.content.as_deref(), Some("finally"));
    let s = client.stats();
    assert_eq!(
        (s.requests, s.retries, s.failures, s.rate_limited),
        (3, 2, 0, 0)
    );
    assert!(metrics().llm_requests.with_label_values(&["retried"]).get() >= retried_before + 2);
}

#[tokio::test]
async fn exhausted_retries_are_unavailable() {
    let f = Fixture::new(&[(
        "down",
        r#"{"steps": [{"fail": {"status": 502, "times": 100}, "text": "never"}]}"#,
    )])
    .await;
    let mut settings = f.settings("down");
    settings.max_attempts = 3;
    let client = LlmClient::new(reqwest::Client::new(), settings);
    let e = client.complete(&conversation("t"), &[]).await.unwrap_err();
    assert!(
        matches!(
            e,
            LlmError::Unavailable {
                attempts: 3,
                status: Some(502),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.retryable());
    let s = client.stats();
    assert_eq!((s.requests, s.retries, s.failures), (3, 2, 1));
}

#[tokio::test]
async fn empty_choices_are_retried() {
    let f = Fixture::new(&[(
        "hiccup",
        r#"{"steps": [{"fail": {"status": 200, "times": 1}, "text": "here"}]}"#,
    )])
    .await;
    let client = f.client("hiccup");
    let c = client.complete(&conversation("t"), &[]).await.unwrap();
    assert_eq!(c.message.content.as_deref(), Some("here"));
    assert_eq!(client.stats().retries, 1);
}

#[tokio::test]
async fn auth_failure_is_not_retried() {
    let f = Fixture::new(&[(
        "locked",
        r#"{"steps": [{"fail": {"status": 401, "times": 5}, "text": "x"}]}"#,
    )])
    .await;
    let client = f.client("locked");
    let e = client.complete(&conversation("t"), &[]).await.unwrap_err();
    assert!(matches!(e, LlmError::Auth { status: 401, .. }), "{e:?}");
    assert!(!e.retryable());
    let s = client.stats();
    assert_eq!((s.requests, s.retries, s.failures), (1, 0, 1));
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let f = Fixture::new(&[(
        "limited",
        r#"{"steps": [{"fail": {"status": 429, "times": 1, "retry_after_secs": 1}, "text": "ok"}]}"#,
    )])
    .await;
    let mut settings = f.settings("limited");
    // Retry-After is capped at twice max_backoff; leave room for one second.
    settings.max_backoff = Duration::from_secs(1);
    let client = LlmClient::new(reqwest::Client::new(), settings);
    let started = Instant::now();
    let c = client.complete(&conversation("t"), &[]).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited only {:?}",
        started.elapsed()
    );
    assert_eq!(c.message.content.as_deref(), Some("ok"));
    let s = client.stats();
    assert_eq!((s.requests, s.retries, s.rate_limited), (2, 1, 1));
}

#[tokio::test]
async fn unknown_model_is_not_found() {
    let f = Fixture::new(&[]).await;
    let client = f.client("no-such-model");
    let e = client.complete(&conversation("t"), &[]).await.unwrap_err();
    assert!(
        matches!(&e, LlmError::NotFound { message } if message.contains("no-such-model")),
        "{e:?}"
    );
    assert_eq!(client.stats().requests, 1);
}

#[tokio::test]
async fn exhausted_script_is_a_bad_request() {
    let f = Fixture::new(&[(
        "one",
        r#"{"steps": [{"tool": "think", "args": {"thought": "x"}}]}"#,
    )])
    .await;
    let client = f.client("one");
    let mut messages = conversation("t");
    let first = client.complete(&messages, &[]).await.unwrap();
    answer(&mut messages, first.message);
    let e = client.complete(&messages, &[]).await.unwrap_err();
    assert!(
        matches!(&e, LlmError::BadRequest { status: 400, message } if message.contains("step 1")),
        "{e:?}"
    );
    assert_eq!(client.stats().requests, 2);
}

#[tokio::test]
async fn context_length_is_recognised() {
    let f = Fixture::new(&[(
        "small",
        r#"{"steps": [{"fail": {"status": 400, "code": "context_length_exceeded"}, "text": "fits"}]}"#,
    )])
    .await;
    let client = f.client("small");
    let e = client.complete(&conversation("t"), &[]).await.unwrap_err();
    assert!(matches!(e, LlmError::ContextLength { .. }), "{e:?}");
    assert_eq!(e.kind(), "llm_context_length");
    // After condensing, the agent asks again; the failure was served once.
    assert_eq!(
        client
            .complete(&conversation("t"), &[])
            .await
            .unwrap()
            .message
            .content
            .as_deref(),
        Some("fits")
    );
}

#[tokio::test]
async fn context_length_is_recognised_in_every_providers_words() {
    let scripts: Vec<(String, String)> = agent_fleet::mock_llm::extras::PROVIDERS
        .iter()
        .map(|p| {
            (
                format!("overflow-{p}"),
                format!(
                    r#"{{"steps": [{{"fail": {{"context_length": "{p}"}}, "text": "fits"}}]}}"#
                ),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = scripts
        .iter()
        .map(|(m, j)| (m.as_str(), j.as_str()))
        .collect();
    let f = Fixture::new(&refs).await;
    for (model, _) in &scripts {
        let e = f
            .client(model)
            .complete(&conversation("t"), &[])
            .await
            .unwrap_err();
        assert!(
            matches!(e, LlmError::ContextLength { .. }),
            "{model}: {e:?}"
        );
    }
}

#[tokio::test]
async fn invalid_json_arguments_pass_through() {
    let f = Fixture::new(&[(
        "bad",
        r#"{"steps": [{"tool": "terminal", "args": "{\"command\": \"ls\""}]}"#,
    )])
    .await;
    let c = f
        .client("bad")
        .complete(&conversation("t"), &[])
        .await
        .unwrap();
    assert_eq!(
        c.message.tool_calls[0].function.arguments,
        r#"{"command": "ls""#
    );
}

#[tokio::test]
async fn several_calls_and_empty_replies() {
    let script = r#"{"steps": [
        {"calls": [{"tool": "think", "args": {"thought": "a"}}, {"tool": "finish", "args": {"message": "b"}}]},
        {"empty": true}
    ]}"#;
    let f = Fixture::new(&[("multi", script)]).await;
    let client = f.client("multi");
    let mut messages = conversation("t");
    let c = client.complete(&messages, &[]).await.unwrap();
    let names: Vec<&str> = c
        .message
        .tool_calls
        .iter()
        .map(|c| c.function.name.as_str())
        .collect();
    assert_eq!(names, ["think", "finish"]);
    assert_ne!(c.message.tool_calls[0].id, c.message.tool_calls[1].id);
    answer(&mut messages, c.message);
    let c = client.complete(&messages, &[]).await.unwrap();
    assert!(c.message.content.is_none() && c.message.tool_calls.is_empty());
}

#[tokio::test]
async fn usage_and_cost_follow_the_price_table() {
    let script = r#"{"steps": [
        {"tool": "think", "args": {"thought": "x"}},
        {"text": "done", "usage": {"prompt_tokens": 3000, "completion_tokens": 500}}
    ], "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}"#;
    let f = Fixture::new(&[("priced", script)]).await;
    let mut settings = f.settings("priced");
    settings.price = Price {
        input_per_mtok: 3.0,
        output_per_mtok: 15.0,
        ..Price::default()
    };
    let client = LlmClient::new(reqwest::Client::new(), settings);
    let cost_before = metrics().llm_cost.get();
    let prompt_before = metrics().llm_tokens.with_label_values(&["prompt"]).get();

    let mut messages = conversation("t");
    let first = client.complete(&messages, &[]).await.unwrap();
    assert_eq!(
        (first.usage.prompt_tokens, first.usage.completion_tokens),
        (1000, 100)
    );
    assert!((first.cost_usd - (1000.0 * 3.0 + 100.0 * 15.0) / 1e6).abs() < 1e-12);
    answer(&mut messages, first.message);
    let second = client.complete(&messages, &[]).await.unwrap();
    assert_eq!(
        (second.usage.prompt_tokens, second.usage.completion_tokens),
        (3000, 500)
    );

    let s = client.stats();
    assert_eq!((s.prompt_tokens, s.completion_tokens), (4000, 600));
    let expected = (4000.0 * 3.0 + 600.0 * 15.0) / 1e6;
    assert!((s.cost_usd - expected).abs() < 1e-12, "{}", s.cost_usd);
    // Process metrics are shared with concurrently running tests: at least ours.
    assert!(metrics().llm_cost.get() - cost_before >= expected - 1e-9);
    assert!(metrics().llm_tokens.with_label_values(&["prompt"]).get() >= prompt_before + 4000);
}

#[tokio::test]
async fn request_timeout_is_a_transient_failure() {
    let f = Fixture::new(&[("slow", r#"{"steps": [{"delay_ms": 2000, "text": "late"}]}"#)]).await;
    let mut settings = f.settings("slow");
    settings.request_timeout = Duration::from_millis(100);
    settings.max_attempts = 2;
    let client = LlmClient::new(reqwest::Client::new(), settings);
    let started = Instant::now();
    let e = client.complete(&conversation("t"), &[]).await.unwrap_err();
    assert!(
        matches!(
            e,
            LlmError::Unavailable {
                attempts: 2,
                status: None,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(client.stats().retries, 1);
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = LlmSettings::new("m", format!("http://127.0.0.1:{port}/v1/"));
    settings.max_attempts = 2;
    settings.min_backoff = Duration::from_millis(10);
    settings.max_backoff = Duration::from_millis(20);
    settings.request_timeout = Duration::from_secs(5);
    let client = LlmClient::new(reqwest::Client::new(), settings);
    let e = client.complete(&conversation("t"), &[]).await.unwrap_err();
    assert!(
        matches!(
            e,
            LlmError::Unavailable {
                attempts: 2,
                status: None,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn edited_scripts_are_picked_up_and_stop_stops() {
    let f = Fixture::new(&[("live", r#"{"steps": [{"text": "before"}]}"#)]).await;
    let client = f.client("live");
    assert_eq!(
        client
            .complete(&conversation("t"), &[])
            .await
            .unwrap()
            .message
            .content
            .as_deref(),
        Some("before")
    );
    std::fs::write(
        f.dir.path().join("live.json"),
        r#"{"steps": [{"text": "after the edit"}]}"#,
    )
    .unwrap();
    let c = client.complete(&conversation("t"), &[]).await.unwrap();
    assert_eq!(c.message.content.as_deref(), Some("after the edit"));

    let Fixture { mock, dir: _dir } = f;
    let url = mock.base_url();
    tokio::time::timeout(Duration::from_secs(15), mock.stop())
        .await
        .unwrap();
    let mut settings = LlmSettings::new("live", url);
    settings.max_attempts = 1;
    let e = LlmClient::new(reqwest::Client::new(), settings)
        .complete(&conversation("t"), &[])
        .await
        .unwrap_err();
    assert!(matches!(e, LlmError::Unavailable { .. }), "{e:?}");
}

/// A server that answers every request 200 with an endless body: chunked (no
/// length) or with a huge `Content-Length`.
async fn endless_server(chunked: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = sock.read(&mut buf).await;
                let head = if chunked {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n".to_string()
                };
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let piece = vec![b' '; 64 * 1024];
                loop {
                    let r = if chunked {
                        let mut c = format!("{:x}\r\n", piece.len()).into_bytes();
                        c.extend_from_slice(&piece);
                        c.extend_from_slice(b"\r\n");
                        sock.write_all(&c).await
                    } else {
                        sock.write_all(&piece).await
                    };
                    if r.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/v1/")
}

#[tokio::test]
async fn a_reply_past_the_cap_is_llm_reply_too_large_and_not_retried() {
    for chunked in [true, false] {
        let mut settings = LlmSettings::new("m", endless_server(chunked).await);
        settings.max_attempts = 3;
        settings.min_backoff = Duration::from_millis(10);
        settings.max_backoff = Duration::from_millis(20);
        settings.request_timeout = Duration::from_secs(60);
        let client = LlmClient::new(reqwest::Client::new(), settings);
        let e = client.complete(&conversation("t"), &[]).await.unwrap_err();
        assert!(
            matches!(e, LlmError::ReplyTooLarge(_)),
            "chunked={chunked}: {e:?}"
        );
        assert_eq!(e.kind(), "llm_reply_too_large");
        assert!(!e.retryable());
        assert_eq!(client.stats().requests, 1, "chunked={chunked}: not retried");
    }
}
