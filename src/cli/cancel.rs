//! `fleet cancel JOB_ID`: a queued job is marked cancelled at once (a worker that
//! receives it later skips it); a running job is asked to stop through its status
//! record and the `fleet.control` broadcast, and its worker ends it as `cancelled`
//! within seconds, removing its container.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::{QueueArg, StoreArg, UsageError};
use crate::job::{Outcome, State};
use crate::queue::{ControlMsg, Queue};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct CancelArgs {
    pub job_id: String,
    #[command(flatten)]
    pub queue: QueueArg,
    #[command(flatten)]
    pub store: StoreArg,
}

pub async fn run(a: CancelArgs) -> anyhow::Result<ExitCode> {
    let spec = a.store.resolve();
    let store = Store::open(&spec)
        .await
        .with_context(|| format!("opening the store {spec}"))?;
    let id = a.job_id.as_str();
    let before = store
        .status(id)
        .await?
        .ok_or_else(|| UsageError(format!("job {id:?} not found in {}", store.locate("jobs/"))))?;
    if before.state.is_terminal() {
        eprintln!("job {id} already ended: {}", before.state);
        return Ok(ExitCode::from(1));
    }
    let after = store
        .update_status(id, |s| {
            if s.state.is_terminal() {
                return false;
            }
            s.cancel_requested = true;
            if s.state != State::Running {
                s.transition(
                    State::Cancelled,
                    None,
                    Some("cancelled before it ran".into()),
                );
            }
            true
        })
        .await?
        .context("the status record vanished")?;
    match after.state {
        State::Cancelled => {
            crate::worker::records::store_unrun(&store, id, Outcome::Cancelled, after.attempt)
                .await?;
            println!("{id}: cancelled (it had not started)");
        }
        State::Running => {
            let queue = Queue::open(&a.queue.resolve(), crate::config::amqp_options()?)
                .await
                .context("connecting to the broker")?;
            queue
                .publish_control(ControlMsg::Cancel(id.to_string()))
                .await
                .context("broadcasting the cancel")?;
            queue.close().await;
            println!("{id}: cancel requested; its worker stops it within seconds");
        }
        other => {
            eprintln!("job {id} already ended: {other}");
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}
