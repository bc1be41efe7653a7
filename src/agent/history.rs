//! The LLM messages of a step, rebuilt from the event log each time (the log is
//! the only per-job state): system prompt, task, then the exchanges. The tool
//! calls of one reply become one assistant message followed by one tool message
//! per call; agent errors go back as tool results so the model can correct
//! itself; environment nudges and the condensation summary are user messages.

use super::condense::Item;
use super::events::{EventKind, Source};
use super::tools::ERROR_MARKER;
use crate::llm::{ChatMessage, FunctionCall, Role, ToolCall};

/// The messages for `items` (see [`super::condense::view`]).
pub fn messages(items: &[Item<'_>]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::new();
    // The assistant message collecting the calls of the reply being rebuilt.
    let mut open: Option<(u32, usize)> = None;
    for item in items {
        let e = match item {
            Item::Summary(s) => {
                open = None;
                out.push(ChatMessage::text(Role::User, *s));
                continue;
            }
            Item::Event(e) => *e,
        };
        match &e.kind {
            EventKind::SystemPromptEvent { system_prompt, .. } => {
                open = None;
                out.push(ChatMessage::text(Role::System, system_prompt.as_str()));
            }
            EventKind::MessageEvent {
                content, reasoning, ..
            } => {
                open = None;
                let role = if e.source == Source::Agent {
                    Role::Assistant
                } else {
                    Role::User
                };
                let mut m = ChatMessage::text(role, content.as_str());
                if role == Role::Assistant {
                    m.reasoning_content = reasoning.clone();
                }
                out.push(m);
            }
            EventKind::ActionEvent {
                tool_name,
                tool_call_id,
                arguments,
                thought,
                step,
                meta,
            } => {
                let call = ToolCall {
                    id: tool_call_id.clone(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: tool_name.clone(),
                        arguments: wire_arguments(arguments),
                    },
                };
                match open {
                    Some((s, at)) if s == *step => out[at].tool_calls.push(call),
                    _ => {
                        let mut m = ChatMessage::text(Role::Assistant, thought.as_str());
                        if thought.is_empty() {
                            m.content = None;
                        }
                        m.reasoning_content = meta.reasoning.clone();
                        m.thinking_blocks = meta.thinking_blocks.clone();
                        m.tool_calls.push(call);
                        open = Some((*step, out.len()));
                        out.push(m);
                    }
                }
            }
            EventKind::ObservationEvent {
                tool_name,
                tool_call_id,
                content,
                is_error,
                ..
            } => {
                let content = if *is_error {
                    format!("{ERROR_MARKER}\n{content}")
                } else {
                    content.clone()
                };
                out.push(ChatMessage::tool_result(tool_call_id, tool_name, content));
            }
            EventKind::AgentErrorEvent {
                tool_name,
                tool_call_id,
                error,
            } => {
                out.push(ChatMessage::tool_result(
                    tool_call_id,
                    tool_name,
                    error.as_str(),
                ));
            }
            EventKind::ConversationStateUpdateEvent { .. }
            | EventKind::ConversationErrorEvent { .. }
            | EventKind::Condensation { .. } => {}
        }
    }
    repair_pairs(out)
}

/// Arguments as sent back to the API: the call's JSON object, or `{}` when the
/// model's arguments were not an object (their text is quoted in the error the
/// model gets as the result; providers reject invalid JSON here).
fn wire_arguments(arguments: &serde_json::Value) -> String {
    if arguments.is_object() {
        arguments.to_string()
    } else {
        "{}".to_string()
    }
}

/// Enforces the API's pairing rule whatever the log holds (a run cut short, a
/// condensation boundary): every tool call of an assistant message is answered by
/// a tool message right after it, and every tool message answers such a call.
/// Unanswered calls are dropped from their message; stray results are dropped.
fn repair_pairs(messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    let mut iter = messages.into_iter().peekable();
    while let Some(mut m) = iter.next() {
        match m.role {
            Role::Tool => {} // not right after its call: a stray result
            Role::Assistant if !m.tool_calls.is_empty() => {
                let mut results = Vec::new();
                while let Some(next) = iter.next_if(|n| n.role == Role::Tool) {
                    let answers = next
                        .tool_call_id
                        .as_deref()
                        .is_some_and(|id| m.tool_calls.iter().any(|c| c.id == id));
                    let first = !results
                        .iter()
                        .any(|r: &ChatMessage| r.tool_call_id == next.tool_call_id);
                    if answers && first {
                        results.push(next);
                    }
                }
                m.tool_calls.retain(|c| {
                    results
                        .iter()
                        .any(|r| r.tool_call_id.as_deref() == Some(c.id.as_str()))
                });
                if m.tool_calls.is_empty() && m.content.is_none() {
                    m.content = Some(String::new());
                }
                out.push(m);
                out.extend(results);
            }
            _ => out.push(m),
        }
    }
    out
}

/// A tool call id for calls that came without one, unique within the log.
pub fn fallback_call_id(step: u32, index: usize) -> String {
    format!("call_{step}_{index}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::condense::view;
    use crate::agent::events::EventLog;
    use serde_json::json;

    fn action(log: &EventLog, id: &str, step: u32, thought: &str) {
        log.append(
            Source::Agent,
            EventKind::ActionEvent {
                tool_name: "terminal".into(),
                tool_call_id: id.into(),
                arguments: json!({"command": "ls"}),
                thought: thought.into(),
                step,
                meta: Default::default(),
            },
        );
    }

    fn obs(log: &EventLog, id: &str) {
        log.append(
            Source::Environment,
            EventKind::ObservationEvent {
                tool_name: "terminal".into(),
                tool_call_id: id.into(),
                content: "out".into(),
                exit_code: Some(0),
                is_error: false,
                timed_out: false,
            },
        );
    }

    #[test]
    fn calls_of_one_reply_form_one_assistant_message() {
        let log = EventLog::in_memory();
        log.append(
            Source::Agent,
            EventKind::SystemPromptEvent {
                system_prompt: "sys".into(),
                tools: vec![],
            },
        );
        log.append(
            Source::User,
            EventKind::MessageEvent {
                content: "task".into(),
                reasoning: None,
                nudge: false,
            },
        );
        action(&log, "a", 1, "let me look");
        obs(&log, "a");
        action(&log, "b", 1, "");
        log.append(
            Source::Environment,
            EventKind::AgentErrorEvent {
                tool_name: "nope".into(),
                tool_call_id: "b".into(),
                error: "Tool 'nope' not found".into(),
            },
        );
        action(&log, "c", 2, "");
        obs(&log, "c");
        log.append(
            Source::Environment,
            EventKind::MessageEvent {
                content: "nudge".into(),
                reasoning: None,
                nudge: true,
            },
        );
        log.append(
            Source::Agent,
            EventKind::MessageEvent {
                content: "done".into(),
                reasoning: None,
                nudge: false,
            },
        );

        let events = log.snapshot();
        let m = messages(&view(&events));
        let roles: Vec<Role> = m.iter().map(|m| m.role).collect();
        use Role::*;
        assert_eq!(
            roles,
            vec![
                System, User, Assistant, Tool, Tool, Assistant, Tool, User, Assistant
            ]
        );
        assert_eq!(m[2].content.as_deref(), Some("let me look"));
        assert_eq!(
            m[2].tool_calls
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(m[4].tool_call_id.as_deref(), Some("b"));
        assert_eq!(m[4].content.as_deref(), Some("Tool 'nope' not found"));
        assert_eq!(m[5].content, None);
        assert_eq!(m[8].content.as_deref(), Some("done"));
    }

    #[test]
    fn unanswered_calls_and_stray_results_are_dropped() {
        let log = EventLog::in_memory();
        log.append(
            Source::User,
            EventKind::MessageEvent {
                content: "task".into(),
                reasoning: None,
                nudge: false,
            },
        );
        action(&log, "a", 1, "");
        obs(&log, "a");
        action(&log, "b", 1, ""); // run cut short: no result
        obs(&log, "zzz"); // answers nothing
        let events = log.snapshot();
        let m = messages(&view(&events));
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].tool_calls.len(), 1);
        assert_eq!(m[2].tool_call_id.as_deref(), Some("a"));
    }

    #[test]
    fn invalid_arguments_go_back_as_an_empty_object() {
        assert_eq!(wire_arguments(&json!("{not json")), "{}");
        assert_eq!(
            wire_arguments(&json!({"command": "ls"})),
            r#"{"command":"ls"}"#
        );
    }
}
