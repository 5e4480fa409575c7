//! # gammaray-core
//!
//! The file-system-agnostic heart of gammaray, which watches virtual machines
//! from the outside by following the writes they make to their disks.
//!
//! This crate holds what every other part agrees on:
//!
//! - [`device`]: positioned reads from disk images ([`BlockDevice`]);
//! - [`partition`]: MBR (with extended/logical partitions) and GPT tables;
//! - [`write`]: one guest request to its disk ([`DiskWrite`]);
//! - [`model`]: normalized file records and the directory tree ([`FsModel`]);
//! - [`blockmap`]: which block belongs to which file or structure;
//! - [`event`]: file events ([`FileEvent`]) and their JSON shape;
//! - [`infer`]: the [`Inference`] trait that follows a partition's writes;
//! - [`fs`]: the [`FileSystem`] trait that `gammaray-ext4` and
//!   `gammaray-ntfs` implement;
//! - [`listing`]: the state listing (one JSON object per name);
//! - [`overlay`]: a read-only disk with writes held in memory over it
//!   ([`OverlayDevice`]);
//! - [`index`]: the on-disk index (gzip stream of BSON documents);
//! - [`lazy`]: the lazy-load policy's scratch store of per-file metadata.
//!
//! Everything read from a disk is untrusted: parsers check every length and
//! offset and return [`Error::Corrupt`] naming the structure and its byte
//! offset instead of panicking.
//!
//! ```
//! use gammaray_core::blockmap::{BlockMap, Owner};
//! let mut map = BlockMap::new();
//! map.push(100, 8, Owner::FileData { file: 12, logical: 0 });
//! map.finish();
//! assert_eq!(map.owner(103), Some(Owner::FileData { file: 12, logical: 3 }));
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod blockmap;
pub mod content;
pub mod device;
pub mod error;
pub mod event;
pub mod fs;
pub mod index;
pub mod infer;
pub mod lazy;
pub mod listing;
pub mod model;
pub mod name;
pub mod overlay;
pub mod partition;
pub mod varint;
pub mod write;

pub use blockmap::{BlockMap, Owner, Run};
pub use device::{BlockDevice, FileDevice, PatchedDevice, SliceDevice};
pub use error::{Error, Result};
pub use event::{EventKind, FileEvent, LostReason};
pub use fs::{Crawl, FileSystem, NoProgress, Progress};
pub use infer::{Counter, InferConfig, Inference};
pub use model::{Entry, FileId, FileRecord, FileType, FsModel, Timestamp, Tree};
pub use overlay::{OverlayDevice, OverlayStats};
pub use write::{DiskWrite, WriteFlags};
