//! The fleet's broker side for tests: raw publishes, dead letters, queue depths
//! and cutting a consumer's connection, all on this fleet's own queues.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_fleet::queue::amqp::wire;
use agent_fleet::queue::{AmqpOptions, JobMessage};
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use super::{Fleet, RETRY_TIERS_SECS, amqp_url};

impl Fleet {
    /// Closes every broker connection that consumes from this fleet's `name`
    /// queue (a lost connection, as the broker's `consumer_timeout` or a network
    /// cut makes it), with `rabbitmqctl close_connection` on that one connection:
    /// the broker and its other clients are untouched. Returns how many.
    pub fn close_consumer_connections(&self, name: &str) -> usize {
        let queue = format!("{}{name}", self.prefix);
        let ctl = |args: &[&str]| -> String {
            let out = Command::new("rabbitmqctl")
                .args(args)
                .output()
                .expect("rabbitmqctl (the broker runs on this host)");
            assert!(
                out.status.success(),
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let channels: Vec<String> = ctl(&[
                "-q",
                "list_consumers",
                "-p",
                "/",
                "queue_name",
                "channel_pid",
                "--no-table-headers",
            ])
            .lines()
            .filter_map(|l| {
                let (q, ch) = l.split_once('\t')?;
                (q.trim() == queue).then(|| ch.trim().to_string())
            })
            .collect();
            if !channels.is_empty() {
                let conns: BTreeSet<String> = ctl(&[
                    "-q",
                    "list_channels",
                    "pid",
                    "connection",
                    "--no-table-headers",
                ])
                .lines()
                .filter_map(|l| {
                    let (ch, conn) = l.split_once('\t')?;
                    channels
                        .contains(&ch.trim().to_string())
                        .then(|| conn.trim().to_string())
                })
                .collect();
                for c in &conns {
                    ctl(&["close_connection", c, "fleet test: connection cut"]);
                }
                return conns.len();
            }
            assert!(Instant::now() < deadline, "no consumer on {queue} to cut");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Publishes raw bytes to this fleet's jobs queue (confirmed), with a message
    /// id or none.
    pub fn publish_raw(&self, body: &[u8], message_id: Option<&str>) {
        let jobs = format!("{}fleet.jobs", self.prefix);
        self.rt.block_on(async {
            let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
                .await
                .expect("raw AMQP connection");
            let ch = conn.create_channel().await.unwrap();
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let mut props = BasicProperties::default().with_delivery_mode(2);
            if let Some(id) = message_id {
                props = props.with_message_id(id.into());
            }
            let confirm = ch
                .basic_publish(
                    "".into(),
                    jobs.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack(), "the broker did not take it: {confirm:?}");
            let _ = conn.close(200, "OK".into()).await;
        });
    }

    /// Publishes a message through the crate's queue API.
    pub fn publish(&self, msg: JobMessage) {
        self.rt.block_on(self.queue.publish(msg)).expect("publish");
    }

    /// Takes every message now in this fleet's `fleet.dead`: (message id, reason
    /// header, body length).
    pub fn take_dead_letters(&self) -> Vec<(String, String, usize)> {
        let dead = format!("{}fleet.dead", self.prefix);
        self.rt.block_on(async {
            let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
                .await
                .expect("raw AMQP connection");
            let ch = conn.create_channel().await.unwrap();
            let mut out = Vec::new();
            while let Some(m) = ch
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                let props = &m.delivery.properties;
                let header = |k: &str| -> Option<AMQPValue> {
                    props.headers().as_ref()?.inner().get(k).cloned()
                };
                out.push((
                    props
                        .message_id()
                        .as_ref()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    header(wire::H_REASON)
                        .and_then(|v| wire::as_str(&v))
                        .unwrap_or_default(),
                    m.delivery.data.len(),
                ));
            }
            let _ = conn.close(200, "OK".into()).await;
            out
        })
    }

    /// Ready messages in one of this fleet's queues (`fleet.jobs`, `fleet.dead`, …).
    pub fn depth(&self, name: &str) -> u32 {
        let full = format!("{}{name}", self.prefix);
        let stats = self
            .rt
            .block_on(self.queue.queue_stats())
            .expect("queue stats");
        stats
            .iter()
            .find(|s| s.name == full)
            .unwrap_or_else(|| panic!("no {full} in {stats:?}"))
            .messages
    }
}

/// The producer's options: this fleet's prefix and the workers' retry tiers, so
/// both declare the same topology.
pub(super) fn producer_options(prefix: &str) -> AmqpOptions {
    AmqpOptions {
        prefix: prefix.to_string(),
        retry_tiers: RETRY_TIERS_SECS
            .split(',')
            .map(|s| Duration::from_secs(s.parse().unwrap()))
            .collect(),
        connect_timeout: Duration::from_secs(10),
        ..AmqpOptions::default()
    }
}
