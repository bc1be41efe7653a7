//! What the fleet knows about common models without being told: list prices,
//! context window and output-token ceiling, and which request dialect the
//! model's family speaks (Anthropic-style prompt caching, OpenAI-style cache
//! keys and reasoning parameters). A job's own `llm.price` and
//! `llm.max_output_tokens` always win; the table only fills what a job leaves
//! unset, so budgets (`limits.max_cost_usd`) work without configuration.
//!
//! The figures are the providers' published list prices in US dollars per
//! million tokens, as of [`FACTS_DATE`]. They go stale: a job that needs exact
//! figures sets `llm.price`.

/// When the figures below were last checked against the providers' price pages.
pub const FACTS_DATE: &str = "2025-10-01";

/// Output-token limit sent when neither the job nor the table says otherwise:
/// enough for a large file write, small enough for every current model.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 8192;

/// Which request dialect a model's endpoint expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `claude-*`: `cache_control` marks, `thinking` for reasoning.
    Anthropic,
    /// `gpt-*`, `o1`/`o3`/`o4`…: `prompt_cache_key`, `max_completion_tokens`,
    /// `reasoning_effort`.
    OpenAi,
    /// Everything else (Gemini, DeepSeek, local servers): plain OpenAI-compatible.
    Other,
}

/// Facts about one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelFacts {
    /// The table key that matched (a model-name prefix).
    pub key: &'static str,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cache_read_per_mtok: f64,
    pub cache_write_per_mtok: f64,
    /// Tokens the model accepts in all (prompt plus output).
    pub context_window: u64,
    pub max_output_tokens: u64,
    /// Reasoning model: temperature is not accepted, `reasoning_effort` is.
    pub reasoning: bool,
}

macro_rules! m {
    ($key:literal, $in:expr, $out:expr, $read:expr, $write:expr, $window:expr, $max_out:expr, $reasoning:expr) => {
        ModelFacts {
            key: $key,
            input_per_mtok: $in,
            output_per_mtok: $out,
            cache_read_per_mtok: $read,
            cache_write_per_mtok: $write,
            context_window: $window,
            max_output_tokens: $max_out,
            reasoning: $reasoning,
        }
    };
}

/// Keys are prefixes of the model name once a provider prefix (`openai/`,
/// `anthropic/`, …) is stripped; the longest matching key wins, so
/// `gpt-4o-mini` is not priced as `gpt-4o`. OpenAI charges nothing extra for
/// cache writes (the write price is the input price).
#[rustfmt::skip]
const TABLE: &[ModelFacts] = &[
    // OpenAI
    m!("gpt-4o",            2.50, 10.00, 1.25,   2.50,   128_000,  16_384, false),
    m!("gpt-4o-mini",       0.15,  0.60, 0.075,  0.15,   128_000,  16_384, false),
    m!("gpt-4.1",           2.00,  8.00, 0.50,   2.00, 1_047_576,  32_768, false),
    m!("gpt-4.1-mini",      0.40,  1.60, 0.10,   0.40, 1_047_576,  32_768, false),
    m!("gpt-4.1-nano",      0.10,  0.40, 0.025,  0.10, 1_047_576,  32_768, false),
    m!("gpt-5",             1.25, 10.00, 0.125,  1.25,   400_000, 128_000, true),
    m!("gpt-5-mini",        0.25,  2.00, 0.025,  0.25,   400_000, 128_000, true),
    m!("gpt-5-nano",        0.05,  0.40, 0.005,  0.05,   400_000, 128_000, true),
    m!("o3",                2.00,  8.00, 0.50,   2.00,   200_000, 100_000, true),
    m!("o3-mini",           1.10,  4.40, 0.55,   1.10,   200_000, 100_000, true),
    m!("o4-mini",           1.10,  4.40, 0.275,  1.10,   200_000, 100_000, true),
    // Anthropic (cache writes of the 5-minute cache: 1.25 × input)
    m!("claude-opus-4",    15.00, 75.00, 1.50,  18.75,   200_000,  32_000, false),
    m!("claude-opus-4-5",   5.00, 25.00, 0.50,   6.25,   200_000,  64_000, false),
    m!("claude-sonnet-4",   3.00, 15.00, 0.30,   3.75,   200_000,  64_000, false),
    m!("claude-3-7-sonnet", 3.00, 15.00, 0.30,   3.75,   200_000,  64_000, false),
    m!("claude-3-5-sonnet", 3.00, 15.00, 0.30,   3.75,   200_000,   8_192, false),
    m!("claude-haiku-4-5",  1.00,  5.00, 0.10,   1.25,   200_000,  64_000, false),
    m!("claude-3-5-haiku",  0.80,  4.00, 0.08,   1.00,   200_000,   8_192, false),
    m!("claude-3-haiku",    0.25,  1.25, 0.03,   0.30,   200_000,   4_096, false),
    // Google (prompts up to 200k tokens)
    m!("gemini-2.5-pro",    1.25, 10.00, 0.31,   1.25, 1_048_576,  65_536, true),
    m!("gemini-2.5-flash",  0.30,  2.50, 0.075,  0.30, 1_048_576,  65_536, true),
    // DeepSeek
    m!("deepseek-chat",     0.28,  0.42, 0.028,  0.28,   128_000,   8_192, false),
    m!("deepseek-reasoner", 0.28,  0.42, 0.028,  0.28,   128_000,  64_000, true),
];

/// Routing prefixes that name a provider or a proxy, not the model.
const PROVIDER_PREFIXES: &[&str] = &[
    "litellm_proxy/",
    "openai/",
    "azure/",
    "anthropic/",
    "bedrock/",
    "vertex_ai/",
    "gemini/",
    "deepseek/",
    "openrouter/",
];

/// The model name as the table knows it: lower case, routing prefixes removed,
/// Bedrock's `anthropic.` vendor prefix too.
fn base_name(model: &str) -> String {
    let mut m = model.trim().to_ascii_lowercase();
    while let Some(p) = PROVIDER_PREFIXES.iter().find(|p| m.starts_with(**p)) {
        m = m[p.len()..].to_string();
    }
    // openrouter names carry a vendor segment (`anthropic/claude-…`).
    if let Some((_, rest)) = m.split_once('/') {
        m = rest.to_string();
    }
    m.trim_start_matches("anthropic.")
        .trim_start_matches("us.anthropic.")
        .to_string()
}

/// The facts for `model`, when the table knows it.
pub fn lookup(model: &str) -> Option<&'static ModelFacts> {
    let name = base_name(model);
    TABLE
        .iter()
        .filter(|f| {
            // A prefix match that ends at a separator, so `o3` is not `o3x`.
            name.strip_prefix(f.key)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '.', ':', '@']))
        })
        .max_by_key(|f| f.key.len())
}

/// The dialect of `model`'s family.
pub fn family(model: &str) -> Family {
    let name = base_name(model);
    let lower = model.to_ascii_lowercase();
    if lower.contains("claude") {
        Family::Anthropic
    } else if name.starts_with("gpt-")
        || name.starts_with("chatgpt")
        || name.starts_with("codex")
        || ["o1", "o3", "o4"]
            .iter()
            .any(|p| name == *p || name.starts_with(&format!("{p}-")))
    {
        Family::OpenAi
    } else {
        Family::Other
    }
}

/// Models that refuse a `temperature` (reasoning models), when the table or the
/// family says so.
pub fn is_reasoning(model: &str) -> bool {
    lookup(model).is_some_and(|f| f.reasoning)
        || (family(model) == Family::OpenAi && {
            let n = base_name(model);
            n.starts_with('o') || n.starts_with("gpt-5")
        })
}

/// Models whose API wants the reasoning text of an assistant turn sent back
/// with it (interleaved thinking); others reject or ignore it.
pub fn wants_reasoning_back(model: &str) -> bool {
    let n = model.to_ascii_lowercase();
    [
        "deepseek-reasoner",
        "kimi-k2-thinking",
        "kimi-k2.5",
        "minimax-m2",
    ]
    .iter()
    .any(|p| n.contains(p))
}

/// The output-token limit for `model` when the job sets none.
pub fn default_max_output_tokens(model: &str) -> u64 {
    // Capped: a 128k ceiling as the default would let one runaway reply cost
    // dollars; 32k still fits any single file write.
    lookup(model).map_or(DEFAULT_MAX_OUTPUT_TOKENS, |f| {
        f.max_output_tokens.min(32_768)
    })
}

/// The context window of `model`, when known: the table, else the family's
/// smallest current window (every Claude model since 3 has 200k).
pub fn context_window(model: &str) -> Option<u64> {
    lookup(model)
        .map(|f| f.context_window)
        .or_else(|| (family(model) == Family::Anthropic).then_some(200_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_provider_prefixes_are_ignored() {
        assert_eq!(lookup("gpt-4o").unwrap().key, "gpt-4o");
        assert_eq!(lookup("gpt-4o-mini-2024-07-18").unwrap().key, "gpt-4o-mini");
        assert_eq!(lookup("openai/gpt-4.1-mini").unwrap().key, "gpt-4.1-mini");
        assert_eq!(
            lookup("litellm_proxy/anthropic/claude-sonnet-4-5-20250929")
                .unwrap()
                .key,
            "claude-sonnet-4"
        );
        assert_eq!(
            lookup("claude-opus-4-5-20251101").unwrap().key,
            "claude-opus-4-5"
        );
        assert_eq!(
            lookup("bedrock/anthropic.claude-3-5-haiku-20241022-v1:0")
                .unwrap()
                .key,
            "claude-3-5-haiku"
        );
        assert_eq!(lookup("o3").unwrap().key, "o3");
        assert_eq!(lookup("o3-mini").unwrap().key, "o3-mini");
        assert!(lookup("o3x").is_none());
        assert!(lookup("my-local-model").is_none());
    }

    #[test]
    fn families() {
        assert_eq!(family("claude-sonnet-4-5"), Family::Anthropic);
        assert_eq!(family("anthropic/claude-3-5-haiku"), Family::Anthropic);
        assert_eq!(family("gpt-4o"), Family::OpenAi);
        assert_eq!(family("openai/o3-mini"), Family::OpenAi);
        assert_eq!(family("o4-mini"), Family::OpenAi);
        assert_eq!(family("gemini-2.5-pro"), Family::Other);
        assert_eq!(family("qwen2.5-coder"), Family::Other);
        assert!(is_reasoning("o3-mini") && is_reasoning("gpt-5") && is_reasoning("o1-preview"));
        assert!(!is_reasoning("gpt-4o") && !is_reasoning("claude-sonnet-4"));
    }

    #[test]
    fn output_limits_are_model_aware() {
        assert_eq!(
            default_max_output_tokens("unknown"),
            DEFAULT_MAX_OUTPUT_TOKENS
        );
        assert_eq!(default_max_output_tokens("claude-3-haiku-20240307"), 4_096);
        assert_eq!(default_max_output_tokens("gpt-4o"), 16_384);
        assert_eq!(default_max_output_tokens("claude-sonnet-4-5"), 32_768);
        assert_eq!(context_window("claude-anything"), Some(200_000));
        assert_eq!(context_window("local"), None);
    }
}
