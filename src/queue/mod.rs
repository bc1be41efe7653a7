//! The job queue boundary (DESIGN.md "Queue topology"): publish a job, receive
//! deliveries, and settle each one exactly once — ack, retry later, or dead-letter.
//! `memory` is the embedded queue of `fleet run`; RabbitMQ ([`amqp`]) is the fleet's.
//! [`Queue::open`] picks one from a `--queue` value.
//!
//! Delivery is at least once: a message can come again (a redelivery after a
//! lost connection, a batch sent again); the job's status record decides
//! whether it still has to run.

pub mod amqp;
pub mod memory;

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use amqp::{AmqpOptions, AmqpQueue, QueueKind};

/// A job on the wire: the job JSON as the body, the rest as message properties.
#[derive(Debug, Clone)]
pub struct JobMessage {
    /// The job id (AMQP `message_id`); never the delivery tag.
    pub job_id: String,
    pub priority: u8,
    /// Attempts already made (0 on first publish).
    pub attempt: u32,
    pub enqueued_at: DateTime<Utc>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker cannot be reached (or did not answer) before the deadline.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The broker nacked or returned a message: sending it again will not help.
    #[error("broker refused the message: {0}")]
    Refused(String),
    #[error("queue closed")]
    Closed,
    /// A bad `--queue` value, or a topology the broker refuses (e.g. fleet.jobs
    /// declared elsewhere with other arguments).
    #[error("queue configuration: {0}")]
    Config(String),
}

impl QueueError {
    pub fn retryable(&self) -> bool {
        matches!(self, QueueError::Unavailable(_))
    }
}

/// A broadcast to every worker (`fleet.control`), as JSON: `{"cancel": "<job id>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlMsg {
    /// Cancel this job if it runs here.
    Cancel(String),
}

/// One queue's depth, for `fleet status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStat {
    pub name: String,
    /// Messages ready (not delivered to a consumer).
    pub messages: u32,
    pub consumers: u32,
}

/// One received message, to be settled once (ack, retry, dead_letter or requeue).
///
/// Whatever arrives is delivered, also a message the worker cannot read: no
/// message id gives `msg.job_id == ""`, and the body may be anything — the
/// worker checks it and dead-letters it with a reason.
pub struct Delivery {
    pub msg: JobMessage,
    /// Delivered before (to this or another worker) and not settled then.
    pub redelivered: bool,
    handle: Handle,
}

enum Handle {
    Memory(memory::MemoryHandle),
    Amqp(amqp::AmqpHandle),
}

#[derive(Clone)]
pub enum Queue {
    Memory(memory::MemoryQueue),
    Amqp(amqp::AmqpQueue),
}

/// The embedded queue's `fleet.control`: one process, one fanout.
fn memory_control() -> &'static broadcast::Sender<ControlMsg> {
    static CONTROL: OnceLock<broadcast::Sender<ControlMsg>> = OnceLock::new();
    CONTROL.get_or_init(|| broadcast::channel(256).0)
}

impl Queue {
    /// Opens a queue from a `--queue` value: `memory` (a new embedded queue) or
    /// `amqp://…`/`amqps://…` with `opts` (see [`AmqpQueue::connect`]).
    pub async fn open(spec: &str, opts: AmqpOptions) -> Result<Queue, QueueError> {
        if spec == "memory" {
            Ok(Queue::Memory(memory::MemoryQueue::new()))
        } else if spec.starts_with("amqp://") || spec.starts_with("amqps://") {
            Ok(Queue::Amqp(AmqpQueue::connect(spec, opts).await?))
        } else {
            Err(QueueError::Config(format!(
                "{spec:?}: expected `memory` or an amqp:// URL"
            )))
        }
    }

    /// Publishes a job, confirmed by the broker. While the broker is away it
    /// waits (AMQP: up to `publish_timeout`) and then fails with `Unavailable`.
    pub async fn publish(&self, msg: JobMessage) -> Result<(), QueueError> {
        match self {
            Queue::Memory(q) => q.publish(msg),
            Queue::Amqp(q) => q.publish(&msg).await,
        }
    }

    /// Publishes many jobs (`fleet submit`), pipelined with the confirms awaited
    /// together. On error some may have been published: publishing all again is
    /// safe, since a duplicate only finds its job already claimed or done.
    pub async fn publish_many(&self, msgs: &[JobMessage]) -> Result<(), QueueError> {
        match self {
            Queue::Memory(q) => msgs.iter().try_for_each(|m| q.publish(m.clone())),
            Queue::Amqp(q) => q.publish_many(msgs).await,
        }
    }

    /// The next delivery; `None` once the queue is closed and drained (memory),
    /// or once consuming stopped or the handle closed (AMQP; also at once when the
    /// handle was opened without `consume`). Waits across broker reconnects.
    pub async fn next(&self) -> Option<Delivery> {
        match self {
            Queue::Memory(q) => q.next().await.map(|(msg, h)| Delivery {
                msg,
                redelivered: false,
                handle: Handle::Memory(h),
            }),
            Queue::Amqp(q) => q.next().await.map(|r| Delivery {
                msg: r.msg,
                redelivered: r.redelivered,
                handle: Handle::Amqp(r.handle),
            }),
        }
    }

    /// Done with it: results and terminal status are stored.
    ///
    /// AMQP: a delivery whose channel has since died (a reconnect happened) is
    /// not acked — that is `Ok`, and the broker delivers the message again; the
    /// same holds for every settling method below.
    pub async fn ack(&self, d: Delivery) -> Result<(), QueueError> {
        match (self, d.handle) {
            (Queue::Memory(q), Handle::Memory(h)) => q.settle(h, None),
            (Queue::Amqp(q), Handle::Amqp(h)) => q.ack(h).await,
            _ => Err(foreign()),
        }
    }

    /// Publishes the message again after `delay` with `attempt`, then acks this one.
    ///
    /// AMQP: to the smallest retry tier of at least `delay` (the longest tier if
    /// none is; fleet.jobs for zero), confirmed before the ack. If that publish
    /// fails, the original is requeued instead (not lost) and the error returned.
    pub async fn retry(
        &self,
        d: Delivery,
        attempt: u32,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let mut msg = d.msg.clone();
        msg.attempt = attempt;
        match (self, d.handle) {
            (Queue::Memory(q), Handle::Memory(h)) => q.settle(h, Some((msg, delay))),
            (Queue::Amqp(q), Handle::Amqp(h)) => q.retry(h, &msg, delay).await,
            _ => Err(foreign()),
        }
    }

    /// Gives up on the message with a reason (fleet.dead).
    ///
    /// AMQP: published to fleet.dead with headers `x-fleet-reason`,
    /// `x-fleet-attempt`, `x-fleet-original-message-id`, `x-fleet-dead-at`,
    /// confirmed, then acked. If that publish fails, the original is rejected and
    /// the broker dead-letters it to fleet.dead itself (without the reason).
    pub async fn dead_letter(&self, d: Delivery, reason: &str) -> Result<(), QueueError> {
        match (self, d.handle) {
            (Queue::Memory(q), Handle::Memory(h)) => q.dead(h, d.msg, reason),
            (Queue::Amqp(q), Handle::Amqp(h)) => q.dead_letter(h, &d.msg, reason).await,
            _ => Err(foreign()),
        }
    }

    /// Puts the message back for another worker now (shutdown before it ran).
    /// AMQP: basic.nack with requeue; the attempt is unchanged.
    pub async fn requeue(&self, d: Delivery) -> Result<(), QueueError> {
        let msg = d.msg.clone();
        match (self, d.handle) {
            (Queue::Memory(q), Handle::Memory(h)) => q.settle(h, Some((msg, Duration::ZERO))),
            (Queue::Amqp(q), Handle::Amqp(h)) => q.requeue(h).await,
            _ => Err(foreign()),
        }
    }

    /// Broadcasts a control message (`fleet cancel`) to every worker's
    /// [`subscribe_control`](Self::subscribe_control). Fire and forget: workers
    /// that are not connected right then do not see it.
    pub async fn publish_control(&self, msg: ControlMsg) -> Result<(), QueueError> {
        match self {
            Queue::Memory(_) => {
                let _ = memory_control().send(msg);
                Ok(())
            }
            Queue::Amqp(q) => q.publish_control(&msg).await,
        }
    }

    /// Control messages for this worker. AMQP: only when opened with
    /// `opts.control`; a receiver more than 256 messages behind gets `Lagged`.
    pub fn subscribe_control(&self) -> broadcast::Receiver<ControlMsg> {
        match self {
            Queue::Memory(_) => memory_control().subscribe(),
            Queue::Amqp(q) => q.subscribe_control(),
        }
    }

    /// Depths for `fleet status` and metrics: fleet.jobs, each retry tier,
    /// fleet.dead (memory: fleet.jobs and fleet.dead).
    pub async fn queue_stats(&self) -> Result<Vec<QueueStat>, QueueError> {
        match self {
            Queue::Memory(q) => Ok(vec![
                QueueStat {
                    name: "fleet.jobs".into(),
                    messages: count(q.depth()),
                    consumers: 0,
                },
                QueueStat {
                    name: "fleet.dead".into(),
                    messages: count(q.dead_letters().len()),
                    consumers: 0,
                },
            ]),
            Queue::Amqp(q) => q.queue_stats().await,
        }
    }

    /// Stops taking new deliveries (a draining worker): `next()` returns `None`
    /// from now on; deliveries already handed out are still settled as usual.
    /// AMQP: cancels the consumer and requeues what was prefetched but not
    /// handed out. Memory: nothing to do (the worker stops calling `next`).
    pub async fn stop_consuming(&self) {
        match self {
            Queue::Memory(_) => {}
            Queue::Amqp(q) => q.stop_consuming().await,
        }
    }

    /// Done with the queue. AMQP: closes the connection — settle first, since the
    /// broker requeues whatever is still unacked. Memory: closes the queue, so
    /// `next()` returns `None` once nothing is queued or in flight.
    pub async fn close(&self) {
        match self {
            Queue::Memory(q) => q.close(),
            Queue::Amqp(q) => q.close().await,
        }
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A delivery settled on a queue of the other kind: a bug in the caller.
fn foreign() -> QueueError {
    QueueError::Closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_takes_memory_or_an_amqp_url() {
        assert!(matches!(
            Queue::open("memory", AmqpOptions::default()).await,
            Ok(Queue::Memory(_))
        ));
        for bad in ["redis://x", "", "amqp://[::1"] {
            let r = Queue::open(bad, AmqpOptions::default()).await;
            assert!(matches!(r, Err(QueueError::Config(_))), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn memory_control_is_a_broadcast() {
        let q = Queue::open("memory", AmqpOptions::default()).await.unwrap();
        let mut rx = q.subscribe_control();
        q.publish_control(ControlMsg::Cancel("j".into()))
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap(), ControlMsg::Cancel("j".into()));
        let json: ControlMsg = serde_json::from_str(r#"{"cancel":"j"}"#).unwrap();
        assert_eq!(json, ControlMsg::Cancel("j".into()));
    }
}
