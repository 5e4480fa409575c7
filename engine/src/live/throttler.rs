//! The throttler actor: watches one VM's queue level, write rate and
//! inference lag, and switches the data-drop policy (the paper's section
//! VI-A) on above the high water mark of queued bytes and off again below
//! the low one. The switch is shared with the [`Queuer`](super::queuer),
//! which tags each arriving write with it; the inferencer then skips the
//! data of tagged writes to non-metadata blocks and reports their ranges
//! as `lost`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::pipeline::{DropPolicy, Throttle, VmStats};

/// How often rates are computed.
const RATE_EVERY: Duration = Duration::from_secs(1);

/// The queue's level changed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Level {
    /// Bytes captured and not yet inferred.
    pub bytes: u64,
}

/// One VM's throttler.
pub struct Throttler {
    vm: Arc<str>,
    throttle: Throttle,
    switch: Arc<AtomicBool>,
    stats: Arc<VmStats>,
    last: (Instant, u64),
}

impl Throttler {
    /// Drives `switch` by `policy`.
    pub fn new(vm: &str, policy: DropPolicy, switch: Arc<AtomicBool>, stats: Arc<VmStats>) -> Self {
        Throttler {
            vm: vm.into(),
            throttle: Throttle::new(policy),
            switch,
            stats,
            last: (Instant::now(), 0),
        }
    }
}

impl Actor for Throttler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(RATE_EVERY, |act, _| {
            let now = Instant::now();
            let writes = act.stats.writes.load(Ordering::Relaxed);
            let secs = now.duration_since(act.last.0).as_secs_f64();
            if secs > 0.0 {
                let rate = (writes.saturating_sub(act.last.1) as f64 / secs) as u64;
                act.stats.write_rate.store(rate, Ordering::Relaxed);
            }
            act.last = (now, writes);
        });
    }
}

impl Handler<Level> for Throttler {
    type Result = ();

    fn handle(&mut self, level: Level, _: &mut Context<Self>) {
        let Some(on) = self.throttle.update(level.bytes) else {
            return;
        };
        self.switch.store(on, Ordering::Relaxed);
        let lag_ms = self.stats.lag_ns.load(Ordering::Relaxed) as f64 / 1e6;
        let rate = self.stats.write_rate.load(Ordering::Relaxed);
        if on {
            self.stats.drop_episodes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(vm = %self.vm, queued = level.bytes, lag_ms, rate, "queue above its high water mark: data drop on");
        } else {
            tracing::info!(vm = %self.vm, queued = level.bytes, lag_ms, rate, "queue below its low water mark: data drop off");
        }
    }
}
