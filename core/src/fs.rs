//! The trait each file-system crate implements.

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::infer::{InferConfig, Inference};
use crate::model::FsModel;

/// Receives progress from a long crawl (the CLI shows it as a bar).
pub trait Progress: Sync {
    /// The total amount of work, in the crawler's own units (e.g. inodes).
    fn set_total(&self, total: u64);
    /// `n` more units done.
    fn inc(&self, n: u64);
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _total: u64) {}
    fn inc(&self, _n: u64) {}
}

/// What a crawl produced: the model, plus one warning per bad structure that
/// was skipped (a hostile image yields a partial index, not a failure).
#[derive(Debug)]
pub struct Crawl {
    /// The indexed file system.
    pub model: FsModel,
    /// Structures that were corrupt and skipped.
    pub warnings: Vec<Error>,
}

/// A file system gammaray can index (and, later, follow writes to).
///
/// Implementations are stateless drivers; the state lives in [`FsModel`].
pub trait FileSystem: Send + Sync {
    /// Short name, e.g. "ext4".
    fn name(&self) -> &'static str;

    /// A cheap check (reads a superblock or boot sector) of whether `dev`
    /// holds this file system. Never fails: unreadable means "no".
    fn probe(&self, dev: &dyn BlockDevice) -> bool;

    /// Indexes the whole file system on `dev` (a partition's window).
    /// Errors only when nothing usable can be read (e.g. a bad superblock);
    /// damage to single structures becomes warnings.
    fn crawl(&self, dev: &dyn BlockDevice, progress: &dyn Progress) -> Result<Crawl>;

    /// Starts following writes to `dev` from the state in `model` (a crawl
    /// of `dev`, or a loaded index of it). File systems without write
    /// inference return [`Error::Unsupported`].
    fn infer(
        &self,
        dev: &dyn BlockDevice,
        model: FsModel,
        cfg: &InferConfig,
    ) -> Result<Box<dyn Inference>> {
        let _ = (dev, model, cfg);
        Err(Error::Unsupported {
            structure: "file system",
            detail: format!("{}: write inference is not implemented", self.name()),
        })
    }
}
