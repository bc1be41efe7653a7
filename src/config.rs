//! Settings resolved once: flag > environment > default. Environment variable names
//! live here and only here (DESIGN.md "CLI").

mod values;

use std::time::Duration;

pub use values::ConfigError;

pub const ENV_QUEUE: &str = "FLEET_QUEUE";
pub const ENV_STORE: &str = "FLEET_STORE";
pub const ENV_CONCURRENCY: &str = "FLEET_CONCURRENCY";
pub const ENV_DEFAULT_IMAGE: &str = "FLEET_DEFAULT_IMAGE";
pub const ENV_METRICS_ADDR: &str = "FLEET_METRICS_ADDR";
pub const ENV_WEBHOOK_URL: &str = "FLEET_WEBHOOK_URL";
pub const ENV_WEBHOOK_SECRET: &str = "FLEET_WEBHOOK_SECRET";
pub const ENV_S3_ENDPOINT: &str = "FLEET_S3_ENDPOINT";
pub const ENV_LLM_MODEL: &str = "LLM_MODEL";
pub const ENV_LLM_BASE_URL: &str = "LLM_BASE_URL";
pub const ENV_LLM_API_KEY: &str = "LLM_API_KEY";
/// First LLM retry wait in seconds (upstream: 8); doubled up to 8× that.
pub const ENV_LLM_RETRY_MIN_SECS: &str = "FLEET_LLM_RETRY_MIN_SECS";
/// Seconds without a heartbeat before a running job counts as abandoned (default 30).
pub const ENV_LEASE_SECS: &str = "FLEET_LEASE_SECS";
/// Retry delays in seconds, comma-separated: one delay-tier queue each (default 5,30,300).
pub const ENV_RETRY_TIERS_SECS: &str = "FLEET_RETRY_TIERS_SECS";
/// Put before every queue and exchange name: several fleets on one vhost.
pub const ENV_QUEUE_PREFIX: &str = "FLEET_QUEUE_PREFIX";
/// Attempts a job gets for infrastructure faults before it is failed.
pub const ENV_MAX_ATTEMPTS: &str = "FLEET_MAX_ATTEMPTS";
/// MiB of workspace files one snapshot reads for the patch (default 256); a job
/// holds at most two snapshots at once, so this bounds a job's memory.
pub const ENV_SNAPSHOT_MAX_MB: &str = "FLEET_SNAPSHOT_MAX_MB";
/// Seconds between a worker's sweeps for stranded jobs (default 300; 0 = off).
/// Workspaces a worker may start ahead for deliveries waiting for a slot.
pub const ENV_PREPARE_AHEAD: &str = "FLEET_PREPARE_AHEAD";
pub const ENV_SWEEP_SECS: &str = "FLEET_SWEEP_SECS";
/// Seconds a job may sit `queued` with no message, or `running` with a silent
/// owner, before a sweep moves it (default 600).
pub const ENV_SWEEP_GRACE_SECS: &str = "FLEET_SWEEP_GRACE_SECS";

// The worker policy (`crate::policy`, DESIGN.md "Worker policy").
/// Worker variables jobs may name in `secrets`, `llm.api_key_env`, `webhook.secret_env`.
pub const ENV_JOB_SECRETS: &str = "FLEET_JOB_SECRETS";
/// Base URLs jobs may name in `llm.base_url` (besides `LLM_BASE_URL`).
pub const ENV_LLM_ENDPOINTS: &str = "FLEET_LLM_ENDPOINTS";
/// Docker networks jobs may name in `limits.network` (`none` always).
pub const ENV_JOB_NETWORKS: &str = "FLEET_JOB_NETWORKS";
/// `1`: `host` may be listed in `FLEET_JOB_NETWORKS`.
pub const ENV_ALLOW_HOST_NETWORK: &str = "FLEET_ALLOW_HOST_NETWORK";
/// Users jobs may name in `limits.user` (unset: any but root).
pub const ENV_JOB_USERS: &str = "FLEET_JOB_USERS";
pub const ENV_MAX_MEMORY_MB: &str = "FLEET_MAX_MEMORY_MB";
pub const ENV_MAX_CPUS: &str = "FLEET_MAX_CPUS";
pub const ENV_MAX_PIDS: &str = "FLEET_MAX_PIDS";
pub const ENV_MAX_TIMEOUT_SECS: &str = "FLEET_MAX_TIMEOUT_SECS";
pub const ENV_MAX_ITERATIONS: &str = "FLEET_MAX_ITERATIONS";
pub const ENV_MAX_DISK_MB: &str = "FLEET_MAX_DISK_MB";
/// `1`: job webhooks may reach loopback, private and link-local addresses.
pub const ENV_WEBHOOK_ALLOW_PRIVATE: &str = "FLEET_WEBHOOK_ALLOW_PRIVATE";
/// When workers pull job images: `if-not-present` (default), `always`, `never`.
pub const ENV_IMAGE_PULL: &str = "FLEET_IMAGE_PULL";
/// Seconds one image pull may take before it fails as an infrastructure fault.
pub const ENV_IMAGE_PULL_TIMEOUT_SECS: &str = "FLEET_IMAGE_PULL_TIMEOUT_SECS";
/// A PEM file of CA certificates trusted for `amqps://`, besides the system roots.
pub const ENV_AMQP_CA_FILE: &str = "FLEET_AMQP_CA_FILE";
/// `json` for machine-readable logs; `text` (the default) otherwise.
pub const ENV_LOG_FORMAT: &str = "FLEET_LOG_FORMAT";

pub const DEFAULT_STORE: &str = "./fleet-data";
pub const DEFAULT_QUEUE: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_IMAGE: &str = "agent-fleet/workspace:latest";
pub const DEFAULT_LLM_BASE_URL: &str = "https://api.openai.com/v1";

/// Reads an environment variable, treating empty as unset.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// flag, else environment, else default.
pub fn resolve(flag: Option<String>, env_name: &str, default: &str) -> String {
    flag.or_else(|| env(env_name))
        .unwrap_or_else(|| default.to_string())
}

/// The default image for jobs that name none.
pub fn default_image() -> String {
    env(ENV_DEFAULT_IMAGE).unwrap_or_else(|| DEFAULT_IMAGE.to_string())
}

/// Workspaces started ahead by default: enough that a freed slot finds the next
/// job's container running, few enough to hold little on the host.
pub const DEFAULT_PREPARE_AHEAD: u32 = 2;

/// How jobs are run, shared by `fleet run` and `fleet worker`.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub worker_id: String,
    /// Heartbeat period while a job runs; the lease is a few periods.
    pub heartbeat: Duration,
    pub lease: Duration,
    /// Attempts in all for infrastructure faults.
    pub max_attempts: u32,
    /// Waits before attempt 2, 3, … (the last repeats).
    pub retry_delays: Vec<Duration>,
    /// Base URL for jobs without `llm.base_url` (the scripted LLM under `--mock-llm`).
    pub llm_base_url: String,
    /// True when `llm_base_url` is the in-process scripted LLM (no API key needed).
    pub mock_llm: bool,
    pub llm_model: Option<String>,
    pub llm_min_backoff: Duration,
    /// Worker-wide webhook (in addition to each job's).
    pub webhook_url: Option<String>,
    pub webhook_secret_env: String,
    /// Bytes of files one workspace snapshot reads (`FLEET_SNAPSHOT_MAX_MB`).
    pub snapshot_max_bytes: u64,
    /// Deliveries beyond the slots whose workspaces are started while they wait
    /// for a slot (`FLEET_PREPARE_AHEAD`, 0 turns pipelining off).
    pub prepare_ahead: usize,
}

impl RunSettings {
    /// Reads the environment; a value that is set but unusable is an error naming it.
    pub fn from_env(worker_id: String) -> Result<RunSettings, ConfigError> {
        let lease = values::seconds(ENV_LEASE_SECS, 30.0, 1.0)?;
        Ok(RunSettings {
            worker_id,
            // Several beats per lease, so one slow store write does not lose it.
            heartbeat: lease / 6,
            lease,
            max_attempts: values::count(ENV_MAX_ATTEMPTS, 3, 1..=100)?,
            retry_delays: retry_tiers()?,
            llm_base_url: values::http_url(ENV_LLM_BASE_URL)?
                .unwrap_or_else(|| DEFAULT_LLM_BASE_URL.to_string()),
            mock_llm: false,
            llm_model: env(ENV_LLM_MODEL),
            // Upstream's first wait is 8 s.
            llm_min_backoff: values::seconds(ENV_LLM_RETRY_MIN_SECS, 8.0, 0.0)?,
            webhook_url: values::http_url(ENV_WEBHOOK_URL)?,
            webhook_secret_env: ENV_WEBHOOK_SECRET.to_string(),
            snapshot_max_bytes: u64::from(values::count(ENV_SNAPSHOT_MAX_MB, 256, 1..=1 << 20)?)
                << 20,
            prepare_ahead: values::count(ENV_PREPARE_AHEAD, DEFAULT_PREPARE_AHEAD, 0..=64)?
                as usize,
        })
    }

    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let i = (attempt.saturating_sub(1) as usize).min(self.retry_delays.len().saturating_sub(1));
        self.retry_delays
            .get(i)
            .copied()
            .unwrap_or(Duration::from_secs(5))
    }
}

/// `<host>-<pid>-<random>`: unique per process, and its host part names the host
/// for cleaning up what dead runs of this host left.
pub fn new_worker_id() -> String {
    let host = hostname();
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| env("HOSTNAME"))
        .unwrap_or_else(|| "localhost".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The retry delays (`FLEET_RETRY_TIERS_SECS`), ascending (default 5,30,300).
pub fn retry_tiers() -> Result<Vec<Duration>, ConfigError> {
    values::seconds_list(ENV_RETRY_TIERS_SECS, &[5, 30, 300])
}

/// Broker options shared by every command: the queue-name prefix, retry tiers and
/// extra CA certificates from the environment.
pub fn amqp_options() -> Result<crate::queue::AmqpOptions, ConfigError> {
    Ok(crate::queue::AmqpOptions {
        prefix: env(ENV_QUEUE_PREFIX).unwrap_or_default(),
        retry_tiers: retry_tiers()?,
        ca_file: env(ENV_AMQP_CA_FILE).map(std::path::PathBuf::from),
        ..Default::default()
    })
}

/// The image pull policy (`FLEET_IMAGE_PULL`) and the deadline of one pull
/// (`FLEET_IMAGE_PULL_TIMEOUT_SECS`, default 1800 s).
pub fn image_pull() -> Result<crate::workspace::docker::PullSettings, ConfigError> {
    use crate::workspace::docker::PullPolicy;
    let policy = match values::choice(
        ENV_IMAGE_PULL,
        "if-not-present",
        &["if-not-present", "always", "never"],
    )? {
        "always" => PullPolicy::Always,
        "never" => PullPolicy::Never,
        _ => PullPolicy::IfNotPresent,
    };
    Ok(crate::workspace::docker::PullSettings {
        policy,
        deadline: values::seconds(ENV_IMAGE_PULL_TIMEOUT_SECS, 1800.0, 1.0)?,
    })
}

/// The log format (`FLEET_LOG_FORMAT`): true for JSON.
pub fn log_json() -> Result<bool, ConfigError> {
    Ok(values::choice(ENV_LOG_FORMAT, "text", &["text", "json"])? == "json")
}

/// Checks every environment setting that has a form (numbers, URLs, choices), so a
/// bad value is reported at start-up by any command.
pub fn check_env() -> Result<(), ConfigError> {
    RunSettings::from_env(String::new())?;
    amqp_options()?;
    image_pull()?;
    log_json()?;
    values::http_url(ENV_S3_ENDPOINT)?;
    values::count(ENV_CONCURRENCY, 4, 1..=10_000)?;
    values::seconds(ENV_SWEEP_SECS, 300.0, 0.0)?;
    values::seconds(ENV_SWEEP_GRACE_SECS, 600.0, 0.0)?;
    Ok(())
}

/// A number of seconds from the environment: `default` when unset, an error that
/// names the variable when it does not parse.
pub fn env_secs(name: &str, default: f64) -> Result<std::time::Duration, String> {
    values::seconds(name, default, 0.0).map_err(|e| e.to_string())
}
