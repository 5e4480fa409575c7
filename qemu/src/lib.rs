//! # gammaray-qemu
//!
//! How a guest's disk writes get out of a stock (unpatched) QEMU and into
//! gammaray. Three ways, all of which deliver each request as a
//! [`DiskWrite`](gammaray_core::write::DiskWrite) in guest byte space:
//!
//! - [`nbd`]: an NBD server (fixed newstyle, simple replies) with three
//!   roles: serve a raw image to QEMU and report every write
//!   ([`nbd::ImageExport`]); act as the write-only target of an active
//!   `blockdev-mirror` ([`nbd::SinkExport`]); or be the `log` device of a
//!   `blklogwrites` node and decode the dm-log-writes stream it receives
//!   ([`nbd::LogExport`]). Requests go to the consumer through a bounded
//!   channel, so a slow consumer slows the guest instead of growing a buffer.
//! - [`qmp`]: a QMP client, and [`attach`]: attaching to a running VM over
//!   QMP (insert a `blklogwrites` filter, or start an active mirror) and
//!   detaching so that the VM's block graph is as it was.
//! - [`dmlog`]: the dm-log-writes trace format of Linux's `dm-log-writes`
//!   target and QEMU's `blklogwrites` driver: a streaming reader (with a tail
//!   mode), a writer, and the assembler that decodes a log as it is written.
//!
//! ```
//! use gammaray_qemu::dmlog::{Super, MAGIC};
//! let sector = Super { nr_entries: 3, sector_size: 512 }.to_sector();
//! assert_eq!(u64::from_le_bytes(sector[..8].try_into().unwrap()), MAGIC);
//! assert_eq!(Super::from_bytes(&sector).unwrap().nr_entries, 3);
//! ```
//!
//! Everything a guest or a peer sends is untrusted: lengths are capped by
//! named constants before anything is allocated, and protocol violations end
//! the connection with an error instead of a panic.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod attach;
pub mod dmlog;
pub mod nbd;
pub mod qmp;
pub mod snapshot;
