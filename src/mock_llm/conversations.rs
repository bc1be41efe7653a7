//! Per-conversation failure counters for `fail` steps, bounded so a long benchmark
//! cannot grow the server's memory: past the cap the oldest counters are forgotten
//! (that conversation's step would fail again, which a benchmark never revisits).
//!
//! A conversation is known by its model and first user message (DESIGN.md), hashed
//! to 64 bits so a counter costs the same whatever the task's length.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

/// Counters kept by default.
pub const DEFAULT_CAP: usize = 100_000;

/// Identifies one conversation.
pub type ConversationKey = u64;

pub fn conversation_key(model: &str, first_user_message: &str) -> ConversationKey {
    let mut h = DefaultHasher::new();
    model.hash(&mut h);
    first_user_message.hash(&mut h);
    h.finish()
}

/// How many failures each (conversation, step) has been served.
pub struct FailCounters {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    counts: HashMap<(ConversationKey, usize), u32>,
    /// Insertion order, for evicting the oldest; holds exactly the keys of `counts`.
    order: VecDeque<(ConversationKey, usize)>,
}

impl FailCounters {
    pub fn new(cap: usize) -> FailCounters {
        FailCounters {
            cap: cap.max(1),
            inner: Mutex::default(),
        }
    }

    /// Whether this request at `step` is to fail: true (and counted) while fewer than
    /// `times` failures were served for it; returns the failure's 1-based number.
    pub fn next_failure(
        &self,
        conversation: ConversationKey,
        step: usize,
        times: u32,
    ) -> Option<u32> {
        if times == 0 {
            return None;
        }
        let key = (conversation, step);
        // Counters are plain numbers: a panic elsewhere cannot leave them torn.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = inner.counts.get_mut(&key) {
            if *n >= times {
                return None;
            }
            *n += 1;
            return Some(*n);
        }
        while inner.counts.len() >= self.cap {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            inner.counts.remove(&old);
        }
        inner.counts.insert(key, 1);
        inner.order.push_back(key);
        Some(1)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counts
            .len()
    }
}

/// Replies served per conversation (scripts with `step_by: "served"`), bounded
/// like [`FailCounters`].
pub struct ServedCounters {
    cap: usize,
    inner: Mutex<HashMap<ConversationKey, usize>>,
}

impl ServedCounters {
    pub fn new(cap: usize) -> ServedCounters {
        ServedCounters {
            cap: cap.max(1),
            inner: Mutex::default(),
        }
    }

    /// Replies served to `conversation` so far.
    pub fn get(&self, conversation: ConversationKey) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.get(&conversation).copied().unwrap_or(0)
    }

    /// Counts one more reply served.
    pub fn advance(&self, conversation: ConversationKey) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.len() >= self.cap && !inner.contains_key(&conversation) {
            // Past the cap the counts start over: a benchmark never needs them.
            inner.clear();
        }
        *inner.entry(conversation).or_insert(0) += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_conversation_and_step() {
        let c = FailCounters::new(10);
        let a = conversation_key("m", "task a");
        let b = conversation_key("m", "task b");
        assert_ne!(a, b);
        assert_ne!(
            a,
            conversation_key("other", "task a"),
            "the model is part of the key"
        );
        assert_eq!(c.next_failure(a, 0, 2), Some(1));
        assert_eq!(c.next_failure(a, 0, 2), Some(2));
        assert_eq!(c.next_failure(a, 0, 2), None);
        assert_eq!(c.next_failure(a, 0, 2), None);
        assert_eq!(
            c.next_failure(b, 0, 2),
            Some(1),
            "another conversation has its own count"
        );
        assert_eq!(
            c.next_failure(a, 1, 1),
            Some(1),
            "another step has its own count"
        );
        assert_eq!(c.next_failure(a, 2, 0), None);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn bounded_by_evicting_the_oldest() {
        let c = FailCounters::new(3);
        for k in 0..10u64 {
            assert_eq!(c.next_failure(k, 0, 1), Some(1));
            assert!(c.len() <= 3);
        }
        // The newest are remembered, the oldest forgotten.
        assert_eq!(c.next_failure(9, 0, 1), None);
        assert_eq!(c.next_failure(0, 0, 1), Some(1));
        assert_eq!(c.len(), 3);
    }
}
