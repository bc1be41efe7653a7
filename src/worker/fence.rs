//! A run's hold on its job: every write of the run goes through its [`Fence`],
//! which writes only while the status record names the run's owner token, and
//! which trips `lost` the moment a write finds it gone. The heartbeat renews the
//! hold (a new heartbeat sequence) with its own short deadline; the live event
//! log is uploaded by a task of its own, so a slow upload never delays a beat.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agent::Progress;
use crate::job::{Owner, StatusRecord};
use crate::store::{JobKeys, Store, StoreError};

/// One run's writes to its job's records.
#[derive(Clone)]
pub struct Fence {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    job_id: String,
    owner: Owner,
    lease: Duration,
    /// Tripped once a write found the token gone: the run must stop.
    lost: CancellationToken,
    /// When a write last proved the token still held, on this process's clock.
    confirmed: Mutex<Instant>,
}

impl Fence {
    pub fn new(store: Store, job_id: &str, owner: Owner, lease: Duration) -> Fence {
        Fence {
            inner: Arc::new(Inner {
                store,
                job_id: job_id.to_string(),
                owner,
                lease,
                lost: CancellationToken::new(),
                confirmed: Mutex::new(Instant::now()),
            }),
        }
    }

    pub fn owner(&self) -> &Owner {
        &self.inner.owner
    }

    pub fn job_id(&self) -> &str {
        &self.inner.job_id
    }

    /// Cancelled once the run lost its job.
    pub fn lost(&self) -> &CancellationToken {
        &self.inner.lost
    }

    pub fn is_lost(&self) -> bool {
        self.inner.lost.is_cancelled()
    }

    fn note<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match &r {
            Err(StoreError::Lost { holder, .. }) => {
                if !self.inner.lost.is_cancelled() {
                    warn!(
                        holder,
                        "this run lost its job; stopping and writing nothing"
                    );
                }
                self.inner.lost.cancel();
            }
            Ok(_) => {}
            Err(_) => {}
        }
        r
    }

    fn refuse_if_lost(&self) -> Result<(), StoreError> {
        if self.is_lost() {
            return Err(StoreError::Lost {
                job_id: self.inner.job_id.clone(),
                holder: "another run".into(),
            });
        }
        Ok(())
    }

    /// Updates the status record while this run holds it.
    pub async fn update(
        &self,
        f: impl Fn(&mut StatusRecord) -> bool,
    ) -> Result<StatusRecord, StoreError> {
        self.refuse_if_lost()?;
        let started = Instant::now();
        let r = self
            .inner
            .store
            .update_owned(&self.inner.job_id, &self.inner.owner, f)
            .await;
        if r.is_ok() {
            *self.inner.confirmed.lock().expect("confirmed") = started;
        }
        self.note(r)
    }

    /// Before writing a file: when the hold was last proven more than a third of a
    /// lease ago (a stall, a paused process), prove it again with a heartbeat so a
    /// run that was taken over meanwhile finds out before it writes.
    async fn fresh(&self) -> Result<(), StoreError> {
        self.refuse_if_lost()?;
        let since = self.inner.confirmed.lock().expect("confirmed").elapsed();
        if since > self.inner.lease / 3 {
            self.beat(None).await?;
        }
        Ok(())
    }

    /// Whether the hold was proven within `within` on this process's clock.
    fn proven_within(&self, within: Duration) -> bool {
        self.inner.confirmed.lock().expect("confirmed").elapsed() <= within
    }

    /// Runs `fut` only while the hold is recent: whenever it was last proven more
    /// than two thirds of a lease ago (the process was paused or stalled), `fut`
    /// is not polled again until a heartbeat proved it — so a run that woke up
    /// after losing its job makes no further step (no LLM request, no command)
    /// and stops as soon as the fence trips.
    pub fn gate<F: Future>(&self, fut: F) -> Gate<'_, F> {
        Gate {
            fence: self,
            fut: Box::pin(fut),
            proving: None,
        }
    }

    /// One heartbeat: a new sequence (and progress) under the token.
    pub async fn beat(&self, progress: Option<&Progress>) -> Result<StatusRecord, StoreError> {
        let (steps, cost) = progress.map_or((None, None), |p| (Some(p.steps()), Some(p.cost())));
        self.update(|s| {
            s.heartbeat_seq += 1;
            s.heartbeat = Some(Utc::now());
            if let (Some(n), Some(c)) = (steps, cost) {
                s.steps = n;
                s.cost_usd = c;
            }
            true
        })
        .await
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.fresh().await?;
        let r = self
            .inner
            .store
            .put_owned(&self.inner.job_id, &self.inner.owner, key, body)
            .await;
        self.note(r)
    }

    pub async fn put_json<T: serde::Serialize>(&self, key: &str, v: &T) -> Result<(), StoreError> {
        let body = serde_json::to_vec_pretty(v).expect("records serialise");
        self.put(key, Bytes::from(body)).await
    }

    pub async fn put_file(&self, key: &str, path: &Path) -> Result<u64, StoreError> {
        self.fresh().await?;
        let r = self
            .inner
            .store
            .put_file_owned(&self.inner.job_id, &self.inner.owner, key, path)
            .await;
        self.note(r)
    }
}

type Proof<'a> = Pin<Box<dyn Future<Output = Result<StatusRecord, StoreError>> + Send + 'a>>;

/// See [`Fence::gate`].
pub struct Gate<'a, F: Future> {
    fence: &'a Fence,
    fut: Pin<Box<F>>,
    proving: Option<Proof<'a>>,
}

impl<F: Future> Future for Gate<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        loop {
            if this.fence.is_lost() {
                // The caller selects on `lost`; this step never runs.
                return Poll::Pending;
            }
            if let Some(p) = this.proving.as_mut() {
                match p.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(_)) => this.proving = None,
                    Poll::Ready(Err(StoreError::Lost { .. })) => return Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        // The store is away: try again shortly, still holding back.
                        warn!(error = %e, "proving this run's hold failed; holding the run");
                        let fence = this.fence;
                        this.proving = Some(Box::pin(async move {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            fence.beat(None).await
                        }));
                        continue;
                    }
                }
            }
            if !this.fence.proven_within(this.fence.inner.lease * 2 / 3) {
                let fence = this.fence;
                this.proving = Some(Box::pin(fence.beat(None)));
                continue;
            }
            return this.fut.as_mut().poll(cx);
        }
    }
}

/// Keeps the hold fresh while a job runs: a beat every `period`, each with its own
/// `deadline` (well inside the lease); notices cancel requests in the record and
/// trips the fence when the token is gone. Returns the token that stops it.
pub fn heartbeat(
    fence: &Fence,
    period: Duration,
    deadline: Duration,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> CancellationToken {
    let stop = CancellationToken::new();
    let (fence, stop2) = (fence.clone(), stop.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop2.cancelled() => return,
                _ = fence.lost().cancelled() => return,
            }
            match tokio::time::timeout(deadline, fence.beat(Some(&progress))).await {
                Ok(Ok(s)) if s.cancel_requested => cancel.cancel(),
                Ok(Ok(_)) => {}
                Ok(Err(StoreError::Lost { .. })) => return,
                Ok(Err(e)) => warn!(error = %e, "heartbeat failed"),
                Err(_) => warn!(?deadline, "heartbeat timed out"),
            }
        }
    });
    stop
}

/// Uploads the live event log (for `fleet logs --follow`) every `period` while it
/// grows, through the fence. Returns the token that stops it.
pub fn live_log(fence: &Fence, events_path: PathBuf, period: Duration) -> CancellationToken {
    let stop = CancellationToken::new();
    let (fence, stop2) = (fence.clone(), stop.clone());
    tokio::spawn(async move {
        let key = JobKeys(fence.job_id()).events();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut uploaded = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop2.cancelled() => return,
                _ = fence.lost().cancelled() => return,
            }
            let size = std::fs::metadata(&events_path)
                .map(|m| m.len())
                .unwrap_or(0);
            if size == uploaded {
                continue;
            }
            let put = fence.put_file(&key, &events_path);
            tokio::select! {
                r = put => match r {
                    Ok(_) => uploaded = size,
                    Err(StoreError::Lost { .. }) => return,
                    Err(e) => info!(error = %e, "live event log upload failed"),
                },
                // The final upload replaces this one; do not race it.
                _ = stop2.cancelled() => return,
            }
        }
    });
    stop
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::State;

    async fn owned_store() -> (tempfile::TempDir, Store, Owner) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
        let owner = Owner::new("w1", 1);
        let mut rec = StatusRecord::queued("j", None);
        rec.owner = Some(owner.clone());
        rec.transition(State::Running, Some("w1"), None);
        store.put_json("jobs/j/status.json", &rec).await.unwrap();
        (dir, store, owner)
    }

    #[tokio::test]
    async fn a_run_that_lost_its_token_writes_nothing_and_makes_no_step() {
        let (_d, store, owner) = owned_store().await;
        let lease = Duration::from_millis(300);
        let fence = Fence::new(store.clone(), "j", owner, lease);
        fence
            .put("jobs/j/patch.diff", Bytes::from_static(b"mine"))
            .await
            .unwrap();
        let seq = fence.beat(None).await.unwrap().heartbeat_seq;
        assert_eq!(seq, 1);
        // Another run takes the job over.
        let other = Owner::new("w2", 2);
        store
            .update_status("j", |r| {
                r.owner = Some(other.clone());
                true
            })
            .await
            .unwrap();
        let e = fence
            .put("jobs/j/patch.diff", Bytes::from_static(b"stale"))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Lost { .. }), "{e}");
        assert!(fence.is_lost());
        assert_eq!(
            store.get("jobs/j/patch.diff").await.unwrap().unwrap(),
            Bytes::from_static(b"mine")
        );
        assert!(
            fence.update(|_| true).await.is_err(),
            "no status write either"
        );
        // A step gated by a lost fence never runs.
        let ran = std::sync::atomic::AtomicBool::new(false);
        let step = fence.gate(async { ran.store(true, std::sync::atomic::Ordering::SeqCst) });
        assert!(
            tokio::time::timeout(Duration::from_millis(100), step)
                .await
                .is_err()
        );
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_stale_hold_is_proven_before_the_next_step() {
        let (_d, store, owner) = owned_store().await;
        let fence = Fence::new(store.clone(), "j", owner, Duration::from_millis(150));
        // As after a pause: the last proof is older than two thirds of a lease.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = store.status("j").await.unwrap().unwrap().heartbeat_seq;
        fence.gate(async {}).await;
        let after = store.status("j").await.unwrap().unwrap().heartbeat_seq;
        assert_eq!(
            after,
            before + 1,
            "the gate beat before letting the step run"
        );
    }
}
