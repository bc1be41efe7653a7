//! `task_tracker`: the model's plan for multi-step work. `plan` replaces the list,
//! `view` prints it. The list is not kept anywhere else: it is the arguments of
//! the conversation's last `plan` call, read back from the event log (the only
//! per-job state).

use serde::{Deserialize, Serialize};

use super::Observation;
use crate::agent::events::{Event, EventKind};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Todo,
    InProgress,
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub title: String,
    #[serde(default)]
    pub notes: String,
    #[serde(default)]
    pub status: Status,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    #[default]
    View,
    Plan,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Args {
    #[serde(default)]
    pub command: Command,
    #[serde(default)]
    pub task_list: Vec<Task>,
}

/// Runs one call over the conversation so far (`events`, which already hold
/// this call's action).
pub fn call(args: Args, events: &[Event]) -> Observation {
    match args.command {
        Command::Plan => Observation::ok(format!(
            "Task list has been updated with {} item(s).",
            args.task_list.len()
        )),
        Command::View => match current(events) {
            Some(list) if !list.is_empty() => Observation::ok(format_list(&list)),
            _ => Observation::ok("No task list found. Use the \"plan\" command to create one."),
        },
    }
}

/// The list of the last `plan` call.
fn current(events: &[Event]) -> Option<Vec<Task>> {
    events.iter().rev().find_map(|e| match &e.kind {
        EventKind::ActionEvent {
            tool_name,
            arguments,
            ..
        } if tool_name == "task_tracker" => {
            match serde_json::from_value::<Args>(arguments.clone()) {
                Ok(Args {
                    command: Command::Plan,
                    task_list,
                }) => Some(task_list),
                _ => None,
            }
        }
        _ => None,
    })
}

fn format_list(list: &[Task]) -> String {
    let mut out = String::from("# Task List\n\n");
    for (i, t) in list.iter().enumerate() {
        let icon = match t.status {
            Status::Todo => "⏳",
            Status::InProgress => "🔄",
            Status::Done => "✅",
        };
        out.push_str(&format!("{}. {icon} {}\n", i + 1, t.title));
        if !t.notes.is_empty() {
            out.push_str(&format!("   {}\n", t.notes));
        }
        out.push('\n');
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::events::{EventLog, Source};
    use serde_json::json;

    fn act(log: &EventLog, args: serde_json::Value) -> Observation {
        log.append(
            Source::Agent,
            EventKind::ActionEvent {
                tool_name: "task_tracker".into(),
                tool_call_id: "c".into(),
                arguments: args.clone(),
                thought: String::new(),
                step: 1,
                meta: Default::default(),
            },
        );
        let parsed: Args = serde_json::from_value(args).unwrap();
        log.with(|ev| call(parsed, ev))
    }

    #[test]
    fn plan_replaces_and_view_prints() {
        let log = EventLog::in_memory();
        let o = act(&log, json!({"command": "view"}));
        assert_eq!(
            o.content,
            "No task list found. Use the \"plan\" command to create one."
        );
        let o = act(
            &log,
            json!({"command": "plan", "task_list": [
                {"title": "read code", "status": "done"},
                {"title": "fix bug", "notes": "in parser", "status": "in_progress"},
            ]}),
        );
        assert_eq!(o.content, "Task list has been updated with 2 item(s).");
        let o = act(&log, json!({"command": "view"}));
        assert_eq!(
            o.content,
            "# Task List\n\n1. ✅ read code\n\n2. 🔄 fix bug\n   in parser"
        );
        act(
            &log,
            json!({"command": "plan", "task_list": [{"title": "only one"}]}),
        );
        let o = act(&log, json!({}));
        assert_eq!(o.content, "# Task List\n\n1. ⏳ only one");
    }
}
