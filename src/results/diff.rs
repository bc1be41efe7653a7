//! The patch: a git-style unified diff of the workspace against its input, computed
//! from two snapshots (no git needed in the image). `git apply` accepts it.

use std::collections::BTreeMap;
use std::fmt::Write;

use similar::TextDiff;

/// Files by relative path; `None` marks a file too large to diff.
pub type Files = BTreeMap<String, Option<Vec<u8>>>;

fn is_binary(b: &[u8]) -> bool {
    b.iter().take(8000).any(|&c| c == 0) || std::str::from_utf8(b).is_err()
}

/// The unified diff from `before` to `after`. Empty when nothing changed.
pub fn unified(before: &Files, after: &Files) -> String {
    let mut out = String::new();
    let paths: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for path in paths {
        let (old, new) = (before.get(path), after.get(path));
        if old == new {
            continue;
        }
        let a = format!("a/{path}");
        let b = format!("b/{path}");
        let _ = writeln!(out, "diff --git {a} {b}");
        match (old, new) {
            (None, Some(_)) => {
                let _ = writeln!(out, "new file mode 100644");
            }
            (Some(_), None) => {
                let _ = writeln!(out, "deleted file mode 100644");
            }
            _ => {}
        }
        let old_bytes = old.and_then(|o| o.as_deref());
        let new_bytes = new.and_then(|n| n.as_deref());
        let too_large = matches!(old, Some(None)) || matches!(new, Some(None));
        if too_large || old_bytes.is_some_and(is_binary) || new_bytes.is_some_and(is_binary) {
            let from = if old.is_some() {
                a.as_str()
            } else {
                "/dev/null"
            };
            let to = if new.is_some() {
                b.as_str()
            } else {
                "/dev/null"
            };
            let _ = writeln!(out, "Binary files {from} and {to} differ");
            continue;
        }
        let old_text = old_bytes
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let new_text = new_bytes
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let from = if old.is_some() { a } else { "/dev/null".into() };
        let to = if new.is_some() { b } else { "/dev/null".into() };
        let diff = TextDiff::from_lines(&old_text, &new_text);
        let _ = write!(
            out,
            "{}",
            diff.unified_diff().context_radius(3).header(&from, &to)
        );
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(items: &[(&str, &str)]) -> Files {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn added_changed_deleted() {
        let before = files(&[("a.txt", "one\ntwo\n"), ("gone.txt", "x\n")]);
        let after = files(&[("a.txt", "one\nthree\n"), ("new.txt", "hi\n")]);
        let d = unified(&before, &after);
        assert!(
            d.contains("diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n"),
            "{d}"
        );
        assert!(d.contains("-two\n+three\n"), "{d}");
        assert!(
            d.contains("new file mode 100644\n--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+hi\n"),
            "{d}"
        );
        assert!(
            d.contains("deleted file mode 100644\n--- a/gone.txt\n+++ /dev/null\n"),
            "{d}"
        );
        assert_eq!(unified(&before, &before), "");
    }

    #[test]
    fn binary_files_are_named_not_dumped() {
        let mut before = Files::new();
        before.insert("b.bin".into(), Some(vec![0, 1, 2]));
        let mut after = Files::new();
        after.insert("b.bin".into(), Some(vec![0, 1, 3]));
        assert!(unified(&before, &after).contains("Binary files a/b.bin and b/b.bin differ"));
    }
}
