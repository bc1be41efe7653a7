//! The terminal against a local workspace: a real shell session on the host.
//! (The same behaviour in Docker is tested in tests/it/shell.rs.)

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
        reset: None,
    }
}

fn input(command: &str) -> Args {
    Args {
        is_input: Some(true),
        ..args(command)
    }
}

fn quick() -> Limits {
    Limits {
        no_output_timeout_secs: 1,
        command_timeout_secs: 60,
        ..Limits::default()
    }
}

#[test]
fn waits_and_keys() {
    let l = Limits::default();
    assert_eq!(wait_for(Some(5.0), &l).limit, Duration::from_secs(5));
    assert_eq!(wait_for(Some(5.0), &l).quiet, None);
    assert_eq!(
        wait_for(Some(5000.0), &l).limit,
        Duration::from_secs(l.command_timeout_secs)
    );
    assert_eq!(
        wait_for(Some(f64::NAN), &l).quiet,
        Some(Duration::from_secs(30))
    );
    assert_eq!(wait_for(None, &l).quiet, Some(Duration::from_secs(30)));
    assert!(matches!(key("C-c"), Some(Ok(Continue::Interrupt))));
    assert!(matches!(key("C-D"), Some(Ok(Continue::EndInput))));
    assert!(matches!(key("C-z"), Some(Err(_))));
    assert!(key("C-cat").is_none() && key("ls").is_none());
    let schema = schema();
    let names: Vec<&str> = schema["function"]["parameters"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, ["command", "is_input", "reset", "timeout"]);
}

#[tokio::test]
async fn shell_state_persists_between_calls() {
    let root = tempfile::tempdir().unwrap();
    let ws = local_workspace(root.path()).await;
    let limits = Limits::default();
    let mut t = Terminal::new(&ws);
    let wd = ws.workdir().to_string();

    let o = t
        .call(
            &ws,
            &limits,
            args("greet() { echo \"hi $1\"; }; secret='it'\"'\"'s me'; mkdir -p sub && cd sub"),
        )
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(0), "{}", o.content);
    assert!(
        o.content.starts_with(&format!(
            "[The command completed with exit code 0.]\n[Current working directory: {wd}/sub]\n"
        )) && o.content.ends_with("\n[Command finished with exit code 0]"),
        "{}",
        o.content
    );
    // A function and an unexported variable of the call before; the job's env.
    let o = t
        .call(
            &ws,
            &limits,
            args("greet you; echo \"$secret\"; echo $FLEET_TEST_VAR; pwd"),
        )
        .await
        .unwrap();
    assert!(
        o.content.starts_with(&format!(
            "hi you\nit's me\nfrom-env\n{wd}/sub\n[The command completed with exit code 0.]\n[Current working directory: {wd}/sub]\n"
        )),
        "{}",
        o.content
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
    // A heredoc, `!` and quotes reach the shell as written; binary output is no
    // problem.
    let o = t
        .call(
            &ws,
            &limits,
            args("cat <<'EOF'\na \"b\" !c $d\nEOF\nprintf 'x\\000\\377y\\n'"),
        )
        .await
        .unwrap();
    assert!(
        o.content.starts_with("a \"b\" !c $d\nx\0\u{FFFD}y\n"),
        "{:?}",
        o.content
    );
    // `exit` ends the shell: the model is told, and the next call gets a new one.
    let o = t.call(&ws, &limits, args("cd /; exit 3")).await.unwrap();
    assert_eq!(o.exit_code, Some(3));
    assert!(
        o.content.contains("The shell exited (exit code 3)"),
        "{}",
        o.content
    );
    let o = t
        .call(
            &ws,
            &limits,
            args("pwd; type greet >/dev/null 2>&1 || echo gone"),
        )
        .await
        .unwrap();
    assert!(
        o.content.starts_with(&format!("{wd}\ngone\n")),
        "{}",
        o.content
    );
    // Nothing of the session lands in the workdir.
    let snap = ws.snapshot(&wd, 1024, 1 << 20).await.unwrap();
    assert!(
        snap.files.keys().all(|k| k.starts_with("sub")),
        "{:?}",
        snap.files.keys()
    );
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn a_quiet_command_keeps_running_and_can_be_awaited() {
    let root = tempfile::tempdir().unwrap();
    let ws = local_workspace(root.path()).await;
    let limits = quick();
    let mut t = Terminal::new(&ws);
    let o = t
        .call(
            &ws,
            &limits,
            args("echo started; sleep 2; echo finished; (exit 4)"),
        )
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(-1), "{}", o.content);
    assert!(o.timed_out);
    assert!(
        o.content.starts_with(
            "started\n[The command has printed nothing new for 1 seconds and is still running."
        ),
        "{}",
        o.content
    );
    // A new command is refused while one runs.
    let o = t.call(&ws, &limits, args("echo other")).await.unwrap();
    assert!(
        o.is_error && o.content.contains("was NOT run"),
        "{}",
        o.content
    );
    let o = t
        .call(
            &ws,
            &limits,
            Args {
                timeout: Some(10.0),
                ..input("")
            },
        )
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(4), "{}", o.content);
    assert!(
        o.content
            .starts_with("finished\n[The command completed with exit code 4.]"),
        "{}",
        o.content
    );
    // Nothing runs now: waiting for more is an error.
    let o = t.call(&ws, &limits, input("")).await.unwrap();
    assert!(o.is_error, "{}", o.content);
    // With a timeout, the call waits that long and no quiet spell ends it early.
    let o = t
        .call(
            &ws,
            &limits,
            Args {
                timeout: Some(3.0),
                ..args("sleep 2; echo late")
            },
        )
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(0), "{}", o.content);
    assert!(o.content.starts_with("late\n"), "{}", o.content);
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn input_reaches_the_running_command() {
    let root = tempfile::tempdir().unwrap();
    let ws = local_workspace(root.path()).await;
    let limits = quick();
    let mut t = Terminal::new(&ws);
    let o = t
        .call(
            &ws,
            &limits,
            args("printf 'name? '; read name; echo \"hello $name\""),
        )
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(-1), "{}", o.content);
    let o = t.call(&ws, &limits, input("world")).await.unwrap();
    assert_eq!(o.exit_code, Some(0), "{}", o.content);
    assert!(o.content.contains("hello world"), "{}", o.content);
    // C-d ends the input of a reader; the next command gets a new shell.
    let o = t
        .call(&ws, &limits, args("cat; echo cat-ended"))
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(-1), "{}", o.content);
    let o = t.call(&ws, &limits, input("C-d")).await.unwrap();
    assert!(o.content.contains("cat-ended"), "{}", o.content);
    let o = t.call(&ws, &limits, args("echo again")).await.unwrap();
    assert!(
        o.content.contains("new shell") && o.content.contains("again\n"),
        "{}",
        o.content
    );
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn ctrl_c_stops_the_command_and_the_shell_lives_on() {
    let root = tempfile::tempdir().unwrap();
    let ws = local_workspace(root.path()).await;
    let limits = quick();
    let mut t = Terminal::new(&ws);
    let wd = ws.workdir().to_string();
    t.call(&ws, &limits, args("kept=yes")).await.unwrap();
    for command in [
        "sleep 30; touch after-sleep",
        "while :; do :; done; touch after-loop",
    ] {
        let o = t.call(&ws, &limits, args(command)).await.unwrap();
        assert_eq!(o.exit_code, Some(-1), "{}", o.content);
        let started = std::time::Instant::now();
        let o = t.call(&ws, &limits, input("C-c")).await.unwrap();
        assert_eq!(o.exit_code, Some(130), "{command}: {}", o.content);
        assert!(o.content.contains("CTRL+C was sent"), "{}", o.content);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // The rest of each command line was abandoned, as in a terminal.
    assert!(!std::path::Path::new(&wd).join("after-sleep").exists());
    assert!(!std::path::Path::new(&wd).join("after-loop").exists());
    let o = t.call(&ws, &limits, args("echo $kept")).await.unwrap();
    assert!(o.content.starts_with("yes\n"), "{}", o.content);
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn the_job_ceiling_kills_a_command_with_its_shell() {
    let root = tempfile::tempdir().unwrap();
    let ws = local_workspace(root.path()).await;
    let limits = Limits {
        command_timeout_secs: 2,
        no_output_timeout_secs: 1,
        ..Limits::default()
    };
    let mut t = Terminal::new(&ws);
    let wd = ws.workdir().to_string();
    let o = t
        .call(
            &ws,
            &limits,
            args("sleep 2 & echo begun; sleep 30; touch never"),
        )
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(-1), "{}", o.content);
    // The model asks for more than the ceiling: it gets the ceiling.
    let o = t
        .call(
            &ws,
            &limits,
            Args {
                timeout: Some(100.0),
                ..input("")
            },
        )
        .await
        .unwrap();
    assert!(o.timed_out && o.exit_code.is_none(), "{}", o.content);
    assert!(
        o.content.contains("the job's limit for one command"),
        "{}",
        o.content
    );
    let o = t.call(&ws, &limits, args("echo fresh")).await.unwrap();
    assert!(o.content.starts_with("fresh\n"), "{}", o.content);
    assert!(!std::path::Path::new(&wd).join("never").exists());
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn hostile_commands_cannot_confuse_the_session() {
    let root = tempfile::tempdir().unwrap();
    let ws = local_workspace(root.path()).await;
    let limits = quick();
    let mut t = Terminal::new(&ws);
    // Printing the prompt template shows it; forging the current record ends the
    // forger's own call early, and the real record is then skipped.
    let o = t
        .call(&ws, &limits, args("echo \"$PS1\" | wc -c"))
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(0), "{}", o.content);
    let o = t
        .call(
            &ws,
            &limits,
            args("eval \"printf '%s' \\\"$PS1\\\"\"; sleep 1; echo tail"),
        )
        .await
        .unwrap();
    assert!(o.exit_code.is_some(), "{}", o.content);
    let o = t
        .call(
            &ws,
            &limits,
            Args {
                timeout: Some(10.0),
                ..args("echo next; (exit 7)")
            },
        )
        .await
        .unwrap();
    assert!(o.content.contains("tail\nnext\n"), "{}", o.content);
    assert_eq!(o.exit_code, Some(7), "{}", o.content);
    // A background process holding the output open does not hide the shell's end.
    let o = t
        .call(&ws, &limits, args("sleep 60 & exit 5"))
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(5), "{}", o.content);
    // `reset` after `exec` replaced the shell with a silent process.
    let o = t.call(&ws, &limits, args("exec sleep 60")).await.unwrap();
    assert_eq!(o.exit_code, Some(-1), "{}", o.content);
    let o = t
        .call(
            &ws,
            &limits,
            Args {
                reset: Some(true),
                ..args("echo after-reset")
            },
        )
        .await
        .unwrap();
    assert!(
        o.content.contains("terminal was reset") && o.content.contains("after-reset\n"),
        "{}",
        o.content
    );
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn a_command_that_ended_between_calls_lets_the_next_one_run() {
    let root = tempfile::tempdir().unwrap();
    let ws = local_workspace(root.path()).await;
    let limits = quick();
    let mut t = Terminal::new(&ws);
    let o = t
        .call(&ws, &limits, args("echo a; sleep 1.5; echo b"))
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(-1), "{}", o.content);
    // It ends while nobody waits for it; a new command then runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let o = t.call(&ws, &limits, args("echo new")).await.unwrap();
    assert_eq!(o.exit_code, Some(0), "{}", o.content);
    assert!(
        o.content.starts_with(
            "[Below is the output of the previous command.]\nb\n[The previous command completed with exit code 0; \
             then this command ran.]\nnew\n"
        ),
        "{}",
        o.content
    );
    ws.destroy().await.unwrap();
}
