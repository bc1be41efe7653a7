//! Workers: the consume loop (claim → run → store → settle), one job attempt's
//! pipeline, and the embedded batch runner behind `fleet run`.
//!
//! ```text
//! delivery ─► decode ─┬─ invalid ─► rejected + dead-letter
//!                     ├─ breaks the policy (admit) ─► rejected (policy) + dead-letter
//!                     └─ claim (status.json) ─┬─ terminal ─► ack (skip)
//!                                             ├─ live elsewhere ─► retry later
//!                                             └─ won ─► run_attempt ─┬─ Final ─► result + status ─► ack
//!                                                                    ├─ Retry ─► retrying ─► retry tier (or failed + dead-letter)
//!                                                                    └─ Aborted ─► queued ─► requeue
//! ```

pub mod admit;
pub mod consume;
pub mod embedded;
pub mod records;
pub mod runner;

pub use consume::{Observer, Shutdown, Worker};
pub use runner::{JobControl, Services};
