//! `fleet`: parse, set up tracing, dispatch; errors printed on one line with their
//! context; exit 0 (all good), 1 (a job did not succeed, or a failure), 2 (bad input).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = agent_fleet::cli::Cli::parse();
    if let Err(e) = agent_fleet::telemetry::init_tracing("warn") {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match rt.block_on(agent_fleet::cli::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<agent_fleet::cli::UsageError>().is_some()
                || e.downcast_ref::<agent_fleet::config::ConfigError>()
                    .is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    };
    // Don't wait for stray blocking tasks (a hung Docker call) at exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}
