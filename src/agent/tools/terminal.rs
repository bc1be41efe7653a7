//! `terminal`: the model's shell, one persistent session per conversation (the
//! workspace's [`Shell`]): the working directory, variables, functions and
//! aliases carry from one call to the next.
//!
//! A call waits for its command to end, but not forever: without a `timeout`,
//! it returns once the command printed nothing new for the job's
//! `no_output_timeout_secs`; with one, after it. Either way a command still
//! running keeps running (exit code -1 in the observation, which says how to go
//! on): the next call with `is_input` and an empty command waits for more, with
//! text types it in, with `C-c` interrupts it, with `C-d` ends its input. Only at
//! the job's `command_timeout_secs` (counted from the command's start, across
//! calls) is it killed, with its shell. `reset` starts a new shell; a shell that
//! exited (the model ran `exit`) is replaced and the model told.
//!
//! Output is cut in the middle to [`MAX_OUTPUT_CHARS`] per call; secrets are
//! masked by the agent on every observation.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Observation, fatal};
use crate::job::Limits;
use crate::workspace::session::{End, Reply, Shell, Wait};
use crate::workspace::{Workspace, WorkspaceError};

/// Output kept per call (head and tail), as upstream.
pub const MAX_OUTPUT_CHARS: usize = 30_000;

/// How the model may go on with a command that is still running.
const HOW_TO_GO_ON: &str = "To wait for more output, call again with `is_input: true` and an empty `command`; \
to type into the process, send the text with `is_input: true`; to interrupt it, send `C-c` with `is_input: true`; \
for a long command, give a larger `timeout` next time.";

/// Shown before output that continues a command of an earlier call.
const CONTINUED: &str = "[Below is the output of the previous command.]\n";

#[derive(Debug, Clone, Deserialize)]
pub struct Args {
    #[serde(default)]
    pub command: String,
    /// Seconds to wait; capped by the job's `command_timeout_secs`.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub is_input: Option<bool>,
    #[serde(default)]
    pub reset: Option<bool>,
}

/// The terminal's schema (OpenAI `tools` format).
pub fn schema() -> Value {
    json!({"type": "function", "function": {
        "name": "terminal",
        "description": "Run a command in a persistent shell session in the workspace and get its output, exit code \
    and working directory.\n\
    * One shell for the whole task: the working directory, variables, functions and aliases carry over between calls.\n\
    * A call without `timeout` returns when the command prints nothing new for 30 seconds (the job may set another \
    value); with `timeout`, after that many seconds. A command that is still running keeps running: its observation \
    says so (exit code -1). Then call with `is_input: true` and an empty `command` to wait for more output, with text to \
    type it into the process, or with `C-c` / `C-d` to interrupt it / end its input.\n\
    * Only one command runs at a time. Run servers in the background (`cmd > /tmp/log 2>&1 &`).\n\
    * Output longer than 30,000 characters is cut in the middle.\n\
    * `reset: true` starts a new shell (everything set in the old one is lost).",
        "parameters": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The shell command to run; several commands may be joined with `&&` or `;`. With `is_input: true`: the text to send to the running command, empty to wait for more of its output, or `C-c` (interrupt), `C-d` (end of input)."},
                "is_input": {"type": "boolean", "description": "If true, `command` goes to the command that is still running instead of the shell. Default false."},
                "timeout": {"type": "number", "description": "Optional. Seconds to wait for the command before the call returns (the command keeps running). Give one for long commands such as installs or test suites. Capped by the job's limit for one command."},
                "reset": {"type": "boolean", "description": "If true, kill the shell (and what runs in it) and start a new one. Use only when the terminal is unusable. Cannot be combined with `is_input`."}
            },
            "required": ["command"]
        }
    }})
}

/// The terminal of one conversation.
pub struct Terminal {
    shell: Option<Shell>,
    workdir: String,
    /// The working directory last reported by the shell.
    cwd: String,
    /// Said with the next observation (the shell was replaced).
    notice: Option<String>,
}

/// What the call asked the running command for.
enum Continue<'a> {
    Wait,
    Text(&'a str),
    Interrupt,
    EndInput,
}

impl Terminal {
    pub fn new(workspace: &Workspace) -> Terminal {
        let workdir = workspace.workdir().to_string();
        Terminal {
            shell: None,
            cwd: workdir.clone(),
            workdir,
            notice: None,
        }
    }

    /// The conversation's shell, for the workspace to keep once the agent is
    /// done (see [`Workspace::park_shell`]).
    pub fn take_shell(&mut self) -> Option<Shell> {
        self.shell.take()
    }

    /// The directory the next command starts in.
    pub fn cwd(&self) -> &str {
        &self.cwd
    }

    /// Runs one call. `Err` only when the workspace is gone.
    pub async fn call(
        &mut self,
        ws: &Workspace,
        limits: &Limits,
        args: Args,
    ) -> Result<Observation, WorkspaceError> {
        match self.call_inner(ws, limits, args).await {
            Err(e) if !fatal(&e) => Ok(Observation::error(format!(
                "ERROR: the command could not be run: {e}"
            ))),
            other => other,
        }
    }

    async fn call_inner(
        &mut self,
        ws: &Workspace,
        limits: &Limits,
        args: Args,
    ) -> Result<Observation, WorkspaceError> {
        let is_input = args.is_input == Some(true);
        let command = args.command.trim();
        if args.reset == Some(true) {
            if is_input {
                return Ok(Observation::error(
                    "ERROR: `reset` cannot be combined with `is_input`: a reset ends the running command with its shell.",
                ));
            }
            self.end_shell(ws).await?;
            let note = format!(
                "[The terminal was reset: a new shell runs in {}; variables, functions and background processes of \
                 the old one are gone.]",
                self.workdir
            );
            if command.is_empty() {
                self.notice = None;
                return Ok(Observation::ok(note));
            }
            self.notice = Some(note);
        }
        let wait = wait_for(args.timeout, limits);
        let running = self.shell.as_ref().is_some_and(Shell::running);

        if is_input || (running && command.is_empty()) {
            if !running {
                return Ok(Observation::error(if command.is_empty() {
                    "ERROR: No command is running, so there is no more output to wait for."
                } else {
                    "ERROR: No command is running to send input to. Run it as a command (without `is_input`)."
                }));
            }
            let how = match key(command) {
                Some(Ok(k)) => k,
                Some(Err(msg)) => return Ok(Observation::error(msg)),
                None if command.is_empty() => Continue::Wait,
                None => Continue::Text(command),
            };
            let shell = self.shell.as_mut().expect("a running command has a shell");
            let reply = match how {
                Continue::Wait => shell.more(ws, wait, MAX_OUTPUT_CHARS).await?,
                Continue::Text(t) => shell.input(ws, t, wait, MAX_OUTPUT_CHARS).await?,
                Continue::Interrupt => shell.interrupt(ws, wait, MAX_OUTPUT_CHARS).await?,
                Continue::EndInput => shell.end_input(ws, wait, MAX_OUTPUT_CHARS).await?,
            };
            let sent = match how {
                Continue::Interrupt => " CTRL+C was sent.",
                Continue::EndInput => " CTRL+D was sent.",
                _ => "",
            };
            return self.observe(ws, reply, CONTINUED, sent).await;
        }
        if command.is_empty() {
            return Ok(Observation::error(
                "ERROR: No command was given. Pass the shell command to run in `command`.",
            ));
        }
        if running {
            let shell = self.shell.as_mut().expect("a running command has a shell");
            let drained = shell.drain(ws, MAX_OUTPUT_CHARS).await?;
            match &drained.end {
                // It ended just now: say so with the new command's observation.
                End::Done { exit_code } => {
                    let mut note = with_output(CONTINUED, &drained.output);
                    note.push_str(&format!(
                        "[The previous command completed with exit code {exit_code}; then this command ran.]"
                    ));
                    self.notice = Some(note);
                }
                end if end.session_over() => return self.observe(ws, drained, CONTINUED, "").await,
                _ => {
                    let mut content = with_output(CONTINUED, &drained.output);
                    content.push_str(&format!(
                        "[The command {command:?} was NOT run: the previous command is still running, and only \
                         one runs at a time. {HOW_TO_GO_ON}]"
                    ));
                    return Ok(Observation {
                        content,
                        exit_code: Some(-1),
                        is_error: true,
                        timed_out: false,
                    });
                }
            }
        }
        // A shell whose input was ended (C-d) takes no more commands.
        if self.shell.as_ref().is_some_and(Shell::input_closed) {
            self.end_shell(ws).await?;
            self.notice = Some(format!(
                "[The shell's input was ended with C-d earlier, so this command runs in a new shell in {}.]",
                self.workdir
            ));
        }
        if self.shell.is_none() {
            let ceiling = Duration::from_secs(limits.command_timeout_secs.max(1));
            self.cwd = self.workdir.clone();
            self.shell = Some(Shell::open(ws, ceiling).await?);
        }
        let shell = self.shell.as_mut().expect("opened above");
        let reply = shell.run(ws, command, wait, MAX_OUTPUT_CHARS).await?;
        self.observe(ws, reply, "", "").await
    }

    /// Turns a reply into the observation (upstream's layout), and drops a shell
    /// that is over.
    async fn observe(
        &mut self,
        ws: &Workspace,
        reply: Reply,
        prefix: &str,
        sent: &str,
    ) -> Result<Observation, WorkspaceError> {
        let mut content = self.notice.take().map(|n| n + "\n").unwrap_or_default();
        // As upstream: only output that continues a command still running is
        // marked as such.
        let prefix = if reply.end.still_running() {
            prefix
        } else {
            ""
        };
        content.push_str(&with_output(prefix, &reply.output));
        let (exit_code, still_running) = match reply.end {
            End::Done { exit_code } => {
                if let Some(s) = &self.shell {
                    self.cwd = s.cwd().to_string();
                }
                content.push_str(&format!(
                    "[The command completed with exit code {exit_code}.{sent}]"
                ));
                (Some(exit_code), false)
            }
            End::Quiet(d) => {
                content.push_str(&format!(
                    "[The command has printed nothing new for {} seconds and is still running.{sent} {HOW_TO_GO_ON}]",
                    show_secs(d)
                ));
                (Some(-1), true)
            }
            End::Waited(d) => {
                content.push_str(&format!(
                    "[The command is still running after the {} seconds waited for it.{sent} {HOW_TO_GO_ON}]",
                    show_secs(d)
                ));
                (Some(-1), true)
            }
            End::Ceiling(d) => {
                content.push_str(&format!(
                    "[The command ran for {} seconds, the job's limit for one command, and was stopped together \
                     with its shell. The next command starts in a new shell in {}: variables and functions set \
                     earlier are gone.]",
                    show_secs(d),
                    self.workdir
                ));
                (None, true)
            }
            End::Exited { exit_code } => {
                let code = exit_code.map_or("unknown".to_string(), |c| c.to_string());
                content.push_str(&format!(
                    "[The shell exited (exit code {code}). The next command starts in a new shell in {}: \
                     variables and functions set earlier are gone.]",
                    self.workdir
                ));
                (exit_code, false)
            }
        };
        if reply.end.session_over() {
            self.end_shell(ws).await?;
        } else if let (Some(code), false) = (exit_code, still_running) {
            content.push_str(&format!("\n[Current working directory: {}]", self.cwd));
            if let Some(python) = self.shell.as_ref().and_then(Shell::python) {
                content.push_str(&format!("\n[Python interpreter: {python}]"));
            }
            content.push_str(&format!("\n[Command finished with exit code {code}]"));
        }
        Ok(Observation {
            content,
            exit_code,
            is_error: false,
            timed_out: still_running,
        })
    }

    async fn end_shell(&mut self, ws: &Workspace) -> Result<(), WorkspaceError> {
        if let Some(mut s) = self.shell.take() {
            s.kill(ws).await?;
        }
        self.cwd = self.workdir.clone();
        Ok(())
    }
}

/// `prefix` and the output, ending in a newline when there is any.
fn with_output(prefix: &str, output: &str) -> String {
    let output = output.trim_end_matches(['\n', '\r']);
    if output.is_empty() {
        return String::new();
    }
    format!("{prefix}{output}\n")
}

/// How long the call waits: the model's `timeout` (capped by the job's
/// ceiling), or until the command goes quiet.
fn wait_for(asked: Option<f64>, limits: &Limits) -> Wait {
    let cap = limits.command_timeout_secs.max(1) as f64;
    match asked.filter(|t| t.is_finite() && *t > 0.0) {
        Some(t) => Wait {
            quiet: None,
            limit: Duration::from_secs_f64(t.min(cap)),
        },
        None => Wait {
            quiet: Some(Duration::from_secs(limits.no_output_timeout_secs.max(1))),
            limit: Duration::from_secs_f64(cap),
        },
    }
}

/// A key (`C-c`, …) sent with `is_input`: `None` when `command` is no key.
fn key(command: &str) -> Option<Result<Continue<'static>, String>> {
    let k = command
        .strip_prefix("C-")
        .or_else(|| command.strip_prefix("c-"))?;
    if k.chars().count() != 1 {
        return None;
    }
    Some(match k.to_ascii_lowercase().as_str() {
        "c" => Ok(Continue::Interrupt),
        "d" => Ok(Continue::EndInput),
        "z" => Err("ERROR: C-z is not available: this shell has no job control, so a command cannot be suspended. \
                    Interrupt it with C-c, or start long commands in the background with `&`."
            .to_string()),
        _ => Err(format!(
            "ERROR: {command} is not a key this terminal can send; it sends C-c (interrupt) and C-d (end of input)."
        )),
    })
}

fn show_secs(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{secs:.0}")
    } else {
        format!("{secs}")
    }
}

#[cfg(test)]
#[path = "terminal_tests.rs"]
mod tests;
