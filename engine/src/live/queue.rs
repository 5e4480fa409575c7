//! The queuer: a VM's captured writes waiting for inference.
//!
//! - Bounded in bytes: a write is queued only while the bytes outstanding
//!   (queued, or handed over and not yet inferred) stay within the limit
//!   (`policy.queue_bytes`). Past it, [`WriteQueue::push`] waits, the
//!   capture side stops reading requests, and the guest's I/O waits: memory
//!   stays bounded and nothing is lost. A single write larger than the limit
//!   is let through once nothing else is outstanding.
//! - Double-buffered: the inferencer takes the whole queue at once by
//!   swapping its drained batch for the filling one, so the capture side
//!   never waits for inference to finish a batch, and no write is copied.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gammaray_core::DiskWrite;

/// A write and when it arrived.
pub type Queued = (Instant, DiskWrite);

/// What [`WriteQueue::take`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// The batch holds writes.
    Writes,
    /// Nothing arrived within the wait.
    Idle,
    /// The queue is closed and empty: the source has ended.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    filling: Vec<Queued>,
    /// Bytes queued or handed over and not yet [`WriteQueue::done`].
    outstanding: u64,
    closed: bool,
    /// The most bytes ever outstanding.
    peak: u64,
}

/// One VM's write queue; shared by the capture side (producer) and the
/// inferencer (consumer).
#[derive(Debug)]
pub struct WriteQueue {
    state: Mutex<State>,
    /// Signalled when writes are queued or the queue closes.
    ready: Condvar,
    /// Signalled when outstanding bytes go down or the queue closes.
    space: Condvar,
    limit: u64,
}

impl WriteQueue {
    /// An empty queue holding at most `limit_bytes` outstanding.
    pub fn new(limit_bytes: u64) -> Self {
        WriteQueue {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            space: Condvar::new(),
            limit: limit_bytes.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `w`, waiting while the queue is over its byte limit. False
    /// if the queue was closed (the write is dropped: nobody will infer it).
    pub fn push(&self, arrived: Instant, w: DiskWrite) -> bool {
        let n = w.data.len() as u64;
        let mut st = self.lock();
        while !st.closed && st.outstanding > 0 && st.outstanding.saturating_add(n) > self.limit {
            st = self.space.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.closed {
            return false;
        }
        st.outstanding += n;
        st.peak = st.peak.max(st.outstanding);
        st.filling.push((arrived, w));
        drop(st);
        self.ready.notify_one();
        true
    }

    /// No more writes will come: the consumer drains what is queued and
    /// then sees [`Taken::Closed`]; a waiting producer gives up.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
        self.space.notify_all();
    }

    /// Swaps `batch` (which must be empty) with everything queued, waiting
    /// up to `wait` for a first write.
    pub fn take(&self, batch: &mut Vec<Queued>, wait: Duration) -> Taken {
        debug_assert!(batch.is_empty());
        let mut st = self.lock();
        if st.filling.is_empty() && !st.closed {
            st = self
                .ready
                .wait_timeout_while(st, wait, |s| s.filling.is_empty() && !s.closed)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        if !st.filling.is_empty() {
            std::mem::swap(&mut st.filling, batch);
            Taken::Writes
        } else if st.closed {
            Taken::Closed
        } else {
            Taken::Idle
        }
    }

    /// `bytes` of data from taken writes have been inferred.
    pub fn done(&self, bytes: u64) {
        let mut st = self.lock();
        st.outstanding = st.outstanding.saturating_sub(bytes);
        drop(st);
        self.space.notify_all();
    }

    /// Bytes outstanding now.
    #[cfg(test)]
    pub fn outstanding(&self) -> u64 {
        self.lock().outstanding
    }

    /// The most bytes that were ever outstanding.
    pub fn peak(&self) -> u64 {
        self.lock().peak
    }
}

/// The capture side of a VM: takes requests from the source's channel
/// into `queue`, counting them in `stats`, until the channel closes (then
/// closes the queue). Runs on its own thread, because [`WriteQueue::push`]
/// blocks while the queue is full.
pub fn spawn_queuer(
    vm: &str,
    mut rx: tokio::sync::mpsc::Receiver<DiskWrite>,
    queue: std::sync::Arc<WriteQueue>,
    stats: std::sync::Arc<super::pipeline::VmStats>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    std::thread::Builder::new()
        .name(format!("queuer-{vm}"))
        .spawn(move || {
            while let Some(w) = rx.blocking_recv() {
                stats.writes.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(w.len, Ordering::Relaxed);
                stats
                    .queued_bytes
                    .fetch_add(w.data.len() as u64, Ordering::Relaxed);
                if !queue.push(Instant::now(), w) {
                    break;
                }
            }
            queue.close();
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gammaray_core::WriteFlags;
    use std::sync::Arc;

    fn w(seq: u64, n: usize) -> DiskWrite {
        DiskWrite {
            seq,
            ts_ns: 0,
            offset: 0,
            len: n as u64,
            data: vec![0u8; n].into(),
            flags: WriteFlags::empty(),
        }
    }

    #[test]
    fn batches_swap_in_order_and_close_drains() {
        let q = WriteQueue::new(1 << 20);
        for i in 0..3 {
            assert!(q.push(Instant::now(), w(i, 10)));
        }
        let mut b = Vec::new();
        assert_eq!(q.take(&mut b, Duration::ZERO), Taken::Writes);
        assert_eq!(b.iter().map(|x| x.1.seq).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(q.outstanding(), 30, "handed over is still outstanding");
        q.done(30);
        b.clear();
        assert_eq!(q.take(&mut b, Duration::from_millis(1)), Taken::Idle);
        q.push(Instant::now(), w(3, 1));
        q.close();
        assert!(!q.push(Instant::now(), w(4, 1)), "closed queues refuse");
        assert_eq!(q.take(&mut b, Duration::ZERO), Taken::Writes);
        b.clear();
        assert_eq!(q.take(&mut b, Duration::ZERO), Taken::Closed);
    }

    #[test]
    fn producer_waits_at_the_byte_limit_until_inference_catches_up() {
        let q = Arc::new(WriteQueue::new(100));
        assert!(q.push(Instant::now(), w(0, 60)));
        let (q2, done) = (
            q.clone(),
            Arc::new(std::sync::atomic::AtomicBool::new(false)),
        );
        let d2 = done.clone();
        let producer = std::thread::spawn(move || {
            let ok = q2.push(Instant::now(), w(1, 60));
            d2.store(true, std::sync::atomic::Ordering::SeqCst);
            ok
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !done.load(std::sync::atomic::Ordering::SeqCst),
            "over the limit: waits"
        );
        let mut b = Vec::new();
        assert_eq!(q.take(&mut b, Duration::ZERO), Taken::Writes);
        assert!(
            !done.load(std::sync::atomic::Ordering::SeqCst),
            "taken is still outstanding"
        );
        q.done(60);
        assert!(producer.join().unwrap());
        assert_eq!(q.outstanding(), 60);
        assert_eq!(q.peak(), 60);
        // One write above the limit passes when nothing else is queued.
        let big = WriteQueue::new(10);
        assert!(big.push(Instant::now(), w(0, 1000)));
    }
}
