//! The job queue boundary (DESIGN.md "Queue topology"): publish a job, receive
//! deliveries, and settle each one exactly once — ack, retry later, or dead-letter.
//! `memory` is the embedded queue of `fleet run`; RabbitMQ is the fleet's.

pub mod memory;

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

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
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error("broker refused the message: {0}")]
    Refused(String),
    #[error("queue closed")]
    Closed,
}

impl QueueError {
    pub fn retryable(&self) -> bool {
        matches!(self, QueueError::Unavailable(_))
    }
}

/// One received message, to be settled once.
pub struct Delivery {
    pub msg: JobMessage,
    handle: Handle,
}

enum Handle {
    Memory(memory::MemoryHandle),
}

#[derive(Clone)]
pub enum Queue {
    Memory(memory::MemoryQueue),
}

impl Queue {
    pub async fn publish(&self, msg: JobMessage) -> Result<(), QueueError> {
        match self {
            Queue::Memory(q) => q.publish(msg),
        }
    }

    /// The next delivery; `None` once the queue is closed and drained.
    pub async fn next(&self) -> Option<Delivery> {
        match self {
            Queue::Memory(q) => q.next().await.map(|(msg, h)| Delivery { msg, handle: Handle::Memory(h) }),
        }
    }

    /// Done with it: results and terminal status are stored.
    pub async fn ack(&self, d: Delivery) -> Result<(), QueueError> {
        match (self, d.handle) {
            (Queue::Memory(q), Handle::Memory(h)) => q.settle(h, None),
        }
    }

    /// Publishes the message again after `delay` with `attempt`, then acks this one.
    pub async fn retry(&self, d: Delivery, attempt: u32, delay: Duration) -> Result<(), QueueError> {
        let mut msg = d.msg.clone();
        msg.attempt = attempt;
        match (self, d.handle) {
            (Queue::Memory(q), Handle::Memory(h)) => q.settle(h, Some((msg, delay))),
        }
    }

    /// Gives up on the message with a reason (fleet.dead).
    pub async fn dead_letter(&self, d: Delivery, reason: &str) -> Result<(), QueueError> {
        match (self, d.handle) {
            (Queue::Memory(q), Handle::Memory(h)) => q.dead(h, d.msg, reason),
        }
    }

    /// Puts the message back for another worker now (shutdown before it ran).
    pub async fn requeue(&self, d: Delivery) -> Result<(), QueueError> {
        let msg = d.msg.clone();
        match (self, d.handle) {
            (Queue::Memory(q), Handle::Memory(h)) => q.settle(h, Some((msg, Duration::ZERO))),
        }
    }
}
