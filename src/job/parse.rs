//! Reading a job file: a JSON array of jobs, or `{"defaults": {...}, "jobs": [...]}`.
//! Every error names the job (index and id) and the field, on one line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::spec::{Input, JobSpec};

/// A job file (or one job) that cannot be accepted. Displayed as one line.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Shape { path: String, message: String },
    #[error("{path}: job {index}{id}: {field}: {message}")]
    Job {
        path: String,
        index: usize,
        id: String,
        field: String,
        message: String,
    },
}

/// What the parser needs from the resolved settings.
#[derive(Debug, Clone, Default)]
pub struct ParseOptions {
    /// Used for jobs without an `image`.
    pub default_image: Option<String>,
    /// Relative `input.path` values resolve against this directory (the job file's).
    pub base_dir: PathBuf,
}

/// Reads and validates a job file. Nothing is started when this fails.
pub fn parse_job_file(path: &Path, opts: &ParseOptions) -> Result<Vec<JobSpec>, JobFileError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| JobFileError::Read {
        path: name.clone(),
        source,
    })?;
    let mut opts = opts.clone();
    if opts.base_dir.as_os_str().is_empty() {
        opts.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    parse_jobs(&name, &text, &opts)
}

/// Parses job-file text; `name` is used in error messages.
pub fn parse_jobs(
    name: &str,
    text: &str,
    opts: &ParseOptions,
) -> Result<Vec<JobSpec>, JobFileError> {
    let shape = |message: String| JobFileError::Shape {
        path: name.to_string(),
        message,
    };
    let root: Value = serde_json::from_str(text).map_err(|source| JobFileError::Json {
        path: name.to_string(),
        source,
    })?;
    let (defaults, jobs) = match root {
        Value::Array(jobs) => (None, jobs),
        Value::Object(mut map) => {
            if let Some(k) = map.keys().find(|k| *k != "defaults" && *k != "jobs") {
                return Err(shape(format!(
                    "unknown top-level field `{k}` (expected `defaults` and `jobs`)"
                )));
            }
            let jobs = match map.remove("jobs") {
                Some(Value::Array(jobs)) => jobs,
                Some(_) => return Err(shape("`jobs` must be an array".into())),
                None => return Err(shape("missing `jobs` array".into())),
            };
            let defaults = match map.remove("defaults") {
                None | Some(Value::Null) => None,
                Some(d @ Value::Object(_)) => Some(d),
                Some(_) => return Err(shape("`defaults` must be an object".into())),
            };
            (defaults, jobs)
        }
        _ => {
            return Err(shape(
                "expected an array of jobs or {\"defaults\": …, \"jobs\": […]}".into(),
            ));
        }
    };
    if jobs.is_empty() {
        return Err(shape("no jobs in the file".into()));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(jobs.len());
    for (index, mut job) in jobs.into_iter().enumerate() {
        let id_hint = job.get("id").and_then(Value::as_str).map(str::to_string);
        let err = |field: &str, message: String| JobFileError::Job {
            path: name.to_string(),
            index,
            id: id_hint
                .as_ref()
                .map(|i| format!(" (id {i:?})"))
                .unwrap_or_default(),
            field: field.to_string(),
            message,
        };
        if !job.is_object() {
            return Err(err("(job)", "must be an object".into()));
        }
        if let Some(d) = &defaults {
            job = merge(d.clone(), job);
        }
        let spec = job_from_value(job, opts).map_err(|(field, message)| err(&field, message))?;
        if !seen.insert(spec.id.clone()) {
            return Err(err("id", format!("duplicate id {:?}", spec.id)));
        }
        out.push(spec);
    }
    Ok(out)
}

/// Builds one validated job from a JSON value (used for job files, `submit --task`,
/// and messages arriving from the queue). The error is `(field, message)`.
pub fn job_from_value(mut job: Value, opts: &ParseOptions) -> Result<JobSpec, (String, String)> {
    if let Value::Object(map) = &mut job {
        if !map.contains_key("id") || map.get("id") == Some(&Value::Null) {
            map.insert("id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
        }
        if !map.contains_key("task") {
            return Err(("task".into(), "missing (required)".into()));
        }
    }
    let mut spec: JobSpec = serde_path_to_error::deserialize(job).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner
            .split(" at line ")
            .next()
            .unwrap_or(&inner)
            .to_string();
        // serde names the unknown field in its message; the path is its parent.
        let field = if path == "." {
            "(job)".to_string()
        } else {
            path
        };
        (field, inner)
    })?;
    if spec.image.is_none() {
        spec.image = opts.default_image.clone();
    }
    if let Some(Input::Path { path }) = &mut spec.input {
        let p = Path::new(path.as_str());
        let resolved = if p.is_absolute() {
            p.to_path_buf()
        } else {
            opts.base_dir.join(p)
        };
        if !resolved.is_dir() {
            return Err((
                "input.path".into(),
                format!("{} is not a directory", resolved.display()),
            ));
        }
        *path = resolved.display().to_string();
    }
    validate(&spec)?;
    Ok(spec)
}

/// Deep merge: objects merge key by key, anything else in `over` replaces `base`.
fn merge(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Object(mut b), Value::Object(o)) => {
            for (k, v) in o {
                let merged = match b.remove(&k) {
                    Some(bv) => merge(bv, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Object(b)
        }
        (_, over) => over,
    }
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// A job id is also a store key segment: no slashes, no `..`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Docker image references: no whitespace or control characters, a sane charset.
fn valid_image(image: &str) -> bool {
    !image.is_empty()
        && image.len() <= 255
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@'))
        && !image.starts_with(['-', '.', '/', ':'])
}

/// A task longer than this is refused (the queue's messages are at most 1 MiB).
const MAX_TASK_BYTES: usize = 256 * 1024;
/// The job's `instructions` go into every request's system prompt: kept small.
const MAX_INSTRUCTIONS_BYTES: usize = 64 * 1024;

/// A value quoted in an error, cut so the message stays one readable line.
fn clip(v: &str) -> String {
    if v.chars().count() <= 80 {
        v.to_string()
    } else {
        format!("{}…", v.chars().take(80).collect::<String>())
    }
}

fn validate(s: &JobSpec) -> Result<(), (String, String)> {
    let bad = |f: &str, m: String| Err((f.to_string(), m));
    if !valid_id(&s.id) {
        return bad(
            "id",
            format!("{:?} must match [A-Za-z0-9._-]{{1,64}}", s.id),
        );
    }
    if s.task.trim().is_empty() {
        return bad("task", "must not be empty".into());
    }
    match &s.image {
        None => {
            return bad(
                "image",
                "missing, and no default image is set (FLEET_DEFAULT_IMAGE)".into(),
            );
        }
        Some(i) if !valid_image(i) => {
            return bad("image", format!("{i:?} is not a valid image reference"));
        }
        _ => {}
    }
    if !s.workdir.starts_with('/')
        || s.workdir.split('/').any(|c| c == "..")
        || s.workdir.len() > 1024
        || s.workdir.chars().any(char::is_control)
    {
        return bad(
            "workdir",
            format!(
                "{:?} must be an absolute path without `..` or control characters, at most 1024 bytes",
                clip(&s.workdir)
            ),
        );
    }
    if s.task.len() > MAX_TASK_BYTES {
        return bad(
            "task",
            format!("{} bytes is more than {MAX_TASK_BYTES}", s.task.len()),
        );
    }
    for (k, v) in &s.env {
        if !is_name(k) {
            return bad(
                &format!("env.{}", clip(k)),
                "not a valid variable name".into(),
            );
        }
        // Docker refuses NUL in the environment; better said here than retried there.
        if v.contains('\0') {
            return bad(&format!("env.{k}"), "contains a NUL character".into());
        }
    }
    for (i, k) in s.secrets.iter().enumerate() {
        if !is_name(k) {
            return bad(
                &format!("secrets[{i}]"),
                format!("{k:?} is not a valid variable name"),
            );
        }
    }
    if let Some(k) = &s.llm.api_key_env {
        if !is_name(k) {
            return bad(
                "llm.api_key_env",
                format!("{k:?} is not a valid variable name"),
            );
        }
    }
    if let Some(u) = &s.llm.base_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return bad("llm.base_url", format!("{u:?} must be an http(s) URL"));
        }
    }
    if let Some(t) = s.llm.temperature {
        if !(0.0..=2.0).contains(&t) {
            return bad("llm.temperature", format!("{t} is outside 0..2"));
        }
    }
    if let Some(p) = &s.llm.price {
        let prices = [
            Some(p.input_per_mtok),
            Some(p.output_per_mtok),
            p.cache_read_per_mtok,
            p.cache_write_per_mtok,
        ];
        if prices
            .into_iter()
            .flatten()
            .any(|v| !(v >= 0.0 && v.is_finite()))
        {
            return bad("llm.price", "prices must be finite and not negative".into());
        }
    }
    if let Some(n) = s.llm.max_output_tokens {
        if !(1..=1_000_000).contains(&n) {
            return bad(
                "llm.max_output_tokens",
                format!("{n} is outside 1..1000000"),
            );
        }
    }
    if let Some(e) = &s.llm.reasoning_effort {
        if !matches!(e.as_str(), "low" | "medium" | "high") {
            return bad(
                "llm.reasoning_effort",
                format!("{:?} must be low, medium or high", clip(e)),
            );
        }
    }
    if let Some(m) = &s.llm.condenser_model {
        if m.trim().is_empty() || m.len() > 255 || m.chars().any(char::is_control) {
            return bad(
                "llm.condenser_model",
                "must be a model name (1 to 255 characters, no control characters)".into(),
            );
        }
    }
    if let Some(i) = &s.instructions {
        if i.len() > MAX_INSTRUCTIONS_BYTES {
            return bad(
                "instructions",
                format!("{} bytes is more than {MAX_INSTRUCTIONS_BYTES}", i.len()),
            );
        }
    }
    let l = &s.limits;
    if l.max_iterations == 0 {
        return bad("limits.max_iterations", "must be at least 1".into());
    }
    if l.timeout_secs == 0 {
        return bad("limits.timeout_secs", "must be at least 1".into());
    }
    if l.command_timeout_secs == 0 {
        return bad("limits.command_timeout_secs", "must be at least 1".into());
    }
    if l.no_output_timeout_secs == 0 {
        return bad("limits.no_output_timeout_secs", "must be at least 1".into());
    }
    if l.memory_mb < 6 {
        return bad(
            "limits.memory_mb",
            "must be at least 6 (Docker's minimum)".into(),
        );
    }
    if !(l.cpus > 0.0 && l.cpus <= 1024.0) {
        return bad("limits.cpus", format!("{} must be > 0", l.cpus));
    }
    if l.pids < 1 {
        return bad("limits.pids", "must be at least 1".into());
    }
    if let Some(c) = l.max_cost_usd {
        if !(c >= 0.0) {
            return bad("limits.max_cost_usd", "must not be negative".into());
        }
    }
    if l.network.is_empty()
        || !l
            .network
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return bad(
            "limits.network",
            format!("{:?} is not a network name", l.network),
        );
    }
    if let Some(d) = l.disk_mb {
        if d < 16 {
            return bad("limits.disk_mb", format!("{d} must be at least 16"));
        }
    }
    if let Some(u) = &l.user {
        let part = |p: &str| {
            (1..=32).contains(&p.len())
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                && !p.starts_with('-')
        };
        let ok = match u.split_once(':') {
            Some((a, b)) => part(a) && part(b),
            None => part(u),
        };
        if !ok {
            return bad(
                "limits.user",
                format!(
                    "{:?} must be USER or USER:GROUP (names or numbers)",
                    clip(u)
                ),
            );
        }
        // A read-only root's workdir is given to the user by mounting it so,
        // before the image's passwd could be read.
        let numeric = u
            .split_once(':')
            .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok());
        if l.read_only_root && !numeric {
            return bad(
                "limits.user",
                format!(
                    "{:?} must be a numeric UID:GID with limits.read_only_root",
                    clip(u)
                ),
            );
        }
    }
    let st = &s.stuck;
    for (name, v) in [
        ("action_observation", st.action_observation),
        ("action_error", st.action_error),
        ("monologue", st.monologue),
        ("alternating_pattern", st.alternating_pattern),
    ] {
        if v < 2 {
            return bad(&format!("stuck.{name}"), "must be at least 2".into());
        }
    }
    if let Some(w) = &s.webhook {
        if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
            return bad("webhook.url", format!("{:?} must be an http(s) URL", w.url));
        }
        if let Some(k) = &w.secret_env {
            if !is_name(k) {
                return bad(
                    "webhook.secret_env",
                    format!("{k:?} is not a valid variable name"),
                );
            }
        }
    }
    if s.priority > 9 {
        return bad("priority", format!("{} is outside 0..9", s.priority));
    }
    for (i, g) in s.artifacts.iter().enumerate() {
        let field = format!("artifacts[{i}]");
        if g.starts_with('/') || g.split('/').any(|c| c == "..") || g.contains('\0') {
            return bad(
                &field,
                format!("{g:?} must be relative to the workdir, without `..`"),
            );
        }
        if let Err(e) = globset::Glob::new(g) {
            return bad(&field, format!("invalid glob: {e}"));
        }
    }
    match &s.input {
        Some(Input::Git { git }) if git.url.trim().is_empty() => {
            return bad("input.git.url", "must not be empty".into());
        }
        Some(Input::StoreKey { store_key })
            if store_key.split('/').any(|c| c == "..") || store_key.is_empty() =>
        {
            return bad(
                "input.store_key",
                format!("{store_key:?} is not a valid store key"),
            );
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ParseOptions {
        ParseOptions {
            default_image: Some("busybox".into()),
            base_dir: PathBuf::from("."),
        }
    }
    fn parse(text: &str) -> Result<Vec<JobSpec>, String> {
        parse_jobs("jobs.json", text, &opts()).map_err(|e| e.to_string())
    }

    #[test]
    fn array_and_defaults_merge() {
        let jobs = parse(
            r#"{"defaults": {"limits": {"max_iterations": 7}, "labels": {"a": "1"}},
            "jobs": [{"id": "x", "task": "t", "limits": {"timeout_secs": 9}}]}"#,
        )
        .unwrap();
        assert_eq!(jobs[0].limits.max_iterations, 7);
        assert_eq!(jobs[0].limits.timeout_secs, 9);
        assert_eq!(jobs[0].labels["a"], "1");
        assert_eq!(jobs[0].image.as_deref(), Some("busybox"));
        let jobs = parse(r#"[{"task": "t"}]"#).unwrap();
        assert!(valid_id(&jobs[0].id));
    }

    #[test]
    fn a_read_only_root_needs_a_numeric_job_user() {
        let job = |user: &str| {
            parse(&format!(
                r#"[{{"id": "a", "task": "t", "limits": {{"user": "{user}", "read_only_root": true}}}}]"#
            ))
        };
        assert!(job("1000:1000").is_ok());
        for user in ["app", "1000", "app:1000"] {
            let e = job(user).unwrap_err();
            assert!(
                e.contains("limits.user") && e.contains("numeric UID:GID"),
                "{e}"
            );
        }
        assert!(parse(r#"[{"id": "a", "task": "t", "limits": {"user": "app"}}]"#).is_ok());
    }

    #[test]
    fn errors_name_job_and_field() {
        let e = parse(
            r#"[{"id": "a", "task": "t"}, {"id": "b", "task": "t", "limits": {"max_iters": 1}}]"#,
        )
        .unwrap_err();
        assert!(
            e.contains("job 1 (id \"b\")") && e.contains("limits") && e.contains("max_iters"),
            "{e}"
        );
        let e = parse(r#"[{"id": "a"}]"#).unwrap_err();
        assert!(e.contains("job 0") && e.contains("task"), "{e}");
        let e = parse(r#"[{"id": "a", "task": "t"}, {"id": "a", "task": "u"}]"#).unwrap_err();
        assert!(e.contains("job 1") && e.contains("duplicate"), "{e}");
        let e = parse(r#"[{"id": "a", "task": "t", "image": "bad image"}]"#).unwrap_err();
        assert!(e.contains("image") && e.contains("bad image"), "{e}");
        let e = parse(r#"[{"id": "a", "task": "t", "colour": 1}]"#).unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = parse(r#"[{"id": "a", "task": "t""#).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = parse(r#"[{"id": "../x", "task": "t"}]"#).unwrap_err();
        assert!(e.contains("id"), "{e}");
        let e = parse(r#"[{"id": "a", "task": "t", "artifacts": ["../../etc/*"]}]"#).unwrap_err();
        assert!(e.contains("artifacts[0]"), "{e}");
        assert!(!e.contains('\n'));
        let e = parse(r#"[{"id": "a", "task": "t", "workdir": "/w\u0000x"}]"#).unwrap_err();
        assert!(e.contains("workdir"), "{e}");
        let e = parse(r#"[{"id": "a", "task": "t", "env": {"A": "x\u0000"}}]"#).unwrap_err();
        assert!(e.contains("env.A") && e.contains("NUL"), "{e}");
        for (llm, field) in [
            (r#"{"reasoning_effort": "max"}"#, "llm.reasoning_effort"),
            (r#"{"max_output_tokens": 0}"#, "llm.max_output_tokens"),
            (r#"{"condenser_model": " "}"#, "llm.condenser_model"),
            (r#"{"price": {"cache_read_per_mtok": -1}}"#, "llm.price"),
            (r#"{"native_tools": "no"}"#, "llm.native_tools"),
        ] {
            let e = parse(&format!(r#"[{{"id": "a", "task": "t", "llm": {llm}}}]"#)).unwrap_err();
            assert!(e.contains(field) && !e.contains('\n'), "{llm}: {e}");
        }
        let big = "x".repeat(MAX_INSTRUCTIONS_BYTES + 1);
        let e = parse(&format!(
            r#"[{{"id": "a", "task": "t", "instructions": "{big}"}}]"#
        ))
        .unwrap_err();
        assert!(e.contains("instructions"), "{e}");
    }

    #[test]
    fn instructions_and_llm_fields_merge_from_defaults() {
        let jobs = parse(
            r#"{"defaults": {"instructions": "Run `make check` before finishing.",
                             "llm": {"reasoning_effort": "low", "price": {"cache_read_per_mtok": 0.3}}},
                "jobs": [{"id": "x", "task": "t", "llm": {"native_tools": false, "price": {"input_per_mtok": 3}}},
                         {"id": "y", "task": "t", "instructions": "own"}]}"#,
        )
        .unwrap();
        assert_eq!(
            jobs[0].instructions.as_deref(),
            Some("Run `make check` before finishing.")
        );
        assert_eq!(jobs[0].llm.reasoning_effort.as_deref(), Some("low"));
        assert_eq!(jobs[0].llm.native_tools, Some(false));
        let p = jobs[0].llm.price.unwrap();
        assert_eq!((p.input_per_mtok, p.cache_read_per_mtok), (3.0, Some(0.3)));
        assert_eq!(jobs[1].instructions.as_deref(), Some("own"));
    }
}
