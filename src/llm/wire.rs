//! The request body as each endpoint family expects it (see [`super::models`]):
//! the output-token limit under the name the endpoint takes, reasoning effort
//! (`reasoning_effort`, or Anthropic's `thinking` budget), no temperature for
//! reasoning models, and prompt caching — `cache_control` marks on the system
//! prompt and the newest messages for Claude, a stable `prompt_cache_key` for
//! OpenAI. The body borrows the conversation: a step does not copy the history
//! before serialising it.

use serde::Serialize;
use serde_json::{Value, json};

use super::models::{self, Family};
use super::{ChatMessage, LlmSettings, Role, ToolCall};

/// Messages after the system prompt that get a cache mark (Anthropic allows
/// four breakpoints; the system prompt takes one).
const CACHED_TAIL: usize = 2;

#[derive(Serialize)]
pub struct RequestBody<'a> {
    pub model: &'a str,
    pub messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub tools: &'a [Value],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// The limit under its classic name (Anthropic-style and most compatible servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// OpenAI's name for it; its reasoning models refuse `max_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_cache_key: Option<&'a str>,
}

#[derive(Serialize)]
pub struct WireMessage<'a> {
    pub role: Role,
    pub content: Content<'a>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub tool_calls: &'a [ToolCall],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub thinking_blocks: &'a [Value],
}

/// Plain text, or one text part carrying a cache mark.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Content<'a> {
    Text(Option<&'a str>),
    Cached([CachedPart<'a>; 1]),
}

#[derive(Serialize)]
pub struct CachedPart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    cache_control: Value,
}

/// Thinking budget of each effort level for Anthropic-style models.
fn thinking_budget(effort: &str) -> u64 {
    match effort {
        "low" => 2_048,
        "high" => 24_576,
        _ => 8_192,
    }
}

/// The body of one request for `settings.model`.
pub fn body<'a>(
    settings: &'a LlmSettings,
    model: &'a str,
    messages: &'a [ChatMessage],
    tools: &'a [Value],
) -> RequestBody<'a> {
    let family = models::family(model);
    let effort = settings.reasoning_effort.as_deref();
    let reasoning = effort.is_some() || models::is_reasoning(model);
    let mut b = RequestBody {
        model,
        messages: wire_messages(
            messages,
            family == Family::Anthropic,
            models::wants_reasoning_back(model),
        ),
        tools,
        // Reasoning models refuse a sampling temperature.
        temperature: settings.temperature.filter(|_| !reasoning),
        max_tokens: None,
        max_completion_tokens: None,
        reasoning_effort: None,
        thinking: None,
        prompt_cache_key: None,
    };
    let limit = settings.max_output_tokens;
    match family {
        Family::OpenAi => {
            b.max_completion_tokens = limit;
            b.reasoning_effort = effort;
            b.prompt_cache_key = settings.prompt_cache_key.as_deref();
        }
        Family::Anthropic => {
            b.max_tokens = limit;
            // The budget must stay below the output limit, and at least 1024.
            if let (Some(e), Some(max)) = (effort, limit) {
                let budget = thinking_budget(e).min(max / 2);
                if budget >= 1_024 {
                    b.thinking = Some(json!({"type": "enabled", "budget_tokens": budget}));
                }
            }
        }
        Family::Other => {
            b.max_tokens = limit;
            b.reasoning_effort = effort;
        }
    }
    b
}

fn wire_messages(
    messages: &[ChatMessage],
    cache_marks: bool,
    reasoning_back: bool,
) -> Vec<WireMessage<'_>> {
    // Anthropic caches the prefix up to each mark: the system prompt (stable for
    // the whole job) and the newest user/tool messages (the growing history).
    let mut marked = vec![false; messages.len()];
    if cache_marks {
        let mut tail = 0;
        for (i, m) in messages.iter().enumerate().rev() {
            let text = m.content.as_deref().is_some_and(|c| !c.is_empty());
            match m.role {
                Role::System if text => marked[i] = true,
                Role::User | Role::Tool if text && tail < CACHED_TAIL => {
                    marked[i] = true;
                    tail += 1;
                }
                _ => {}
            }
        }
    }
    messages
        .iter()
        .zip(marked)
        .map(|(m, mark)| WireMessage {
            role: m.role,
            content: match (mark, m.content.as_deref()) {
                (true, Some(text)) => Content::Cached([CachedPart {
                    kind: "text",
                    text,
                    cache_control: json!({"type": "ephemeral"}),
                }]),
                (_, c) => Content::Text(c),
            },
            tool_calls: &m.tool_calls,
            tool_call_id: m.tool_call_id.as_deref(),
            name: m.name.as_deref(),
            reasoning_content: m
                .reasoning_content
                .as_deref()
                .filter(|_| reasoning_back && m.role == Role::Assistant),
            thinking_blocks: if m.role == Role::Assistant {
                &m.thinking_blocks
            } else {
                &[]
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> Vec<ChatMessage> {
        let mut a = ChatMessage::text(Role::Assistant, "thinking aloud");
        a.reasoning_content = Some("why".into());
        vec![
            ChatMessage::text(Role::System, "sys"),
            ChatMessage::text(Role::User, "task"),
            a,
            ChatMessage::tool_result("c", "terminal", "out"),
            ChatMessage::text(Role::User, "nudge"),
        ]
    }

    fn json_of(settings: &LlmSettings) -> Value {
        let msgs = conversation();
        serde_json::to_value(body(settings, &settings.model, &msgs, &[])).unwrap()
    }

    #[test]
    fn claude_gets_cache_marks_and_max_tokens() {
        let s = LlmSettings::new("claude-sonnet-4-5", "http://x");
        let v = json_of(&s);
        assert_eq!(v["max_tokens"], 32_768);
        assert!(v.get("max_completion_tokens").is_none() && v.get("prompt_cache_key").is_none());
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m[0]["content"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(m[1]["content"], "task", "older messages stay plain");
        assert_eq!(m[3]["content"][0]["text"], "out");
        assert_eq!(m[4]["content"][0]["cache_control"]["type"], "ephemeral");
        assert!(
            m[2].get("reasoning_content").is_none(),
            "Claude does not take reasoning_content back"
        );
    }

    #[test]
    fn openai_gets_a_cache_key_and_max_completion_tokens() {
        let mut s = LlmSettings::new("gpt-4o", "http://x");
        s.prompt_cache_key = Some("fleet-job-1".into());
        s.temperature = Some(0.3);
        let v = json_of(&s);
        assert_eq!(v["prompt_cache_key"], "fleet-job-1");
        assert_eq!(v["max_completion_tokens"], 16_384);
        assert_eq!(v["temperature"], 0.3);
        assert_eq!(v["messages"][0]["content"], "sys");
        // A reasoning model: effort sent, temperature dropped.
        let mut s = LlmSettings::new("o3-mini", "http://x");
        s.temperature = Some(0.3);
        s.reasoning_effort = Some("high".into());
        let v = json_of(&s);
        assert_eq!(v["reasoning_effort"], "high");
        assert!(v.get("temperature").is_none());
    }

    #[test]
    fn claude_thinking_budget_stays_below_the_limit() {
        let mut s = LlmSettings::new("claude-sonnet-4", "http://x");
        s.reasoning_effort = Some("high".into());
        s.max_output_tokens = Some(10_000);
        s.temperature = Some(0.0);
        let v = json_of(&s);
        assert_eq!(v["thinking"]["budget_tokens"], 5_000);
        assert!(v.get("temperature").is_none() && v.get("reasoning_effort").is_none());
    }

    #[test]
    fn reasoning_goes_back_only_where_wanted() {
        let s = LlmSettings::new("deepseek-reasoner", "http://x");
        let v = json_of(&s);
        assert_eq!(v["messages"][2]["reasoning_content"], "why");
        assert_eq!(v["max_tokens"], 32_768);
        let s = LlmSettings::new("local-model", "http://x");
        let v = json_of(&s);
        assert!(v["messages"][2].get("reasoning_content").is_none());
        assert_eq!(v["max_tokens"], models::DEFAULT_MAX_OUTPUT_TOKENS);
        // Thinking blocks go back verbatim on assistant turns, whatever the model.
        let mut msgs = conversation();
        msgs[2].thinking_blocks =
            vec![json!({"type": "thinking", "thinking": "t", "signature": "sig"})];
        let s = LlmSettings::new("claude-sonnet-4", "http://x");
        let v = serde_json::to_value(body(&s, &s.model, &msgs, &[])).unwrap();
        assert_eq!(v["messages"][2]["thinking_blocks"][0]["signature"], "sig");
        assert!(v["messages"][1].get("thinking_blocks").is_none());
    }
}
