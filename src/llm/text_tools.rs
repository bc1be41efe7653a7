//! Tool calling for endpoints without native tool calls (`llm.native_tools:
//! false`): the tools are described in the system prompt, calls travel as text
//! in the markup OpenHands models know (`<function=NAME>` with one
//! `<parameter=KEY>value</parameter>` per argument, closed by `</function>`),
//! and results go back as user messages headed `EXECUTION RESULT of [NAME]:`.
//!
//! Going out, a native conversation is rewritten into that text form; coming
//! back, the reply's markup is parsed into ordinary tool calls, so the agent
//! above sees the same thing in both modes. Parameter values arrive as text;
//! the agent's schema-driven coercion turns `"5"` into 5 and `"[1, 2]"` into a
//! list. The parser is lenient where models are sloppy (a missing
//! `</function>` or `</parameter>` at the end of the reply, wrapper tags) and
//! linear in the reply's length whatever it holds.

use serde_json::{Map, Value};

use super::{ChatMessage, FunctionCall, Role, ToolCall};

const FN_OPEN: &str = "<function=";
const FN_CLOSE: &str = "</function>";
const PARAM_OPEN: &str = "<parameter=";
const PARAM_CLOSE: &str = "</parameter>";
/// Calls taken from one reply: the format asks for one; a reply of thousands of
/// calls is a runaway, not a plan.
pub const MAX_TEXT_CALLS: usize = 16;
/// Heads a tool result sent back as a user message.
pub const RESULT_HEAD: &str = "EXECUTION RESULT of [";

/// The text appended to the system prompt: the tools and the call format.
pub fn system_suffix(tools: &[Value]) -> String {
    let mut s = String::from(
        "\n\n# Calling tools\nYou can call the functions below. To call one, reply with the call in exactly \
this form and nothing after it:\n\n<function=FUNCTION_NAME>\n<parameter=PARAMETER_NAME>value</parameter>\n\
<parameter=OTHER_PARAMETER>\na value\nover several lines\n</parameter>\n</function>\n\n\
Rules: one function call per reply; start it with `<function=` and end it with `</function>`; give \
every required parameter; lists and objects are written as JSON; you may write your reasoning before \
the call, never after it. A reply without a function call is your final answer and ends the task.\n\n",
    );
    for (i, t) in tools.iter().enumerate() {
        let f = &t["function"];
        let name = f["name"].as_str().unwrap_or("");
        s.push_str(&format!("## Function {}: {name}\n", i + 1));
        if let Some(d) = f["description"].as_str() {
            s.push_str(d);
            s.push('\n');
        }
        let params = &f["parameters"];
        let required: Vec<&str> = params["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = params["properties"].as_object() {
            s.push_str("Parameters:\n");
            for (k, p) in props {
                let kind = p["type"].as_str().unwrap_or("string");
                let need = if required.contains(&k.as_str()) {
                    "required"
                } else {
                    "optional"
                };
                let desc = p["description"].as_str().unwrap_or("");
                s.push_str(&format!("- {k} ({kind}, {need}): {desc}"));
                if let Some(values) = p["enum"].as_array() {
                    let v: Vec<String> = values.iter().map(|v| v.to_string()).collect();
                    s.push_str(&format!(" One of: {}.", v.join(", ")));
                }
                s.push('\n');
            }
        }
        s.push('\n');
    }
    s
}

/// One call as markup.
pub fn render_call(name: &str, arguments: &str) -> String {
    let mut out = format!("{FN_OPEN}{name}>\n");
    if let Ok(Value::Object(args)) = serde_json::from_str::<Value>(arguments) {
        for (k, v) in args {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            if text.contains('\n') {
                out.push_str(&format!("{PARAM_OPEN}{k}>\n{text}\n{PARAM_CLOSE}\n"));
            } else {
                out.push_str(&format!("{PARAM_OPEN}{k}>{text}{PARAM_CLOSE}\n"));
            }
        }
    }
    out.push_str(FN_CLOSE);
    out
}

/// Rewrites a native conversation into the text form: the tools described in
/// the system message, calls as markup in the assistant's text, results as
/// user messages.
pub fn to_text_messages(messages: &[ChatMessage], tools: &[Value]) -> Vec<ChatMessage> {
    let suffix = system_suffix(tools);
    let mut out = Vec::with_capacity(messages.len() + 1);
    let mut has_system = false;
    for m in messages {
        match m.role {
            Role::System => {
                has_system = true;
                let text = format!("{}{suffix}", m.content.as_deref().unwrap_or(""));
                out.push(ChatMessage::text(Role::System, text));
            }
            Role::Assistant if !m.tool_calls.is_empty() => {
                let mut text = m.content.clone().unwrap_or_default();
                for c in &m.tool_calls {
                    if !text.is_empty() {
                        text.push_str("\n\n");
                    }
                    text.push_str(&render_call(&c.function.name, &c.function.arguments));
                }
                let mut a = ChatMessage::text(Role::Assistant, text);
                a.reasoning_content = m.reasoning_content.clone();
                out.push(a);
            }
            Role::Tool => {
                let name = m.name.as_deref().unwrap_or("function");
                let text = format!(
                    "{RESULT_HEAD}{name}]:\n{}",
                    m.content.as_deref().unwrap_or("")
                );
                out.push(ChatMessage::text(Role::User, text));
            }
            _ => out.push(m.clone()),
        }
    }
    if !has_system {
        out.insert(
            0,
            ChatMessage::text(Role::System, suffix.trim_start().to_string()),
        );
    }
    out
}

/// Parses the calls out of a text reply: the text before the first call, and
/// the calls (ids left empty for the agent to assign). A reply without markup
/// is returned whole with no calls.
pub fn parse_reply(content: &str) -> (String, Vec<ToolCall>) {
    let Some(first) = content.find(FN_OPEN) else {
        return (content.to_string(), Vec::new());
    };
    let before = strip_wrappers(&content[..first]).trim().to_string();
    let mut calls = Vec::new();
    let mut rest = &content[first..];
    while let Some(at) = rest.find(FN_OPEN) {
        if calls.len() == MAX_TEXT_CALLS {
            tracing::warn!(
                max = MAX_TEXT_CALLS,
                "text reply has more function calls than are taken"
            );
            break;
        }
        let after_open = &rest[at + FN_OPEN.len()..];
        let Some(name_end) = after_open.find('>') else {
            break; // `<function=` with no name: nothing to call
        };
        let name = after_open[..name_end].trim().to_string();
        let body_all = &after_open[name_end + 1..];
        // A missing `</function>` (the stop word ate it, or the reply was cut)
        // closes at the next call or the end of the reply.
        let (body, next) = match (body_all.find(FN_CLOSE), body_all.find(FN_OPEN)) {
            (Some(c), Some(o)) if o < c => (&body_all[..o], &body_all[o..]),
            (Some(c), _) => (&body_all[..c], &body_all[c + FN_CLOSE.len()..]),
            (None, Some(o)) => (&body_all[..o], &body_all[o..]),
            (None, None) => (body_all, ""),
        };
        calls.push(ToolCall {
            id: String::new(),
            kind: "function".into(),
            function: FunctionCall {
                name,
                arguments: Value::Object(parse_params(body)).to_string(),
            },
        });
        rest = next;
    }
    (before, calls)
}

/// The `<parameter=KEY>value</parameter>` pairs of one call's body; a value
/// left open runs to the next parameter or the end of the body.
fn parse_params(body: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let mut rest = body;
    while let Some(at) = rest.find(PARAM_OPEN) {
        let after = &rest[at + PARAM_OPEN.len()..];
        let Some(key_end) = after.find('>') else {
            break;
        };
        let mut key = &after[..key_end];
        let mut value_all = &after[key_end + 1..];
        // Some models write `<parameter=command=view</parameter>`.
        if let Some((k, v)) = key.split_once('=') {
            key = k;
            value_all = &after[k.len() + 1..];
            let _ = v;
        }
        let (value, next) = match (value_all.find(PARAM_CLOSE), value_all.find(PARAM_OPEN)) {
            (Some(c), Some(o)) if o < c => (&value_all[..o], &value_all[o..]),
            (Some(c), _) => (&value_all[..c], &value_all[c + PARAM_CLOSE.len()..]),
            (None, Some(o)) => (&value_all[..o], &value_all[o..]),
            (None, None) => (value_all, ""),
        };
        out.insert(key.trim().to_string(), Value::String(trim_value(value)));
        rest = next;
    }
    out
}

/// A value without the one newline the format puts on each side of a
/// multi-line value; inner whitespace is the model's and is kept.
fn trim_value(v: &str) -> String {
    let v = v.strip_prefix('\n').unwrap_or(v);
    let v = v.strip_suffix('\n').unwrap_or(v);
    if v.contains('\n') {
        v.to_string()
    } else {
        v.trim().to_string()
    }
}

/// Wrapper tags some models put around a call (`<tool_call>`, `</think>`).
fn strip_wrappers(text: &str) -> &str {
    let t = text.trim_end();
    for tag in ["<tool_call>", "</think>"] {
        if let Some(s) = t.strip_suffix(tag) {
            return s;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn args(c: &ToolCall) -> Value {
        serde_json::from_str(&c.function.arguments).unwrap()
    }

    #[test]
    fn parses_calls_with_multiline_values() {
        let (text, calls) = parse_reply(
            "Let me create it.\n<function=file_editor>\n<parameter=command>create</parameter>\n\
             <parameter=path>/w/a.py</parameter>\n<parameter=file_text>\ndef f():\n    return 1\n</parameter>\n</function>",
        );
        assert_eq!(text, "Let me create it.");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].function.name, "file_editor");
        assert_eq!(
            args(&calls[0]),
            json!({"command": "create", "path": "/w/a.py", "file_text": "def f():\n    return 1"})
        );
    }

    #[test]
    fn tolerates_unclosed_and_malformed_markup() {
        // Never closed: the call runs to the end of the reply.
        let (_, calls) = parse_reply("<function=terminal>\n<parameter=command>ls -la");
        assert_eq!(args(&calls[0]), json!({"command": "ls -la"}));
        let (_, calls) = parse_reply(
            "<function=file_editor><parameter=command=view</parameter><parameter=path>/w</parameter></function>",
        );
        assert_eq!(args(&calls[0]), json!({"command": "view", "path": "/w"}));
        // A name that never ends: no call, no panic.
        let (text, calls) = parse_reply("<function=terminal");
        assert!(calls.is_empty() && text.is_empty());
        let (_, calls) = parse_reply(
            "<tool_call><function=think><parameter=thought>x</parameter></function></tool_call>",
        );
        assert_eq!(calls[0].function.name, "think");
        // No markup: a plain answer.
        let (text, calls) = parse_reply("all done");
        assert_eq!((text.as_str(), calls.len()), ("all done", 0));
    }

    #[test]
    fn calls_of_one_reply_are_capped() {
        let reply = "<function=think><parameter=thought>x</parameter></function>".repeat(10_000);
        assert_eq!(parse_reply(&reply).1.len(), MAX_TEXT_CALLS);
    }

    #[test]
    fn huge_reply_is_parsed_in_one_pass() {
        let big = "x".repeat(20_000_000);
        let reply = format!("<function=think><parameter=thought>{big}");
        let t = std::time::Instant::now();
        let (_, calls) = parse_reply(&reply);
        assert_eq!(calls.len(), 1);
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn conversation_round_trips_through_text() {
        let tools = vec![
            json!({"type": "function", "function": {"name": "terminal", "description": "Run a command.",
            "parameters": {"type": "object", "properties": {"command": {"type": "string", "description": "the command"}}, "required": ["command"]}}}),
        ];
        let mut call = ChatMessage::text(Role::Assistant, "looking");
        call.tool_calls.push(ToolCall {
            id: "c1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "terminal".into(),
                arguments: r#"{"command":"ls"}"#.into(),
            },
        });
        let msgs = vec![
            ChatMessage::text(Role::System, "sys"),
            ChatMessage::text(Role::User, "task"),
            call,
            ChatMessage::tool_result("c1", "terminal", "a.txt"),
        ];
        let text = to_text_messages(&msgs, &tools);
        assert_eq!(text.len(), 4);
        let sys = text[0].content.as_deref().unwrap();
        assert!(
            sys.starts_with("sys")
                && sys.contains("## Function 1: terminal")
                && sys.contains("command (string, required)")
        );
        let a = text[2].content.as_deref().unwrap();
        assert!(
            a.contains("<function=terminal>\n<parameter=command>ls</parameter>\n</function>"),
            "{a}"
        );
        assert!(text[2].tool_calls.is_empty());
        assert_eq!(text[3].role, Role::User);
        assert_eq!(
            text[3].content.as_deref(),
            Some("EXECUTION RESULT of [terminal]:\na.txt")
        );
        // What was rendered parses back to the same call.
        let (_, calls) = parse_reply(a);
        assert_eq!(args(&calls[0]), json!({"command": "ls"}));
    }
}
