//! Script files: their format (see the module doc of [`super`]), their checks, and
//! a cache keyed by modification time so thousands of requests a second do not
//! re-read and re-parse the same file, while an edited script is picked up at once.
//!
//! A script is checked and turned into ready-to-send [`Reply`]s when it is loaded:
//! the request path only looks things up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use crate::llm::Usage;

/// Usage reported when neither the step nor the script sets one.
pub const DEFAULT_USAGE: Usage = Usage::new(100, 20);
/// Scripts are small; a stuck disk must not hold a request forever.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Distinct scripts kept parsed; beyond that the cache starts over (a benchmark uses
/// a handful, so this only bounds a client inventing model names that exist).
const CACHE_CAP: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    steps: Vec<StepFile>,
    #[serde(default)]
    repeat_last: bool,
    #[serde(default)]
    usage: Option<Usage>,
    /// The reply to a summary request (a lone user message, no tools).
    #[serde(default)]
    summary: Option<String>,
    /// `assistant_messages` (default) or `served`.
    #[serde(default)]
    step_by: StepBy,
    /// Send tool calls as text markup in the content (for clients with
    /// `native_tools: false`) instead of `tool_calls`.
    #[serde(default)]
    text_calls: bool,
}

/// How the server knows which step a request is at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepBy {
    /// The number of assistant messages in the request (DESIGN.md).
    #[default]
    AssistantMessages,
    /// The number of replies already served to the conversation: survives a
    /// client condensing its history (which removes assistant messages).
    Served,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    #[serde(default)]
    tool: Option<String>,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    calls: Vec<CallFile>,
    #[serde(default)]
    empty: bool,
    #[serde(default)]
    fail: Option<FailFile>,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    usage: Option<Usage>,
    /// Served as the message's `reasoning_content`.
    #[serde(default)]
    reasoning: Option<String>,
    /// Served as the message's `thinking_blocks` (Anthropic-style, via proxies).
    #[serde(default)]
    thinking_blocks: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallFile {
    tool: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailFile {
    /// Required unless `context_length` gives it.
    #[serde(default)]
    status: Option<u16>,
    /// A context-window error in this provider's wording and body.
    #[serde(default)]
    context_length: Option<String>,
    #[serde(default = "one")]
    times: u32,
    #[serde(default)]
    retry_after_secs: Option<u64>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

fn one() -> u32 {
    1
}

/// A checked script.
#[derive(Debug)]
pub struct Script {
    pub steps: Vec<Reply>,
    pub repeat_last: bool,
    pub summary: Option<String>,
    pub step_by: StepBy,
    pub text_calls: bool,
}

impl Script {
    /// The reply for step `n` (0-based), or `None` when the script has run out.
    pub fn step(&self, n: usize) -> Option<&Reply> {
        match self.steps.get(n) {
            Some(r) => Some(r),
            None if self.repeat_last => self.steps.last(),
            None => None,
        }
    }
}

/// One step, ready to serve.
#[derive(Debug)]
pub struct Reply {
    pub content: Option<String>,
    /// (tool name, arguments as JSON text).
    pub calls: Vec<(String, String)>,
    pub usage: Usage,
    pub delay: Duration,
    pub fail: Option<Fail>,
    pub reasoning: Option<String>,
    pub thinking_blocks: Vec<Value>,
}

/// The failures served before a step.
#[derive(Debug)]
pub struct Fail {
    /// 200 means a reply with an empty `choices` list; otherwise 4xx/5xx.
    pub status: StatusCode,
    pub times: u32,
    pub retry_after_secs: Option<u64>,
    pub code: Option<String>,
    pub message: Option<String>,
    /// Provider whose context-window error to send (see `extras`).
    pub context_length: Option<String>,
}

/// Why a script could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("no script for model '{model}' ({})", path.display())]
    NotFound { model: String, path: PathBuf },
    #[error("cannot read script {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed script {}: {detail}", path.display())]
    Malformed { path: PathBuf, detail: String },
}

/// Parses and checks a script's text.
pub fn parse(bytes: &[u8]) -> Result<Script, String> {
    let file: ScriptFile =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes))
            .map_err(|e| e.to_string())?;
    if file.steps.is_empty() {
        return Err("`steps` is empty: a script needs at least one step".into());
    }
    let default_usage = file.usage.unwrap_or(DEFAULT_USAGE);
    let steps = file
        .steps
        .into_iter()
        .enumerate()
        .map(|(i, s)| prepare(s, default_usage).map_err(|e| format!("steps[{i}]: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(Script {
        steps,
        repeat_last: file.repeat_last,
        summary: file.summary,
        step_by: file.step_by,
        text_calls: file.text_calls,
    })
}

fn prepare(s: StepFile, default_usage: Usage) -> Result<Reply, String> {
    if s.tool.is_some() && !s.calls.is_empty() {
        return Err("use either `tool` (one call) or `calls` (several), not both".into());
    }
    if s.args.is_some() && s.tool.is_none() {
        return Err("`args` needs `tool`".into());
    }
    let has_reply = s.tool.is_some() || !s.calls.is_empty() || s.text.is_some();
    if s.empty && has_reply {
        return Err("`empty` cannot be combined with `tool`, `calls` or `text`".into());
    }
    if !s.empty && !has_reply {
        return Err("a step needs `tool`, `calls`, `text` or `empty: true`".into());
    }
    let mut calls = Vec::with_capacity(s.calls.len().max(1));
    if let Some(tool) = s.tool {
        calls.push((tool, arguments(s.args)?));
    }
    for c in s.calls {
        calls.push((c.tool, arguments(c.args)?));
    }
    if calls.iter().any(|(name, _)| name.is_empty()) {
        return Err("a tool name is empty".into());
    }
    let fail = s
        .fail
        .map(|f| {
            if let Some(p) = &f.context_length {
                if !super::extras::PROVIDERS.contains(&p.as_str()) {
                    return Err(format!(
                        "fail.context_length {p:?} is not one of {}",
                        super::extras::PROVIDERS.join(", ")
                    ));
                }
            }
            let code = match (f.status, &f.context_length) {
                (Some(s), _) => s,
                (None, Some(_)) => 400,
                (None, None) => return Err("fail.status is missing".into()),
            };
            let ok = code == 200 || (400..=599).contains(&code);
            let status = StatusCode::from_u16(code).ok().filter(|_| ok);
            let status =
                status.ok_or_else(|| format!("fail.status {code} is not 200 or 400..=599"))?;
            Ok::<_, String>(Fail {
                status,
                times: f.times,
                retry_after_secs: f.retry_after_secs,
                code: f.code,
                message: f.message,
                context_length: f.context_length,
            })
        })
        .transpose()?;
    Ok(Reply {
        content: s.text,
        calls,
        usage: s.usage.unwrap_or(default_usage),
        delay: Duration::from_millis(s.delay_ms),
        fail,
        reasoning: s.reasoning,
        thinking_blocks: s.thinking_blocks,
    })
}

/// The arguments text of a call: a string is sent verbatim (so a script can send
/// invalid JSON), anything else as its JSON text; no `args` means `{}`.
fn arguments(args: Option<Value>) -> Result<String, String> {
    match args {
        None => Ok("{}".into()),
        Some(Value::String(s)) => Ok(s),
        Some(v) => serde_json::to_string(&v).map_err(|e| format!("args: {e}")),
    }
}

struct Cached {
    modified: Option<SystemTime>,
    len: u64,
    script: Arc<Script>,
}

/// Parsed scripts, re-read when the file's modification time or size changes.
pub struct ScriptCache {
    dir: PathBuf,
    entries: RwLock<HashMap<String, Cached>>,
}

impl ScriptCache {
    pub fn new(dir: PathBuf) -> ScriptCache {
        ScriptCache {
            dir,
            entries: RwLock::default(),
        }
    }

    /// The script of `model` (already checked to be a plain file name).
    pub async fn get(&self, model: &str) -> Result<Arc<Script>, ScriptError> {
        let path = self.dir.join(format!("{model}.json"));
        let io = |source: std::io::Error| ScriptError::Io {
            path: path.clone(),
            source,
        };
        let meta = match with_deadline(tokio::fs::metadata(&path)).await {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                return Err(ScriptError::NotFound {
                    model: model.into(),
                    path,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ScriptError::NotFound {
                    model: model.into(),
                    path,
                });
            }
            Err(e) => return Err(io(e)),
        };
        let modified = meta.modified().ok();
        if let Some(c) = self.read_entries().get(model) {
            if c.modified == modified && c.len == meta.len() && modified.is_some() {
                return Ok(c.script.clone());
            }
        }
        let bytes = with_deadline(tokio::fs::read(&path)).await.map_err(io)?;
        let script = parse(&bytes)
            .map(Arc::new)
            .map_err(|detail| ScriptError::Malformed {
                path: path.clone(),
                detail,
            })?;
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_CAP {
            entries.clear();
        }
        entries.insert(
            model.to_string(),
            Cached {
                modified,
                len: bytes.len() as u64,
                script: script.clone(),
            },
        );
        Ok(script)
    }

    fn read_entries(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Cached>> {
        // The map is only ever replaced entry by entry: a panic cannot leave it torn.
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }
}

async fn with_deadline<T>(f: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(READ_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "script read timed out",
            ))
        })
}

/// True for a model name that is a plain file name inside the scripts directory.
pub fn valid_model_name(model: &str) -> bool {
    !model.is_empty()
        && model.len() <= 255
        && !model.contains(['/', '\\', '\0'])
        && !model.contains("..")
        && !Path::new(model).is_absolute()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_example() {
        let s = parse(
            br#"{
              "steps": [
                {"tool": "terminal", "args": {"command": "echo hello > hello.txt"}},
                {"text": "a reply with no tool call"},
                {"fail": {"status": 503, "times": 2}, "tool": "think", "args": {"thought": "x"}},
                {"delay_ms": 500, "tool": "finish", "args": {"message": "done"}}
              ],
              "repeat_last": false,
              "usage": {"prompt_tokens": 1200, "completion_tokens": 80}
            }"#,
        )
        .unwrap();
        assert_eq!(s.steps.len(), 4);
        assert_eq!(
            s.steps[0].calls,
            vec![(
                "terminal".into(),
                r#"{"command":"echo hello > hello.txt"}"#.into()
            )]
        );
        assert_eq!(
            s.steps[1].content.as_deref(),
            Some("a reply with no tool call")
        );
        assert!(s.steps[1].calls.is_empty());
        let f = s.steps[2].fail.as_ref().unwrap();
        assert_eq!((f.status.as_u16(), f.times), (503, 2));
        assert_eq!(s.steps[3].delay, Duration::from_millis(500));
        assert_eq!(s.steps[3].usage, Usage::new(1200, 80));
        assert!(s.step(4).is_none());
    }

    #[test]
    fn extensions_and_defaults() {
        let s = parse(
            br#"{"steps": [
                {"calls": [{"tool": "think", "args": {"thought": "a"}}, {"tool": "finish"}], "text": "both"},
                {"empty": true, "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
                {"tool": "terminal", "args": "{not json"},
                {"fail": {"status": 400, "code": "context_length_exceeded"}, "text": "after"}
            ], "repeat_last": true}"#,
        )
        .unwrap();
        assert_eq!(s.steps[0].calls.len(), 2);
        assert_eq!(s.steps[0].calls[1].1, "{}");
        assert_eq!(s.steps[0].content.as_deref(), Some("both"));
        assert_eq!(s.steps[0].usage, DEFAULT_USAGE);
        assert!(s.steps[1].content.is_none() && s.steps[1].calls.is_empty());
        assert_eq!(s.steps[1].usage, Usage::new(1, 2));
        assert_eq!(s.steps[2].calls[0].1, "{not json");
        let f = s.steps[3].fail.as_ref().unwrap();
        assert_eq!(
            (f.times, f.code.as_deref()),
            (1, Some("context_length_exceeded"))
        );
        // repeat_last serves the last step for ever.
        assert_eq!(s.step(99).unwrap().content.as_deref(), Some("after"));
    }

    #[test]
    fn rejects_bad_scripts_with_a_location() {
        let cases: [(&str, &str); 8] = [
            (r#"{"steps": []}"#, "at least one step"),
            (r#"{"steps": [{}]}"#, "steps[0]: a step needs"),
            (
                r#"{"steps": [{"text": "a"}, {"tool": "t", "calls": [{"tool": "u"}]}]}"#,
                "steps[1]: use either",
            ),
            (
                r#"{"steps": [{"empty": true, "text": "a"}]}"#,
                "`empty` cannot",
            ),
            (
                r#"{"steps": [{"text": "a", "args": {}}]}"#,
                "`args` needs `tool`",
            ),
            (
                r#"{"steps": [{"text": "a", "fail": {"status": 302}}]}"#,
                "fail.status 302",
            ),
            (
                r#"{"steps": [{"txt": "a"}]}"#,
                "steps[0].txt: unknown field `txt`",
            ),
            (r#"{"steps": [{"text": 5}]}"#, "steps[0].text"),
        ];
        for (text, want) in cases {
            let e = parse(text.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(parse(b"not json").is_err());
    }

    #[test]
    fn model_names() {
        for ok in ["gpt-4o", "smoke", "a.b", "model_1"] {
            assert!(valid_model_name(ok), "{ok}");
        }
        for bad in ["", "../x", "a/b", "..", "a\\b", "x\0"] {
            assert!(!valid_model_name(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn cache_picks_up_edits() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ScriptCache::new(dir.path().to_path_buf());
        assert!(matches!(
            cache.get("m").await,
            Err(ScriptError::NotFound { .. })
        ));
        std::fs::write(dir.path().join("m.json"), r#"{"steps": [{"text": "one"}]}"#).unwrap();
        let a = cache.get("m").await.unwrap();
        assert!(
            Arc::ptr_eq(&a, &cache.get("m").await.unwrap()),
            "unchanged file is served from the cache"
        );
        // A different size is noticed even within the file system's mtime granularity.
        std::fs::write(
            dir.path().join("m.json"),
            r#"{"steps": [{"text": "second"}]}"#,
        )
        .unwrap();
        assert_eq!(
            cache.get("m").await.unwrap().steps[0].content.as_deref(),
            Some("second")
        );
        std::fs::write(dir.path().join("m.json"), "{").unwrap();
        let e = cache.get("m").await.unwrap_err();
        assert!(
            matches!(e, ScriptError::Malformed { .. }) && e.to_string().contains("m.json"),
            "{e}"
        );
    }
}
