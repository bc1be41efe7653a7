//! The job: its immutable specification (parsed and validated from the job file),
//! its states and outcomes, and the records the store keeps about it.

pub mod parse;
pub mod spec;
pub mod status;

pub use parse::{JobFileError, ParseOptions, job_from_value, parse_job_file, parse_jobs};
pub use spec::{Input, JobSpec, Limits, LlmSpec, Price, StuckThresholds, WebhookSpec};
pub use status::{
    ErrorInfo, JobResult, Outcome, Owner, Phase, State, StatusRecord, Tokens, Transition,
};
