//! The embedded in-memory queue of `fleet run`: a priority heap (higher priority
//! first, then FIFO), delayed retries, a dead-letter list, and "closed when idle"
//! so a batch run knows when everything is settled.

use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{JobMessage, QueueError};

struct Entry {
    priority: u8,
    seq: u64,
    msg: JobMessage,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.priority == o.priority && self.seq == o.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.priority.cmp(&o.priority).then(o.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Entry>,
    seq: u64,
    /// Delivered but not settled, plus retries waiting for their delay.
    in_flight: usize,
    closed: bool,
    dead: Vec<(JobMessage, String)>,
}

#[derive(Clone, Default)]
pub struct MemoryQueue {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
}

/// Proof of a delivery, settled once.
pub struct MemoryHandle(());

impl MemoryQueue {
    pub fn new() -> MemoryQueue {
        MemoryQueue::default()
    }

    pub fn publish(&self, msg: JobMessage) -> Result<(), QueueError> {
        let mut s = self.state.lock().expect("queue lock");
        if s.closed && s.in_flight == 0 && s.heap.is_empty() {
            return Err(QueueError::Closed);
        }
        s.seq += 1;
        let seq = s.seq;
        s.heap.push(Entry {
            priority: msg.priority,
            seq,
            msg,
        });
        drop(s);
        self.notify.notify_waiters();
        self.notify.notify_one();
        Ok(())
    }

    /// Once closed, `next` returns None as soon as nothing is queued or in flight.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.notify.notify_waiters();
    }

    pub async fn next(&self) -> Option<(JobMessage, MemoryHandle)> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock().expect("queue lock");
                if let Some(e) = s.heap.pop() {
                    s.in_flight += 1;
                    return Some((e.msg, MemoryHandle(())));
                }
                if s.closed && s.in_flight == 0 {
                    drop(s);
                    self.notify.notify_waiters();
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Settles a delivery; with `Some((msg, delay))` the message comes back later.
    pub fn settle(
        &self,
        _h: MemoryHandle,
        again: Option<(JobMessage, Duration)>,
    ) -> Result<(), QueueError> {
        match again {
            None => self.done(),
            Some((msg, delay)) if delay.is_zero() => {
                self.republish(msg);
                self.done();
            }
            Some((msg, delay)) => {
                let q = self.clone();
                // Stays in flight while it waits, so a closed queue does not end early.
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    q.republish(msg);
                    q.done();
                });
            }
        }
        Ok(())
    }

    pub fn dead(&self, _h: MemoryHandle, msg: JobMessage, reason: &str) -> Result<(), QueueError> {
        self.state
            .lock()
            .expect("queue lock")
            .dead
            .push((msg, reason.to_string()));
        self.done();
        Ok(())
    }

    /// Messages given up on, with their reasons.
    pub fn dead_letters(&self) -> Vec<(String, String)> {
        self.state
            .lock()
            .expect("queue lock")
            .dead
            .iter()
            .map(|(m, r)| (m.job_id.clone(), r.clone()))
            .collect()
    }

    pub fn depth(&self) -> usize {
        self.state.lock().expect("queue lock").heap.len()
    }

    fn republish(&self, msg: JobMessage) {
        let mut s = self.state.lock().expect("queue lock");
        s.seq += 1;
        let seq = s.seq;
        s.heap.push(Entry {
            priority: msg.priority,
            seq,
            msg,
        });
    }

    fn done(&self) {
        let mut s = self.state.lock().expect("queue lock");
        s.in_flight = s.in_flight.saturating_sub(1);
        drop(s);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, priority: u8) -> JobMessage {
        JobMessage {
            job_id: id.into(),
            priority,
            attempt: 0,
            enqueued_at: chrono::Utc::now(),
            body: Default::default(),
        }
    }

    #[tokio::test]
    async fn priority_then_fifo_and_close_when_idle() {
        let q = MemoryQueue::new();
        q.publish(msg("a", 0)).unwrap();
        q.publish(msg("b", 5)).unwrap();
        q.publish(msg("c", 0)).unwrap();
        q.close();
        let mut order = Vec::new();
        while let Some((m, h)) = q.next().await {
            order.push(m.job_id.clone());
            if m.job_id == "b" && m.attempt == 0 {
                let mut again = m.clone();
                again.attempt = 1;
                q.settle(h, Some((again, Duration::from_millis(20))))
                    .unwrap();
            } else {
                q.settle(h, None).unwrap();
            }
        }
        assert_eq!(order, ["b", "a", "c", "b"]);
    }
}
