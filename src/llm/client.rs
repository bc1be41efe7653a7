//! The HTTP client for one job's conversation.

use super::{ChatMessage, Completion, LlmError, LlmSettings, LlmStats};

pub struct LlmClient {
    settings: LlmSettings,
    http: reqwest::Client,
    stats: std::sync::Mutex<LlmStats>,
}

impl LlmClient {
    pub fn new(http: reqwest::Client, settings: LlmSettings) -> LlmClient {
        LlmClient { settings, http, stats: Default::default() }
    }

    pub fn settings(&self) -> &LlmSettings {
        &self.settings
    }

    /// One completion, with the client's own retries.
    pub async fn complete(&self, messages: &[ChatMessage], tools: &[serde_json::Value]) -> Result<Completion, LlmError> {
        let _ = (messages, tools, &self.http);
        todo!("llm client")
    }

    pub fn stats(&self) -> LlmStats {
        self.stats.lock().expect("stats lock").clone()
    }
}
