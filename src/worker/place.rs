//! Placing a job's input in its workspace before the agent starts: a directory
//! packed on the host, a tar.gz from the store, or a git clone inside the
//! workspace. Inputs pass through scratch files, never whole in memory: a 1 GiB
//! input costs the worker a buffer, not a gigabyte. When the workdir is known to
//! start empty, a plain archive is also the base snapshot (`results::base_tar`):
//! no round trip reads back what was just sent.

use std::path::PathBuf;
use std::time::Duration;

use super::runner::{MAX_DIFF_FILE_BYTES, MAX_INPUT_BYTES, Services, err, snapshot_path, ws_err};
use crate::job::{ErrorInfo, Input, JobSpec, Phase};
use crate::results::base::Base;
use crate::results::{base_tar, input};
use crate::workspace::Workspace;

/// Places the input; the base snapshot too when its archive is one (`None`:
/// the caller reads the workspace).
pub(super) async fn place_input(
    svc: &Services,
    spec: &JobSpec,
    ws: &Workspace,
) -> Result<Option<Base>, ErrorInfo> {
    let workdir = ws.workdir().to_string();
    let scratch = |ext: &str| {
        svc.scratch.join(format!(
            "{}-{}.{ext}",
            spec.id,
            uuid::Uuid::new_v4().simple()
        ))
    };
    let unreadable = |what: &str, e: String| {
        err(
            "input_unreadable",
            Phase::Input,
            false,
            format!("{what}: {e}"),
        )
    };
    let empty = ws.workdir_known_empty();
    // The archive as the base, read on a blocking thread (a base it cannot
    // vouch for is read from the workspace instead).
    let base_of = |tar: PathBuf| {
        let spill = snapshot_path(svc, spec, "base");
        let max_total = svc.settings.snapshot_max_bytes;
        async move {
            if !empty {
                return None;
            }
            tokio::task::spawn_blocking(move || {
                base_tar::base_from_input_tar(&tar, MAX_DIFF_FILE_BYTES as u64, max_total, &spill)
            })
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten()
        }
    };
    match &spec.input {
        None => Ok(None),
        Some(Input::Path { path }) => {
            let (dir, tar) = (PathBuf::from(path), scratch("tar"));
            let dest = tar.clone();
            let packed = tokio::task::spawn_blocking(move || input::tar_dir_to_file(&dir, &dest))
                .await
                .map_err(|e| unreadable(path, e.to_string()))
                .and_then(|r| r.map_err(|e| unreadable(path, e.to_string())));
            let placed = match packed {
                Ok(()) => match ws.put_tar_file(&workdir, &tar).await {
                    Ok(()) => Ok(base_of(tar.clone()).await),
                    Err(e) => Err(ws_err(&e, Phase::Input)),
                },
                Err(e) => Err(e),
            };
            let _ = std::fs::remove_file(&tar);
            placed
        }
        Some(Input::StoreKey { store_key }) => {
            let (gz, tar) = (scratch("tar.gz"), scratch("tar"));
            let placed = async {
                let found = svc
                    .store
                    .get_to_file(store_key, &gz)
                    .await
                    .map_err(|e| err(e.kind(), Phase::Input, e.retryable(), e.to_string()))?;
                if !found {
                    return Err(err(
                        "input_missing",
                        Phase::Input,
                        false,
                        format!("{store_key} is not in the store"),
                    ));
                }
                let (src, dest) = (gz.clone(), tar.clone());
                tokio::task::spawn_blocking(move || {
                    input::gunzip_file(&src, &dest, MAX_INPUT_BYTES)
                })
                .await
                .map_err(|e| unreadable(store_key, e.to_string()))?
                .map_err(|e| unreadable(store_key, e.to_string()))?;
                let _ = std::fs::remove_file(&gz);
                ws.put_tar_file(&workdir, &tar)
                    .await
                    .map_err(|e| ws_err(&e, Phase::Input))?;
                Ok(base_of(tar.clone()).await)
            }
            .await;
            let _ = std::fs::remove_file(&gz);
            let _ = std::fs::remove_file(&tar);
            placed
        }
        Some(Input::Git { git }) => {
            let mut script = format!("git clone --quiet {} . 2>&1", input::sh_quote(&git.url));
            if let Some(r) = &git.git_ref {
                script.push_str(&format!(
                    " && git checkout --quiet {} 2>&1",
                    input::sh_quote(r)
                ));
            }
            let out = ws
                .exec(
                    &script,
                    &workdir,
                    Duration::from_secs(spec.limits.command_timeout_secs.max(300)),
                    4000,
                )
                .await
                .map_err(|e| ws_err(&e, Phase::Input))?;
            if out.exit_code == Some(0) {
                Ok(None)
            } else {
                Err(err(
                    "git_clone_failed",
                    Phase::Input,
                    false,
                    format!("git clone failed: {}", out.output.trim()),
                ))
            }
        }
    }
}
