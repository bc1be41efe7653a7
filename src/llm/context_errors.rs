//! Recognising a context-window overflow in an error reply. Each provider (and
//! each proxy in front of one) words it its own way, and only OpenAI sends a
//! reliable `code`; the phrases are data, one table, so a new wording is one
//! line. Matching is case-insensitive on the error's message (and code).

/// `(who says it, a phrase of their message)`, lower case. The first column
/// is documentation: any phrase matches whoever sent it.
pub const PHRASES: &[(&str, &str)] = &[
    ("openai", "context_length_exceeded"),
    ("openai", "maximum context length"),
    ("openai", "please reduce the length of the messages"),
    ("azure", "context_length_exceeded"),
    ("azure", "reduce the length of the"),
    ("anthropic", "prompt is too long"),
    (
        "anthropic",
        "input length and `max_tokens` exceed context limit",
    ),
    ("bedrock", "input is too long for requested model"),
    ("bedrock", "too many input tokens"),
    ("bedrock", "model_context_window_exceeded"),
    ("gemini", "exceeds the maximum number of tokens allowed"),
    ("gemini", "input token count exceeds"),
    ("litellm", "contextwindowexceedederror"),
    ("vllm", "longer than the maximum model length"),
    ("vllm", "maximum context length is"),
    ("llama.cpp", "exceeds the available context size"),
    ("llama.cpp", "exceed_context_size_error"),
    ("llama.cpp", "context shift is disabled"),
    ("mistral", "too large for model with"),
    ("minimax", "context window exceeds limit"),
    ("generic", "context length exceeded"),
    ("generic", "input exceeds the context window"),
    ("generic", "too many tokens"),
];

/// Whether an error with this `code` and `message` reports a context overflow.
pub fn is_context_length(code: Option<&str>, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    let c = code.unwrap_or("").to_ascii_lowercase();
    PHRASES
        .iter()
        .any(|(_, p)| m.contains(p) || (!c.is_empty() && c.contains(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each provider's wording, as their APIs (or proxies) send it.
    #[test]
    fn every_providers_wording_is_recognised() {
        let cases = [
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. Please reduce the length of the messages.",
            "prompt is too long: 208310 tokens > 200000 maximum",
            "input length and `max_tokens` exceed context limit: 190000 + 32000 > 200000",
            "Input is too long for requested model.",
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            "litellm.ContextWindowExceededError: litellm.BadRequestError: AnthropicException - prompt is too long",
            "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the completion).",
            "The decoder prompt (length 9000) is longer than the maximum model length of 8192.",
            "the request exceeds the available context size, try increasing it",
            "Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 maximum context length",
        ];
        for c in cases {
            assert!(is_context_length(None, c), "{c}");
        }
        assert!(is_context_length(Some("context_length_exceeded"), "x"));
        assert!(is_context_length(Some("exceed_context_size_error"), ""));
        for other in [
            "temperature out of range",
            "invalid api key",
            "rate limit",
            "",
        ] {
            assert!(!is_context_length(None, other), "{other}");
        }
    }
}
