//! How a job travels as an AMQP message, and the names and arguments of the
//! topology. Pure functions: unit-tested here, no broker needed.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::QueueKind;
use crate::queue::{JobMessage, QueueError};

/// Attempts already made (an integer header).
pub const H_ATTEMPT: &str = "x-fleet-attempt";
/// When the job was first enqueued, RFC 3339 with milliseconds.
pub const H_ENQUEUED_AT: &str = "x-fleet-enqueued-at";
/// Why a message was given up on (fleet.dead only).
pub const H_REASON: &str = "x-fleet-reason";
/// The message id of the message given up on, also when it had none ("").
pub const H_ORIGINAL_ID: &str = "x-fleet-original-message-id";
/// When it was given up on (fleet.dead only).
pub const H_DEAD_AT: &str = "x-fleet-dead-at";

const JSON: &str = "application/json";
const PERSISTENT: u8 = 2;
/// Classic queues: priorities 0..=9 (DESIGN.md); higher values would be clamped by the broker anyway.
pub const MAX_PRIORITY: u8 = 9;

/// Every queue and exchange name, with the configured prefix.
#[derive(Debug, Clone)]
pub struct Names {
    pub jobs: String,
    pub dead: String,
    pub control: String,
    /// Retry tiers, shortest delay first.
    pub tiers: Vec<(Duration, String)>,
}

impl Names {
    pub fn new(prefix: &str, tiers: &[Duration]) -> Names {
        let mut tiers: Vec<Duration> = tiers.iter().copied().filter(|d| !d.is_zero()).collect();
        tiers.sort();
        tiers.dedup();
        Names {
            jobs: format!("{prefix}fleet.jobs"),
            dead: format!("{prefix}fleet.dead"),
            control: format!("{prefix}fleet.control"),
            tiers: tiers
                .into_iter()
                .map(|d| (d, format!("{prefix}fleet.retry.{}", tier_label(d))))
                .collect(),
        }
    }

    /// Where a retry after `delay` goes: the smallest tier at least as long (the
    /// longest when none is), or straight back to the jobs queue for no delay.
    pub fn retry_target(&self, delay: Duration) -> &str {
        if delay.is_zero() {
            return &self.jobs;
        }
        self.tiers
            .iter()
            .find(|(d, _)| *d >= delay)
            .or(self.tiers.last())
            .map_or(self.jobs.as_str(), |(_, name)| name.as_str())
    }

    /// Every durable queue, for stats and teardown: jobs, the tiers, dead.
    pub fn queues(&self) -> Vec<&str> {
        let mut v = vec![self.jobs.as_str()];
        v.extend(self.tiers.iter().map(|(_, n)| n.as_str()));
        v.push(self.dead.as_str());
        v
    }
}

/// `5s`, `300s`, `200ms`: whole seconds when they are.
fn tier_label(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn int(v: i64) -> AMQPValue {
    // `l` (signed 64-bit) is understood by RabbitMQ everywhere, also when it
    // re-encodes headers while dead-lettering.
    AMQPValue::LongLongInt(v)
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn kind_args(kind: QueueKind) -> FieldTable {
    let mut t = FieldTable::default();
    if kind == QueueKind::Quorum {
        t.insert("x-queue-type".into(), string("quorum"));
    }
    t
}

/// Quorum queues that dead-letter (fleet.jobs, the retry tiers) do it
/// at-least-once: the broker keeps a message until the dead-letter target
/// confirmed it, so a tier's expired message is never dropped on its way back to
/// fleet.jobs. That strategy needs `reject-publish` overflow (RabbitMQ ≥ 3.10).
fn at_least_once(t: &mut FieldTable, kind: QueueKind) {
    if kind == QueueKind::Quorum {
        t.insert("x-dead-letter-strategy".into(), string("at-least-once"));
        t.insert("x-overflow".into(), string("reject-publish"));
    }
}

/// fleet.jobs: priorities (classic) or a delivery limit (quorum); dead-letters to fleet.dead.
pub fn jobs_args(names: &Names, kind: QueueKind, delivery_limit: u32) -> FieldTable {
    let mut t = kind_args(kind);
    match kind {
        QueueKind::Classic => t.insert("x-max-priority".into(), int(MAX_PRIORITY.into())),
        QueueKind::Quorum => t.insert("x-delivery-limit".into(), int(delivery_limit.into())),
    };
    t.insert("x-dead-letter-exchange".into(), string(""));
    t.insert("x-dead-letter-routing-key".into(), string(&names.dead));
    at_least_once(&mut t, kind);
    t
}

/// A retry tier: holds each message `ttl`, then dead-letters it back to fleet.jobs.
pub fn tier_args(names: &Names, kind: QueueKind, ttl: Duration) -> FieldTable {
    let mut t = kind_args(kind);
    t.insert(
        "x-message-ttl".into(),
        int(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
    );
    t.insert("x-dead-letter-exchange".into(), string(""));
    t.insert("x-dead-letter-routing-key".into(), string(&names.jobs));
    at_least_once(&mut t, kind);
    t
}

pub fn dead_args(kind: QueueKind) -> FieldTable {
    kind_args(kind)
}

fn short(what: &str, s: &str) -> Result<ShortString, QueueError> {
    ShortString::try_new(s).map_err(|e| QueueError::Refused(format!("{what}: {e}")))
}

/// Properties of a job message: persistent JSON, `message_id` = job id,
/// `priority`, the attempt and enqueue time in headers, plus `extra` headers.
pub fn job_properties(msg: &JobMessage, extra: FieldTable) -> Result<BasicProperties, QueueError> {
    let mut headers = extra;
    headers.insert(H_ATTEMPT.into(), int(msg.attempt.into()));
    headers.insert(
        H_ENQUEUED_AT.into(),
        string(&msg.enqueued_at.to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    let mut props = BasicProperties::default()
        .with_content_type(JSON.into())
        .with_delivery_mode(PERSISTENT)
        .with_priority(msg.priority.min(MAX_PRIORITY))
        .with_timestamp(u64::try_from(msg.enqueued_at.timestamp()).unwrap_or(0))
        .with_headers(headers);
    if !msg.job_id.is_empty() {
        props = props.with_message_id(short("message id", &msg.job_id)?);
    }
    Ok(props)
}

/// The headers a dead letter carries on top of the job's own.
pub fn dead_headers(msg: &JobMessage, reason: &str, now: DateTime<Utc>) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(H_REASON.into(), string(reason));
    t.insert(H_ORIGINAL_ID.into(), string(&msg.job_id));
    t.insert(
        H_DEAD_AT.into(),
        string(&now.to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    t
}

/// A control message: transient JSON (the control queues do not outlive their worker).
pub fn control_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(JSON.into())
        .with_delivery_mode(1)
}

/// Reads a delivery back into a [`JobMessage`], whatever it holds: no message id
/// gives job id "", a missing or odd header gives attempt 0, the enqueue time
/// falls back to the `timestamp` property, then to now. The body is not checked
/// here — the worker decides what to do with a body it cannot read.
pub fn decode(props: &BasicProperties, body: Vec<u8>, now: DateTime<Utc>) -> JobMessage {
    let headers = props.headers().as_ref();
    let header = |k: &str| headers.and_then(|h| h.inner().get(k));
    let attempt = header(H_ATTEMPT).and_then(as_u32).unwrap_or(0);
    let enqueued_at = header(H_ENQUEUED_AT)
        .and_then(as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            props
                .timestamp()
                .and_then(|ts| Utc.timestamp_opt(i64::try_from(ts).ok()?, 0).single())
        })
        .unwrap_or(now);
    JobMessage {
        job_id: props
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        priority: props.priority().unwrap_or(0),
        attempt,
        enqueued_at,
        body: body.into(),
    }
}

/// A header's text, for tests and for reading dead letters.
pub fn as_str(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Any integer type a producer (or a shovel) may have used.
pub fn as_u32(v: &AMQPValue) -> Option<u32> {
    let n: i128 = match *v {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n.into(),
        AMQPValue::Timestamp(n) => n.into(),
        _ => return None,
    };
    u32::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::new(
            "p.",
            &[
                Duration::from_secs(30),
                Duration::from_secs(5),
                Duration::from_millis(200),
            ],
        )
    }

    #[test]
    fn names_carry_the_prefix_and_tiers_sort() {
        let n = names();
        assert_eq!(n.jobs, "p.fleet.jobs");
        assert_eq!(n.dead, "p.fleet.dead");
        assert_eq!(n.control, "p.fleet.control");
        let tiers: Vec<&str> = n.tiers.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(
            tiers,
            [
                "p.fleet.retry.200ms",
                "p.fleet.retry.5s",
                "p.fleet.retry.30s"
            ]
        );
        assert_eq!(n.queues().len(), 5);
    }

    #[test]
    fn retry_picks_the_smallest_tier_not_shorter() {
        let n = names();
        assert_eq!(n.retry_target(Duration::ZERO), "p.fleet.jobs");
        assert_eq!(
            n.retry_target(Duration::from_millis(1)),
            "p.fleet.retry.200ms"
        );
        assert_eq!(
            n.retry_target(Duration::from_millis(200)),
            "p.fleet.retry.200ms"
        );
        assert_eq!(n.retry_target(Duration::from_secs(2)), "p.fleet.retry.5s");
        assert_eq!(n.retry_target(Duration::from_secs(31)), "p.fleet.retry.30s");
        assert_eq!(
            Names::new("", &[]).retry_target(Duration::from_secs(9)),
            "fleet.jobs"
        );
    }

    #[test]
    fn job_message_round_trips_through_properties() {
        let at = Utc.timestamp_millis_opt(1_700_000_000_123).unwrap();
        let msg = JobMessage {
            job_id: "job-1".into(),
            priority: 7,
            attempt: 3,
            enqueued_at: at,
            body: "{}".into(),
        };
        let props = job_properties(&msg, FieldTable::default()).unwrap();
        assert_eq!(props.delivery_mode(), &Some(2));
        let back = decode(&props, b"{}".to_vec(), Utc::now());
        assert_eq!(
            (
                back.job_id.as_str(),
                back.priority,
                back.attempt,
                back.enqueued_at
            ),
            ("job-1", 7, 3, at)
        );
    }

    #[test]
    fn decode_tolerates_missing_and_odd_properties() {
        let now = Utc::now();
        let bare = decode(&BasicProperties::default(), b"\xff".to_vec(), now);
        assert_eq!(
            (
                bare.job_id.as_str(),
                bare.priority,
                bare.attempt,
                bare.enqueued_at
            ),
            ("", 0, 0, now)
        );

        let mut h = FieldTable::default();
        h.insert(H_ATTEMPT.into(), AMQPValue::ShortUInt(4));
        h.insert(H_ENQUEUED_AT.into(), string("not a time"));
        let props = BasicProperties::default()
            .with_headers(h)
            .with_timestamp(1_700_000_000);
        let m = decode(&props, vec![], now);
        assert_eq!(m.attempt, 4);
        assert_eq!(m.enqueued_at.timestamp(), 1_700_000_000);
        assert_eq!(as_u32(&AMQPValue::LongLongInt(-1)), None);
    }

    #[test]
    fn an_overlong_id_is_refused_not_a_panic() {
        let msg = JobMessage {
            job_id: "x".repeat(300),
            priority: 0,
            attempt: 0,
            enqueued_at: Utc::now(),
            body: "{}".into(),
        };
        assert!(matches!(
            job_properties(&msg, FieldTable::default()),
            Err(QueueError::Refused(_))
        ));
    }
}
