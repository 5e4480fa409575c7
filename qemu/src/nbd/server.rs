//! The NBD server: fixed-newstyle handshake and the transmission phase with
//! simple replies.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::export::{in_range, invalid, Export, OpError};
use super::proto::*;

/// Largest write or read payload accepted (32 MiB, the size the NBD spec
/// says every server should handle; advertised as the maximum payload).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option request accepted during the handshake. Option payloads
/// are export names (at most 4096 bytes by the spec) and info lists.
pub const MAX_OPTION_LEN: u32 = 16 << 10;
/// Most options one client may send before it is disconnected.
pub const MAX_OPTIONS: u32 = 256;
/// Most connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time a client has to finish the handshake, so that idle connections
/// cannot hold the [`MAX_CONNECTIONS`] slots.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Preferred block size advertised.
const PREFERRED_BLOCK: u32 = 4096;
/// Minimum block size advertised (the exports handle smaller requests, but
/// QEMU then aligns to sectors itself).
const MIN_BLOCK: u32 = 512;

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NbdError {
    /// The socket failed.
    #[error("NBD I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol; the connection was dropped.
    #[error("NBD protocol violation: {0}")]
    Protocol(String),
}

/// How a connection ended when it ended cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEnd {
    /// The client sent `NBD_OPT_ABORT` during the handshake.
    Aborted,
    /// The client sent `NBD_CMD_DISC`.
    Disconnected,
    /// The client closed the socket between requests.
    Closed,
    /// The server was told to shut down.
    Shutdown,
}

/// When [`NbdServer::serve`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeUntil {
    /// When the shutdown signal fires, or when every client that connected
    /// has gone (after at least one completed the handshake and entered
    /// transmission).
    LastClientGone,
    /// Only when the shutdown signal fires.
    Shutdown,
}

/// What to listen on.
#[derive(Debug)]
pub enum Listener {
    /// A unix socket.
    Unix(UnixListener),
    /// A TCP socket (use loopback addresses: there is no authentication).
    Tcp(TcpListener),
}

impl Listener {
    /// Binds a unix socket at `path` (removing a stale socket file first).
    pub fn bind_unix(path: &Path) -> std::io::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(path)?;
            }
        }
        Ok(Listener::Unix(UnixListener::bind(path)?))
    }
}

/// An NBD server exporting one [`Export`] under one name.
#[derive(Debug, Clone)]
pub struct NbdServer {
    export: Arc<Export>,
    name: Arc<str>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl NbdServer {
    /// A server for `export`, known to clients as `name` (QEMU's
    /// `nbd+unix:///?socket=…` asks for the empty name).
    pub fn new(export: Arc<Export>, name: &str) -> Self {
        NbdServer {
            export,
            name: name.into(),
        }
    }

    /// The export.
    pub fn export(&self) -> &Arc<Export> {
        &self.export
    }

    /// Accepts and serves clients until `until` says so. Returns how many
    /// clients entered transmission.
    pub async fn serve(
        &self,
        listener: Listener,
        until: ServeUntil,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<u64> {
        let mut tasks: JoinSet<(bool, Result<ConnEnd, NbdError>)> = JoinSet::new();
        let mut served = 0u64;
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                }
                accepted = accept(&listener) => {
                    let stream = match accepted {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!("NBD accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    if tasks.len() >= MAX_CONNECTIONS {
                        tracing::warn!("NBD: more than {MAX_CONNECTIONS} clients; closing the new one");
                        continue;
                    }
                    let server = self.clone();
                    let sd = shutdown.clone();
                    tasks.spawn(async move { stream.run(server, sd).await });
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    match joined {
                        Ok((entered, res)) => {
                            if entered { served += 1; }
                            match res {
                                Ok(end) => tracing::debug!("NBD client ended: {end:?}"),
                                Err(e) => tracing::warn!("NBD client dropped: {e}"),
                            }
                            if until == ServeUntil::LastClientGone && served > 0 && tasks.is_empty() {
                                break;
                            }
                        }
                        Err(e) => tracing::error!("NBD connection task failed: {e}"),
                    }
                }
            }
        }
        // Let running connections see the shutdown and finish their
        // current request.
        while let Some(joined) = tasks.join_next().await {
            if let Ok((entered, _)) = joined {
                if entered {
                    served += 1;
                }
            }
        }
        Ok(served)
    }

    /// Serves one client on an already-connected stream (used by tests and
    /// by `serve`). The `bool` says whether it entered transmission.
    pub async fn handle<S>(
        &self,
        stream: S,
        shutdown: watch::Receiver<bool>,
    ) -> (bool, Result<ConnEnd, NbdError>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (r, w) = tokio::io::split(stream);
        let mut conn = Conn {
            r: BufReader::with_capacity(256 << 10, r),
            w: BufWriter::with_capacity(256 << 10, w),
            server: self,
        };
        let res = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.handshake()).await;
        match res {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return (false, Ok(ConnEnd::Aborted)),
            Ok(Err(e)) => return (false, Err(e)),
            Err(_) => {
                return (
                    false,
                    Err(proto(format!(
                        "handshake not finished within {HANDSHAKE_TIMEOUT:?}"
                    ))),
                )
            }
        }
        let res = conn.transmission(shutdown).await;
        let _ = conn.w.shutdown().await;
        (true, res)
    }
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Accepted {
    async fn run(
        self,
        server: NbdServer,
        sd: watch::Receiver<bool>,
    ) -> (bool, Result<ConnEnd, NbdError>) {
        match self {
            Accepted::Unix(s) => server.handle(s, sd).await,
            Accepted::Tcp(s) => {
                let _ = s.set_nodelay(true);
                server.handle(s, sd).await
            }
        }
    }
}

async fn accept(l: &Listener) -> std::io::Result<Accepted> {
    match l {
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
    }
}

struct Conn<'a, R, W> {
    r: BufReader<R>,
    w: BufWriter<W>,
    server: &'a NbdServer,
}

fn proto(msg: impl Into<String>) -> NbdError {
    NbdError::Protocol(msg.into())
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<'_, R, W> {
    fn tflags(&self) -> u16 {
        TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_SEND_TRIM
            | TFLAG_SEND_WRITE_ZEROES
    }

    async fn opt_reply(&mut self, opt: u32, kind: u32, data: &[u8]) -> Result<(), NbdError> {
        self.w.write_u64(OPT_REPLY_MAGIC).await?;
        self.w.write_u32(opt).await?;
        self.w.write_u32(kind).await?;
        self.w.write_u32(data.len() as u32).await?;
        self.w.write_all(data).await?;
        self.w.flush().await?;
        Ok(())
    }

    /// Returns Ok(true) when the client entered transmission.
    async fn handshake(&mut self) -> Result<bool, NbdError> {
        self.w.write_u64(NBDMAGIC).await?;
        self.w.write_u64(IHAVEOPT).await?;
        self.w
            .write_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
            .await?;
        self.w.flush().await?;
        let cflags = self.r.read_u32().await?;
        if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            return Err(proto(format!("unknown client flags {cflags:#x}")));
        }
        if cflags & FLAG_C_FIXED_NEWSTYLE == 0 {
            return Err(proto("client does not speak fixed newstyle"));
        }
        let no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;
        for _ in 0..MAX_OPTIONS {
            let magic = self.r.read_u64().await?;
            if magic != IHAVEOPT {
                return Err(proto(format!("bad option magic {magic:#x}")));
            }
            let opt = self.r.read_u32().await?;
            let len = self.r.read_u32().await?;
            if len > MAX_OPTION_LEN {
                return Err(proto(format!(
                    "option {opt} of {len} bytes exceeds {MAX_OPTION_LEN}"
                )));
            }
            let mut data = vec![0u8; len as usize];
            self.r.read_exact(&mut data).await?;
            match opt {
                OPT_EXPORT_NAME => {
                    if data != self.server.name.as_bytes() {
                        // This option cannot fail: the spec says disconnect.
                        return Err(proto(format!(
                            "NBD_OPT_EXPORT_NAME for unknown export {:?}",
                            String::from_utf8_lossy(&data)
                        )));
                    }
                    self.w.write_u64(self.server.export.size()).await?;
                    self.w.write_u16(self.tflags()).await?;
                    if !no_zeroes {
                        self.w.write_all(&[0u8; 124]).await?;
                    }
                    self.w.flush().await?;
                    return Ok(true);
                }
                OPT_ABORT => {
                    let _ = self.opt_reply(opt, REP_ACK, &[]).await;
                    return Ok(false);
                }
                OPT_LIST => {
                    if !data.is_empty() {
                        self.opt_reply(opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")
                            .await?;
                        continue;
                    }
                    let name = self.server.name.clone();
                    let mut rep = Vec::with_capacity(4 + name.len());
                    rep.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    rep.extend_from_slice(name.as_bytes());
                    self.opt_reply(opt, REP_SERVER, &rep).await?;
                    self.opt_reply(opt, REP_ACK, &[]).await?;
                }
                OPT_INFO | OPT_GO => {
                    if self.info_or_go(opt, &data).await? && opt == OPT_GO {
                        return Ok(true);
                    }
                }
                _ => {
                    // NBD_OPT_STRUCTURED_REPLY, NBD_OPT_STARTTLS, meta
                    // contexts, extended headers and anything unknown.
                    tracing::debug!("NBD option {opt} refused (unsupported)");
                    self.opt_reply(opt, REP_ERR_UNSUP, b"not supported by gammaray")
                        .await?;
                }
            }
        }
        Err(proto(format!("more than {MAX_OPTIONS} options")))
    }

    /// Answers `NBD_OPT_INFO`/`NBD_OPT_GO`; Ok(true) when it succeeded.
    async fn info_or_go(&mut self, opt: u32, data: &[u8]) -> Result<bool, NbdError> {
        let parsed = (|| {
            let nlen = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
            let name = data.get(4..4usize.checked_add(nlen)?)?;
            let rest = &data[4 + nlen..];
            let n = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
            let reqs = rest.get(2..)?;
            if reqs.len() != 2 * n {
                return None;
            }
            Some(name.to_vec())
        })();
        let Some(name) = parsed else {
            self.opt_reply(opt, REP_ERR_INVALID, b"malformed info request")
                .await?;
            return Ok(false);
        };
        if name != self.server.name.as_bytes() {
            self.opt_reply(opt, REP_ERR_UNKNOWN, b"no such export")
                .await?;
            return Ok(false);
        }
        let mut info = Vec::with_capacity(12);
        info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        info.extend_from_slice(&self.server.export.size().to_be_bytes());
        info.extend_from_slice(&self.tflags().to_be_bytes());
        self.opt_reply(opt, REP_INFO, &info).await?;
        let mut bs = Vec::with_capacity(14);
        bs.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        bs.extend_from_slice(&MIN_BLOCK.to_be_bytes());
        bs.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
        bs.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
        self.opt_reply(opt, REP_INFO, &bs).await?;
        self.opt_reply(opt, REP_ACK, &[]).await?;
        Ok(true)
    }

    async fn reply(&mut self, cookie: u64, err: u32, data: &[u8]) -> Result<(), NbdError> {
        self.w.write_u32(SIMPLE_REPLY_MAGIC).await?;
        self.w.write_u32(err).await?;
        self.w.write_u64(cookie).await?;
        if err == 0 {
            self.w.write_all(data).await?;
        }
        self.w.flush().await?;
        Ok(())
    }

    async fn transmission(
        &mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<ConnEnd, NbdError> {
        let export = self.server.export.clone();
        let size = export.size();
        loop {
            let mut hdr = [0u8; 28];
            // Wait for the next request or the shutdown signal; a partial
            // header is dropped with the connection on shutdown.
            tokio::select! {
                biased;
                _ = wait_true(&mut shutdown) => return Ok(ConnEnd::Shutdown),
                res = read_header(&mut self.r, &mut hdr) => {
                    if !res? { return Ok(ConnEnd::Closed); }
                }
            }
            let magic = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            if magic != REQUEST_MAGIC {
                return Err(proto(format!("bad request magic {magic:#x}")));
            }
            let flags = u16::from_be_bytes([hdr[4], hdr[5]]);
            let kind = u16::from_be_bytes([hdr[6], hdr[7]]);
            let mut c = [0u8; 8];
            c.copy_from_slice(&hdr[8..16]);
            let cookie = u64::from_be_bytes(c);
            c.copy_from_slice(&hdr[16..24]);
            let offset = u64::from_be_bytes(c);
            let len = u32::from_be_bytes([hdr[24], hdr[25], hdr[26], hdr[27]]);
            let ts = now_ns();
            let fua = flags & CMD_FLAG_FUA != 0;
            let result: Result<Vec<u8>, OpError> = match kind {
                CMD_WRITE => {
                    if len > MAX_PAYLOAD {
                        return Err(proto(format!(
                            "write of {len} bytes exceeds the {MAX_PAYLOAD}-byte maximum payload"
                        )));
                    }
                    let mut buf = BytesMut::zeroed(len as usize);
                    self.r.read_exact(&mut buf).await?;
                    if flags & !CMD_FLAG_FUA != 0 {
                        Err(invalid(format!("write flags {flags:#x}")))
                    } else if !in_range(offset, len.into(), size) {
                        Err(OpError {
                            code: ENOSPC,
                            detail: format!("write {offset}+{len} beyond {size}"),
                        })
                    } else {
                        export
                            .write(ts, offset, buf.freeze(), fua)
                            .await
                            .map(|_| Vec::new())
                    }
                }
                CMD_READ => {
                    if flags != 0 {
                        Err(invalid(format!("read flags {flags:#x}")))
                    } else if len > MAX_PAYLOAD {
                        Err(invalid(format!(
                            "read of {len} bytes exceeds {MAX_PAYLOAD}"
                        )))
                    } else if !in_range(offset, len.into(), size) {
                        Err(invalid(format!("read {offset}+{len} beyond {size}")))
                    } else {
                        export.read(offset, len).await
                    }
                }
                CMD_WRITE_ZEROES => {
                    if flags & !(CMD_FLAG_FUA | CMD_FLAG_NO_HOLE) != 0 {
                        Err(invalid(format!("write-zeroes flags {flags:#x}")))
                    } else if !in_range(offset, len.into(), size) {
                        Err(OpError {
                            code: ENOSPC,
                            detail: format!("write-zeroes {offset}+{len} beyond {size}"),
                        })
                    } else {
                        export
                            .write_zeroes(ts, offset, len.into(), fua)
                            .await
                            .map(|_| Vec::new())
                    }
                }
                CMD_TRIM => {
                    if flags & !CMD_FLAG_FUA != 0 {
                        Err(invalid(format!("trim flags {flags:#x}")))
                    } else if !in_range(offset, len.into(), size) {
                        Err(invalid(format!("trim {offset}+{len} beyond {size}")))
                    } else {
                        export
                            .trim(ts, offset, len.into())
                            .await
                            .map(|_| Vec::new())
                    }
                }
                CMD_FLUSH => {
                    if flags != 0 {
                        Err(invalid(format!("flush flags {flags:#x}")))
                    } else {
                        export.flush(ts).await.map(|_| Vec::new())
                    }
                }
                CMD_DISC => {
                    self.w.flush().await?;
                    return Ok(ConnEnd::Disconnected);
                }
                other => Err(invalid(format!("unknown command {other}"))),
            };
            match result {
                Ok(data) => self.reply(cookie, 0, &data).await?,
                Err(e) => {
                    tracing::warn!(
                        "NBD request {kind} at {offset}+{len} failed: {} (error {})",
                        e.detail,
                        e.code
                    );
                    self.reply(cookie, e.code, &[]).await?;
                }
            }
        }
    }
}

/// Reads a request header; Ok(false) on a clean EOF before its first byte.
async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    hdr: &mut [u8; 28],
) -> Result<bool, NbdError> {
    let mut got = 0;
    while got < hdr.len() {
        let n = r.read(&mut hdr[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(proto(format!(
                "connection closed inside a request header ({got} of 28 bytes)"
            )));
        }
        got += n;
    }
    Ok(true)
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow() {
            return;
        }
        if rx.changed().await.is_err() {
            // Sender gone: never fires.
            std::future::pending::<()>().await;
        }
    }
}
