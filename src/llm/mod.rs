//! The LLM client: OpenAI-compatible chat completions with tool calling over reqwest.
//! Retries transient errors (connection, timeout, 429, 500/502/503/504, empty
//! choices) with exponential backoff and jitter through backon, honouring
//! `Retry-After`; never retries 400/401/403/404/422. Accumulates usage and cost.

pub mod client;
pub mod context_errors;
pub mod models;
mod retry;
pub mod text_tools;
pub mod types;
mod wire;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use client::LlmClient;
pub use types::{
    ChatMessage, ChatRequest, ChatResponse, Choice, FunctionCall, PromptTokensDetails, Role,
    ToolCall, Usage,
};

use crate::job::Price;

/// Everything one job's client needs, resolved from the job and the worker's settings.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    pub model: String,
    /// e.g. `https://api.openai.com/v1`; the client appends `/chat/completions`.
    pub base_url: String,
    pub api_key: Option<String>,
    pub temperature: Option<f64>,
    /// Sent with every request (model-aware default, see [`models`]).
    pub max_output_tokens: Option<u64>,
    /// `low` | `medium` | `high`, sent as the model's endpoint expects.
    pub reasoning_effort: Option<String>,
    /// False: tools are rendered into the prompt and calls parsed from text.
    pub native_tools: bool,
    /// Stable per job, so OpenAI-style providers route its requests to one cache.
    pub prompt_cache_key: Option<String>,
    /// Writes condensation summaries; `None`: the job's model.
    pub condenser_model: Option<String>,
    pub price: Price,
    /// Deadline of one HTTP request (upstream default 300 s).
    pub request_timeout: Duration,
    /// Attempts in all, the first included (upstream default 5).
    pub max_attempts: u32,
    /// First backoff wait (upstream 8 s), doubled each retry up to `max_backoff` (64 s).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl LlmSettings {
    pub fn new(model: impl Into<String>, base_url: impl Into<String>) -> LlmSettings {
        let model = model.into();
        LlmSettings {
            max_output_tokens: Some(models::default_max_output_tokens(&model)),
            model,
            base_url: base_url.into(),
            api_key: None,
            temperature: None,
            reasoning_effort: None,
            native_tools: true,
            prompt_cache_key: None,
            condenser_model: None,
            price: Price::default(),
            request_timeout: Duration::from_secs(300),
            max_attempts: 5,
            min_backoff: Duration::from_secs(8),
            max_backoff: Duration::from_secs(64),
        }
    }
}

/// One successful completion.
#[derive(Debug, Clone)]
pub struct Completion {
    pub message: ChatMessage,
    pub usage: Usage,
    /// Cost of this completion by the job's price table.
    pub cost_usd: f64,
}

/// Per-job LLM statistics, stored in metrics.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmStats {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Requests that were retried after a transient error.
    pub retries: u64,
    pub rate_limited: u64,
    pub failures: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens served from, and written to, the provider's cache.
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    pub latency_ms_total: u64,
    pub latency_ms_max: u64,
}

/// Why a completion could not be had. `retryable` is about the *job* (another
/// attempt later), the client has already done its own retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    #[error("LLM rejected the credentials (HTTP {status}): {message}")]
    Auth { status: u16, message: String },
    #[error("LLM model not found (HTTP 404): {message}")]
    NotFound { message: String },
    #[error("LLM context window exceeded: {message}")]
    ContextLength { message: String },
    #[error("LLM rejected the request (HTTP {status}): {message}")]
    BadRequest { status: u16, message: String },
    #[error("LLM unavailable after {attempts} attempts: {message}")]
    Unavailable {
        attempts: u32,
        status: Option<u16>,
        message: String,
    },
    #[error("LLM reply could not be read: {0}")]
    Protocol(String),
    /// The reply was larger than the client reads (`MAX_REPLY_BYTES`): the
    /// worker's memory stays bounded whatever the endpoint sends.
    #[error("LLM reply too large: {0}")]
    ReplyTooLarge(String),
}

impl LlmError {
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::Auth { .. } => "llm_auth",
            LlmError::NotFound { .. } => "llm_not_found",
            LlmError::ContextLength { .. } => "llm_context_length",
            LlmError::BadRequest { .. } => "llm_bad_request",
            LlmError::Unavailable {
                status: Some(429), ..
            } => "llm_rate_limited",
            LlmError::Unavailable { .. } => "llm_unavailable",
            LlmError::Protocol(_) => "llm_protocol",
            LlmError::ReplyTooLarge(_) => "llm_reply_too_large",
        }
    }

    /// An unavailable LLM is an infrastructure fault (the job is retried later);
    /// a request the LLM refuses will be refused again.
    pub fn retryable(&self) -> bool {
        matches!(self, LlmError::Unavailable { .. })
    }
}
