//! Live attach and detach against a real QEMU (`qemu-system-x86_64 -M none`
//! with a `-drive`), driven over QMP. Guest I/O is issued through the
//! drive's BlockBackend with the HMP `qemu-io` command, which takes the same
//! path through the block graph as a guest device's requests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use gammaray_core::write::DiskWrite;
use gammaray_qemu::attach::{self, Via};
use gammaray_qemu::nbd::{Export, Listener, LogExport, NbdServer, ServeUntil, SinkExport};
use gammaray_qemu::qmp::Qmp;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

struct Vm {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        // SIGTERM to `timeout`, which passes it on to QEMU.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Vm {
    fn start() -> Option<Vm> {
        if Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: qemu-system-x86_64 not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let qmp = dir.path().join("qmp.sock");
        let child = Command::new("timeout")
            .args([
                "120",
                "qemu-system-x86_64",
                "-M",
                "none",
                "-nodefaults",
                "-display",
                "none",
                "-no-user-config",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-drive")
            .arg(format!(
                "if=none,id=drv0,file={},format=raw,node-name=disk0,file.node-name=disk0-file",
                img.display()
            ))
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if qmp.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Vm { child, dir })
    }

    fn qmp_path(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }

    fn stderr(&self) -> String {
        let out = std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default();
        out + &std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn image(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("disk.img")).unwrap()
    }
}

async fn hmp_io(qmp: &mut Qmp, cmd: &str) -> String {
    let r = qmp
        .execute(
            "human-monitor-command",
            json!({"command-line": format!("qemu-io drv0 \"{cmd}\"")}),
        )
        .await
        .unwrap();
    r.as_str().unwrap_or("").to_string()
}

/// The block graph by names (ids differ between queries).
async fn graph(qmp: &mut Qmp) -> BTreeSet<String> {
    let g = qmp
        .execute("x-debug-query-block-graph", Value::Null)
        .await
        .unwrap();
    let nodes = g["nodes"].as_array().unwrap().clone();
    let name = |id: &Value| {
        nodes
            .iter()
            .find(|n| &n["id"] == id)
            .map(|n| format!("{}:{}", n["type"], n["name"]))
            .unwrap()
    };
    let mut out: BTreeSet<String> = nodes
        .iter()
        .map(|n| format!("node {}:{}", n["type"], n["name"]))
        .collect();
    for e in g["edges"].as_array().unwrap() {
        out.insert(format!(
            "edge {} -{}-> {} perm {} shared {}",
            name(&e["parent"]),
            e["name"],
            name(&e["child"]),
            e["perm"],
            e["shared-perm"]
        ));
    }
    let jobs = qmp.execute("query-jobs", Value::Null).await.unwrap();
    out.insert(format!("jobs {jobs}"));
    out
}

struct Tap {
    rx: mpsc::Receiver<DiskWrite>,
    sd: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<u64>>,
    socket: PathBuf,
}

fn tap(dir: &Path, export: impl FnOnce(mpsc::Sender<DiskWrite>) -> Export) -> Tap {
    let socket = dir.join("tap.sock");
    let (tx, rx) = mpsc::channel(256);
    let server = NbdServer::new(Arc::new(export(tx)), "");
    let l = Listener::bind_unix(&socket).unwrap();
    let (sd, sd_rx) = watch::channel(false);
    let task = tokio::spawn(async move { server.serve(l, ServeUntil::Shutdown, sd_rx).await });
    Tap {
        rx,
        sd,
        task,
        socket,
    }
}

async fn attach_write_detach(via: Via) {
    let Some(vm) = Vm::start() else { return };
    let mut qmp = Qmp::connect(&vm.qmp_path(), Duration::from_secs(10))
        .await
        .unwrap();
    // A first write makes the drive take write permission, as a running
    // guest's drive has.
    hmp_io(&mut qmp, "write -P 0x11 16k 4k").await;
    let before = graph(&mut qmp).await;
    // The drive id resolves to the same node as the node name.
    let by_id = attach::inspect_drive(&mut qmp, "drv0").await.unwrap();
    let info = attach::inspect_drive(&mut qmp, "disk0").await.unwrap();
    assert_eq!(by_id, info);
    assert_eq!(info.file_child.as_deref(), Some("disk0-file"));
    assert_eq!(info.size, 16 << 20);
    let size = info.size;
    let t = tap(vm.dir.path(), |tx| match via {
        Via::Mirror => Export::Sink(SinkExport::new(size, tx)),
        Via::Blklogwrites => Export::Log(LogExport::new(512, tx).unwrap()),
    });
    let a = attach::attach(&mut qmp, info, via, &t.socket, "grtest", 512)
        .await
        .unwrap();
    assert_ne!(graph(&mut qmp).await, before);
    hmp_io(&mut qmp, "write -P 0x5a 0 4k").await;
    hmp_io(&mut qmp, "write -P 0x5b 1M 64k").await;
    hmp_io(&mut qmp, "flush").await;
    hmp_io(&mut qmp, "write -P 0x5c 8k 4k").await;
    a.detach(&mut qmp).await.unwrap();
    // Writes after detach are not seen.
    hmp_io(&mut qmp, "write -P 0x5d 12k 4k").await;
    assert_eq!(
        graph(&mut qmp).await,
        before,
        "detach restores the block graph"
    );
    t.sd.send(true).unwrap();
    t.task.await.unwrap().unwrap();
    let mut rx = t.rx;
    let mut got = Vec::new();
    while let Ok(w) = rx.try_recv() {
        got.push(w);
    }
    let data: Vec<_> = got
        .iter()
        .filter(|w| w.has_data())
        .map(|w| (w.offset, w.len, w.data[0]))
        .collect();
    assert_eq!(
        data,
        vec![(0, 4096, 0x5a), (1 << 20, 65536, 0x5b), (8192, 4096, 0x5c)],
        "{via:?}"
    );
    let kinds: Vec<_> = got.iter().map(|w| (w.offset, w.len, w.flags)).collect();
    match via {
        // blklogwrites logs the guest's flush in place.
        Via::Blklogwrites => assert!(got[2].is_flush(), "{kinds:?}"),
        // An active mirror does not forward the guest's flush in place
        // (QEMU flushes the target when the job starts and ends).
        Via::Mirror => assert!(
            !got.iter()
                .skip_while(|w| !w.has_data())
                .take(3)
                .any(|w| w.is_flush()),
            "{kinds:?}"
        ),
    }
    // The guest's writes reached its own disk too.
    let img = vm.image();
    assert!(img[..4096].iter().all(|&b| b == 0x5a));
    assert!(img[12288..16384].iter().all(|&b| b == 0x5d));
    qmp.execute("quit", Value::Null).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_attach_records_and_detach_restores_graph() {
    attach_write_detach(Via::Mirror).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blklogwrites_attach_records_flushes_and_detach_restores_graph() {
    attach_write_detach(Via::Blklogwrites).await;
}

/// What happens to guest writes when gammaray dies while attached: the
/// reason `mirror` is the default attach method. Returns QEMU's stderr (where
/// HMP qemu-io reports failed requests), the bytes at the second write, the
/// jobs, and how a later detach went.
async fn tap_dies(via: Via) -> (String, Vec<u8>, Value, Result<(), String>) {
    let vm = Vm::start().unwrap();
    let mut qmp = Qmp::connect(&vm.qmp_path(), Duration::from_secs(10))
        .await
        .unwrap();
    hmp_io(&mut qmp, "write -P 0x40 16k 4k").await;
    let orig = graph(&mut qmp).await;
    let info = attach::inspect_drive(&mut qmp, "disk0").await.unwrap();
    let size = info.size;
    let t = tap(vm.dir.path(), |tx| match via {
        Via::Mirror => Export::Sink(SinkExport::new(size, tx)),
        Via::Blklogwrites => Export::Log(LogExport::new(512, tx).unwrap()),
    });
    // A tag as `gammaray capture` makes it, with a pid that cannot exist.
    let tag = attach::tag_for_pid(u32::MAX);
    let a = attach::attach(&mut qmp, info, via, &t.socket, &tag, 512)
        .await
        .unwrap();
    hmp_io(&mut qmp, "write -P 0x41 0 4k").await;
    // gammaray dies: its sockets close.
    t.sd.send(true).unwrap();
    t.task.await.unwrap().unwrap();
    drop(t.rx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    hmp_io(&mut qmp, "write -P 0x42 4k 4k").await;
    // Give the mirror job time to notice its target is gone.
    let mut jobs = Value::Null;
    for _ in 0..50 {
        jobs = qmp.execute("query-jobs", Value::Null).await.unwrap();
        if jobs.to_string().contains("concluded") || jobs == json!([]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let detached = match via {
        // A later gammaray, which no longer has the Attachment, cleans up.
        Via::Mirror => {
            drop(a);
            let before = graph(&mut qmp).await;
            let removed = attach::cleanup_stale(&mut qmp, |pid| pid != u32::MAX)
                .await
                .unwrap();
            assert_eq!(removed.len(), 2, "{removed:?}");
            assert_ne!(orig, before);
            assert_eq!(graph(&mut qmp).await, orig, "cleanup restores the graph");
            Ok(())
        }
        Via::Blklogwrites => a.detach(&mut qmp).await.map_err(|e| e.to_string()),
    };
    let img = vm.image();
    let err = vm.stderr();
    eprintln!("{via:?} after the tap died: stderr {err:?}; jobs {jobs}; detach {detached:?}");
    (err, img[4096..8192].to_vec(), jobs, detached)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_gammaray_dies_mirror_spares_the_guest_blklogwrites_does_not() {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return;
    }
    let (err, data, jobs, detached) = tap_dies(Via::Mirror).await;
    assert!(!err.contains("failed"), "mirror: guest write failed: {err}");
    assert!(
        data.iter().all(|&b| b == 0x42),
        "mirror: guest write did not land"
    );
    assert!(
        jobs.to_string().contains("concluded"),
        "mirror job ended: {jobs}"
    );
    assert_eq!(detached, Ok(()), "a later detach cleans up");
    let (err, _data, _, detached) = tap_dies(Via::Blklogwrites).await;
    assert!(
        err.contains("failed"),
        "blklogwrites: expected a failed guest write, got {err:?}"
    );
    // And the filter cannot even be removed: blockdev-reopen flushes through
    // the dead log device.
    assert!(detached.is_err(), "{detached:?}");
}
