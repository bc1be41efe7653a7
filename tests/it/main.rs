//! The integration tests: one binary, against real services (Docker, and for the
//! fleet tests RabbitMQ and an S3 API). `scripts/test.sh` installs and starts them;
//! a test whose service is missing fails, it never skips.

mod registry;
mod tlsutil;
mod util;

mod agent;
mod amqp;
mod cli;
mod config;
mod deploy;
mod docker_host;
mod fleet;
mod image_workdir;
mod images;
mod llm;
mod prometheus;
mod round_trips;
mod run;
mod s3;
mod shell;
mod webhook;
mod workspace;
