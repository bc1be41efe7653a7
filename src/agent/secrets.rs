//! Secret masking: every value a job resolves (its secrets, its LLM key, its webhook
//! signing secret) is replaced by `<secret-hidden>` before the LLM, the event log,
//! the store, a webhook or the worker's own log sees it.
//!
//! Exact matching is not enough: an agent can print a value encoded, or a multi-line
//! value can arrive split (a patch puts `+` before every line). So each value is
//! searched in several forms: raw, JSON-escaped, URL-encoded, base64 (standard and
//! URL-safe alphabets, at the three byte alignments a value can have inside a longer
//! stream, so padding and a trailing newline do not matter) and, for a multi-line
//! value, each of its lines. Text that was cut in the middle (the `<response clipped:
//! …>` notice) is also masked where a form was cut: a form's beginning at the end of
//! the head, its end at the start of the tail.
//!
//! Values shorter than [`MIN_SECRET_CHARS`] are refused before a job runs (the
//! policy): masking them would destroy ordinary output.

use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

pub const HIDDEN: &str = "<secret-hidden>";

/// The shortest value that can be masked without mangling ordinary text.
pub const MIN_SECRET_CHARS: usize = 6;

/// The shortest cut-off piece of a form that is still hidden at a cut: shorter
/// pieces tell next to nothing and would match ordinary text all the time.
const MIN_PARTIAL_CHARS: usize = 3;

/// Where a truncated text was cut (see `workspace::output`).
const CLIP_NOTICE: &str = "\n<response clipped: ";

/// Clip notices looked at in one text (a real output has one).
const MAX_CUTS: usize = 8;

/// Replaces known secret values, in their common encodings, in text.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Every form of every value, longest first.
    forms: Vec<String>,
    matcher: Option<Arc<AhoCorasick>>,
}

impl Masker {
    /// A masker for `values` (shorter ones than [`MIN_SECRET_CHARS`] are skipped:
    /// the policy refuses them before they get here).
    pub fn new(values: impl IntoIterator<Item = String>) -> Masker {
        let mut forms = Vec::new();
        for v in values {
            if v.chars().count() < MIN_SECRET_CHARS {
                continue;
            }
            forms_of(&v, &mut forms);
        }
        forms.retain(|f| f.chars().count() >= MIN_SECRET_CHARS);
        // Longest first, so a form that contains another is hidden whole.
        forms.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        forms.dedup();
        let matcher = (!forms.is_empty()).then(|| {
            Arc::new(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&forms)
                    .expect("literal patterns build"),
            )
        });
        Masker { forms, matcher }
    }

    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// The text with every form of every value hidden, and partial forms hidden
    /// around a clip notice.
    pub fn mask(&self, text: &str) -> String {
        if self.matcher.is_none() {
            return text.to_string();
        }
        // The pieces between clip notices; a form can be cut at each notice's edges.
        // A loop, not recursion, and a bounded number of notices: a hostile output
        // can print as many fake ones as it likes.
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        let mut after_cut = false;
        for _ in 0..MAX_CUTS {
            let Some(at) = rest.find(CLIP_NOTICE) else {
                break;
            };
            let (piece, tail) = rest.split_at(at);
            // The notice ends at its closing `>` and a newline.
            let end = tail.find(">\n").map(|i| i + 2).unwrap_or(tail.len());
            let mut masked = self.replace(piece);
            if after_cut {
                masked = self.cut_start(&masked);
            }
            out.push_str(&self.cut_end(&masked));
            out.push_str(&self.replace(&tail[..end]));
            rest = &tail[end..];
            after_cut = true;
        }
        let mut masked = self.replace(rest);
        if after_cut {
            masked = self.cut_start(&masked);
        }
        out.push_str(&masked);
        out
    }

    /// Bytes (artifacts): masked as text when they are UTF-8, byte-wise otherwise.
    pub fn mask_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        let Some(m) = &self.matcher else {
            return bytes.to_vec();
        };
        match std::str::from_utf8(bytes) {
            Ok(s) => self.mask(s).into_bytes(),
            Err(_) => m.replace_all_bytes(bytes, &vec![HIDDEN.as_bytes(); self.forms.len()]),
        }
    }

    fn replace(&self, text: &str) -> String {
        match &self.matcher {
            Some(m) => m.replace_all(text, &vec![HIDDEN; self.forms.len()]),
            None => text.to_string(),
        }
    }

    /// Hides a trailing piece of `text` that is the beginning of a form.
    fn cut_end(&self, text: &str) -> String {
        let t = text.as_bytes();
        let best = self
            .forms
            .iter()
            .map(|f| {
                let tail = &t[t.len().saturating_sub(f.len())..];
                overlap(tail, f.as_bytes(), |k| {
                    text.is_char_boundary(t.len() - k) && f.is_char_boundary(k)
                })
            })
            .max()
            .unwrap_or(0);
        if best == 0 {
            return text.to_string();
        }
        format!("{}{HIDDEN}", &text[..text.len() - best])
    }

    /// Hides a leading piece of `text` that is the end of a form.
    fn cut_start(&self, text: &str) -> String {
        let t = text.as_bytes();
        let best = self
            .forms
            .iter()
            .map(|f| {
                let head: Vec<u8> = t[..t.len().min(f.len())].iter().rev().copied().collect();
                let rf: Vec<u8> = f.bytes().rev().collect();
                overlap(&head, &rf, |k| {
                    text.is_char_boundary(k) && f.is_char_boundary(f.len() - k)
                })
            })
            .max()
            .unwrap_or(0);
        if best == 0 {
            return text.to_string();
        }
        format!("{HIDDEN}{}", &text[best..])
    }
}

/// The longest `k` (at least [`MIN_PARTIAL_CHARS`] bytes, shorter than the form)
/// such that `text` ends with `form[..k]` and `ok(k)`; 0 when there is none. Linear
/// in the lengths (the prefix function of `form`), so a long key costs no more
/// than reading it.
fn overlap(text: &[u8], form: &[u8], ok: impl Fn(usize) -> bool) -> usize {
    if form.len() < 2 {
        return 0;
    }
    let mut pi = vec![0usize; form.len()];
    for i in 1..form.len() {
        let mut k = pi[i - 1];
        while k > 0 && form[i] != form[k] {
            k = pi[k - 1];
        }
        if form[i] == form[k] {
            k += 1;
        }
        pi[i] = k;
    }
    let mut k = 0;
    for &c in text {
        while k > 0 && (k == form.len() || c != form[k]) {
            k = pi[k - 1];
        }
        if c == form[k] {
            k += 1;
        }
    }
    // Longest first, down the chain of borders, to one that may be cut there.
    while k > 0 {
        if k < form.len() && k >= MIN_PARTIAL_CHARS && ok(k) {
            return k;
        }
        k = pi[k - 1];
    }
    0
}

/// The forms one value is searched in.
fn forms_of(v: &str, out: &mut Vec<String>) {
    let mut whole = vec![v.to_string()];
    // A value with a trailing newline (a key file) is printed without it as often.
    let trimmed = v.trim_end_matches(['\n', '\r']);
    if trimmed != v {
        whole.push(trimmed.to_string());
    }
    for w in &whole {
        out.push(w.clone());
        let json = serde_json::to_string(w).expect("strings serialise");
        out.push(json[1..json.len() - 1].to_string());
        let url = percent_encoding::utf8_percent_encode(w, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
        out.push(url.clone());
        out.push(lower_hex_escapes(&url));
        out.push(url.replace("%20", "+"));
        // Only the unreserved characters left as they are (what most URL builders do).
        out.push(percent_encoding::utf8_percent_encode(w, UNRESERVED_KEPT).to_string());
        base64_cores(w.as_bytes(), out);
    }
    if trimmed.contains('\n') {
        for line in trimmed.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().chars().count() >= MIN_SECRET_CHARS {
                out.push(line.to_string());
            }
        }
    }
}

/// Everything but `A-Za-z0-9-._~` is escaped.
const UNRESERVED_KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn lower_hex_escapes(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut chars = url.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            out.extend(chars.by_ref().take(2).map(|h| h.to_ascii_lowercase()));
        }
    }
    out
}

/// The base64 characters that depend on `bytes` alone, for each of the three
/// alignments the bytes can have in a longer encoded stream: whatever comes
/// before or after (padding, a newline, other data), these characters appear.
fn base64_cores(bytes: &[u8], out: &mut Vec<String>) {
    for offset in 0..3usize {
        let mut buf = vec![0u8; offset];
        buf.extend_from_slice(bytes);
        let bits_start = 8 * offset;
        let bits_end = 8 * (offset + bytes.len());
        // Character i encodes bits [6i, 6i + 6).
        let first = bits_start.div_ceil(6);
        let last = bits_end / 6; // exclusive
        if last <= first {
            continue;
        }
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let enc = engine.encode(&buf);
            if let Some(core) = enc.get(first..last) {
                out.push(core.to_string());
            }
        }
    }
}

/// The maskers of the jobs running in this process: the worker's own log lines
/// (tracing) pass through them, so an error text that quotes a value is hidden
/// there too.
static ACTIVE: RwLock<Vec<(u64, Masker)>> = RwLock::new(Vec::new());

/// Keeps a job's masker active for the process's log until dropped.
pub struct ActiveMask(u64);

impl Masker {
    /// Adds this masker to the ones the process's log output goes through.
    pub fn activate(&self) -> Option<ActiveMask> {
        if self.is_empty() {
            return None;
        }
        let id = rand::random::<u64>();
        ACTIVE
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, self.clone()));
        Some(ActiveMask(id))
    }
}

impl Drop for ActiveMask {
    fn drop(&mut self) {
        ACTIVE
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| *id != self.0);
    }
}

/// `text` through every active masker (the log writer uses it).
pub fn mask_active(text: &str) -> std::borrow::Cow<'_, str> {
    let active = ACTIVE.read().unwrap_or_else(|e| e.into_inner());
    if active.is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for (_, m) in active.iter() {
        out = m.mask(&out);
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    const S: &str = "s3cr3t/Value+with spaces&\"quotes\"";

    #[test]
    fn masks_longest_first_and_skips_short_values() {
        let m = Masker::new([
            "abcdef".to_string(),
            "abcdefghij".to_string(),
            "xy".to_string(),
        ]);
        assert_eq!(
            m.mask("k=abcdefghij; j=abcdef; xy"),
            "k=<secret-hidden>; j=<secret-hidden>; xy"
        );
    }

    #[test]
    fn masks_every_encoding() {
        let m = Masker::new([S.to_string()]);
        let json = serde_json::to_string(S).unwrap();
        let url = percent_encoding::utf8_percent_encode(S, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
        let with_nl = format!("{S}\n");
        let cases = [
            S.to_string(),
            json[1..json.len() - 1].to_string(),
            url.clone(),
            lower_hex_escapes(&url),
            STANDARD.encode(S),
            STANDARD_NO_PAD.encode(S),
            URL_SAFE.encode(S),
            STANDARD.encode(&with_nl),
            // Inside a longer encoded stream, at each alignment.
            STANDARD.encode(format!("x{S}yz")),
            STANDARD.encode(format!("xy{S}")),
        ];
        for c in cases {
            let out = m.mask(&format!("before {c} after"));
            assert!(out.contains(HIDDEN), "{c} -> {out}");
            assert!(!out.contains(&c), "{c} -> {out}");
            assert!(
                out.starts_with("before ") && out.ends_with(" after"),
                "{out}"
            );
        }
    }

    #[test]
    fn masks_each_line_of_a_multi_line_value() {
        let key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\nhkiG9w0BAQEFAASC\n-----END KEY-----\n";
        let m = Masker::new([key.to_string()]);
        let patch =
            "+-----BEGIN KEY-----\n+MIIEvQIBADANBgkq\n+hkiG9w0BAQEFAASC\n+-----END KEY-----\n";
        let out = m.mask(patch);
        assert!(
            !out.contains("MIIEvQIBADANBgkq") && !out.contains("hkiG9w0BAQEFAASC"),
            "{out}"
        );
    }

    #[test]
    fn masks_a_value_cut_by_the_clip_notice() {
        let m = Masker::new(["ABCDEFGHIJKLMNOP".to_string()]);
        let text = "out: ABCDEFG\n<response clipped: 5 of 100 bytes of output were cut from the middle>\nJKLMNOP done";
        let out = m.mask(text);
        assert!(
            !out.contains("ABCDEFG") && !out.contains("JKLMNOP"),
            "{out}"
        );
        assert!(out.contains("<response clipped"), "{out}");
        // Any number of (fake) notices: bounded work, every full value still hidden.
        let many = format!(
            "{}ABCDEFGHIJKLMNOP",
            "x\n<response clipped: ABCDEFGHIJKLMNOP>\n".repeat(100_000)
        );
        let out = m.mask(&many);
        assert!(!out.contains("ABCDEFGHIJKLMNOP"));
        // Ordinary text around a notice is left alone.
        let plain = "abc\n<response clipped: 1 of 2 bytes of output were cut from the middle>\nxyz";
        assert_eq!(m.mask(plain), plain);
    }

    #[test]
    fn masks_bytes_and_the_active_log() {
        let m = Masker::new(["topsecret-1".to_string()]);
        assert_eq!(
            m.mask_bytes(b"a topsecret-1 b"),
            b"a <secret-hidden> b".to_vec()
        );
        let mut bin = vec![0xff, 0xfe];
        bin.extend_from_slice(b"topsecret-1");
        assert!(!m.mask_bytes(&bin).windows(11).any(|w| w == b"topsecret-1"));
        assert_eq!(mask_active("x topsecret-1"), "x topsecret-1");
        let guard = m.activate();
        assert_eq!(mask_active("x topsecret-1"), "x <secret-hidden>");
        drop(guard);
        assert_eq!(mask_active("x topsecret-1"), "x topsecret-1");
    }
}
