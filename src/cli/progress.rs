//! The progress display of `fleet run` (and `submit --wait`): an overall bar and one
//! line per running job with its step and cost. Off when stderr is not a terminal;
//! then one plain line per finished job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::agent::Progress;
use crate::job::JobResult;
use crate::worker::Observer;

pub struct Board {
    multi: MultiProgress,
    overall: ProgressBar,
    jobs: Mutex<HashMap<String, (ProgressBar, Arc<Progress>)>>,
    live: bool,
}

impl Board {
    pub fn new(total: usize, live: bool) -> Board {
        let target = if live {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(total as u64));
        overall.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} jobs  {msg}")
                .expect("template")
                .progress_chars("=> "),
        );
        overall.enable_steady_tick(Duration::from_millis(250));
        Board {
            multi,
            overall,
            jobs: Mutex::new(HashMap::new()),
            live,
        }
    }

    /// Prints a line above the bars.
    pub fn println(&self, line: &str) {
        if self.live {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    pub fn finish(&self) {
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }

    fn refresh(&self) {
        let jobs = self.jobs.lock().expect("board lock");
        for (id, (bar, p)) in jobs.iter() {
            bar.set_message(format!("{id}  step {}  ${:.4}", p.steps(), p.cost()));
        }
        self.overall.set_message(format!("{} running", jobs.len()));
    }
}

impl Observer for Board {
    fn started(&self, job_id: &str, progress: Arc<Progress>) {
        if !self.live {
            return;
        }
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("  {spinner} {elapsed:>4} {msg}").expect("template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        self.jobs
            .lock()
            .expect("board lock")
            .insert(job_id.to_string(), (bar, progress));
        self.refresh();
    }

    fn finished(&self, job_id: &str, r: &JobResult) {
        if let Some((bar, _)) = self.jobs.lock().expect("board lock").remove(job_id) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        self.overall.inc(1);
        self.println(&format!(
            "{:<16} {:<16} {:>3} steps {:>8.1}s  ${:.4}",
            job_id, r.outcome, r.steps, r.duration_secs, r.cost_usd
        ));
        self.refresh();
    }
}

/// Keeps job lines fresh while jobs run.
pub fn spawn_refresher(board: Arc<Board>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            board.refresh();
        }
    })
}
