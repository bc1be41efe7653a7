//! Docker workspaces through bollard: one container per job.
//!
//! This file owns the container's life: connecting (with API version negotiation,
//! the engines we meet speak older APIs than bollard's default), creating and starting
//! the container with its limits and labels, removing it, and removing what dead runs
//! left behind. Commands live in `docker/exec.rs`, files in `docker/archive.rs`
//! (API calls) and `docker/tarball.rs` (the archives themselves), what a container
//! may touch in `docker/hardening.rs`, the copy of an image's files into a tmpfs
//! workdir in `docker/seed.rs`, and the uid and gid a job's `limits.user` stands
//! for in `docker/owner.rs` (its files are given to it through tar headers,
//! `docker/meter.rs`); which engine to talk to in `docker/connect.rs`, image pulls
//! in `docker/pull.rs` (credentials in `docker/auth.rs`).
//!
//! Every Docker call runs under a deadline: a wedged engine turns into a retryable
//! [`WorkspaceError::Deadline`], never a stuck worker slot.

mod archive;
mod auth;
pub mod connect;
mod exec;
mod hardening;
mod meter;
mod owner;
mod paths;
pub mod pull;
mod seed;
pub(crate) mod session;
pub(crate) mod shelltar;
mod tarball;

pub use pull::{PullPolicy, PullSettings};

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};

pub use hardening::DiskLimit;

use super::calls::CallMeter;
use super::spill::{Builder, Spilled};
use super::{ExecOutput, PathKind, Snapshot, WorkspaceError, WorkspaceSpec};

/// Deadline of ordinary API calls (create, start, inspect, remove, list).
const API_DEADLINE: Duration = Duration::from_secs(60);
/// Deadline of `ping`, which feeds /readyz and must answer fast.
const PING_DEADLINE: Duration = Duration::from_secs(5);

/// Capabilities a container keeps (all others are dropped): what package managers
/// and ordinary builds need (file ownership, setuid to an unprivileged build user,
/// signalling their own processes, binding low ports in tests).
const KEEP_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
];

/// Labels every fleet container carries; `cleanup_stale` selects on them.
const LABEL_FLEET: &str = "agent-fleet";
const LABEL_HOST: &str = "fleet.host";
const LABEL_PID: &str = "fleet.pid";
/// Start time (clock ticks after boot) of the process in `fleet.pid`: tells a live
/// worker from an unrelated process that got the same pid later.
const LABEL_PID_START: &str = "fleet.pid_start";

#[derive(Clone)]
pub struct DockerBackend {
    docker: bollard::Docker,
    puller: pull::Puller,
    /// Prefix of this host's worker ids; containers labelled with it and not owned
    /// by a live run are stale.
    host_prefix: String,
    /// How this engine's storage driver bounds a workspace's disk.
    disk: DiskLimit,
    /// Images with nothing at a workdir, so no seed is needed (`docker/seed.rs`).
    empty_seeds: seed::EmptySeeds,
}

impl DockerBackend {
    /// Connects to the Docker engine the environment names (`DOCKER_HOST` and its
    /// TLS settings, as the docker CLI reads them), negotiating the API version;
    /// images are pulled as the default [`PullSettings`] say.
    pub async fn connect(host_prefix: &str) -> Result<DockerBackend, WorkspaceError> {
        DockerBackend::connect_with(host_prefix, PullSettings::default()).await
    }

    /// [`DockerBackend::connect`] with a pull policy of its own.
    pub async fn connect_with(
        host_prefix: &str,
        pull: PullSettings,
    ) -> Result<DockerBackend, WorkspaceError> {
        let endpoint = connect::endpoint_from_env()?;
        let docker = connect::client(&endpoint)?;
        // No fall-back: an engine that does not answer where configured is an error
        // that names where that was.
        let negotiated = match within(API_DEADLINE, docker.negotiate_version()).await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let docker = negotiated.map_err(|why| {
            WorkspaceError::Unavailable(format!(
                "no Docker engine at {endpoint} (DOCKER_HOST): {why}"
            ))
        })?;
        tracing::debug!(%endpoint, api_version = %docker.client_version(), "connected to docker");
        let info = within(API_DEADLINE, docker.info())
            .await?
            .map_err(from_bollard)?;
        let disk = DiskLimit::for_driver(
            info.driver.as_deref().unwrap_or_default(),
            info.driver_status.as_deref().unwrap_or_default(),
        );
        tracing::debug!(driver = ?info.driver, disk_limit = disk.name(), "workspace disk limit");
        Ok(DockerBackend {
            puller: pull::Puller::new(docker.clone(), pull),
            docker,
            host_prefix: host_prefix.to_string(),
            disk,
            empty_seeds: seed::EmptySeeds::default(),
        })
    }

    pub async fn start(&self, spec: &WorkspaceSpec) -> Result<DockerWorkspace, WorkspaceError> {
        let meter = CallMeter::default();
        // First, so a missing image is its own, non-retryable error rather than a
        // 404 from create that could also mean a missing network.
        let image_id = self.puller.ensure(&spec.image, &meter).await?;

        let name = container_name(&spec.job_id, spec.attempt, rand::random::<u32>());
        let marker = format!("{:016x}", rand::random::<u64>());
        let mut body = create_body(
            spec,
            &self.host_prefix,
            std::process::id(),
            own_start_time(),
            &marker,
        );
        let empty_key = (image_id.clone(), spec.workdir.clone());
        let seed = hardening::harden(&mut body, spec, self.disk).map(|limit_mb| seed::Seed {
            image_id,
            body: seed::seed_body(body.clone()),
            limit_mb,
            empty: self.empty_seeds.clone(),
        });
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        meter.tick();
        let created = within(
            API_DEADLINE,
            self.docker.create_container(Some(options), body),
        )
        .await
        .and_then(|r| r.map_err(|e| creation_error(e, &spec.workdir)));
        if let Err(e) = created {
            if matches!(&e, WorkspaceError::Docker(m) if m.contains("No such image")) {
                self.puller.forget(&spec.image);
            }
            // A create that timed out may still have happened on the engine's side.
            meter.tick();
            if let Err(rm) = remove_container(&self.docker, &name).await {
                tracing::warn!(container = %name, error = %rm, "could not remove a half-created container");
            }
            return Err(e);
        }
        tracing::debug!(container = %name, image = %spec.image, "workspace container created");

        let mut ws = DockerWorkspace {
            docker: self.docker.clone(),
            meter,
            main_shell: std::sync::Mutex::new(None),
            parked: std::sync::Mutex::new(None),
            empty_key,
            empty_seeds: self.empty_seeds.clone(),
            name,
            workdir: spec.workdir.clone(),
            user: spec.user.clone(),
            owner: None,
            // Mounted as the user's (`hardening.rs`) or given to them at boot.
            workdir_owned: seed.is_some()
                && spec.user.as_deref().and_then(owner::numeric).is_some(),
            read_only_root: spec.read_only_root,
            removed: false,
        };
        // From here on `ws` owns the container: on error it is removed explicitly
        // (and by Drop, should that removal fail too).
        match ws.boot(seed, marker).await {
            Ok(()) => Ok(ws),
            Err(e) => {
                if let Err(rm) = ws.destroy().await {
                    tracing::warn!(error = %rm, "could not remove a workspace container that failed to start");
                }
                Err(e)
            }
        }
    }

    /// Removes this host's fleet containers whose owning process is gone. Owners are
    /// pids in this process's pid namespace: workers that share a Docker engine but
    /// not a pid namespace (one worker container each) need distinct host prefixes.
    pub async fn cleanup_stale(&self) -> Result<usize, WorkspaceError> {
        let filters: HashMap<&str, Vec<String>> = HashMap::from([(
            "label",
            vec![
                format!("{LABEL_FLEET}=1"),
                format!("{LABEL_HOST}={}", self.host_prefix),
            ],
        )]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = within(API_DEADLINE, self.docker.list_containers(Some(options)))
            .await?
            .map_err(from_bollard)?;
        let mut removed = 0;
        for c in containers {
            let Some(id) = c.id else { continue };
            let labels = c.labels.unwrap_or_default();
            if owner_alive(labels.get(LABEL_PID), labels.get(LABEL_PID_START)) {
                continue;
            }
            match remove_container(&self.docker, &id).await {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(container = %id, job_id = ?labels.get("fleet.job_id"), "removed stale workspace container");
                }
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "could not remove stale workspace container")
                }
            }
        }
        Ok(removed)
    }

    pub async fn ping(&self) -> bool {
        matches!(
            tokio::time::timeout(PING_DEADLINE, self.docker.ping()).await,
            Ok(Ok(_))
        )
    }
}

/// One job's container. End it with [`DockerWorkspace::destroy`]; `Drop` only
/// schedules a best-effort removal.
pub struct DockerWorkspace {
    /// Reached through [`DockerWorkspace::api`], which counts every call.
    docker: bollard::Docker,
    meter: CallMeter,
    /// The main process's streams until the first shell session takes them.
    main_shell: std::sync::Mutex<Option<session::Attached>>,
    /// The conversation's shell, idle, handed back when the agent ended: the
    /// collect reads the workspace's archive through it (`shelltar.rs`).
    parked: std::sync::Mutex<Option<crate::workspace::session::Shell>>,
    /// (image id, workdir): the key of [`DockerBackend::empty_seeds`].
    empty_key: (String, String),
    empty_seeds: seed::EmptySeeds,
    /// Container name (unique per start), used for every call.
    name: String,
    workdir: String,
    /// The job's own user (`limits.user`), when it names one.
    user: Option<String>,
    /// Its uid and gid, resolved at boot: every file the worker places is theirs.
    owner: Option<owner::Owner>,
    /// Whether the workdir is a tmpfs mounted as the job user's.
    workdir_owned: bool,
    read_only_root: bool,
    /// Set once the container is known to be gone, so Drop has nothing to do.
    removed: bool,
}

impl DockerWorkspace {
    pub fn workdir(&self) -> &str {
        &self.workdir
    }

    /// The engine, for one API call: counted against the job's current phase.
    fn api(&self) -> &bollard::Docker {
        self.meter.tick();
        &self.docker
    }

    /// Whether the image is known to hold nothing at the workdir, so a workdir
    /// nothing was placed in is empty without looking.
    pub fn workdir_known_empty(&self) -> bool {
        self.empty_seeds.contains(&self.empty_key)
    }

    /// Records that the image holds nothing at the workdir (a snapshot of it,
    /// taken before anything was placed there, was empty).
    pub fn note_workdir_empty(&self) {
        self.empty_seeds.insert(self.empty_key.clone());
    }

    /// Keeps the conversation's idle shell for the collect.
    pub(crate) fn park_shell(&self, shell: crate::workspace::session::Shell) {
        if let Ok(mut p) = self.parked.lock() {
            *p = Some(shell);
        }
    }

    /// The shell [`DockerWorkspace::park_shell`] kept, if any.
    pub(crate) fn take_parked_shell(&self) -> Option<crate::workspace::session::Shell> {
        self.parked.lock().ok().and_then(|mut p| p.take())
    }

    /// The meter of this workspace's API calls.
    pub fn meter(&self) -> &CallMeter {
        &self.meter
    }

    /// The container's name (`fleet-<job_id>-<attempt>-<random>`), for logs.
    pub fn container_name(&self) -> &str {
        &self.name
    }

    pub async fn exec(
        &self,
        script: &str,
        cwd: &str,
        timeout: Duration,
        max_chars: usize,
    ) -> Result<ExecOutput, WorkspaceError> {
        exec::run(self, script, cwd, timeout, max_chars).await
    }

    pub async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, WorkspaceError> {
        archive::read_file(self, path).await
    }

    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), WorkspaceError> {
        archive::write_file(self, path, data).await
    }

    pub async fn stat(&self, path: &str) -> Result<Option<PathKind>, WorkspaceError> {
        archive::stat(self, path).await
    }

    pub async fn put_tar(&self, dest: &str, tar: Vec<u8>) -> Result<(), WorkspaceError> {
        archive::put_tar(self, dest, tar).await
    }

    pub async fn put_tar_file(
        &self,
        dest: &str,
        tar: &std::path::Path,
    ) -> Result<(), WorkspaceError> {
        archive::put_tar_file(self, dest, tar).await
    }

    pub async fn snapshot(
        &self,
        dir: &str,
        max_file_bytes: u64,
        max_total_bytes: u64,
    ) -> Result<Snapshot, WorkspaceError> {
        archive::snapshot(self, dir, max_file_bytes, max_total_bytes, None)
            .await
            .map(Builder::into_snapshot)
    }

    pub async fn snapshot_to(
        &self,
        dir: &str,
        max_file_bytes: u64,
        max_total_bytes: u64,
        path: &std::path::Path,
    ) -> Result<Spilled, WorkspaceError> {
        let b = archive::snapshot(self, dir, max_file_bytes, max_total_bytes, Some(path)).await?;
        Ok(b.into_spilled()?)
    }

    /// Force-removes the container (killing whatever runs in it). Removing a
    /// container that is already gone is not an error.
    pub async fn destroy(mut self) -> Result<(), WorkspaceError> {
        remove_container(self.api(), &self.name).await?;
        self.removed = true;
        tracing::debug!(container = %self.name, "workspace container removed");
        Ok(())
    }

    /// Starts the created container, copies the image's files into a tmpfs
    /// workdir (`seed`), and makes sure the workdir exists. With `limits.user`,
    /// the workdir and everything placed in it belong to that user: set through
    /// the archive API's tar headers, since a root exec in a container with a
    /// non-root user has no capabilities (it could not `chown`).
    async fn boot(
        &mut self,
        seed: Option<seed::Seed>,
        marker: String,
    ) -> Result<(), WorkspaceError> {
        // Attached before the start, so none of the main shell's output is lost.
        let (output, input) = session::attach(self).await?;
        *self.main_shell.get_mut().expect("main shell lock") = Some(session::Attached {
            marker,
            output,
            input,
        });
        within(API_DEADLINE, self.api().start_container(&self.name, None))
            .await?
            .map_err(from_bollard)?;
        if let Some(user) = self.user.clone() {
            self.owner = Some(owner::resolve(self, &user).await?);
        }
        // After the start, not before: the tmpfs holds files only while mounted.
        if let Some(seed) = seed {
            seed::seed_workdir(self, seed).await?;
        }
        // Docker makes the WorkingDir itself, and refuses to create a container
        // whose workdir is a file in the image (`creation_error`).
        if self.owner.is_some() && !self.workdir_owned {
            if self.read_only_root {
                return Err(WorkspaceError::Path {
                    path: self.workdir.clone(),
                    message: "a read-only root's workdir can only be given to limits.user \
                              when it names a numeric uid:gid"
                        .into(),
                });
            }
            archive::own_dir(self, &self.workdir).await?;
        }
        Ok(())
    }
}

impl Drop for DockerWorkspace {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Last resort only: the owner should have called destroy on every path.
        tracing::warn!(container = %self.name, "workspace dropped without destroy; removing it in the background");
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            let name = std::mem::take(&mut self.name);
            rt.spawn(async move {
                if let Err(e) = remove_container(&docker, &name).await {
                    tracing::warn!(container = %name, error = %e, "background removal failed");
                }
            });
        }
    }
}

async fn remove_container(docker: &bollard::Docker, name: &str) -> Result<(), WorkspaceError> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match within(API_DEADLINE, docker.remove_container(name, Some(options))).await? {
        Ok(()) => Ok(()),
        // Already gone, or another removal (Drop, cleanup) is on it.
        Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(()),
        Err(e) => Err(from_bollard(e)),
    }
}

/// `fleet-<job_id>-<attempt>-<random>`: unique per start, readable in `docker ps`.
fn container_name(job_id: &str, attempt: u32, nonce: u32) -> String {
    format!("fleet-{job_id}-{attempt}-{nonce:08x}")
}

/// The container configuration: limits, hardening, labels, env, and the main
/// process — the first shell session on stdin, then a keep-alive
/// (`session::MAIN`; `marker` marks the shell's processes).
fn create_body(
    spec: &WorkspaceSpec,
    host_prefix: &str,
    pid: u32,
    pid_start: Option<u64>,
    marker: &str,
) -> ContainerCreateBody {
    let mut labels = HashMap::from([
        (LABEL_FLEET.to_string(), "1".to_string()),
        ("fleet.job_id".to_string(), spec.job_id.clone()),
        ("fleet.attempt".to_string(), spec.attempt.to_string()),
        ("fleet.worker_id".to_string(), spec.worker_id.clone()),
        (LABEL_HOST.to_string(), host_prefix.to_string()),
        (LABEL_PID.to_string(), pid.to_string()),
    ]);
    if let Some(start) = pid_start {
        labels.insert(LABEL_PID_START.to_string(), start.to_string());
    }
    let memory = (spec.memory_mb > 0).then(|| (spec.memory_mb as i64).saturating_mul(1024 * 1024));
    let network = if spec.network.is_empty() {
        "none".to_string()
    } else {
        spec.network.clone()
    };
    let host_config = HostConfig {
        memory,
        // Swap equal to memory: the limit is a real limit, not memory plus as much swap.
        memory_swap: memory,
        nano_cpus: (spec.cpus > 0.0).then_some((spec.cpus * 1e9) as i64),
        pids_limit: (spec.pids > 0).then_some(spec.pids),
        network_mode: Some(network),
        privileged: Some(false),
        security_opt: Some(vec!["no-new-privileges:true".to_string()]),
        cap_drop: Some(vec!["ALL".to_string()]),
        cap_add: Some(KEEP_CAPS.iter().map(|c| c.to_string()).collect()),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        // Entrypoint, not Cmd: an image's own ENTRYPOINT would otherwise wrap it.
        entrypoint: Some(vec![
            "sh".into(),
            "-c".into(),
            session::MAIN.into(),
            "fleet-main".into(),
            marker.into(),
            super::session::LAUNCH.into(),
        ]),
        cmd: None,
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: Some(spec.workdir.clone()),
        labels: Some(labels),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        // Stdin stays open for the attached worker; its end (Ctrl-D, or the
        // worker letting go) is the main shell's end of input.
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Whether the process a container is labelled with still runs (and is the same
/// process, not a later one that reused the pid).
fn owner_alive(pid: Option<&String>, pid_start: Option<&String>) -> bool {
    let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    match (
        pid_start.and_then(|s| s.parse::<u64>().ok()),
        parse_start_time(&stat),
    ) {
        (Some(want), Some(have)) => want == have,
        // An older label without the start time: a live pid is given the benefit
        // of the doubt (leaking a container beats killing a running job).
        _ => true,
    }
}

fn own_start_time() -> Option<u64> {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(parse_start_time)
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its closing `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Runs a Docker call under a deadline. The outer error is the deadline; the inner
/// one is Docker's, left to the caller because some statuses (404) mean something.
async fn within<T>(
    deadline: Duration,
    call: impl Future<Output = Result<T, BollardError>>,
) -> Result<Result<T, BollardError>, WorkspaceError> {
    tokio::time::timeout(deadline, call)
        .await
        .map_err(|_| WorkspaceError::Deadline(deadline))
}

/// A create the engine refused because the job's workdir is a file in the
/// image is the job's error (final), not the engine's.
fn creation_error(e: BollardError, workdir: &str) -> WorkspaceError {
    match &e {
        BollardError::DockerResponseServerError { message, .. }
            if message.contains("not a directory") =>
        {
            WorkspaceError::Path {
                path: workdir.to_string(),
                message: format!("the workdir cannot be made: {message}"),
            }
        }
        _ => from_bollard(e),
    }
}

/// The HTTP status of an engine answer, when the error is one.
fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn from_bollard(e: BollardError) -> WorkspaceError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => WorkspaceError::Docker(format!("{message} (status {status_code})")),
        other => unavailable(other),
    }
}

/// Transport-level failures: the engine could not be reached or the connection broke.
fn unavailable(e: BollardError) -> WorkspaceError {
    match e {
        BollardError::DockerResponseServerError { .. } | BollardError::JsonDataError { .. } => {
            WorkspaceError::Docker(e.to_string())
        }
        other => WorkspaceError::Unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec() -> WorkspaceSpec {
        WorkspaceSpec {
            job_id: "job-1".into(),
            attempt: 2,
            worker_id: "host-a-1".into(),
            image: "img".into(),
            workdir: "/workspace".into(),
            env: BTreeMap::from([("A".to_string(), "b=c".to_string())]),
            memory_mb: 512,
            cpus: 1.5,
            pids: 100,
            network: String::new(),
            user: None,
            read_only_root: false,
            disk_mb: None,
        }
    }

    #[test]
    fn body_carries_limits_labels_and_hardening() {
        let body = create_body(&spec(), "host-a", 42, Some(7), "m");
        let hc = body.host_config.unwrap();
        assert_eq!(hc.memory, Some(512 * 1024 * 1024));
        assert_eq!(hc.nano_cpus, Some(1_500_000_000));
        assert_eq!(hc.pids_limit, Some(100));
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert!(hc.cap_add.unwrap().contains(&"CHOWN".to_string()));
        let labels = body.labels.unwrap();
        assert_eq!(labels["agent-fleet"], "1");
        assert_eq!(labels["fleet.attempt"], "2");
        assert_eq!(labels["fleet.host"], "host-a");
        assert_eq!(labels["fleet.pid"], "42");
        assert_eq!(labels["fleet.pid_start"], "7");
        assert_eq!(body.env, Some(vec!["A=b=c".to_string()]));
        assert_eq!(body.entrypoint.unwrap()[0], "sh");
    }

    #[test]
    fn zero_limits_mean_unlimited() {
        let mut s = spec();
        s.memory_mb = 0;
        s.cpus = 0.0;
        s.pids = 0;
        s.network = "bridge".into();
        let hc = create_body(&s, "h", 1, None, "m").host_config.unwrap();
        assert_eq!((hc.memory, hc.nano_cpus, hc.pids_limit), (None, None, None));
        assert_eq!(hc.network_mode.as_deref(), Some("bridge"));
    }

    #[test]
    fn start_time_is_read_after_the_command_name() {
        let stat =
            "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 99887 20 21";
        assert_eq!(parse_start_time(stat), Some(99887));
        assert_eq!(parse_start_time("garbage"), None);
        assert!(own_start_time().is_some());
    }

    #[test]
    fn liveness_of_owners() {
        let me = std::process::id().to_string();
        let start = own_start_time().map(|s| s.to_string());
        assert!(owner_alive(Some(&me), start.as_ref()));
        assert!(owner_alive(Some(&me), None));
        assert!(!owner_alive(Some(&me), Some(&"1".to_string())));
        assert!(!owner_alive(Some(&"not-a-pid".to_string()), None));
        assert!(!owner_alive(None, None));
        // Above the kernel's pid_max: never a live process.
        assert!(!owner_alive(Some(&"4294967".to_string()), None));
    }

    #[test]
    fn container_names_are_docker_safe() {
        assert_eq!(
            container_name("a.b_c-1", 3, 0xab),
            "fleet-a.b_c-1-3-000000ab"
        );
    }
}
