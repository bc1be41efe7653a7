//! The editor's rules and messages, over an in-memory file system.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use super::*;

#[derive(Default)]
struct MemFs {
    files: Mutex<BTreeMap<String, Vec<u8>>>,
    dirs: Mutex<BTreeSet<String>>,
}

impl MemFs {
    fn with(files: &[(&str, &str)]) -> MemFs {
        let fs = MemFs::default();
        fs.dirs.lock().unwrap().insert("/w".into());
        for (p, c) in files {
            fs.put(p, c.as_bytes());
        }
        fs
    }

    fn put(&self, path: &str, data: &[u8]) {
        let mut dirs = self.dirs.lock().unwrap();
        let mut parent = path;
        while let Some((p, _)) = parent.rsplit_once('/') {
            if p.is_empty() {
                break;
            }
            dirs.insert(p.to_string());
            parent = p;
        }
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), data.to_vec());
    }

    fn get(&self, path: &str) -> String {
        String::from_utf8(self.files.lock().unwrap()[path].clone()).unwrap()
    }
}

impl Fs for MemFs {
    async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, WorkspaceError> {
        Ok(self.files.lock().unwrap().get(path).cloned())
    }
    async fn write(&self, path: &str, data: &[u8]) -> Result<(), WorkspaceError> {
        self.put(path, data);
        Ok(())
    }
    async fn stat(&self, path: &str) -> Result<Option<PathKind>, WorkspaceError> {
        if let Some(f) = self.files.lock().unwrap().get(path) {
            return Ok(Some(PathKind::File {
                size: f.len() as u64,
            }));
        }
        Ok(self
            .dirs
            .lock()
            .unwrap()
            .contains(path)
            .then_some(PathKind::Dir))
    }
    async fn list(&self, dir: &str) -> Result<Snapshot, WorkspaceError> {
        let prefix = format!("{dir}/");
        let mut snap = Snapshot::default();
        for (p, c) in self.files.lock().unwrap().iter() {
            if let Some(rel) = p.strip_prefix(&prefix) {
                snap.files.insert(
                    rel.to_string(),
                    if c.is_empty() { Some(Vec::new()) } else { None },
                );
            }
        }
        for d in self.dirs.lock().unwrap().iter() {
            if let Some(rel) = d.strip_prefix(&prefix) {
                snap.dirs.push(rel.to_string());
            }
        }
        Ok(snap)
    }
}

fn args(v: serde_json::Value) -> Args {
    serde_json::from_value(v).expect("valid args")
}

async fn call(ed: &mut FileEditor, fs: &MemFs, v: serde_json::Value) -> Observation {
    ed.call(fs, args(v)).await.expect("no fatal error")
}

#[tokio::test]
async fn view_numbers_lines_like_cat_n() {
    let fs = MemFs::with(&[("/w/a.txt", "one\ntwo\n")]);
    let mut ed = FileEditor::new("/w");
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "/w/a.txt"}),
    )
    .await;
    assert!(!o.is_error);
    assert_eq!(
        o.content,
        "Here's the result of running `cat -n` on /w/a.txt:\n     1\tone\n     2\ttwo\n"
    );
}

#[tokio::test]
async fn view_range_rules() {
    let fs = MemFs::with(&[("/w/a.txt", "1\n2\n3\n4\n5\n")]);
    let mut ed = FileEditor::new("/w");
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "/w/a.txt", "view_range": [2, 3]}),
    )
    .await;
    assert_eq!(
        o.content,
        "Here's the result of running `cat -n` on /w/a.txt:\n     2\t2\n     3\t3\n"
    );
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "/w/a.txt", "view_range": [4, -1]}),
    )
    .await;
    assert!(
        o.content.ends_with("     4\t4\n     5\t5\n"),
        "{}",
        o.content
    );
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "/w/a.txt", "view_range": [4, 9]}),
    )
    .await;
    assert!(
        o.content
            .starts_with("NOTE: We only show up to 5 since there're only 5 lines in this file.\n"),
        "{}",
        o.content
    );
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "/w/a.txt", "view_range": [0, 2]}),
    )
    .await;
    assert!(o.is_error);
    assert_eq!(
        o.content,
        "Invalid `view_range` parameter: [0, 2]. Its first element `0` should be within the range of lines of the file: [1, 5]."
    );
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "/w/a.txt", "view_range": [3, 2]}),
    )
    .await;
    assert!(o.content.contains(
        "Its second element `2` should be greater than or equal to the first element `3`."
    ));
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "/w/a.txt", "view_range": [1]}),
    )
    .await;
    assert_eq!(
        o.content,
        "Invalid `view_range` parameter: [1]. It should be a list of two integers."
    );
}

#[tokio::test]
async fn view_cuts_long_files_at_16000_chars() {
    let long = "x".repeat(40_000);
    let fs = MemFs::with(&[("/w/big.txt", long.as_str())]);
    let mut ed = FileEditor::new("/w");
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "/w/big.txt"}),
    )
    .await;
    assert!(o.content.contains(TEXT_FILE_CONTENT_TRUNCATED_NOTICE));
    let body = o
        .content
        .split_once('\n')
        .map(|(_, b)| b)
        .unwrap_or_default()
        .replace(TEXT_FILE_CONTENT_TRUNCATED_NOTICE, "");
    let xs = body.matches('x').count();
    assert_eq!(
        xs,
        MAX_RESPONSE_LEN_CHAR - TEXT_FILE_CONTENT_TRUNCATED_NOTICE.chars().count()
    );
}

#[tokio::test]
async fn view_directory_lists_two_levels_without_hidden() {
    let fs = MemFs::with(&[
        ("/w/src/main.rs", "fn main() {}"),
        ("/w/src/deep/x.rs", "x"),
        ("/w/README.md", "r"),
        ("/w/.git/config", "c"),
        ("/w/.env", "e"),
        ("/w/src/.hidden", "h"),
    ]);
    let mut ed = FileEditor::new("/w");
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "/w/"}),
    )
    .await;
    assert!(!o.is_error, "{}", o.content);
    assert_eq!(
        o.content,
        "Here's the files and directories up to 2 levels deep in /w, excluding hidden items:\n\
         /w/\n/w/README.md\n/w/src/\n/w/src/deep/\n/w/src/main.rs\n\n\
         2 hidden files/directories in this directory are excluded. You can use 'ls -la /w' to see them."
    );
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "/w", "view_range": [1, 2]}),
    )
    .await;
    assert!(
        o.content.contains(
            "The `view_range` parameter is not allowed when `path` points to a directory."
        )
    );
}

#[tokio::test]
async fn paths_must_be_absolute() {
    let fs = MemFs::with(&[("/w/a.txt", "a")]);
    let mut ed = FileEditor::new("/w");
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "a.txt"}),
    )
    .await;
    assert!(o.is_error);
    assert_eq!(
        o.content,
        "Invalid `path` parameter: a.txt. The path should be an absolute path, starting with `/`. Maybe you meant /w/a.txt?"
    );
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "/w/nope"}),
    )
    .await;
    assert_eq!(
        o.content,
        "Invalid `path` parameter: /w/nope. The path /w/nope does not exist. Please provide a valid path."
    );
}

#[tokio::test]
async fn create_refuses_to_overwrite() {
    let fs = MemFs::with(&[("/w/a.txt", "a")]);
    let mut ed = FileEditor::new("/w");
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "create", "path": "/w/a.txt", "file_text": "b"}),
    )
    .await;
    assert!(o.is_error);
    assert_eq!(
        o.content,
        "Invalid `path` parameter: /w/a.txt. File already exists at: /w/a.txt. Cannot overwrite files using command `create`."
    );
    assert_eq!(fs.get("/w/a.txt"), "a");
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "create", "path": "/w/new/b.txt", "file_text": "hi\n"}),
    )
    .await;
    assert_eq!(o.content, "File created successfully at: /w/new/b.txt");
    assert_eq!(fs.get("/w/new/b.txt"), "hi\n");
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "create", "path": "/w/c.txt"}),
    )
    .await;
    assert!(
        o.content
            .starts_with("Parameter `file_text` is required for command: create.\n\nHint: ")
    );
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "str_replace", "path": "/w", "old_str": "a", "new_str": "b"}),
    )
    .await;
    assert!(
        o.content
            .contains("is a directory and only the `view` command can be used on directories.")
    );
}

#[tokio::test]
async fn str_replace_rules() {
    let fs = MemFs::with(&[(
        "/w/a.py",
        "def f():\n    return 1\n\ndef g():\n    return 1\n",
    )]);
    let mut ed = FileEditor::new("/w");
    let o = call(&mut ed, &fs, serde_json::json!({"command": "str_replace", "path": "/w/a.py", "old_str": "return 2", "new_str": "x"})).await;
    assert!(o.is_error);
    assert_eq!(
        o.content,
        "No replacement was performed, old_str `return 2` did not appear verbatim in /w/a.py."
    );
    let o = call(&mut ed, &fs, serde_json::json!({"command": "str_replace", "path": "/w/a.py", "old_str": "return 1", "new_str": "x"})).await;
    assert_eq!(
        o.content,
        "No replacement was performed. Multiple occurrences of old_str `return 1` in lines [2, 5]. Please ensure it is unique."
    );
    let o = call(&mut ed, &fs, serde_json::json!({"command": "str_replace", "path": "/w/a.py", "old_str": "x", "new_str": "x"})).await;
    assert_eq!(
        o.content,
        "Invalid `new_str` parameter: x. No replacement was performed. `new_str` and `old_str` must be different."
    );
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "str_replace", "path": "/w/a.py", "old_str": "def g"}),
    )
    .await;
    assert!(
        o.content
            .starts_with("Parameter `new_str` is required for command: str_replace.")
    );

    // Whitespace at the ends is forgiven once.
    let o = call(&mut ed, &fs, serde_json::json!({"command": "str_replace", "path": "/w/a.py", "old_str": "  def g():\n", "new_str": "def h():"})).await;
    assert!(!o.is_error, "{}", o.content);
    assert_eq!(
        fs.get("/w/a.py"),
        "def f():\n    return 1\n\ndef h():\n    return 1\n"
    );
    assert_eq!(
        o.content,
        "The file /w/a.py has been edited. Here's the result of running `cat -n` on a snippet of /w/a.py:\n\
         \x20    1\tdef f():\n     2\t    return 1\n     3\t\n     4\tdef h():\n     5\t    return 1\n\
         Review the changes and make sure they are as expected. Edit the file again if necessary."
    );
}

#[tokio::test]
async fn insert_and_undo() {
    let fs = MemFs::with(&[("/w/a.txt", "a\nb\n")]);
    let mut ed = FileEditor::new("/w");
    let o = call(&mut ed, &fs, serde_json::json!({"command": "insert", "path": "/w/a.txt", "insert_line": 1, "new_str": "x"})).await;
    assert!(!o.is_error, "{}", o.content);
    assert_eq!(fs.get("/w/a.txt"), "a\nx\nb\n");
    assert!(o.content.contains("Review the changes and make sure they are as expected (correct indentation, no duplicate lines, etc)."));
    let o = call(&mut ed, &fs, serde_json::json!({"command": "insert", "path": "/w/a.txt", "insert_line": 9, "new_str": "x"})).await;
    assert_eq!(
        o.content,
        "Invalid `insert_line` parameter: 9. It should be within the range of allowed values: [0, 3]"
    );
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "undo_edit", "path": "/w/a.txt"}),
    )
    .await;
    assert!(o.content.starts_with("Last edit to /w/a.txt undone successfully. Here's the result of running `cat -n` on /w/a.txt:"));
    assert_eq!(fs.get("/w/a.txt"), "a\nb\n");
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "undo_edit", "path": "/w/a.txt"}),
    )
    .await;
    assert_eq!(o.content, "No edit history found for /w/a.txt.");
}

#[tokio::test]
async fn insert_after_a_last_line_without_newline() {
    let fs = MemFs::with(&[("/w/a.txt", "a\nb")]);
    let mut ed = FileEditor::new("/w");
    call(&mut ed, &fs, serde_json::json!({"command": "insert", "path": "/w/a.txt", "insert_line": 2, "new_str": "c"})).await;
    assert_eq!(fs.get("/w/a.txt"), "a\nb\nc\n");
}

#[tokio::test]
async fn undo_keeps_ten_versions() {
    let fs = MemFs::with(&[("/w/n.txt", "0")]);
    let mut ed = FileEditor::new("/w");
    for i in 0..12 {
        let o = call(&mut ed, &fs, serde_json::json!({"command": "str_replace", "path": "/w/n.txt", "old_str": i.to_string(), "new_str": (i + 1).to_string()})).await;
        assert!(!o.is_error, "{}", o.content);
    }
    let mut undone = 0;
    loop {
        let o = call(
            &mut ed,
            &fs,
            serde_json::json!({"command": "undo_edit", "path": "/w/n.txt"}),
        )
        .await;
        if o.is_error {
            break;
        }
        undone += 1;
    }
    assert_eq!(undone, MAX_HISTORY_PER_FILE);
    assert_eq!(fs.get("/w/n.txt"), "2");
}

#[tokio::test]
async fn refuses_large_binary_and_non_utf8_files() {
    let fs = MemFs::with(&[]);
    fs.put("/w/big.bin", &vec![b'a'; (MAX_FILE_BYTES + 1) as usize]);
    fs.put("/w/nul.bin", b"ab\0cd");
    fs.put("/w/latin1.txt", b"caf\xe9");
    let mut ed = FileEditor::new("/w");
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "/w/big.bin"}),
    )
    .await;
    assert_eq!(
        o.content,
        "File validation failed for /w/big.bin: File is too large (10.0MB). Maximum allowed size is 10MB."
    );
    let o = call(
        &mut ed,
        &fs,
        serde_json::json!({"command": "view", "path": "/w/nul.bin"}),
    )
    .await;
    assert!(
        o.content.contains("File appears to be binary"),
        "{}",
        o.content
    );
    let o = call(&mut ed, &fs, serde_json::json!({"command": "str_replace", "path": "/w/latin1.txt", "old_str": "caf", "new_str": "x"})).await;
    assert!(
        o.is_error && o.content.contains("not valid UTF-8"),
        "{}",
        o.content
    );
}

#[test]
fn truncation_matches_upstream() {
    let s = "abcdefghij";
    assert_eq!(maybe_truncate(s, 20, "<n>"), s);
    assert_eq!(maybe_truncate(s, 8, "<n>"), "abc<n>ij");
    assert_eq!(maybe_truncate(s, 2, "<n>"), "<n");
}
