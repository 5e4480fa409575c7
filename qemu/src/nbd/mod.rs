//! An NBD server for QEMU (fixed newstyle handshake, simple replies), in
//! three roles: serving a raw image ([`ImageExport`]), acting as the
//! write-only target of an active mirror ([`SinkExport`]), and acting as the
//! log device of a `blklogwrites` node ([`LogExport`]).
//!
//! Requests are served one at a time per connection, in the order they
//! arrive, so the reported [`DiskWrite`](gammaray_core::write::DiskWrite)s
//! are in the order they were applied. Payloads are capped at
//! [`MAX_PAYLOAD`]; a client that breaks the protocol is disconnected.

pub mod export;
pub mod proto;
mod server;

pub use export::{
    Export, ImageExport, LogExport, OpError, SinkExport, WriteGuard, WriteSender, LOG_DEVICE_SIZE,
};
pub use server::{
    ConnEnd, Listener, NbdError, NbdServer, ServeUntil, MAX_CONNECTIONS, MAX_OPTIONS,
    MAX_OPTION_LEN, MAX_PAYLOAD,
};
