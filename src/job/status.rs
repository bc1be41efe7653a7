//! Job states, outcomes, the status record (status.json) and the result record
//! (result.json). These are store contracts (DESIGN.md "Job states", "Store layout").
//!
//! The status record also carries the run's ownership: a claim writes an [`Owner`]
//! token (worker, attempt, nonce) and every later write of that run is made only
//! while the stored record still carries it ([`StatusRecord::owned_by`]; the store
//! enforces it with a conditional write, see `Store::update_owned`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a job stands. The last seven plus `rejected` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Stuck,
    MaxIterations,
    TimedOut,
    BudgetExceeded,
    Cancelled,
    Rejected,
}

impl State {
    pub const ALL: [State; 11] = [
        State::Queued,
        State::Running,
        State::Retrying,
        State::Succeeded,
        State::Failed,
        State::Stuck,
        State::MaxIterations,
        State::TimedOut,
        State::BudgetExceeded,
        State::Cancelled,
        State::Rejected,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, State::Queued | State::Running | State::Retrying)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Retrying => "retrying",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Stuck => "stuck",
            State::MaxIterations => "max_iterations",
            State::TimedOut => "timed_out",
            State::BudgetExceeded => "budget_exceeded",
            State::Cancelled => "cancelled",
            State::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended. Every outcome is also a terminal [`State`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    Stuck,
    MaxIterations,
    TimedOut,
    BudgetExceeded,
    Cancelled,
    Rejected,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::Stuck,
        Outcome::MaxIterations,
        Outcome::TimedOut,
        Outcome::BudgetExceeded,
        Outcome::Cancelled,
        Outcome::Rejected,
    ];

    pub fn state(self) -> State {
        match self {
            Outcome::Succeeded => State::Succeeded,
            Outcome::Failed => State::Failed,
            Outcome::Stuck => State::Stuck,
            Outcome::MaxIterations => State::MaxIterations,
            Outcome::TimedOut => State::TimedOut,
            Outcome::BudgetExceeded => State::BudgetExceeded,
            Outcome::Cancelled => State::Cancelled,
            Outcome::Rejected => State::Rejected,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.state().as_str()
    }

    pub fn from_state(s: State) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.state() == s)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phase of the pipeline an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Validate,
    Claim,
    Workspace,
    Input,
    Agent,
    Llm,
    Collect,
    Store,
    Queue,
}

/// What went wrong, as stored in result.json and status.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// A stable machine-readable cause, e.g. `image_not_found`, `llm_auth`, `store_unavailable`.
    pub kind: String,
    pub phase: Phase,
    pub retryable: bool,
    pub message: String,
}

/// One state change, kept in status.json's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub state: State,
    pub at: DateTime<Utc>,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How a webhook delivery went; recorded in status.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    pub url: String,
    pub delivery_id: String,
    pub event: String,
    pub delivered: bool,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Who holds a run: written by the claim, checked by every later write of the run.
/// The nonce tells two claims of one worker and attempt apart (a redelivery that
/// found its own stale record).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub worker: String,
    pub attempt: u32,
    pub nonce: String,
}

impl Owner {
    pub fn new(worker: &str, attempt: u32) -> Owner {
        Owner {
            worker: worker.to_string(),
            attempt,
            nonce: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.worker, self.attempt, self.nonce)
    }
}

/// status.json: the job's state record. Written on every transition and heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub job_id: String,
    pub state: State,
    /// Attempts started so far (a takeover of a dead worker's run included). The
    /// record, not the message, is the authority: a stale delivery cannot reset it.
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The run that holds the job (set by a claim, kept on the terminal record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// For people; liveness is judged from `heartbeat_seq` on the observer's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<DateTime<Utc>>,
    /// Bumped by every heartbeat of the owning run. Another worker takes the run
    /// for dead only when it saw the same (owner, sequence) stay unchanged for a
    /// lease on its own clock, so clock skew between hosts cannot matter.
    #[serde(default)]
    pub heartbeat_seq: u64,
    /// A run whose heartbeat is older than this many seconds is taken to be dead.
    #[serde(default)]
    pub lease_secs: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(default)]
    pub cancel_requested: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Progress while running (steps so far, cost so far).
    #[serde(default)]
    pub steps: u32,
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default)]
    pub webhooks: Vec<WebhookDelivery>,
    pub history: Vec<Transition>,
}

impl StatusRecord {
    pub fn queued(job_id: &str, batch_id: Option<String>) -> StatusRecord {
        let now = Utc::now();
        StatusRecord {
            job_id: job_id.to_string(),
            state: State::Queued,
            attempt: 0,
            worker: None,
            owner: None,
            heartbeat: None,
            heartbeat_seq: 0,
            lease_secs: 0,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            batch_id,
            cancel_requested: false,
            error: None,
            steps: 0,
            cost_usd: 0.0,
            webhooks: Vec::new(),
            history: vec![Transition {
                state: State::Queued,
                at: now,
                attempt: 0,
                worker: None,
                note: None,
            }],
        }
    }

    /// Moves to `state`, appending to the history.
    pub fn transition(&mut self, state: State, worker: Option<&str>, note: Option<String>) {
        let now = Utc::now();
        self.state = state;
        self.updated_at = now;
        if let Some(w) = worker {
            self.worker = Some(w.to_string());
        }
        if state == State::Running {
            self.started_at.get_or_insert(now);
            self.heartbeat = Some(now);
        }
        if state.is_terminal() {
            self.finished_at = Some(now);
        }
        self.history.push(Transition {
            state,
            at: now,
            attempt: self.attempt,
            worker: worker.map(str::to_string),
            note,
        });
    }

    /// True when the record still names `owner` as the holder of the run.
    pub fn owned_by(&self, owner: &Owner) -> bool {
        self.owner.as_ref() == Some(owner)
    }

    /// What an observer watches to judge whether a running job's owner is alive:
    /// the owner and its heartbeat sequence. `None` unless the job is running.
    pub fn liveness_mark(&self) -> Option<(Owner, u64)> {
        match (&self.owner, self.state) {
            (Some(o), State::Running) => Some((o.clone(), self.heartbeat_seq)),
            _ => None,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Token counts of one job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    /// Of `prompt`: tokens read from and written to the provider's cache
    /// (left out while zero, so records of uncached jobs keep their shape).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write: u64,
}

/// result.json: the job's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job_id: String,
    pub outcome: Outcome,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_message: Option<String>,
    pub steps: u32,
    pub cost_usd: f64,
    pub tokens: Tokens,
    pub duration_secs: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck_pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// False when patch.diff covers only part of the workspace (a snapshot limit
    /// was hit); its first line then says so.
    #[serde(default = "yes")]
    pub patch_complete: bool,
}

fn yes() -> bool {
    true
}

impl JobResult {
    /// The result of a job that ended without (or before) a run: nothing counted yet.
    pub fn unrun(
        job_id: &str,
        outcome: Outcome,
        attempt: u32,
        error: Option<ErrorInfo>,
        worker: Option<&str>,
    ) -> JobResult {
        let now = Utc::now();
        JobResult {
            job_id: job_id.to_string(),
            outcome,
            attempt,
            final_message: None,
            steps: 0,
            cost_usd: 0.0,
            tokens: Tokens::default(),
            duration_secs: 0.0,
            stuck_pattern: None,
            error,
            started_at: now,
            finished_at: now,
            worker: worker.map(str::to_string),
            patch_complete: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_record_reads_without_owner_or_sequence() {
        let mut v = serde_json::to_value(StatusRecord::queued("j", None)).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("heartbeat_seq");
        let rec: StatusRecord = serde_json::from_value(v).unwrap();
        assert_eq!((rec.owner, rec.heartbeat_seq), (None, 0));
    }

    #[test]
    fn ownership_is_the_whole_token() {
        let a = Owner::new("w1", 1);
        let mut rec = StatusRecord::queued("j", None);
        rec.owner = Some(a.clone());
        rec.transition(State::Running, Some("w1"), None);
        assert!(rec.owned_by(&a));
        // Same worker and attempt, another claim: not the same run.
        assert!(!rec.owned_by(&Owner::new("w1", 1)));
        assert_eq!(rec.liveness_mark(), Some((a, 0)));
        rec.transition(State::Succeeded, Some("w1"), None);
        assert_eq!(rec.liveness_mark(), None);
    }
}
