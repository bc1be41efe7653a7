//! The agent's tools, with the names and argument schemas models are trained on:
//! `terminal`, `file_editor`, `task_tracker`, `think` and `finish` (the last two
//! are small enough to live here). A call either yields an observation (an error
//! observation included), is rejected as a bad call (an agent error the model
//! reads as the tool result), or finishes the run. Only a workspace that is gone
//! stops the run, as an `Err`.

pub mod file_editor;
pub mod normalize;
pub mod task_tracker;
pub mod terminal;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::events::EventLog;
use crate::job::Limits;
use crate::workspace::{Workspace, WorkspaceError};

/// Every tool, in the order the model is shown them.
pub const NAMES: [&str; 5] = ["terminal", "file_editor", "task_tracker", "think", "finish"];

/// The line an error observation starts with when the model reads it, so an
/// error is told apart from output that merely mentions one (upstream heads
/// its error observations the same way, in its own words).
pub const ERROR_MARKER: &str = "[The tool call failed; the error follows.]";

/// Tools that change the workspace: their schemas also offer `security_risk`.
const MUTATING: [&str; 2] = ["terminal", "file_editor"];

/// Invalid arguments are quoted in the error up to this many characters.
const QUOTED_ARGS_CHARS: usize = 2_000;

/// What a tool returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub content: String,
    pub exit_code: Option<i64>,
    pub is_error: bool,
    /// The call returned while the command was still running (or the job's
    /// ceiling stopped it).
    pub timed_out: bool,
}

impl Observation {
    pub fn ok(content: impl Into<String>) -> Observation {
        Observation {
            content: content.into(),
            exit_code: None,
            is_error: false,
            timed_out: false,
        }
    }

    pub fn error(content: impl Into<String>) -> Observation {
        Observation {
            content: content.into(),
            exit_code: None,
            is_error: true,
            timed_out: false,
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Observation(Observation),
    /// A bad call (unknown tool, invalid arguments): an AgentErrorEvent.
    Rejected(String),
    /// `finish`: the run ends, with this final message.
    Finish(String),
}

/// What tools run against.
pub struct Ctx<'a> {
    pub workspace: &'a Workspace,
    pub limits: &'a Limits,
    pub events: &'a EventLog,
}

/// Whether a workspace error means the workspace is gone (the run cannot go on),
/// rather than a problem with one path the model can work around.
pub fn fatal(e: &WorkspaceError) -> bool {
    e.retryable()
        || matches!(
            e,
            WorkspaceError::ImageNotFound { .. } | WorkspaceError::ImageAuth { .. }
        )
}

/// The tools of one conversation, with their per-conversation state.
pub struct Tools {
    terminal: terminal::Terminal,
    editor: file_editor::FileEditor,
}

impl Tools {
    pub fn new(workspace: &Workspace) -> Tools {
        Tools {
            terminal: terminal::Terminal::new(workspace),
            editor: file_editor::FileEditor::new(workspace.workdir()),
        }
    }

    /// The conversation is over: its shell goes back to the workspace, which
    /// keeps an idle one for the collect.
    pub fn park(&mut self, workspace: &Workspace) {
        if let Some(shell) = self.terminal.take_shell() {
            workspace.park_shell(shell);
        }
    }

    /// Runs the call `name(args)`; `raw` is the arguments' text as the model sent it.
    pub async fn call(
        &mut self,
        name: &str,
        raw: &str,
        args: &Value,
        ctx: &Ctx<'_>,
    ) -> Result<Outcome, WorkspaceError> {
        macro_rules! parse {
            ($t:ty) => {
                match parse_args::<$t>(name, raw, args) {
                    Ok(a) => a,
                    Err(e) => return Ok(Outcome::Rejected(e)),
                }
            };
        }
        let obs = match name {
            "terminal" => {
                self.terminal
                    .call(ctx.workspace, ctx.limits, parse!(terminal::Args))
                    .await?
            }
            "file_editor" => {
                self.editor
                    .call(ctx.workspace, parse!(file_editor::Args))
                    .await?
            }
            "task_tracker" => {
                let a = parse!(task_tracker::Args);
                ctx.events.with(|ev| task_tracker::call(a, ev))
            }
            "think" => {
                parse!(ThinkArgs);
                Observation::ok("Your thought has been logged.")
            }
            "finish" => return Ok(Outcome::Finish(parse!(FinishArgs).message)),
            _ => return Ok(Outcome::Rejected(unknown_tool(name))),
        };
        Ok(Outcome::Observation(obs))
    }
}

#[derive(serde::Deserialize)]
struct ThinkArgs {
    #[allow(dead_code)] // required, logged in the action; nothing to do with it
    thought: String,
}

#[derive(serde::Deserialize)]
struct FinishArgs {
    message: String,
}

/// Upstream's message for a call to a tool that does not exist.
pub fn unknown_tool(name: &str) -> String {
    let names: Vec<String> = NAMES.iter().map(|n| format!("'{n}'")).collect();
    format!("Tool '{name}' not found. Available: [{}]", names.join(", "))
}

/// Upstream's message for arguments that are not valid for the tool.
pub fn invalid_args(tool: &str, raw: &str, problem: &str) -> String {
    let shown = if raw.chars().count() > QUOTED_ARGS_CHARS {
        format!(
            "{}…",
            raw.chars().take(QUOTED_ARGS_CHARS).collect::<String>()
        )
    } else {
        raw.to_string()
    };
    format!("Error validating args {shown} for tool '{tool}': {problem}")
}

fn parse_args<T: DeserializeOwned>(tool: &str, raw: &str, args: &Value) -> Result<T, String> {
    if !args.is_object() {
        return Err(invalid_args(
            tool,
            raw,
            "the arguments must be a JSON object",
        ));
    }
    serde_json::from_value(args.clone()).map_err(|e| invalid_args(tool, raw, &e.to_string()))
}

/// The tool schemas sent with every request (OpenAI `tools` format): each
/// tool's own, plus the `summary` (and, on the mutating tools,
/// `security_risk`) that models tuned on OpenHands send with every call.
pub fn schemas() -> Vec<Value> {
    let mut all = tool_schemas();
    for s in &mut all {
        let mutating = MUTATING.iter().any(|t| s["function"]["name"] == *t);
        let Some(props) = s["function"]["parameters"]["properties"].as_object_mut() else {
            continue;
        };
        props.insert(
            "summary".into(),
            json!({"type": "string", "description": "Optional. A few words on what this call does (logged with it)."}),
        );
        if mutating {
            props.insert(
                "security_risk".into(),
                json!({"type": "string", "enum": ["LOW", "MEDIUM", "HIGH"],
                       "description": "Optional. How risky this call is for the workspace (logged with it)."}),
            );
        }
    }
    all
}

fn tool_schemas() -> Vec<Value> {
    let tool = |name: &str, description: &str, parameters: Value| json!({"type": "function", "function": {"name": name, "description": description, "parameters": parameters}});
    vec![
        terminal::schema(),
        tool(
            "file_editor",
            "View, create and edit files.\n\
             * `view` on a file shows it numbered like `cat -n` (long files are cut: use `view_range`); on a directory \
             it lists two levels, hidden entries excluded.\n\
             * `create` makes a new file; it never overwrites an existing one.\n\
             * `str_replace` replaces `old_str`, which must match exactly one place in the file verbatim (whitespace \
             included), by `new_str`. Include enough context lines to make it unique.\n\
             * `insert` adds `new_str` after line `insert_line` (0 for the top).\n\
             * `undo_edit` reverts the last edit of the file.\n\
             Paths must be absolute.",
            json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "enum": ["view", "create", "str_replace", "insert", "undo_edit"], "description": "The operation."},
                    "path": {"type": "string", "description": "Absolute path to a file or directory."},
                    "file_text": {"type": "string", "description": "`create`: the content of the new file."},
                    "old_str": {"type": "string", "description": "`str_replace`: the exact text to replace."},
                    "new_str": {"type": "string", "description": "`str_replace`: the new text (may be empty). `insert`: the text to insert."},
                    "insert_line": {"type": "integer", "description": "`insert`: the line after which `new_str` goes (0 = before the first line)."},
                    "view_range": {"type": "array", "items": {"type": "integer"}, "description": "`view` of a file: [start, end] line numbers, 1-based; end -1 means to the end."}
                },
                "required": ["command", "path"]
            }),
        ),
        tool(
            "task_tracker",
            "Keep a task list for multi-step work. `plan` replaces the whole list with `task_list`; `view` shows it. \
             Keep one task in_progress at a time and mark tasks done as soon as they are.",
            json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "enum": ["view", "plan"], "description": "`view` the list, or `plan` to replace it."},
                    "task_list": {
                        "type": "array",
                        "description": "`plan`: the full task list.",
                        "items": {
                            "type": "object",
                            "properties": {
                                "title": {"type": "string", "description": "A brief title."},
                                "notes": {"type": "string", "description": "Details or notes."},
                                "status": {"type": "string", "enum": ["todo", "in_progress", "done"]}
                            },
                            "required": ["title"]
                        }
                    }
                },
                "required": ["command"]
            }),
        ),
        tool(
            "think",
            "Think about something: analyse a problem, weigh approaches, plan. Nothing is run or changed; the thought \
             is logged.",
            json!({
                "type": "object",
                "properties": {"thought": {"type": "string", "description": "The thought."}},
                "required": ["thought"]
            }),
        ),
        tool(
            "finish",
            "Finish the task: call this when the work is done (or cannot be done), with a short summary of what was \
             done. The run ends here.",
            json!({
                "type": "object",
                "properties": {"message": {"type": "string", "description": "The final message: what was done, and anything left."}},
                "required": ["message"]
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_name_every_tool() {
        let names: Vec<String> = schemas()
            .iter()
            .map(|s| {
                s["function"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(names, NAMES);
    }

    #[test]
    fn messages_follow_upstream() {
        assert_eq!(
            unknown_tool("nope"),
            "Tool 'nope' not found. Available: ['terminal', 'file_editor', 'task_tracker', 'think', 'finish']"
        );
        let e = parse_args::<FinishArgs>("finish", "{}", &json!({}))
            .err()
            .unwrap();
        assert_eq!(
            e,
            "Error validating args {} for tool 'finish': missing field `message`"
        );
        let e = parse_args::<FinishArgs>("finish", "[1]", &json!([1]))
            .err()
            .unwrap();
        assert!(e.contains("must be a JSON object"), "{e}");
    }
}
