//! Bounded capture of a command's output: keeps the head and the tail, counts the
//! rest. Memory stays at about `2 × half` bytes however much a command prints.

/// Collects bytes, keeping the first and last `limit / 2` bytes.
pub struct HeadTail {
    half: usize,
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    total: u64,
}

impl HeadTail {
    /// `limit` is the number of characters the final text may hold (before the notice).
    pub fn new(limit: usize) -> HeadTail {
        let half = (limit / 2).max(1);
        HeadTail {
            half,
            head: Vec::new(),
            tail: std::collections::VecDeque::new(),
            total: 0,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if self.head.len() < self.half {
            let n = (self.half - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        if bytes.is_empty() {
            return;
        }
        if bytes.len() >= self.half {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.half..]);
        } else {
            let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.half);
            self.tail.drain(..overflow);
            self.tail.extend(bytes);
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The text, with a notice in the middle when anything was cut.
    pub fn finish(self) -> String {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let head = String::from_utf8_lossy(&self.head);
        let tail: Vec<u8> = self.tail.into_iter().collect();
        let tail = String::from_utf8_lossy(&tail);
        if kept >= self.total {
            return format!("{head}{tail}");
        }
        format!(
            "{head}\n<response clipped: {} of {} bytes of output were cut from the middle>\n{tail}",
            self.total - kept,
            self.total
        )
    }
}

/// Cuts `text` in the middle to at most `limit` characters (plus a notice).
pub fn truncate_middle(text: &str, limit: usize) -> String {
    let n = text.chars().count();
    if n <= limit {
        return text.to_string();
    }
    let half = limit / 2;
    let head: String = text.chars().take(half).collect();
    let tail: String = text.chars().skip(n - half).collect();
    format!(
        "{head}\n<response clipped: {} characters were cut from the middle>\n{tail}",
        n - 2 * half
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_head_and_tail() {
        let mut h = HeadTail::new(10);
        for _ in 0..1000 {
            h.push(b"abcdefghij");
        }
        assert_eq!(h.total_bytes(), 10_000);
        let s = h.finish();
        assert!(s.starts_with("abcde\n<response clipped"), "{s}");
        assert!(s.ends_with("fghij"), "{s}");
        let mut h = HeadTail::new(100);
        h.push(b"short");
        assert_eq!(h.finish(), "short");
    }

    #[test]
    fn truncates_text() {
        assert_eq!(truncate_middle("abc", 10), "abc");
        let t = truncate_middle(&"x".repeat(100), 10);
        assert!(t.contains("90 characters were cut"));
    }
}
