//! Starting a job's workspace: the spec its attempt gets (image, env with the
//! resolved secrets, limits, hardening), and the start ahead of the claim that
//! pipelining uses (`consume.rs`).

use std::collections::BTreeMap;
use std::time::Instant;

use super::runner::{Services, llm_settings, resolve_secrets};
use crate::job::JobSpec;
use crate::workspace::{Workspace, WorkspaceSpec};

/// A workspace started for a job before it was claimed (pipelining, see
/// `consume.rs`): used when the claim gives the attempt it was started for,
/// destroyed otherwise.
pub struct Prepared {
    pub ws: Workspace,
    pub attempt: u32,
    /// How long the start took.
    pub secs: f64,
}

/// Starts the job's workspace ahead of its claim. `None` when the job cannot
/// get one now (its secrets, its LLM settings or the start failed): the attempt
/// then starts its own and reports why.
pub async fn prepare(svc: &Services, spec: &JobSpec, attempt: u32) -> Option<Prepared> {
    let (secret_env, key) = resolve_secrets(spec, &svc.settings, svc.enforce_policy).ok()?;
    llm_settings(spec, &svc.settings, key).ok()?;
    let ws_spec = workspace_spec(svc, spec, attempt, secret_env);
    let t = Instant::now();
    match svc.backend.start(&ws_spec).await {
        Ok(ws) => Some(Prepared {
            ws,
            attempt,
            secs: t.elapsed().as_secs_f64(),
        }),
        Err(e) => {
            tracing::debug!(error = %e, "could not prepare the workspace ahead");
            None
        }
    }
}

/// The workspace a job's attempt gets: its image, env (with the resolved
/// secrets), limits and hardening.
pub(super) fn workspace_spec(
    svc: &Services,
    spec: &JobSpec,
    attempt: u32,
    secret_env: BTreeMap<String, String>,
) -> WorkspaceSpec {
    let mut env = spec.env.clone();
    env.extend(secret_env);
    WorkspaceSpec {
        job_id: spec.id.clone(),
        attempt,
        worker_id: svc.settings.worker_id.clone(),
        image: spec
            .image
            .clone()
            .unwrap_or_else(crate::config::default_image),
        workdir: spec.workdir.clone(),
        env,
        memory_mb: spec.limits.memory_mb,
        cpus: spec.limits.cpus,
        pids: spec.limits.pids,
        network: spec.limits.network.clone(),
        user: spec.limits.user.clone(),
        read_only_root: spec.limits.read_only_root,
        disk_mb: Some(svc.policy.disk_mb(spec)),
    }
}
