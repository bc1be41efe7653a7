//! The HTTP client for one job's conversation: one `complete` call is one agent
//! step, made of one or more HTTP attempts under the policy in [`super::retry`].
//!
//! Every attempt is counted twice, in the job's [`LlmStats`] (stored in
//! metrics.json) and in the process metrics, with exactly one outcome per attempt:
//! `ok`, `retried`, `rate_limited` (any 429) or `error` (the attempt that ended the
//! call). Logs carry statuses and timings, never the key or the messages.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use backon::Retryable;
use bytes::Bytes;

use super::retry::{self, AttemptError, Failure};
use super::{ChatMessage, ChatResponse, Completion, LlmError, LlmSettings, LlmStats};
use super::{text_tools, wire};
use crate::job::Price;
use crate::telemetry::metrics;

/// The largest reply body read from an LLM endpoint (a real completion is far
/// smaller); past it the request fails with `llm_reply_too_large`.
pub const MAX_REPLY_BYTES: usize = 32 << 20;

pub struct LlmClient {
    settings: LlmSettings,
    http: reqwest::Client,
    /// `{base_url}/chat/completions`, built once.
    url: String,
    stats: Mutex<LlmStats>,
}

impl LlmClient {
    pub fn new(http: reqwest::Client, settings: LlmSettings) -> LlmClient {
        let url = format!(
            "{}/chat/completions",
            settings.base_url.trim_end_matches('/')
        );
        LlmClient {
            settings,
            http,
            url,
            stats: Default::default(),
        }
    }

    pub fn settings(&self) -> &LlmSettings {
        &self.settings
    }

    /// One completion, with the client's own retries (see [`super::retry`]).
    pub async fn complete(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
    ) -> Result<Completion, LlmError> {
        self.request(&self.settings.model, &self.settings.price, messages, tools)
            .await
    }

    /// A completion by the condenser's model (`llm.condenser_model`, else the
    /// job's), with no tools: the summary of a condensation. Priced by the
    /// built-in table for a condenser model of its own, else the job's price.
    pub async fn summarize(&self, messages: &[ChatMessage]) -> Result<Completion, LlmError> {
        match self.settings.condenser_model.as_deref() {
            Some(m) if m != self.settings.model => {
                let price = Price::builtin(m).unwrap_or(self.settings.price);
                self.request(m, &price, messages, &[]).await
            }
            _ => self.complete(messages, &[]).await,
        }
    }

    async fn request(
        &self,
        model: &str,
        price: &Price,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
    ) -> Result<Completion, LlmError> {
        // Without native tool calls the tools travel as text in the prompt.
        let text_mode = !self.settings.native_tools && !tools.is_empty();
        let converted;
        let (messages, tools) = if text_mode {
            converted = text_tools::to_text_messages(messages, tools);
            (converted.as_slice(), &[][..])
        } else {
            (messages, tools)
        };
        let body = wire::body(&self.settings, model, messages, tools);
        // Serialised once: every retry sends the same bytes.
        let body = Bytes::from(
            serde_json::to_vec(&body).map_err(|e| LlmError::Protocol(format!("request: {e}")))?,
        );
        let attempts = AtomicU32::new(0);
        let max_backoff = self.settings.max_backoff;

        let result = (|| self.attempt(body.clone(), price, &attempts))
            .retry(retry::backoff(&self.settings))
            .when(AttemptError::transient)
            .adjust(|e: &AttemptError, wait| {
                wait.map(|w| retry::next_wait(w, e.retry_after, max_backoff))
            })
            .notify(|e: &AttemptError, wait: Duration| {
                self.on_retry(e, wait, attempts.load(Ordering::Relaxed))
            })
            .await;

        let mut completion = result.map_err(|e| {
            let attempts = attempts.load(Ordering::Relaxed);
            self.on_final_failure(&e, attempts);
            e.into_llm_error(attempts)
        })?;
        if text_mode && completion.message.tool_calls.is_empty() {
            let content = completion.message.content.take().unwrap_or_default();
            let (text, calls) = text_tools::parse_reply(&content);
            completion.message.content = Some(text);
            completion.message.tool_calls = calls;
        }
        Ok(completion)
    }

    pub fn stats(&self) -> LlmStats {
        self.lock_stats().clone()
    }

    fn lock_stats(&self) -> MutexGuard<'_, LlmStats> {
        // Stats are plain counters: a panic elsewhere cannot leave them inconsistent.
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One HTTP attempt: send, read the whole reply under the request deadline,
    /// classify it. Counts the request and its latency whatever the result.
    async fn attempt(
        &self,
        body: Bytes,
        price: &Price,
        attempts: &AtomicU32,
    ) -> Result<Completion, AttemptError> {
        let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let started = Instant::now();
        let reply = self.send(body).await;
        let elapsed = started.elapsed();
        self.record_request(elapsed);

        let result = match reply {
            Err(e) => Err(e),
            Ok((status, _, bytes)) if (200..300).contains(&status) => {
                self.read_completion(status, &bytes, price)
            }
            Ok((status, headers, bytes)) => Err(retry::classify(
                status,
                &bytes,
                retry::retry_after(&headers),
            )),
        };
        match &result {
            Ok(c) => {
                tracing::debug!(
                    attempt = n,
                    latency_ms = elapsed.as_millis() as u64,
                    prompt_tokens = c.usage.prompt_tokens,
                    completion_tokens = c.usage.completion_tokens,
                    "llm request ok"
                );
                self.record_success(c);
            }
            Err(e) => {
                tracing::debug!(attempt = n, status = e.status, latency_ms = elapsed.as_millis() as u64, failure = ?e.failure,
                    "llm request failed");
                if e.status == Some(429) {
                    metrics()
                        .llm_requests
                        .with_label_values(&["rate_limited"])
                        .inc();
                    self.lock_stats().rate_limited += 1;
                }
            }
        }
        result
    }

    /// Sends the request and reads the body; `reqwest`'s per-request timeout covers
    /// connecting through the end of the body.
    async fn send(
        &self,
        body: Bytes,
    ) -> Result<(u16, reqwest::header::HeaderMap, Bytes), AttemptError> {
        let mut req = self
            .http
            .post(&self.url)
            .timeout(self.settings.request_timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = self.settings.api_key.as_deref().filter(|k| !k.is_empty()) {
            req = req.bearer_auth(key);
        }
        let mut resp = req.send().await.map_err(|e| transport_error(&e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let too_large = |n: u64| AttemptError {
            failure: Failure::TooLarge,
            status: Some(status),
            retry_after: None,
            message: format!("the reply is {n} bytes or more; at most {MAX_REPLY_BYTES} are read"),
        };
        if let Some(n) = resp
            .content_length()
            .filter(|n| *n > MAX_REPLY_BYTES as u64)
        {
            return Err(too_large(n));
        }
        // Read chunk by chunk so a reply without (or lying about) its length
        // cannot grow past the cap.
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
            if body.len() + chunk.len() > MAX_REPLY_BYTES {
                return Err(too_large((body.len() + chunk.len()) as u64));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, body.freeze()))
    }

    fn read_completion(
        &self,
        status: u16,
        body: &[u8],
        price: &Price,
    ) -> Result<Completion, AttemptError> {
        let protocol = |message: String| AttemptError {
            failure: Failure::Protocol,
            status: Some(status),
            retry_after: None,
            message,
        };
        let reply: ChatResponse = serde_json::from_slice(body)
            .map_err(|e| protocol(format!("HTTP {status} body: {e}")))?;
        let usage = reply.usage.unwrap_or_default();
        let Some(choice) = reply.choices.into_iter().next() else {
            // Upstream treats an empty choice list as a provider hiccup, not an answer.
            return Err(AttemptError {
                failure: Failure::Transient,
                status: Some(status),
                retry_after: None,
                message: "reply had no choices".into(),
            });
        };
        let cost_usd = price.cost(&usage);
        Ok(Completion {
            message: choice.message,
            usage,
            cost_usd,
        })
    }

    fn record_request(&self, elapsed: Duration) {
        metrics()
            .llm_request_duration
            .observe(elapsed.as_secs_f64());
        let ms = elapsed.as_millis().min(u64::MAX as u128) as u64;
        let mut s = self.lock_stats();
        s.requests += 1;
        s.latency_ms_total += ms;
        s.latency_ms_max = s.latency_ms_max.max(ms);
    }

    fn record_success(&self, c: &Completion) {
        let m = metrics();
        m.llm_requests.with_label_values(&["ok"]).inc();
        m.llm_tokens
            .with_label_values(&["prompt"])
            .inc_by(c.usage.prompt_tokens);
        m.llm_tokens
            .with_label_values(&["completion"])
            .inc_by(c.usage.completion_tokens);
        m.llm_tokens
            .with_label_values(&["cache_read"])
            .inc_by(c.usage.cache_read());
        m.llm_tokens
            .with_label_values(&["cache_write"])
            .inc_by(c.usage.cache_write());
        // A counter must not go down: a negative or NaN price never reaches it.
        if c.cost_usd.is_finite() && c.cost_usd > 0.0 {
            m.llm_cost.inc_by(c.cost_usd);
        }
        let mut s = self.lock_stats();
        s.prompt_tokens += c.usage.prompt_tokens;
        s.completion_tokens += c.usage.completion_tokens;
        s.cache_read_tokens += c.usage.cache_read();
        s.cache_write_tokens += c.usage.cache_write();
        s.cost_usd += c.cost_usd;
    }

    /// Called by the retry loop just before it sleeps: the failed attempt was retried.
    fn on_retry(&self, e: &AttemptError, wait: Duration, attempt: u32) {
        let m = metrics();
        if e.status != Some(429) {
            m.llm_requests.with_label_values(&["retried"]).inc();
        }
        m.llm_retries.inc();
        self.lock_stats().retries += 1;
        tracing::warn!(
            attempt,
            max_attempts = self.settings.max_attempts,
            status = e.status,
            wait_ms = wait.as_millis() as u64,
            retry_after_ms = e.retry_after.map(|d| d.as_millis() as u64),
            error = %e.message,
            "llm request failed, retrying"
        );
    }

    /// The attempt that ended the call (given up, or not retryable).
    fn on_final_failure(&self, e: &AttemptError, attempts: u32) {
        if e.status != Some(429) {
            metrics().llm_requests.with_label_values(&["error"]).inc();
        }
        self.lock_stats().failures += 1;
        tracing::warn!(attempts, status = e.status, failure = ?e.failure, error = %e.message, "llm request failed");
    }
}

/// A request that got no HTTP reply. Timeouts and connection failures are
/// transient; a body cut off mid-way is too (the server or a proxy went away).
/// Anything else (a URL reqwest refuses, a TLS set-up error) will not improve.
fn transport_error(e: &reqwest::Error) -> AttemptError {
    let transient = e.is_timeout() || e.is_connect() || e.is_request() || e.is_body();
    // reqwest's Display names the URL, not the headers, so the key never shows.
    let message = if e.is_timeout() {
        format!("request timed out: {e}")
    } else {
        format!("{e:#}")
    };
    AttemptError {
        failure: if transient {
            Failure::Transient
        } else {
            Failure::Protocol
        },
        status: None,
        retry_after: None,
        message: retry::trim(&message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_trims_a_trailing_slash() {
        let c = LlmClient::new(
            reqwest::Client::new(),
            LlmSettings::new("m", "http://h:1/v1/"),
        );
        assert_eq!(c.url, "http://h:1/v1/chat/completions");
        let c = LlmClient::new(
            reqwest::Client::new(),
            LlmSettings::new("m", "http://h:1/v1"),
        );
        assert_eq!(c.url, "http://h:1/v1/chat/completions");
    }
}
