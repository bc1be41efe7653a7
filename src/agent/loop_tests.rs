//! The loop end to end: the real LLM client against the scripted server
//! (`MockLlm` on 127.0.0.1:0), tools in a local workspace.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::agent::events::{Event, EventLog};
use crate::agent::{Masker, stuck};
use crate::job::{JobSpec, Price};
use crate::llm::{LlmClient, LlmSettings};
use crate::mock_llm::MockLlm;
use crate::workspace::local::LocalBackend;
use crate::workspace::{Backend, Workspace, WorkspaceSpec};

pub(super) struct Ran {
    pub(super) report: AgentReport,
    pub(super) events: Vec<Event>,
    workdir: String,
    /// Files of the workdir after the run.
    files: Vec<String>,
}

pub(super) struct Setup {
    pub(super) scripts: tempfile::TempDir,
    root: tempfile::TempDir,
    pub(super) mock: MockLlm,
}

impl Setup {
    pub(super) async fn new() -> Setup {
        let scripts = tempfile::tempdir().expect("tempdir");
        let root = tempfile::tempdir().expect("tempdir");
        let mock = MockLlm::start(
            scripts.path().to_path_buf(),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .await
        .expect("mock llm");
        Setup {
            scripts,
            root,
            mock,
        }
    }

    pub(super) fn client(&self, model: &str, price: Price) -> LlmClient {
        let mut s = LlmSettings::new(model, self.mock.base_url());
        s.price = price;
        s.max_attempts = 2;
        s.min_backoff = Duration::from_millis(1);
        s.max_backoff = Duration::from_millis(5);
        s.request_timeout = Duration::from_secs(10);
        LlmClient::new(reqwest::Client::new(), s)
    }

    pub(super) async fn workspace(&self, env: &[(&str, &str)]) -> Workspace {
        let spec = WorkspaceSpec {
            job_id: "agent-test".into(),
            attempt: 1,
            worker_id: "w".into(),
            image: "none".into(),
            workdir: "/workspace".into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            memory_mb: 512,
            cpus: 1.0,
            pids: 64,
            network: "none".into(),
            user: None,
            read_only_root: false,
            disk_mb: None,
        };
        Backend::Local(LocalBackend::new(self.root.path().to_path_buf()))
            .start(&spec)
            .await
            .expect("workspace")
    }
}

pub(super) fn job(task: &str, edit: impl FnOnce(&mut JobSpec)) -> JobSpec {
    let mut job: JobSpec = serde_json::from_value(json!({"id": "t", "task": task})).expect("job");
    edit(&mut job);
    job
}

/// Runs `script` as model `name` with the job as edited, secrets set in the
/// workspace environment and masked.
async fn run_script(
    name: &str,
    script: Value,
    edit: impl FnOnce(&mut JobSpec),
    price: Price,
    secrets: &[(&str, &str)],
) -> Ran {
    let setup = Setup::new().await;
    if !script.is_null() {
        std::fs::write(
            setup.scripts.path().join(format!("{name}.json")),
            script.to_string(),
        )
        .expect("script");
    }
    let job = job(&format!("task of {name}"), edit);
    let ws = setup.workspace(secrets).await;
    let llm = setup.client(name, price);
    let masker = Masker::new(secrets.iter().map(|(_, v)| v.to_string()));
    let events = EventLog::in_memory();
    let report = super::run(AgentRun {
        job: &job,
        workspace: &ws,
        llm: &llm,
        masker: &masker,
        events: &events,
        listed: None,
    })
    .await;
    assert_eq!(events.progress.steps(), report.steps);
    let workdir = ws.workdir().to_string();
    let files = ws
        .snapshot(&workdir, 1 << 20, 1 << 20)
        .await
        .expect("snapshot")
        .files
        .into_keys()
        .collect();
    ws.destroy().await.expect("destroy");
    setup.mock.stop().await;
    Ran {
        report,
        events: events.snapshot(),
        workdir,
        files,
    }
}

pub(super) async fn run_simple(name: &str, script: Value) -> Ran {
    run_script(name, script, |_| {}, Price::default(), &[]).await
}

pub(super) fn errors(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::AgentErrorEvent { error, .. } => Some(error.as_str()),
            _ => None,
        })
        .collect()
}

fn nudges(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::MessageEvent {
                content,
                nudge: true,
                ..
            } if e.source == Source::Environment => Some(content.as_str()),
            _ => None,
        })
        .collect()
}

fn actions(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ActionEvent { tool_name, .. } => Some(tool_name.as_str()),
            _ => None,
        })
        .collect()
}

fn error_codes(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ConversationErrorEvent { code, .. } => Some(code.as_str()),
            _ => None,
        })
        .collect()
}

fn think(thought: &str) -> Value {
    json!({"tool": "think", "args": {"thought": thought}})
}

#[tokio::test]
async fn finish_tool_ends_the_run() {
    let ran = run_simple(
        "finish",
        json!({"steps": [
            {"tool": "terminal", "args": {"command": "echo hello > hello.txt && cat hello.txt"}},
            {"tool": "finish", "args": {"message": "wrote hello.txt"}}
        ]}),
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::Finished);
    assert_eq!(ran.report.final_message.as_deref(), Some("wrote hello.txt"));
    assert_eq!(ran.report.steps, 2);
    assert_eq!(
        ran.report.tool_calls["terminal"],
        ToolCount { ok: 1, error: 0 }
    );
    assert_eq!(
        ran.report.tool_calls["finish"],
        ToolCount { ok: 1, error: 0 }
    );
    assert_eq!(ran.files, vec!["hello.txt".to_string()]);
    assert!(ran.report.tokens.prompt > 0);

    let e = &ran.events;
    assert!(
        matches!(&e[0].kind, EventKind::SystemPromptEvent { system_prompt, tools }
        if system_prompt.contains(&ran.workdir) && tools.len() == 5)
    );
    assert!(
        matches!(&e[1].kind, EventKind::MessageEvent { content, .. } if content == "task of finish" && e[1].source == Source::User)
    );
    let obs = e.iter().find_map(|e| match &e.kind {
        EventKind::ObservationEvent {
            tool_name,
            content,
            exit_code,
            ..
        } if tool_name == "terminal" => Some((content, *exit_code)),
        _ => None,
    });
    let (content, code) = obs.expect("terminal observation");
    assert_eq!(code, Some(0));
    // Then the host's python, when it has one, and the exit code again (upstream's layout).
    assert!(
        content.starts_with(&format!(
            "hello\n[The command completed with exit code 0.]\n[Current working directory: {}]\n",
            ran.workdir
        )) && content.ends_with("\n[Command finished with exit code 0]"),
        "{content}"
    );
    assert!(matches!(&e.last().expect("events").kind,
        EventKind::ConversationStateUpdateEvent { key, value } if key == "execution_status" && value == "finished"));
}

#[tokio::test]
async fn text_reply_finishes_with_its_text() {
    let ran = run_simple(
        "text",
        json!({"steps": [{"text": "Nothing to do: the tests already pass."}]}),
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::Finished);
    assert_eq!(
        ran.report.final_message.as_deref(),
        Some("Nothing to do: the tests already pass.")
    );
    assert_eq!(ran.report.steps, 1);
}

#[tokio::test]
async fn empty_reply_gets_a_nudge_and_the_run_goes_on() {
    let ran = run_simple(
        "empty",
        json!({"steps": [{"empty": true}, {"tool": "finish", "args": {"message": "ok"}}]}),
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::Finished);
    assert_eq!(ran.report.steps, 2);
    assert_eq!(nudges(&ran.events), vec![EMPTY_REPLY_NUDGE]);
    assert!(ran.events.iter().any(|e| e.source == Source::Agent
        && matches!(&e.kind, EventKind::MessageEvent { content, .. } if content.is_empty())));
}

#[tokio::test]
async fn iteration_cap_ends_the_run() {
    let ran = run_script(
        "max-iter",
        json!({"steps": [think("again")], "repeat_last": true}),
        |j| j.limits.max_iterations = 3,
        Price::default(),
        &[],
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::MaxIterations);
    assert_eq!(ran.report.steps, 3);
    assert_eq!(error_codes(&ran.events), vec!["MaxIterationsReached"]);
}

#[tokio::test]
async fn finish_on_the_last_iteration_is_finished() {
    let ran = run_script(
        "last-iter",
        json!({"steps": [think("a"), think("b"), {"tool": "finish", "args": {"message": "just in time"}}]}),
        |j| j.limits.max_iterations = 3,
        Price::default(),
        &[],
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::Finished);
    assert_eq!(ran.report.steps, 3);
}

#[tokio::test]
async fn budget_ends_the_run() {
    // $1 a step: 1,000 prompt tokens at $1,000 per million.
    let price = Price {
        input_per_mtok: 1000.0,
        output_per_mtok: 0.0,
        ..Price::default()
    };
    let ran = run_script(
        "budget",
        json!({"steps": [think("1"), think("2"), think("3"), think("4"), think("5")],
               "usage": {"prompt_tokens": 1000, "completion_tokens": 0}}),
        |j| j.limits.max_cost_usd = Some(2.5),
        price,
        &[],
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::BudgetExceeded);
    assert_eq!(ran.report.steps, 3);
    assert!(
        (ran.report.cost_usd - 3.0).abs() < 1e-9,
        "{}",
        ran.report.cost_usd
    );
    assert_eq!(error_codes(&ran.events), vec!["BudgetExceeded"]);
}

#[tokio::test]
async fn repeated_bad_call_is_nudged_once_then_stuck() {
    let ran = run_simple(
        "stuck",
        json!({"steps": [{"tool": "terminal", "args": {"command": 42}}], "repeat_last": true}),
    )
    .await;
    assert_eq!(
        ran.report.end,
        AgentEnd::Stuck {
            pattern: stuck::ACTION_ERROR.into()
        }
    );
    assert_eq!(ran.report.steps, 4);
    let errs = errors(&ran.events);
    assert_eq!(errs.len(), 4);
    assert!(
        errs[0].starts_with(
            "Error validating args {\"command\":42} for tool 'terminal': invalid type"
        ),
        "{}",
        errs[0]
    );
    let n = nudges(&ran.events);
    assert_eq!(n.len(), 1);
    assert!(
        n[0].contains("`terminal`") && n[0].contains(errs[0]),
        "{}",
        n[0]
    );
    // The nudge came after the third error and before the fourth.
    let nudge_at = ran
        .events
        .iter()
        .position(|e| matches!(&e.kind, EventKind::MessageEvent { nudge: true, .. }))
        .expect("nudge");
    let errors_before = ran.events[..nudge_at]
        .iter()
        .filter(|e| matches!(e.kind, EventKind::AgentErrorEvent { .. }))
        .count();
    assert_eq!(errors_before, 3);
    assert_eq!(
        ran.report.tool_calls["terminal"],
        ToolCount { ok: 0, error: 4 }
    );
}

#[tokio::test]
async fn three_bad_calls_then_a_text_reply_finish() {
    let bad = json!({"tool": "file_editor", "args": {"command": "create"}});
    let ran = run_simple(
        "recover",
        json!({"steps": [bad, bad, bad, {"text": "I see the issue, stopping here."}]}),
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::Finished);
    assert_eq!(errors(&ran.events).len(), 3);
    assert_eq!(nudges(&ran.events).len(), 1);
    assert_eq!(
        ran.report.final_message.as_deref(),
        Some("I see the issue, stopping here.")
    );
}

#[tokio::test]
async fn unknown_tool_is_an_agent_error() {
    let ran = run_simple(
        "unknown",
        json!({"steps": [{"tool": "browser", "args": {"url": "x"}}, {"tool": "finish", "args": {"message": "ok"}}]}),
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::Finished);
    assert_eq!(
        errors(&ran.events),
        vec![
            "Tool 'browser' not found. Available: ['terminal', 'file_editor', 'task_tracker', 'think', 'finish']"
        ]
    );
    assert_eq!(
        ran.report.tool_calls["unknown"],
        ToolCount { ok: 0, error: 1 }
    );
}

#[tokio::test]
async fn invalid_json_arguments_are_an_agent_error() {
    let ran = run_simple(
        "badjson",
        json!({"steps": [{"tool": "terminal", "args": "{\"command\": \"ls"}, {"tool": "finish", "args": {"message": "ok"}}]}),
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::Finished);
    let errs = errors(&ran.events);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with(
            "Error validating args {\"command\": \"ls for tool 'terminal': invalid JSON:"
        ),
        "{}",
        errs[0]
    );
    assert!(ran.events.iter().any(|e| matches!(&e.kind,
        EventKind::ActionEvent { arguments: Value::String(s), .. } if s == "{\"command\": \"ls")));
}

#[tokio::test]
async fn calls_after_finish_are_dropped() {
    let ran = run_simple(
        "after-finish",
        json!({"steps": [{"text": "wrapping up", "calls": [
            {"tool": "think", "args": {"thought": "done"}},
            {"tool": "finish", "args": {"message": "bye"}},
            {"tool": "terminal", "args": {"command": "touch after.txt"}}
        ]}]}),
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::Finished);
    assert_eq!(ran.report.final_message.as_deref(), Some("bye"));
    assert_eq!(actions(&ran.events), vec!["think", "finish"]);
    assert!(ran.files.is_empty(), "{:?}", ran.files);
    // The reply's text is the first call's thought.
    assert!(ran.events.iter().any(|e| matches!(&e.kind,
        EventKind::ActionEvent { tool_name, thought, step: 1, .. } if tool_name == "think" && thought == "wrapping up")));
}

#[tokio::test]
async fn secrets_are_masked_everywhere() {
    let secret = "s3cr3t-value-123";
    let ran = run_script(
        "secret",
        json!({"steps": [
            {"tool": "terminal", "args": {"command": "echo token=$API_TOKEN"}},
            {"tool": "terminal", "args": {"command": "echo s3cr3t-value-123 | wc -c"}},
            {"tool": "finish", "args": {"message": "the token was s3cr3t-value-123"}}
        ]}),
        |_| {},
        Price::default(),
        &[("API_TOKEN", secret)],
    )
    .await;
    assert_eq!(ran.report.end, AgentEnd::Finished);
    let log = serde_json::to_string(&ran.events).expect("json");
    assert!(!log.contains(secret), "secret in the log: {log}");
    assert!(log.contains("token=<secret-hidden>"), "{log}");
    assert_eq!(
        ran.report.final_message.as_deref(),
        Some("the token was <secret-hidden>")
    );
}

#[tokio::test]
async fn context_length_error_condenses_and_retries() {
    let ran = run_simple(
        "ctx",
        json!({"steps": [
            think("t0"), think("t1"), think("t2"), think("t3"), think("t4"),
            {"fail": {"status": 400, "times": 1, "code": "context_length_exceeded"},
             "tool": "finish", "args": {"message": "done"}}
        ]}),
    )
    .await;
    assert_eq!(
        ran.report.end,
        AgentEnd::Finished,
        "{:?}",
        error_codes(&ran.events)
    );
    let condensations: Vec<&Vec<u64>> = ran
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Condensation {
                forgotten_event_ids,
                ..
            } => Some(forgotten_event_ids),
            _ => None,
        })
        .collect();
    assert_eq!(condensations.len(), 1);
    // The second exchange (think t1) was forgotten: action and observation.
    assert_eq!(condensations[0], &vec![4, 5]);
    // The retried request had one assistant message less, so the scripted server
    // served the fifth step again before the finish: seven LLM calls in all.
    assert_eq!(ran.report.steps, 7);
}

#[tokio::test]
async fn context_length_error_without_anything_to_condense_fails() {
    let ran = run_simple(
        "ctx-fail",
        json!({"steps": [{"fail": {"status": 400, "times": 9, "code": "context_length_exceeded"}, "text": "x"}]}),
    )
    .await;
    let AgentEnd::Failed(info) = &ran.report.end else {
        panic!("{:?}", ran.report.end)
    };
    assert_eq!(info.kind, "llm_context_length");
    assert_eq!(info.phase, Phase::Llm);
    assert!(!info.retryable);
    assert_eq!(error_codes(&ran.events), vec!["llm_context_length"]);
}

#[tokio::test]
async fn llm_refusal_fails_the_run() {
    // No script for this model: the server answers 404.
    let ran = run_simple("no-such-model", Value::Null).await;
    let AgentEnd::Failed(info) = &ran.report.end else {
        panic!("{:?}", ran.report.end)
    };
    assert_eq!(info.kind, "llm_not_found");
    assert_eq!(info.phase, Phase::Llm);
    assert_eq!(ran.report.steps, 1);
}

#[tokio::test]
async fn long_history_is_condensed_before_the_call() {
    let setup = Setup::new().await;
    std::fs::write(
        setup.scripts.path().join("long.json"),
        json!({"steps": [{"tool": "finish", "args": {"message": "done"}}], "repeat_last": true})
            .to_string(),
    )
    .expect("script");
    let job = job("long history", |_| {});
    let ws = setup.workspace(&[]).await;
    let llm = setup.client("long", Price::default());
    let masker = Masker::default();
    let events = EventLog::in_memory();
    events.append(
        Source::Agent,
        EventKind::SystemPromptEvent {
            system_prompt: "sys".into(),
            tools: vec![],
        },
    );
    events.append(
        Source::User,
        EventKind::MessageEvent {
            content: "long history".into(),
            reasoning: None,
            nudge: false,
        },
    );
    for i in 0..41u32 {
        let id = format!("c{i}");
        events.append(
            Source::Agent,
            EventKind::ActionEvent {
                tool_name: "think".into(),
                tool_call_id: id.clone(),
                arguments: json!({"thought": format!("thought {i}")}),
                thought: String::new(),
                step: i + 1,
                meta: Default::default(),
            },
        );
        events.append(
            Source::Environment,
            EventKind::ObservationEvent {
                tool_name: "think".into(),
                tool_call_id: id,
                content: "Your thought has been logged.".into(),
                exit_code: None,
                is_error: false,
                timed_out: false,
            },
        );
    }
    let mut agent = Agent::new(AgentRun {
        job: &job,
        workspace: &ws,
        llm: &llm,
        masker: &masker,
        events: &events,
        listed: None,
    });
    let completion = agent.complete().await.expect("completion");
    assert_eq!(completion.message.tool_calls.len(), 1);
    let all = events.snapshot();
    assert!(matches!(
        all.last().map(|e| &e.kind),
        Some(EventKind::Condensation { .. })
    ));
    let view_len = events.with(|ev| condense::history_len(&condense::view(ev)));
    assert!(view_len <= MAX_HISTORY_EVENTS / 2 + 8, "{view_len}");
    ws.destroy().await.expect("destroy");
    setup.mock.stop().await;
}
