//! Tracing set-up and Prometheus metrics (names in [`metrics`]).

pub mod metrics;
pub mod server;

pub use metrics::metrics;

/// Logs go to stderr; `RUST_LOG` filters (default `warn` for commands with their own
/// display, `info` for workers). `FLEET_LOG_FORMAT=json` for machine-readable logs.
pub fn init_tracing(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = std::env::var("FLEET_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| MaskedStderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
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
