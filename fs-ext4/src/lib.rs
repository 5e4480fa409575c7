//! # gammaray-ext4
//!
//! ext2, ext3 and ext4 for gammaray: the on-disk structures and the
//! crawler that indexes a file system into a [`gammaray_core::FsModel`]
//! (every file's metadata, the directory tree, and which block belongs to
//! which file or structure).
//!
//! One module per on-disk structure, each with a `from_bytes` constructor
//! that checks every length, offset and count once and never panics:
//! [`superblock`], [`group_desc`], [`inode`], [`extent`], [`indirect`],
//! [`dir`], [`xattr`], [`journal`] (jbd2); [`crawl`] walks them (through
//! [`recovery`], the journal's committed transactions replayed in memory,
//! when the journal is not checkpointed), and
//! [`infer`] follows a running guest's writes to keep the crawl's model
//! current and to turn the writes into file events.
//!
//! Guest disks are hostile input. No parser panics or loops without end on
//! any bytes, allocations sized from disk data are bounded by the device
//! size, and damage to a single structure becomes a warning
//! ([`gammaray_core::Error::Corrupt`] with the structure's byte offset)
//! instead of a failed crawl. Only an unusable superblock or descriptor
//! table fails the crawl. The superblock and group descriptor checksums
//! are verified (`metadata_csum`, `uninit_bg`): a mismatch is a warning,
//! and a group whose descriptor fails is read whole instead of trusting
//! its "unused inodes" hint. Inode, extent and directory checksums are not
//! verified; the parsers do not depend on them.
//!
//! ```
//! use gammaray_core::{FileSystem, NoProgress};
//! use gammaray_ext4::Ext4;
//! // Not an ext file system: probe says no, crawl says why.
//! let disk = vec![0u8; 4096];
//! assert!(!Ext4.probe(&disk));
//! assert!(Ext4.crawl(&disk, &NoProgress).is_err());
//! ```
//!
//! Speed: the crawler reads each metadata block once, in disk order, with
//! large sequential reads (see [`crawl`]); parsing inodes allocates only
//! for the records it keeps.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod bytes;
pub mod crawl;
pub mod csum;
pub mod dir;
pub mod extent;
pub mod fuzzing;
pub mod group_desc;
pub mod indirect;
pub mod infer;
pub mod inode;
pub mod journal;
pub mod recovery;
pub mod superblock;
pub mod xattr;

use gammaray_core::infer::{InferConfig, Inference};
use gammaray_core::{BlockDevice, Crawl, FileSystem, FsModel, Progress, Result};

/// The ext2/3/4 driver: a stateless [`FileSystem`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Ext4;

impl FileSystem for Ext4 {
    fn name(&self) -> &'static str {
        "ext4"
    }

    fn probe(&self, dev: &dyn BlockDevice) -> bool {
        crawl::read_superblock(dev).is_ok()
    }

    fn crawl(&self, dev: &dyn BlockDevice, progress: &dyn Progress) -> Result<Crawl> {
        crawl::crawl(dev, progress)
    }

    fn infer(
        &self,
        dev: &dyn BlockDevice,
        model: FsModel,
        cfg: &InferConfig,
    ) -> Result<Box<dyn Inference>> {
        Ok(Box::new(infer::Ext4Inference::new(dev, model, cfg)?))
    }
}
