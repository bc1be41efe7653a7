//! The loop's context handling end to end (the real client against the
//! scripted server, a local workspace): LLM-written condensation summaries and
//! their fallback, the last resort, repository skills, sloppy text-format calls.

use std::time::Duration;

use serde_json::{Value, json};

use super::tests::{Setup, errors, job, run_simple};
use super::*;
use crate::agent::Masker;
use crate::agent::events::{Event, EventLog};
use crate::job::Price;
use crate::llm::{LlmClient, LlmSettings};
use crate::workspace::Workspace;

fn condensations(events: &[Event]) -> Vec<(&[u64], &str)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Condensation {
                forgotten_event_ids,
                summary,
            } => Some((forgotten_event_ids.as_slice(), summary.as_str())),
            _ => None,
        })
        .collect()
}

/// Six distinct commands, then `fail` at the seventh step, then `finish`.
fn overflowing(fail: Value, summary: Option<&str>) -> Value {
    let mut steps: Vec<Value> = (1..=6)
        .map(|i| json!({"tool": "terminal", "args": {"command": format!("echo {i}")}}))
        .collect();
    steps.push(json!({"fail": fail, "tool": "think", "args": {"thought": "after"}}));
    steps.push(json!({"tool": "finish", "args": {"message": "done"}}));
    let mut script = json!({"steps": steps, "step_by": "served"});
    if let Some(s) = summary {
        script["summary"] = s.into();
    }
    script
}

#[tokio::test]
async fn condensation_summary_is_written_by_the_llm() {
    let ran = run_simple(
        "summarised",
        overflowing(
            json!({"context_length": "litellm"}),
            Some("THE LLM SUMMARY"),
        ),
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::Finished);
    let c = condensations(&ran.events);
    assert_eq!(c.len(), 1);
    assert!(c[0].1.contains("THE LLM SUMMARY"), "{}", c[0].1);
    // The summary call is paid for like any other (default usage: 100 + 20).
    assert_eq!(ran.report.tokens.prompt, 100 * 9);
}

#[tokio::test]
async fn a_failed_summary_call_falls_back_to_the_digest() {
    // No `summary` in the script: the summary request is answered like a first
    // step (a tool call, no text), which is no summary.
    let ran = run_simple(
        "digest",
        overflowing(json!({"context_length": "vllm"}), None),
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::Finished);
    let c = condensations(&ran.events);
    assert_eq!(c.len(), 1);
    assert!(
        c[0].1.contains("called terminal: `echo 2`"),
        "digest: {}",
        c[0].1
    );
}

#[tokio::test]
async fn repeated_overflow_ends_in_the_last_resort_not_a_failure() {
    let ran = run_simple(
        "last-resort",
        overflowing(json!({"context_length": "gemini", "times": 3}), Some("S")),
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::Finished);
    let events = &ran.events;
    let c = condensations(events);
    assert!(c.len() >= 2, "{c:?}");
    // After the last resort the history is the system prompt, the task, the
    // summary and the newest turn only.
    // The last five events (think, finish and their results, the end state)
    // came after the last condensation.
    let items = condense::view(&events[..events.len() - 5]);
    let kinds: Vec<String> = items
        .iter()
        .map(|i| match i {
            condense::Item::Summary(_) => "summary".to_string(),
            condense::Item::Event(e) => match &e.kind {
                EventKind::SystemPromptEvent { .. } => "system".into(),
                EventKind::MessageEvent { .. } => "message".into(),
                EventKind::ActionEvent { .. } => "action".into(),
                EventKind::ObservationEvent { .. } => "observation".into(),
                _ => "other".into(),
            },
        })
        .collect();
    assert_eq!(
        kinds,
        ["system", "message", "summary", "action", "observation"],
        "{kinds:?}"
    );
}

/// Runs a job with `task` to its end, which must be a finish; its events.
async fn run_to_finish(task: &str, ws: &Workspace, llm: &LlmClient) -> Vec<Event> {
    let spec = job(task, |_| {});
    let masker = Masker::new(Vec::<String>::new());
    let events = EventLog::in_memory();
    let report = super::run(AgentRun {
        job: &spec,
        workspace: ws,
        llm,
        masker: &masker,
        events: &events,
        listed: None,
    })
    .await;
    assert_eq!(report.end, AgentEnd::Finished);
    events.snapshot()
}

#[tokio::test]
async fn triggered_skill_follows_the_task_and_bad_text_calls_are_errors_not_crashes() {
    let setup = Setup::new().await;
    std::fs::write(
        setup.scripts.path().join("skills.json"),
        json!({"steps": [{"tool": "finish", "args": {"message": "ok"}}]}).to_string(),
    )
    .unwrap();
    let ws = setup.workspace(&[]).await;
    let dir = std::path::PathBuf::from(ws.workdir());
    std::fs::create_dir_all(dir.join(".openhands/skills")).unwrap();
    std::fs::write(
        dir.join(".openhands/skills/pg.md"),
        "---\ntriggers: [postgres]\n---\nPG-RULES\n",
    )
    .unwrap();
    std::fs::write(dir.join("AGENTS.md"), "AGENTS-RULES\n").unwrap();
    let llm = setup.client("skills", Price::default());
    let ev = run_to_finish("migrate the Postgres schema", &ws, &llm).await;
    let EventKind::SystemPromptEvent { system_prompt, .. } = &ev[0].kind else {
        panic!("first event");
    };
    assert!(system_prompt.contains("AGENTS-RULES") && !system_prompt.contains("PG-RULES"));
    let EventKind::MessageEvent { content, .. } = &ev[2].kind else {
        panic!("third event: {:?}", ev[2]);
    };
    assert!(
        content.contains("PG-RULES") && content.contains("keyword=\"postgres\""),
        "{content}"
    );
    ws.destroy().await.unwrap();

    // A text call that never closes, and one naming no tool, in text mode.
    std::fs::write(
        setup.scripts.path().join("text.json"),
        json!({"steps": [
            {"text": "<function=terminal>\n<parameter=command>echo unclosed"},
            {"text": "<function=nosuch><parameter=x>1</parameter></function>"},
            {"tool": "finish", "args": {"message": "ok"}}
        ], "text_calls": true})
        .to_string(),
    )
    .unwrap();
    let ws = setup.workspace(&[]).await;
    let mut s = LlmSettings::new("text", setup.mock.base_url());
    s.native_tools = false;
    s.min_backoff = Duration::from_millis(1);
    let llm = LlmClient::new(reqwest::Client::new(), s);
    let ev = run_to_finish("t", &ws, &llm).await;
    let outputs: Vec<&str> = ev
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ObservationEvent { content, .. } => Some(content.as_str()),
            _ => None,
        })
        .collect();
    assert!(outputs[0].contains("unclosed"), "{outputs:?}");
    assert!(
        errors(&ev)[0].starts_with("Tool 'nosuch' not found"),
        "{:?}",
        errors(&ev)
    );
    ws.destroy().await.unwrap();
}
