//! Counting a workspace's round trips to its engine, by the phase of the job
//! they served (metrics.json `docker_api_calls`). The engine is what a batch of
//! short jobs waits on, so what a job asks of it is measured, not guessed: the
//! Docker backend ticks the meter on every API call it makes for the job; the
//! runner says which phase the job is in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use serde::Serialize;

/// A job's phases, as metrics.json names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallPhase {
    WorkspaceStart = 0,
    Input = 1,
    Agent = 2,
    Collect = 3,
    Teardown = 4,
}

const PHASES: usize = 5;

/// API calls per phase. Cheap to clone (shared counters).
#[derive(Debug, Clone, Default)]
pub struct CallMeter(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    phase: AtomicUsize,
    counts: [AtomicU32; PHASES],
}

impl CallMeter {
    /// Counts one call against the current phase.
    pub fn tick(&self) {
        let p = self.0.phase.load(Ordering::Relaxed).min(PHASES - 1);
        self.0.counts[p].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls from now on count against `phase`.
    pub fn enter(&self, phase: CallPhase) {
        self.0.phase.store(phase as usize, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn counts(&self) -> ApiCalls {
        let c = |p: CallPhase| self.0.counts[p as usize].load(Ordering::Relaxed);
        let mut calls = ApiCalls {
            workspace_start: c(CallPhase::WorkspaceStart),
            input: c(CallPhase::Input),
            agent: c(CallPhase::Agent),
            collect: c(CallPhase::Collect),
            teardown: c(CallPhase::Teardown),
            total: 0,
        };
        calls.total =
            calls.workspace_start + calls.input + calls.agent + calls.collect + calls.teardown;
        calls
    }
}

/// metrics.json `docker_api_calls`: round trips to the engine per phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ApiCalls {
    pub workspace_start: u32,
    pub input: u32,
    pub agent: u32,
    pub collect: u32,
    pub teardown: u32,
    pub total: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_count_against_the_phase_entered_last() {
        let m = CallMeter::default();
        m.tick();
        m.tick();
        m.enter(CallPhase::Agent);
        let shared = m.clone();
        shared.tick();
        m.enter(CallPhase::Teardown);
        m.tick();
        let c = m.counts();
        assert_eq!(
            (c.workspace_start, c.input, c.agent, c.collect, c.teardown),
            (2, 0, 1, 0, 1)
        );
        assert_eq!(c.total, 4);
    }
}
