//! agent-fleet: a fleet of stateless workers that run coding-agent jobs in batch.
//!
//! # Layout
//!
//! The modules follow one job's path from the producer to its results:
//!
//! 1. [`job`] — the job file is parsed and validated into immutable [`job::JobSpec`]s;
//!    states, outcomes and the status/result records live here too.
//! 2. [`store`] — `fleet run`/`fleet submit` write `job.json` and a `queued`
//!    `status.json` (local directory or S3; every key built in [`store::keys`]).
//! 3. [`queue`] — the job is published (in-memory queue for `fleet run`, RabbitMQ
//!    for the fleet) and a worker receives it.
//! 4. [`worker`] — claims the job through its status record (an owner token, a
//!    lease judged on the worker's own clock, heartbeats), fences every later write
//!    of the run on that token, decides retry vs give-up from typed errors as one
//!    settlement per delivery, and drives the pipeline below under a deadline and a
//!    cancellation token; a sweeper republishes or fails stranded jobs.
//! 5. [`workspace`] — the job's image is pulled when needed (pull policy, registry
//!    credentials, one pull per image), a Docker container (or a local directory)
//!    is started with the job's limits and its input is uploaded; the agent's
//!    shell is one long-lived session in it (the container's main process).
//!    Every engine round trip is counted per phase (`workspace::calls`); while
//!    its slots are busy a worker starts the next deliveries' workspaces ahead
//!    (`FLEET_PREPARE_AHEAD`).
//! 6. [`agent`] — the repository's instructions are read from the workspace and
//!    the conversation runs: [`llm`] ⇄ tools in the workspace, with events, stuck
//!    detection, condensation (LLM-written summaries) and secret masking.
//! 7. [`results`] — the patch (workspace vs input), artifacts, events and metrics
//!    are collected and uploaded; then the terminal status is written, the webhook
//!    sent, and the message acked. In a container the workdir's archive comes
//!    through the conversation's own shell (`workspace::docker::shelltar`), and
//!    through the engine's archive API whenever that path fails.
//! 8. [`telemetry`] — tracing spans carry `job_id`/`attempt`; Prometheus series
//!    (names in one place) are served on `/metrics` with `/healthz` and `/readyz`.
//!
//! Between 3 and 4, [`policy`] holds the line between what a job asks for and what
//! the worker allows (secrets, endpoints, networks, ceilings): a job that breaks it
//! is rejected before a workspace exists.
//!
//! [`mock_llm`] is the scripted OpenAI-compatible server used by tests, benchmarks
//! and the offline quickstart; [`cli`] and [`config`] are the command-line surface.

// The worker's run futures nest deeply (fenced writes inside the S3 client's own).
#![recursion_limit = "256"]

pub mod agent;
pub mod cli;
pub mod config;
pub mod job;
pub mod llm;
pub mod mock_llm;
pub mod policy;
pub mod queue;
pub mod results;
pub mod store;
pub mod telemetry;
pub mod worker;
pub mod workspace;
