//! A hand-rolled NBD client that follows, then breaks, the protocol. The
//! server must answer per the spec (NetworkBlockDevice/nbd doc/proto.md),
//! drop clients that break it, and keep serving others.

use std::sync::Arc;
use std::time::Duration;

use gammaray_core::write::DiskWrite;
use gammaray_qemu::nbd::proto::*;
use gammaray_qemu::nbd::{Export, Listener, NbdServer, ServeUntil, SinkExport, MAX_PAYLOAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

const SIZE: u64 = 1 << 20;

struct Fixture {
    _dir: tempfile::TempDir,
    sock: std::path::PathBuf,
    rx: mpsc::Receiver<DiskWrite>,
    sd: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<u64>>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let (tx, rx) = mpsc::channel(64);
    let server = NbdServer::new(Arc::new(Export::Sink(SinkExport::new(SIZE, tx))), "");
    let l = Listener::bind_unix(&sock).unwrap();
    let (sd, sd_rx) = watch::channel(false);
    let task = tokio::spawn(async move { server.serve(l, ServeUntil::Shutdown, sd_rx).await });
    Fixture {
        _dir: dir,
        sock,
        rx,
        sd,
        task,
    }
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("server answered in time")
}

/// Connects and does the client side of the greeting.
async fn greet(sock: &std::path::Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).await.unwrap();
    assert_eq!(timed(s.read_u64()).await.unwrap(), NBDMAGIC);
    assert_eq!(s.read_u64().await.unwrap(), IHAVEOPT);
    assert_eq!(
        s.read_u16().await.unwrap(),
        FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
    );
    s.write_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
        .await
        .unwrap();
    s
}

async fn send_opt(s: &mut UnixStream, opt: u32, data: &[u8]) {
    s.write_u64(IHAVEOPT).await.unwrap();
    s.write_u32(opt).await.unwrap();
    s.write_u32(data.len() as u32).await.unwrap();
    s.write_all(data).await.unwrap();
}

/// Reads one option reply: (option, type, data).
async fn opt_reply(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
    assert_eq!(timed(s.read_u64()).await.unwrap(), OPT_REPLY_MAGIC);
    let opt = s.read_u32().await.unwrap();
    let kind = s.read_u32().await.unwrap();
    let len = s.read_u32().await.unwrap();
    let mut d = vec![0; len as usize];
    s.read_exact(&mut d).await.unwrap();
    (opt, kind, d)
}

fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// Handshake with NBD_OPT_GO; returns the stream in transmission.
async fn go(sock: &std::path::Path) -> UnixStream {
    let mut s = greet(sock).await;
    send_opt(&mut s, OPT_GO, &go_data("", &[INFO_BLOCK_SIZE])).await;
    let (_, kind, d) = opt_reply(&mut s).await;
    assert_eq!(kind, REP_INFO);
    assert_eq!(u16::from_be_bytes([d[0], d[1]]), INFO_EXPORT);
    assert_eq!(u64::from_be_bytes(d[2..10].try_into().unwrap()), SIZE);
    let (_, kind, d) = opt_reply(&mut s).await;
    assert_eq!(kind, REP_INFO);
    assert_eq!(u16::from_be_bytes([d[0], d[1]]), INFO_BLOCK_SIZE);
    assert_eq!(
        u32::from_be_bytes(d[10..14].try_into().unwrap()),
        MAX_PAYLOAD
    );
    assert_eq!(opt_reply(&mut s).await.1, REP_ACK);
    s
}

async fn request(s: &mut UnixStream, flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) {
    s.write_u32(REQUEST_MAGIC).await.unwrap();
    s.write_u16(flags).await.unwrap();
    s.write_u16(kind).await.unwrap();
    s.write_u64(cookie).await.unwrap();
    s.write_u64(offset).await.unwrap();
    s.write_u32(len).await.unwrap();
}

/// Reads a simple reply header: (error, cookie).
async fn reply(s: &mut UnixStream) -> (u32, u64) {
    assert_eq!(timed(s.read_u32()).await.unwrap(), SIMPLE_REPLY_MAGIC);
    let err = s.read_u32().await.unwrap();
    let cookie = s.read_u64().await.unwrap();
    (err, cookie)
}

/// The server closed the connection (EOF or reset).
async fn closed(s: &mut UnixStream) {
    let mut b = [0u8; 64];
    loop {
        match timed(s.read(&mut b)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A client that works still works (the server did not crash).
async fn still_serving(f: &mut Fixture) {
    let mut s = go(&f.sock).await;
    request(&mut s, CMD_FLAG_FUA, CMD_WRITE, 99, 4096, 512).await;
    s.write_all(&[0x5a; 512]).await.unwrap();
    assert_eq!(reply(&mut s).await, (0, 99));
    request(&mut s, 0, CMD_DISC, 100, 0, 0).await;
    closed(&mut s).await;
    let w = timed(f.rx.recv()).await.unwrap();
    assert_eq!((w.offset, w.len), (4096, 512));
}

#[tokio::test]
async fn options_list_info_unsupported_and_abort() {
    let mut f = fixture().await;
    let mut s = greet(&f.sock).await;
    send_opt(&mut s, OPT_LIST, &[]).await;
    let (opt, kind, d) = opt_reply(&mut s).await;
    assert_eq!((opt, kind, d), (OPT_LIST, REP_SERVER, vec![0, 0, 0, 0]));
    assert_eq!(opt_reply(&mut s).await.1, REP_ACK);
    send_opt(&mut s, OPT_LIST, b"junk").await;
    assert_eq!(opt_reply(&mut s).await.1, REP_ERR_INVALID);
    send_opt(&mut s, OPT_STRUCTURED_REPLY, &[]).await;
    assert_eq!(
        opt_reply(&mut s).await,
        (
            OPT_STRUCTURED_REPLY,
            REP_ERR_UNSUP,
            b"not supported by gammaray".to_vec()
        )
    );
    send_opt(&mut s, 4242, b"whatever").await;
    assert_eq!(opt_reply(&mut s).await.1, REP_ERR_UNSUP);
    send_opt(&mut s, OPT_INFO, &go_data("nope", &[])).await;
    assert_eq!(opt_reply(&mut s).await.1, REP_ERR_UNKNOWN);
    // Malformed: says 2 info requests, carries 1.
    let mut bad = go_data("", &[INFO_BLOCK_SIZE]);
    bad[4..6].copy_from_slice(&2u16.to_be_bytes());
    send_opt(&mut s, OPT_INFO, &bad).await;
    assert_eq!(opt_reply(&mut s).await.1, REP_ERR_INVALID);
    send_opt(&mut s, OPT_INFO, &go_data("", &[])).await;
    assert_eq!(opt_reply(&mut s).await.1, REP_INFO);
    assert_eq!(opt_reply(&mut s).await.1, REP_INFO);
    assert_eq!(opt_reply(&mut s).await.1, REP_ACK);
    send_opt(&mut s, OPT_ABORT, &[]).await;
    assert_eq!(opt_reply(&mut s).await.1, REP_ACK);
    closed(&mut s).await;
    still_serving(&mut f).await;
    f.sd.send(true).unwrap();
    f.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn export_name_enters_transmission() {
    let mut f = fixture().await;
    let mut s = greet(&f.sock).await;
    send_opt(&mut s, OPT_EXPORT_NAME, b"").await;
    assert_eq!(timed(s.read_u64()).await.unwrap(), SIZE);
    let flags = s.read_u16().await.unwrap();
    assert_eq!(
        flags & (TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA),
        TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA
    );
    request(&mut s, 0, CMD_READ, 7, 0, 4096).await;
    assert_eq!(reply(&mut s).await, (0, 7));
    let mut d = vec![1u8; 4096];
    s.read_exact(&mut d).await.unwrap();
    assert!(d.iter().all(|&b| b == 0), "mirror target reads are zeroes");
    request(&mut s, 0, CMD_FLUSH, 8, 0, 0).await;
    assert_eq!(reply(&mut s).await, (0, 8));
    assert!(timed(f.rx.recv()).await.unwrap().is_flush());
    // Unknown export name on EXPORT_NAME: the server must hang up.
    let mut s2 = greet(&f.sock).await;
    send_opt(&mut s2, OPT_EXPORT_NAME, b"other").await;
    closed(&mut s2).await;
    still_serving(&mut f).await;
}

#[tokio::test]
async fn bad_magics_and_flags_disconnect() {
    let mut f = fixture().await;
    // Bad option magic.
    let mut s = greet(&f.sock).await;
    s.write_u64(0xdead_beef).await.unwrap();
    s.write_u64(0).await.unwrap();
    closed(&mut s).await;
    // Unknown client flags.
    let mut s = UnixStream::connect(&f.sock).await.unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).await.unwrap();
    s.write_u32(0x80).await.unwrap();
    closed(&mut s).await;
    // Option length beyond the limit: dropped without reading 4 GiB.
    let mut s = greet(&f.sock).await;
    s.write_u64(IHAVEOPT).await.unwrap();
    s.write_u32(OPT_GO).await.unwrap();
    s.write_u32(u32::MAX).await.unwrap();
    closed(&mut s).await;
    // Bad request magic in transmission.
    let mut s = go(&f.sock).await;
    s.write_all(&[0x11; 28]).await.unwrap();
    closed(&mut s).await;
    still_serving(&mut f).await;
}

#[tokio::test]
async fn oversized_unknown_and_out_of_range_requests() {
    let mut f = fixture().await;
    let mut s = go(&f.sock).await;
    // Unknown commands (BLOCK_STATUS without meta contexts, CACHE, 200): EINVAL.
    for (i, cmd) in [7u16, 5, 200].into_iter().enumerate() {
        request(&mut s, 0, cmd, i as u64, 0, 512).await;
        assert_eq!(reply(&mut s).await, (EINVAL, i as u64));
    }
    // Unknown flag on a known command.
    request(&mut s, 0x40, CMD_FLUSH, 10, 0, 0).await;
    assert_eq!(reply(&mut s).await, (EINVAL, 10));
    // A write with an unknown flag: payload consumed, EINVAL, stream still in sync.
    request(&mut s, 0x40, CMD_WRITE, 11, 0, 512).await;
    s.write_all(&[0; 512]).await.unwrap();
    assert_eq!(reply(&mut s).await, (EINVAL, 11));
    // Out of range.
    request(&mut s, 0, CMD_READ, 12, SIZE - 512, 1024).await;
    assert_eq!(reply(&mut s).await, (EINVAL, 12));
    request(&mut s, 0, CMD_WRITE, 13, u64::MAX - 100, 512).await;
    s.write_all(&[0; 512]).await.unwrap();
    assert_eq!(reply(&mut s).await, (ENOSPC, 13));
    // Read larger than the maximum payload: EINVAL, no data.
    request(&mut s, 0, CMD_READ, 14, 0, MAX_PAYLOAD + 1).await;
    assert_eq!(reply(&mut s).await, (EINVAL, 14));
    // A good request still works on this connection.
    request(&mut s, 0, CMD_WRITE_ZEROES, 15, 0, 4096).await;
    assert_eq!(reply(&mut s).await, (0, 15));
    // Write larger than the maximum payload: the payload cannot be
    // skipped safely, so the server hangs up.
    request(&mut s, 0, CMD_WRITE, 16, 0, u32::MAX).await;
    closed(&mut s).await;
    assert!(timed(f.rx.recv())
        .await
        .unwrap()
        .flags
        .contains(gammaray_core::write::WriteFlags::ZEROES));
    still_serving(&mut f).await;
}

#[tokio::test]
async fn disconnects_mid_request_and_mid_handshake() {
    let mut f = fixture().await;
    // Mid-handshake.
    let s = greet(&f.sock).await;
    drop(s);
    // Half a request header.
    let mut s = go(&f.sock).await;
    s.write_all(&REQUEST_MAGIC.to_be_bytes()).await.unwrap();
    s.write_all(&[0; 6]).await.unwrap();
    drop(s);
    // A write whose payload never fully arrives.
    let mut s = go(&f.sock).await;
    request(&mut s, 0, CMD_WRITE, 1, 0, 65536).await;
    s.write_all(&[7; 1000]).await.unwrap();
    drop(s);
    // Garbage instead of the client flags.
    let mut s = UnixStream::connect(&f.sock).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    closed(&mut s).await;
    still_serving(&mut f).await;
    // Nothing half-received was reported.
    assert!(f.rx.try_recv().is_err());
}
