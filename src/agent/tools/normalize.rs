//! Tolerance for the tool calls real models send (AGENT-SPEC.md "Tools"):
//! before a call is logged and run, its name and arguments are normalised the
//! way upstream does, so a model tuned on OpenHands is not refused for habits.
//!
//! - Old names map to the current tools (`execute_bash`, `bash` → `terminal`;
//!   `str_replace_editor`, `str_replace` → `file_editor`), and a name with a
//!   markup fragment stuck to it (`terminal</function>`) to its leading word.
//! - `summary` and `security_risk` are taken out of the arguments: they are
//!   logged on the ActionEvent beside them, so stuck detection (which compares
//!   arguments) does not see a repeat hidden behind a new summary.
//! - Arguments are coerced by each tool's JSON schema, generically: `"5"` for
//!   an integer or number, `"true"` for a boolean, a JSON string for a list or
//!   an object, a list of string chunks for a string, `5.0` for an integer. A
//!   field the schema does not describe is left as it came, and so is a number
//!   where text is expected (upstream refuses it too).
//! - A `file_editor` call without `command` gets the one its other arguments
//!   imply, in upstream's order: `old_str` → str_replace, `insert_line` →
//!   insert, `file_text` → create, `path` → view.

use serde_json::{Map, Value};

use super::NAMES;

/// Old and alternative tool names models use.
const ALIASES: &[(&str, &str)] = &[
    ("bash", "terminal"),
    ("execute_bash", "terminal"),
    ("execute", "terminal"),
    ("str_replace_editor", "file_editor"),
    ("str_replace", "file_editor"),
];

/// Arguments no tool declares but models send; carried beside the call.
const SUMMARY: &str = "summary";
const SECURITY_RISK: &str = "security_risk";
const SECURITY_RISK_TYPOS: &[&str] = &["security_rort", "securtiy_risk", "security_riks"];

const MAX_SUMMARY_CHARS: usize = 500;
const MAX_RISK_CHARS: usize = 16;

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A call after normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The tool to run (a known name), or the name as sent when none matched.
    pub tool: String,
    pub args: Value,
    pub summary: Option<String>,
    pub security_risk: Option<String>,
}

/// The tool a name refers to, when any.
pub fn tool_name(name: &str) -> Option<&'static str> {
    if let Some(n) = NAMES.iter().find(|n| **n == name) {
        return Some(n);
    }
    let base: String = name
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    NAMES
        .iter()
        .copied()
        .find(|n| *n == base)
        .or_else(|| ALIASES.iter().find(|(a, _)| *a == base).map(|(_, t)| *t))
}

/// Normalises one call; `schemas` are the tool schemas sent to the model.
/// The error (a file_editor call whose command cannot be inferred) is the
/// problem to report to the model.
pub fn normalize(name: &str, args: Value, schemas: &[Value]) -> Result<Call, String> {
    let tool = tool_name(name).map_or_else(|| name.to_string(), str::to_string);
    // Arguments double-encoded as a JSON string holding the object.
    let args = match args {
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(v @ Value::Object(_)) => v,
            _ => Value::String(s),
        },
        other => other,
    };
    let Value::Object(mut map) = args else {
        return Ok(Call {
            tool,
            args,
            summary: None,
            security_risk: None,
        });
    };
    for typo in SECURITY_RISK_TYPOS {
        if let Some(v) = map.remove(*typo) {
            map.insert(SECURITY_RISK.into(), v);
        }
    }
    // Bounded: they are logged with every action, whatever length a model writes.
    let summary = take_text(&mut map, SUMMARY).map(|s| clip(&s, MAX_SUMMARY_CHARS));
    let security_risk = take_text(&mut map, SECURITY_RISK)
        .map(|r| clip(r.trim(), MAX_RISK_CHARS).to_ascii_uppercase());
    // Upstream drops nulls: a model writing `"view_range": null` means "not given".
    map.retain(|_, v| !v.is_null());
    if tool == "file_editor" && !map.contains_key("command") {
        let inferred = [
            ("old_str", "str_replace"),
            ("insert_line", "insert"),
            ("file_text", "create"),
            ("path", "view"),
        ]
        .iter()
        .find(|(k, _)| map.contains_key(*k));
        match inferred {
            Some((_, cmd)) => {
                map.insert("command".into(), Value::String((*cmd).into()));
            }
            None => {
                return Err(
                    "missing `command`, and it cannot be inferred from the other arguments \
                    (give one of view, create, str_replace, insert, undo_edit)"
                        .into(),
                );
            }
        }
    }
    let mut args = Value::Object(map);
    if let Some(schema) = parameters(schemas, &tool) {
        coerce(&mut args, schema);
    }
    Ok(Call {
        tool,
        args,
        summary,
        security_risk,
    })
}

/// Removes `key` and returns it as text (a non-string value as its JSON).
fn take_text(map: &mut Map<String, Value>, key: &str) -> Option<String> {
    match map.remove(key)? {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// The `parameters` schema of `tool`.
fn parameters<'a>(schemas: &'a [Value], tool: &str) -> Option<&'a Value> {
    schemas
        .iter()
        .find(|s| s["function"]["name"] == tool)
        .map(|s| &s["function"]["parameters"])
}

/// Coerces `v` in place towards `schema`'s type; a value that does not fit
/// is left alone for the tool's own check to report.
fn coerce(v: &mut Value, schema: &Value) {
    let kind = schema["type"].as_str().unwrap_or("");
    match (kind, &*v) {
        ("integer", Value::String(s)) => {
            if let Some(n) = parse_integer(s) {
                *v = Value::from(n);
            }
        }
        ("integer", Value::Number(n)) => {
            if let Some(f) = n
                .as_f64()
                .filter(|f| n.as_i64().is_none() && f.fract() == 0.0 && f.abs() < 9e15)
            {
                *v = Value::from(f as i64);
            }
        }
        ("number", Value::String(s)) => {
            if let Some(n) = s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                *v = Value::Number(n);
            }
        }
        ("boolean", Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => *v = Value::Bool(true),
            "false" => *v = Value::Bool(false),
            _ => {}
        },
        ("array" | "object", Value::String(s)) => {
            if let Some(parsed) = parse_collection(s, kind) {
                *v = parsed;
            }
        }
        ("string", Value::Array(parts)) if parts.iter().all(Value::is_string) => {
            // A string a model sent in chunks.
            *v = Value::String(parts.iter().filter_map(Value::as_str).collect());
        }
        _ => {}
    }
    match v {
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                items.iter_mut().for_each(|i| coerce(i, item_schema));
            }
        }
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, field) in map.iter_mut() {
                    if let Some(s) = props.get(k) {
                        coerce(field, s);
                    }
                }
            }
        }
        _ => {}
    }
}

fn parse_integer(s: &str) -> Option<i64> {
    let s = s.trim();
    s.parse::<i64>().ok().or_else(|| {
        s.parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
            .map(|f| f as i64)
    })
}

/// A list or object sent as JSON text, possibly with trailing garbage after
/// its closing bracket (upstream cuts at the last bracket too).
fn parse_collection(s: &str, kind: &str) -> Option<Value> {
    let fits = |v: &Value| (kind == "array" && v.is_array()) || (kind == "object" && v.is_object());
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        return fits(&v).then_some(v);
    }
    let close = if kind == "array" { ']' } else { '}' };
    let end = s.rfind(close)?;
    serde_json::from_str::<Value>(&s[..=end]).ok().filter(fits)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::agent::tools::schemas;

    fn norm(name: &str, args: Value) -> Call {
        normalize(name, args, &schemas()).unwrap()
    }

    #[test]
    fn old_names_and_markup_fragments_map_to_the_tools() {
        assert_eq!(
            norm("execute_bash", json!({"command": "ls"})).tool,
            "terminal"
        );
        assert_eq!(norm("bash", json!({"command": "ls"})).tool, "terminal");
        assert_eq!(
            norm(
                "str_replace_editor",
                json!({"command": "view", "path": "/w"})
            )
            .tool,
            "file_editor"
        );
        assert_eq!(
            norm("terminal</function>", json!({"command": "ls"})).tool,
            "terminal"
        );
        assert_eq!(norm("nope", json!({})).tool, "nope");
    }

    #[test]
    fn summary_and_security_risk_are_set_aside() {
        let c = norm(
            "terminal",
            json!({"command": "ls", "summary": "list files", "security_risk": "low"}),
        );
        assert_eq!(c.args, json!({"command": "ls"}));
        assert_eq!(c.summary.as_deref(), Some("list files"));
        assert_eq!(c.security_risk.as_deref(), Some("LOW"));
        let c = norm(
            "think",
            json!({"thought": "x", "securtiy_risk": "HIGH", "summary": null}),
        );
        assert_eq!(
            (c.args, c.security_risk.as_deref(), c.summary),
            (json!({"thought": "x"}), Some("HIGH"), None)
        );
        let c = norm(
            "terminal",
            json!({"command": "ls", "summary": "s".repeat(100_000), "security_risk": "x".repeat(100)}),
        );
        assert_eq!(c.summary.unwrap().chars().count(), MAX_SUMMARY_CHARS + 1);
        assert_eq!(c.security_risk.unwrap().chars().count(), MAX_RISK_CHARS + 1);
    }

    #[test]
    fn arguments_are_coerced_by_the_schema() {
        let c = norm(
            "file_editor",
            json!({"command": "view", "path": "/w/a", "view_range": "[1, \"5\"]", "insert_line": "3"}),
        );
        assert_eq!(c.args["view_range"], json!([1, 5]));
        assert_eq!(c.args["insert_line"], json!(3));
        let c = norm(
            "file_editor",
            json!({"command": "insert", "path": "/w/a", "insert_line": 2.0, "new_str": ["a", "b"]}),
        );
        assert_eq!(
            (c.args["insert_line"].clone(), c.args["new_str"].clone()),
            (json!(2), json!("ab"))
        );
        let c = norm("terminal", json!({"command": "sleep 1", "timeout": "12.5"}));
        assert_eq!(c.args["timeout"], json!(12.5));
        let c = norm(
            "task_tracker",
            json!({"command": "plan", "task_list": "[{\"title\": \"a\", \"status\": \"todo\"}] trailing"}),
        );
        assert_eq!(
            c.args["task_list"],
            json!([{"title": "a", "status": "todo"}])
        );
        // A value that does not fit stays as it came, for the tool to report.
        let c = norm(
            "file_editor",
            json!({"command": "view", "path": "/w", "view_range": "lines 1-5"}),
        );
        assert_eq!(c.args["view_range"], json!("lines 1-5"));
        // Double-encoded arguments.
        let c = norm("terminal", json!("{\"command\": \"ls\"}"));
        assert_eq!(c.args, json!({"command": "ls"}));
    }

    #[test]
    fn booleans_follow_the_schema_of_whatever_tool_declares_them() {
        let schemas = vec![
            json!({"type": "function", "function": {"name": "terminal", "parameters": {"type": "object",
            "properties": {"command": {"type": "string"}, "is_input": {"type": "boolean"}, "reset": {"type": "boolean"}}}}}),
        ];
        let c = normalize(
            "terminal",
            json!({"command": "", "is_input": "True", "reset": "false"}),
            &schemas,
        )
        .unwrap();
        assert_eq!(
            c.args,
            json!({"command": "", "is_input": true, "reset": false})
        );
    }

    #[test]
    fn file_editor_command_is_inferred_like_upstream() {
        for (args, cmd) in [
            (
                json!({"path": "/w/a", "old_str": "x", "new_str": "y"}),
                "str_replace",
            ),
            (
                json!({"path": "/w/a", "insert_line": 1, "new_str": "y"}),
                "insert",
            ),
            (json!({"path": "/w/a", "file_text": "hi"}), "create"),
            (json!({"path": "/w/a"}), "view"),
        ] {
            assert_eq!(norm("file_editor", args).args["command"], cmd);
        }
        let e = normalize("str_replace_editor", json!({"summary": "?"}), &schemas()).unwrap_err();
        assert!(e.contains("command"), "{e}");
    }
}
