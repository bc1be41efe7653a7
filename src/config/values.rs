//! Reading typed values out of the environment. A value that is set but does not
//! parse is an error naming the variable, never a silent default: a typo in
//! `FLEET_LEASE_SECS` must not quietly become 30 s.

use std::time::Duration;

/// A configuration value that is set but unusable. `fleet` exits 2 on it.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?}: {expected}")]
pub struct ConfigError {
    pub var: String,
    pub value: String,
    pub expected: String,
}

impl ConfigError {
    pub fn new(var: &str, value: &str, expected: impl Into<String>) -> ConfigError {
        ConfigError {
            var: var.to_string(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// Seconds (fractions allowed) of `var`, at least `min`; `default` when unset.
pub fn seconds(var: &str, default: f64, min: f64) -> Result<Duration, ConfigError> {
    let Some(v) = super::env(var) else {
        return Ok(Duration::from_secs_f64(default));
    };
    parse_seconds(&v, min)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| ConfigError::new(var, &v, format!("expected a number of seconds >= {min}")))
}

fn parse_seconds(v: &str, min: f64) -> Option<f64> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= min && *s < 1e9)
}

/// A whole number of `var` within `range`; `default` when unset.
pub fn count(
    var: &str,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ConfigError> {
    let Some(v) = super::env(var) else {
        return Ok(default);
    };
    v.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            ConfigError::new(
                var,
                &v,
                format!(
                    "expected a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

/// A comma-separated list of seconds (each > 0), sorted; `default` when unset.
pub fn seconds_list(var: &str, default: &[u64]) -> Result<Vec<Duration>, ConfigError> {
    let Some(v) = super::env(var) else {
        return Ok(default.iter().map(|s| Duration::from_secs(*s)).collect());
    };
    let bad = || {
        ConfigError::new(
            var,
            &v,
            "expected seconds > 0, comma-separated (e.g. 5,30,300)",
        )
    };
    let mut out = v
        .split(',')
        .map(|p| {
            parse_seconds(p, 0.0)
                .filter(|s| *s > 0.0)
                .map(Duration::from_secs_f64)
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)?;
    if out.is_empty() || out.len() > 32 {
        return Err(bad());
    }
    out.sort();
    Ok(out)
}

/// An absolute `http://` or `https://` URL.
pub fn http_url(var: &str) -> Result<Option<String>, ConfigError> {
    let Some(v) = super::env(var) else {
        return Ok(None);
    };
    match reqwest::Url::parse(&v) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(Some(v)),
        _ => Err(ConfigError::new(
            var,
            &v,
            "expected an http:// or https:// URL",
        )),
    }
}

/// One of `choices`; `default` when unset.
pub fn choice<'a>(
    var: &str,
    default: &'a str,
    choices: &[&'a str],
) -> Result<&'a str, ConfigError> {
    let Some(v) = super::env(var) else {
        return Ok(default);
    };
    choices
        .iter()
        .find(|c| **c == v.trim())
        .copied()
        .ok_or_else(|| ConfigError::new(var, &v, format!("expected one of {}", choices.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parse() {
        assert_eq!(parse_seconds("2.5", 0.0), Some(2.5));
        assert_eq!(parse_seconds(" 3 ", 1.0), Some(3.0));
        assert_eq!(parse_seconds("0.5", 1.0), None);
        assert_eq!(parse_seconds("-1", 0.0), None);
        assert_eq!(parse_seconds("NaN", 0.0), None);
        assert_eq!(parse_seconds("inf", 0.0), None);
        assert_eq!(parse_seconds("30s", 0.0), None);
    }

    #[test]
    fn message_names_the_variable() {
        let e = ConfigError::new(
            "FLEET_LEASE_SECS",
            "abc",
            "expected a number of seconds >= 1",
        );
        assert_eq!(
            e.to_string(),
            "FLEET_LEASE_SECS=\"abc\": expected a number of seconds >= 1"
        );
    }
}
