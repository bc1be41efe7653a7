//! Workers: the consume loop (claim → run → store → settle), one job attempt's
//! pipeline, and the embedded batch runner behind `fleet run`.
//!
//! ```text
//! delivery ─► resolve (a pointer to job.json) ─┬─ invalid ─► dead-letter (records of an existing job untouched)
//!                     └─ claim (status.json CAS, owner token) ─┬─ terminal ─► ack (skip)
//!                                             ├─ live elsewhere (seen on our clock) ─► retry later
//!                                             ├─ past FLEET_MAX_ATTEMPTS ─► failed/worker_lost + dead-letter
//!                                             └─ won ─► run_attempt (fenced) ─┬─ Final ─► result + status ─► ack
//!                                                                    ├─ Retry ─► retrying ─► retry tier (or failed + dead-letter)
//!                                                                    ├─ Aborted ─► queued ─► requeue
//!                                                                    └─ Lost ─► nothing written ─► ack (the owner has its own message)
//! ```

pub mod admit;
pub mod claim;
mod collect;
pub mod consume;
pub mod embedded;
pub mod fence;
pub mod lease;
pub mod message;
mod place;
mod prepare;
pub mod records;
pub mod runner;
pub mod settle;
pub mod sweep;

pub use consume::{Observer, Shutdown, Worker};
pub use runner::{JobControl, Services};
