//! The agent: the conversation loop of AGENT-SPEC.md (LLM ⇄ tools), its events,
//! stuck detection, context condensation and secret masking. It knows nothing of
//! queues or stores: it gets a workspace, an LLM client and an event log, and
//! returns how the conversation ended. Wall-clock timeout and cancellation are the
//! caller's (it drops this future and kills the workspace).
//!
//! - [`loop_`](self) runs the steps; `history` rebuilds the LLM messages from the
//!   log each step (the log is the only per-job state);
//! - [`stuck`] reads the log before each step; [`condense`] shortens the history
//!   the LLM sees; [`prompt`] is the system prompt;
//! - [`tools`] are what the model can call; [`secrets`] masks before anything is
//!   logged or sent.

pub mod condense;
pub mod events;
mod history;
mod loop_;
pub mod prompt;
pub mod repo;
pub mod secrets;
pub mod stuck;
pub mod tools;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use events::{Event, EventKind, EventLog, Progress, Source};
pub use secrets::Masker;

use crate::job::{ErrorInfo, JobSpec, Tokens};
use crate::llm::LlmClient;
use crate::workspace::Workspace;

/// What one conversation runs with.
pub struct AgentRun<'a> {
    pub job: &'a JobSpec,
    pub workspace: &'a Workspace,
    pub llm: &'a LlmClient,
    /// Masks every secret value before the LLM, the log or the store sees it.
    pub masker: &'a Masker,
    pub events: &'a EventLog,
    /// The workdir's files as the input left them (the base snapshot's paths,
    /// with whether each is a symlink), when complete: the repository's
    /// instruction files are found in it instead of by a command in the
    /// workspace. `None`: look in the workspace.
    pub listed: Option<Vec<(String, bool)>>,
}

/// How the conversation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEnd {
    /// The finish tool, or a final text reply.
    Finished,
    Stuck {
        pattern: String,
    },
    MaxIterations,
    BudgetExceeded,
    /// The run could not go on (LLM refused or unavailable, workspace gone…).
    Failed(ErrorInfo),
}

/// Calls of one tool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCount {
    pub ok: u64,
    pub error: u64,
}

/// The conversation's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentReport {
    pub end: AgentEnd,
    pub final_message: Option<String>,
    /// LLM calls made (one per step).
    pub steps: u32,
    pub cost_usd: f64,
    pub tokens: Tokens,
    pub tool_calls: BTreeMap<String, ToolCount>,
}

/// Runs the conversation to its end. Every event is appended to `run.events` as
/// it happens; the report sums up steps, cost, tokens and tool calls.
pub async fn run(run: AgentRun<'_>) -> AgentReport {
    loop_::run(run).await
}
