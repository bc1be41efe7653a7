//! What the scripted server adds for the agent's tests: a request log (the
//! server's own record of what it received — evidence the fleet does not
//! write), context-window errors in each provider's own wording and body shape,
//! and tool calls rendered as text for clients without native tool calling.
//!
//! The wordings and the text format are written out here independently of the
//! fleet's recogniser and parser, so a test through them checks the fleet
//! against the providers' forms, not against itself.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::http::StatusCode;
use serde_json::{Value, json};

/// Appends one JSON line per request received.
pub struct RequestLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl RequestLog {
    /// Opens the log at `path` for appending (created when missing), so a
    /// server restarted on the same file keeps the earlier lines.
    pub fn create(path: &Path) -> std::io::Result<RequestLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(RequestLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a request: the model, how it was answered (`step`, `summary`,
    /// `failure`, `error`), the step, the HTTP status, the conversation's first
    /// user message (its first 300 characters: which job it is), the time, and
    /// the request body.
    pub fn record(&self, model: &str, kind: &str, step: Option<usize>, status: u16, body: &[u8]) {
        let request: Value = serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into()));
        let user: String = first_user_text(&request).chars().take(300).collect();
        let at_ms = chrono::Utc::now().timestamp_millis();
        let line = json!({"model": model, "kind": kind, "step": step, "status": status,
                          "user": user, "at_ms": at_ms, "request": request});
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        // A log write failing must not fail the reply: the test reading the log
        // will notice the missing line.
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&bytes).and_then(|_| f.flush()) {
            tracing::warn!(error = %e, path = %self.path.display(), "scripted LLM cannot write its request log");
        }
    }
}

/// The text of the first user message of a request body (plain or in parts).
fn first_user_text(request: &Value) -> String {
    let Some(m) = request["messages"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["role"] == "user"))
    else {
        return String::new();
    };
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// Providers whose context-window error the server can send.
pub const PROVIDERS: &[&str] = &[
    "openai",
    "azure",
    "anthropic",
    "bedrock",
    "gemini",
    "litellm",
    "vllm",
    "llamacpp",
];

/// A context-window error as `provider` sends it: status and body.
pub fn context_length_error(provider: &str) -> Option<(StatusCode, Value)> {
    let bad = StatusCode::BAD_REQUEST;
    let body = match provider {
        "openai" | "azure" => json!({"error": {
            "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
        "anthropic" => json!({"type": "error", "error": {
            "type": "invalid_request_error", "message": "prompt is too long: 208310 tokens > 200000 maximum"}}),
        "bedrock" => json!({"message": "Input is too long for requested model."}),
        "gemini" => json!({"error": {"code": 400,
            "message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            "status": "INVALID_ARGUMENT"}}),
        "litellm" => json!({"error": {
            "message": "litellm.ContextWindowExceededError: litellm.BadRequestError: AnthropicException - prompt is too long: 210000 tokens > 200000 maximum",
            "type": null, "param": null, "code": "400"}}),
        "vllm" => json!({"object": "error",
            "message": "This model's maximum context length is 32768 tokens. However, you requested 40000 tokens (31808 in the messages, 8192 in the completion). Please reduce the length of the messages or completion.",
            "type": "BadRequestError", "param": null, "code": 400}),
        "llamacpp" => json!({"error": {"code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error"}}),
        _ => return None,
    };
    Some((bad, body))
}

/// A tool call in the text markup of OpenHands' non-native function calling.
pub fn text_call(name: &str, arguments: &str) -> String {
    let mut out = format!("<function={name}>\n");
    if let Ok(Value::Object(args)) = serde_json::from_str::<Value>(arguments) {
        for (k, v) in args {
            let value = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            out.push_str(&format!("<parameter={k}>{value}</parameter>\n"));
        }
    }
    out.push_str("</function>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wordings_and_text_calls() {
        for p in PROVIDERS {
            let (status, body) = context_length_error(p).unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(body.to_string().len() > 40, "{p}");
        }
        assert!(context_length_error("nope").is_none());
        assert_eq!(
            text_call("terminal", r#"{"command":"ls","timeout":5}"#),
            "<function=terminal>\n<parameter=command>ls</parameter>\n<parameter=timeout>5</parameter>\n</function>"
        );
    }
}
