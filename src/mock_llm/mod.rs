//! `fleet mock-llm`: a scripted OpenAI-compatible chat-completions server
//! (DESIGN.md "Scripted LLM") for tests, benchmarks and the offline quickstart. It
//! lets them exercise the real client path: HTTP, retries, errors, usage.
//!
//! `POST /v1/chat/completions` (or `/chat/completions`), non-streaming. The request's
//! `model` names the script `<DIR>/<model>.json` (a plain file name: `/`, `\` and
//! `..` are refused with 400); an unknown model gets 404 with an OpenAI-style error
//! body (`code: "model_not_found"`). The step served is the number of assistant
//! messages already in the request.
//!
//! # Script format
//!
//! ```json
//! {
//!   "steps": [
//!     {"tool": "terminal", "args": {"command": "echo hello > hello.txt"}},
//!     {"text": "a reply with no tool call"},
//!     {"fail": {"status": 503, "times": 2, "retry_after_secs": 1}, "tool": "think", "args": {"thought": "…"}},
//!     {"delay_ms": 500, "tool": "finish", "args": {"message": "done"}}
//!   ],
//!   "repeat_last": false,
//!   "usage": {"prompt_tokens": 1200, "completion_tokens": 80}
//! }
//! ```
//!
//! A step is one reply:
//! - `tool` + `args`: one tool call, id `call_<step>_0`; `arguments` is the JSON
//!   text of `args` (`{}` when absent), or `args` itself when it is a string, sent
//!   verbatim so a script can send invalid JSON.
//! - `text`: the reply's content; with `tool` (or `calls`) the reply has both.
//! - `fail: {status, times = 1, retry_after_secs?}`: the first `times` requests at
//!   this step answer `status` (with `Retry-After` when given) before the step is
//!   served. Counted per conversation, keyed by the model and the conversation's
//!   first user message, so jobs with the same task share a count.
//! - `delay_ms`: sleep before answering (failures at that step included).
//! - `usage` per step, else the script's `usage`, else 100 prompt / 20 completion.
//!
//! When the steps run out, `repeat_last: true` serves the last step again (its
//! `fail` counted afresh at each new step number); otherwise 400 with
//! `code: "script_exhausted"`.
//!
//! Extensions beyond DESIGN.md:
//! - `"calls": [{"tool": …, "args": …}, …]`: several tool calls in one reply (ids
//!   `call_<step>_<i>`); not combined with `tool`.
//! - `"empty": true`: a reply with no content and no tool call.
//! - `fail.code` (e.g. `"context_length_exceeded"` with status 400, to emulate a
//!   context-window overflow) and `fail.message`: the error body's `code` and
//!   `message`.
//! - `fail.status: 200`: a 200 reply with an empty `choices` list.
//!
//! With a request log (`fleet mock-llm --log FILE`) every request for a script
//! appends one JSON line `{"model", "step", "user", "at_ms"}` (`user`: the
//! start of the conversation's first user message, which names its task) before it is
//! answered: an observer outside the fleet that counts how often each
//! conversation was run (the fault drills use it; workspaces have no network).
//!
//! A script that does not parse or check (unknown fields included) is answered
//! with 500 and a message naming the file and the place. Scripts are cached and
//! re-read when their modification time or size changes. The server never fails on
//! a bad request: it answers 400.

mod conversations;
pub mod extras;
mod script;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use conversations::{FailCounters, ServedCounters, conversation_key};
use extras::RequestLog;
use script::{Reply, ScriptCache, ScriptError, StepBy};

pub use script::DEFAULT_USAGE;

/// Agent conversations carry long tool outputs; axum's 2 MB default is too small.
const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// How long `stop` lets in-flight requests finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running scripted server.
pub struct MockLlm {
    pub addr: SocketAddr,
    /// Cancel to stop accepting; in-flight replies (delays included) end at once.
    pub shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

/// How a server is started beyond its scripts and address.
#[derive(Debug, Clone, Default)]
pub struct MockOptions {
    /// Append one JSON line per request received to this file (created or
    /// truncated): `{"model", "kind", "step", "status", "request"}`.
    pub request_log: Option<PathBuf>,
}

impl MockLlm {
    /// Starts serving scripts from `dir` on `addr` (port 0 picks a free one);
    /// returns once the socket listens.
    pub async fn start(dir: PathBuf, addr: SocketAddr) -> std::io::Result<MockLlm> {
        MockLlm::start_with(dir, addr, MockOptions::default()).await
    }

    /// [`MockLlm::start`] with options.
    pub async fn start_with(
        dir: PathBuf,
        addr: SocketAddr,
        options: MockOptions,
    ) -> std::io::Result<MockLlm> {
        let request_log = options
            .request_log
            .as_deref()
            .map(RequestLog::create)
            .transpose()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let state = Arc::new(Server {
            scripts: ScriptCache::new(dir),
            fails: FailCounters::new(conversations::DEFAULT_CAP),
            served: ServedCounters::new(conversations::DEFAULT_CAP),
            request_log,
            shutdown: shutdown.clone(),
            next_id: AtomicU64::new(1),
        });
        let app = router(state);
        let signal = shutdown.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
        });
        tracing::info!(%addr, "scripted LLM listening");
        Ok(MockLlm {
            addr,
            shutdown,
            task,
        })
    }

    /// The base URL to give clients (`http://ADDR/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Waits until the server has stopped (after [`MockLlm::shutdown`] is cancelled):
    /// what `fleet mock-llm` does in the foreground.
    pub async fn join(self) -> std::io::Result<()> {
        self.task.await.map_err(std::io::Error::other)?
    }

    /// Stops the server and waits (bounded) for open connections to close.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

struct Server {
    scripts: ScriptCache,
    fails: FailCounters,
    served: ServedCounters,
    request_log: Option<RequestLog>,
    shutdown: CancellationToken,
    next_id: AtomicU64,
}

fn router(state: Arc<Server>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(complete))
        .route("/chat/completions", post(complete))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint", Some("not_found")) })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// The part of a request the server reads; everything else is ignored.
#[derive(Deserialize)]
struct IncomingRequest {
    model: String,
    #[serde(default)]
    messages: Vec<IncomingMessage>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct IncomingMessage {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

/// The body is read as bytes, not through axum's `Json`, so a bad request gets an
/// OpenAI-style 400 rather than axum's plain-text rejection. Every request is
/// recorded in the request log (when one is kept) with how it was answered.
async fn complete(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    let (resp, model, kind, step) = answer(&server, &body).await;
    if let Some(log) = &server.request_log {
        log.record(&model, kind, step, resp.status().as_u16(), &body);
    }
    resp
}

/// The reply to one request, with what the log says of it: the model, the
/// kind of answer (`step`, `summary`, `failure`, `error`) and the step.
async fn answer(server: &Server, body: &[u8]) -> (Response, String, &'static str, Option<usize>) {
    let req: IncomingRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let resp = error(
                StatusCode::BAD_REQUEST,
                &format!("invalid request body: {e}"),
                Some("invalid_json"),
            );
            return (resp, String::new(), "error", None);
        }
    };
    let model = req.model.clone();
    let fail = |resp: Response| (resp, model.clone(), "error", None);
    if !script::valid_model_name(&req.model) {
        return fail(error(
            StatusCode::BAD_REQUEST,
            "model must be a plain script name",
            Some("invalid_model"),
        ));
    }
    let script = match server.scripts.get(&req.model).await {
        Ok(s) => s,
        Err(e @ ScriptError::NotFound { .. }) => {
            let message = format!("The model '{}' does not exist ({e})", req.model);
            return fail(error(
                StatusCode::NOT_FOUND,
                &message,
                Some("model_not_found"),
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "scripted LLM cannot serve a script");
            return fail(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
                Some("script_error"),
            ));
        }
    };
    let has_tools = req.tools.as_ref().is_some_and(|t| !t.is_empty());
    // A summary request: a lone user message and no tools (what a condenser
    // sends). Served from the script's `summary`, never counted as a step.
    if let Some(summary) = &script.summary {
        if !has_tools && req.messages.len() == 1 && req.messages[0].role == "user" {
            let resp = reply_body(
                server,
                &req.model,
                Some(summary),
                &[],
                0,
                DEFAULT_USAGE,
                true,
                ReplyShape::default(),
            );
            return (resp, model, "summary", None);
        }
    }
    let conversation = conversation_key(&req.model, first_user_message(&req.messages));
    let step = match script.step_by {
        StepBy::AssistantMessages => req
            .messages
            .iter()
            .filter(|m| m.role == "assistant")
            .count(),
        StepBy::Served => server.served.get(conversation),
    };
    let Some(reply) = script.step(step) else {
        let message = format!(
            "script '{}' has {} steps and no repeat_last; asked for step {step}",
            req.model,
            script.steps.len()
        );
        let resp = error(StatusCode::BAD_REQUEST, &message, Some("script_exhausted"));
        return (resp, model, "error", Some(step));
    };

    if !reply.delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(reply.delay) => {}
            _ = server.shutdown.cancelled() => {
                let resp = error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down", None);
                return (resp, model, "error", Some(step));
            }
        }
    }
    if let Some(fail) = &reply.fail {
        if let Some(n) = server.fails.next_failure(conversation, step, fail.times) {
            return (
                failure(fail, step, n, &req.model, server),
                model,
                "failure",
                Some(step),
            );
        }
    }
    if script.step_by == StepBy::Served {
        server.served.advance(conversation);
    }
    (
        success(reply, step, &req.model, server, script.text_calls),
        model,
        "step",
        Some(step),
    )
}

/// The conversation's key text: the first user message (text parts joined when
/// the content is a list of parts).
fn first_user_message(messages: &[IncomingMessage]) -> &str {
    let Some(content) = messages
        .iter()
        .find(|m| m.role == "user")
        .and_then(|m| m.content.as_ref())
    else {
        return "";
    };
    match content {
        Value::String(s) => s,
        Value::Array(parts) => parts
            .iter()
            .find_map(|p| p.get("text").and_then(Value::as_str))
            .unwrap_or(""),
        _ => "",
    }
}

/// A scripted failure: the error status, or (status 200) a reply with no choices.
fn failure(fail: &script::Fail, step: usize, n: u32, model: &str, server: &Server) -> Response {
    if fail.status == StatusCode::OK {
        return reply_body(
            server,
            model,
            None,
            &[],
            step,
            DEFAULT_USAGE,
            false,
            ReplyShape::default(),
        );
    }
    if let Some((status, body)) = fail
        .context_length
        .as_deref()
        .and_then(extras::context_length_error)
    {
        return json_response(status, &body);
    }
    let message = fail
        .message
        .clone()
        .unwrap_or_else(|| default_fail_message(fail, step, n));
    let mut resp = error(
        fail.status,
        &message,
        fail.code.as_deref().or(default_code(fail.status)),
    );
    if let Some(secs) = fail.retry_after_secs {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn default_fail_message(fail: &script::Fail, step: usize, n: u32) -> String {
    if fail.code.as_deref() == Some("context_length_exceeded") {
        // The wording OpenAI uses, which clients also match on.
        return "This model's maximum context length is 8192 tokens. However, your messages resulted in more \
                tokens. Please reduce the length of the messages."
            .into();
    }
    format!(
        "scripted failure {n} of {} at step {step} (HTTP {})",
        fail.times,
        fail.status.as_u16()
    )
}

fn default_code(status: StatusCode) -> Option<&'static str> {
    match status.as_u16() {
        401 => Some("invalid_api_key"),
        429 => Some("rate_limit_exceeded"),
        _ => None,
    }
}

fn success(reply: &Reply, step: usize, model: &str, server: &Server, as_text: bool) -> Response {
    let shape = ReplyShape {
        as_text,
        reasoning: reply.reasoning.as_deref(),
        thinking_blocks: &reply.thinking_blocks,
    };
    reply_body(
        server,
        model,
        reply.content.as_deref(),
        &reply.calls,
        step,
        reply.usage,
        true,
        shape,
    )
}

#[derive(Serialize)]
struct CompletionBody<'a> {
    id: String,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: Vec<ChoiceBody<'a>>,
    usage: UsageBody,
}

#[derive(Serialize)]
struct ChoiceBody<'a> {
    index: u32,
    message: MessageBody<'a>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct MessageBody<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    thinking_blocks: &'a [Value],
}

/// How a 200 reply is shaped beyond its content and calls.
#[derive(Default, Clone, Copy)]
struct ReplyShape<'a> {
    /// The calls go into the content as text markup instead of `tool_calls`.
    as_text: bool,
    reasoning: Option<&'a str>,
    thinking_blocks: &'a [Value],
}

#[derive(Serialize)]
struct ToolCallBody<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionBody<'a>,
}

#[derive(Serialize)]
struct FunctionBody<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct UsageBody {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    /// OpenAI's cached-prompt count, when the script sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<crate::llm::PromptTokensDetails>,
    /// Anthropic's cache counts, when the script sets them.
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_read_input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_creation_input_tokens: Option<u64>,
}

/// A 200 reply; `with_choice: false` sends an empty `choices` list; `as_text`
/// puts the calls into the content as markup instead of `tool_calls`.
#[allow(clippy::too_many_arguments)]
fn reply_body(
    server: &Server,
    model: &str,
    content: Option<&str>,
    calls: &[(String, String)],
    step: usize,
    usage: crate::llm::Usage,
    with_choice: bool,
    shape: ReplyShape<'_>,
) -> Response {
    let text_content;
    let (content, calls) = if shape.as_text && !calls.is_empty() {
        let mut t = content.map(|c| format!("{c}\n\n")).unwrap_or_default();
        let rendered: Vec<String> = calls.iter().map(|(n, a)| extras::text_call(n, a)).collect();
        t.push_str(&rendered.join("\n"));
        text_content = t;
        (Some(text_content.as_str()), &[][..])
    } else {
        (content, calls)
    };
    let tool_calls = calls
        .iter()
        .enumerate()
        .map(|(i, (name, arguments))| ToolCallBody {
            id: format!("call_{step}_{i}"),
            kind: "function",
            function: FunctionBody { name, arguments },
        })
        .collect::<Vec<_>>();
    let finish_reason = if tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let choices = if with_choice {
        vec![ChoiceBody {
            index: 0,
            message: MessageBody {
                role: "assistant",
                content,
                tool_calls,
                reasoning_content: shape.reasoning,
                thinking_blocks: shape.thinking_blocks,
            },
            finish_reason,
        }]
    } else {
        Vec::new()
    };
    let body = CompletionBody {
        id: format!(
            "chatcmpl-mock-{}",
            server.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        object: "chat.completion",
        created: chrono::Utc::now().timestamp(),
        model,
        choices,
        usage: UsageBody {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
            prompt_tokens_details: usage.prompt_tokens_details,
            cache_read_input_tokens: usage.cache_read_input_tokens,
            cache_creation_input_tokens: usage.cache_creation_input_tokens,
        },
    };
    json_response(StatusCode::OK, &body)
}

/// An OpenAI-style error reply.
fn error(status: StatusCode, message: &str, code: Option<&str>) -> Response {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    let body = serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        // Our own types always serialise; answer rather than panic if one ever does not.
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode reply: {e}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests;
