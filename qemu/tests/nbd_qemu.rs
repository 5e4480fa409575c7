//! The NBD server against QEMU's own NBD client (`qemu-io`, `qemu-img`), in
//! the image role and in the blklogwrites log-device role.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use gammaray_core::write::{DiskWrite, WriteFlags};
use gammaray_qemu::dmlog::{TraceReader, TraceWriter};
use gammaray_qemu::nbd::{Export, ImageExport, Listener, LogExport, NbdServer, ServeUntil};
use tokio::sync::{mpsc, watch};

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// Runs qemu-io with `args` then the `-c` commands; panics with its output on failure.
async fn qemu_io(args: Vec<String>, cmds: &[&str]) -> String {
    let mut all = args;
    for c in cmds {
        all.push("-c".into());
        all.push(c.to_string());
    }
    let out =
        tokio::task::spawn_blocking(move || Command::new("qemu-io").args(&all).output().unwrap())
            .await
            .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-io failed: {text}");
    assert!(!text.contains("Pattern verification failed"), "{text}");
    assert!(!text.contains("failed:"), "{text}");
    text
}

struct Served {
    rx: mpsc::Receiver<DiskWrite>,
    sd: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<u64>>,
}

fn serve(export: Export, listener: Listener, rx: mpsc::Receiver<DiskWrite>) -> Served {
    let server = NbdServer::new(Arc::new(export), "");
    let (sd, sd_rx) = watch::channel(false);
    let task =
        tokio::spawn(async move { server.serve(listener, ServeUntil::Shutdown, sd_rx).await });
    Served { rx, sd, task }
}

impl Served {
    async fn finish(mut self) -> Vec<DiskWrite> {
        self.sd.send(true).unwrap();
        self.task.await.unwrap().unwrap();
        let mut out = Vec::new();
        while let Ok(w) = self.rx.try_recv() {
            out.push(w);
        }
        out
    }
}

fn image(dir: &Path, size: u64) -> PathBuf {
    let p = dir.join("disk.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

fn image_export(path: &Path, tx: mpsc::Sender<DiskWrite>) -> Export {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    Export::Image(ImageExport::new(f, tx).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_reads_and_writes_served_image_over_unix_socket() {
    if !have("qemu-io") {
        eprintln!("skipped: qemu-io not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 4 << 20);
    let sock = dir.path().join("nbd.sock");
    let (tx, rx) = mpsc::channel(1024);
    let s = serve(
        image_export(&img, tx),
        Listener::bind_unix(&sock).unwrap(),
        rx,
    );
    let url = format!("nbd+unix:///?socket={}", sock.display());
    qemu_io(
        vec!["-f".into(), "raw".into(), url.clone()],
        &[
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            "flush",
            "write -P 0xcd 1M 4k",
            "write -z 2M 128k",
            "discard 3M 64k",
        ],
    )
    .await;
    // A second client sees what the first wrote.
    qemu_io(
        vec!["-f".into(), "raw".into(), url],
        &[
            "read -P 0xab 0 64k",
            "read -P 0xcd 1M 4k",
            "read -P 0 2M 128k",
        ],
    )
    .await;
    let writes = s.finish().await;
    // The image holds the bytes (checked without gammaray: read the file).
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[..65536].iter().all(|&b| b == 0xab));
    assert!(bytes[1 << 20..(1 << 20) + 4096].iter().all(|&b| b == 0xcd));
    assert!(bytes[65536..1 << 20].iter().all(|&b| b == 0));
    // Every request was reported, in order, with increasing seq.
    let data: Vec<_> = writes
        .iter()
        .filter(|w| w.has_data())
        .map(|w| (w.offset, w.len))
        .collect();
    assert_eq!(data, vec![(0, 65536), (1 << 20, 4096)]);
    assert!(writes.iter().any(|w| w.is_flush()));
    assert!(writes.iter().any(|w| w.flags.contains(WriteFlags::ZEROES)
        && w.offset == 2 << 20
        && w.len == 128 << 10));
    assert!(writes
        .iter()
        .any(|w| w.flags.contains(WriteFlags::DISCARD) && w.offset == 3 << 20));
    assert!(writes.windows(2).all(|p| p[1].seq == p[0].seq + 1));
    assert!(writes.iter().all(|w| w.ts_ns > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_over_loopback_tcp_and_unaligned_write_is_widened() {
    if !have("qemu-io") {
        eprintln!("skipped: qemu-io not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 1 << 20);
    std::fs::write(&img, vec![0x33u8; 1 << 20]).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel(1024);
    let s = serve(image_export(&img, tx), Listener::Tcp(l), rx);
    qemu_io(
        vec![
            "-f".into(),
            "raw".into(),
            format!("nbd://127.0.0.1:{port}/"),
        ],
        &[
            "write -P 0x44 1000 100",
            "read -P 0x44 1000 100",
            "read -P 0x33 0 1000",
        ],
    )
    .await;
    let writes = s.finish().await;
    let w: Vec<_> = writes.iter().filter(|w| w.has_data()).collect();
    assert_eq!(w.len(), 1);
    // Reported at 512-byte granularity with the image's bytes around it.
    assert_eq!((w[0].offset, w[0].len), (512, 1024));
    let mut expect = vec![0x33u8; 1024];
    expect[1000 - 512..1100 - 512].fill(0x44);
    assert_eq!(&w[0].data[..], &expect[..]);
}

/// QEMU's own blklogwrites driver writes its log to our log-device export;
/// the decoded requests must be exactly what qemu-io wrote, flushes in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_blklogwrites_log_stream_decodes_to_the_requests() {
    if !have("qemu-io") {
        eprintln!("skipped: qemu-io not installed");
        return;
    }
    for ss in [512u32, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), 8 << 20);
        let sock = dir.path().join("log.sock");
        let (tx, rx) = mpsc::channel(1024);
        let s = serve(
            Export::Log(LogExport::new(ss, tx).unwrap()),
            Listener::bind_unix(&sock).unwrap(),
            rx,
        );
        let opts = format!(
            "driver=blklogwrites,file.driver=file,file.filename={},log.driver=nbd,log.server.type=unix,log.server.path={},log-sector-size={ss}",
            img.display(),
            sock.display()
        );
        // Writeback cache: no FUA emulation (writethrough would add a flush
        // after write-zeroes).
        qemu_io(
            vec!["-t".into(), "writeback".into(), "--image-opts".into(), opts],
            &[
                "write -P 0x61 0 64k",
                "flush",
                "write -P 0x62 1M 8k",
                "write -z 2M 1M",
                "flush",
                "write -P 0x63 4096 4096",
            ],
        )
        .await;
        let writes = s.finish().await;
        let summary: Vec<_> = writes
            .iter()
            .map(|w| (w.offset, w.len, w.flags, w.data.first().copied()))
            .collect();
        let f = WriteFlags::FLUSH;
        let z = WriteFlags::ZEROES;
        let e = WriteFlags::empty();
        // qemu-io flushes once more when it closes the image.
        assert_eq!(
            summary,
            vec![
                (0, 65536, e, Some(0x61)),
                (0, 0, f, None),
                (1 << 20, 8192, e, Some(0x62)),
                (2 << 20, 1 << 20, z, None),
                (0, 0, f, None),
                (4096, 4096, e, Some(0x63)),
                (0, 0, f, None),
            ],
            "log sector size {ss}"
        );
        assert!(writes[0].data.iter().all(|&b| b == 0x61));
        assert_eq!(
            writes.iter().map(|w| w.seq).collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>()
        );
    }
}

/// A trace QEMU's blklogwrites writes to a file reads back with our reader;
/// a trace our writer writes is accepted by QEMU (`log-append=on` reads its
/// super and walks its entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_interoperate_with_qemu_blklogwrites() {
    if !have("qemu-io") {
        eprintln!("skipped: qemu-io not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 8 << 20);
    let log = dir.path().join("qemu.log");
    std::fs::File::create(&log).unwrap();
    let opts = format!(
        "driver=blklogwrites,file.driver=file,file.filename={},log.driver=file,log.filename={},log-sector-size=4096",
        img.display(),
        log.display()
    );
    qemu_io(
        vec!["--image-opts".into(), opts],
        &["write -P 0x71 8k 12k", "flush", "discard 1M 64k", "flush"],
    )
    .await;
    let entries: Vec<_> = TraceReader::open(&log)
        .unwrap()
        .map(|e| e.unwrap().write)
        .collect();
    let s: Vec<_> = entries.iter().map(|w| (w.offset, w.len, w.flags)).collect();
    assert_eq!(
        s,
        vec![
            (8192, 12288, WriteFlags::empty()),
            (0, 0, WriteFlags::FLUSH),
            (1 << 20, 65536, WriteFlags::DISCARD),
            (0, 0, WriteFlags::FLUSH),
        ]
    );
    assert!(entries[0].data.iter().all(|&b| b == 0x71));

    // Our trace, appended to by QEMU.
    let ours = dir.path().join("ours.log");
    let mut w = TraceWriter::create(&ours, 512).unwrap();
    w.append(&DiskWrite::write(0, 0, vec![1u8; 1024].into()))
        .unwrap();
    w.append(&DiskWrite::flush(1)).unwrap();
    w.finish().unwrap();
    let opts = format!(
        "driver=blklogwrites,file.driver=file,file.filename={},log.driver=file,log.filename={},log-append=on",
        img.display(),
        ours.display()
    );
    qemu_io(
        vec!["--image-opts".into(), opts],
        &["write -P 0x72 512 512", "flush"],
    )
    .await;
    let entries: Vec<_> = TraceReader::open(&ours)
        .unwrap()
        .map(|e| e.unwrap().write)
        .collect();
    let s: Vec<_> = entries.iter().map(|w| (w.offset, w.len, w.flags)).collect();
    assert_eq!(
        s,
        vec![
            (0, 1024, WriteFlags::empty()),
            (0, 0, WriteFlags::FLUSH),
            (512, 512, WriteFlags::empty()),
            (0, 0, WriteFlags::FLUSH),
        ]
    );
}
