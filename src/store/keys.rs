//! Every store key, built in one place (DESIGN.md "Store layout"). Job ids are
//! validated ([A-Za-z0-9._-], not `.`/`..`) before they reach here, so a key never
//! escapes its prefix.

/// The files of one job.
pub struct JobKeys<'a>(pub &'a str);

impl JobKeys<'_> {
    pub fn dir(&self) -> String {
        format!("jobs/{}/", self.0)
    }
    pub fn job(&self) -> String {
        format!("jobs/{}/job.json", self.0)
    }
    pub fn input(&self) -> String {
        format!("jobs/{}/input.tar.gz", self.0)
    }
    pub fn status(&self) -> String {
        format!("jobs/{}/status.json", self.0)
    }
    pub fn result(&self) -> String {
        format!("jobs/{}/result.json", self.0)
    }
    pub fn patch(&self) -> String {
        format!("jobs/{}/patch.diff", self.0)
    }
    pub fn events(&self) -> String {
        format!("jobs/{}/events.jsonl", self.0)
    }
    pub fn metrics(&self) -> String {
        format!("jobs/{}/metrics.json", self.0)
    }
    /// `rel` is a path relative to the workdir, already checked to hold no `..`.
    pub fn artifact(&self, rel: &str) -> String {
        format!("jobs/{}/artifacts/{}", self.0, rel.trim_start_matches('/'))
    }
}

pub fn batch(batch_id: &str) -> String {
    format!("batches/{batch_id}.json")
}

pub const JOBS_PREFIX: &str = "jobs/";

/// A key is safe when no segment is empty, `.` or `..`.
pub fn is_safe(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
        && !key.contains('\0')
}
