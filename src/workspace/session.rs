//! A persistent shell session in the workspace: one long-lived interactive shell
//! per conversation (`bash` when the image has it, else `sh`), fed through its
//! stdin, so everything a shell keeps — the working directory, variables exported
//! or not, functions, aliases, `set -o` options, an activated virtualenv — carries
//! from one command to the next. The Docker backend runs the shell as one
//! `docker exec` with stdin attached (`docker/session.rs`), the local backend as a
//! child process with piped stdin (`local/session.rs`); the protocol here is
//! shared.
//!
//! # Protocol
//! The shell runs interactive (`-i`) but without a terminal, with stdout and
//! stderr on one pipe (so a prompt never overtakes the output before it). Its
//! prompt (`PS1`) is the end-of-command record: a marker that is random per
//! session, then `seq:exit code:shell pid:cwd`, then the marker again. An
//! interactive shell prints its prompt whenever it is ready for the next command,
//! also after Ctrl-C aborted a command line — which a line appended to the
//! command could not report. Each command line is `__fleet_n=SEQ; eval 'CMD'; …`,
//! so a prompt says which command it ends: a stale one (a command that ended
//! while the model was typing into it) is skipped, never mistaken for the end of
//! the next command. The model never sees the marker (it is cut out of the
//! output); a command that reads it from `PS1` and prints a forged record can only
//! end its own call early.
//!
//! # Why interactive without a terminal
//! Ctrl-C: an interactive shell survives SIGINT and abandons the command line it
//! runs (a loop of builtins included), as in a terminal; a non-interactive one
//! either dies or runs on. The signal goes to the shell's process group, as a
//! terminal without job control would send it; background commands ignore it
//! (the shell starts them so), as in a terminal. A terminal itself (a pty) would
//! bring echo, line editing, tab completion and a 4 KiB line limit into a
//! command stream that models fill with long heredocs. The price: no job control
//! (Ctrl-Z cannot stop a job) and Ctrl-D can only be an end of the whole input.

use std::time::Duration;

use memchr::memmem;
use tokio::time::Instant;

use super::docker::session::Piece;
use super::{HeadTail, Workspace, WorkspaceError};

/// Starts the shell: bash when the image has it (no rc files, no line editing:
/// the session sets everything it needs), else the image's `sh`. stderr goes to
/// stdout, so output and prompts arrive in the order they were written. The
/// shell's own stderr stays open as fd 9, the side channel: in a container that
/// is the container's stderr, a stream of the attach apart from everything the
/// shell prints, which the collect reads the workspace's archive from
/// (`docker/shelltar.rs`). The model's commands see it as any other open fd: a
/// command that takes fd 9 for itself (`exec 9>lock`) keeps it, and the collect
/// then falls back to the engine.
pub(crate) const LAUNCH: &str = "exec 9>&2 2>&1; if command -v bash >/dev/null 2>&1; then \
     exec bash --norc --noprofile --noediting -i; fi; exec sh -i";

/// How long a new shell may take to show its first prompt.
const OPEN_DEADLINE: Duration = Duration::from_secs(30);
/// A record longer than this (the cwd is at most PATH_MAX) is not one.
const MAX_RECORD: usize = 4096 + 64;
/// How long [`Shell::run_side`] waits for the side channel's last bytes once
/// the script's record arrived (the two streams are copied apart, so the record
/// may overtake them by a moment).
const SIDE_AFTER_RECORD: Duration = Duration::from_secs(2);
/// How long a call that only drains output (a new command refused while one
/// runs) waits for it.
const DRAIN: Duration = Duration::from_millis(200);

/// How long a call waits for its command.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wait {
    /// Return once the command has printed nothing new for this long.
    pub quiet: Option<Duration>,
    /// Return after this long in any case.
    pub limit: Duration,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The command finished; the shell waits for the next one.
    Done { exit_code: i64 },
    /// Still running; nothing new was printed for this long.
    Quiet(Duration),
    /// Still running at the end of the call's wait.
    Waited(Duration),
    /// The command reached the session's ceiling on one command's run time and
    /// was killed together with the shell; the session is over.
    Ceiling(Duration),
    /// The shell exited (`exit`, `exec`, end of input); the session is over.
    Exited { exit_code: Option<i64> },
}

impl End {
    /// Whether the session can take another call.
    pub fn session_over(&self) -> bool {
        matches!(self, End::Ceiling(_) | End::Exited { .. })
    }

    /// Whether the command is still running after the call.
    pub fn still_running(&self) -> bool {
        matches!(self, End::Quiet(_) | End::Waited(_))
    }
}

/// What one call saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// What was printed during the call, cut in the middle to the call's limit.
    pub output: String,
    pub end: End,
}

/// The end-of-command record parsed from a prompt.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    seq: u64,
    exit_code: i64,
    pid: u32,
    cwd: String,
    /// `command -v python` (empty when there is none), as upstream reports it.
    python: String,
}

/// The backend's half: the shell process and its pipes.
pub(crate) enum ShellIo {
    Docker(super::docker::session::DockerShell),
    Local(super::local::session::LocalShell),
}

macro_rules! io {
    ($self:expr, $ws:expr, $s:ident, $w:ident => $e:expr) => {
        match (&mut $self.io, $ws) {
            (ShellIo::Docker($s), Workspace::Docker($w)) => $e,
            (ShellIo::Local($s), Workspace::Local($w)) => $e,
            _ => Err(WorkspaceError::Docker(
                "a shell session was used with another workspace".into(),
            )),
        }
    };
}

/// One shell session. Calls take the workspace it was opened in.
pub struct Shell {
    io: ShellIo,
    /// `__FLEET_<random>__`, around every record.
    marker: Vec<u8>,
    /// Output read but not yet handed to a call (possibly the start of a record).
    pending: Vec<u8>,
    /// The sequence number of the newest command line.
    seq: u64,
    /// When the running command started, if one runs.
    running: Option<Instant>,
    /// Ceiling on one command's run time, across calls.
    ceiling: Duration,
    /// The shell's pid (in the workspace), from its records.
    pid: Option<u32>,
    cwd: String,
    python: String,
    eof: bool,
    stdin_closed: bool,
}

impl Shell {
    /// Starts a shell in the workspace's workdir and waits for its first prompt.
    pub async fn open(ws: &Workspace, ceiling: Duration) -> Result<Shell, WorkspaceError> {
        let marker = format!("__FLEET_{}__", uuid::Uuid::new_v4().simple());
        let io = match ws {
            Workspace::Docker(w) => ShellIo::Docker(w.spawn_shell().await?),
            Workspace::Local(w) => ShellIo::Local(w.spawn_shell()?),
        };
        let mut shell = Shell {
            io,
            marker: marker.into_bytes(),
            pending: Vec::new(),
            seq: 0,
            // Starting counts as a command, under a ceiling the start's own
            // deadline reaches first.
            running: Some(Instant::now()),
            ceiling: OPEN_DEADLINE * 2,
            pid: None,
            cwd: ws.workdir().to_string(),
            python: String::new(),
            eof: false,
            stdin_closed: false,
        };
        let init = shell.init_line(ws.workdir());
        let wait = Wait {
            quiet: None,
            limit: OPEN_DEADLINE,
        };
        // What a shell prints before its first record (banners, "no job control")
        // is noise.
        let started = match shell.write(ws, init.as_bytes()).await {
            Ok(()) => shell.collect(ws, wait, 4000).await,
            Err(e) => Err(e),
        };
        let reply = match started {
            Ok(r) => r,
            Err(e) => {
                let _ = shell.kill(ws).await;
                return Err(e);
            }
        };
        shell.ceiling = ceiling;
        match reply.end {
            End::Done { .. } => {
                tracing::debug!(pid = ?shell.pid, backend = ws_kind(ws), "shell session started");
                Ok(shell)
            }
            other => {
                let _ = shell.kill(ws).await;
                Err(WorkspaceError::Docker(format!(
                    "the workspace shell did not start ({other:?}): {}",
                    reply.output.trim()
                )))
            }
        }
    }

    /// Whether a command is running (its call returned before it ended).
    pub fn running(&self) -> bool {
        self.running.is_some()
    }

    /// Whether the shell waits for a command: none runs, its input is open, it
    /// has not exited.
    pub fn idle(&self) -> bool {
        self.running.is_none() && !self.stdin_closed && !self.eof
    }

    /// Runs `script`, a line of the worker's own (not the model's: fd 9 stays
    /// open), in a Docker shell, and sends what it writes to fd 9 — the side
    /// channel — to `side` as it arrives. Returns the script's exit code once its
    /// record arrived and `side`'s receiver is gone (it read all it wanted), or
    /// at once when the code is not 0. `Ok(None)` when no record came: the shell
    /// ended, or nothing arrived for `idle` (a shell whose output was redirected
    /// never shows one). A session that ran this is spent: it is not handed to
    /// the model again.
    pub(crate) async fn run_side(
        &mut self,
        ws: &Workspace,
        script: &str,
        side: tokio::sync::mpsc::Sender<bytes::Bytes>,
        idle: Duration,
        until: Instant,
    ) -> Result<Option<i64>, WorkspaceError> {
        if !self.idle() {
            return Err(WorkspaceError::Docker("the shell is not idle".into()));
        }
        if !matches!(self.io, ShellIo::Docker(_)) {
            return Err(WorkspaceError::Docker(
                "only a container's shell has a side channel".into(),
            ));
        }
        self.seq += 1;
        let line = format!(
            "__fleet_n={seq}; PS1=$__fleet_ps1; {script}\n__fleet_ret \"$?\"\n",
            seq = self.seq
        );
        self.write(ws, line.as_bytes()).await?;
        let ShellIo::Docker(io) = &mut self.io else {
            unreachable!("checked above");
        };
        let mut side = Some(side);
        let mut code = None;
        loop {
            if code.is_none()
                && let Some(rec) = scan(&mut self.pending, &self.marker, self.seq, &mut |_| {})
            {
                code = Some(rec.exit_code);
            }
            match code {
                Some(c) if c != 0 || side.is_none() => return Ok(Some(c)),
                _ => {}
            }
            let quiet = if code.is_some() {
                SIDE_AFTER_RECORD.min(idle)
            } else {
                idle
            };
            let wait = (Instant::now() + quiet).min(until);
            let reader_gone = async {
                match &side {
                    Some(s) => s.closed().await,
                    None => std::future::pending().await,
                }
            };
            let piece = tokio::select! {
                r = tokio::time::timeout_at(wait, io.read_piece()) => Some(r),
                _ = reader_gone => None,
            };
            let Some(piece) = piece else {
                side = None;
                continue;
            };
            match piece {
                Err(_) => return Ok(None),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(None)) => {
                    self.eof = true;
                    return Ok(None);
                }
                Ok(Ok(Some(Piece::Out(b)))) => self.pending.extend_from_slice(&b),
                Ok(Ok(Some(Piece::Side(b)))) => {
                    if let Some(s) = &side {
                        match tokio::time::timeout_at(until, s.send(bytes::Bytes::from(b))).await {
                            Err(_) => return Ok(None),
                            // The reader has what it wants; the rest is drained.
                            Ok(Err(_)) => side = None,
                            Ok(Ok(())) => {}
                        }
                    }
                }
            }
        }
    }

    /// The shell's working directory as of its last record.
    pub fn cwd(&self) -> &str {
        &self.cwd
    }

    /// The `python` on the shell's PATH as of its last record, if any.
    pub fn python(&self) -> Option<&str> {
        Some(self.python.as_str()).filter(|p| !p.is_empty())
    }

    /// Runs `command` in the shell. No command may be running.
    pub async fn run(
        &mut self,
        ws: &Workspace,
        command: &str,
        wait: Wait,
        max_chars: usize,
    ) -> Result<Reply, WorkspaceError> {
        debug_assert!(self.running.is_none(), "a command is already running");
        self.seq += 1;
        // A heredoc that ends the command needs the newline after its delimiter.
        let mut command = command.to_string();
        if !command.ends_with('\n') {
            command.push('\n');
        }
        let line = format!(
            "__fleet_n={seq}; PS1=$__fleet_ps1; eval {cmd}; __fleet_rc=$?; {PYTHON}; PS1=$__fleet_ps1; __fleet_ret \"$__fleet_rc\"\n",
            seq = self.seq,
            cmd = sh_quote(&command),
        );
        self.write(ws, line.as_bytes()).await?;
        self.running = Some(Instant::now());
        self.collect(ws, wait, max_chars).await
    }

    /// Waits for more output of the running command.
    pub async fn more(
        &mut self,
        ws: &Workspace,
        wait: Wait,
        max_chars: usize,
    ) -> Result<Reply, WorkspaceError> {
        self.collect(ws, wait, max_chars).await
    }

    /// Types `text` and Enter into the running command's stdin.
    pub async fn input(
        &mut self,
        ws: &Workspace,
        text: &str,
        wait: Wait,
        max_chars: usize,
    ) -> Result<Reply, WorkspaceError> {
        let mut line = text.to_string();
        line.push('\n');
        self.write(ws, line.as_bytes()).await?;
        self.collect(ws, wait, max_chars).await
    }

    /// Ctrl-C: SIGINT to the shell's process group.
    pub async fn interrupt(
        &mut self,
        ws: &Workspace,
        wait: Wait,
        max_chars: usize,
    ) -> Result<Reply, WorkspaceError> {
        let pid = self.pid;
        io!(self, ws, s, w => s.interrupt(w, pid).await)?;
        self.collect(ws, wait, max_chars).await
    }

    /// Ctrl-D: ends the shell's input. The running command reads end-of-file;
    /// the shell exits when it next reads a command.
    pub async fn end_input(
        &mut self,
        ws: &Workspace,
        wait: Wait,
        max_chars: usize,
    ) -> Result<Reply, WorkspaceError> {
        if !self.stdin_closed {
            self.stdin_closed = true;
            io!(self, ws, s, _w => s.close_stdin().await)?;
        }
        self.collect(ws, wait, max_chars).await
    }

    /// Whether the shell can no longer take commands (its input was ended).
    pub fn input_closed(&self) -> bool {
        self.stdin_closed
    }

    /// Output that arrived since the last call, without waiting for more than a
    /// moment (for a call refused while a command runs).
    pub async fn drain(
        &mut self,
        ws: &Workspace,
        max_chars: usize,
    ) -> Result<Reply, WorkspaceError> {
        let wait = Wait {
            quiet: Some(DRAIN),
            limit: DRAIN,
        };
        self.collect(ws, wait, max_chars).await
    }

    /// Kills the shell and every process it started.
    pub async fn kill(&mut self, ws: &Workspace) -> Result<(), WorkspaceError> {
        tracing::debug!(pid = ?self.pid, "shell session ended");
        self.running = None;
        io!(self, ws, s, w => s.kill(w).await)
    }

    /// Lines the session sends once: its prompt, no history expansion (`!` in a
    /// command stays literal), nothing that could print before a prompt, and the
    /// helper that hands the command's exit code to the prompt.
    fn init_line(&self, workdir: &str) -> String {
        let m = String::from_utf8_lossy(&self.marker);
        format!(
            "PS2=''; unset PROMPT_COMMAND TMOUT HISTFILE 2>/dev/null; \
             case ${{BASH_VERSION-}} in ?*) set +H ;; esac; \
             __fleet_ret() {{ return \"$1\"; }}; \
             __fleet_ps1='{m}${{__fleet_n}}:$?:$$:${{PWD}}\u{1f}${{__fleet_py-}}{m}'; \
             cd {wd} || cd /; {PYTHON}; __fleet_n=0; PS1=$__fleet_ps1\n",
            wd = sh_quote(workdir),
        )
    }

    async fn write(&mut self, ws: &Workspace, data: &[u8]) -> Result<(), WorkspaceError> {
        if self.stdin_closed {
            return Err(WorkspaceError::Docker(
                "the shell's input was already ended".into(),
            ));
        }
        io!(self, ws, s, _w => s.write(data).await)
    }

    /// Reads until the running command's record, the end of the wait, or the end
    /// of the shell.
    async fn collect(
        &mut self,
        ws: &Workspace,
        wait: Wait,
        max_chars: usize,
    ) -> Result<Reply, WorkspaceError> {
        let mut out = HeadTail::new(max_chars);
        let start = Instant::now();
        let limit_at = start + wait.limit;
        let ceiling_at = self.running.map(|t| t + self.ceiling);
        let mut last_output = start;
        loop {
            if let Some(rec) = scan(&mut self.pending, &self.marker, self.seq, &mut |b| {
                out.push(b)
            }) {
                self.running = None;
                self.pid = Some(rec.pid);
                if !rec.cwd.is_empty() {
                    self.cwd = rec.cwd;
                }
                self.python = rec.python;
                return Ok(reply(
                    out,
                    End::Done {
                        exit_code: rec.exit_code,
                    },
                ));
            }
            if self.eof {
                out.push(&std::mem::take(&mut self.pending));
                let exit_code = io!(self, ws, s, w => Ok(s.exit_code(w).await))?;
                self.running = None;
                return Ok(reply(out, End::Exited { exit_code }));
            }
            let quiet_at = wait.quiet.map(|q| last_output + q);
            let until = [Some(limit_at), ceiling_at, quiet_at]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(limit_at);
            let read =
                tokio::time::timeout_at(until, async { io!(self, ws, s, _w => s.read().await) })
                    .await;
            match read {
                Ok(Ok(Some(bytes))) => {
                    self.pending.extend_from_slice(&bytes);
                    last_output = Instant::now();
                }
                Ok(Ok(None)) => self.eof = true,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    // A shell that exited while a background process holds its
                    // output open never shows end-of-file.
                    let alive = io!(self, ws, s, w => Ok(s.alive(w).await))?;
                    if !alive {
                        self.eof = true;
                        continue;
                    }
                    let now = Instant::now();
                    if ceiling_at.is_some_and(|c| now >= c) {
                        out.push(&std::mem::take(&mut self.pending));
                        self.kill(ws).await?;
                        return Ok(reply(out, End::Ceiling(self.ceiling)));
                    }
                    let end = match wait.quiet {
                        Some(q) if now >= last_output + q && now < limit_at => End::Quiet(q),
                        _ => End::Waited(wait.limit),
                    };
                    return Ok(reply(out, end));
                }
            }
        }
    }
}

fn ws_kind(ws: &Workspace) -> &'static str {
    match ws {
        Workspace::Docker(_) => "docker",
        Workspace::Local(_) => "local",
    }
}

fn reply(out: HeadTail, end: End) -> Reply {
    Reply {
        output: drop_noise(out.finish()),
        end,
    }
}

/// Bash without a terminal complains that it cannot restore terminal settings
/// after a command died of a signal; the line means nothing to the model.
fn drop_noise(output: String) -> String {
    if !output.contains("tcsetattr") {
        return output;
    }
    output
        .split_inclusive('\n')
        .filter(|l| {
            let l = l.trim_end();
            !(l.starts_with("bash: [") && l.ends_with("tcsetattr: Inappropriate ioctl for device"))
        })
        .collect()
}

/// Moves output out of `pending` into `emit`, up to the record of command `want`
/// (returned; the bytes after it stay in `pending`). Records of earlier commands
/// are cut out and skipped; text between markers that is not a record is output.
/// The tail that could still be the start of a marker stays in `pending`.
fn scan(
    pending: &mut Vec<u8>,
    marker: &[u8],
    want: u64,
    emit: &mut dyn FnMut(&[u8]),
) -> Option<Record> {
    loop {
        let Some(i) = memmem::find(pending, marker) else {
            // Held back: only an end of the output that could begin a marker.
            let keep = (1..marker.len().min(pending.len() + 1))
                .rev()
                .find(|&k| pending.ends_with(&marker[..k]))
                .unwrap_or(0);
            let n = pending.len() - keep;
            emit(&pending[..n]);
            pending.drain(..n);
            return None;
        };
        let body = i + marker.len();
        let Some(j) = memmem::find(&pending[body..], marker) else {
            if pending.len() - body > MAX_RECORD {
                // Not a record: the marker alone is output.
                emit(&pending[..body]);
                pending.drain(..body);
                continue;
            }
            emit(&pending[..i]);
            pending.drain(..i);
            return None;
        };
        let end = body + j + marker.len();
        match parse_record(&pending[body..body + j]) {
            Some(rec) if rec.seq == want => {
                emit(&pending[..i]);
                pending.drain(..end);
                return Some(rec);
            }
            Some(rec) if rec.seq < want => {
                emit(&pending[..i]);
                pending.drain(..end);
            }
            _ => {
                emit(&pending[..body]);
                pending.drain(..body);
            }
        }
    }
}

/// `seq:exit code:pid:cwd`, then the python after a unit separator.
fn parse_record(body: &[u8]) -> Option<Record> {
    let text = std::str::from_utf8(body).ok()?;
    let (text, python) = text.rsplit_once('\u{1f}').unwrap_or((text, ""));
    let mut parts = text.splitn(4, ':');
    let seq = parts.next()?.parse().ok()?;
    let exit_code = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    let cwd = parts.next()?.to_string();
    Some(Record {
        seq,
        exit_code,
        pid,
        cwd,
        python: python.to_string(),
    })
}

/// Where the shell's `python` is, for the record (one fork per command).
const PYTHON: &str = "__fleet_py=$(command -v python 2>/dev/null)";

/// Single-quotes `s` for `sh`.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_scan(chunks: &[&[u8]], want: u64) -> (String, Option<Record>, Vec<u8>) {
        let mut pending = Vec::new();
        let mut out = Vec::new();
        let mut rec = None;
        for c in chunks {
            pending.extend_from_slice(c);
            if rec.is_none() {
                rec = scan(&mut pending, b"_M_", want, &mut |b| {
                    out.extend_from_slice(b)
                });
            }
        }
        (String::from_utf8(out).unwrap(), rec, pending)
    }

    #[test]
    fn records_end_their_command_only() {
        let (out, rec, rest) = run_scan(
            &["hello\n_M_3:0:7:/w x:y\u{1f}/bin/py_M_late".as_bytes()],
            3,
        );
        assert_eq!(out, "hello\n");
        assert_eq!(
            rec,
            Some(Record {
                seq: 3,
                exit_code: 0,
                pid: 7,
                cwd: "/w x:y".into(),
                python: "/bin/py".into(),
            })
        );
        assert_eq!(rest, b"late");
        // Split across reads, marker halves included.
        let (out, rec, _) = run_scan(&[b"a_", b"M_4:1", b"30:9:/_M", b"_"], 4);
        assert_eq!(out, "a");
        assert_eq!(rec.unwrap().exit_code, 130);
        // A stale record (an earlier command's) is cut out and skipped.
        let (out, rec, _) = run_scan(&[b"x_M_2:0:7:/_M_y_M_3:5:7:/t_M_"], 3);
        assert_eq!(out, "xy");
        assert_eq!(rec.unwrap().cwd, "/t");
        // Text between markers that is no record is output.
        let (out, rec, _) = run_scan(&[b"_M_${__fleet_n}:$?_M_ done"], 1);
        assert_eq!(out, "_M_${__fleet_n}:$?");
        assert!(rec.is_none());
        // A lone marker with no end is output once it cannot be a record.
        let big = vec![b'z'; MAX_RECORD + 10];
        let (out, rec, rest) = run_scan(&[b"_M_", &big], 1);
        assert!(rec.is_none());
        assert_eq!(out.len() + rest.len(), 3 + big.len());
        assert!(out.starts_with("_M_z"));
    }

    #[test]
    fn bash_noise_is_dropped() {
        let s =
            "a\nbash: [123: 2 (255)] tcsetattr: Inappropriate ioctl for device\nb\n".to_string();
        assert_eq!(drop_noise(s), "a\nb\n");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
