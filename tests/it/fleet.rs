//! The distributed fleet end to end: `fleet submit`, `fleet worker` processes,
//! RabbitMQ, the S3 store (moto), Docker and the scripted LLM — each test with its
//! own queue prefix and store prefix (see `harness`).
//!
//! `drill_broker_restart` restarts the broker's app, which drops every client
//! connection, other tests' too: it is `#[ignore]`d and runs alone in the serial
//! pass: `cargo nextest run --test it --run-ignored only -j 1`.

mod harness;

mod batch;
mod cancel;
mod faults;
mod hardening;
mod messages;
mod ownership;
mod policy;
mod pull;
mod signals;
mod store_check;
mod tls;
mod worker_image;
