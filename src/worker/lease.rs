//! Whether another worker's run is still alive, judged on this process's own
//! clock: a run is dead only when this worker saw the same owner token and
//! heartbeat sequence stay unchanged for a whole lease. The record's timestamps
//! come from another host's clock and are never compared with ours.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::job::Owner;

/// Sightings kept at most; the oldest are dropped past it (memory stays bounded
/// however many jobs a worker sees).
const MAX_SIGHTINGS: usize = 10_000;

/// This worker's sightings of running jobs: job id → (owner, sequence, first seen).
pub struct LeaseWatch {
    lease: Duration,
    seen: Mutex<HashMap<String, (Owner, u64, Instant)>>,
}

impl LeaseWatch {
    pub fn new(lease: Duration) -> LeaseWatch {
        LeaseWatch {
            lease,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// True when this worker has seen `mark` unchanged for at least a lease. A
    /// new or changed mark starts a new sighting (and is not dead yet).
    pub fn is_dead(&self, job_id: &str, mark: &(Owner, u64)) -> bool {
        self.is_dead_at(job_id, mark, Instant::now())
    }

    fn is_dead_at(&self, job_id: &str, mark: &(Owner, u64), now: Instant) -> bool {
        self.silent_at(job_id, mark, now) >= self.lease
    }

    /// How long this worker has seen `mark` unchanged (zero for a new sighting).
    pub fn silent_for(&self, job_id: &str, mark: &(Owner, u64)) -> Duration {
        self.silent_at(job_id, mark, Instant::now())
    }

    fn silent_at(&self, job_id: &str, mark: &(Owner, u64), now: Instant) -> Duration {
        let mut seen = self.seen.lock().expect("lease watch");
        if let Some((owner, seq, since)) = seen.get(job_id) {
            if *owner == mark.0 && *seq == mark.1 {
                return now.duration_since(*since);
            }
        }
        if seen.len() >= MAX_SIGHTINGS {
            let cutoff = now.checked_sub(self.lease * 10).unwrap_or(now);
            seen.retain(|_, (_, _, since)| *since > cutoff);
            if seen.len() >= MAX_SIGHTINGS {
                seen.clear();
            }
        }
        seen.insert(job_id.to_string(), (mark.0.clone(), mark.1, now));
        Duration::ZERO
    }

    /// Forgets a job (it ended, or this worker now runs it).
    pub fn forget(&self, job_id: &str) {
        self.seen.lock().expect("lease watch").remove(job_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_only_after_a_lease_of_the_same_mark_on_our_clock() {
        let w = LeaseWatch::new(Duration::from_secs(30));
        let o = Owner::new("w1", 1);
        let t0 = Instant::now();
        assert!(!w.is_dead_at("j", &(o.clone(), 5), t0));
        assert!(!w.is_dead_at("j", &(o.clone(), 5), t0 + Duration::from_secs(29)));
        assert!(w.is_dead_at("j", &(o.clone(), 5), t0 + Duration::from_secs(30)));
        // A heartbeat (a new sequence) makes it live again and restarts the count.
        assert!(!w.is_dead_at("j", &(o.clone(), 6), t0 + Duration::from_secs(31)));
        assert!(!w.is_dead_at("j", &(o.clone(), 6), t0 + Duration::from_secs(60)));
        assert!(w.is_dead_at("j", &(o, 6), t0 + Duration::from_secs(61)));
        // Another owner is another run.
        let o2 = Owner::new("w2", 2);
        assert!(!w.is_dead_at("j", &(o2, 6), t0 + Duration::from_secs(200)));
    }
}
