//! Context condensation (AGENT-SPEC.md "Context condensation"): when the LLM
//! reports a context-length error, the history grows past
//! [`MAX_HISTORY_EVENTS`], or the prompt nears the model's window, the middle
//! of the history is replaced by a summary. The first [`KEEP_FIRST`] events
//! (system prompt, task, first exchange) and a recent tail of about half the
//! history stay as they were; as a last resort ([`Mode::LastResort`]) only the
//! system prompt, the task and the newest turn stay.
//!
//! The summary is written by the LLM (upstream's LLMSummarizingCondenser), from
//! the request [`summary_request`] builds; when that call fails the
//! deterministic digest of the forgotten events (which tools ran, with which
//! main argument, and how they ended) stands in, so condensing never fails. The
//! forgotten events stay in the log (events.jsonl keeps everything); a
//! `Condensation` event names them, and the history sent to the LLM is rebuilt
//! from the log through [`view`].
//!
//! Cuts fall only between whole exchanges: the tool calls of one reply and their
//! results are kept or forgotten together, since a tool result without its call
//! (or the reverse) is rejected by the API.

use std::collections::{BTreeSet, HashSet};

use super::events::{Event, EventKind, Source};
use crate::llm::{ChatMessage, Role};
use crate::workspace::output::truncate_middle;

/// How much of the history a condensation forgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The middle: the first events and about half the history stay.
    Normal,
    /// Everything but the system prompt, the task (and the skills that came
    /// with it) and the newest turn: the last resort before failing.
    LastResort,
}

/// The summary request's event texts are cut to this many characters each…
const REQUEST_EVENT_CHARS: usize = 1_500;
/// …and the whole request to this many, so it fits any model's window.
const REQUEST_CHARS: usize = 60_000;

/// The instructions of a summary request, in our words; they ask for what
/// upstream's summarizing prompt tracks.
pub const SUMMARY_PROMPT: &str = "You are condensing the history of an autonomous coding agent so it can continue its task with less context. Below are the events being removed from its history (earlier summaries included). Write a concise summary the agent can rely on instead of them, with these parts where they apply:

USER_CONTEXT: the task's essential requirements and constraints.
TASK_TRACKING: active tasks with their exact IDs and statuses, if the events planned any.
COMPLETED: what has been done so far, with results.
PENDING: what is still to be done.
CURRENT_STATE: the state that matters now (working directory, variables, running processes).
CODE_STATE: files and functions examined or changed.
TESTS: which tests ran, which failed and with what error.
CHANGES: the edits made.
DEPS: dependencies installed or needed.
VERSION_CONTROL_STATUS: branch and repository state.

Be factual and specific (paths, names, commands, error messages); skip what does not matter for the rest of the task. Reply with the summary only.";

/// Heads a summary the LLM wrote, as the agent reads it.
const LLM_SUMMARY_HEAD: &str = "Part of this conversation was condensed to fit the context window. Summary of the condensed part:\n";

/// Above this many history events, the history is condensed before the next step
/// (upstream's default condenser: 80).
pub const MAX_HISTORY_EVENTS: usize = 80;
/// Events kept at the start (upstream: 4).
pub const KEEP_FIRST: usize = 4;
/// The summary is cut in the middle beyond this many characters, so repeated
/// condensations stay bounded.
const MAX_SUMMARY_CHARS: usize = 8_000;
/// Arguments and results are quoted up to this many characters each.
const QUOTE_CHARS: usize = 160;

/// One element of the history the LLM sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    Event(&'a Event),
    /// The summary of the forgotten middle, sent as a user message.
    Summary(&'a str),
}

/// A condensation to append: the events to forget and what they did.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub forgotten_event_ids: Vec<u64>,
    pub summary: String,
}

/// Whether an event is part of the conversation the LLM sees.
fn is_history(e: &Event) -> bool {
    matches!(
        e.kind,
        EventKind::SystemPromptEvent { .. }
            | EventKind::MessageEvent { .. }
            | EventKind::ActionEvent { .. }
            | EventKind::ObservationEvent { .. }
            | EventKind::AgentErrorEvent { .. }
    )
}

/// The history as the LLM sees it: every conversation event not forgotten by a
/// condensation, with the latest summary in place of the forgotten middle.
pub fn view(events: &[Event]) -> Vec<Item<'_>> {
    let mut forgotten = HashSet::new();
    let mut latest: Option<(&str, u64)> = None;
    for e in events {
        if let EventKind::Condensation {
            forgotten_event_ids,
            summary,
        } = &e.kind
        {
            forgotten.extend(forgotten_event_ids.iter().copied());
            if let Some(first) = forgotten_event_ids.iter().min() {
                latest = Some((summary.as_str(), *first));
            }
        }
    }
    let mut items = Vec::new();
    let mut summary = latest;
    for e in events
        .iter()
        .filter(|e| is_history(e) && !forgotten.contains(&e.id))
    {
        // The summary stands where its first forgotten event stood.
        if let Some((text, first)) = summary {
            if e.id > first {
                items.push(Item::Summary(text));
                summary = None;
            }
        }
        items.push(Item::Event(e));
    }
    if let Some((text, _)) = summary {
        items.push(Item::Summary(text));
    }
    items
}

/// Number of conversation events in the view (the summary not counted).
pub fn history_len(items: &[Item<'_>]) -> usize {
    items.iter().filter(|i| matches!(i, Item::Event(_))).count()
}

/// Plans a condensation of `items`, or `None` when nothing is left to forget.
pub fn plan(items: &[Item<'_>]) -> Option<Plan> {
    plan_with(items, Mode::Normal)
}

/// Plans a condensation in `mode`; its `summary` is the digest (the fallback
/// when the LLM cannot write one).
pub fn plan_with(items: &[Item<'_>], mode: Mode) -> Option<Plan> {
    let (forgotten, previous) = select(items, mode)?;
    Some(Plan {
        forgotten_event_ids: forgotten.iter().map(|e| e.id).collect(),
        summary: summarize(previous, &forgotten),
    })
}

/// The events a condensation in `mode` forgets, and the earlier summary among
/// them; `None` when nothing can be forgotten.
fn select<'a>(items: &[Item<'a>], mode: Mode) -> Option<(Vec<&'a Event>, Option<&'a str>)> {
    let units = units(items);
    let total = history_len(items);
    let size = |u: &[Item<'_>]| history_len(u);

    let (head, tail) = match mode {
        Mode::Normal => {
            // Head: whole units until KEEP_FIRST events are covered.
            let mut head = 0;
            let mut covered = 0;
            while head < units.len() && covered < KEEP_FIRST {
                covered += size(units[head]);
                head += 1;
            }
            // Tail: whole units from the end until about half the history is covered.
            let mut tail = units.len();
            let mut kept = 0;
            while tail > head && kept < total / 2 {
                tail -= 1;
                kept += size(units[tail]);
            }
            (head, tail)
        }
        Mode::LastResort => {
            // Head: the system prompt and the leading user messages (the task
            // and its skills); tail: the newest unit.
            let head = units
                .iter()
                .take_while(|u| {
                    u.iter().all(|i| {
                        matches!(i, Item::Event(e) if matches!(e.kind, EventKind::SystemPromptEvent { .. })
                            || (e.source == Source::User && matches!(e.kind, EventKind::MessageEvent { .. })))
                    })
                })
                .count();
            (head, units.len().saturating_sub(1).max(head))
        }
    };
    let middle = &units[head..tail];
    let forgotten: Vec<&'a Event> = middle
        .iter()
        .flat_map(|u| u.iter())
        .filter_map(|i| match i {
            Item::Event(e) => Some(*e),
            Item::Summary(_) => None,
        })
        .collect();
    if forgotten.is_empty() {
        return None;
    }
    let previous = middle.iter().flat_map(|u| u.iter()).find_map(|i| match i {
        Item::Summary(s) => Some(*s),
        Item::Event(_) => None,
    });
    Some((forgotten, previous))
}

/// The request asking the LLM to summarise what `plan` forgets: one user
/// message, the instructions then each forgotten event (an earlier summary
/// first), each cut to a bounded length.
pub fn summary_request(items: &[Item<'_>], plan: &Plan) -> Vec<ChatMessage> {
    let forgotten: HashSet<u64> = plan.forgotten_event_ids.iter().copied().collect();
    let mut events = Vec::new();
    let mut previous = None;
    for (i, item) in items.iter().enumerate() {
        match item {
            Item::Summary(s) if previous.is_none() && i > 0 => previous = Some(*s),
            Item::Event(e) if forgotten.contains(&e.id) => events.push(describe_event(e)),
            _ => {}
        }
    }
    let mut text = String::from(SUMMARY_PROMPT);
    if let Some(p) = previous {
        text.push_str(&format!(
            "\n\n<EVENT>\n{}\n</EVENT>",
            truncate_middle(p, REQUEST_EVENT_CHARS * 4)
        ));
    }
    for e in events {
        text.push_str(&format!("\n\n<EVENT>\n{e}\n</EVENT>"));
    }
    vec![ChatMessage::text(
        Role::User,
        truncate_middle(&text, REQUEST_CHARS),
    )]
}

/// One event as the summariser reads it.
fn describe_event(e: &Event) -> String {
    let body = match &e.kind {
        EventKind::ActionEvent {
            tool_name,
            arguments,
            thought,
            ..
        } => {
            let mut s = format!("agent called {tool_name} {arguments}");
            if !thought.is_empty() {
                s = format!("agent said: {thought}\n{s}");
            }
            s
        }
        EventKind::ObservationEvent {
            tool_name,
            content,
            exit_code,
            is_error,
            ..
        } => {
            let how = match (is_error, exit_code) {
                (true, _) => " (error)".to_string(),
                (_, Some(c)) => format!(" (exit code {c})"),
                _ => String::new(),
            };
            format!("result of {tool_name}{how}:\n{content}")
        }
        EventKind::AgentErrorEvent {
            tool_name, error, ..
        } => format!("call to {tool_name} rejected: {error}"),
        EventKind::MessageEvent { content, .. } => {
            let who = match e.source {
                Source::Agent => "agent",
                Source::User => "user",
                Source::Environment => "environment",
            };
            format!("{who} message: {content}")
        }
        _ => String::new(),
    };
    truncate_middle(&body, REQUEST_EVENT_CHARS)
}

/// The summary text an LLM wrote, as it stands in the history.
pub fn llm_summary(text: &str) -> String {
    truncate_middle(
        &format!("{LLM_SUMMARY_HEAD}{}", text.trim()),
        MAX_SUMMARY_CHARS,
    )
}

/// Groups the history into units that must stay together: the tool calls of
/// one reply with their results; every other item alone.
fn units<'i, 'a>(items: &'i [Item<'a>]) -> Vec<&'i [Item<'a>]> {
    let mut units = Vec::new();
    let mut start = 0;
    let mut step: Option<u32> = None;
    for (i, item) in items.iter().enumerate() {
        let joins = match item {
            Item::Event(e) => match &e.kind {
                EventKind::ActionEvent { step: s, .. } => step == Some(*s),
                EventKind::ObservationEvent { .. } | EventKind::AgentErrorEvent { .. } => {
                    step.is_some()
                }
                _ => false,
            },
            Item::Summary(_) => false,
        };
        if !joins && i > start {
            units.push(&items[start..i]);
            start = i;
        }
        step = match item {
            Item::Event(Event {
                kind: EventKind::ActionEvent { step: s, .. },
                ..
            }) => Some(*s),
            Item::Event(Event {
                kind: EventKind::ObservationEvent { .. } | EventKind::AgentErrorEvent { .. },
                ..
            }) => step,
            _ => None,
        };
    }
    if start < items.len() {
        units.push(&items[start..]);
    }
    units
}

/// The deterministic summary of forgotten events (see the module doc).
fn summarize(previous: Option<&str>, forgotten: &[&Event]) -> String {
    let mut lines = Vec::new();
    let mut edited = BTreeSet::new();
    for e in forgotten {
        match &e.kind {
            EventKind::ActionEvent {
                tool_name,
                arguments,
                ..
            } => {
                if tool_name == "file_editor" {
                    let cmd = arguments
                        .get("command")
                        .and_then(|v| v.as_str())
                        .unwrap_or("");
                    if let (true, Some(path)) = (
                        matches!(cmd, "create" | "str_replace" | "insert" | "undo_edit"),
                        arguments.get("path").and_then(|v| v.as_str()),
                    ) {
                        edited.insert(path.to_string());
                    }
                }
                lines.push(format!(
                    "- called {tool_name}: {}",
                    describe_call(tool_name, arguments)
                ));
            }
            EventKind::ObservationEvent {
                content,
                exit_code,
                is_error,
                timed_out,
                ..
            } => {
                let how = match (timed_out, is_error, exit_code) {
                    (true, _, _) => "timed out".to_string(),
                    (_, true, _) => "failed".to_string(),
                    (_, _, Some(code)) => format!("exit code {code}"),
                    _ => "ok".to_string(),
                };
                lines.push(format!("  → {how}: {}", quote(content)));
            }
            EventKind::AgentErrorEvent { error, .. } => {
                lines.push(format!("  → rejected: {}", quote(error)))
            }
            EventKind::MessageEvent { content, .. } if !content.trim().is_empty() => {
                let who = match e.source {
                    Source::Agent => "you said",
                    Source::User => "the user said",
                    Source::Environment => "the environment said",
                };
                lines.push(format!("- {who}: {}", quote(content)));
            }
            _ => {}
        }
    }
    let mut s = String::from(
        "Part of this conversation was condensed to fit the context window. What happened in the \
condensed part, in order:\n",
    );
    if let Some(p) = previous {
        // A previous summary in the forgotten part: keep what it said.
        let body = p.split_once(":\n").map_or(p, |(_, b)| b);
        s.push_str(body.trim_end());
        s.push('\n');
    }
    s.push_str(&lines.join("\n"));
    if !edited.is_empty() {
        s.push_str("\nFiles changed with file_editor in that part: ");
        s.push_str(&edited.into_iter().collect::<Vec<_>>().join(", "));
    }
    s.push_str("\nRe-read any file you need before relying on its content.");
    truncate_middle(&s, MAX_SUMMARY_CHARS)
}

/// The main argument of a call, as one short line.
fn describe_call(tool: &str, args: &serde_json::Value) -> String {
    let field = |k: &str| args.get(k).and_then(|v| v.as_str()).unwrap_or("");
    match tool {
        "terminal" => format!("`{}`", quote(field("command"))),
        "file_editor" => format!("{} {}", field("command"), field("path")),
        "task_tracker" => field("command").to_string(),
        "think" => quote(field("thought")),
        "finish" => quote(field("message")),
        _ => quote(&args.to_string()),
    }
}

/// One line, at most [`QUOTE_CHARS`] characters.
fn quote(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= QUOTE_CHARS {
        return one_line;
    }
    let cut: String = one_line.chars().take(QUOTE_CHARS).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::events::EventLog;
    use serde_json::json;

    /// One `echo {step}` terminal call (id `id`) and its observation.
    fn echo_call(log: &EventLog, id: String, step: u32) {
        log.append(
            Source::Agent,
            EventKind::ActionEvent {
                tool_name: "terminal".into(),
                tool_call_id: id.clone(),
                arguments: json!({"command": format!("echo {step}")}),
                thought: String::new(),
                step,
                meta: Default::default(),
            },
        );
        log.append(
            Source::Environment,
            EventKind::ObservationEvent {
                tool_name: "terminal".into(),
                tool_call_id: id,
                content: format!("{step}"),
                exit_code: Some(0),
                is_error: false,
                timed_out: false,
            },
        );
    }

    /// A log of: system prompt, task, then `steps` replies of `calls` tool calls each.
    fn log_with(steps: u32, calls: u32) -> EventLog {
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
        for s in 1..=steps {
            for c in 0..calls {
                echo_call(&log, format!("call_{s}_{c}"), s);
            }
        }
        log
    }

    fn condense(log: &EventLog) -> bool {
        let plan = log.with(|ev| plan(&view(ev)));
        match plan {
            Some(p) => {
                log.append(
                    Source::Environment,
                    EventKind::Condensation {
                        forgotten_event_ids: p.forgotten_event_ids,
                        summary: p.summary,
                    },
                );
                true
            }
            None => false,
        }
    }

    #[test]
    fn keeps_head_and_half_tail() {
        let log = log_with(50, 1); // 102 history events
        assert!(condense(&log));
        let events = log.snapshot();
        let v = view(&events);
        let ids: Vec<u64> = v
            .iter()
            .filter_map(|i| {
                if let Item::Event(e) = i {
                    Some(e.id)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(&ids[..4], &[0, 1, 2, 3]);
        assert_eq!(*ids.last().unwrap(), 101);
        assert!(matches!(v[4], Item::Summary(_)));
        let n = history_len(&v);
        assert!((51..=60).contains(&n), "{n}");
        let Item::Summary(s) = v[4] else {
            unreachable!()
        };
        assert!(s.contains("called terminal: `echo 2`"), "{s}");
        assert!(s.contains("exit code 0"), "{s}");
    }

    #[test]
    fn never_splits_a_reply_from_its_results() {
        for calls in 1..=4 {
            let log = log_with(30, calls);
            for _ in 0..3 {
                condense(&log);
                let events = log.snapshot();
                let v = view(&events);
                // Every kept action has its result and every result its action.
                let mut open: Vec<&str> = Vec::new();
                let mut steps_seen = HashSet::new();
                for i in &v {
                    if let Item::Event(e) = i {
                        match &e.kind {
                            EventKind::ActionEvent {
                                tool_call_id, step, ..
                            } => {
                                open.push(tool_call_id);
                                steps_seen.insert(*step);
                            }
                            EventKind::ObservationEvent { tool_call_id, .. } => {
                                let pos = open
                                    .iter()
                                    .position(|o| o == tool_call_id)
                                    .expect("result has its call");
                                open.remove(pos);
                            }
                            _ => {}
                        }
                    }
                }
                assert!(open.is_empty(), "calls without results: {open:?}");
                // Whole replies only: each kept step has all of its calls.
                for s in steps_seen {
                    let n = v
                        .iter()
                        .filter(|i| matches!(i, Item::Event(Event { kind: EventKind::ActionEvent { step, .. }, .. }) if *step == s))
                        .count();
                    assert_eq!(n as u32, calls);
                }
            }
        }
    }

    #[test]
    fn repeated_condensation_folds_the_previous_summary() {
        let log = log_with(60, 1);
        assert!(condense(&log));
        assert!(condense(&log));
        let events = log.snapshot();
        let v = view(&events);
        let summaries: Vec<&str> = v
            .iter()
            .filter_map(|i| {
                if let Item::Summary(s) = i {
                    Some(*s)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(summaries.len(), 1);
        assert!(
            summaries[0].contains("`echo 2`"),
            "first summary kept: {}",
            summaries[0]
        );
        assert!(matches!(v[4], Item::Summary(_)));
    }

    #[test]
    fn small_history_cannot_be_condensed() {
        let log = log_with(1, 1);
        assert!(!condense(&log));
    }

    #[test]
    fn summary_request_is_bounded_whatever_the_events_hold() {
        let log = log_with(60, 1);
        // A huge observation in the part to forget.
        log.append(
            Source::Environment,
            EventKind::ObservationEvent {
                tool_name: "terminal".into(),
                tool_call_id: "call_3_0".into(),
                content: "y".repeat(5_000_000),
                exit_code: Some(0),
                is_error: false,
                timed_out: false,
            },
        );
        let events = log.snapshot();
        let items = view(&events);
        let p = plan(&items).unwrap();
        let req = summary_request(&items, &p);
        assert_eq!(req.len(), 1);
        assert_eq!(req[0].role, Role::User);
        let text = req[0].content.as_deref().unwrap();
        assert!(text.starts_with(SUMMARY_PROMPT));
        assert!(
            text.chars().count() <= REQUEST_CHARS + 200,
            "{}",
            text.len()
        );
        assert!(
            text.contains("agent called terminal"),
            "the forgotten calls are described"
        );
        assert!(llm_summary(&"z".repeat(100_000)).chars().count() <= MAX_SUMMARY_CHARS + 200);
    }

    #[test]
    fn last_resort_keeps_system_task_skills_and_the_newest_turn() {
        let log = EventLog::in_memory();
        log.append(
            Source::Agent,
            EventKind::SystemPromptEvent {
                system_prompt: "sys".into(),
                tools: vec![],
            },
        );
        for text in ["task", "<SKILL>"] {
            log.append(
                Source::User,
                EventKind::MessageEvent {
                    content: text.into(),
                    reasoning: None,
                    nudge: false,
                },
            );
        }
        for s in 1..=3u32 {
            echo_call(&log, format!("c{s}"), s);
        }
        let events = log.snapshot();
        let p = plan_with(&view(&events), Mode::LastResort).unwrap();
        assert_eq!(p.forgotten_event_ids, vec![3, 4, 5, 6]);
    }
}
