//! Tracing set-up and Prometheus metrics (names in [`metrics`]).

pub mod metrics;
pub mod server;

pub use metrics::metrics;

/// Logs go to stderr; `RUST_LOG` filters (default `warn` for commands with their own
/// display, `info` for workers). `FLEET_LOG_FORMAT=json` for machine-readable logs.
/// Colours only on a terminal and without `NO_COLOR` (a log file or collector gets
/// plain text). Records of crates that log through the `log` crate are bridged in.
/// An unusable `FLEET_LOG_FORMAT` is an error.
pub fn init_tracing(default_level: &str) -> Result<(), crate::config::ConfigError> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let json = crate::config::log_json()?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| MaskedStderr)
        .with_ansi(ansi(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ));
    // try_init also installs the `log` bridge (tracing-subscriber's tracing-log feature).
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}

/// <https://no-color.org>: any non-empty `NO_COLOR` turns colours off.
fn ansi(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use super::ansi;
        assert!(ansi(true, None));
        assert!(ansi(true, Some("".into())));
        assert!(!ansi(true, Some("1".into())));
        assert!(!ansi(false, None));
    }
}

/// stderr through the maskers of the jobs running in this process
/// ([`crate::agent::secrets::mask_active`]): an error text that quotes a job's
/// secret is hidden in the worker's log too. The fmt layer writes each event
/// with one `write_all`, so a value is never split across two calls.
struct MaskedStderr;

impl std::io::Write for MaskedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let masked = crate::agent::secrets::mask_active(&text);
        std::io::stderr().write_all(masked.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
