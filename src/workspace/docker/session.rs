//! The Docker half of a shell session (see `workspace::session`). A command
//! costs a write and a read on an open connection, never an API call.
//!
//! The job's first shell is the container's own main process: the container
//! runs [`MAIN`] (under docker-init), which starts the session shell on the
//! container's stdin, and the worker attaches to it before the container starts
//! — the round trips of a bare `docker run -i`, no exec at all. When that shell
//! ends (`exit`, Ctrl-D, killed at the ceiling), `MAIN` prints an exit record and
//! stays on as the keep-alive; a shell the session opens after that is one
//! `docker exec` with stdin attached.
//!
//! Ctrl-C is a short helper exec that signals the shell's process group: an
//! exec is a group leader of its own, the main shell is in the group docker-init
//! gives `MAIN` (which traps SIGINT, so it survives like the shell does). Killing
//! a session kills every process carrying its marker (`exec.rs`).

use std::pin::Pin;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::AttachContainerOptionsBuilder;
use futures_util::{Stream, StreamExt};
use memchr::memmem;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::exec::{MARKER_VAR, Probe, READ_CAPACITY, exit_code, kill, run_helper};
use super::{API_DEADLINE, DockerWorkspace, from_bollard, within};
use crate::workspace::WorkspaceError;

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
type Input = Pin<Box<dyn AsyncWrite + Send>>;

/// The container's main process (`$1`: the session's marker, `$2`: the launch
/// script): the first session shell on the container's stdin, then an exit
/// record, then the keep-alive (exits on TERM). SIGINT is trapped, not ignored,
/// so the commands the shell starts still die of Ctrl-C.
pub(super) const MAIN: &str = r#"trap : INT
trap "exit 0" TERM
FLEET_EXEC=$1 sh -c "$2" fleet-shell
printf '\037FLEET-EXIT-%s:%s\037' "$1" "$?"
exec </dev/null >/dev/null 2>&1
while :; do sleep 3600 & wait; done"#;

/// Signals the process group `$1` (an exec's shell), or the shell alone should
/// the group be gone.
const INTERRUPT: &str = r#"kill -INT -- "-$1" 2>/dev/null || kill -INT "$1""#;
/// Signals the process group the shell `$1` is in (the main shell's: `MAIN`'s).
const INTERRUPT_GROUP: &str = r#"read -r s < "/proc/$1/stat" || exit 1
s=${s##*) }
set -- $s
kill -INT -- "-$3""#;

/// The main shell's streams, attached before the container started; taken by
/// the first session.
pub(super) struct Attached {
    pub marker: String,
    pub output: Output,
    pub input: Input,
}

/// Attaches to the created container's main process (stdin, stdout, stderr).
pub(super) async fn attach(ws: &DockerWorkspace) -> Result<(Output, Input), WorkspaceError> {
    let options = AttachContainerOptionsBuilder::new()
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .stream(true)
        .logs(false)
        .build();
    let attached = within(
        API_DEADLINE,
        ws.api().attach_container(&ws.name, Some(options)),
    )
    .await?
    .map_err(from_bollard)?;
    Ok((attached.output, attached.input))
}

enum Kind {
    /// A `docker exec`, inspected for its state and exit code.
    Exec { exec_id: String },
    /// The container's main process: its state comes from its exit record.
    Main(MainEnd),
}

/// What the main shell's stream said about its end.
struct MainEnd {
    /// `\x1fFLEET-EXIT-<marker>:`, then the exit code and `\x1f`.
    record: Vec<u8>,
    /// Output held back: the start of what may be an exit record.
    held: Vec<u8>,
    /// The exit code, once the record was read (None inside: unreadable).
    exited: Option<Option<i64>>,
}

/// A piece of a shell's output, by the stream it came on.
pub(crate) enum Piece {
    /// What the shell and its commands printed.
    Out(Vec<u8>),
    /// What reached the container's stderr: the side channel (see
    /// `workspace::session::LAUNCH`).
    Side(Vec<u8>),
}

impl Piece {
    fn into_bytes(self) -> Vec<u8> {
        match self {
            Piece::Out(b) | Piece::Side(b) => b,
        }
    }
}

pub(crate) struct DockerShell {
    kind: Kind,
    /// The value of [`MARKER_VAR`] in the shell's environment.
    marker: String,
    output: Output,
    input: Input,
}

impl DockerWorkspace {
    /// The session's shell in the workdir, attached: the main process when no
    /// session has used it yet, else a new exec.
    pub(crate) async fn spawn_shell(&self) -> Result<DockerShell, WorkspaceError> {
        let main = self.main_shell.lock().ok().and_then(|mut m| m.take());
        if let Some(a) = main {
            let record = format!("\x1fFLEET-EXIT-{}:", a.marker).into_bytes();
            return Ok(DockerShell {
                kind: Kind::Main(MainEnd {
                    record,
                    held: Vec::new(),
                    exited: None,
                }),
                marker: a.marker,
                output: a.output,
                input: a.input,
            });
        }
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
                crate::workspace::session::LAUNCH.into(),
                "fleet-shell".into(),
            ]),
            ..Default::default()
        };
        let exec_id = within(API_DEADLINE, self.api().create_exec(&self.name, config))
            .await?
            .map_err(from_bollard)?
            .id;
        let options = StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: Some(READ_CAPACITY),
        };
        let started = within(API_DEADLINE, self.api().start_exec(&exec_id, Some(options)))
            .await?
            .map_err(from_bollard)?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(WorkspaceError::Docker(
                "the shell's exec started detached although attached was asked for".into(),
            ));
        };
        Ok(DockerShell {
            kind: Kind::Exec { exec_id },
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

    /// The next piece of output; `None` once the shell's output ended (for the
    /// main shell: once its exit record arrived). Cancel-safe.
    pub(crate) async fn read(&mut self) -> Result<Option<Vec<u8>>, WorkspaceError> {
        Ok(self.read_piece().await?.map(Piece::into_bytes))
    }

    /// [`DockerShell::read`], telling what the shell printed (stdout, where
    /// stderr is sent too) from what reached the container's own stderr (the
    /// session's side channel, fd 9 of the shell). Cancel-safe.
    pub(crate) async fn read_piece(&mut self) -> Result<Option<Piece>, WorkspaceError> {
        loop {
            if matches!(&self.kind, Kind::Main(end) if end.exited.is_some()) {
                return Ok(None);
            }
            let Some(frame) = self.output.next().await else {
                return Ok(match &mut self.kind {
                    Kind::Main(end) => Some(std::mem::take(&mut end.held))
                        .filter(|h| !h.is_empty())
                        .map(Piece::Out),
                    Kind::Exec { .. } => None,
                });
            };
            let message = match frame.map_err(from_bollard)? {
                LogOutput::StdErr { message } => return Ok(Some(Piece::Side(message.to_vec()))),
                LogOutput::StdOut { message } | LogOutput::Console { message } => message,
                LogOutput::StdIn { .. } => continue,
            };
            match &mut self.kind {
                Kind::Exec { .. } => return Ok(Some(Piece::Out(message.to_vec()))),
                Kind::Main(end) => {
                    let out = end.scan(&message);
                    if !out.is_empty() {
                        return Ok(Some(Piece::Out(out)));
                    }
                    if end.exited.is_some() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    pub(crate) async fn interrupt(
        &mut self,
        ws: &DockerWorkspace,
        pid: Option<u32>,
    ) -> Result<(), WorkspaceError> {
        let pid = pid
            .ok_or_else(|| WorkspaceError::Docker("the shell's pid is not known yet".into()))?
            .to_string();
        let script = match self.kind {
            Kind::Exec { .. } => INTERRUPT,
            Kind::Main(_) => INTERRUPT_GROUP,
        };
        run_helper(ws, vec!["sh", "-c", script, "fleet-interrupt", &pid]).await
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
        match &self.kind {
            Kind::Exec { exec_id } => {
                match within(API_DEADLINE, ws.api().inspect_exec(exec_id)).await {
                    Ok(Ok(info)) => info.running != Some(false),
                    _ => true,
                }
            }
            Kind::Main(end) => end.exited.is_none(),
        }
    }

    pub(crate) async fn exit_code(&mut self, ws: &DockerWorkspace) -> Option<i64> {
        match &self.kind {
            Kind::Exec { exec_id } => exit_code(ws, exec_id).await.ok().flatten(),
            Kind::Main(end) => end.exited.flatten(),
        }
    }

    /// Kills the shell and everything it started (background processes too).
    pub(crate) async fn kill(&mut self, ws: &DockerWorkspace) -> Result<(), WorkspaceError> {
        let marker = self.marker.clone();
        match &self.kind {
            Kind::Exec { exec_id } => {
                let exec_id = exec_id.clone();
                kill(ws, &marker, Probe::Exec(&exec_id)).await;
            }
            Kind::Main(_) => kill(ws, &marker, Probe::Main(&mut *self)).await,
        }
        Ok(())
    }

    /// Reads the main shell's output until its exit record (discarding it) or
    /// until `wait` passes; whether the shell still runs.
    pub(super) async fn main_still_running_after(&mut self, wait: Duration) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            if matches!(&self.kind, Kind::Main(end) if end.exited.is_some()) {
                return false;
            }
            match tokio::time::timeout_at(until, self.read()).await {
                Ok(Ok(Some(_))) => {}
                // The stream ended or broke: nothing left to wait for.
                Ok(Ok(None)) | Ok(Err(_)) => return false,
                Err(_) => return true,
            }
        }
    }
}

impl MainEnd {
    /// Output to hand on from `chunk`; takes the exit record out when it is
    /// complete, and holds back what could be its start.
    fn scan(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(chunk);
        if let Some(at) = memmem::find(&buf, &self.record) {
            let rest = &buf[at + self.record.len()..];
            if let Some(end) = memchr::memchr(0x1f, rest) {
                let code = std::str::from_utf8(&rest[..end])
                    .ok()
                    .and_then(|c| c.parse().ok());
                self.exited = Some(code);
                buf.truncate(at);
                return buf;
            }
            // The record's code has not arrived yet.
            self.held = buf.split_off(at);
            return buf;
        }
        // Hold back a tail that is the start of a record (it begins with 0x1f,
        // which ordinary output rarely ends on).
        let keep = (1..self.record.len().min(buf.len() + 1))
            .rev()
            .find(|&n| buf.ends_with(&self.record[..n]))
            .unwrap_or(0);
        self.held = buf.split_off(buf.len() - keep);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end() -> MainEnd {
        MainEnd {
            record: b"\x1fFLEET-EXIT-ab:".to_vec(),
            held: Vec::new(),
            exited: None,
        }
    }

    #[test]
    fn output_passes_and_the_exit_record_is_taken_out() {
        let mut e = end();
        assert_eq!(e.scan(b"hello\n"), b"hello\n");
        assert_eq!(e.exited, None);
        assert_eq!(e.scan(b"bye\x1fFLEET-EXIT-ab:3\x1f"), b"bye");
        assert_eq!(e.exited, Some(Some(3)));
    }

    #[test]
    fn a_record_split_across_chunks_is_held_until_whole() {
        let mut e = end();
        assert_eq!(e.scan(b"out\x1fFLEET-EX"), b"out");
        assert_eq!(e.scan(b"IT-ab:1"), b"");
        assert_eq!(e.exited, None);
        assert_eq!(e.scan(b"27\x1f"), b"");
        assert_eq!(e.exited, Some(Some(127)));
    }

    #[test]
    fn a_lone_separator_is_only_held_until_the_next_chunk() {
        let mut e = end();
        assert_eq!(e.scan(b"a\x1f"), b"a");
        assert_eq!(e.scan(b"b"), b"\x1fb");
        // Another session's record is output like any other (its last byte
        // could start this one's, so it waits for the next chunk).
        assert_eq!(e.scan(b"\x1fFLEET-EXIT-cd:0\x1f"), b"\x1fFLEET-EXIT-cd:0");
        assert_eq!(e.scan(b"x"), b"\x1fx");
        assert_eq!(e.exited, None);
    }
}
