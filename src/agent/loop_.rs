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

use super::condense::{self, MAX_HISTORY_EVENTS};
use super::events::{EventKind, Source};
use super::stuck::{self, Verdict};
use super::tools::{self, Ctx, NAMES, Outcome, Tools};
use super::{AgentEnd, AgentReport, AgentRun, ToolCount, history, prompt};
use crate::job::{ErrorInfo, Phase, Tokens};
use crate::llm::{ChatMessage, Completion, LlmError};
use crate::telemetry::metrics;
use crate::workspace::WorkspaceError;

/// Condense-and-retry rounds after context-length errors within one step.
const MAX_CONTEXT_CONDENSATIONS: u32 = 2;

/// Told to the model after a reply with neither a tool call nor text.
pub const EMPTY_REPLY_NUDGE: &str = "Your last reply had no function call and no message. Use a tool to make \
progress, or call `finish` with a short summary when the task is done.";

pub(super) async fn run(run: AgentRun<'_>) -> AgentReport {
    let mut agent = Agent::new(run);
    let end = agent.run().await;
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
        self.log(
            Source::Agent,
            EventKind::SystemPromptEvent {
                system_prompt: prompt::system_prompt(self.run.workspace.workdir(), &job.limits),
                tools: NAMES.iter().map(|n| n.to_string()).collect(),
            },
        );
        self.log(
            Source::User,
            EventKind::MessageEvent {
                content: self.mask(&job.task),
                reasoning: None,
                nudge: false,
            },
        );

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
            self.cost_usd += completion.cost_usd;
            self.tokens.prompt += completion.usage.prompt_tokens;
            self.tokens.completion += completion.usage.completion_tokens;
            self.run.events.progress.set_cost(self.cost_usd);

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

    /// One LLM call on the history, condensing it first when too long, and again
    /// when the LLM says the context overflowed.
    async fn complete(&mut self) -> Result<Completion, AgentEnd> {
        let too_long = self
            .run
            .events
            .with(|ev| condense::history_len(&condense::view(ev)) > MAX_HISTORY_EVENTS);
        if too_long {
            self.condense();
        }
        let mut condensed = 0;
        loop {
            let messages: Vec<ChatMessage> = self
                .run
                .events
                .with(|ev| history::messages(&condense::view(ev)));
            match self.run.llm.complete(&messages, &self.schemas).await {
                Ok(c) => return Ok(c),
                Err(LlmError::ContextLength { message })
                    if condensed < MAX_CONTEXT_CONDENSATIONS && self.condense() =>
                {
                    condensed += 1;
                    tracing::info!(%message, round = condensed, "context window exceeded: history condensed, retrying");
                }
                Err(e) => return Err(self.llm_failed(e)),
            }
        }
    }

    /// Appends a condensation of the history; false when nothing can be forgotten.
    fn condense(&self) -> bool {
        let Some(plan) = self
            .run
            .events
            .with(|ev| condense::plan(&condense::view(ev)))
        else {
            return false;
        };
        tracing::info!(
            forgotten = plan.forgotten_event_ids.len(),
            "history condensed"
        );
        self.log(
            Source::Environment,
            EventKind::Condensation {
                forgotten_event_ids: plan.forgotten_event_ids,
                summary: plan.summary,
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
                serde_json::from_str(raw).map_err(|e| e.to_string())
            };
            let arguments = match &parsed {
                Ok(v) => mask_json(v, &|s| self.mask(s)),
                Err(_) => Value::String(self.mask(raw)),
            };
            self.log(
                Source::Agent,
                EventKind::ActionEvent {
                    tool_name: name.to_string(),
                    tool_call_id: id.clone(),
                    arguments,
                    thought: if i == 0 { text.clone() } else { String::new() },
                    step: self.steps,
                },
            );

            let outcome = if !NAMES.contains(&name) {
                Outcome::Rejected(tools::unknown_tool(name))
            } else {
                match parsed {
                    Err(e) => Outcome::Rejected(tools::invalid_args(
                        name,
                        raw,
                        &format!("invalid JSON: {e}"),
                    )),
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
