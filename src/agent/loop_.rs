//! The step loop (AGENT-SPEC.md "One step"). Before each step: stuck check (a
//! nudge or the end), the iteration cap, and condensation when the history has
//! grown too long. A step is one LLM call with the history rebuilt from the log;
//! its reply is then acted on: tool calls run in order (calls after `finish` are
//! dropped), a text reply finishes the run, an empty reply gets a nudge. The
//! budget is checked after each reply was acted on, so a `finish` in the reply
//! that spends the budget still counts as finished.
//!
//! Everything logged or sent to the LLM goes through the masker first.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use super::condense::{self, MAX_HISTORY_EVENTS, Mode};
use super::events::{ActionMeta, EventKind, Source};
use super::stuck::{self, Verdict};
use super::tools::{self, Ctx, NAMES, Outcome, Tools, normalize};
use super::{AgentEnd, AgentReport, AgentRun, ToolCount, history, prompt, repo};
use crate::job::{ErrorInfo, Phase, Tokens};
use crate::llm::{ChatMessage, Completion, LlmError, Usage, models};
use crate::telemetry::metrics;
use crate::workspace::WorkspaceError;

/// Condense-and-retry rounds after context-length errors within one step: two
/// ordinary condensations, then the last resort (first events, summary and
/// newest turn only), then the run fails.
const MAX_CONTEXT_ROUNDS: u32 = 3;
/// Condense before a step once the last prompt used this share of the room
/// the model's window leaves beside the output limit (upstream condenses when
/// the prompt nears the window too).
const TOKEN_TRIGGER: f64 = 0.8;

/// Told to the model after a reply with neither a tool call nor text.
pub const EMPTY_REPLY_NUDGE: &str = "Your last reply had no function call and no message. Use a tool to make \
progress, or call `finish` with a short summary when the task is done.";

pub(super) async fn run(run: AgentRun<'_>) -> AgentReport {
    let mut agent = Agent::new(run);
    let end = agent.run().await;
    agent.tools.park(agent.run.workspace);
    agent.close(end)
}

struct Agent<'a> {
    run: AgentRun<'a>,
    tools: Tools,
    schemas: Vec<Value>,
    steps: u32,
    cost_usd: f64,
    tokens: Tokens,
    tool_calls: BTreeMap<String, ToolCount>,
    final_message: Option<String>,
    /// Prompt tokens of the last completion, for the token-based trigger.
    last_prompt_tokens: u64,
    repo: repo::RepoInstructions,
}

impl<'a> Agent<'a> {
    fn new(run: AgentRun<'a>) -> Agent<'a> {
        Agent {
            tools: Tools::new(run.workspace),
            schemas: tools::schemas(),
            run,
            steps: 0,
            cost_usd: 0.0,
            tokens: Tokens::default(),
            tool_calls: BTreeMap::new(),
            final_message: None,
            last_prompt_tokens: 0,
            repo: repo::RepoInstructions::default(),
        }
    }

    fn log(&self, source: Source, kind: EventKind) {
        self.run.events.append(source, kind);
    }

    fn mask(&self, text: &str) -> String {
        self.run.masker.mask(text)
    }

    async fn run(&mut self) -> AgentEnd {
        let job = self.run.job;
        // Read after the input landed, before the first request.
        self.repo = repo::load(self.run.workspace, self.run.listed.as_deref()).await;
        let system_prompt = prompt::system_prompt(&prompt::PromptContext {
            workdir: self.run.workspace.workdir(),
            limits: &job.limits,
            secret_names: &job.secrets,
            instructions: job.instructions.as_deref(),
            repo: &self.repo,
        });
        self.log(
            Source::Agent,
            EventKind::SystemPromptEvent {
                system_prompt: self.mask(&system_prompt),
                tools: NAMES.iter().map(|n| n.to_string()).collect(),
            },
        );
        let task = self.mask(&job.task);
        self.log(
            Source::User,
            EventKind::MessageEvent {
                content: task.clone(),
                reasoning: None,
                nudge: false,
            },
        );
        // Keyword-triggered skills the task mentions come right after it.
        let triggered: Vec<String> = self
            .repo
            .triggered_by(&task)
            .into_iter()
            .map(|(skill, keyword)| {
                tracing::info!(skill = %skill.name, keyword, "repository skill triggered");
                repo::render_triggered(skill, keyword)
            })
            .collect();
        for content in triggered {
            self.log(
                Source::User,
                EventKind::MessageEvent {
                    content: self.mask(&content),
                    reasoning: None,
                    nudge: false,
                },
            );
        }

        loop {
            match self.run.events.with(|ev| stuck::check(ev, &job.stuck)) {
                Some(Verdict::Nudge { tool, message, .. }) => {
                    tracing::info!(tool, "repeated failing call: nudging the model");
                    self.log(
                        Source::Environment,
                        EventKind::MessageEvent {
                            content: message,
                            reasoning: None,
                            nudge: true,
                        },
                    );
                }
                Some(Verdict::Stuck(pattern)) => {
                    metrics()
                        .stuck_detections
                        .with_label_values(&[pattern])
                        .inc();
                    self.log(
                        Source::Environment,
                        EventKind::ConversationErrorEvent {
                            code: "Stuck".into(),
                            detail: format!("Stuck pattern detected: {pattern}"),
                        },
                    );
                    return AgentEnd::Stuck {
                        pattern: pattern.to_string(),
                    };
                }
                None => {}
            }
            if self.steps >= job.limits.max_iterations {
                self.log(
                    Source::Environment,
                    EventKind::ConversationErrorEvent {
                        code: "MaxIterationsReached".into(),
                        detail: format!("Agent reached the maximum number of iterations ({}) without finishing.", job.limits.max_iterations),
                    },
                );
                return AgentEnd::MaxIterations;
            }

            self.steps += 1;
            self.run
                .events
                .progress
                .steps
                .store(self.steps, std::sync::atomic::Ordering::Relaxed);
            metrics().agent_steps.inc();
            let completion = match self.complete().await {
                Ok(c) => c,
                Err(end) => return end,
            };
            self.account(completion.cost_usd, &completion.usage);

            if let Some(end) = self.act(completion.message).await {
                return end;
            }
            if let Some(max) = job.limits.max_cost_usd {
                if self.cost_usd >= max {
                    self.log(
                        Source::Environment,
                        EventKind::ConversationErrorEvent {
                            code: "BudgetExceeded".into(),
                            detail: format!("Agent reached maximum budget limit (${max:.4}); accumulated cost ${:.4}.", self.cost_usd),
                        },
                    );
                    return AgentEnd::BudgetExceeded;
                }
            }
        }
    }

    /// Adds a completion's cost and tokens to the run's.
    fn account(&mut self, cost_usd: f64, usage: &Usage) {
        self.cost_usd += cost_usd;
        self.tokens.prompt += usage.prompt_tokens;
        self.tokens.completion += usage.completion_tokens;
        self.tokens.cache_read += usage.cache_read();
        self.tokens.cache_write += usage.cache_write();
        self.run.events.progress.set_cost(self.cost_usd);
    }

    /// Whether the history should be condensed before the next call: too many
    /// events, or the last prompt came near the model's context window.
    fn needs_condensation(&self) -> bool {
        let too_long = self
            .run
            .events
            .with(|ev| condense::history_len(&condense::view(ev)) > MAX_HISTORY_EVENTS);
        let settings = self.run.llm.settings();
        let near_window = models::context_window(&settings.model).is_some_and(|window| {
            let room = window.saturating_sub(settings.max_output_tokens.unwrap_or(0));
            self.last_prompt_tokens as f64 > TOKEN_TRIGGER * room as f64
        });
        if near_window {
            tracing::info!(
                prompt_tokens = self.last_prompt_tokens,
                "prompt nears the context window: condensing"
            );
        }
        too_long || near_window
    }

    /// One LLM call on the history, condensing it first when too long, and again
    /// when the LLM says the context overflowed.
    async fn complete(&mut self) -> Result<Completion, AgentEnd> {
        if self.needs_condensation() {
            self.condense(Mode::Normal).await;
        }
        let mut rounds = 0;
        loop {
            let messages: Vec<ChatMessage> = self
                .run
                .events
                .with(|ev| history::messages(&condense::view(ev)));
            match self.run.llm.complete(&messages, &self.schemas).await {
                Ok(c) => {
                    self.last_prompt_tokens = c.usage.prompt_tokens;
                    return Ok(c);
                }
                Err(LlmError::ContextLength { message }) if rounds < MAX_CONTEXT_ROUNDS => {
                    rounds += 1;
                    // The last round, or nothing left to forget: keep only the
                    // first events, the summary and the newest turn.
                    let done = rounds < MAX_CONTEXT_ROUNDS && self.condense(Mode::Normal).await;
                    if !done && !self.condense(Mode::LastResort).await {
                        return Err(self.llm_failed(LlmError::ContextLength { message }));
                    }
                    tracing::info!(%message, round = rounds, "context window exceeded: history condensed, retrying");
                }
                Err(e) => return Err(self.llm_failed(e)),
            }
        }
    }

    /// Appends a condensation of the history, its summary written by the LLM
    /// (the fixed digest when that call fails); false when nothing can be
    /// forgotten.
    async fn condense(&mut self, mode: Mode) -> bool {
        let Some((plan, request)) = self.run.events.with(|ev| {
            let items = condense::view(ev);
            condense::plan_with(&items, mode).map(|p| {
                let request = condense::summary_request(&items, &p);
                (p, request)
            })
        }) else {
            return false;
        };
        let summary = match self.run.llm.summarize(&request).await {
            Ok(c) => {
                self.account(c.cost_usd, &c.usage);
                match c
                    .message
                    .content
                    .as_deref()
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                {
                    Some(text) => condense::llm_summary(&self.mask(text)),
                    None => {
                        tracing::warn!("summary reply was empty: using the digest");
                        plan.summary.clone()
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %self.mask(&e.to_string()), "summary call failed: using the digest");
                plan.summary.clone()
            }
        };
        tracing::info!(
            forgotten = plan.forgotten_event_ids.len(),
            ?mode,
            "history condensed"
        );
        self.log(
            Source::Environment,
            EventKind::Condensation {
                forgotten_event_ids: plan.forgotten_event_ids,
                summary,
            },
        );
        true
    }

    /// Acts on a reply; `Some` when the run ends.
    async fn act(&mut self, message: ChatMessage) -> Option<AgentEnd> {
        let text = self.mask(message.content.as_deref().unwrap_or(""));
        let reasoning = message
            .reasoning_content
            .as_deref()
            .map(|r| self.mask(r))
            .filter(|r| !r.is_empty());

        if message.tool_calls.is_empty() {
            let empty = text.trim().is_empty();
            self.log(
                Source::Agent,
                EventKind::MessageEvent {
                    content: text.clone(),
                    reasoning,
                    nudge: false,
                },
            );
            if empty {
                self.log(
                    Source::Environment,
                    EventKind::MessageEvent {
                        content: EMPTY_REPLY_NUDGE.into(),
                        reasoning: None,
                        nudge: true,
                    },
                );
                return None;
            }
            self.final_message = Some(text);
            return Some(AgentEnd::Finished);
        }

        let mut ids = HashSet::new();
        for (i, call) in message.tool_calls.iter().enumerate() {
            let name = call.function.name.as_str();
            let raw = call.function.arguments.as_str();
            // Ids pair calls with results: one missing or repeated gets our own.
            let id = if call.id.is_empty() || !ids.insert(call.id.clone()) {
                history::fallback_call_id(self.steps, i)
            } else {
                call.id.clone()
            };
            let parsed: Result<Value, String> = if raw.trim().is_empty() {
                Ok(json!({}))
            } else {
                serde_json::from_str(raw).map_err(|e| format!("invalid JSON: {e}"))
            };
            // Old names, `summary`/`security_risk`, sloppy types (see normalize).
            let (tool, args, summary, security_risk) = match parsed {
                Ok(v) => match normalize::normalize(name, v, &self.schemas) {
                    Ok(c) => (c.tool, Ok(c.args), c.summary, c.security_risk),
                    Err(problem) => (
                        normalize::tool_name(name).unwrap_or(name).to_string(),
                        Err(problem),
                        None,
                        None,
                    ),
                },
                Err(e) => (
                    normalize::tool_name(name).unwrap_or(name).to_string(),
                    Err(e),
                    None,
                    None,
                ),
            };
            let name = tool.as_str();
            let arguments = match &args {
                Ok(v) => mask_json(v, &|s| self.mask(s)),
                Err(_) => Value::String(self.mask(raw)),
            };
            let first = i == 0;
            self.log(
                Source::Agent,
                EventKind::ActionEvent {
                    tool_name: name.to_string(),
                    tool_call_id: id.clone(),
                    arguments,
                    thought: if first { text.clone() } else { String::new() },
                    step: self.steps,
                    meta: ActionMeta {
                        summary: summary.map(|s| self.mask(&s)),
                        security_risk,
                        reasoning: reasoning.clone().filter(|_| first),
                        thinking_blocks: if first {
                            message.thinking_blocks.clone()
                        } else {
                            Vec::new()
                        },
                    },
                },
            );

            let outcome = if !NAMES.contains(&name) {
                Outcome::Rejected(tools::unknown_tool(&call.function.name))
            } else {
                match args {
                    Err(problem) => Outcome::Rejected(tools::invalid_args(name, raw, &problem)),
                    Ok(args) => {
                        let ctx = Ctx {
                            workspace: self.run.workspace,
                            limits: &self.run.job.limits,
                            events: self.run.events,
                        };
                        match self.tools.call(name, raw, &args, &ctx).await {
                            Ok(o) => o,
                            Err(e) => return Some(self.workspace_failed(e)),
                        }
                    }
                }
            };
            match outcome {
                Outcome::Observation(o) => {
                    self.count(name, !o.is_error);
                    self.log(
                        Source::Environment,
                        EventKind::ObservationEvent {
                            tool_name: name.to_string(),
                            tool_call_id: id,
                            content: self.mask(&o.content),
                            exit_code: o.exit_code,
                            is_error: o.is_error,
                            timed_out: o.timed_out,
                        },
                    );
                }
                Outcome::Rejected(error) => {
                    self.count(name, false);
                    self.log(
                        Source::Environment,
                        EventKind::AgentErrorEvent {
                            tool_name: name.to_string(),
                            tool_call_id: id,
                            error: self.mask(&error),
                        },
                    );
                }
                Outcome::Finish(final_message) => {
                    self.count(name, true);
                    let final_message = self.mask(&final_message);
                    self.log(
                        Source::Environment,
                        EventKind::ObservationEvent {
                            tool_name: name.to_string(),
                            tool_call_id: id,
                            content: final_message.clone(),
                            exit_code: None,
                            is_error: false,
                            timed_out: false,
                        },
                    );
                    let dropped = message.tool_calls.len() - i - 1;
                    if dropped > 0 {
                        tracing::debug!(dropped, "tool calls after finish dropped");
                    }
                    self.final_message = Some(final_message);
                    return Some(AgentEnd::Finished);
                }
            }
        }
        None
    }

    fn count(&mut self, tool: &str, ok: bool) {
        metrics().tool_call(tool, ok);
        let key = if NAMES.contains(&tool) {
            tool
        } else {
            "unknown"
        };
        let c = self.tool_calls.entry(key.to_string()).or_default();
        if ok {
            c.ok += 1;
        } else {
            c.error += 1;
        }
    }

    fn llm_failed(&self, e: LlmError) -> AgentEnd {
        let message = self.mask(&e.to_string());
        tracing::warn!(kind = e.kind(), retryable = e.retryable(), error = %message, "llm call failed: run ends");
        self.log(
            Source::Environment,
            EventKind::ConversationErrorEvent {
                code: e.kind().into(),
                detail: message.clone(),
            },
        );
        AgentEnd::Failed(ErrorInfo {
            kind: e.kind().into(),
            phase: Phase::Llm,
            retryable: e.retryable(),
            message,
        })
    }

    fn workspace_failed(&self, e: WorkspaceError) -> AgentEnd {
        let message = self.mask(&e.to_string());
        tracing::warn!(kind = e.kind(), error = %message, "workspace failed during a tool call: run ends");
        self.log(
            Source::Environment,
            EventKind::ConversationErrorEvent {
                code: e.kind().into(),
                detail: message.clone(),
            },
        );
        AgentEnd::Failed(ErrorInfo {
            kind: e.kind().into(),
            phase: Phase::Workspace,
            retryable: e.retryable(),
            message,
        })
    }

    /// Records the end in the log and builds the report.
    fn close(self, end: AgentEnd) -> AgentReport {
        let status = match &end {
            AgentEnd::Finished => "finished",
            AgentEnd::Stuck { .. } => "stuck",
            AgentEnd::MaxIterations | AgentEnd::BudgetExceeded | AgentEnd::Failed(_) => "error",
        };
        self.log(
            Source::Environment,
            EventKind::ConversationStateUpdateEvent {
                key: "execution_status".into(),
                value: json!(status),
            },
        );
        tracing::info!(
            status,
            steps = self.steps,
            cost_usd = self.cost_usd,
            "conversation ended"
        );
        AgentReport {
            end,
            final_message: self.final_message,
            steps: self.steps,
            cost_usd: self.cost_usd,
            tokens: self.tokens,
            tool_calls: self.tool_calls,
        }
    }
}

/// Masks every string inside a JSON value.
fn mask_json(v: &Value, mask: &dyn Fn(&str) -> String) -> Value {
    match v {
        Value::String(s) => Value::String(mask(s)),
        Value::Array(a) => Value::Array(a.iter().map(|x| mask_json(x, mask)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), mask_json(x, mask)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
#[path = "loop_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "loop_context_tests.rs"]
mod context_tests;
