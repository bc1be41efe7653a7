//! Container paths as plain strings: the container's filesystem is not the host's,
//! so `std::path` (and the host's separator and symlinks) must not be involved.

use crate::workspace::WorkspaceError;

/// `path` made lexically clean (`.`, `..`, repeated and trailing slashes removed).
/// It must be absolute: relative paths have no meaning without a shell's cwd.
pub(super) fn clean_abs(path: &str) -> Result<String, WorkspaceError> {
    if !path.starts_with('/') {
        return Err(WorkspaceError::Path {
            path: path.to_string(),
            message: "must be an absolute path".into(),
        });
    }
    if path.contains('\0') {
        return Err(WorkspaceError::Path {
            path: path.replace('\0', "\\0"),
            message: "contains a NUL byte".into(),
        });
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Parent directory and last component of a clean absolute path; `None` for `/`.
pub(super) fn split(clean: &str) -> Option<(&str, &str)> {
    let i = clean.rfind('/')?;
    let name = &clean[i + 1..];
    if name.is_empty() {
        return None;
    }
    Some((if i == 0 { "/" } else { &clean[..i] }, name))
}

/// Joins a link target onto the directory holding the link.
pub(super) fn resolve_link(link_dir: &str, target: &str) -> Result<String, WorkspaceError> {
    if target.starts_with('/') {
        clean_abs(target)
    } else {
        clean_abs(&format!("{link_dir}/{target}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_paths() {
        assert_eq!(clean_abs("/a/./b//c/").unwrap(), "/a/b/c");
        assert_eq!(clean_abs("/a/../../b").unwrap(), "/b");
        assert_eq!(clean_abs("/").unwrap(), "/");
        assert!(clean_abs("a/b").is_err());
        assert!(clean_abs("").is_err());
    }

    #[test]
    fn splits_paths() {
        assert_eq!(split("/a/b"), Some(("/a", "b")));
        assert_eq!(split("/a"), Some(("/", "a")));
        assert_eq!(split("/"), None);
    }

    #[test]
    fn resolves_links() {
        assert_eq!(resolve_link("/w/d", "../x").unwrap(), "/w/x");
        assert_eq!(resolve_link("/w/d", "/etc/y").unwrap(), "/etc/y");
    }
}
