//! The two halves of a collect that need more than the final snapshot: an
//! artifact too large for the snapshot, read on its own, and the masked patch
//! of the final snapshot against the base, computed off the runtime threads.

use std::time::Duration;

use super::runner::{MAX_DIFF_FILE_BYTES, MAX_FILE_BYTES, err};
use crate::agent::Masker;
use crate::job::{ErrorInfo, Phase};
use crate::results::base::Base;
use crate::workspace::{self, Workspace};

/// The longest the patch computation may take (it runs on a blocking thread).
const DIFF_DEADLINE: Duration = Duration::from_secs(120);

/// An artifact the snapshot listed without reading it: read on its own when it
/// is a regular file of at most [`MAX_FILE_BYTES`].
pub(super) async fn collect_large(ws: &Workspace, workdir: &str, path: &str) -> Option<Vec<u8>> {
    let full = format!("{}/{path}", workdir.trim_end_matches('/'));
    match ws.stat(&full).await {
        Ok(Some(workspace::PathKind::File { size })) if size <= MAX_FILE_BYTES => {
            ws.read_file(&full).await.ok().flatten()
        }
        _ => None,
    }
}

/// The masked patch of `after` against `base`, in a scratch file of `scratch`
/// (removed when the returned path is dropped), and whether it is complete. It is
/// computed on a blocking thread under [`DIFF_DEADLINE`] (heartbeats and
/// `/healthz` keep their runtime threads however large the workspace), one path
/// at a time from both snapshots' scratch files.
pub(super) async fn make_patch(
    scratch: &std::path::Path,
    job_id: &str,
    base: Base,
    after: workspace::spill::Spilled,
    masker: &Masker,
) -> Result<(tempfile::TempPath, bool), ErrorInfo> {
    let scratch_err = |e: std::io::Error| err("scratch_io", Phase::Collect, true, e.to_string());
    let out = tempfile::Builder::new()
        .prefix(&format!("{job_id}-"))
        .suffix(".patch")
        .tempfile_in(scratch)
        .map_err(scratch_err)?
        .into_temp_path();
    let masker = masker.clone();
    let job = tokio::task::spawn_blocking(move || {
        let mask = |s: &str| masker.mask(s);
        let done = base.write_patch(&after, MAX_DIFF_FILE_BYTES, &mask, &out)?;
        Ok::<_, std::io::Error>((out, done.complete))
    });
    match tokio::time::timeout(DIFF_DEADLINE, job).await {
        Ok(Ok(Ok(done))) => Ok(done),
        Ok(Ok(Err(e))) => Err(scratch_err(e)),
        Ok(Err(e)) => Err(err("diff_failed", Phase::Collect, false, e.to_string())),
        Err(_) => Err(err(
            "diff_deadline",
            Phase::Collect,
            false,
            format!("computing the patch took longer than {DIFF_DEADLINE:?}"),
        )),
    }
}
