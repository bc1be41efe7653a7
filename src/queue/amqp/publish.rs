//! Confirmed publishing: one message, a pipelined batch, a control broadcast.
//! Every publish waits for a live session (reconnects included) up to
//! `publish_timeout`; a nack or a return is `Refused`, never retried.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::time::Instant;
use tracing::warn;

use super::{AmqpQueue, session, wire};
use crate::queue::{ControlMsg, JobMessage, QueueError};

impl AmqpQueue {
    /// Publishes a job to fleet.jobs, confirmed.
    pub async fn publish(&self, msg: &JobMessage) -> Result<(), QueueError> {
        let props = wire::job_properties(msg, FieldTable::default())?;
        self.publish_to(&self.shared.names.jobs, &msg.body, props)
            .await
    }

    /// Publishes to a queue through the default exchange, `mandatory` and
    /// confirmed, retrying across reconnects until `publish_timeout`.
    pub(super) async fn publish_to(
        &self,
        queue: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), QueueError> {
        let deadline = Instant::now() + self.shared.opts.publish_timeout;
        self.publish_until(deadline, "", queue, body, props, true)
            .await
    }

    async fn publish_until(
        &self,
        deadline: Instant,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
        mandatory: bool,
    ) -> Result<(), QueueError> {
        let mut delays = session::backoff(Duration::from_secs(1));
        loop {
            let s = self.session(deadline).await?;
            let fut = publish_one(
                &s.publish,
                exchange,
                routing_key,
                body,
                props.clone(),
                mandatory,
            );
            match tokio::time::timeout_at(deadline, fut).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(Published::Refused(why))) => return Err(QueueError::Refused(why)),
                Ok(Err(Published::Failed(e))) => {
                    warn!(error = %e, "publish failed; retrying");
                    self.shared.poke.notify_one();
                    let delay = delays.next().unwrap_or(Duration::from_secs(1));
                    tokio::time::sleep_until(deadline.min(Instant::now() + delay)).await;
                }
                Err(_) => {
                    return Err(QueueError::Unavailable(
                        "publish not confirmed before the deadline".into(),
                    ));
                }
            }
        }
    }

    /// Publishes many jobs fast: batches of `publish_batch` are sent back to back
    /// and their confirms awaited together. A batch cut by a lost connection is
    /// sent again (so a job may be queued twice; the store's status record makes
    /// that harmless). Refused messages make it `Refused`, naming the first
    /// refused job id, after every batch was tried.
    pub async fn publish_many(&self, msgs: &[JobMessage]) -> Result<(), QueueError> {
        let props: Vec<BasicProperties> = msgs
            .iter()
            .map(|m| wire::job_properties(m, FieldTable::default()))
            .collect::<Result<_, _>>()?;
        let mut refused: Vec<&str> = Vec::new();
        let batch = self.shared.opts.publish_batch.max(1);
        for (chunk, props) in msgs.chunks(batch).zip(props.chunks(batch)) {
            let deadline = Instant::now() + self.shared.opts.publish_timeout;
            let mut delays = session::backoff(Duration::from_secs(1));
            loop {
                let s = self.session(deadline).await?;
                match tokio::time::timeout_at(
                    deadline,
                    self.publish_batch(&s.publish, chunk, props),
                )
                .await
                {
                    Ok(Ok(no)) => {
                        refused.extend(no.into_iter().map(|i| chunk[i].job_id.as_str()));
                        break;
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, batch = chunk.len(), "batch publish failed; sending the batch again");
                        self.shared.poke.notify_one();
                        let delay = delays.next().unwrap_or(Duration::from_secs(1));
                        tokio::time::sleep_until(deadline.min(Instant::now() + delay)).await;
                    }
                    Err(_) => {
                        return Err(QueueError::Unavailable(
                            "batch not confirmed before the deadline".into(),
                        ));
                    }
                }
            }
        }
        match refused.first() {
            None => Ok(()),
            Some(first) => Err(QueueError::Refused(format!(
                "{} of {} messages refused by the broker (first: {first:?})",
                refused.len(),
                msgs.len()
            ))),
        }
    }

    /// Sends a batch, then awaits its confirms; the indexes of refused messages.
    async fn publish_batch(
        &self,
        ch: &Channel,
        msgs: &[JobMessage],
        props: &[BasicProperties],
    ) -> Result<Vec<usize>, lapin::Error> {
        let opts = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let mut pending = Vec::with_capacity(msgs.len());
        for (m, p) in msgs.iter().zip(props) {
            let queue = self.shared.names.jobs.as_str().into();
            pending.push(
                ch.basic_publish("".into(), queue, opts, &m.body, p.clone())
                    .await?,
            );
        }
        let mut refused = Vec::new();
        for (i, confirm) in pending.into_iter().enumerate() {
            match confirm.await? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_)) | Confirmation::Nack(_) | Confirmation::NotRequested => {
                    refused.push(i)
                }
            }
        }
        Ok(refused)
    }

    /// Broadcasts a control message to every worker (confirmed). Not `mandatory`:
    /// with no worker bound there is nothing running to tell.
    pub async fn publish_control(&self, msg: &ControlMsg) -> Result<(), QueueError> {
        let body = serde_json::to_vec(msg).map_err(|e| QueueError::Refused(e.to_string()))?;
        let deadline = Instant::now() + self.shared.opts.publish_timeout;
        let exchange = self.shared.names.control.as_str();
        self.publish_until(
            deadline,
            exchange,
            "",
            &body,
            wire::control_properties(),
            false,
        )
        .await
    }
}

/// How one confirmed publish ended, when it did not succeed.
enum Published {
    /// Nacked or returned: the broker will not take it.
    Refused(String),
    /// The channel or connection failed: worth another try.
    Failed(lapin::Error),
}

async fn publish_one(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
    mandatory: bool,
) -> Result<(), Published> {
    let opts = BasicPublishOptions {
        mandatory,
        immediate: false,
    };
    let confirm = ch
        .basic_publish(exchange.into(), routing_key.into(), opts, body, props)
        .await
        .map_err(Published::Failed)?;
    match confirm.await.map_err(Published::Failed)? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(ret)) => Err(Published::Refused(format!(
            "returned by the broker: {} {}",
            ret.reply_code, ret.reply_text
        ))),
        Confirmation::Nack(_) => Err(Published::Refused("nacked by the broker".into())),
        Confirmation::NotRequested => Err(Published::Refused(
            "the channel is not in confirm mode".into(),
        )),
    }
}
