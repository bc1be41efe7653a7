//! The RabbitMQ queue of the fleet (lapin), per DESIGN.md "Queue topology":
//!
//! - `fleet.jobs` (durable; classic with priorities 0–9, or quorum with a
//!   delivery limit) dead-letters to `fleet.dead`;
//! - `fleet.retry.<delay>` tiers hold a retried message for their TTL, then
//!   dead-letter it back to `fleet.jobs` (a per-message TTL would only expire at
//!   a queue's head, hence fixed tiers);
//! - `fleet.dead` keeps what was given up on, the reason in headers;
//! - `fleet.control` is a fanout exchange; each worker binds its own exclusive,
//!   server-named queue to it and gets cancel messages as a broadcast.
//!
//! Every publish is persistent, `mandatory`, and confirmed; a nack or a return is
//! [`QueueError::Refused`]. Consumers ack manually with prefetch = concurrency.
//! A supervisor task owns the connection: when it dies it reconnects with
//! backoff, declares the topology again and consumes again, and `next()` goes on.
//! A delivery from a dead session is stale: settling it does nothing, and the
//! broker delivers the message again. Delivery is at least once — the worker's
//! status record in the store makes a duplicate harmless.

mod publish;
mod session;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicNackOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::debug;

use self::session::{CallError, Session, call};
use super::{ControlMsg, JobMessage, QueueError, QueueStat};

/// The kind of the durable queues (jobs, retry tiers, dead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueKind {
    /// A single node's queues, with `x-max-priority: 9` on fleet.jobs.
    #[default]
    Classic,
    /// Replicated queues for a cluster, with `x-delivery-limit` on fleet.jobs.
    Quorum,
}

/// How to connect and what to do on the connection.
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    /// Unacked deliveries at once: the worker's concurrency.
    pub prefetch: u16,
    pub queue_kind: QueueKind,
    /// Quorum only: deliveries of one message before the broker dead-letters it itself.
    pub delivery_limit: u32,
    /// Consume fleet.jobs (a worker); producers (`submit`, `status`, `cancel`) leave it off.
    pub consume: bool,
    /// Bind a control queue and receive `fleet.control` broadcasts (a worker).
    pub control: bool,
    /// Put before every queue and exchange name, e.g. `test-<uuid>.` to isolate a test.
    pub prefix: String,
    /// Retry delays, one queue each.
    pub retry_tiers: Vec<Duration>,
    /// The consumer tag (unique per worker) and connection name.
    pub consumer_tag: String,
    /// Deadline of each broker call (connect, declare, ack…).
    pub op_timeout: Duration,
    /// How long a publish may wait for the broker, reconnects included, before `Unavailable`.
    pub publish_timeout: Duration,
    /// How long [`AmqpQueue::connect`] keeps trying before `Unavailable`.
    pub connect_timeout: Duration,
    /// The longest pause between reconnect attempts.
    pub reconnect_max_delay: Duration,
    /// Messages per pipelined batch of [`AmqpQueue::publish_many`].
    pub publish_batch: usize,
    /// Tests only: the broker deletes each durable queue this long after its
    /// last use (`x-expires`), so a failed test leaves nothing behind. A retry
    /// tier has no consumer: it goes this long after the last (re)connect.
    pub queue_expires: Option<Duration>,
    /// PEM file of CA certificates trusted for `amqps://` besides the system roots
    /// (`FLEET_AMQP_CA_FILE`): a broker with a private CA.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        AmqpOptions {
            prefetch: 1,
            queue_kind: QueueKind::Classic,
            delivery_limit: 20,
            consume: false,
            control: false,
            prefix: String::new(),
            retry_tiers: [5, 30, 300].map(Duration::from_secs).to_vec(),
            consumer_tag: format!(
                "fleet-{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            op_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            reconnect_max_delay: Duration::from_secs(5),
            publish_batch: 1000,
            queue_expires: None,
            ca_file: None,
        }
    }
}

/// A delivery as the supervisor hands it over.
struct Incoming {
    generation: u64,
    delivery: lapin::message::Delivery,
}

/// Proof of an AMQP delivery: its acker and the session it came from.
pub struct AmqpHandle {
    generation: u64,
    acker: Acker,
}

/// What one received message carries besides the job.
pub struct Received {
    pub msg: JobMessage,
    pub redelivered: bool,
    pub handle: AmqpHandle,
}

/// State shared by the handle's clones and its supervisor task.
struct Shared {
    url: String,
    /// Extra trust for `amqps://` (the CA file's certificates); empty otherwise.
    tls: lapin::tcp::OwnedTLSConfig,
    opts: AmqpOptions,
    names: wire::Names,
    /// The live session; `None` while (re)connecting.
    session: watch::Sender<Option<Arc<Session>>>,
    /// Generation of the live session, 0 while there is none.
    live: AtomicU64,
    jobs_tx: mpsc::UnboundedSender<Incoming>,
    jobs_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Incoming>>,
    control_tx: broadcast::Sender<ControlMsg>,
    /// Set by `stop_consuming`; checked under the lock before each hand-over.
    stopped: Mutex<bool>,
    stop: CancellationToken,
    shutdown: CancellationToken,
    /// Wakes the supervisor to check the session now (a publish saw it fail).
    poke: Notify,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A handle on the broker; cheap to clone. The connection closes with
/// [`AmqpQueue::close`], or when the last clone is dropped.
#[derive(Clone)]
pub struct AmqpQueue {
    shared: Arc<Shared>,
    _guard: Arc<DropGuard>,
}

/// The TLS settings of `amqps://` connections: the system roots (always), plus the
/// certificates of `ca_file`. An unreadable file or one without a certificate is
/// a configuration error now, not a failed handshake later.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<lapin::tcp::OwnedTLSConfig, QueueError> {
    let Some(path) = ca_file else {
        return Ok(lapin::tcp::OwnedTLSConfig::default());
    };
    let bad =
        |why: String| QueueError::Config(format!("FLEET_AMQP_CA_FILE={}: {why}", path.display()));
    let pem = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: Some(pem),
    })
}

fn unavailable(e: CallError) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

impl AmqpQueue {
    /// Connects (retrying for up to `connect_timeout`), declares the topology,
    /// and starts consuming when `opts.consume`. A declaration the broker refuses
    /// (e.g. fleet.jobs exists with other arguments) is [`QueueError::Config`].
    pub async fn connect(url: &str, opts: AmqpOptions) -> Result<AmqpQueue, QueueError> {
        url.parse::<lapin::uri::AMQPUri>()
            .map_err(|e| QueueError::Config(format!("queue URL: {e}")))?;
        let tls = tls_config(opts.ca_file.as_deref())?;
        let names = wire::Names::new(&opts.prefix, &opts.retry_tiers);
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            url: url.to_string(),
            tls,
            names,
            session: watch::Sender::new(None),
            live: AtomicU64::new(0),
            jobs_tx,
            jobs_rx: tokio::sync::Mutex::new(jobs_rx),
            control_tx: broadcast::channel(256).0,
            stopped: Mutex::new(false),
            stop: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            poke: Notify::new(),
            supervisor: Mutex::new(None),
            opts,
        });

        let deadline = Instant::now() + shared.opts.connect_timeout;
        let mut delays = session::backoff(shared.opts.reconnect_max_delay);
        let first = loop {
            match session::open(&shared, 1, shared.opts.consume).await {
                Ok(o) => break o,
                Err(e) if e.is_refusal() => return Err(QueueError::Config(e.to_string())),
                Err(e) => {
                    let delay = delays.next().unwrap_or(shared.opts.reconnect_max_delay);
                    if Instant::now() + delay >= deadline {
                        return Err(unavailable(e));
                    }
                    debug!(error = %e, "broker not reachable yet");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        let task = tokio::spawn(session::supervise(shared.clone(), first));
        *shared.supervisor.lock().expect("supervisor lock") = Some(task);
        let guard = Arc::new(shared.shutdown.clone().drop_guard());
        Ok(AmqpQueue {
            shared,
            _guard: guard,
        })
    }

    /// Queue and exchange names, with the prefix.
    pub fn names(&self) -> &wire::Names {
        &self.shared.names
    }

    /// Generation of the live connection (1 for the first, +1 per reconnect), 0 while reconnecting.
    pub fn generation(&self) -> u64 {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Waits up to `deadline` for a live session; `Closed` once shut down.
    async fn session(&self, deadline: Instant) -> Result<Arc<Session>, QueueError> {
        let mut rx = self.shared.session.subscribe();
        loop {
            if self.shared.shutdown.is_cancelled() {
                return Err(QueueError::Closed);
            }
            let current = rx.borrow_and_update().clone();
            if let Some(s) = current {
                if s.healthy() {
                    return Ok(s);
                }
                self.shared.poke.notify_one();
            }
            tokio::select! {
                r = tokio::time::timeout_at(deadline, rx.changed()) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(QueueError::Closed),
                    Err(_) => return Err(QueueError::Unavailable("no broker connection before the deadline".into())),
                },
                _ = self.shared.shutdown.cancelled() => return Err(QueueError::Closed),
            }
        }
    }

    /// The next delivery of fleet.jobs; `None` when this handle does not consume,
    /// after [`stop_consuming`](Self::stop_consuming), or once closed. Waits across
    /// reconnects. Deliveries of a dead session that were never handed out are
    /// dropped here (the broker delivers them again).
    pub async fn next(&self) -> Option<Received> {
        if !self.shared.opts.consume {
            return None;
        }
        let mut rx = tokio::select! {
            rx = self.shared.jobs_rx.lock() => rx,
            _ = self.shared.stop.cancelled() => return None,
            _ = self.shared.shutdown.cancelled() => return None,
        };
        loop {
            let inc = tokio::select! {
                biased;
                _ = self.shared.stop.cancelled() => return None,
                _ = self.shared.shutdown.cancelled() => return None,
                inc = rx.recv() => inc?,
            };
            if inc.generation != self.generation() || !inc.delivery.acker.usable() {
                debug!("dropping a delivery of a closed channel; the broker delivers it again");
                continue;
            }
            let d = inc.delivery;
            return Some(Received {
                msg: wire::decode(&d.properties, d.data, Utc::now()),
                redelivered: d.redelivered,
                handle: AmqpHandle {
                    generation: inc.generation,
                    acker: d.acker,
                },
            });
        }
    }

    /// True when settling `h` would reach a channel that no longer exists.
    fn stale(&self, h: &AmqpHandle) -> bool {
        h.generation != self.generation() || h.acker.poisoned()
    }

    /// Acks (`requeue: None`) or nacks a delivery. A stale delivery, or one whose
    /// channel dies during the call, is left to the broker to deliver again: Ok.
    async fn settle(&self, h: AmqpHandle, requeue: Option<bool>) -> Result<(), QueueError> {
        if self.stale(&h) {
            debug!(
                "settling a delivery of a closed channel: nothing to do, the broker delivers it again"
            );
            return Ok(());
        }
        let t = self.shared.opts.op_timeout;
        let r = match requeue {
            None => call("basic.ack", t, h.acker.ack(BasicAckOptions::default())).await,
            Some(requeue) => {
                call(
                    "basic.nack",
                    t,
                    h.acker.nack(BasicNackOptions {
                        multiple: false,
                        requeue,
                    }),
                )
                .await
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(_) if self.stale(&h) => Ok(()),
            Err(e) => {
                self.shared.poke.notify_one();
                Err(unavailable(e))
            }
        }
    }

    /// Done with it.
    pub async fn ack(&self, h: AmqpHandle) -> Result<(), QueueError> {
        self.settle(h, None).await
    }

    /// Back to fleet.jobs now (basic.nack, requeue).
    pub async fn requeue(&self, h: AmqpHandle) -> Result<(), QueueError> {
        self.settle(h, Some(true)).await
    }

    /// Publishes `msg` (with its new attempt) to the retry tier for `delay`,
    /// confirmed, then acks the original. If that publish fails the original is
    /// requeued instead, so the message is never lost, and the error returned.
    pub async fn retry(
        &self,
        h: AmqpHandle,
        msg: &JobMessage,
        delay: Duration,
    ) -> Result<(), QueueError> {
        if self.stale(&h) {
            return Ok(());
        }
        let target = self.shared.names.retry_target(delay);
        debug!(job_id = %msg.job_id, attempt = msg.attempt, delay_ms = delay.as_millis() as u64, queue = target, "retry");
        let published = match wire::job_properties(msg, FieldTable::default()) {
            Ok(props) => self.publish_to(target, &msg.body, props).await,
            Err(e) => Err(e),
        };
        match published {
            Ok(()) => self.ack(h).await,
            Err(e) => {
                let _ = self.requeue(h).await;
                Err(e)
            }
        }
    }

    /// Publishes the message to fleet.dead with `reason`, confirmed, then acks
    /// the original. If that publish fails the original is rejected without
    /// requeue, which the broker dead-letters to fleet.dead itself (without the
    /// reason headers); the error is returned.
    pub async fn dead_letter(
        &self,
        h: AmqpHandle,
        msg: &JobMessage,
        reason: &str,
    ) -> Result<(), QueueError> {
        if self.stale(&h) {
            return Ok(());
        }
        debug!(job_id = %msg.job_id, attempt = msg.attempt, reason, "dead letter");
        let headers = wire::dead_headers(msg, reason, Utc::now());
        let published = match wire::job_properties(msg, headers.clone()) {
            Ok(props) => {
                self.publish_to(&self.shared.names.dead, &msg.body, props)
                    .await
            }
            // An id the broker cannot carry: keep the message without it.
            Err(_) => {
                let mut bare = msg.clone();
                bare.job_id.clear();
                match wire::job_properties(&bare, headers) {
                    Ok(props) => {
                        self.publish_to(&self.shared.names.dead, &msg.body, props)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match published {
            Ok(()) => self.ack(h).await,
            Err(e) => {
                let _ = self.settle(h, Some(false)).await;
                Err(e)
            }
        }
    }

    /// Control messages for this worker (needs `opts.control`). Messages sent
    /// while the connection is down are not seen; a receiver that falls more than
    /// 256 behind gets `Lagged`.
    pub fn subscribe_control(&self) -> broadcast::Receiver<ControlMsg> {
        self.shared.control_tx.subscribe()
    }

    /// Depth and consumers of fleet.jobs, each retry tier and fleet.dead (passive declares).
    pub async fn queue_stats(&self) -> Result<Vec<QueueStat>, QueueError> {
        let t = self.shared.opts.op_timeout;
        let s = self.session(Instant::now() + t).await?;
        let ch = call("channel.open", t, s.conn.create_channel())
            .await
            .map_err(unavailable)?;
        let mut stats = Vec::new();
        for name in self.shared.names.queues() {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let q = call(
                "queue.declare",
                t,
                ch.queue_declare(name.into(), passive, FieldTable::default()),
            )
            .await
            .map_err(unavailable)?;
            stats.push(QueueStat {
                name: name.to_string(),
                messages: q.message_count(),
                consumers: q.consumer_count(),
            });
        }
        let _ = call("channel.close", t, ch.close(200, "OK".into())).await;
        Ok(stats)
    }

    /// Stops taking deliveries: cancels the consumer, puts back what was received
    /// but not handed out, and makes `next()` return `None`. Deliveries already
    /// handed out are still settled as usual. For a draining worker.
    pub async fn stop_consuming(&self) {
        *self.shared.stopped.lock().expect("stopped lock") = true;
        self.shared.stop.cancel();
        let t = self.shared.opts.op_timeout;
        let current = self.shared.session.borrow().clone();
        if let Some(s) = current
            && let Some(ch) = &s.consume
        {
            let tag = self.shared.opts.consumer_tag.as_str().into();
            if let Err(e) = call(
                "basic.cancel",
                t,
                ch.basic_cancel(tag, BasicCancelOptions::default()),
            )
            .await
            {
                debug!(error = %e, "cancelling the consumer");
            }
        }
        let mut rx = self.shared.jobs_rx.lock().await;
        while let Ok(inc) = rx.try_recv() {
            let h = AmqpHandle {
                generation: inc.generation,
                acker: inc.delivery.acker,
            };
            let _ = self.settle(h, Some(true)).await;
        }
    }

    /// Closes the connection (the broker requeues whatever is unacked) and stops
    /// the supervisor. Every clone of this handle is closed with it.
    pub async fn close(&self) {
        self.shared.shutdown.cancel();
        let task = self
            .shared
            .supervisor
            .lock()
            .expect("supervisor lock")
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(self.shared.opts.op_timeout * 2, task).await;
        }
    }

    /// Deletes every queue and the control exchange of this prefix — for tests
    /// and teardown. Close the consumers first, or they declare it all again.
    pub async fn delete_topology(&self) -> Result<(), QueueError> {
        let t = self.shared.opts.op_timeout;
        let s = self.session(Instant::now() + t).await?;
        let ch = call("channel.open", t, s.conn.create_channel())
            .await
            .map_err(unavailable)?;
        for name in self.shared.names.queues() {
            call(
                "queue.delete",
                t,
                ch.queue_delete(name.into(), QueueDeleteOptions::default()),
            )
            .await
            .map_err(unavailable)?;
        }
        let control = self.shared.names.control.as_str().into();
        call(
            "exchange.delete",
            t,
            ch.exchange_delete(control, ExchangeDeleteOptions::default()),
        )
        .await
        .map_err(unavailable)?;
        let _ = call("channel.close", t, ch.close(200, "OK".into())).await;
        Ok(())
    }
}

/// The worker spawns these futures: they must stay `Send`.
#[allow(dead_code)]
fn futures_are_send(q: &AmqpQueue, h: AmqpHandle, m: &JobMessage) {
    fn send<T: Send>(_: T) {}
    send(q.next());
    send(q.publish(m));
    send(q.publish_many(std::slice::from_ref(m)));
    send(q.retry(h, m, Duration::ZERO));
    send(q.stop_consuming());
    send(q.close());
    send(q.queue_stats());
    send(q.publish_control(&ControlMsg::Cancel(String::new())));
    send(AmqpQueue::connect("", AmqpOptions::default()));
}
