//! What an NBD export does with requests: the three roles.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gammaray_core::write::{DiskWrite, WriteFlags};
use tokio::sync::mpsc;

use super::proto::{EINVAL, EIO};
use crate::dmlog::LogAssembler;

/// Granularity to which [`ImageExport`] widens unaligned writes before
/// reporting them (the smallest sector any consumer or trace uses).
pub const REPORT_SECTOR: u64 = 512;
/// Size of the zero buffer used to apply write-zeroes to an image.
const ZERO_CHUNK: usize = 1 << 20;
/// Size [`LogExport`] advertises for the log device: 1 PiB, so that an
/// append-only log never runs out of room.
pub const LOG_DEVICE_SIZE: u64 = 1 << 50;

/// An NBD error code (`NBD_E*`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// The `NBD_E*` value sent to the client.
    pub code: u32,
    /// A description for the log.
    pub detail: String,
}

impl OpError {
    fn io(detail: impl Into<String>) -> Self {
        OpError {
            code: EIO,
            detail: detail.into(),
        }
    }
}

/// Where an export hands on the requests it sees: a bounded channel. When
/// the consumer is slow, `send` waits, the NBD request is not answered, and
/// the guest's I/O waits too; nothing is buffered beyond the channel.
pub type WriteSender = mpsc::Sender<DiskWrite>;

async fn deliver(tx: &WriteSender, w: DiskWrite) -> Result<(), OpError> {
    tx.send(w)
        .await
        .map_err(|_| OpError::io("the consumer of captured writes has gone away"))
}

/// Bookkeeping around the writes an [`ImageExport`] applies to its image:
/// the engine keeps what the image held before each write until inference
/// has caught up with it (inference must read the disk as it was before
/// the write it is looking at).
pub trait WriteGuard: Send + Sync + std::fmt::Debug {
    /// Runs `apply`, which overwrites `[offset, offset+len)` of `file`,
    /// with whatever must happen around it (it runs on a blocking thread).
    /// Returns a token for [`WriteGuard::reported`].
    fn around_write(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        apply: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> std::io::Result<u64>;

    /// The write of `token` is reported as the requests up to sequence
    /// number `last_seq` (called before they are sent).
    fn reported(&self, token: u64, last_seq: u64);
}

/// Role (a): serves a raw image. Reads come from the file, writes go to it,
/// and every write, write-zeroes, trim and flush is reported.
///
/// Unaligned writes are reported widened to [`REPORT_SECTOR`] boundaries,
/// with the bytes around them read back from the image after the write.
/// Trims are reported but not applied (as with QEMU's `discard=ignore`):
/// the data stays, which NBD allows.
#[derive(Debug)]
pub struct ImageExport {
    file: Arc<File>,
    size: u64,
    tx: WriteSender,
    seq: AtomicU64,
    guard: Option<Arc<dyn WriteGuard>>,
}

impl ImageExport {
    /// Serves `file` (opened read-write); requests go to `tx`.
    pub fn new(file: File, tx: WriteSender) -> std::io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(ImageExport {
            file: Arc::new(file),
            size,
            tx,
            seq: AtomicU64::new(0),
            guard: None,
        })
    }

    /// Like [`ImageExport::new`], with `guard` around every write applied
    /// to the image.
    pub fn with_guard(
        file: File,
        tx: WriteSender,
        guard: Arc<dyn WriteGuard>,
    ) -> std::io::Result<Self> {
        let mut e = Self::new(file, tx)?;
        e.guard = Some(guard);
        Ok(e)
    }

    /// Applies a write to the image with `f`, under the guard if any.
    async fn apply(
        &self,
        offset: u64,
        len: u64,
        f: impl Fn(&File) -> std::io::Result<()> + Send + 'static,
    ) -> Result<Option<u64>, OpError> {
        let guard = self.guard.clone();
        self.blocking(move |file| match &guard {
            Some(g) => g.around_write(file, offset, len, &mut || f(file)).map(Some),
            None => f(file).map(|()| None),
        })
        .await
    }

    /// Sends `ws`, telling the guard first which requests report `token`.
    async fn deliver_all(&self, token: Option<u64>, ws: Vec<DiskWrite>) -> Result<(), OpError> {
        if let (Some(g), Some(t), Some(last)) = (&self.guard, token, ws.last()) {
            g.reported(t, last.seq);
        }
        for w in ws {
            deliver(&self.tx, w).await?;
        }
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&File) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, OpError> {
        let file = self.file.clone();
        match tokio::task::spawn_blocking(move || f(&file)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(OpError::io(format!("image I/O: {e}"))),
            Err(e) => Err(OpError::io(format!("image I/O task: {e}"))),
        }
    }

    fn next(&self, ts_ns: u64, offset: u64, len: u64, data: Bytes, flags: WriteFlags) -> DiskWrite {
        stamp(&self.seq, ts_ns, offset, len, data, flags)
    }

    /// Reads the widened range around `[offset, offset+len)` back from the image.
    async fn widened(&self, offset: u64, len: u64) -> Result<(u64, Bytes), OpError> {
        let start = offset - offset % REPORT_SECTOR;
        let end = (offset + len).div_ceil(REPORT_SECTOR) * REPORT_SECTOR;
        let end = end.min(self.size.max(offset + len));
        let n = (end - start) as usize;
        let data = self
            .blocking(move |f| {
                let mut buf = vec![0u8; n];
                f.read_exact_at(&mut buf, start)?;
                Ok(buf)
            })
            .await?;
        Ok((start, Bytes::from(data)))
    }

    fn aligned(offset: u64, len: u64) -> bool {
        offset % REPORT_SECTOR == 0 && len % REPORT_SECTOR == 0
    }
}

/// A `DiskWrite` with the next sequence number of `seq`.
fn stamp(
    seq: &AtomicU64,
    ts_ns: u64,
    offset: u64,
    len: u64,
    data: Bytes,
    flags: WriteFlags,
) -> DiskWrite {
    DiskWrite {
        seq: seq.fetch_add(1, Ordering::Relaxed),
        ts_ns,
        offset,
        len,
        data,
        flags,
    }
}

/// Role (b): the write-only target of an active `blockdev-mirror`. Holds no
/// data: reads return zeroes (a mirror with `sync: none` never reads its
/// target), every write, write-zeroes, trim and flush is reported.
#[derive(Debug)]
pub struct SinkExport {
    size: u64,
    tx: WriteSender,
    seq: AtomicU64,
    reads: AtomicU64,
}

impl SinkExport {
    /// A sink of `size` bytes (the mirrored drive's size: QEMU refuses a
    /// mirror target of another size).
    pub fn new(size: u64, tx: WriteSender) -> Self {
        SinkExport {
            size,
            tx,
            seq: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        }
    }

    /// How many reads clients made (expected: none).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn next(&self, ts_ns: u64, offset: u64, len: u64, data: Bytes, flags: WriteFlags) -> DiskWrite {
        stamp(&self.seq, ts_ns, offset, len, data, flags)
    }
}

/// Role (c): the `log` device of a QEMU `blklogwrites` node. The
/// dm-log-writes stream written to it is decoded as it arrives
/// ([`LogAssembler`]) and each logged request is reported in log order, so
/// the guest's flushes stay in place. Reads of sector 0 return the last
/// super written (or an empty one), other reads zeroes.
#[derive(Debug)]
pub struct LogExport {
    assembler: Mutex<LogAssembler>,
    tx: WriteSender,
    broken: AtomicBool,
}

impl LogExport {
    /// A log device for a `blklogwrites` node with this `log-sector-size`.
    pub fn new(sector_size: u32, tx: WriteSender) -> Result<Self, crate::dmlog::TraceError> {
        Ok(LogExport {
            assembler: Mutex::new(LogAssembler::new(sector_size)?),
            tx,
            broken: AtomicBool::new(false),
        })
    }

    /// Counters of the decoder.
    pub fn stats(&self) -> crate::dmlog::AssemblerStats {
        self.lock().stats()
    }

    /// True when every entry received so far has been decoded.
    pub fn is_idle(&self) -> bool {
        self.lock().is_idle()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogAssembler> {
        // A poisoned lock only means another request panicked mid-update;
        // the assembler's state is still memory-safe to read.
        self.assembler.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn feed(
        &self,
        ts_ns: u64,
        f: impl FnOnce(&mut LogAssembler) -> Result<Vec<DiskWrite>, crate::dmlog::TraceError>,
    ) -> Result<(), OpError> {
        if self.broken.load(Ordering::Acquire) {
            return Err(OpError::io("log stream is broken (see earlier error)"));
        }
        let done = {
            let mut a = self.lock();
            f(&mut a)
        };
        match done {
            Ok(writes) => {
                for mut w in writes {
                    w.ts_ns = ts_ns;
                    deliver(&self.tx, w).await?;
                }
                Ok(())
            }
            Err(e) => {
                self.broken.store(true, Ordering::Release);
                tracing::error!("blklogwrites log stream: {e}");
                Err(OpError::io(e.to_string()))
            }
        }
    }
}

/// An NBD export in one of its three roles.
#[derive(Debug)]
pub enum Export {
    /// Serve a raw image (role a).
    Image(ImageExport),
    /// Write-only mirror target (role b).
    Sink(SinkExport),
    /// Log device of a `blklogwrites` node (role c).
    Log(LogExport),
}

impl Export {
    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Export::Image(e) => e.size,
            Export::Sink(e) => e.size,
            Export::Log(_) => LOG_DEVICE_SIZE,
        }
    }

    /// Reads `len` bytes at `offset` (range already checked).
    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, OpError> {
        match self {
            Export::Image(e) => {
                e.blocking(move |f| {
                    let mut buf = vec![0u8; len as usize];
                    f.read_exact_at(&mut buf, offset)?;
                    Ok(buf)
                })
                .await
            }
            Export::Sink(e) => {
                e.reads.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("mirror target read at {offset}+{len}: returning zeroes");
                Ok(vec![0u8; len as usize])
            }
            Export::Log(e) => Ok(e.lock().read(offset, len as usize)),
        }
    }

    /// Writes `data` at `offset` (range already checked).
    pub async fn write(
        &self,
        ts_ns: u64,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), OpError> {
        let flags = if fua {
            WriteFlags::FUA
        } else {
            WriteFlags::empty()
        };
        match self {
            Export::Image(e) => {
                let d = data.clone();
                let len = data.len() as u64;
                let token = e
                    .apply(offset, len, move |f| {
                        f.write_all_at(&d, offset)?;
                        if fua {
                            f.sync_data()?;
                        }
                        Ok(())
                    })
                    .await?;
                let w = if ImageExport::aligned(offset, len) {
                    e.next(ts_ns, offset, len, data, flags)
                } else {
                    let (start, wide) = e.widened(offset, len).await?;
                    e.next(ts_ns, start, wide.len() as u64, wide, flags)
                };
                e.deliver_all(token, vec![w]).await
            }
            Export::Sink(e) => {
                let w = e.next(ts_ns, offset, data.len() as u64, data, flags);
                deliver(&e.tx, w).await
            }
            Export::Log(e) => e.feed(ts_ns, |a| a.write(offset, data)).await,
        }
    }

    /// Writes `len` zero bytes at `offset` (range already checked).
    pub async fn write_zeroes(
        &self,
        ts_ns: u64,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Result<(), OpError> {
        let mut flags = WriteFlags::ZEROES;
        if fua {
            flags |= WriteFlags::FUA;
        }
        match self {
            Export::Image(e) => {
                let token = e
                    .apply(offset, len, move |f| {
                        let zero = vec![0u8; ZERO_CHUNK.min(len as usize)];
                        let mut at = offset;
                        let end = offset + len;
                        while at < end {
                            let n = (end - at).min(zero.len() as u64) as usize;
                            f.write_all_at(&zero[..n], at)?;
                            at += n as u64;
                        }
                        if fua {
                            f.sync_data()?;
                        }
                        Ok(())
                    })
                    .await?;
                if ImageExport::aligned(offset, len) {
                    let w = e.next(ts_ns, offset, len, Bytes::new(), flags);
                    return e.deliver_all(token, vec![w]).await;
                }
                // Report the partial sectors at either end as writes of what
                // the image now holds, and the aligned middle as zeroes.
                let first_full = offset.div_ceil(REPORT_SECTOR) * REPORT_SECTOR;
                let end = offset + len;
                let last_full = end - end % REPORT_SECTOR;
                let data_flags = flags - WriteFlags::ZEROES;
                let mut ws = Vec::new();
                if first_full >= last_full {
                    let (start, wide) = e.widened(offset, len).await?;
                    ws.push(e.next(ts_ns, start, wide.len() as u64, wide, data_flags));
                    return e.deliver_all(token, ws).await;
                }
                if first_full > offset {
                    let (start, wide) = e.widened(offset, first_full - offset).await?;
                    ws.push(e.next(ts_ns, start, wide.len() as u64, wide, data_flags));
                }
                ws.push(e.next(
                    ts_ns,
                    first_full,
                    last_full - first_full,
                    Bytes::new(),
                    flags,
                ));
                if end > last_full {
                    let (start, wide) = e.widened(last_full, end - last_full).await?;
                    ws.push(e.next(ts_ns, start, wide.len() as u64, wide, data_flags));
                }
                e.deliver_all(token, ws).await
            }
            Export::Sink(e) => {
                let w = e.next(ts_ns, offset, len, Bytes::new(), flags);
                deliver(&e.tx, w).await
            }
            Export::Log(e) => e.feed(ts_ns, |a| a.write_zeroes(offset, len)).await,
        }
    }

    /// Trims `len` bytes at `offset` (range already checked).
    pub async fn trim(&self, ts_ns: u64, offset: u64, len: u64) -> Result<(), OpError> {
        match self {
            Export::Image(e) => {
                // Report only whole sectors: a trim is advisory.
                let start = offset.div_ceil(REPORT_SECTOR) * REPORT_SECTOR;
                let end = (offset + len) - (offset + len) % REPORT_SECTOR;
                if end > start {
                    let w = e.next(ts_ns, start, end - start, Bytes::new(), WriteFlags::DISCARD);
                    deliver(&e.tx, w).await?;
                }
                Ok(())
            }
            Export::Sink(e) => {
                let w = e.next(ts_ns, offset, len, Bytes::new(), WriteFlags::DISCARD);
                deliver(&e.tx, w).await
            }
            Export::Log(_) => {
                tracing::debug!("trim of the log device at {offset}+{len} ignored");
                Ok(())
            }
        }
    }

    /// Flushes.
    pub async fn flush(&self, ts_ns: u64) -> Result<(), OpError> {
        match self {
            Export::Image(e) => {
                e.blocking(|f| f.sync_data()).await?;
                let w = e.next(ts_ns, 0, 0, Bytes::new(), WriteFlags::FLUSH);
                deliver(&e.tx, w).await
            }
            Export::Sink(e) => {
                let w = e.next(ts_ns, 0, 0, Bytes::new(), WriteFlags::FLUSH);
                deliver(&e.tx, w).await
            }
            // The guest's flushes are entries in the log stream itself.
            Export::Log(_) => Ok(()),
        }
    }
}

/// Checks that `[offset, offset+len)` lies within `size`.
pub(crate) fn in_range(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

/// `NBD_EINVAL` for a request that is malformed.
pub(crate) fn invalid(detail: impl Into<String>) -> OpError {
    OpError {
        code: EINVAL,
        detail: detail.into(),
    }
}
