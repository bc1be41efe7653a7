//! Local workspaces: a temporary directory on the host per job (for machines
//! without Docker; chosen explicitly, never a fallback).
//!
//! **No isolation and no resource limits**: commands run as the worker's own user,
//! see the whole host filesystem and network, and are bounded only by their timeout.
//! `memory_mb`, `cpus`, `pids` and `network` of the spec are ignored, and so is its
//! `workdir`: the workdir is `<job dir>/workspace`, a real absolute host path.
//!
//! Every command runs in its own process group; a timeout kills the group, and
//! [`LocalWorkspace::destroy`] kills every group the workspace started (background
//! servers included) before deleting the directory. A process that leaves its group
//! (`setsid`) escapes that — only a container contains it.

use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::spill::{Builder, Spilled};
use super::{ExecOutput, HeadTail, PathKind, Snapshot, WorkspaceError, WorkspaceSpec};

pub(crate) mod session;

/// Same contract as the Docker backend: `cd` into `$1`, run `$2` as its own `sh`.
const WRAPPER: &str = r#"cd "$1" || exit 1; exec sh -c "$2""#;
/// How long output is still read after the command exits: a background process
/// it started may hold the pipe open, and must not hold the command's result.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
const READ_CHUNK: usize = 64 * 1024;

#[derive(Clone)]
pub struct LocalBackend {
    /// Where job directories are made (the system temp dir by default).
    root: std::path::PathBuf,
}

impl LocalBackend {
    pub fn new(root: std::path::PathBuf) -> LocalBackend {
        LocalBackend { root }
    }

    /// Makes `<root>/fleet-<job_id>-<random>/workspace`.
    pub async fn start(&self, spec: &WorkspaceSpec) -> Result<LocalWorkspace, WorkspaceError> {
        tokio::fs::create_dir_all(&self.root).await?;
        let root = self.root.clone();
        let prefix = format!("fleet-{}-", spec.job_id);
        let dir = tokio::task::spawn_blocking(move || {
            tempfile::Builder::new().prefix(&prefix).tempdir_in(&root)
        })
        .await
        .map_err(std::io::Error::other)??
        .keep();
        let made = async {
            // The real path: the agent compares paths it is given against it.
            let dir = tokio::fs::canonicalize(&dir).await?;
            let workdir = dir.join("workspace");
            tokio::fs::create_dir(&workdir).await?;
            let workdir = workdir
                .to_str()
                .ok_or_else(|| WorkspaceError::Path {
                    path: workdir.display().to_string(),
                    message: "not UTF-8".into(),
                })?
                .to_string();
            Ok::<_, WorkspaceError>((dir, workdir))
        };
        let (dir, workdir) = match made.await {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || force_remove(&dir)).await;
                return Err(e);
            }
        };
        let mut env: Vec<(String, String)> = Vec::new();
        if let Ok(path) = std::env::var("PATH") {
            env.push(("PATH".into(), path));
        }
        env.push(("HOME".into(), dir.to_string_lossy().into_owned()));
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        tracing::debug!(dir = %dir.display(), "local workspace created");
        Ok(LocalWorkspace {
            dir,
            workdir,
            env,
            groups: Mutex::new(Vec::new()),
            destroyed: false,
        })
    }
}

pub struct LocalWorkspace {
    /// The job directory (canonical); every file operation stays below it.
    dir: PathBuf,
    workdir: String,
    /// The full environment of every command (the host's PATH, HOME, the job's env).
    env: Vec<(String, String)>,
    /// Process groups started here, killed on destroy.
    groups: Mutex<Vec<i32>>,
    destroyed: bool,
}

impl LocalWorkspace {
    /// `sh -c SCRIPT ARGS…` in the job's environment and a process group of its
    /// own (registered for `destroy`), stdout and stderr on one pipe: one pipe
    /// keeps them in the order they were written.
    fn spawn_sh(
        &self,
        script: &str,
        args: &[&str],
        cwd: &Path,
        stdin: Stdio,
    ) -> Result<
        (
            tokio::process::Child,
            tokio::net::unix::pipe::Receiver,
            Option<i32>,
        ),
        WorkspaceError,
    > {
        let (writer, reader) = tokio::net::unix::pipe::pipe()?;
        let writer = writer.into_blocking_fd()?;
        let writer2 = writer.try_clone()?;
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(stdin)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(writer2))
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        // Our copies of the write end must go, or the pipe never reports EOF.
        drop(cmd);
        let pgid = child.id().map(|p| p as i32);
        if let Some(g) = pgid {
            lock(&self.groups).push(g);
        }
        Ok((child, reader, pgid))
    }

    pub fn workdir(&self) -> &str {
        &self.workdir
    }

    pub async fn exec(
        &self,
        script: &str,
        cwd: &str,
        timeout: Duration,
        max_chars: usize,
    ) -> Result<ExecOutput, WorkspaceError> {
        if !cwd.starts_with('/') {
            return Err(WorkspaceError::Path {
                path: cwd.to_string(),
                message: "must be an absolute path".into(),
            });
        }
        let (mut child, mut reader, pgid) = self.spawn_sh(
            WRAPPER,
            &["fleet-exec", cwd, script],
            &self.dir,
            Stdio::null(),
        )?;
        let mut guard = GroupGuard(pgid);

        let mut captured = HeadTail::new(max_chars);
        let mut chunk = vec![0u8; READ_CHUNK];
        let deadline = tokio::time::Instant::now() + timeout;
        let mut status = None;
        let mut drain_until = deadline;
        let mut eof = false;
        loop {
            tokio::select! {
                read = reader.read(&mut chunk), if !eof => match read? {
                    0 => eof = true,
                    n => captured.push(&chunk[..n]),
                },
                exited = child.wait(), if status.is_none() => {
                    status = Some(exited?);
                    drain_until = tokio::time::Instant::now() + DRAIN_GRACE;
                }
                _ = tokio::time::sleep_until(deadline), if status.is_none() => {
                    guard.kill();
                    // SIGKILL was sent to the group: reaping is immediate.
                    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                    let total_bytes = captured.total_bytes();
                    return Ok(ExecOutput { output: captured.finish(), exit_code: None, timed_out: true, total_bytes });
                }
                _ = tokio::time::sleep_until(drain_until), if status.is_some() => break,
            }
            if eof && status.is_some() {
                break;
            }
        }
        // Finished: what it left running in the background lives on until destroy.
        guard.disarm();
        let status = status.ok_or_else(|| std::io::Error::other("command status missing"))?;
        // A shell reports death by signal N as 128 + N; so does Docker.
        let exit_code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .map(i64::from);
        let total_bytes = captured.total_bytes();
        Ok(ExecOutput {
            output: captured.finish(),
            exit_code,
            timed_out: false,
            total_bytes,
        })
    }

    pub async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, WorkspaceError> {
        let p = self.inside(path)?;
        match tokio::fs::metadata(&p).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
            Ok(m) if m.is_dir() => return Err(path_err(path, "is a directory")),
            Ok(_) => {}
        }
        match tokio::fs::read(&p).await {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), WorkspaceError> {
        let p = self.inside(path)?;
        if tokio::fs::metadata(&p).await.is_ok_and(|m| m.is_dir()) {
            return Err(path_err(path, "is a directory"));
        }
        if let Some(parent) = p.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| path_err(path, &format!("cannot create parent: {e}")))?;
        }
        // Writing in place keeps an existing file's permission bits.
        Ok(tokio::fs::write(&p, data).await?)
    }

    pub async fn stat(&self, path: &str) -> Result<Option<PathKind>, WorkspaceError> {
        let p = self.inside(path)?;
        match tokio::fs::metadata(&p).await {
            Ok(m) if m.is_dir() => Ok(Some(PathKind::Dir)),
            Ok(m) => Ok(Some(PathKind::File { size: m.len() })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn put_tar(&self, dest: &str, tar: Vec<u8>) -> Result<(), WorkspaceError> {
        let p = self.inside(dest)?;
        tokio::fs::create_dir_all(&p)
            .await
            .map_err(|e| path_err(dest, &e.to_string()))?;
        // `unpack` refuses entries that would land outside `p`.
        tokio::task::spawn_blocking(move || tar::Archive::new(&tar[..]).unpack(&p))
            .await
            .map_err(std::io::Error::other)??;
        Ok(())
    }

    /// [`LocalWorkspace::put_tar`] of a tar file, unpacked as it is read.
    pub async fn put_tar_file(&self, dest: &str, tar: &Path) -> Result<(), WorkspaceError> {
        let p = self.inside(dest)?;
        tokio::fs::create_dir_all(&p)
            .await
            .map_err(|e| path_err(dest, &e.to_string()))?;
        let file = std::fs::File::open(tar)?;
        tokio::task::spawn_blocking(move || {
            tar::Archive::new(std::io::BufReader::new(file)).unpack(&p)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(())
    }

    /// The files below `dir` (see [`Snapshot`]); symlinks appear as files holding
    /// their target, as in the Docker backend. A missing `dir` gives an empty snapshot.
    pub async fn snapshot(
        &self,
        dir: &str,
        max_file_bytes: u64,
        max_total_bytes: u64,
    ) -> Result<Snapshot, WorkspaceError> {
        let b = self
            .walk(dir, max_file_bytes, max_total_bytes, None)
            .await?;
        Ok(b.into_snapshot())
    }

    /// [`LocalWorkspace::snapshot`] with its contents written to `path` as they
    /// are read.
    pub async fn snapshot_to(
        &self,
        dir: &str,
        max_file_bytes: u64,
        max_total_bytes: u64,
        path: &Path,
    ) -> Result<Spilled, WorkspaceError> {
        let b = self
            .walk(dir, max_file_bytes, max_total_bytes, Some(path))
            .await?;
        Ok(b.into_spilled()?)
    }

    async fn walk(
        &self,
        dir: &str,
        max_file_bytes: u64,
        max_total_bytes: u64,
        spill: Option<&Path>,
    ) -> Result<Builder, WorkspaceError> {
        let p = self.inside(dir)?;
        let b = Builder::new(spill, max_total_bytes)?;
        match tokio::fs::metadata(&p).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(b),
            Err(e) => return Err(e.into()),
            Ok(m) if !m.is_dir() => return Err(path_err(dir, "is not a directory")),
            Ok(_) => {}
        }
        let b = tokio::task::spawn_blocking(move || {
            let mut walk = Walk {
                b,
                max_file: max_file_bytes,
            };
            walk.dir(&p, "")?;
            Ok::<_, std::io::Error>(walk.b)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(b)
    }

    /// Kills every process group the workspace started and deletes the job directory.
    pub async fn destroy(mut self) -> Result<(), WorkspaceError> {
        self.kill_groups();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || force_remove(&dir))
            .await
            .map_err(std::io::Error::other)??;
        self.destroyed = true;
        tracing::debug!(dir = %self.dir.display(), "local workspace removed");
        Ok(())
    }

    fn kill_groups(&self) {
        for g in lock(&self.groups).drain(..) {
            killpg(g);
        }
    }

    /// `path` as a host path, refused unless absolute and (lexically) inside the job
    /// directory.
    fn inside(&self, path: &str) -> Result<PathBuf, WorkspaceError> {
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(path_err(path, "must be an absolute path"));
        }
        let mut clean = PathBuf::new();
        for c in p.components() {
            match c {
                Component::ParentDir => {
                    clean.pop();
                }
                Component::CurDir => {}
                other => clean.push(other),
            }
        }
        if !clean.starts_with(&self.dir) {
            return Err(path_err(
                path,
                &format!("is outside the workspace ({})", self.dir.display()),
            ));
        }
        Ok(clean)
    }
}

impl Drop for LocalWorkspace {
    fn drop(&mut self) {
        if self.destroyed {
            return;
        }
        tracing::warn!(dir = %self.dir.display(), "local workspace dropped without destroy; removing it");
        self.kill_groups();
        let dir = std::mem::take(&mut self.dir);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || force_remove(&dir));
            }
            Err(_) => {
                let _ = force_remove(&dir);
            }
        }
    }
}

/// Kills a running command's group unless disarmed: covers a timeout and an
/// `exec` future dropped half-way (the caller cancelled).
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(g) = self.0.take() {
            killpg(g);
        }
    }
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn killpg(pgid: i32) {
    // SAFETY: killpg only sends a signal; a group that is gone yields ESRCH.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere does not make a list of pids wrong.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn path_err(path: &str, message: &str) -> WorkspaceError {
    WorkspaceError::Path {
        path: path.to_string(),
        message: message.to_string(),
    }
}

/// Removes a tree, also when commands left read-only directories in it (Go's module
/// cache does), which `remove_dir_all` cannot empty as a non-root user.
fn force_remove(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            make_writable(dir);
            std::fs::remove_dir_all(dir)
        }
        Err(e) => Err(e),
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

/// A sorted walk of a directory into a snapshot [`Builder`], with its limits.
struct Walk {
    b: Builder,
    max_file: u64,
}

impl Walk {
    /// Walks `dir` (whose path relative to the snapshot root is `rel`); returns
    /// early once the total limit is hit.
    fn dir(&mut self, dir: &Path, rel: &str) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if self.b.snap.truncated {
                return Ok(());
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = e.file_type()?;
            let content = if kind.is_dir() {
                self.b.snap.dirs.push(rel.clone());
                self.dir(&e.path(), &rel)?;
                continue;
            } else if kind.is_symlink() {
                self.b.snap.modes.insert(rel.clone(), super::MODE_LINK);
                std::fs::read_link(e.path())?
                    .as_os_str()
                    .as_encoded_bytes()
                    .to_vec()
            } else if kind.is_file() {
                let meta = e.metadata()?;
                if meta.len() > self.max_file {
                    let mtime = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs());
                    self.b.snap.stats.insert(rel.clone(), (meta.len(), mtime));
                    self.b.snap.files.insert(rel, None);
                    continue;
                }
                if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0 {
                    self.b.snap.modes.insert(rel.clone(), super::MODE_EXEC);
                }
                std::fs::read(e.path())?
            } else {
                continue;
            };
            if !self.b.content(rel, content)? {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(dir: &Path) -> LocalWorkspace {
        LocalWorkspace {
            dir: dir.to_path_buf(),
            workdir: dir.join("workspace").to_string_lossy().into_owned(),
            env: Vec::new(),
            groups: Mutex::new(Vec::new()),
            destroyed: true,
        }
    }

    #[test]
    fn paths_must_stay_inside_the_job_dir() {
        let w = ws(Path::new("/tmp/fleet-x"));
        assert_eq!(
            w.inside("/tmp/fleet-x/workspace/a/../b").unwrap(),
            Path::new("/tmp/fleet-x/workspace/b")
        );
        assert!(w.inside("/tmp/fleet-x/../etc/passwd").is_err());
        assert!(w.inside("/tmp/fleet-xy/a").is_err());
        assert!(w.inside("relative").is_err());
        assert!(w.inside("/etc/passwd").is_err());
    }

    #[test]
    fn walk_sorts_limits_and_keeps_links() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("d/e")).unwrap();
        std::fs::write(t.path().join("a"), "aaaa").unwrap();
        std::fs::write(t.path().join("d/b"), "bbbb").unwrap();
        std::fs::write(t.path().join("d/big"), vec![0u8; 100]).unwrap();
        std::os::unix::fs::symlink("a", t.path().join("l")).unwrap();
        let mut w = Walk {
            b: Builder::in_memory(1000),
            max_file: 10,
        };
        w.dir(t.path(), "").unwrap();
        let w = w.b;
        assert_eq!(w.snap.dirs, vec!["d", "d/e"]);
        assert_eq!(w.snap.files["d/big"], None);
        assert_eq!(w.snap.files["l"].as_deref(), Some(&b"a"[..]));
        assert!(!w.snap.truncated);
        let mut w = Walk {
            b: Builder::in_memory(6),
            max_file: 10,
        };
        w.dir(t.path(), "").unwrap();
        let w = w.b;
        assert!(w.snap.truncated);
        assert_eq!(w.snap.files.len(), 1);
    }

    #[test]
    fn removes_read_only_trees() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ro/inner");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), "x").unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o500)).unwrap();
        force_remove(&t.path().join("ro")).unwrap();
        assert!(!t.path().join("ro").exists());
    }
}
