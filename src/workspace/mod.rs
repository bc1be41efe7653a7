//! The job's workspace: where the agent's commands run and its files live.
//! Two backends behind one small enum: `docker` (a container per job, through
//! bollard) and `local` (a temporary directory on the host, chosen explicitly).
//!
//! The boundary is deliberately raw — run a shell script, read/write/stat a file,
//! move tar archives in and out — so the agent's tools (terminal state, the file
//! editor's rules) are written once above it and work in an image that has nothing
//! but `sh`.

pub mod calls;
pub mod docker;
pub mod local;
pub mod output;
pub mod session;
pub mod spill;

use std::collections::BTreeMap;
use std::time::Duration;

pub use output::HeadTail;

/// What a workspace is started with.
#[derive(Debug, Clone)]
pub struct WorkspaceSpec {
    pub job_id: String,
    pub attempt: u32,
    pub worker_id: String,
    pub image: String,
    /// Absolute path inside the workspace where the input lands and commands start.
    pub workdir: String,
    /// Environment of every command (job env plus resolved secrets).
    pub env: BTreeMap<String, String>,
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids: i64,
    pub network: String,
    /// The user commands run as (`limits.user`); None: the image's.
    pub user: Option<String>,
    /// Read-only root filesystem; the workdir and `/tmp` stay writable.
    pub read_only_root: bool,
    /// Disk limit in MiB (Docker only; see `docker::DiskLimit`); None: unlimited.
    pub disk_mb: Option<u64>,
}

/// The result of one command.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutput {
    /// stdout and stderr interleaved as they arrived, cut in the middle to the
    /// requested limit (head and tail kept, with a notice) — memory stays bounded
    /// however much the command prints.
    pub output: String,
    /// None when the command timed out and was killed (or the code is unknown).
    pub exit_code: Option<i64>,
    pub timed_out: bool,
    /// Bytes the command printed in all, before truncation.
    pub total_bytes: u64,
}

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    File { size: u64 },
    Dir,
}

/// Workspace failures. `retryable` decides whether the job is retried on another
/// attempt (infrastructure) or given up on.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("image {image:?} not found (build or pull it on the worker host)")]
    ImageNotFound { image: String },
    /// The registry refused the worker's credentials (or they could not be read).
    #[error("image {image:?}: {message}")]
    ImageAuth { image: String, message: String },
    /// A pull failed for a reason worth another attempt (registry unreachable,
    /// timed out, a registry error).
    #[error("{0}")]
    Registry(String),
    /// The worker's Docker settings cannot be honoured (`DOCKER_HOST`, TLS files).
    #[error("{0}")]
    Config(String),
    #[error("docker is unreachable: {0}")]
    Unavailable(String),
    #[error("docker error: {0}")]
    Docker(String),
    #[error("{path}: {message}")]
    Path { path: String, message: String },
    #[error("workspace i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("workspace operation timed out after {0:?}")]
    Deadline(Duration),
    #[error(
        "{path}: the image's files there need more than the workspace disk limit of {limit_mb} MiB (limits.disk_mb, at most FLEET_MAX_DISK_MB)"
    )]
    DiskLimit { path: String, limit_mb: u64 },
}

impl WorkspaceError {
    /// Machine-readable kind for result.json's `error.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkspaceError::ImageNotFound { .. } => "image_not_found",
            WorkspaceError::ImageAuth { .. } => "image_auth",
            WorkspaceError::Registry(_) => "registry_unavailable",
            WorkspaceError::Config(_) => "docker_config",
            WorkspaceError::Unavailable(_) => "docker_unavailable",
            WorkspaceError::Docker(_) => "docker_error",
            WorkspaceError::Path { .. } => "workspace_path",
            WorkspaceError::Io(_) => "workspace_io",
            WorkspaceError::Deadline(_) => "workspace_deadline",
            WorkspaceError::DiskLimit { .. } => "disk_limit",
        }
    }

    /// Infrastructure faults are worth another attempt; a missing image is not.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            WorkspaceError::Unavailable(_)
                | WorkspaceError::Docker(_)
                | WorkspaceError::Deadline(_)
                | WorkspaceError::Registry(_)
        )
    }
}

/// Which backend jobs get, chosen once per process.
#[derive(Clone)]
pub enum Backend {
    Docker(docker::DockerBackend),
    Local(local::LocalBackend),
}

impl Backend {
    /// Starts a workspace for one job: container created and started (or directory
    /// made), workdir present. On error nothing is left behind.
    pub async fn start(&self, spec: &WorkspaceSpec) -> Result<Workspace, WorkspaceError> {
        match self {
            Backend::Docker(b) => b.start(spec).await.map(Workspace::Docker),
            Backend::Local(b) => b.start(spec).await.map(Workspace::Local),
        }
    }

    /// Removes what dead runs of this host left behind (containers labelled with
    /// this host's worker prefix). Called once at start-up.
    pub async fn cleanup_stale(&self) -> Result<usize, WorkspaceError> {
        match self {
            Backend::Docker(b) => b.cleanup_stale().await,
            Backend::Local(_) => Ok(0),
        }
    }

    /// Whether the backend is reachable (for /readyz).
    pub async fn ping(&self) -> bool {
        match self {
            Backend::Docker(b) => b.ping().await,
            Backend::Local(_) => true,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Docker(_) => "docker",
            Backend::Local(_) => "local",
        }
    }
}

/// One job's running workspace. Must be ended with [`Workspace::destroy`] on every
/// path; `Drop` is only a last resort (it spawns a best-effort removal).
pub enum Workspace {
    Docker(docker::DockerWorkspace),
    Local(local::LocalWorkspace),
}

macro_rules! dispatch {
    ($self:ident, $w:ident => $e:expr) => {
        match $self {
            Workspace::Docker($w) => $e,
            Workspace::Local($w) => $e,
        }
    };
}

impl Workspace {
    /// The absolute path the agent works in: the job's `workdir` in a container, the
    /// job directory's real path for a local workspace. The agent's prompt and file
    /// paths use this.
    pub fn workdir(&self) -> &str {
        dispatch!(self, w => w.workdir())
    }

    /// Runs `script` with `sh -c` in `cwd`, with the workspace env. Output is kept to
    /// `max_chars` (head and tail). On `timeout` the command and its children are
    /// killed and what it printed so far is returned with `timed_out`.
    pub async fn exec(
        &self,
        script: &str,
        cwd: &str,
        timeout: Duration,
        max_chars: usize,
    ) -> Result<ExecOutput, WorkspaceError> {
        dispatch!(self, w => w.exec(script, cwd, timeout, max_chars).await)
    }

    /// Reads a whole file; `Ok(None)` when it does not exist. Works without any
    /// tool in the image (Docker: archive API).
    pub async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, WorkspaceError> {
        dispatch!(self, w => w.read_file(path).await)
    }

    /// Writes a whole file, creating parent directories.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), WorkspaceError> {
        dispatch!(self, w => w.write_file(path, data).await)
    }

    /// What is at `path`; `Ok(None)` when nothing is.
    pub async fn stat(&self, path: &str) -> Result<Option<PathKind>, WorkspaceError> {
        dispatch!(self, w => w.stat(path).await)
    }

    /// Unpacks a tar archive into `dest` (a directory, created if missing).
    pub async fn put_tar(&self, dest: &str, tar: Vec<u8>) -> Result<(), WorkspaceError> {
        dispatch!(self, w => w.put_tar(dest, tar).await)
    }

    /// Unpacks the tar file `tar` (on the worker's host) into `dest`, streaming it:
    /// the worker holds a chunk at a time, however large the archive.
    pub async fn put_tar_file(
        &self,
        dest: &str,
        tar: &std::path::Path,
    ) -> Result<(), WorkspaceError> {
        dispatch!(self, w => w.put_tar_file(dest, tar).await)
    }

    /// The files below `dir` as a map of relative path → content, skipping files over
    /// `max_file_bytes`, stopping at `max_total_bytes` in all. Used for the patch,
    /// artifacts and the editor's directory view.
    pub async fn snapshot(
        &self,
        dir: &str,
        max_file_bytes: u64,
        max_total_bytes: u64,
    ) -> Result<Snapshot, WorkspaceError> {
        dispatch!(self, w => w.snapshot(dir, max_file_bytes, max_total_bytes).await)
    }

    /// [`Workspace::snapshot`] with every content written to the new file `path`
    /// as soon as it is read: the worker holds one file at a time, not the
    /// snapshot (see [`spill`]).
    pub async fn snapshot_to(
        &self,
        dir: &str,
        max_file_bytes: u64,
        max_total_bytes: u64,
        path: &std::path::Path,
    ) -> Result<spill::Spilled, WorkspaceError> {
        if let Workspace::Docker(w) = self
            && let Some(mut shell) = w.take_parked_shell()
        {
            match docker::shelltar::snapshot(
                self,
                &mut shell,
                dir,
                max_file_bytes,
                max_total_bytes,
                path,
            )
            .await
            {
                Ok(b) => return Ok(b.into_spilled()?),
                Err(why) => tracing::debug!(
                    %why,
                    "the archive did not come through the shell; reading it through the engine"
                ),
            }
        }
        dispatch!(self, w => w.snapshot_to(dir, max_file_bytes, max_total_bytes, path).await)
    }

    /// Hands the conversation's shell back when the agent is done with it: an
    /// idle container shell is kept for the collect (no round trip to the
    /// engine for it); anything else is dropped.
    pub fn park_shell(&self, shell: session::Shell) {
        if let Workspace::Docker(w) = self
            && shell.idle()
        {
            w.park_shell(shell);
        }
    }

    /// Whether the workdir is known to be empty when nothing was placed in it
    /// (a local workspace always starts empty; an image may ship files there).
    pub fn workdir_known_empty(&self) -> bool {
        match self {
            Workspace::Docker(w) => w.workdir_known_empty(),
            Workspace::Local(_) => true,
        }
    }

    /// Records that the workdir was empty before anything was placed in it.
    pub fn note_workdir_empty(&self) {
        if let Workspace::Docker(w) = self {
            w.note_workdir_empty();
        }
    }

    /// The meter of the workspace's round trips to its engine (Docker); None for
    /// a local workspace, which has no engine.
    pub fn calls(&self) -> Option<calls::CallMeter> {
        match self {
            Workspace::Docker(w) => Some(w.meter().clone()),
            Workspace::Local(_) => None,
        }
    }

    /// Stops and removes the workspace (container force-removed, directory deleted).
    pub async fn destroy(self) -> Result<(), WorkspaceError> {
        dispatch!(self, w => w.destroy().await)
    }
}

/// Files below a directory: relative path → content (None for a directory or a file
/// that was skipped for size, so it still shows in listings).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub files: BTreeMap<String, Option<Vec<u8>>>,
    pub dirs: Vec<String>,
    /// True when `max_total_bytes` cut the snapshot short.
    pub truncated: bool,
    /// Git modes of the files that are not plain `100644` files: `0o100755` for an
    /// executable, `0o120000` for a symlink (whose content is its target).
    pub modes: BTreeMap<String, u32>,
    /// Size and modification time (seconds) of each file listed without its
    /// content (over the file limit), so a change to it can still be noticed.
    pub stats: BTreeMap<String, (u64, u64)>,
}

/// The git mode of an executable file.
pub const MODE_EXEC: u32 = 0o100755;
/// The git mode of a symlink.
pub const MODE_LINK: u32 = 0o120000;
