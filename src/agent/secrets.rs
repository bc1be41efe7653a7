//! Secret masking: every secret value the job uses is replaced by `<secret-hidden>`
//! before the LLM, the event log, the store or a webhook sees it.

/// Replaces known secret values in text.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    values: Vec<String>,
}

pub const HIDDEN: &str = "<secret-hidden>";

impl Masker {
    /// Values shorter than 4 characters are not masked (they would mangle ordinary text).
    pub fn new(values: impl IntoIterator<Item = String>) -> Masker {
        let mut values: Vec<String> = values.into_iter().filter(|v| v.len() >= 4).collect();
        // Longest first, so a secret that contains another is hidden whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Masker { values }
    }

    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), HIDDEN);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_longest_first() {
        let m = Masker::new(["abcd".to_string(), "abcdefgh".to_string(), "x".to_string()]);
        assert_eq!(
            m.mask("k=abcdefgh; j=abcd; x"),
            "k=<secret-hidden>; j=<secret-hidden>; x"
        );
    }
}
