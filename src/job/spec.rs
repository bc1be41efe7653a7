//! The job as submitted: an immutable specification, parsed and validated from the
//! job file (DESIGN.md "Job file"). Nothing here knows about queues or workers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One job, after defaults were merged and every field was checked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub id: String,
    pub task: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub input: Option<Input>,
    #[serde(default = "default_workdir")]
    pub workdir: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Added to the agent's context: a batch's shared playbook (also settable
    /// in the job file's `defaults`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default)]
    pub llm: LlmSpec,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub stuck: StuckThresholds,
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub priority: u8,
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// Set by `fleet submit`; absent for `fleet run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
}

pub fn default_workdir() -> String {
    "/workspace".into()
}

/// Where the workspace's starting files come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, untagged)]
pub enum Input {
    Path { path: String },
    Git { git: GitInput },
    StoreKey { store_key: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GitInput {
    pub url: String,
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LlmSpec {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Output-token limit of one reply; a model-aware default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// `low` | `medium` | `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// False for endpoints without tool calling: tools go into the prompt as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_tools: Option<bool>,
    /// Model for condensation summaries (default: the job's model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condenser_model: Option<String>,
    #[serde(default)]
    pub price: Option<Price>,
}

/// US dollars per million tokens. Cache prices default to the input price (no
/// discount assumed, so a budget is never under-counted).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input_per_mtok: f64,
    #[serde(default)]
    pub output_per_mtok: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_per_mtok: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok: Option<f64>,
}

impl Price {
    /// The cost of one reply. `prompt_tokens` includes the cached ones, which
    /// are priced at their own rates instead of the input rate.
    pub fn cost(&self, usage: &crate::llm::Usage) -> f64 {
        let read = usage.cache_read().min(usage.prompt_tokens);
        let write = usage.cache_write().min(usage.prompt_tokens - read);
        let fresh = usage.prompt_tokens - read - write;
        (fresh as f64 * self.input_per_mtok
            + read as f64 * self.cache_read_per_mtok.unwrap_or(self.input_per_mtok)
            + write as f64 * self.cache_write_per_mtok.unwrap_or(self.input_per_mtok)
            + usage.completion_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }

    /// The built-in list price of `model`, when the table knows it.
    pub fn builtin(model: &str) -> Option<Price> {
        crate::llm::models::lookup(model).map(|f| Price {
            input_per_mtok: f.input_per_mtok,
            output_per_mtok: f.output_per_mtok,
            cache_read_per_mtok: Some(f.cache_read_per_mtok),
            cache_write_per_mtok: Some(f.cache_write_per_mtok),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_iterations: u32,
    pub timeout_secs: u64,
    pub max_cost_usd: Option<f64>,
    /// Ceiling on one terminal command's run time (the model's `timeout` is
    /// honoured up to it); at it the command is killed with its shell session.
    pub command_timeout_secs: u64,
    /// A terminal call with no `timeout` returns once its command printed nothing
    /// new for this long; the command goes on running.
    pub no_output_timeout_secs: u64,
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids: i64,
    pub network: String,
    /// The workspace's disk limit in MiB (default: the worker's `FLEET_MAX_DISK_MB`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    /// Run the job's commands as this user (`UID[:GID]` or a name the image knows),
    /// within the worker's `FLEET_JOB_USERS`; default: the image's user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A read-only root filesystem; the workdir and `/tmp` stay writable.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_iterations: 50,
            timeout_secs: 1800,
            max_cost_usd: None,
            // A 10-minute test suite runs to completion.
            command_timeout_secs: 900,
            no_output_timeout_secs: 30,
            memory_mb: 2048,
            cpus: 1.0,
            pids: 512,
            network: "none".into(),
            disk_mb: None,
            user: None,
            read_only_root: false,
        }
    }
}

/// Stuck-detection thresholds (AGENT-SPEC.md), configurable per job.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StuckThresholds {
    pub action_observation: usize,
    pub action_error: usize,
    pub monologue: usize,
    pub alternating_pattern: usize,
}

impl Default for StuckThresholds {
    fn default() -> Self {
        StuckThresholds {
            action_observation: 4,
            action_error: 3,
            monologue: 3,
            alternating_pattern: 6,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    #[serde(default)]
    pub secret_env: Option<String>,
}
