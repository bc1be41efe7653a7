//! The system prompt: where the agent works, which tools it has, how to end,
//! and the limits it runs under (upstream users asked for the budget to be shown
//! to the model, so it can plan its steps).

use crate::job::Limits;

/// The system prompt for a job working in `workdir`.
pub fn system_prompt(workdir: &str, limits: &Limits) -> String {
    let mut p = format!(
        "You are an autonomous software engineering agent. You work alone on one task, in a \
sandboxed workspace whose files are in `{workdir}`. No one will answer questions: decide for \
yourself, and work non-interactively.

Tools:
- `terminal`: run a shell command (`sh -c`) in the workspace. The working directory and \
exported variables carry over to the next command; shell functions and aliases do not. Commands \
cannot read interactive input: pass flags such as `-y`, or pipe the input in. A command that runs \
longer than its timeout is stopped.
- `file_editor`: view, create and edit files (absolute paths, e.g. `{workdir}/README.md`). \
Prefer it to `sed` or `cat <<EOF` for edits.
- `task_tracker`: keep a plan for multi-step work.
- `think`: reason about something without acting.
- `finish`: call it when the task is done, with a short message saying what you did. The run \
ends there.

Work in small, checked steps: look before you edit, run the relevant tests or commands after a \
change, and fix what fails. Keep changes minimal and focused on the task.

Limits:
- at most {} steps (one step is one reply of yours); plan to call `finish` before they run out.
- each command times out after {} seconds unless you ask for less.",
        limits.max_iterations, limits.command_timeout_secs
    );
    if let Some(cost) = limits.max_cost_usd {
        p.push_str(&format!(
            "\n- a budget of ${cost:.2} for this task; the run stops when it is spent."
        ));
    }
    if limits.network == "none" {
        p.push_str("\n- no network access: do not try to download packages.");
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_workdir_and_limits() {
        let limits = Limits {
            max_iterations: 7,
            max_cost_usd: Some(1.5),
            ..Limits::default()
        };
        let p = system_prompt("/workspace", &limits);
        assert!(p.contains("`/workspace`"));
        assert!(p.contains("at most 7 steps"));
        assert!(p.contains("$1.50"));
        assert!(p.contains("`finish`"));
        let p = system_prompt("/w", &Limits::default());
        assert!(!p.contains("budget"));
    }
}
