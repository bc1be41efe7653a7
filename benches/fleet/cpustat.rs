//! CPU time of the Docker daemons and of the whole machine over a stretch of the
//! run, from /proc: a `CpuSample` before, one after, `delta` between them.
//!
//! The daemons are the `dockerd` and `containerd` processes found by their
//! /proc/PID/comm, counted as utime + stime + cutime + cstime (their reaped
//! children included). The per-container shims re-parent away from containerd,
//! so their time shows only in the machine's figure: the busy time (everything
//! but idle and iowait) of the `cpu` line of /proc/stat, every core summed. Both
//! count whatever else the machine does meanwhile.

use std::collections::BTreeMap;
use std::fs;
use std::time::Instant;

/// The processes counted as the Docker engine.
pub const DAEMONS: [&str; 2] = ["dockerd", "containerd"];

#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    /// pid → (comm, start time in ticks since boot, CPU ticks).
    daemons: BTreeMap<i32, (String, u64, u64)>,
    /// (busy, all) ticks of /proc/stat's `cpu` line; None when unreadable.
    machine: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Default)]
pub struct CpuDelta {
    pub wall_secs: f64,
    /// comm → CPU seconds, summed over its processes alive at both samples; an
    /// empty map when no daemon process is visible here.
    pub daemons: BTreeMap<String, f64>,
    /// Busy CPU seconds of the machine, all cores; NaN when unreadable.
    pub machine_busy_secs: f64,
    /// Busy + idle CPU seconds (wall × cores, as the kernel counts).
    pub machine_all_secs: f64,
}

impl CpuDelta {
    /// dockerd + containerd seconds; NaN when none was found.
    pub fn daemon_secs(&self) -> f64 {
        if self.daemons.is_empty() {
            f64::NAN
        } else {
            self.daemons.values().sum()
        }
    }
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (start time, utime + stime + cutime + cstime) in ticks from /proc/PID/stat.
fn pid_ticks(pid: i32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count from
    // after its closing one, where field 3 (state) is index 0.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    let cpu = num(14)? + num(15)? + num(16)? + num(17)?;
    Some((num(22)?, cpu))
}

fn machine_ticks() -> Option<(u64, u64)> {
    let s = fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest
    // time is already inside user and nice.
    let all: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((all.saturating_sub(idle), all))
}

pub fn sample() -> CpuSample {
    let mut daemons = BTreeMap::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) else {
                continue;
            };
            let comm = comm.trim();
            if DAEMONS.contains(&comm)
                && let Some((start, ticks)) = pid_ticks(pid)
            {
                daemons.insert(pid, (comm.to_string(), start, ticks));
            }
        }
    }
    CpuSample {
        at: Instant::now(),
        daemons,
        machine: machine_ticks(),
    }
}

impl CpuSample {
    pub fn delta(&self, later: &CpuSample) -> CpuDelta {
        let hz = ticks_per_sec();
        let mut daemons: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, (comm, start, t0)) in &self.daemons {
            // The same process (a pid reused by another would start later).
            if let Some((c, s, t1)) = later.daemons.get(pid)
                && c == comm
                && s == start
            {
                *daemons.entry(comm.clone()).or_default() += t1.saturating_sub(*t0) as f64 / hz;
            }
        }
        let (busy, all) = match (self.machine, later.machine) {
            (Some((b0, a0)), Some((b1, a1))) => (
                b1.saturating_sub(b0) as f64 / hz,
                a1.saturating_sub(a0) as f64 / hz,
            ),
            _ => (f64::NAN, f64::NAN),
        };
        CpuDelta {
            wall_secs: later.at.duration_since(self.at).as_secs_f64(),
            daemons,
            machine_busy_secs: busy,
            machine_all_secs: all,
        }
    }
}
