//! The queuer actor: a VM's captured writes waiting for inference.
//!
//! - **Bounded in bytes.** Before a write is queued, the capture side takes
//!   its size (in KiB, at least one) from the VM's byte budget
//!   (`policy.queue_bytes`, [`Budget`]); the write carries that permit until
//!   it has been inferred. With the budget spent, the capture side waits,
//!   stops reading requests, and the guest's I/O waits: memory stays
//!   bounded and nothing is lost. A single write larger than the whole
//!   budget takes all of it.
//! - **Double-buffered.** The queuer fills one batch while the inferencer
//!   works on the other; when the inferencer replies, the queuer hands it
//!   the whole filled batch at once, without copying a write. With nothing
//!   queued for [`IDLE_TICK`], the inferencer is told that time passes.
//! - **Tagged for the throttler.** Each write is tagged with the data-drop
//!   switch as it stood when the write arrived
//!   ([`Throttler`](super::throttler::Throttler)), and the queue's level
//!   goes to the throttler after each change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use gammaray_core::DiskWrite;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::inferencer::{Batch, Finish, Inferencer, Tick};
use super::pipeline::VmStats;
use super::throttler::{Level, Throttler};

/// With nothing queued for this long, time passes for the inference.
pub const IDLE_TICK: Duration = Duration::from_millis(500);

/// Budget units: one permit per KiB.
const UNIT: u64 = 1024;

/// A captured write on its way to inference.
#[derive(Debug)]
pub struct Queued {
    /// When it arrived.
    pub arrived: Instant,
    /// The request.
    pub write: DiskWrite,
    /// Whether data drop was on when it arrived.
    pub drop_data: bool,
    /// Its share of the byte budget, given back when it is dropped.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// A VM's byte budget for writes between capture and the end of their
/// inference.
#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    units: u32,
}

impl Budget {
    /// A budget of `bytes` (at least 1 KiB, at most 4 TiB).
    pub fn new(bytes: u64) -> Self {
        let units = (bytes / UNIT).clamp(1, u64::from(u32::MAX)) as u32;
        Budget {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// Waits until `len` bytes fit, and takes them.
    pub async fn take(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let want = (len as u64).div_ceil(UNIT).clamp(1, u64::from(self.units)) as u32;
        self.sem.clone().acquire_many_owned(want).await.ok()
    }

    /// Bytes taken now.
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        u64::from(self.units).saturating_sub(self.sem.available_permits() as u64) * UNIT
    }
}

/// A captured write (sent by the capture side, see [`forward`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Captured(pub Queued);

/// The inferencer is ready: batches may go to it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Start(pub Addr<Inferencer>);

/// The source has ended (or failed): finish once everything is inferred.
/// Sent by the source thread to the supervisor, which passes it on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SourceEnded;

/// The VM's inference is over: `Ok` or what failed. Sent to the
/// supervisor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Finished(pub Result<(), String>);

/// One VM's queue.
pub struct Queuer {
    filling: Vec<Queued>,
    inferencer: Option<Addr<Inferencer>>,
    busy: bool,
    ended: bool,
    finishing: bool,
    last_activity: Instant,
    dropping: Arc<AtomicBool>,
    throttler: Addr<Throttler>,
    stats: Arc<VmStats>,
    supervisor: Recipient<Finished>,
    /// Writes handed to the inferencer so far.
    pub handed: u64,
}

impl Queuer {
    /// A queue whose writes are tagged from `dropping`, whose level goes to
    /// `throttler`, and whose end is reported to `supervisor`.
    pub fn new(
        dropping: Arc<AtomicBool>,
        throttler: Addr<Throttler>,
        stats: Arc<VmStats>,
        supervisor: Recipient<Finished>,
    ) -> Self {
        Queuer {
            filling: Vec::new(),
            inferencer: None,
            busy: false,
            ended: false,
            finishing: false,
            last_activity: Instant::now(),
            dropping,
            throttler,
            stats,
            supervisor,
            handed: 0,
        }
    }

    /// Hands the filled batch over if the inferencer is free; finishes
    /// when the source has ended and nothing is left.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let Some(inf) = self.inferencer.clone() else {
            return;
        };
        if self.busy || self.finishing {
            return;
        }
        if !self.filling.is_empty() {
            let batch = std::mem::take(&mut self.filling);
            self.handed += batch.len() as u64;
            self.busy = true;
            let fut = inf
                .send(Batch(batch))
                .into_actor(self)
                .map(|res, act, ctx| {
                    act.busy = false;
                    act.last_activity = Instant::now();
                    act.level();
                    match res {
                        Ok(Ok(_)) => act.pump(ctx),
                        Ok(Err(e)) => act.fail(ctx, e),
                        Err(e) => act.fail(ctx, format!("the inferencer is gone: {e}")),
                    }
                });
            // Spawned, not awaited: writes keep queuing meanwhile.
            ctx.spawn(fut);
        } else if self.ended {
            self.finishing = true;
            let fut = inf.send(Finish).into_actor(self).map(|res, act, _| {
                let r = res.unwrap_or_else(|e| Err(format!("the inferencer is gone: {e}")));
                act.supervisor.do_send(Finished(r));
            });
            ctx.spawn(fut);
        }
    }

    /// Tells the throttler the pressure: bytes captured and not yet
    /// inferred, those still waiting for room in the budget included.
    fn level(&self) {
        self.throttler.do_send(Level {
            bytes: self.stats.queued_bytes.load(Ordering::Relaxed),
        });
    }

    fn fail(&mut self, ctx: &mut Context<Self>, why: String) {
        tracing::error!("inference failed: {why}");
        self.finishing = true;
        self.filling.clear();
        self.supervisor.do_send(Finished(Err(why)));
        ctx.stop();
    }
}

impl Actor for Queuer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(IDLE_TICK / 5, |act, _| {
            if act.busy || act.finishing || !act.filling.is_empty() {
                return;
            }
            if act.last_activity.elapsed() >= IDLE_TICK {
                act.last_activity = Instant::now();
                if let Some(inf) = &act.inferencer {
                    inf.do_send(Tick);
                }
            }
        });
    }
}

impl Handler<Captured> for Queuer {
    type Result = ();

    fn handle(&mut self, Captured(mut q): Captured, ctx: &mut Context<Self>) {
        q.drop_data = self.dropping.load(Ordering::Relaxed);
        self.filling.push(q);
        self.last_activity = Instant::now();
        self.level();
        self.pump(ctx);
    }
}

impl Handler<Start> for Queuer {
    type Result = ();

    fn handle(&mut self, Start(inf): Start, ctx: &mut Context<Self>) {
        self.inferencer = Some(inf);
        self.pump(ctx);
    }
}

impl Handler<SourceEnded> for Queuer {
    type Result = ();

    fn handle(&mut self, _: SourceEnded, ctx: &mut Context<Self>) {
        self.ended = true;
        if self.inferencer.is_none() {
            // Nothing was ever followed (the source failed before).
            self.finishing = true;
            self.supervisor.do_send(Finished(Ok(())));
            return;
        }
        self.pump(ctx);
    }
}

/// The capture side of a VM: counts each request of `rx`, tells
/// `throttler` the new level, takes the request into the budget (waiting
/// while it is spent) and sends it to `queuer`, until `rx` ends. (The end
/// of the source goes to the queuer through the supervisor, after the
/// source's `Ready`, so that the queuer never ends before inference has
/// started.)
pub async fn forward(
    mut rx: mpsc::Receiver<DiskWrite>,
    queuer: Addr<Queuer>,
    throttler: Recipient<Level>,
    budget: Budget,
    stats: Arc<VmStats>,
) {
    while let Some(w) = rx.recv().await {
        stats.writes.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(w.len, Ordering::Relaxed);
        // Counted as queued while it waits for room: that is the pressure,
        // and the throttler hears of it before the write enters the queue.
        let bytes = stats
            .queued_bytes
            .fetch_add(w.data.len() as u64, Ordering::Relaxed)
            + w.data.len() as u64;
        throttler.do_send(Level { bytes });
        let permit = budget.take(w.data.len()).await;
        queuer.do_send(Captured(Queued {
            arrived: Instant::now(),
            write: w,
            drop_data: false,
            permit,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_waits_until_inferred_writes_give_their_bytes_back() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let b = Budget::new(100 * 1024);
            let first = b.take(60 * 1024).await;
            assert_eq!(b.used(), 60 * 1024);
            let second = tokio::time::timeout(Duration::from_millis(50), b.take(60 * 1024)).await;
            assert!(second.is_err(), "over the budget: waits");
            drop(first);
            let second = b.take(60 * 1024).await;
            assert!(second.is_some());
            assert_eq!(b.used(), 60 * 1024);
            drop(second);
            // A write larger than the budget takes all of it; an empty one
            // still takes one unit.
            let all = b.take(1 << 30).await;
            assert_eq!(b.used(), 100 * 1024);
            drop(all);
            let one = b.take(0).await;
            assert_eq!(b.used(), 1024);
            drop(one);
        });
    }
}
