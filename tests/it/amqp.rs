//! The RabbitMQ queue against a real broker (`scripts/services/rabbitmq.sh`; URL
//! from `FLEET_TEST_AMQP`). Each test declares its own topology under a
//! `test-<uuid>.` prefix with short retry tiers, and deletes it at the end.
//!
//! `broker_restart_drill` restarts the broker's app, which drops every client
//! connection — also other tests'. It is `#[ignore]`d; run it alone:
//! `cargo nextest run --test it --run-ignored only amqp::broker_restart_drill`.

use std::time::{Duration, Instant};

use agent_fleet::queue::amqp::wire;
use agent_fleet::queue::{
    AmqpOptions, AmqpQueue, ControlMsg, Delivery, JobMessage, Queue, QueueError, QueueKind,
};
use chrono::{TimeZone, Utc};
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const WAIT: Duration = Duration::from_secs(15);

fn url() -> String {
    std::env::var("FLEET_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn opts(prefix: &str) -> AmqpOptions {
    AmqpOptions {
        prefix: prefix.into(),
        retry_tiers: vec![Duration::from_millis(200), Duration::from_secs(1)],
        op_timeout: Duration::from_secs(5),
        publish_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        queue_expires: Some(Duration::from_secs(600)),
        ..AmqpOptions::default()
    }
}

/// A test's own topology and a producer handle on it.
struct Fixture {
    prefix: String,
    producer: AmqpQueue,
}

impl Fixture {
    async fn new() -> Fixture {
        let prefix = format!("test-{}.", uuid::Uuid::new_v4().simple());
        let producer = AmqpQueue::connect(&url(), opts(&prefix))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "RabbitMQ at {} (run scripts/services/rabbitmq.sh): {e}",
                    url()
                )
            });
        Fixture { prefix, producer }
    }

    fn queue(&self) -> Queue {
        Queue::Amqp(self.producer.clone())
    }

    async fn worker_with(&self, f: impl FnOnce(&mut AmqpOptions)) -> AmqpQueue {
        let mut o = opts(&self.prefix);
        o.consume = true;
        f(&mut o);
        AmqpQueue::connect(&url(), o)
            .await
            .expect("consumer connects")
    }

    async fn worker(&self, prefetch: u16) -> Queue {
        Queue::Amqp(self.worker_with(|o| o.prefetch = prefetch).await)
    }

    /// Messages ready in the queue named `name` (unprefixed, e.g. "fleet.dead").
    async fn depth(&self, name: &str) -> u32 {
        let full = format!("{}{name}", self.prefix);
        let stats = self.producer.queue_stats().await.expect("stats");
        stats
            .iter()
            .find(|s| s.name == full)
            .unwrap_or_else(|| panic!("no {full} in {stats:?}"))
            .messages
    }

    async fn teardown(self, workers: &[&Queue]) {
        for w in workers {
            w.close().await;
        }
        self.producer
            .delete_topology()
            .await
            .expect("delete topology");
        self.producer.close().await;
    }
}

fn job(id: &str, priority: u8, attempt: u32) -> JobMessage {
    JobMessage {
        job_id: id.into(),
        priority,
        attempt,
        enqueued_at: Utc.timestamp_millis_opt(1_700_000_000_250).unwrap(),
        body: format!(r#"{{"id":"{id}","task":"t"}}"#).into(),
    }
}

async fn next(q: &Queue) -> Delivery {
    tokio::time::timeout(WAIT, q.next())
        .await
        .expect("a delivery in time")
        .expect("the queue is open")
}

/// A raw connection, to look at what the broker holds.
async fn raw() -> Connection {
    Connection::connect(&url(), ConnectionProperties::default())
        .await
        .expect("raw connection")
}

async fn get_one(queue: &str) -> Option<lapin::message::BasicGetMessage> {
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let m = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    let _ = conn.close(200, "OK".into()).await;
    m
}

fn header(props: &BasicProperties, key: &str) -> Option<AMQPValue> {
    props.headers().as_ref()?.inner().get(key).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_id_priority_attempt_and_time() {
    let fx = Fixture::new().await;
    fx.queue().publish(job("job-a", 7, 2)).await.unwrap();
    let w = fx.worker(1).await;
    let d = next(&w).await;
    assert_eq!(d.msg.job_id, "job-a");
    assert_eq!(d.msg.priority, 7);
    assert_eq!(d.msg.attempt, 2);
    assert_eq!(d.msg.enqueued_at, job("job-a", 7, 2).enqueued_at);
    assert_eq!(&d.msg.body[..], br#"{"id":"job-a","task":"t"}"#);
    assert!(!d.redelivered);
    w.ack(d).await.unwrap();
    assert_eq!(fx.depth("fleet.jobs").await, 0);
    fx.teardown(&[&w]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_first() {
    let fx = Fixture::new().await;
    let q = fx.queue();
    for (id, p) in [("low", 0), ("high", 9), ("mid", 5), ("low2", 0)] {
        q.publish(job(id, p, 0)).await.unwrap();
    }
    let w = fx.worker(1).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let d = next(&w).await;
        order.push(d.msg.job_id.clone());
        w.ack(d).await.unwrap();
    }
    assert_eq!(order, ["high", "mid", "low", "low2"]);
    fx.teardown(&[&w]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_comes_back_through_a_tier_with_the_next_attempt() {
    let fx = Fixture::new().await;
    fx.queue().publish(job("job-r", 3, 0)).await.unwrap();
    let w = fx.worker(1).await;
    let d = next(&w).await;
    let t0 = Instant::now();
    w.retry(d, 1, Duration::from_millis(150)).await.unwrap();
    let d = next(&w).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "came back after {:?}",
        t0.elapsed()
    );
    assert_eq!(
        (d.msg.job_id.as_str(), d.msg.attempt, d.msg.priority),
        ("job-r", 1, 3)
    );
    assert_eq!(d.msg.enqueued_at, job("job-r", 3, 0).enqueued_at);
    // A delay longer than every tier takes the longest.
    let t0 = Instant::now();
    w.retry(d, 2, Duration::from_secs(60)).await.unwrap();
    let d = next(&w).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "came back after {:?}",
        t0.elapsed()
    );
    assert_eq!(d.msg.attempt, 2);
    w.ack(d).await.unwrap();
    fx.teardown(&[&w]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_keeps_the_reason() {
    let fx = Fixture::new().await;
    fx.queue().publish(job("job-d", 0, 4)).await.unwrap();
    let w = fx.worker(1).await;
    let d = next(&w).await;
    w.dead_letter(d, "docker: image not found").await.unwrap();
    assert_eq!(fx.depth("fleet.jobs").await, 0);
    assert_eq!(fx.depth("fleet.dead").await, 1);
    let m = get_one(&fx.producer.names().dead)
        .await
        .expect("a dead letter");
    let props = &m.delivery.properties;
    assert_eq!(
        props.message_id().as_ref().map(|s| s.as_str()),
        Some("job-d")
    );
    assert_eq!(
        header(props, wire::H_REASON)
            .and_then(|v| wire::as_str(&v))
            .as_deref(),
        Some("docker: image not found")
    );
    assert_eq!(
        header(props, wire::H_ATTEMPT).and_then(|v| wire::as_u32(&v)),
        Some(4)
    );
    assert_eq!(
        header(props, wire::H_ORIGINAL_ID)
            .and_then(|v| wire::as_str(&v))
            .as_deref(),
        Some("job-d")
    );
    fx.teardown(&[&w]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_comes_back_redelivered() {
    let fx = Fixture::new().await;
    fx.queue().publish(job("job-q", 0, 1)).await.unwrap();
    let w = fx.worker(1).await;
    let d = next(&w).await;
    w.requeue(d).await.unwrap();
    let d = next(&w).await;
    assert_eq!(
        (d.msg.job_id.as_str(), d.msg.attempt, d.redelivered),
        ("job-q", 1, true)
    );
    w.ack(d).await.unwrap();
    fx.teardown(&[&w]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_message_is_still_delivered() {
    let fx = Fixture::new().await;
    // Published by someone else: no message id, no headers, not JSON, not UTF-8.
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let jobs = fx.producer.names().jobs.clone();
    ch.basic_publish(
        "".into(),
        jobs.as_str().into(),
        BasicPublishOptions::default(),
        b"\xff\xfe{not json",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let _ = conn.close(200, "OK".into()).await;

    let w = fx.worker(1).await;
    let d = next(&w).await;
    assert_eq!(
        (d.msg.job_id.as_str(), d.msg.attempt, d.msg.priority),
        ("", 0, 0)
    );
    assert_eq!(&d.msg.body[..], b"\xff\xfe{not json");
    w.dead_letter(d, "body is not a JSON job").await.unwrap();
    let m = get_one(&fx.producer.names().dead)
        .await
        .expect("a dead letter");
    assert_eq!(m.delivery.data, b"\xff\xfe{not json");
    assert_eq!(
        header(&m.delivery.properties, wire::H_ORIGINAL_ID)
            .and_then(|v| wire::as_str(&v))
            .as_deref(),
        Some("")
    );
    fx.teardown(&[&w]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_many_confirms_two_thousand() {
    let fx = Fixture::new().await;
    let jobs: Vec<JobMessage> = (0..2000)
        .map(|i| job(&format!("bulk-{i}"), (i % 10) as u8, 0))
        .collect();
    let t0 = Instant::now();
    fx.queue().publish_many(&jobs).await.unwrap();
    let took = t0.elapsed();
    eprintln!("2000 confirmed publishes in {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "2000 confirmed publishes took {took:?}"
    );
    let stats = fx.producer.queue_stats().await.unwrap();
    let names: Vec<String> = stats
        .iter()
        .map(|s| s.name.trim_start_matches(&fx.prefix).to_string())
        .collect();
    assert_eq!(
        names,
        [
            "fleet.jobs",
            "fleet.retry.200ms",
            "fleet.retry.1s",
            "fleet.dead"
        ]
    );
    assert_eq!((stats[0].messages, stats[0].consumers), (2000, 0));
    assert!(stats[1..].iter().all(|s| s.messages == 0));

    let w = fx.worker(50).await;
    let stats = fx.producer.queue_stats().await.unwrap();
    assert_eq!(stats[0].consumers, 1);
    let d = next(&w).await;
    assert_eq!(d.msg.priority, 9);
    w.ack(d).await.unwrap();
    fx.teardown(&[&w]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_retry_and_dead_letter() {
    let prefix = format!("test-{}.", uuid::Uuid::new_v4().simple());
    let quorum = |consume: bool| {
        let mut o = opts(&prefix);
        o.queue_kind = QueueKind::Quorum;
        o.consume = consume;
        o
    };
    let producer = AmqpQueue::connect(&url(), quorum(false))
        .await
        .expect("quorum topology");
    let fx = Fixture {
        prefix: prefix.clone(),
        producer,
    };
    fx.queue().publish(job("job-qq", 0, 0)).await.unwrap();
    let w = Queue::Amqp(AmqpQueue::connect(&url(), quorum(true)).await.unwrap());
    let d = next(&w).await;
    w.retry(d, 1, Duration::from_millis(100)).await.unwrap();
    let d = next(&w).await;
    assert_eq!((d.msg.job_id.as_str(), d.msg.attempt), ("job-qq", 1));
    w.dead_letter(d, "gave up").await.unwrap();
    assert_eq!(fx.depth("fleet.dead").await, 1);
    // Every queue that dead-letters does it at least once, as the broker sees it.
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "name",
            "arguments",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl (the broker runs on this host)");
    let listing = String::from_utf8_lossy(&out.stdout);
    let ours: Vec<&str> = listing.lines().filter(|l| l.starts_with(&prefix)).collect();
    let dead_lettering: Vec<&&str> = ours
        .iter()
        .filter(|l| l.contains("x-dead-letter-exchange"))
        .collect();
    assert!(
        dead_lettering.len() >= 2,
        "fleet.jobs and the tiers: {ours:?}"
    );
    for l in dead_lettering {
        assert!(
            l.contains("at-least-once") && l.contains("reject-publish"),
            "not at-least-once: {l}"
        );
    }
    fx.teardown(&[&w]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_reaches_every_worker() {
    let fx = Fixture::new().await;
    let a = Queue::Amqp(fx.worker_with(|o| o.control = true).await);
    let b = Queue::Amqp(fx.worker_with(|o| o.control = true).await);
    let (mut ra, mut rb) = (a.subscribe_control(), b.subscribe_control());
    fx.queue()
        .publish_control(ControlMsg::Cancel("job-c".into()))
        .await
        .unwrap();
    for r in [&mut ra, &mut rb] {
        let m = tokio::time::timeout(WAIT, r.recv())
            .await
            .expect("in time")
            .expect("a message");
        assert_eq!(m, ControlMsg::Cancel("job-c".into()));
    }
    assert_eq!(
        serde_json::to_string(&ControlMsg::Cancel("j".into())).unwrap(),
        r#"{"cancel":"j"}"#
    );
    fx.teardown(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_publish_is_refused() {
    let fx = Fixture::new().await;
    // The queue is gone (and this producer has no reason to declare it again).
    fx.producer.delete_topology().await.unwrap();
    let err = fx.queue().publish(job("job-x", 0, 0)).await.unwrap_err();
    assert!(matches!(err, QueueError::Refused(_)), "{err:?}");
    fx.producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_topology_stops_a_worker_not_a_producer() {
    let fx = Fixture::new().await;
    // Workers declare the topology as configured: a classic fleet.jobs is no quorum queue.
    let mut o = opts(&fx.prefix);
    o.queue_kind = QueueKind::Quorum;
    o.consume = true;
    match AmqpQueue::connect(&url(), o.clone()).await {
        Err(QueueError::Config(m)) => assert!(m.contains("queue.declare"), "{m}"),
        Err(e) => panic!("expected a config error, got {e:?}"),
        Ok(_) => panic!("expected a config error"),
    }
    // Producers (submit, cancel, status) take the queues as they find them.
    o.consume = false;
    let producer = Queue::Amqp(
        AmqpQueue::connect(&url(), o)
            .await
            .expect("a producer connects"),
    );
    producer.publish(job("job-p", 0, 0)).await.unwrap();
    assert_eq!(producer.queue_stats().await.unwrap()[0].messages, 1);
    fx.teardown(&[&producer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_consuming_puts_prefetched_messages_back() {
    let fx = Fixture::new().await;
    for i in 0..3 {
        fx.queue()
            .publish(job(&format!("s-{i}"), 0, 0))
            .await
            .unwrap();
    }
    let w = fx.worker(3).await;
    let d = next(&w).await;
    // Let the other two arrive in this worker's buffer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.stop_consuming().await;
    assert!(w.next().await.is_none());
    w.ack(d).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fx.depth("fleet.jobs").await, 2);
    fx.teardown(&[&w]).await;
}

/// The broker closes this handle's connection (as on a node failure).
async fn kill_connection(tag: &str) {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "-s", "list_connections", "pid", "client_properties"])
        .output()
        .await
        .expect("rabbitmqctl (scripts/services/rabbitmq.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // One connection a line: its pid (`<rabbit@host.1.2.0>`), then its properties.
    let pid = text
        .lines()
        .find(|l| l.contains(tag))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no connection named {tag} in {text}"))
        .to_string();
    let st = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "close_connection", &pid, "test: connection killed"])
        .status()
        .await
        .unwrap();
    assert!(st.success());
}

async fn wait_generation(q: &AmqpQueue, at_least: u64) {
    let t0 = Instant::now();
    while q.generation() < at_least {
        assert!(
            t0.elapsed() < WAIT,
            "no reconnect (generation {})",
            q.generation()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_delivery_is_not_settled_on_the_new_channel() {
    let fx = Fixture::new().await;
    fx.queue().publish(job("job-s", 0, 0)).await.unwrap();
    let tag = format!("stale-{}", uuid::Uuid::new_v4().simple());
    let aq = fx.worker_with(|o| o.consumer_tag = tag.clone()).await;
    let w = Queue::Amqp(aq.clone());
    let d = next(&w).await;
    assert_eq!(aq.generation(), 1);

    kill_connection(&tag).await;
    wait_generation(&aq, 2).await;
    // Acking the old delivery is a no-op: its tag means nothing on the new channel.
    w.ack(d).await.unwrap();
    let again = next(&w).await;
    assert_eq!(
        (again.msg.job_id.as_str(), again.redelivered),
        ("job-s", true)
    );
    w.ack(again).await.unwrap();

    // The new channel is still fine: nothing was acked on it that it did not deliver.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(aq.generation(), 2);
    fx.queue().publish(job("job-s2", 0, 0)).await.unwrap();
    let d = next(&w).await;
    assert_eq!(d.msg.job_id, "job-s2");
    w.ack(d).await.unwrap();
    assert_eq!(fx.depth("fleet.jobs").await, 0);
    fx.teardown(&[&w]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the broker: run alone with --run-ignored only"]
async fn broker_restart_drill() {
    let fx = Fixture::new().await;
    let aq = fx.worker_with(|o| o.prefetch = 2).await;
    let w = Queue::Amqp(aq.clone());
    fx.queue().publish(job("before", 0, 0)).await.unwrap();
    let d = next(&w).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services/rabbitmq.sh");
    let st = std::process::Command::new("bash")
        .args([script, "restart"])
        .status()
        .unwrap();
    assert!(st.success());
    wait_generation(&aq, 2).await;
    w.ack(d).await.unwrap(); // stale: a no-op
    let d = next(&w).await;
    assert_eq!((d.msg.job_id.as_str(), d.redelivered), ("before", true));
    w.ack(d).await.unwrap();

    // A publish during an outage waits for the broker to come back.
    let st = std::process::Command::new("rabbitmqctl")
        .args(["-q", "stop_app"])
        .status()
        .unwrap();
    assert!(st.success());
    let producer = fx.queue();
    let publish = tokio::spawn(async move { producer.publish(job("during", 0, 0)).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = std::process::Command::new("rabbitmqctl")
        .args(["-q", "start_app"])
        .status()
        .unwrap();
    assert!(st.success());
    publish
        .await
        .unwrap()
        .expect("published once the broker is back");
    let d = next(&w).await;
    assert_eq!(d.msg.job_id, "during");
    w.ack(d).await.unwrap();

    // ...but not past its deadline.
    let mut o = opts(&fx.prefix);
    o.publish_timeout = Duration::from_secs(2);
    let short = Queue::Amqp(AmqpQueue::connect(&url(), o).await.unwrap());
    let st = std::process::Command::new("rabbitmqctl")
        .args(["-q", "stop_app"])
        .status()
        .unwrap();
    assert!(st.success());
    let err = short.publish(job("lost", 0, 0)).await.unwrap_err();
    assert!(matches!(err, QueueError::Unavailable(_)), "{err:?}");
    let st = std::process::Command::new("bash")
        .args([script, "start"])
        .status()
        .unwrap();
    assert!(st.success());
    short.close().await;
    fx.teardown(&[&w]).await;
}
