//! The worker policy: what a worker allows the jobs it runs (DESIGN.md "Worker
//! policy"). Jobs come from many pipelines and teams; the worker's environment says
//! which of its variables a job may name, which endpoints and networks it may reach,
//! and how much it may take. Resolved once at start-up ([`Policy::from_env`]) and
//! applied to every job before a workspace exists ([`Policy::check`]); a job that
//! breaks it ends `rejected` with `error.kind = "policy"` and the [`Violation`]'s
//! one-line message.
//!
//! [`check_values`] is the part that holds even for a trusted job file (`fleet run`):
//! a value too short to be masked is never handed to a job.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::agent::secrets::MIN_SECRET_CHARS;
use crate::config;
use crate::job::{ErrorInfo, JobSpec, Phase};

/// `error.kind` of a job refused by the policy.
pub const POLICY_KIND: &str = "policy";

/// How long the policy waits for a webhook host name to resolve.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(5);

/// A policy variable with a value that cannot be used; the worker does not start.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {message}")]
pub struct PolicyConfigError {
    pub name: &'static str,
    pub value: String,
    pub message: String,
}

/// Why a job is refused: the job field and the rule it breaks, on one line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct Violation {
    pub field: String,
    pub rule: String,
}

impl Violation {
    fn new(field: impl Into<String>, rule: impl Into<String>) -> Violation {
        Violation {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// The job's `error` in result.json and status.json: final, never retried.
    pub fn error_info(&self) -> ErrorInfo {
        ErrorInfo {
            kind: POLICY_KIND.into(),
            phase: Phase::Validate,
            retryable: false,
            message: self.to_string(),
        }
    }
}

/// What this worker allows. Printed by `fleet worker --print-policy`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Policy {
    /// Worker variables jobs may name in `secrets`, `llm.api_key_env` and
    /// `webhook.secret_env` (`FLEET_JOB_SECRETS`).
    pub job_secrets: BTreeSet<String>,
    /// Base URLs jobs may name in `llm.base_url` (`FLEET_LLM_ENDPOINTS`), without a
    /// trailing slash.
    pub llm_endpoints: BTreeSet<String>,
    /// The worker's own LLM endpoint: always allowed, the only one `LLM_API_KEY` goes to.
    pub worker_llm_base_url: String,
    /// Networks jobs may name in `limits.network` (`FLEET_JOB_NETWORKS`; `none` always).
    pub job_networks: BTreeSet<String>,
    /// `FLEET_ALLOW_HOST_NETWORK=1`: `host` may be listed in `job_networks`.
    pub allow_host_network: bool,
    /// Users jobs may name in `limits.user` (`FLEET_JOB_USERS`); unset: any but root.
    pub job_users: Option<BTreeSet<String>>,
    pub max_memory_mb: u64,
    pub max_cpus: f64,
    pub max_pids: i64,
    pub max_timeout_secs: u64,
    pub max_iterations: u32,
    /// The workspace's disk limit when the job names none, and the most it may name.
    pub max_disk_mb: u64,
    /// `FLEET_WEBHOOK_ALLOW_PRIVATE=1`: job webhooks may reach loopback, private and
    /// link-local addresses.
    pub webhook_allow_private: bool,
}

/// Ceilings when the operator sets none: generous for one agent job, far from
/// what takes a host down.
pub const DEFAULT_MAX_MEMORY_MB: u64 = 8192;
pub const DEFAULT_MAX_CPUS: f64 = 4.0;
pub const DEFAULT_MAX_PIDS: i64 = 4096;
pub const DEFAULT_MAX_TIMEOUT_SECS: u64 = 4 * 3600;
pub const DEFAULT_MAX_ITERATIONS: u32 = 500;
pub const DEFAULT_MAX_DISK_MB: u64 = 10 * 1024;

impl Policy {
    /// The policy from this process's environment. `worker_llm_base_url` is the
    /// endpoint jobs without `llm.base_url` use (`LLM_BASE_URL`, or the scripted LLM).
    pub fn from_env(worker_llm_base_url: &str) -> Result<Policy, PolicyConfigError> {
        Policy::from_lookup(worker_llm_base_url, config::env)
    }

    /// The policy from `env` (tests pass a map).
    pub fn from_lookup(
        worker_llm_base_url: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Policy, PolicyConfigError> {
        let list = |name: &str| -> BTreeSet<String> {
            env(name)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let flag = |name: &'static str| -> Result<bool, PolicyConfigError> {
            match env(name).as_deref() {
                None | Some("0") | Some("false") => Ok(false),
                Some("1") | Some("true") => Ok(true),
                Some(v) => Err(PolicyConfigError {
                    name,
                    value: v.into(),
                    message: "expected 1 or 0".into(),
                }),
            }
        };
        fn number<T: std::str::FromStr + PartialOrd + Default>(
            env: &impl Fn(&str) -> Option<String>,
            name: &'static str,
            default: T,
        ) -> Result<T, PolicyConfigError> {
            match env(name) {
                None => Ok(default),
                Some(v) => match v.trim().parse::<T>() {
                    Ok(n) if n > T::default() => Ok(n),
                    _ => Err(PolicyConfigError {
                        name,
                        value: v,
                        message: "expected a number above 0".into(),
                    }),
                },
            }
        }
        let job_secrets = list(config::ENV_JOB_SECRETS);
        for name in &job_secrets {
            if !is_var_name(name) {
                return Err(PolicyConfigError {
                    name: config::ENV_JOB_SECRETS,
                    value: name.clone(),
                    message: "not a variable name".into(),
                });
            }
        }
        let mut llm_endpoints = BTreeSet::new();
        for u in list(config::ENV_LLM_ENDPOINTS) {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(PolicyConfigError {
                    name: config::ENV_LLM_ENDPOINTS,
                    value: u,
                    message: "not an http(s) URL".into(),
                });
            }
            llm_endpoints.insert(normalize_url(&u));
        }
        let allow_host_network = flag(config::ENV_ALLOW_HOST_NETWORK)?;
        let mut job_networks = list(config::ENV_JOB_NETWORKS);
        job_networks.insert("none".into());
        let users = list(config::ENV_JOB_USERS);
        Ok(Policy {
            job_secrets,
            llm_endpoints,
            worker_llm_base_url: normalize_url(worker_llm_base_url),
            job_networks,
            allow_host_network,
            job_users: (!users.is_empty()).then_some(users),
            max_memory_mb: number(&env, config::ENV_MAX_MEMORY_MB, DEFAULT_MAX_MEMORY_MB)?,
            max_cpus: number(&env, config::ENV_MAX_CPUS, DEFAULT_MAX_CPUS)?,
            max_pids: number(&env, config::ENV_MAX_PIDS, DEFAULT_MAX_PIDS)?,
            max_timeout_secs: number(&env, config::ENV_MAX_TIMEOUT_SECS, DEFAULT_MAX_TIMEOUT_SECS)?,
            max_iterations: number(&env, config::ENV_MAX_ITERATIONS, DEFAULT_MAX_ITERATIONS)?,
            max_disk_mb: number(&env, config::ENV_MAX_DISK_MB, DEFAULT_MAX_DISK_MB)?,
            webhook_allow_private: flag(config::ENV_WEBHOOK_ALLOW_PRIVATE)?,
        })
    }

    /// Whether `url` is an endpoint a job's LLM requests may go to.
    fn llm_endpoint_allowed(&self, url: &str) -> bool {
        let u = normalize_url(url);
        u == self.worker_llm_base_url || self.llm_endpoints.contains(&u)
    }

    /// Checks a job against the policy; the webhook's host name is resolved (its
    /// addresses are what is checked, not the name).
    pub async fn check(&self, spec: &JobSpec) -> Result<(), Violation> {
        self.check_fields(spec, &config::env)?;
        if let (Some(w), false) = (&spec.webhook, self.webhook_allow_private) {
            check_webhook_address(&w.url).await?;
        }
        Ok(())
    }

    /// Every rule but the webhook's address, against the worker variables `env`.
    pub fn check_fields(
        &self,
        spec: &JobSpec,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), Violation> {
        for name in &spec.secrets {
            if !self.job_secrets.contains(name) {
                return Err(Violation::new(
                    "secrets",
                    format!("{name} is not in {}", config::ENV_JOB_SECRETS),
                ));
            }
        }
        if let Some(u) = &spec.llm.base_url {
            if !self.llm_endpoint_allowed(u) {
                return Err(Violation::new(
                    "llm.base_url",
                    format!(
                        "{} is not in {} (nor the worker's {})",
                        clip(u),
                        config::ENV_LLM_ENDPOINTS,
                        config::ENV_LLM_BASE_URL
                    ),
                ));
            }
        }
        if let Some(k) = &spec.llm.api_key_env {
            let own_endpoint = spec
                .llm
                .base_url
                .as_deref()
                .is_none_or(|u| normalize_url(u) == self.worker_llm_base_url);
            let worker_key = k == config::ENV_LLM_API_KEY && own_endpoint;
            if !worker_key && !self.job_secrets.contains(k) {
                let rule = if k == config::ENV_LLM_API_KEY {
                    format!(
                        "{k} goes only to the worker's {}; to send it to another endpoint, list it in {}",
                        config::ENV_LLM_BASE_URL,
                        config::ENV_JOB_SECRETS
                    )
                } else {
                    format!("{k} is not in {}", config::ENV_JOB_SECRETS)
                };
                return Err(Violation::new("llm.api_key_env", rule));
            }
        }
        if let Some(k) = spec.webhook.as_ref().and_then(|w| w.secret_env.as_ref()) {
            if !self.job_secrets.contains(k) {
                return Err(Violation::new(
                    "webhook.secret_env",
                    format!("{k} is not in {}", config::ENV_JOB_SECRETS),
                ));
            }
        }
        let l = &spec.limits;
        if l.network == "host" && !self.allow_host_network {
            return Err(Violation::new(
                "limits.network",
                format!(
                    "host is refused (the host network reaches the broker, the store and every loopback service); it needs {}=1 and `host` in {}",
                    config::ENV_ALLOW_HOST_NETWORK,
                    config::ENV_JOB_NETWORKS
                ),
            ));
        }
        if !self.job_networks.contains(&l.network) {
            return Err(Violation::new(
                "limits.network",
                format!("{} is not in {}", l.network, config::ENV_JOB_NETWORKS),
            ));
        }
        let over = |field: &str, value: String, name: &str, max: String| {
            Err(Violation::new(
                format!("limits.{field}"),
                format!("{value} is over {name} = {max}"),
            ))
        };
        if l.memory_mb > self.max_memory_mb {
            return over(
                "memory_mb",
                l.memory_mb.to_string(),
                config::ENV_MAX_MEMORY_MB,
                self.max_memory_mb.to_string(),
            );
        }
        if l.cpus > self.max_cpus {
            return over(
                "cpus",
                l.cpus.to_string(),
                config::ENV_MAX_CPUS,
                self.max_cpus.to_string(),
            );
        }
        if l.pids > self.max_pids {
            return over(
                "pids",
                l.pids.to_string(),
                config::ENV_MAX_PIDS,
                self.max_pids.to_string(),
            );
        }
        if l.timeout_secs > self.max_timeout_secs {
            return over(
                "timeout_secs",
                l.timeout_secs.to_string(),
                config::ENV_MAX_TIMEOUT_SECS,
                self.max_timeout_secs.to_string(),
            );
        }
        if l.max_iterations > self.max_iterations {
            return over(
                "max_iterations",
                l.max_iterations.to_string(),
                config::ENV_MAX_ITERATIONS,
                self.max_iterations.to_string(),
            );
        }
        if let Some(d) = l.disk_mb {
            if d > self.max_disk_mb {
                return over(
                    "disk_mb",
                    d.to_string(),
                    config::ENV_MAX_DISK_MB,
                    self.max_disk_mb.to_string(),
                );
            }
        }
        if let Some(u) = &l.user {
            match &self.job_users {
                Some(allowed) if !allowed.contains(u) => {
                    return Err(Violation::new(
                        "limits.user",
                        format!("{u} is not in {}", config::ENV_JOB_USERS),
                    ));
                }
                None if is_root(u) => {
                    return Err(Violation::new(
                        "limits.user",
                        format!(
                            "{u} is root; name a non-root user (or list it in {})",
                            config::ENV_JOB_USERS
                        ),
                    ));
                }
                _ => {}
            }
        }
        if let Some(crate::job::Input::StoreKey { store_key }) = &spec.input {
            // The store holds every team's jobs: a job reads its own input
            // (`jobs/<id>/…`, what `fleet submit` uploads) or a key outside the
            // fleet's own records, never another job's files or a batch list.
            let own = format!("jobs/{}/", spec.id);
            let key = store_key.trim_start_matches('/');
            if (key.starts_with("jobs/") && !key.starts_with(&own)) || key.starts_with("batches/") {
                return Err(Violation::new(
                    "input.store_key",
                    format!(
                        "{} is another job's record; a job may read only {own}… or keys outside jobs/ and batches/",
                        clip(store_key)
                    ),
                ));
            }
        }
        check_values(spec, env)
    }

    /// The disk limit of a job's workspace: its own, or the ceiling.
    pub fn disk_mb(&self, spec: &JobSpec) -> u64 {
        spec.limits.disk_mb.unwrap_or(self.max_disk_mb)
    }

    /// `fleet worker --print-policy`: one line per rule.
    pub fn describe(&self) -> String {
        let set = |s: &BTreeSet<String>| {
            if s.is_empty() {
                "(none)".to_string()
            } else {
                s.iter().cloned().collect::<Vec<_>>().join(",")
            }
        };
        let yes = |b: bool| if b { "yes" } else { "no" };
        let rows = [
            (config::ENV_JOB_SECRETS, set(&self.job_secrets)),
            (
                config::ENV_LLM_ENDPOINTS,
                format!(
                    "{} (and the worker's {})",
                    set(&self.llm_endpoints),
                    self.worker_llm_base_url
                ),
            ),
            (config::ENV_JOB_NETWORKS, set(&self.job_networks)),
            (
                config::ENV_ALLOW_HOST_NETWORK,
                yes(self.allow_host_network).into(),
            ),
            (
                config::ENV_JOB_USERS,
                self.job_users
                    .as_ref()
                    .map(set)
                    .unwrap_or_else(|| "(any but root)".into()),
            ),
            (config::ENV_MAX_MEMORY_MB, self.max_memory_mb.to_string()),
            (config::ENV_MAX_CPUS, self.max_cpus.to_string()),
            (config::ENV_MAX_PIDS, self.max_pids.to_string()),
            (
                config::ENV_MAX_TIMEOUT_SECS,
                self.max_timeout_secs.to_string(),
            ),
            (config::ENV_MAX_ITERATIONS, self.max_iterations.to_string()),
            (config::ENV_MAX_DISK_MB, self.max_disk_mb.to_string()),
            (
                config::ENV_WEBHOOK_ALLOW_PRIVATE,
                yes(self.webhook_allow_private).into(),
            ),
        ];
        rows.iter().map(|(k, v)| format!("{k:<28} {v}\n")).collect()
    }
}

/// The rules that hold for every job, a trusted job file's included: every value
/// the job resolves is long enough to be masked, and the workdir is not a system
/// directory the workspace's own mounts live in.
pub fn check_values(spec: &JobSpec, env: &dyn Fn(&str) -> Option<String>) -> Result<(), Violation> {
    let named = spec
        .secrets
        .iter()
        .map(|n| ("secrets", n.as_str()))
        .chain(
            spec.llm
                .api_key_env
                .as_deref()
                .map(|n| ("llm.api_key_env", n)),
        )
        .chain(
            spec.webhook
                .as_ref()
                .and_then(|w| w.secret_env.as_deref())
                .map(|n| ("webhook.secret_env", n)),
        );
    for (field, name) in named {
        if let Some(v) = env(name) {
            let n = v.chars().count();
            if n < MIN_SECRET_CHARS {
                return Err(Violation::new(
                    field,
                    format!(
                        "the value of {name} has {n} characters; values shorter than {MIN_SECRET_CHARS} cannot be masked"
                    ),
                ));
            }
        }
    }
    let w = spec.workdir.trim_end_matches('/');
    if w.is_empty()
        || ["/proc", "/sys", "/dev"]
            .iter()
            .any(|d| w == *d || w.starts_with(&format!("{d}/")))
    {
        return Err(Violation::new(
            "workdir",
            format!(
                "{:?} is a system directory; use a directory of its own",
                spec.workdir
            ),
        ));
    }
    Ok(())
}

/// Refuses a webhook URL whose host is, or resolves only to, a loopback, private,
/// link-local or otherwise non-public address. A name that does not resolve (yet)
/// is left to the delivery, whose resolver applies the same rule.
pub async fn check_webhook_address(url: &str) -> Result<(), Violation> {
    let Some((host, port)) = host_port(url) else {
        return Err(Violation::new(
            "webhook.url",
            format!("{} has no host", clip(url)),
        ));
    };
    if let Some(ip) = literal_ip(&host) {
        return match address_class(ip) {
            Some(_) => Err(refused_address(&host, ip)),
            None => Ok(()),
        };
    }
    let lookup = tokio::time::timeout(
        RESOLVE_DEADLINE,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await;
    let addrs: Vec<IpAddr> = match lookup {
        Ok(Ok(a)) => a.map(|s| s.ip()).collect(),
        _ => return Ok(()),
    };
    match addrs.iter().find(|ip| address_class(**ip).is_none()) {
        Some(_) => Ok(()),
        None => match addrs.first() {
            Some(ip) => Err(refused_address(&host, *ip)),
            None => Ok(()),
        },
    }
}

/// The refusal of a job webhook URL whose host is a literal non-public address
/// (a name is left to the resolver: [`PublicOnly`]).
pub fn literal_webhook_refusal(url: &str) -> Option<Violation> {
    let (host, _) = host_port(url)?;
    let ip = literal_ip(&host)?;
    address_class(ip).map(|_| refused_address(&host, ip))
}

fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_matches(['[', ']']).parse::<IpAddr>().ok()
}

fn refused_address(host: &str, ip: IpAddr) -> Violation {
    let class = address_class(ip).unwrap_or("private");
    let what = if literal_ip(host) == Some(ip) {
        format!("{host} is a {class} address")
    } else {
        format!("{host} resolves to {ip}, a {class} address")
    };
    Violation::new(
        "webhook.url",
        format!(
            "{what}; job webhooks may not reach the worker's own network ({}=1 allows it)",
            config::ENV_WEBHOOK_ALLOW_PRIVATE
        ),
    )
}

/// A DNS resolver for job webhooks: a name's non-public addresses are dropped, so
/// the connection goes to a public address or nowhere. The check is on the
/// address connected to, not the name (a name can be made to point anywhere).
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found = tokio::time::timeout(
                RESOLVE_DEADLINE,
                tokio::net::lookup_host((host.as_str(), 0)),
            )
            .await
            .map_err(|_| format!("resolving {host} timed out"))??;
            let public: Vec<std::net::SocketAddr> =
                found.filter(|a| address_class(a.ip()).is_none()).collect();
            if public.is_empty() {
                return Err(format!(
                    "{host} resolves only to non-public addresses; job webhooks may not reach the worker's own network ({}=1 allows it)",
                    config::ENV_WEBHOOK_ALLOW_PRIVATE
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What kind of non-public address `ip` is; `None` for a public one.
pub fn address_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1])) {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
            {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return address_class(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("private")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("reserved")
            } else {
                None
            }
        }
    }
}

/// The host and port of an http(s) URL, parsed as the HTTP client parses it (so
/// `http://2130706433/` is the address 127.0.0.1, as it would be connected to).
/// An IP host is given as the address, without IPv6 brackets.
fn host_port(url: &str) -> Option<(String, u16)> {
    let u = reqwest::Url::parse(url).ok()?;
    let port = u.port_or_known_default()?;
    // An IP host comes back normalised (IPv6 in brackets).
    let host = u.host_str()?.trim_matches(['[', ']']).to_ascii_lowercase();
    Some((host, port))
}

fn normalize_url(u: &str) -> String {
    u.trim().trim_end_matches('/').to_string()
}

fn is_var_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn is_root(user: &str) -> bool {
    let name = user.split(':').next().unwrap_or(user);
    name == "0" || name == "root"
}

fn clip(v: &str) -> String {
    if v.chars().count() <= 80 {
        v.to_string()
    } else {
        format!("{}…", v.chars().take(80).collect::<String>())
    }
}

#[cfg(test)]
mod tests;
