//! Write inference: turning a partition's stream of writes into file events
//! while keeping the [`FsModel`] equal to the guest's own view.
//!
//! A file-system crate implements [`Inference`]; the engine feeds it every
//! write that falls inside the partition (offsets made relative to the
//! partition start, see [`DiskWrite::clip`]) together with a view of the
//! partition *as it was before that write*.

use std::borrow::Cow;

use crate::device::BlockDevice;
use crate::event::FileEvent;
use crate::model::FsModel;
use crate::write::DiskWrite;

/// Limits and timings of inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InferConfig {
    /// How long data written to blocks that no committed metadata owns yet
    /// is held, waiting for its owner (nanoseconds of write time).
    pub unknown_ttl_ns: u64,
    /// At most this many bytes of such data are held; the oldest is evicted
    /// first.
    pub unknown_budget_bytes: u64,
    /// A `modify` event carries at most this many bytes; larger ranges are
    /// split into several events.
    pub max_event_data: usize,
    /// The lazy-load policy: keep at most this many bytes of file records
    /// and names resident, the rest in a scratch store in the host's
    /// temporary directory, loaded when a write needs them. `None` (the
    /// default) keeps the whole model resident.
    pub lazy_budget_bytes: Option<u64>,
}

impl Default for InferConfig {
    fn default() -> Self {
        InferConfig {
            unknown_ttl_ns: 30_000_000_000,
            unknown_budget_bytes: 64 << 20,
            max_event_data: 1 << 20,
            lazy_budget_bytes: None,
        }
    }
}

/// One named counter of an inference (anomalies, held bytes, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Prometheus-friendly name, e.g. `journal_txns_applied`.
    pub name: &'static str,
    /// Current value.
    pub value: u64,
}

/// Follows one file system's writes.
pub trait Inference: Send {
    /// Handles one write (or flush, discard, write-zeroes). `before` reads
    /// the partition as it was before `w`; `w.offset` is relative to the
    /// partition. Events are appended to `out`. Never fails: bad guest data
    /// becomes a counter and a `tracing` warning.
    fn write(&mut self, before: &dyn BlockDevice, w: &DiskWrite, out: &mut Vec<FileEvent>);

    /// Lets time pass to `now_ns` (expires held writes). `before` is the
    /// current partition contents.
    fn tick(&mut self, before: &dyn BlockDevice, now_ns: u64, out: &mut Vec<FileEvent>);

    /// Turns the data-drop policy on or off: while on, data writes are not
    /// inspected (nor held) but reported as `lost` ranges (reason
    /// `data_drop`), and metadata keeps being followed.
    fn set_data_drop(&mut self, on: bool) {
        let _ = on;
    }

    /// The stream paused or ended (end of a trace, a source stopping):
    /// applies what waits for a flush that may not come. `dev` is the
    /// current partition contents.
    fn settle(&mut self, dev: &dyn BlockDevice, out: &mut Vec<FileEvent>) {
        let _ = (dev, out);
    }

    /// The last consistent model (as of the last applied commit). Borrowed
    /// when it is all resident; under the lazy-load policy it is assembled
    /// from the resident part and the scratch store (slow: for state
    /// listings, not for every write).
    fn model(&self) -> Cow<'_, FsModel>;

    /// Counters, for metrics and for the replay summary.
    fn counters(&self) -> Vec<Counter>;
}
