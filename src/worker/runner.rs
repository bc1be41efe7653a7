//! One attempt of one job, from workspace up to results stored: start the
//! workspace, place the input, run the agent under the job's deadline, collect the
//! patch and artifacts, tear the workspace down (on every path, panics included),
//! and upload events, patch and metrics. The caller writes result.json and the
//! terminal status (it alone knows whether an infrastructure fault is retried).
//!
//! Every upload goes through the run's [`Fence`]: once the run lost its job it
//! stops at once (the workspace is torn down as on every path) and uploads
//! nothing more ([`AttemptEnd::Lost`]).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures_util::FutureExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::collect::{collect_large, make_patch};
use super::fence::Fence;
use super::prepare::workspace_spec;
pub use super::prepare::{Prepared, prepare};
use crate::agent::{self, AgentEnd, AgentReport, EventKind, EventLog, Masker, Source, ToolCount};
use crate::config::RunSettings;
use crate::job::{ErrorInfo, JobResult, JobSpec, Outcome, Phase, Price, Tokens};
use crate::llm::{LlmClient, LlmSettings, LlmStats};
use crate::results::base::Base;
use crate::results::match_artifacts;
use crate::store::{JobKeys, Store, StoreError};
use crate::telemetry::metrics;
use crate::workspace::calls::{ApiCalls, CallPhase};
use crate::workspace::{self, Snapshot, Workspace, WorkspaceError};

/// Artifacts over this are not collected.
pub(super) const MAX_FILE_BYTES: u64 = 16 << 20;
/// Snapshot limits: files over this are listed but not read (nor diffed), and a
/// snapshot stops reading at the total (`FLEET_SNAPSHOT_MAX_MB`, 256 MiB by
/// default). Both snapshots go to scratch files as they are read, so the worker
/// holds one file of a job's workspace at a time, whatever the workspace holds.
pub(super) const MAX_DIFF_FILE_BYTES: usize = 1 << 20;
/// Inputs may inflate to at most this.
pub(super) const MAX_INPUT_BYTES: u64 = 1 << 30;

/// What every job runner shares.
pub struct Services {
    pub store: Store,
    pub backend: workspace::Backend,
    pub http: reqwest::Client,
    pub settings: RunSettings,
    /// Where per-job scratch files (the live events.jsonl) go.
    pub scratch: PathBuf,
    /// Sends completion webhooks in the background, after results are stored.
    pub notifier: crate::results::webhook::Notifier,
    /// What this worker allows jobs; its disk ceiling is also the default disk limit.
    pub policy: std::sync::Arc<crate::policy::Policy>,
    /// Whether jobs are checked against `policy` (`fleet worker`, `fleet run
    /// --policy worker`) or trusted (`fleet run`'s own job file).
    pub enforce_policy: bool,
}

/// How an attempt ended.
pub enum AttemptEnd {
    /// A final outcome: the caller stores `result` and the terminal status.
    Final(JobResult),
    /// An infrastructure fault: another attempt may succeed.
    Retry(JobResult),
    /// Stopped by worker shutdown before it could finish: requeue it.
    Aborted,
    /// Another run holds the job now: this one stopped and wrote nothing more.
    Lost,
}

/// Per-phase wall times in seconds (metrics.json).
#[derive(Debug, Default, Serialize)]
struct Phases {
    workspace_start: f64,
    input: f64,
    agent: f64,
    collect: f64,
    teardown: f64,
    store: f64,
}

#[derive(Serialize)]
struct MetricsFile<'a> {
    job_id: &'a str,
    attempt: u32,
    outcome: Outcome,
    steps: u32,
    tokens: Tokens,
    cost_usd: f64,
    llm: LlmStats,
    phases_secs: &'a Phases,
    /// Round trips to the Docker engine per phase (absent for a local workspace).
    #[serde(skip_serializing_if = "Option::is_none")]
    docker_api_calls: Option<ApiCalls>,
    /// Whether the workspace was started ahead, while the job waited for a slot.
    workspace_prepared: bool,
    tools: &'a BTreeMap<String, ToolCount>,
    events: usize,
    events_bytes: u64,
    patch_bytes: u64,
    artifacts: usize,
    duration_secs: f64,
}

/// Cancellation of one running job: `cancel` ends it as `cancelled` (user cancel,
/// Ctrl-C of `fleet run`); `abort` stops it for requeueing (worker shutdown).
#[derive(Clone, Default)]
pub struct JobControl {
    pub cancel: CancellationToken,
    pub abort: CancellationToken,
}

enum Stop {
    Report(AgentReport),
    TimedOut,
    Cancelled,
    Aborted,
    Lost,
}

pub(super) fn err(
    kind: &str,
    phase: Phase,
    retryable: bool,
    message: impl Into<String>,
) -> ErrorInfo {
    ErrorInfo {
        kind: kind.into(),
        phase,
        retryable,
        message: message.into(),
    }
}

pub(super) fn ws_err(e: &WorkspaceError, phase: Phase) -> ErrorInfo {
    err(e.kind(), phase, e.retryable(), e.to_string())
}

/// Resolves the job's secrets and API key from this worker's environment. Under
/// the policy, the worker's own `LLM_API_KEY` goes only to its own endpoint.
pub(super) fn resolve_secrets(
    spec: &JobSpec,
    s: &RunSettings,
    enforce_policy: bool,
) -> Result<(BTreeMap<String, String>, Option<String>), ErrorInfo> {
    let mut env = BTreeMap::new();
    for name in &spec.secrets {
        match crate::config::env(name) {
            Some(v) => {
                env.insert(name.clone(), v);
            }
            None => {
                return Err(err(
                    "secret_missing",
                    Phase::Validate,
                    false,
                    format!("secret {name} is not set in the worker's environment"),
                ));
            }
        }
    }
    let key_env = spec
        .llm
        .api_key_env
        .clone()
        .unwrap_or_else(|| crate::config::ENV_LLM_API_KEY.to_string());
    let foreign_endpoint = spec
        .llm
        .base_url
        .as_deref()
        .is_some_and(|u| u.trim_end_matches('/') != s.llm_base_url.trim_end_matches('/'));
    let api_key = if enforce_policy && foreign_endpoint && spec.llm.api_key_env.is_none() {
        None
    } else {
        crate::config::env(&key_env)
    };
    let uses_mock = s.mock_llm && spec.llm.base_url.is_none();
    if api_key.is_none() && !uses_mock && spec.llm.api_key_env.is_some() {
        return Err(err(
            "secret_missing",
            Phase::Validate,
            false,
            format!("API key variable {key_env} is not set"),
        ));
    }
    Ok((env, api_key))
}

pub(super) fn llm_settings(
    spec: &JobSpec,
    s: &RunSettings,
    api_key: Option<String>,
) -> Result<LlmSettings, ErrorInfo> {
    let model = spec
        .llm
        .model
        .clone()
        .or_else(|| s.llm_model.clone())
        .ok_or_else(|| {
            err(
                "llm_model_missing",
                Phase::Validate,
                false,
                "no llm.model in the job and LLM_MODEL is not set",
            )
        })?;
    let base = spec
        .llm
        .base_url
        .clone()
        .unwrap_or_else(|| s.llm_base_url.clone());
    // A job's own price wins; the built-in table prices the common models so a
    // budget trips without configuration.
    let price = spec
        .llm
        .price
        .or_else(|| Price::builtin(&model))
        .unwrap_or_default();
    let mut l = LlmSettings::new(model, base);
    l.api_key = api_key;
    l.temperature = spec.llm.temperature;
    if spec.llm.max_output_tokens.is_some() {
        l.max_output_tokens = spec.llm.max_output_tokens;
    }
    l.reasoning_effort = spec.llm.reasoning_effort.clone();
    l.native_tools = spec.llm.native_tools.unwrap_or(true);
    l.condenser_model = spec.llm.condenser_model.clone();
    // One key per job: its requests share a cache route; never a secret.
    l.prompt_cache_key = Some(format!("fleet-{}", spec.id));
    l.price = price;
    l.min_backoff = s.llm_min_backoff;
    l.max_backoff = s.llm_min_backoff * 8;
    Ok(l)
}

/// Runs one attempt. Store errors while uploading are returned as `Retry`.
pub async fn run_attempt(
    svc: &Services,
    spec: &JobSpec,
    attempt: u32,
    ctl: &JobControl,
    events: &EventLog,
    fence: &Fence,
    ahead: Option<Prepared>,
) -> AttemptEnd {
    let t0 = Instant::now();
    let started_at = Utc::now();
    let mut phases = Phases::default();
    let keys = JobKeys(&spec.id);
    let mut result = JobResult {
        job_id: spec.id.clone(),
        outcome: Outcome::Failed,
        attempt,
        final_message: None,
        steps: 0,
        cost_usd: 0.0,
        tokens: Tokens::default(),
        duration_secs: 0.0,
        stuck_pattern: None,
        error: None,
        started_at,
        finished_at: started_at,
        worker: Some(svc.settings.worker_id.clone()),
        patch_complete: true,
    };
    let mut retry = false;
    // The masked patch in a scratch file (none: an empty patch).
    let mut patch: Option<tempfile::TempPath> = None;
    let mut tools = BTreeMap::new();
    let mut llm_stats = LlmStats::default();
    let mut artifacts = 0usize;
    let mut api_calls = None;
    let mut prepared_ahead = false;

    let prepared =
        resolve_secrets(spec, &svc.settings, svc.enforce_policy).and_then(|(env, key)| {
            llm_settings(spec, &svc.settings, key.clone()).map(|l| (env, key, l))
        });
    // Every value this job resolves, plus the signing secrets its webhooks use.
    let masker = {
        let mut values: Vec<String> = spec
            .webhook
            .as_ref()
            .and_then(|w| w.secret_env.as_deref())
            .into_iter()
            .chain([svc.notifier.settings().secret_env.as_str()])
            .filter_map(crate::config::env)
            .collect();
        if let Ok((secret_env, api_key, _)) = &prepared {
            values.extend(secret_env.values().cloned().chain(api_key.clone()));
        }
        Masker::new(values)
    };
    // The worker's own log goes through it while the job runs.
    let _active_mask = masker.activate();
    match prepared {
        Err(e) => result.error = Some(e),
        Ok((secret_env, _api_key, llm_cfg)) => {
            let ws_spec = workspace_spec(svc, spec, attempt, secret_env);
            let ready = match ahead {
                Some(p) if p.attempt == attempt => Some(p),
                Some(p) => {
                    // Started for another attempt: its labels would say so.
                    if let Err(e) = p.ws.destroy().await {
                        warn!(error = %e, "workspace teardown failed");
                    }
                    None
                }
                None => None,
            };
            prepared_ahead = ready.is_some();
            let t = Instant::now();
            let started = match ready {
                Some(p) => {
                    phases.workspace_start = p.secs;
                    Some(Ok(p.ws))
                }
                None => {
                    let r = tokio::select! {
                        r = svc.backend.start(&ws_spec) => Some(r),
                        _ = ctl.abort.cancelled() => None,
                    };
                    phases.workspace_start = t.elapsed().as_secs_f64();
                    r
                }
            };
            metrics().workspace_start.observe(phases.workspace_start);
            match started {
                None => return AttemptEnd::Aborted,
                Some(Ok(ws)) if fence.is_lost() => {
                    if let Err(e) = ws.destroy().await {
                        warn!(error = %e, "workspace teardown failed");
                    }
                    return AttemptEnd::Lost;
                }
                Some(Err(e)) => {
                    retry = e.retryable();
                    result.error = Some(ws_err(&e, Phase::Workspace));
                }
                Some(Ok(ws)) => {
                    let meter = ws.calls();
                    let llm = LlmClient::new(svc.http.clone(), llm_cfg);
                    let body = AssertUnwindSafe(in_workspace(
                        svc,
                        spec,
                        &ws,
                        &llm,
                        &masker,
                        events,
                        ctl,
                        fence,
                        &mut phases,
                    ))
                    .catch_unwind()
                    .await;
                    let t = Instant::now();
                    if let Some(m) = &meter {
                        m.enter(CallPhase::Teardown);
                    }
                    if let Err(e) = ws.destroy().await {
                        warn!(error = %e, "workspace teardown failed");
                    }
                    phases.teardown = t.elapsed().as_secs_f64();
                    api_calls = meter.map(|m| m.counts());
                    llm_stats = llm.stats();
                    match body {
                        Err(panic) => {
                            let msg = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "panic".into());
                            result.error = Some(err("internal_panic", Phase::Agent, false, msg));
                        }
                        Ok(InWorkspace::Aborted) => return AttemptEnd::Aborted,
                        Ok(InWorkspace::Lost) => return AttemptEnd::Lost,
                        Ok(InWorkspace::Done {
                            stop,
                            patch: p,
                            patch_complete,
                            artifacts: n,
                            error,
                        }) => {
                            patch = p;
                            result.patch_complete = patch_complete;
                            artifacts = n;
                            if let Some(e) = error {
                                retry = e.retryable;
                                result.error = Some(e);
                            }
                            apply_stop(&mut result, &mut tools, &mut retry, stop, spec);
                        }
                    }
                }
            }
        }
    }
    mask_result(&mut result, &masker);
    if let Some(e) = &result.error {
        if result.outcome == Outcome::Failed || result.outcome == Outcome::Succeeded {
            result.outcome = Outcome::Failed;
        }
        if !events.is_empty() || e.phase != Phase::Validate {
            events.append(
                Source::Environment,
                EventKind::ConversationErrorEvent {
                    code: e.kind.clone(),
                    detail: e.message.clone(),
                },
            );
        }
    }

    if fence.is_lost() {
        return AttemptEnd::Lost;
    }
    // Upload events, patch, metrics. A store failure here is an infrastructure fault.
    let t = Instant::now();
    let events_path = events_path(svc, &spec.id, attempt);
    let patch_bytes = match &patch {
        Some(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
        None => 0,
    };
    let upload = async {
        if events_path.exists() {
            fence.put_file(&keys.events(), &events_path).await?;
        } else {
            fence.put(&keys.events(), Bytes::new()).await?;
        }
        match &patch {
            // Streamed from its scratch file, like the event log.
            Some(p) => {
                fence.put_file(&keys.patch(), p).await?;
            }
            None => fence.put(&keys.patch(), Bytes::new()).await?,
        }
        Ok::<(), StoreError>(())
    };
    let upload_err = upload.await.err();
    phases.store = t.elapsed().as_secs_f64();
    result.finished_at = Utc::now();
    result.duration_secs = t0.elapsed().as_secs_f64();
    let m = MetricsFile {
        job_id: &spec.id,
        attempt,
        outcome: result.outcome,
        steps: result.steps,
        tokens: result.tokens,
        cost_usd: result.cost_usd,
        llm: llm_stats,
        phases_secs: &phases,
        docker_api_calls: api_calls,
        workspace_prepared: prepared_ahead,
        tools: &tools,
        events: events.len(),
        events_bytes: events.bytes_written(),
        patch_bytes,
        artifacts,
        duration_secs: result.duration_secs,
    };
    let metrics_err = match upload_err {
        Some(_) => None,
        None => fence.put_json(&keys.metrics(), &m).await.err(),
    };
    if let Some(e) = upload_err.or(metrics_err) {
        if matches!(e, StoreError::Lost { .. }) {
            return AttemptEnd::Lost;
        }
        warn!(error = %e, "uploading results failed");
        result.outcome = Outcome::Failed;
        result.error = Some(err(e.kind(), Phase::Store, e.retryable(), e.to_string()));
        return if e.retryable() {
            AttemptEnd::Retry(result)
        } else {
            AttemptEnd::Final(result)
        };
    }
    info!(outcome = %result.outcome, steps = result.steps, secs = result.duration_secs, "attempt finished");
    if retry {
        AttemptEnd::Retry(result)
    } else {
        AttemptEnd::Final(result)
    }
}

/// The texts of a result that can quote a value: error messages from every phase
/// (a `git clone` error quotes its output), the final message.
fn mask_result(result: &mut JobResult, masker: &Masker) {
    if masker.is_empty() {
        return;
    }
    if let Some(e) = &mut result.error {
        e.message = masker.mask(&e.message);
    }
    if let Some(m) = &mut result.final_message {
        *m = masker.mask(m);
    }
}

fn apply_stop(
    result: &mut JobResult,
    tools: &mut BTreeMap<String, ToolCount>,
    retry: &mut bool,
    stop: Option<Stop>,
    spec: &JobSpec,
) {
    let Some(stop) = stop else { return };
    match stop {
        Stop::Report(r) => {
            result.steps = r.steps;
            result.cost_usd = r.cost_usd;
            result.tokens = r.tokens;
            result.final_message = r.final_message;
            *tools = r.tool_calls;
            match r.end {
                AgentEnd::Finished if result.error.is_none() => result.outcome = Outcome::Succeeded,
                AgentEnd::Finished => result.outcome = Outcome::Failed,
                AgentEnd::Stuck { pattern } => {
                    result.outcome = Outcome::Stuck;
                    result.stuck_pattern = Some(pattern);
                }
                AgentEnd::MaxIterations => result.outcome = Outcome::MaxIterations,
                AgentEnd::BudgetExceeded => result.outcome = Outcome::BudgetExceeded,
                AgentEnd::Failed(e) => {
                    *retry = e.retryable;
                    result.outcome = Outcome::Failed;
                    result.error = Some(e);
                }
            }
        }
        Stop::TimedOut => {
            result.outcome = Outcome::TimedOut;
            result.error = Some(err(
                "timed_out",
                Phase::Agent,
                false,
                format!(
                    "the job ran past limits.timeout_secs = {}",
                    spec.limits.timeout_secs
                ),
            ));
        }
        Stop::Cancelled => {
            result.outcome = Outcome::Cancelled;
        }
        Stop::Aborted | Stop::Lost => {}
    }
}

enum InWorkspace {
    Done {
        stop: Option<Stop>,
        patch: Option<tempfile::TempPath>,
        patch_complete: bool,
        artifacts: usize,
        error: Option<ErrorInfo>,
    },
    Aborted,
    Lost,
}

impl InWorkspace {
    fn early(stop: Option<Stop>, error: Option<ErrorInfo>) -> InWorkspace {
        InWorkspace::Done {
            stop,
            patch: None,
            patch_complete: true,
            artifacts: 0,
            error,
        }
    }
}

/// Everything that needs the live workspace. Never destroys it (the caller does).
#[allow(clippy::too_many_arguments)]
async fn in_workspace(
    svc: &Services,
    spec: &JobSpec,
    ws: &Workspace,
    llm: &LlmClient,
    masker: &Masker,
    events: &EventLog,
    ctl: &JobControl,
    fence: &Fence,
    phases: &mut Phases,
) -> InWorkspace {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(spec.limits.timeout_secs);
    let workdir = ws.workdir().to_string();

    let enter = |phase: CallPhase| {
        if let Some(m) = ws.calls() {
            m.enter(phase);
        }
    };
    // Input, then the base snapshot the patch is computed against.
    let t = Instant::now();
    enter(CallPhase::Input);
    let placed = tokio::select! {
        r = super::place::place_input(svc, spec, ws) => Some(r),
        _ = tokio::time::sleep_until(deadline) => None,
        _ = ctl.abort.cancelled() => return InWorkspace::Aborted,
        _ = fence.lost().cancelled() => return InWorkspace::Lost,
    };
    let base = match placed {
        None => return InWorkspace::early(Some(Stop::TimedOut), None),
        Some(Err(e)) => return InWorkspace::early(None, Some(e)),
        // The input's own archive, unpacked into a workdir known to start empty.
        Some(Ok(Some(base))) => base,
        // Nothing placed in a workdir known to start empty: an empty base, no
        // round trip to read it.
        Some(Ok(None)) if spec.input.is_none() && ws.workdir_known_empty() => {
            match Base::spill(Snapshot::default(), &snapshot_path(svc, spec, "base")) {
                Ok(b) => b,
                Err(e) => {
                    let e = err("scratch_io", Phase::Input, true, e.to_string());
                    return InWorkspace::early(None, Some(e));
                }
            }
        }
        // On disk as it is read: a job holds none of its files while it runs.
        Some(Ok(None)) => match ws
            .snapshot_to(
                &workdir,
                MAX_DIFF_FILE_BYTES as u64,
                svc.settings.snapshot_max_bytes,
                &snapshot_path(svc, spec, "base"),
            )
            .await
        {
            Ok(s) => {
                if spec.input.is_none() && s.files.is_empty() && !s.truncated {
                    ws.note_workdir_empty();
                }
                Base::from(s)
            }
            Err(e) => return InWorkspace::early(None, Some(ws_err(&e, Phase::Input))),
        },
    };
    // With `limits.user` the workdir and the input are already the user's: the
    // workspace gives every file it places to that user (see workspace/docker.rs).
    phases.input = t.elapsed().as_secs_f64();

    let t = Instant::now();
    enter(CallPhase::Agent);
    let listed = base.listing();
    let run = fence.gate(agent::run(agent::AgentRun {
        job: spec,
        workspace: ws,
        llm,
        masker,
        events,
        listed,
    }));
    let stop = tokio::select! {
        r = run => Stop::Report(r),
        _ = tokio::time::sleep_until(deadline) => Stop::TimedOut,
        _ = ctl.cancel.cancelled() => Stop::Cancelled,
        _ = ctl.abort.cancelled() => Stop::Aborted,
        _ = fence.lost().cancelled() => Stop::Lost,
    };
    phases.agent = t.elapsed().as_secs_f64();
    match &stop {
        Stop::TimedOut => {
            events.append(
                Source::Environment,
                EventKind::ConversationErrorEvent {
                    code: "TimedOut".into(),
                    detail: format!("job exceeded its timeout of {} s", spec.limits.timeout_secs),
                },
            );
        }
        Stop::Cancelled => {
            events.append(
                Source::Environment,
                EventKind::ConversationErrorEvent {
                    code: "Cancelled".into(),
                    detail: "the job was cancelled".into(),
                },
            );
        }
        Stop::Aborted => return InWorkspace::Aborted,
        Stop::Lost => return InWorkspace::Lost,
        Stop::Report(_) => {}
    }

    // Collect: the patch against the input, then artifacts.
    let t = Instant::now();
    enter(CallPhase::Collect);
    let (patch, patch_complete, artifacts, error) = match ws
        .snapshot_to(
            &workdir,
            MAX_DIFF_FILE_BYTES as u64,
            svc.settings.snapshot_max_bytes,
            &snapshot_path(svc, spec, "after"),
        )
        .await
    {
        Err(e) => (None, true, 0, Some(ws_err(&e, Phase::Collect))),
        Ok(after) => {
            // Artifacts first, one file at a time (read back from the snapshot's
            // scratch file, or from the workspace up to MAX_FILE_BYTES); then the
            // diff reads both snapshots back from disk.
            let mut n = 0;
            let mut error = None;
            for path in match_artifacts(&spec.artifacts, after.files.keys()) {
                if fence.is_lost() {
                    break;
                }
                let body = match after.files.get(path) {
                    Some(Some(_)) => match after.read(path) {
                        Ok(body) => body,
                        Err(e) => {
                            error = Some(err("scratch_io", Phase::Collect, true, e.to_string()));
                            break;
                        }
                    },
                    Some(None) => collect_large(ws, &workdir, path).await,
                    None => None,
                };
                if let Some(body) = body {
                    let key = JobKeys(&spec.id).artifact(path);
                    let body = Bytes::from(masker.mask_bytes(&body));
                    if let Err(e) = fence.put(&key, body).await {
                        error = Some(err(e.kind(), Phase::Store, e.retryable(), e.to_string()));
                        break;
                    }
                    n += 1;
                }
            }
            let (patch, complete, diff_error) =
                match make_patch(&svc.scratch, &spec.id, base, after, masker).await {
                    Ok((p, c)) => (Some(p), c, None),
                    Err(e) => (None, false, Some(e)),
                };
            (patch, complete, n, error.or(diff_error))
        }
    };
    if fence.is_lost() {
        return InWorkspace::Lost;
    }
    phases.collect = t.elapsed().as_secs_f64();
    InWorkspace::Done {
        stop: Some(stop),
        patch,
        patch_complete,
        artifacts,
        error,
    }
}

/// A new scratch file for one of the job's snapshots.
pub(super) fn snapshot_path(svc: &Services, spec: &JobSpec, which: &str) -> PathBuf {
    svc.scratch.join(format!(
        "{}-{}.{which}",
        spec.id,
        uuid::Uuid::new_v4().simple()
    ))
}

/// Where an attempt's live event log is written before it is uploaded.
pub fn events_path(svc: &Services, job_id: &str, attempt: u32) -> PathBuf {
    svc.scratch.join(format!("{job_id}-{attempt}.events.jsonl"))
}
