//! The Docker half of a shell session (see `workspace::session`): the shell is one
//! `docker exec` with stdin attached, so a command costs a write and a read on an
//! open connection — no exec per command. Ctrl-C is a short helper exec that
//! signals the shell's process group (the engine makes every exec a process
//! group leader); killing the session reuses the command kill of `exec.rs`, which
//! finds every process the shell started by the marker in its environment.

use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::exec::{MARKER_VAR, READ_CAPACITY, exit_code, kill, run_helper};
use super::{API_DEADLINE, DockerWorkspace, from_bollard, within};
use crate::workspace::WorkspaceError;
use crate::workspace::session::LAUNCH;

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// Signals the process group `$1` (the shell's), or the shell alone should the
/// group be gone.
const INTERRUPT: &str = r#"kill -INT -- "-$1" 2>/dev/null || kill -INT "$1""#;

pub(crate) struct DockerShell {
    exec_id: String,
    /// The value of [`MARKER_VAR`] in the shell's environment.
    marker: String,
    output: Output,
    input: Pin<Box<dyn AsyncWrite + Send>>,
}

impl DockerWorkspace {
    /// Starts the session's shell in the workdir, attached.
    pub(crate) async fn spawn_shell(&self) -> Result<DockerShell, WorkspaceError> {
        let marker = format!("{:016x}", rand::random::<u64>());
        let config = CreateExecOptions {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            env: Some(vec![format!("{MARKER_VAR}={marker}")]),
            working_dir: Some(self.workdir.clone()),
            cmd: Some(vec![
                "sh".into(),
                "-c".into(),
                LAUNCH.into(),
                "fleet-shell".into(),
            ]),
            ..Default::default()
        };
        let exec_id = within(API_DEADLINE, self.docker.create_exec(&self.name, config))
            .await?
            .map_err(from_bollard)?
            .id;
        let options = StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: Some(READ_CAPACITY),
        };
        let started = within(
            API_DEADLINE,
            self.docker.start_exec(&exec_id, Some(options)),
        )
        .await?
        .map_err(from_bollard)?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(WorkspaceError::Docker(
                "the shell's exec started detached although attached was asked for".into(),
            ));
        };
        Ok(DockerShell {
            exec_id,
            marker,
            output,
            input,
        })
    }
}

impl DockerShell {
    pub(crate) async fn write(&mut self, data: &[u8]) -> Result<(), WorkspaceError> {
        tokio::time::timeout(API_DEADLINE, async {
            self.input.write_all(data).await?;
            self.input.flush().await
        })
        .await
        .map_err(|_| WorkspaceError::Deadline(API_DEADLINE))?
        .map_err(WorkspaceError::Io)
    }

    /// The next piece of output; `None` once the shell's output ended. Cancel-safe.
    pub(crate) async fn read(&mut self) -> Result<Option<Vec<u8>>, WorkspaceError> {
        while let Some(frame) = self.output.next().await {
            match frame.map_err(from_bollard)? {
                LogOutput::StdOut { message }
                | LogOutput::StdErr { message }
                | LogOutput::Console { message } => return Ok(Some(message.to_vec())),
                LogOutput::StdIn { .. } => {}
            }
        }
        Ok(None)
    }

    pub(crate) async fn interrupt(
        &mut self,
        ws: &DockerWorkspace,
        pid: Option<u32>,
    ) -> Result<(), WorkspaceError> {
        let pid = pid
            .ok_or_else(|| WorkspaceError::Docker("the shell's pid is not known yet".into()))?
            .to_string();
        run_helper(ws, vec!["sh", "-c", INTERRUPT, "fleet-interrupt", &pid]).await
    }

    pub(crate) async fn close_stdin(&mut self) -> Result<(), WorkspaceError> {
        tokio::time::timeout(API_DEADLINE, self.input.shutdown())
            .await
            .map_err(|_| WorkspaceError::Deadline(API_DEADLINE))?
            .map_err(WorkspaceError::Io)
    }

    /// Whether the shell still runs; an engine that cannot tell counts as yes
    /// (the next call then fails on its own).
    pub(crate) async fn alive(&mut self, ws: &DockerWorkspace) -> bool {
        match within(API_DEADLINE, ws.docker.inspect_exec(&self.exec_id)).await {
            Ok(Ok(info)) => info.running != Some(false),
            _ => true,
        }
    }

    pub(crate) async fn exit_code(&mut self, ws: &DockerWorkspace) -> Option<i64> {
        exit_code(ws, &self.exec_id).await.ok().flatten()
    }

    /// Kills the shell and everything it started (background processes too).
    pub(crate) async fn kill(&mut self, ws: &DockerWorkspace) -> Result<(), WorkspaceError> {
        kill(ws, &self.exec_id, &self.marker).await;
        Ok(())
    }
}
