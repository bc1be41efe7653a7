//! `terminal`: runs a command in the workspace with `sh -c`.
//!
//! Each call is a fresh shell, so the state a model expects to carry over is kept
//! in files of the workspace: the exported variables (`export -p`, written at the
//! end of each command and sourced at the start of the next) and the working
//! directory (printed after a unique marker line at the end of the output, parsed
//! off and remembered). Shell functions, aliases and unexported variables do not
//! carry over. The script uses shell builtins only, and its state file lies
//! outside the workdir (so it never shows in the patch) and goes with the
//! workspace.
//!
//! Output is cut in the middle to [`MAX_OUTPUT_CHARS`] by the workspace. A command
//! that outlives its timeout is killed (upstream leaves it running) and the
//! observation says so, with what it printed.

use std::time::Duration;

use serde::Deserialize;

use super::{Observation, fatal};
use crate::job::Limits;
use crate::workspace::{Workspace, WorkspaceError};

/// Output kept per command (head and tail), as upstream.
pub const MAX_OUTPUT_CHARS: usize = 30_000;

#[derive(Debug, Clone, Deserialize)]
pub struct Args {
    pub command: String,
    /// Seconds; capped by the job's `command_timeout_secs`.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub is_input: Option<bool>,
}

/// The terminal of one conversation.
pub struct Terminal {
    workdir: String,
    /// The file the exported variables are saved to between commands.
    env_file: String,
    cwd: String,
    /// Starts the line that reports exit code and directory; unique per run so a
    /// command's own output cannot fake it.
    marker: String,
}

impl Terminal {
    pub fn new(workspace: &Workspace) -> Terminal {
        let workdir = workspace.workdir().to_string();
        // A plain file in an existing directory: saving it needs no `mkdir`, so
        // an image with nothing but `sh` keeps its variables too.
        let env_file = match workspace {
            // A container is the job's own: its /tmp is private and goes with it.
            Workspace::Docker(_) => "/tmp/.fleet-terminal-env".to_string(),
            // A local workdir sits in the job directory, deleted on destroy.
            Workspace::Local(_) => match std::path::Path::new(&workdir)
                .parent()
                .and_then(|p| p.to_str())
            {
                Some(parent) if parent != "/" => format!("{parent}/.fleet-terminal-env"),
                _ => format!("/tmp/.fleet-terminal-env-{}", uuid::Uuid::new_v4().simple()),
            },
        };
        let marker = format!("__FLEET_CMD_END_{}__", uuid::Uuid::new_v4().simple());
        Terminal {
            cwd: workdir.clone(),
            workdir,
            env_file,
            marker,
        }
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
        if args.is_input == Some(true) {
            return Ok(Observation::error(
                "Interactive input (`is_input: true`) is not supported: every command runs to completion (or \
                 until its timeout) in a fresh shell, and no process is left waiting for input. Run commands \
                 non-interactively instead: pass flags such as `-y`, or pipe the input in (e.g. `printf 'y\\n' | cmd`).",
            ));
        }
        if args.command.trim().is_empty() {
            return Ok(Observation::error(
                "ERROR: No command was given. Pass the shell command to run in `command`.",
            ));
        }
        let secs = timeout_secs(args.timeout, limits.command_timeout_secs);
        let script = self.script(&args.command);
        let out = match ws
            .exec(
                &script,
                &self.workdir,
                Duration::from_secs_f64(secs),
                MAX_OUTPUT_CHARS,
            )
            .await
        {
            Ok(out) => out,
            Err(e) if fatal(&e) => return Err(e),
            Err(e) => {
                return Ok(Observation::error(format!(
                    "ERROR: the command could not be run: {e}"
                )));
            }
        };
        let (output, trailer) = split_trailer(&out.output, &self.marker);
        let exit_code = match trailer {
            Some((code, cwd)) => {
                if !cwd.is_empty() {
                    self.cwd = cwd;
                }
                Some(code)
            }
            None => out.exit_code,
        };
        let mut content = output.trim_end_matches('\n').to_string();
        if !content.is_empty() {
            content.push('\n');
        }
        if out.timed_out {
            let printed = if content.is_empty() {
                " before printing anything"
            } else {
                "; the output above is what it printed until then"
            };
            content.push_str(&format!(
                "[The command timed out after {} seconds and was stopped{printed}. For a longer task, start it \
                 in the background with its output sent to a file, and check on it with later commands.]",
                show_secs(secs),
            ));
        } else {
            match exit_code {
                Some(code) => {
                    content.push_str(&format!("[The command completed with exit code {code}.]"))
                }
                None => content.push_str("[The command completed; its exit code is unknown.]"),
            }
        }
        content.push_str(&format!("\n[Current working directory: {}]", self.cwd));
        Ok(Observation {
            content,
            exit_code: if out.timed_out { None } else { exit_code },
            is_error: false,
            timed_out: out.timed_out,
        })
    }

    /// The script run for `command`: restore state, run it in this shell (so `cd`
    /// and `export` take effect), save state, report exit code and directory.
    fn script(&self, command: &str) -> String {
        format!(
            "__fleet_env={env}\n\
             if [ -r \"$__fleet_env\" ]; then . \"$__fleet_env\" >/dev/null 2>&1; fi\n\
             cd {cwd} 2>/dev/null || cd {workdir} 2>/dev/null\n\
             eval {command}\n\
             __fleet_ec=$?\n\
             (umask 077 && export -p > \"$__fleet_env\") 2>/dev/null\n\
             printf '\\n%s %s %s\\n' {marker} \"$__fleet_ec\" \"$(pwd)\"\n\
             exit \"$__fleet_ec\"\n",
            env = sh_quote(&self.env_file),
            cwd = sh_quote(&self.cwd),
            workdir = sh_quote(&self.workdir),
            command = sh_quote(command),
            marker = sh_quote(&self.marker),
        )
    }
}

/// The command's timeout: the model's, capped by the job's; the job's when the
/// model gives none (or nonsense).
fn timeout_secs(asked: Option<f64>, job_secs: u64) -> f64 {
    let cap = job_secs.max(1) as f64;
    asked
        .filter(|t| t.is_finite() && *t > 0.0)
        .map_or(cap, |t| t.min(cap))
}

fn show_secs(secs: f64) -> String {
    if secs.fract() == 0.0 {
        format!("{secs:.0}")
    } else {
        format!("{secs}")
    }
}

/// Single-quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Splits the marker line off the output: (output without it, (exit code, cwd)).
/// Anything printed after the marker line (a background process) stays in the
/// output. Without a marker line (the shell exited early, or was killed), the
/// output is returned whole.
fn split_trailer(output: &str, marker: &str) -> (String, Option<(i64, String)>) {
    let needle = format!("\n{marker} ");
    let Some(at) = output.rfind(&needle) else {
        return (output.to_string(), None);
    };
    let rest = &output[at + needle.len()..];
    let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
    let Some((code, cwd)) = line.split_once(' ') else {
        return (output.to_string(), None);
    };
    let Ok(code) = code.trim().parse::<i64>() else {
        return (output.to_string(), None);
    };
    (
        format!("{}{after}", &output[..at]),
        Some((code, cwd.to_string())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::local::LocalBackend;
    use crate::workspace::{Backend, WorkspaceSpec};

    pub(crate) async fn local_workspace(root: &std::path::Path) -> Workspace {
        let spec = WorkspaceSpec {
            job_id: "t".into(),
            attempt: 1,
            worker_id: "w".into(),
            image: "none".into(),
            workdir: "/workspace".into(),
            env: [("FLEET_TEST_VAR".to_string(), "from-env".to_string())].into(),
            memory_mb: 512,
            cpus: 1.0,
            pids: 64,
            network: "none".into(),
            user: None,
            read_only_root: false,
            disk_mb: None,
        };
        Backend::Local(LocalBackend::new(root.to_path_buf()))
            .start(&spec)
            .await
            .expect("local workspace")
    }

    fn args(command: &str) -> Args {
        Args {
            command: command.into(),
            timeout: None,
            is_input: None,
        }
    }

    #[test]
    fn trailer_is_parsed_off() {
        let m = "__M__";
        assert_eq!(
            split_trailer("hi\n__M__ 3 /w/x\n", m),
            ("hi".to_string(), Some((3, "/w/x".to_string())))
        );
        assert_eq!(
            split_trailer("\n__M__ 0 /w\n", m),
            (String::new(), Some((0, "/w".to_string())))
        );
        assert_eq!(
            split_trailer("a\n\n__M__ 0 /w\nlate\n", m),
            ("a\nlate\n".to_string(), Some((0, "/w".to_string())))
        );
        assert_eq!(
            split_trailer("no marker", m),
            ("no marker".to_string(), None)
        );
        assert_eq!(timeout_secs(Some(5.0), 120), 5.0);
        assert_eq!(timeout_secs(Some(500.0), 120), 120.0);
        assert_eq!(timeout_secs(Some(f64::NAN), 120), 120.0);
        assert_eq!(timeout_secs(None, 7), 7.0);
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[tokio::test]
    async fn cwd_and_exports_persist() {
        let root = tempfile::tempdir().unwrap();
        let ws = local_workspace(root.path()).await;
        let limits = Limits::default();
        let mut t = Terminal::new(&ws);
        let wd = ws.workdir().to_string();

        let o = t
            .call(
                &ws,
                &limits,
                args("mkdir -p sub && cd sub && export GREETING='it'\"'\"'s me'"),
            )
            .await
            .unwrap();
        assert_eq!(o.exit_code, Some(0), "{}", o.content);
        assert_eq!(
            o.content,
            format!(
                "[The command completed with exit code 0.]\n[Current working directory: {wd}/sub]"
            )
        );
        let o = t
            .call(
                &ws,
                &limits,
                args("pwd; echo \"$GREETING\"; echo $FLEET_TEST_VAR"),
            )
            .await
            .unwrap();
        assert_eq!(
            o.content,
            format!(
                "{wd}/sub\nit's me\nfrom-env\n[The command completed with exit code 0.]\n[Current working directory: {wd}/sub]"
            )
        );
        let o = t
            .call(&ws, &limits, args("echo oops >&2; false"))
            .await
            .unwrap();
        assert_eq!(o.exit_code, Some(1));
        assert!(!o.is_error);
        assert!(
            o.content
                .starts_with("oops\n[The command completed with exit code 1.]"),
            "{}",
            o.content
        );
        // `exit` ends the shell early: the code still comes through, the cwd stays.
        let o = t.call(&ws, &limits, args("cd /; exit 3")).await.unwrap();
        assert_eq!(o.exit_code, Some(3));
        assert!(
            o.content
                .ends_with(&format!("[Current working directory: {wd}/sub]")),
            "{}",
            o.content
        );
        // Nothing leaks into the workdir.
        let snap = ws.snapshot(&wd, 1024, 1 << 20).await.unwrap();
        assert_eq!(
            snap.files.len(),
            0,
            "{:?}",
            snap.files.keys().collect::<Vec<_>>()
        );
        ws.destroy().await.unwrap();
    }

    #[tokio::test]
    async fn timeout_stops_the_command_and_keeps_its_output() {
        let root = tempfile::tempdir().unwrap();
        let ws = local_workspace(root.path()).await;
        let limits = Limits {
            command_timeout_secs: 30,
            ..Limits::default()
        };
        let mut t = Terminal::new(&ws);
        let o = t
            .call(
                &ws,
                &limits,
                Args {
                    command: "echo started; sleep 20".into(),
                    timeout: Some(0.5),
                    is_input: None,
                },
            )
            .await
            .unwrap();
        assert!(o.timed_out);
        assert_eq!(o.exit_code, None);
        assert!(
            o.content
                .starts_with("started\n[The command timed out after 0.5 seconds"),
            "{}",
            o.content
        );
        ws.destroy().await.unwrap();
    }

    #[tokio::test]
    async fn interactive_input_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let ws = local_workspace(root.path()).await;
        let mut t = Terminal::new(&ws);
        let o = t
            .call(
                &ws,
                &Limits::default(),
                Args {
                    command: "y".into(),
                    timeout: None,
                    is_input: Some(true),
                },
            )
            .await
            .unwrap();
        assert!(o.is_error);
        assert!(o.content.contains("not supported"));
        ws.destroy().await.unwrap();
    }
}
