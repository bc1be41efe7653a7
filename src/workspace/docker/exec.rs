//! Commands in a container: `docker exec` of `sh -c`, output streamed into a
//! bounded [`HeadTail`], and on timeout the command's whole process tree killed so
//! the workspace stays usable for the next command.
//!
//! Finding "the command's processes" inside a container needs no tool beyond
//! busybox: every exec carries a random marker in its environment
//! (`FLEET_EXEC=<hex>`), inherited by everything it starts, found with
//! `grep -z` over `/proc/*/environ` (a plain grep stops at the first NUL of a
//! process's environment, so it would miss the marker). The kill is a second
//! exec (as root, or the job's user) that seeds on the marker, adds descendants by walking
//! `/proc/*/status` `PPid` (for children that scrubbed their environment), stops
//! them while walking so nothing forks away, then SIGKILLs them and their process
//! groups. A command that used up the pids limit leaves the kill no room to fork:
//! if the command still runs, the container is lent a few pids (`docker update`)
//! and the kill runs again; if even that fails, every process is stopped at once
//! and killed but PID 1 (docker-init) and the keep-alive shell, init's first
//! child. Background processes of *earlier* commands survive all but that last
//! resort.
//!
//! Dropping the `exec` future does not kill the command (there is no async drop);
//! callers that give up on a command destroy the workspace.

use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::ContainerUpdateBody;
use futures_util::StreamExt;

use super::paths::clean_abs;
use super::{API_DEADLINE, DockerWorkspace, from_bollard, within};
use crate::workspace::{ExecOutput, HeadTail, WorkspaceError};

/// The environment variable that marks a command's processes.
pub(super) const MARKER_VAR: &str = "FLEET_EXEC";

/// Runs the script in `cwd` (`$1`) as its own `sh` (`$2`). A missing `cwd` fails
/// the command the way a terminal would (sh's message, exit 1), not the call.
const WRAPPER: &str = r#"cd "$1" || exit 1; exec sh -c "$2""#;

/// Kills every process of the command marked `$1` (see the module doc).
const KILL_SCRIPT: &str = r#"
m="FLEET_EXEC=$1"
if printf 'x\0' | grep -q -z -x x 2>/dev/null; then
    found=$(grep -l -s -z -x -F "$m" /proc/[0-9]*/environ)
else
    # No NUL-separated records in this grep: one small pipeline per process.
    found=
    for e in /proc/[0-9]*/environ; do
        tr '\0' '\n' <"$e" 2>/dev/null | grep -q -x -F "$m" && found="$found $e"
    done
fi
pids=" "
for e in $found; do
    p=${e#/proc/}; p=${p%/environ}
    [ "$p" = "$$" ] || [ "$p" = 1 ] || pids="$pids$p "
done
[ "$pids" = " " ] && exit 0
kill -STOP $pids 2>/dev/null
while :; do
    added=
    for s in /proc/[0-9]*/status; do
        p=${s#/proc/}; p=${p%/status}
        case "$pids" in *" $p "*) continue ;; esac
        [ "$p" = "$$" ] && continue
        pp=
        { while read -r k v; do [ "$k" = "PPid:" ] && { pp=$v; break; }; done < "$s"; } 2>/dev/null
        case "$pids" in *" $pp "*) pids="$pids$p "; kill -STOP "$p" 2>/dev/null; added=1 ;; esac
    done
    [ -n "$added" ] || break
done
for p in $pids; do kill -9 "-$p" 2>/dev/null; done
kill -9 $pids 2>/dev/null
exit 0
"#;

/// Extra pids a container gets while a timed-out command that exhausted its
/// limit is killed (the kill script forks a few helpers).
const PIDS_LENT: i64 = 16;
/// The last resort: every process but PID 1 (docker-init), the keep-alive shell
/// (init's first child) and this shell. Builtins only, so it runs with no pid left.
/// `kill -STOP -1` first: one signal to every process at once (the kernel also
/// stops a child forked meanwhile), so a storm cannot fork new processes behind
/// the walk, which sees `/proc` once; the keep-alive is let go again afterwards.
const KILL_ALL: &str = r#"read -r keep rest < /proc/1/task/1/children
[ -n "$keep" ] || exit 1
kill -s STOP -1 2>/dev/null
for p in /proc/[0-9]*; do
    p=${p#/proc/}
    case "$p" in 1|"$keep"|"$$") ;; *) kill -9 "$p" 2>/dev/null ;; esac
done
kill -s CONT "$keep"
"#;

/// How long the kill exec may take.
const KILL_DEADLINE: Duration = Duration::from_secs(20);
/// How long a finished stream may wait for the engine to report the exit code,
/// and a killed command to be reported gone.
const SETTLE: Duration = Duration::from_secs(3);
/// Read buffer of the attached stream; larger than bollard's 8 KiB default so a
/// flood of output is read in fewer, larger chunks.
pub(super) const READ_CAPACITY: usize = 64 * 1024;

pub(super) async fn run(
    ws: &DockerWorkspace,
    script: &str,
    cwd: &str,
    timeout: Duration,
    max_chars: usize,
) -> Result<ExecOutput, WorkspaceError> {
    let cwd = clean_abs(cwd)?;
    let marker = format!("{:016x}", rand::random::<u64>());
    let config = CreateExecOptions {
        attach_stdin: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        env: Some(vec![format!("{MARKER_VAR}={marker}")]),
        cmd: Some(
            vec!["sh", "-c", WRAPPER, "fleet-exec", &cwd, script]
                .into_iter()
                .map(String::from)
                .collect(),
        ),
        ..Default::default()
    };
    let exec_id = create(ws, config).await?;
    let options = StartExecOptions {
        detach: false,
        tty: false,
        output_capacity: Some(READ_CAPACITY),
    };
    let started = within(API_DEADLINE, ws.api().start_exec(&exec_id, Some(options)))
        .await?
        .map_err(from_bollard)?;
    let StartExecResults::Attached { mut output, input } = started else {
        return Err(WorkspaceError::Docker(
            "exec started detached although attached was asked for".into(),
        ));
    };
    // Held until the end: dropping the write half early could close the connection.
    let _input = input;

    let mut captured = HeadTail::new(max_chars);
    let read_all = async {
        while let Some(frame) = output.next().await {
            match frame {
                Ok(
                    LogOutput::StdOut { message }
                    | LogOutput::StdErr { message }
                    | LogOutput::Console { message },
                ) => captured.push(&message),
                Ok(LogOutput::StdIn { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let finished = tokio::time::timeout(timeout, read_all).await;
    drop(output);
    let total_bytes = captured.total_bytes();
    match finished {
        Ok(Ok(())) => {
            let exit_code = exit_code(ws, &exec_id).await?;
            Ok(ExecOutput {
                output: captured.finish(),
                exit_code,
                timed_out: false,
                total_bytes,
            })
        }
        Ok(Err(e)) => {
            // The connection broke, not the command: do not leave it running.
            kill(ws, &marker, Probe::Exec(&exec_id)).await;
            Err(from_bollard(e))
        }
        Err(_) => {
            tracing::debug!(container = %ws.name, ?timeout, "command timed out; killing it");
            kill(ws, &marker, Probe::Exec(&exec_id)).await;
            Ok(ExecOutput {
                output: captured.finish(),
                exit_code: None,
                timed_out: true,
                total_bytes,
            })
        }
    }
}

async fn create(
    ws: &DockerWorkspace,
    config: CreateExecOptions<String>,
) -> Result<String, WorkspaceError> {
    Ok(within(API_DEADLINE, ws.api().create_exec(&ws.name, config))
        .await?
        .map_err(from_bollard)?
        .id)
}

/// The exit code once the engine has it. The stream can end a moment before the
/// engine marks the exec finished, hence the short poll.
pub(super) async fn exit_code(
    ws: &DockerWorkspace,
    exec_id: &str,
) -> Result<Option<i64>, WorkspaceError> {
    let until = tokio::time::Instant::now() + SETTLE;
    loop {
        let info = within(API_DEADLINE, ws.api().inspect_exec(exec_id))
            .await?
            .map_err(from_bollard)?;
        if info.running != Some(true) {
            return Ok(info.exit_code);
        }
        if tokio::time::Instant::now() >= until {
            tracing::warn!(container = %ws.name, "exec output ended but the engine still reports it running");
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How a kill tells whether the command is gone: an exec is inspected; the
/// container's main shell says so on its stream (`session.rs`).
pub(super) enum Probe<'a> {
    Exec(&'a str),
    Main(&'a mut super::session::DockerShell),
}

impl Probe<'_> {
    async fn still_running_after(&mut self, ws: &DockerWorkspace, wait: Duration) -> bool {
        match self {
            Probe::Exec(exec_id) => still_running_after(ws, exec_id, wait).await,
            Probe::Main(shell) => shell.main_still_running_after(wait).await,
        }
    }
}

/// Kills the marked command's processes; best effort (a failure is logged: the
/// caller has its answer, and a broken container fails the next call anyway).
pub(super) async fn kill(ws: &DockerWorkspace, marker: &str, mut probe: Probe<'_>) {
    let script = || vec!["sh", "-c", KILL_SCRIPT, "fleet-kill", marker];
    if let Err(e) = run_helper(ws, script()).await {
        tracing::debug!(container = %ws.name, error = %e, "kill exec failed");
    }
    if !probe.still_running_after(ws, SETTLE).await {
        return;
    }
    // The usual reason a targeted kill fails: the command used up the pids limit,
    // so the kill could not fork. Lend the container a few pids for the kill.
    let lent = lend_pids(ws).await;
    if let Err(e) = run_helper(ws, script()).await {
        tracing::warn!(container = %ws.name, error = %e, "killing a timed-out command failed");
    }
    if probe.still_running_after(ws, SETTLE).await {
        tracing::warn!(container = %ws.name, "timed-out command survived the targeted kill; killing all processes");
        if let Err(e) = run_helper(ws, vec!["sh", "-c", KILL_ALL]).await {
            tracing::warn!(container = %ws.name, error = %e, "killing all processes failed");
        }
    }
    if let Some(limit) = lent {
        let restore = ContainerUpdateBody {
            pids_limit: Some(limit),
            ..Default::default()
        };
        match within(API_DEADLINE, ws.api().update_container(&ws.name, restore)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(container = %ws.name, error = %e, "could not restore the pids limit")
            }
            Err(e) => {
                tracing::warn!(container = %ws.name, error = %e, "could not restore the pids limit")
            }
        }
    }
}

/// Raises the container's pids limit by [`PIDS_LENT`]; returns the old limit to
/// restore, or `None` when there is no limit (or it could not be changed).
async fn lend_pids(ws: &DockerWorkspace) -> Option<i64> {
    let info = within(API_DEADLINE, ws.api().inspect_container(&ws.name, None))
        .await
        .ok()?
        .ok()?;
    let limit = info.host_config?.pids_limit.filter(|l| *l > 0)?;
    let raised = ContainerUpdateBody {
        pids_limit: Some(limit + PIDS_LENT),
        ..Default::default()
    };
    match within(API_DEADLINE, ws.api().update_container(&ws.name, raised)).await {
        Ok(Ok(())) => Some(limit),
        _ => None,
    }
}

async fn still_running_after(ws: &DockerWorkspace, exec_id: &str, wait: Duration) -> bool {
    let until = tokio::time::Instant::now() + wait;
    loop {
        match within(API_DEADLINE, ws.api().inspect_exec(exec_id)).await {
            Ok(Ok(info)) if info.running == Some(true) => {}
            // Not running, or unknown: nothing more to do from here.
            _ => return false,
        }
        if tokio::time::Instant::now() >= until {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a helper command (the kills) and waits for it, discarding its output. As
/// root, or as the job's own user when it names one: Docker gives a root exec in
/// a container whose user is non-root no capabilities, so it could not signal
/// that user's processes, which the user itself can (they are all its own:
/// `no-new-privileges` stops setuid binaries).
pub(super) async fn run_helper(ws: &DockerWorkspace, cmd: Vec<&str>) -> Result<(), WorkspaceError> {
    let config = CreateExecOptions {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        user: if ws.user.is_some() {
            None
        } else {
            Some("0".to_string())
        },
        cmd: Some(cmd.into_iter().map(String::from).collect()),
        ..Default::default()
    };
    let drained = async {
        let exec_id = create(ws, config).await?;
        match ws
            .api()
            .start_exec(&exec_id, None)
            .await
            .map_err(from_bollard)?
        {
            StartExecResults::Attached { mut output, input } => {
                let _input = input;
                while let Some(frame) = output.next().await {
                    frame.map_err(from_bollard)?;
                }
            }
            StartExecResults::Detached => {}
        }
        Ok(())
    };
    tokio::time::timeout(KILL_DEADLINE, drained)
        .await
        .map_err(|_| WorkspaceError::Deadline(KILL_DEADLINE))?
}
