//! Results of a run: the input placed in the workspace, the patch (workspace vs
//! input), artifacts collected by glob, and everything uploaded to the store
//! (DESIGN.md "Store layout"). The webhook is sent after all of that is stored.

pub mod base;
pub mod base_tar;
pub mod diff;
pub mod input;
pub mod webhook;

use globset::{Glob, GlobSetBuilder};

/// Files of a snapshot that match any of the job's artifact globs.
pub fn match_artifacts<'a>(
    globs: &[String],
    paths: impl Iterator<Item = &'a String>,
) -> Vec<&'a String> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        // Validated at parse time; a glob that still fails matches nothing.
        if let Ok(g) = Glob::new(g) {
            b.add(g);
        }
    }
    let Ok(set) = b.build() else {
        return Vec::new();
    };
    paths
        .filter(|p| !p.split('/').any(|s| s == "..") && set.is_match(p.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn artifacts_match_globs() {
        let paths = vec![
            "reports/a.md".to_string(),
            "reports/x/b.md".into(),
            "src/c.rs".into(),
        ];
        let got = super::match_artifacts(&["reports/**/*.md".into()], paths.iter());
        assert_eq!(got.len(), 2);
    }
}
