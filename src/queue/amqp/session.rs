//! One connection's life: open it, declare the topology, open the channels and
//! consumers; and the supervisor task that forwards deliveries, watches the
//! connection, and replaces it (with backoff) when it dies.
//!
//! Each session has a generation number. A delivery remembers the generation it
//! came from, so nothing received on a dead channel is ever settled on a new one.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tracing::{debug, info, warn};

use super::wire;
use super::{Incoming, Shared};
use crate::queue::ControlMsg;

/// A broker call that failed or ran out of time, naming the call.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error("{0}: timed out after {1:?}")]
    Timeout(&'static str, Duration),
    #[error("{0}: {1}")]
    Broker(&'static str, lapin::Error),
}

impl CallError {
    /// The broker said no (access, a conflicting declaration), or TLS refused its
    /// certificate (rustls reports that as invalid data): retrying will not help.
    pub(super) fn is_refusal(&self) -> bool {
        match self {
            CallError::Broker(_, e) if e.is_amqp_soft_error() => true,
            CallError::Broker("connect", e) => matches!(
                e.kind(),
                lapin::ErrorKind::IOError(io) if io.kind() == std::io::ErrorKind::InvalidData
            ),
            _ => false,
        }
    }
}

/// Every broker call goes through here: it has a deadline and a name.
pub(super) async fn call<T>(
    what: &'static str,
    limit: Duration,
    f: impl Future<Output = lapin::Result<T>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CallError::Broker(what, e)),
        Err(_) => Err(CallError::Timeout(what, limit)),
    }
}

/// A live connection and its channels.
pub(super) struct Session {
    pub generation: u64,
    pub conn: Connection,
    /// Confirm mode; shared by every publisher of this handle.
    pub publish: Channel,
    /// Carries the jobs consumer, its prefetch, and so every ack.
    pub consume: Option<Channel>,
    pub control: Option<Channel>,
}

impl Session {
    pub(super) fn healthy(&self) -> bool {
        let open = |c: &Option<Channel>| c.as_ref().is_none_or(|c| c.status().connected());
        self.conn.status().connected()
            && self.publish.status().connected()
            && open(&self.consume)
            && open(&self.control)
    }
}

pub(super) struct Opened {
    pub session: Arc<Session>,
    pub jobs: Option<Consumer>,
    pub control: Option<Consumer>,
}

/// Connects, declares the topology, and opens the channels and consumers.
pub(super) async fn open(
    shared: &Shared,
    generation: u64,
    consume: bool,
) -> Result<Opened, CallError> {
    let t = shared.opts.op_timeout;
    let props = ConnectionProperties::default()
        .with_connection_name(shared.opts.consumer_tag.clone().into());
    let runtime = lapin::runtime::default_runtime().map_err(|e| CallError::Broker("connect", e))?;
    let conn = call(
        "connect",
        t,
        Connection::connect_with_config(&shared.url, props, shared.tls.clone(), runtime),
    )
    .await?;
    match open_channels(shared, &conn, consume).await {
        Ok(Channels {
            publish,
            consume,
            control,
            jobs_consumer,
            control_consumer,
        }) => {
            let session = Arc::new(Session {
                generation,
                conn,
                publish,
                consume,
                control,
            });
            Ok(Opened {
                session,
                jobs: jobs_consumer,
                control: control_consumer,
            })
        }
        Err(e) => {
            let _ = call("connection.close", t, conn.close(200, "OK".into())).await;
            Err(e)
        }
    }
}

struct Channels {
    publish: Channel,
    consume: Option<Channel>,
    control: Option<Channel>,
    jobs_consumer: Option<Consumer>,
    control_consumer: Option<Consumer>,
}

async fn open_channels(
    shared: &Shared,
    conn: &Connection,
    consume: bool,
) -> Result<Channels, CallError> {
    let t = shared.opts.op_timeout;
    declare(shared, conn).await?;

    let publish = call("channel.open", t, conn.create_channel()).await?;
    call(
        "confirm.select",
        t,
        publish.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;

    let (consume_ch, jobs) = if consume {
        let ch = call("channel.open", t, conn.create_channel()).await?;
        call(
            "basic.qos",
            t,
            ch.basic_qos(
                shared.opts.prefetch.max(1),
                BasicQosOptions { global: false },
            ),
        )
        .await?;
        let consumer = call(
            "basic.consume",
            t,
            ch.basic_consume(
                shared.names.jobs.as_str().into(),
                shared.opts.consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        (Some(ch), Some(consumer))
    } else {
        (None, None)
    };

    let (control_ch, control) = if shared.opts.control {
        let ch = call("channel.open", t, conn.create_channel()).await?;
        // Server-named, exclusive, auto-delete: one per worker, gone with its connection.
        let q = call(
            "queue.declare",
            t,
            ch.queue_declare(
                "".into(),
                QueueDeclareOptions::exclusive().auto_delete(),
                FieldTable::default(),
            ),
        )
        .await?;
        call(
            "queue.bind",
            t,
            ch.queue_bind(
                q.name().clone(),
                shared.names.control.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        let tag = format!("{}.control", shared.opts.consumer_tag);
        let opts = BasicConsumeOptions {
            no_ack: true,
            exclusive: true,
            ..Default::default()
        };
        let consumer = call(
            "basic.consume",
            t,
            ch.basic_consume(q.name().clone(), tag.into(), opts, FieldTable::default()),
        )
        .await?;
        (Some(ch), Some(consumer))
    } else {
        (None, None)
    };

    Ok(Channels {
        publish,
        consume: consume_ch,
        control: control_ch,
        jobs_consumer: jobs,
        control_consumer: control,
    })
}

/// Declares every exchange and queue; idempotent, run on each (re)connect.
///
/// A consumer (a worker) declares the queues as configured, and a conflicting
/// existing queue is refused by the broker. A producer (`submit`, `cancel`,
/// `status`) takes fleet.jobs as it finds it — classic or quorum, whatever the
/// workers declared — and declares the queues only when fleet.jobs is missing.
async fn declare(shared: &Shared, conn: &Connection) -> Result<(), CallError> {
    let (t, names, kind) = (
        shared.opts.op_timeout,
        &shared.names,
        shared.opts.queue_kind,
    );
    // A channel of its own: a refused declaration closes the channel it was made on.
    let ch = call("channel.open", t, conn.create_channel()).await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    call(
        "exchange.declare",
        t,
        ch.exchange_declare(
            names.control.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        ),
    )
    .await?;
    if !shared.opts.consume && exists(conn, &names.jobs, t).await? {
        let _ = call("channel.close", t, ch.close(200, "OK".into())).await;
        return Ok(());
    }
    let expires = shared
        .opts
        .queue_expires
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let q = |name: &str, mut args: FieldTable| {
        if let Some(ms) = expires {
            args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        ch.queue_declare(name.into(), QueueDeclareOptions::durable(), args)
    };
    call("queue.declare", t, q(&names.dead, wire::dead_args(kind))).await?;
    call(
        "queue.declare",
        t,
        q(
            &names.jobs,
            wire::jobs_args(names, kind, shared.opts.delivery_limit),
        ),
    )
    .await?;
    for (ttl, name) in &names.tiers {
        call(
            "queue.declare",
            t,
            q(name, wire::tier_args(names, kind, *ttl)),
        )
        .await?;
    }
    let _ = call("channel.close", t, ch.close(200, "OK".into())).await;
    Ok(())
}

/// Whether a queue exists (a passive declare, on a channel of its own since a
/// missing queue closes it).
async fn exists(conn: &Connection, queue: &str, t: Duration) -> Result<bool, CallError> {
    let ch = call("channel.open", t, conn.create_channel()).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match call(
        "queue.declare",
        t,
        ch.queue_declare(queue.into(), passive, FieldTable::default()),
    )
    .await
    {
        Ok(_) => {
            let _ = call("channel.close", t, ch.close(200, "OK".into())).await;
            Ok(true)
        }
        Err(CallError::Broker(_, e))
            if matches!(e.kind(), lapin::ErrorKind::ProtocolError(p)
                if *p.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The reconnect backoff: exponential with jitter, each delay capped.
pub(super) fn backoff(cap: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(cap)
        .with_jitter()
        .without_max_times()
        .build()
        .map(move |d| d.min(cap))
}

/// Opens a session, retrying with backoff until it works or the handle shuts down.
async fn reconnect(shared: &Shared, generation: u64) -> Option<Opened> {
    let consume = shared.opts.consume && !*shared.stopped.lock().expect("stopped lock");
    let mut delays = backoff(shared.opts.reconnect_max_delay);
    loop {
        match open(shared, generation, consume).await {
            Ok(opened) => return Some(opened),
            Err(e) => {
                let delay = delays.next().unwrap_or(shared.opts.reconnect_max_delay);
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker connection failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// Why a session ended.
enum End {
    Shutdown,
    Lost(String),
}

/// Owns the connection for the whole life of a handle: runs `first`, then
/// replaces each session that dies, until the handle shuts down.
pub(super) async fn supervise(shared: Arc<Shared>, first: Opened) {
    let mut next = Some(first);
    let mut generation = 0;
    loop {
        let opened = match next.take() {
            Some(o) => o,
            None => match reconnect(&shared, generation + 1).await {
                Some(o) => o,
                None => break,
            },
        };
        let session = opened.session.clone();
        generation = session.generation;
        shared.live.store(generation, Ordering::SeqCst);
        shared.session.send_replace(Some(session.clone()));
        if generation > 1 {
            info!(generation, "reconnected to the broker");
        }

        let end = run(&shared, opened).await;

        shared.live.store(0, Ordering::SeqCst);
        shared.session.send_replace(None);
        match end {
            End::Shutdown => {
                let _ = call(
                    "connection.close",
                    shared.opts.op_timeout,
                    session.conn.close(200, "OK".into()),
                )
                .await;
                break;
            }
            End::Lost(why) => {
                warn!(reason = %why, generation, "broker session lost; reconnecting");
                let t = shared.opts.op_timeout;
                // The connection may still be half-open (a channel died): close it so the
                // broker requeues what it delivered there; never wait on it here.
                tokio::spawn(async move {
                    if session.conn.status().connected() {
                        let _ = call(
                            "connection.close",
                            t,
                            session.conn.close(320, "session lost".into()),
                        )
                        .await;
                    }
                });
            }
        }
    }
    debug!("broker supervisor stopped");
}

async fn next_of(c: &mut Option<Consumer>) -> Option<lapin::Result<lapin::message::Delivery>> {
    match c {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Forwards deliveries and control messages until the session dies or shuts down.
async fn run(shared: &Shared, opened: Opened) -> End {
    let Opened {
        session,
        mut jobs,
        mut control,
    } = opened;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return End::Shutdown,
            _ = shared.poke.notified() => {}
            _ = tick.tick() => {}
            d = next_of(&mut jobs) => match d {
                Some(Ok(d)) => forward(shared, session.generation, d).await,
                Some(Err(e)) => return End::Lost(format!("jobs consumer: {e}")),
                None if *shared.stopped.lock().expect("stopped lock") => jobs = None,
                None => return End::Lost("the broker cancelled the jobs consumer".into()),
            },
            c = next_of(&mut control) => match c {
                Some(Ok(d)) => match serde_json::from_slice::<ControlMsg>(&d.data) {
                    Ok(msg) => {
                        debug!(?msg, "control message");
                        let _ = shared.control_tx.send(msg);
                    }
                    Err(e) => warn!(error = %e, "ignoring an unreadable control message"),
                },
                Some(Err(e)) => return End::Lost(format!("control consumer: {e}")),
                None => return End::Lost("the broker cancelled the control consumer".into()),
            },
        }
        if !session.healthy() {
            return End::Lost("connection or channel closed".into());
        }
    }
}

/// Hands a delivery to `next()`, or — once consuming has stopped — puts it back.
async fn forward(shared: &Shared, generation: u64, d: lapin::message::Delivery) {
    let back = {
        let stopped = shared.stopped.lock().expect("stopped lock");
        if *stopped {
            Some(d)
        } else {
            // Unbounded, but the broker sends at most `prefetch` unacked deliveries.
            let _ = shared.jobs_tx.send(Incoming {
                generation,
                delivery: d,
            });
            None
        }
    };
    if let Some(d) = back {
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        if let Err(e) = call("basic.nack", shared.opts.op_timeout, d.acker.nack(requeue)).await {
            debug!(error = %e, "requeue after stop failed; the broker requeues on close");
        }
    }
}
