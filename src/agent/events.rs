//! The conversation's events (AGENT-SPEC.md "Events") and the log that keeps them:
//! in memory for the agent's history, and appended line by line to an events.jsonl
//! file as they happen, so a killed or timed-out run still leaves its log.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Agent,
    User,
    Environment,
}

/// The event kinds of upstream's SDK, with their fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum EventKind {
    SystemPromptEvent {
        system_prompt: String,
        tools: Vec<String>,
    },
    MessageEvent {
        content: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reasoning: Option<String>,
        /// True for the environment's nudges (skipped by monologue detection).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        nudge: bool,
    },
    ActionEvent {
        tool_name: String,
        tool_call_id: String,
        arguments: serde_json::Value,
        #[serde(default)]
        thought: String,
        /// The LLM call (1-based) whose reply held this call: the calls of one
        /// reply share it, so the history rebuilds them as one assistant message.
        #[serde(default)]
        step: u32,
        /// What the model said about the call, beside its arguments.
        #[serde(flatten)]
        meta: ActionMeta,
    },
    ObservationEvent {
        tool_name: String,
        tool_call_id: String,
        content: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i64>,
        #[serde(default)]
        is_error: bool,
        /// The terminal call returned while its command was still running (or
        /// the job's ceiling stopped it). Stuck detection never counts such an
        /// observation as a repeat.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        timed_out: bool,
    },
    AgentErrorEvent {
        tool_name: String,
        tool_call_id: String,
        error: String,
    },
    /// The agent logs `execution_status` = `finished` | `stuck` | `error` last.
    ConversationStateUpdateEvent {
        key: String,
        value: serde_json::Value,
    },
    /// Why the run ended when it did not finish: `MaxIterationsReached`,
    /// `BudgetExceeded`, `Stuck`, or the error kind of a failed LLM call or
    /// workspace (`llm_auth`, `docker_error`, …).
    ConversationErrorEvent { code: String, detail: String },
    /// The history the LLM sees leaves out these events from here on, and shows
    /// the summary in their place (see `agent::condense`).
    Condensation {
        forgotten_event_ids: Vec<u64>,
        summary: String,
    },
}

/// What comes with a tool call besides its arguments. Stuck detection never
/// compares these: a model writing a new `summary` for the same command is
/// still repeating itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionMeta {
    /// The model's few words on the call (`summary` argument).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// `LOW` | `MEDIUM` | `HIGH` as the model rated it (`security_risk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_risk: Option<String>,
    /// The reply's reasoning text (first call of a reply only), sent back to the
    /// models that want it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// The reply's thinking blocks (first call only), passed back verbatim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thinking_blocks: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub timestamp: DateTime<Utc>,
    pub source: Source,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Live progress of one job, read by the progress display and heartbeats.
#[derive(Debug, Default)]
pub struct Progress {
    pub steps: AtomicU32,
    cost_micro_usd: AtomicU64,
}

impl Progress {
    pub fn set_cost(&self, usd: f64) {
        self.cost_micro_usd
            .store((usd * 1e6) as u64, Ordering::Relaxed);
    }
    pub fn cost(&self) -> f64 {
        self.cost_micro_usd.load(Ordering::Relaxed) as f64 / 1e6
    }
    pub fn steps(&self) -> u32 {
        self.steps.load(Ordering::Relaxed)
    }
}

struct Inner {
    events: Vec<Event>,
    file: Option<std::io::BufWriter<std::fs::File>>,
    bytes: u64,
}

/// The job's event log. Cheap to share (`&EventLog`); appends are serialised.
pub struct EventLog {
    inner: Mutex<Inner>,
    pub progress: Arc<Progress>,
}

impl EventLog {
    /// A log that also appends every event to `path` (created or truncated).
    pub fn create(path: &Path) -> std::io::Result<EventLog> {
        let file = std::fs::File::create(path)?;
        Ok(EventLog {
            inner: Mutex::new(Inner {
                events: Vec::new(),
                file: Some(std::io::BufWriter::new(file)),
                bytes: 0,
            }),
            progress: Arc::new(Progress::default()),
        })
    }

    /// A log kept in memory only (unit tests).
    pub fn in_memory() -> EventLog {
        EventLog {
            inner: Mutex::new(Inner {
                events: Vec::new(),
                file: None,
                bytes: 0,
            }),
            progress: Arc::new(Progress::default()),
        }
    }

    /// Appends an event (already masked by the caller) and writes it through.
    pub fn append(&self, source: Source, kind: EventKind) -> Event {
        let mut inner = self.inner.lock().expect("event log lock");
        let event = Event {
            id: inner.events.len() as u64,
            timestamp: Utc::now(),
            source,
            kind,
        };
        if let Some(f) = inner.file.as_mut() {
            let mut line = serde_json::to_vec(&event).expect("events serialise");
            line.push(b'\n');
            // A full disk must not kill the run; the in-memory copy still counts.
            if f.write_all(&line).and_then(|_| f.flush()).is_ok() {
                inner.bytes += line.len() as u64;
            }
        }
        inner.events.push(event.clone());
        event
    }

    /// A copy of every event so far.
    pub fn snapshot(&self) -> Vec<Event> {
        self.inner.lock().expect("event log lock").events.clone()
    }

    /// Runs `f` over the events without copying them.
    pub fn with<R>(&self, f: impl FnOnce(&[Event]) -> R) -> R {
        f(&self.inner.lock().expect("event log lock").events)
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("event log lock").events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes written to the file so far.
    pub fn bytes_written(&self) -> u64 {
        self.inner.lock().expect("event log lock").bytes
    }
}
