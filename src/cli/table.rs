//! Plain-text tables for people (`--json` is for scripts).

use std::fmt::Write;

use crate::job::{JobResult, Outcome};

/// Formats rows under a header, each column as wide as its widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&mut out, header.to_vec());
    for r in rows {
        line(&mut out, r.iter().map(String::as_str).collect());
    }
    out
}

pub fn duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (secs / 3600.0) as u64,
            ((secs % 3600.0) / 60.0) as u64
        )
    }
}

/// The summary table of a batch, with a totals line.
pub fn results(results: &[JobResult]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.job_id.clone(),
                r.outcome.to_string(),
                r.steps.to_string(),
                duration(r.duration_secs),
                format!("${:.4}", r.cost_usd),
                r.error
                    .as_ref()
                    .map(|e| format!("{}: {}", e.kind, first_line(&e.message, 60)))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = render(
        &["JOB", "OUTCOME", "STEPS", "DURATION", "COST", "ERROR"],
        &rows,
    );
    let ok = results
        .iter()
        .filter(|r| r.outcome == Outcome::Succeeded)
        .count();
    let cost: f64 = results.iter().map(|r| r.cost_usd).sum();
    let _ = writeln!(
        out,
        "\n{ok}/{} succeeded, total cost ${cost:.4}",
        results.len()
    );
    out
}

pub fn first_line(s: &str, max: usize) -> String {
    let l = s.lines().next().unwrap_or("");
    if l.chars().count() > max {
        format!("{}…", l.chars().take(max).collect::<String>())
    } else {
        l.to_string()
    }
}
