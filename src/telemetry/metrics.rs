//! Every Prometheus series of the fleet, named in one place (DESIGN.md "Metrics").
//! Names and labels are a contract: dashboards and alerts use them. Labels never
//! carry ids; every known label value is exported at zero from start-up.

use std::sync::LazyLock;

use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::job::Outcome;

/// Label values known in advance, pre-created at zero.
pub const LLM_OUTCOMES: [&str; 4] = ["ok", "retried", "error", "rate_limited"];
pub const TOKEN_KINDS: [&str; 4] = ["prompt", "completion", "cache_read", "cache_write"];
pub const TOOLS: [&str; 6] = [
    "terminal",
    "file_editor",
    "task_tracker",
    "think",
    "finish",
    "unknown",
];
pub const TOOL_OUTCOMES: [&str; 2] = ["ok", "error"];
pub const STUCK_PATTERNS: [&str; 4] = [
    "action_observation",
    "action_error",
    "monologue",
    "alternating_pattern",
];
pub const RETRY_REASONS: [&str; 5] = ["workspace", "store", "llm", "broker", "worker_lost"];
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "failed", "retried"];

/// Buckets for whole jobs: seconds to four hours.
const JOB_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
];
/// Buckets for queue wait: tens of milliseconds to hours.
const WAIT_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0,
];
/// Buckets for LLM requests: fast mocks to slow reasoning models.
const LLM_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Buckets for container start.
const START_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

pub struct Metrics {
    pub registry: Registry,
    pub jobs_started: IntCounter,
    pub jobs_finished: IntCounterVec,
    pub job_duration: HistogramVec,
    pub queue_wait: Histogram,
    pub jobs_running: IntGauge,
    pub worker_slots: IntGauge,
    pub agent_steps: IntCounter,
    pub llm_requests: IntCounterVec,
    pub llm_request_duration: Histogram,
    pub llm_tokens: IntCounterVec,
    pub llm_cost: Counter,
    pub llm_retries: IntCounter,
    pub tool_calls: IntCounterVec,
    pub stuck_detections: IntCounterVec,
    pub workspace_start: Histogram,
    pub job_retries: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    pub store_uploaded_bytes: IntCounter,
    pub queue_messages: GaugeVec,
    pub queue_consumers: GaugeVec,
    pub up: Gauge,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let m = Metrics {
            jobs_started: reg(
                &r,
                IntCounter::new("fleet_jobs_started_total", "Jobs a worker started running")
                    .unwrap(),
            ),
            jobs_finished: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "fleet_jobs_finished_total",
                        "Jobs that reached a terminal state",
                    ),
                    &["outcome"],
                )
                .unwrap(),
            ),
            job_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "fleet_job_duration_seconds",
                        "Wall time of a job run, start to terminal state",
                    )
                    .buckets(JOB_BUCKETS.to_vec()),
                    &["outcome"],
                )
                .unwrap(),
            ),
            queue_wait: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "fleet_job_queue_wait_seconds",
                        "Time from enqueue to a worker starting the job",
                    )
                    .buckets(WAIT_BUCKETS.to_vec()),
                )
                .unwrap(),
            ),
            jobs_running: reg(
                &r,
                IntGauge::new("fleet_jobs_running", "Jobs running on this worker now").unwrap(),
            ),
            worker_slots: reg(
                &r,
                IntGauge::new("fleet_worker_slots", "Concurrent job slots of this worker").unwrap(),
            ),
            agent_steps: reg(
                &r,
                IntCounter::new("fleet_agent_steps_total", "Agent steps (LLM calls) taken")
                    .unwrap(),
            ),
            llm_requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("fleet_llm_requests_total", "LLM HTTP requests by outcome"),
                    &["outcome"],
                )
                .unwrap(),
            ),
            llm_request_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "fleet_llm_request_duration_seconds",
                        "Latency of one LLM HTTP request",
                    )
                    .buckets(LLM_BUCKETS.to_vec()),
                )
                .unwrap(),
            ),
            llm_tokens: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("fleet_llm_tokens_total", "LLM tokens by kind"),
                    &["kind"],
                )
                .unwrap(),
            ),
            llm_cost: reg(
                &r,
                Counter::new(
                    "fleet_llm_cost_usd_total",
                    "LLM cost in US dollars (job price tables)",
                )
                .unwrap(),
            ),
            llm_retries: reg(
                &r,
                IntCounter::new(
                    "fleet_llm_retries_total",
                    "LLM requests retried after a transient error",
                )
                .unwrap(),
            ),
            tool_calls: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("fleet_tool_calls_total", "Tool calls by tool and outcome"),
                    &["tool", "outcome"],
                )
                .unwrap(),
            ),
            stuck_detections: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "fleet_stuck_detections_total",
                        "Stuck detections by pattern",
                    ),
                    &["pattern"],
                )
                .unwrap(),
            ),
            workspace_start: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "fleet_workspace_start_seconds",
                        "Time to create and start a workspace",
                    )
                    .buckets(START_BUCKETS.to_vec()),
                )
                .unwrap(),
            ),
            job_retries: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "fleet_job_retries_total",
                        "Job attempts retried after an infrastructure fault",
                    ),
                    &["reason"],
                )
                .unwrap(),
            ),
            webhook_deliveries: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "fleet_webhook_deliveries_total",
                        "Webhook delivery attempts by outcome",
                    ),
                    &["outcome"],
                )
                .unwrap(),
            ),
            store_uploaded_bytes: reg(
                &r,
                IntCounter::new(
                    "fleet_store_uploaded_bytes_total",
                    "Bytes written to the store",
                )
                .unwrap(),
            ),
            queue_messages: reg(
                &r,
                GaugeVec::new(
                    Opts::new("fleet_queue_messages", "Messages ready in a fleet queue"),
                    &["queue"],
                )
                .unwrap(),
            ),
            queue_consumers: reg(
                &r,
                GaugeVec::new(
                    Opts::new("fleet_queue_consumers", "Consumers of a fleet queue"),
                    &["queue"],
                )
                .unwrap(),
            ),
            up: reg(
                &r,
                Gauge::new("fleet_worker_up", "1 while this worker process runs").unwrap(),
            ),
            registry: r,
        };
        for o in Outcome::ALL {
            m.jobs_finished.with_label_values(&[o.as_str()]);
            m.job_duration.with_label_values(&[o.as_str()]);
        }
        for o in LLM_OUTCOMES {
            m.llm_requests.with_label_values(&[o]);
        }
        for k in TOKEN_KINDS {
            m.llm_tokens.with_label_values(&[k]);
        }
        for t in TOOLS {
            for o in TOOL_OUTCOMES {
                m.tool_calls.with_label_values(&[t, o]);
            }
        }
        for p in STUCK_PATTERNS {
            m.stuck_detections.with_label_values(&[p]);
        }
        for r in RETRY_REASONS {
            m.job_retries.with_label_values(&[r]);
        }
        for o in WEBHOOK_OUTCOMES {
            m.webhook_deliveries.with_label_values(&[o]);
        }
        for q in ["fleet.jobs", "fleet.dead"] {
            m.queue_messages.with_label_values(&[q]);
            m.queue_consumers.with_label_values(&[q]);
        }
        m.up.set(1.0);
        m
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counts a tool call; unknown tool names share one label value.
    pub fn tool_call(&self, tool: &str, ok: bool) {
        let tool = if TOOLS.contains(&tool) {
            tool
        } else {
            "unknown"
        };
        self.tool_calls
            .with_label_values(&[tool, if ok { "ok" } else { "error" }])
            .inc();
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}
