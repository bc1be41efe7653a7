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
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
