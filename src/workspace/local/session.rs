//! The local half of a shell session (see `workspace::session`): the shell is a
//! child process in its own process group, stdin piped, stdout and stderr on one
//! pipe. Ctrl-C is SIGINT to that group; killing the session is SIGKILL to it
//! (the group is also registered with the workspace, so `destroy` reaches it).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};

use super::LocalWorkspace;
use crate::workspace::WorkspaceError;
use crate::workspace::session::LAUNCH;

const READ_CHUNK: usize = 64 * 1024;
/// Deadline of a write to the shell's stdin and of reaping it.
const IO_DEADLINE: Duration = Duration::from_secs(60);

pub(crate) struct LocalShell {
    child: Child,
    stdin: Option<ChildStdin>,
    output: tokio::net::unix::pipe::Receiver,
    pgid: Option<i32>,
    chunk: Vec<u8>,
}

impl LocalWorkspace {
    /// Starts the session's shell in the workdir.
    pub(crate) fn spawn_shell(&self) -> Result<LocalShell, WorkspaceError> {
        let workdir = std::path::Path::new(&self.workdir);
        let (mut child, output, pgid) =
            self.spawn_sh(LAUNCH, &["fleet-shell"], workdir, Stdio::piped())?;
        let stdin = child.stdin.take();
        Ok(LocalShell {
            child,
            stdin,
            output,
            pgid,
            chunk: vec![0; READ_CHUNK],
        })
    }
}

impl LocalShell {
    pub(crate) async fn write(&mut self, data: &[u8]) -> Result<(), WorkspaceError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| WorkspaceError::Io(std::io::ErrorKind::BrokenPipe.into()))?;
        tokio::time::timeout(IO_DEADLINE, async {
            stdin.write_all(data).await?;
            stdin.flush().await
        })
        .await
        .map_err(|_| WorkspaceError::Deadline(IO_DEADLINE))??;
        Ok(())
    }

    /// The next piece of output; `None` once every writer of the pipe is gone.
    /// Cancel-safe.
    pub(crate) async fn read(&mut self) -> Result<Option<Vec<u8>>, WorkspaceError> {
        match self.output.read(&mut self.chunk).await? {
            0 => Ok(None),
            n => Ok(Some(self.chunk[..n].to_vec())),
        }
    }

    pub(crate) async fn interrupt(
        &mut self,
        _ws: &LocalWorkspace,
        _pid: Option<u32>,
    ) -> Result<(), WorkspaceError> {
        if let Some(g) = self.pgid {
            signal_group(g, libc::SIGINT);
        }
        Ok(())
    }

    pub(crate) async fn close_stdin(&mut self) -> Result<(), WorkspaceError> {
        self.stdin = None;
        Ok(())
    }

    pub(crate) async fn alive(&mut self, _ws: &LocalWorkspace) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) async fn exit_code(&mut self, _ws: &LocalWorkspace) -> Option<i64> {
        use std::os::unix::process::ExitStatusExt;
        let status = tokio::time::timeout(IO_DEADLINE, self.child.wait())
            .await
            .ok()?
            .ok()?;
        status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .map(i64::from)
    }

    pub(crate) async fn kill(&mut self, _ws: &LocalWorkspace) -> Result<(), WorkspaceError> {
        if let Some(g) = self.pgid {
            signal_group(g, libc::SIGKILL);
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        Ok(())
    }
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: killpg only sends a signal; a group that is gone yields ESRCH.
    unsafe {
        libc::killpg(pgid, signal);
    }
}
