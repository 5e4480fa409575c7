//! Booting the guest under QEMU: accelerator choice, the drive, the command
//! line, and a hard timeout (QEMU pauses instead of exiting after an
//! internal error, so every run is killed when its time is up).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::initramfs::GuestImage;
use crate::tools;
use crate::truth::{self, Truth};

/// The environment variable that forces an accelerator: `kvm`, `tcg`, or
/// `auto` (the default: KVM only if a short probe boot works).
pub const ACCEL_ENV: &str = "GAMMARAY_TESTBED_ACCEL";
/// The QEMU node name of the guest's disk as the guest device sees it.
pub const DISK_NODE: &str = "disk0";
/// The node name of the protocol (file) node under [`DISK_NODE`] in
/// [`Drive::Raw`] and [`Drive::LogWrites`].
pub const DISK_FILE_NODE: &str = "disk0-file";

/// The QEMU binary.
pub fn qemu_binary() -> Option<PathBuf> {
    tools::find_tool("qemu-system-x86_64")
}

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation (always works, ~4 s per boot).
    Tcg,
}

impl Accel {
    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }
}

/// The file system on the guest's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsKind {
    /// ext4, mounted with the kernel's ext4 driver.
    Ext4,
    /// NTFS, mounted with the kernel's `ntfs3` driver.
    Ntfs,
}

impl FsKind {
    /// Both file systems.
    pub const ALL: [FsKind; 2] = [FsKind::Ext4, FsKind::Ntfs];

    /// The short name (`ext4`, `ntfs`).
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Ntfs => "ntfs",
        }
    }

    /// The guest kernel's file system type for `mount -t`.
    pub fn mount_type(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Ntfs => "ntfs3",
        }
    }
}

impl std::str::FromStr for FsKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ext4" => Ok(FsKind::Ext4),
            "ntfs" | "ntfs3" => Ok(FsKind::Ntfs),
            _ => Err(format!("unknown file system {s:?} (ext4 or ntfs)")),
        }
    }
}

/// How the guest's disk is attached. Every variant defines the block node
/// [`DISK_NODE`], which the guest sees as `/dev/vda` (virtio-blk).
#[derive(Debug, Clone)]
pub enum Drive {
    /// A raw image as `-blockdev driver=file` (node [`DISK_FILE_NODE`]) under
    /// `-blockdev driver=raw` (node [`DISK_NODE`]): the layout that live
    /// attach (`blockdev-reopen`, `blockdev-mirror`) expects.
    Raw(PathBuf),
    /// A raw image behind QEMU's `blklogwrites` driver from start-up,
    /// writing a dm-log-writes trace with 512-byte log sectors to `log`
    /// (created empty if missing).
    LogWrites {
        /// The disk image.
        disk: PathBuf,
        /// The trace file.
        log: PathBuf,
    },
    /// A disk served over NBD on a unix socket (e.g. by
    /// `gammaray capture --serve`).
    Nbd(PathBuf),
    /// Arguments supplied by the caller; they must define node [`DISK_NODE`].
    Args(Vec<OsString>),
}

impl Drive {
    fn args(&self) -> Result<Vec<OsString>> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: String| {
            a.push("-blockdev".into());
            a.push(s.into());
        };
        match self {
            Drive::Raw(disk) => {
                push(format!(
                    "driver=file,filename={},node-name={DISK_FILE_NODE}",
                    qemu_path(disk)?
                ));
                push(format!(
                    "driver=raw,file={DISK_FILE_NODE},node-name={DISK_NODE}"
                ));
            }
            Drive::LogWrites { disk, log } => {
                if !log.exists() {
                    std::fs::File::create(log).ctx("creating", log)?;
                }
                push(format!(
                    "driver=file,filename={},node-name={DISK_FILE_NODE}",
                    qemu_path(disk)?
                ));
                push(format!(
                    "driver=file,filename={},node-name=disk0-log",
                    qemu_path(log)?
                ));
                push(format!(
                    "driver=blklogwrites,node-name={DISK_NODE},file={DISK_FILE_NODE},log=disk0-log,log-sector-size=512"
                ));
            }
            Drive::Nbd(sock) => {
                push(format!(
                    "driver=nbd,node-name={DISK_NODE},server.type=unix,server.path={},export=",
                    qemu_path(sock)?
                ));
            }
            Drive::Args(args) => a.extend(args.iter().cloned()),
        }
        a.push("-device".into());
        // Behind blklogwrites, QEMU's merging of adjacent guest requests
        // can build one request of nearly IOV_MAX buffers, and the log
        // entry (header + data: two buffers more) then fails to write: the
        // guest sees an I/O error and the trace loses the request. Each
        // guest request on its own stays far below the limit.
        let merging = if matches!(self, Drive::LogWrites { .. }) {
            ",request-merging=off"
        } else {
            ""
        };
        a.push(format!("virtio-blk-pci,drive={DISK_NODE},id=vda{merging}").into());
        Ok(a)
    }
}

/// QEMU's option syntax has no escape for commas in paths; refuse them.
fn qemu_path(p: &Path) -> Result<String> {
    let s = p.to_str().ok_or_else(|| Error::Guest {
        message: format!("path {} is not UTF-8", p.display()),
        serial: PathBuf::new(),
    })?;
    if s.contains(',') {
        return Err(Error::Guest {
            message: format!("path {s:?} contains a comma, which QEMU options cannot carry"),
            serial: PathBuf::new(),
        });
    }
    Ok(s.to_string())
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Working directory: the workload script (`workload.sh`), the serial
    /// log (`serial.log`) and QEMU's stderr (`qemu.log`) go here.
    pub dir: PathBuf,
    /// The workload script (busybox ash), run in `/mnt` after mounting.
    pub script: String,
    /// The file system, for `mount -t`.
    pub fs: FsKind,
    /// The guest's disk.
    pub drive: Drive,
    /// Open a QMP server on this unix socket (`server=on,wait=off`).
    pub qmp: Option<PathBuf>,
    /// Pacing: QEMU connects the guest's second serial port (ttyS1) to this
    /// unix socket, which the caller listens on (see [`crate::Pacer`]).
    pub pace: Option<PathBuf>,
    /// Extra fw_cfg files: (name under `opt/gr/`, host file).
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// Kill QEMU after this long.
    pub timeout: Duration,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// More QEMU arguments.
    pub extra_args: Vec<OsString>,
}

impl RunSpec {
    /// A spec with defaults: 256 MiB, 120 s timeout, no QMP, no pacing.
    pub fn new(
        dir: impl Into<PathBuf>,
        script: impl Into<String>,
        fs: FsKind,
        drive: Drive,
    ) -> Self {
        RunSpec {
            dir: dir.into(),
            script: script.into(),
            fs,
            drive,
            qmp: None,
            pace: None,
            fw_cfg: Vec::new(),
            timeout: Duration::from_secs(120),
            memory_mib: 256,
            extra_args: Vec::new(),
        }
    }

    /// The serial log path.
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
}

/// A bootable guest and the accelerator to run it with.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Kernel and initramfs.
    pub image: GuestImage,
    /// The accelerator in use.
    pub accel: Accel,
    qemu: PathBuf,
}

impl Guest {
    /// Builds or finds the guest in the cache and picks the accelerator.
    pub fn new() -> Result<Guest> {
        let qemu = qemu_binary().ok_or_else(|| Error::MissingTool("qemu-system-x86_64".into()))?;
        let image = GuestImage::ensure()?;
        let mut g = Guest {
            image,
            accel: Accel::Tcg,
            qemu,
        };
        g.accel = choose_accel(&g);
        Ok(g)
    }

    fn command(&self, spec: &RunSpec, accel: Accel) -> Result<Command> {
        let mut cmd = Command::new(&self.qemu);
        cmd.args(accel.args());
        cmd.args([
            "-M",
            "q35",
            "-smp",
            "1",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-no-user-config",
        ]);
        cmd.arg("-m").arg(spec.memory_mib.to_string());
        cmd.arg("-kernel").arg(self.image.kernel.boot_image());
        cmd.arg("-initrd").arg(&self.image.initrd);
        let mut append = format!(
            "console=ttyS0 panic=-1 quiet gr.fs={}",
            spec.fs.mount_type()
        );
        if spec.pace.is_some() {
            append.push_str(" gr.pace=1");
        }
        cmd.arg("-append").arg(append);
        cmd.arg("-serial")
            .arg(format!("file:{}", qemu_path(&spec.serial_log())?));
        if let Some(p) = &spec.pace {
            cmd.arg("-chardev").arg(format!(
                "socket,id=grpace,path={},server=off",
                qemu_path(p)?
            ));
            cmd.arg("-serial").arg("chardev:grpace");
        }
        if let Some(q) = &spec.qmp {
            cmd.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", qemu_path(q)?));
        }
        let script = spec.dir.join("workload.sh");
        std::fs::write(&script, &spec.script).ctx("writing", &script)?;
        cmd.arg("-fw_cfg")
            .arg(format!("name=opt/gr/script,file={}", qemu_path(&script)?));
        for (name, file) in &spec.fw_cfg {
            cmd.arg("-fw_cfg")
                .arg(format!("name=opt/gr/{name},file={}", qemu_path(file)?));
        }
        cmd.args(spec.drive.args()?);
        cmd.args(&spec.extra_args);
        Ok(cmd)
    }

    /// Starts the guest; see [`RunningGuest::wait`].
    pub fn spawn(&self, spec: &RunSpec) -> Result<RunningGuest> {
        self.spawn_with(spec, self.accel)
    }

    fn spawn_with(&self, spec: &RunSpec, accel: Accel) -> Result<RunningGuest> {
        std::fs::create_dir_all(&spec.dir).ctx("creating", &spec.dir)?;
        let serial = spec.serial_log();
        let _ = std::fs::remove_file(&serial);
        let qlog = spec.dir.join("qemu.log");
        let stderr = std::fs::File::create(&qlog).ctx("creating", &qlog)?;
        let mut cmd = self.command(spec, accel)?;
        tracing::debug!(command = %tools::describe(&cmd), "starting QEMU");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .ctx("starting", &self.qemu)?;
        Ok(RunningGuest {
            child: Some(child),
            started: Instant::now(),
            timeout: spec.timeout,
            serial,
            qemu_log: qlog,
        })
    }

    /// Boots the guest, waits for it to power off, and parses its ground
    /// truth.
    pub fn run(&self, spec: &RunSpec) -> Result<GuestOutput> {
        self.spawn(spec)?.wait()
    }
}

/// A QEMU process; killed when dropped.
#[derive(Debug)]
pub struct RunningGuest {
    child: Option<Child>,
    started: Instant,
    timeout: Duration,
    serial: PathBuf,
    qemu_log: PathBuf,
}

/// What a finished guest run produced.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    /// The serial console log.
    pub serial: PathBuf,
    /// Wall time from QEMU's start to its exit.
    pub elapsed: Duration,
    /// The ground truth parsed from the serial log.
    pub truth: Truth,
}

impl RunningGuest {
    /// QEMU's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The serial log being written.
    pub fn serial_log(&self) -> &Path {
        &self.serial
    }

    /// Waits for QEMU to exit (killing it at the timeout) and parses the
    /// ground truth from the serial log.
    pub fn wait(mut self) -> Result<GuestOutput> {
        self.wait_exit()?;
        let elapsed = self.started.elapsed();
        let text = std::fs::read(&self.serial).ctx("reading serial log", &self.serial)?;
        let truth = truth::parse_serial(&text).map_err(|e| match e {
            Error::Guest { message, .. } => Error::Guest {
                message: format!("{message}{}", qemu_stderr_hint(&self.qemu_log)),
                serial: self.serial.clone(),
            },
            other => other,
        })?;
        Ok(GuestOutput {
            serial: self.serial.clone(),
            elapsed,
            truth,
        })
    }

    /// Waits for QEMU to exit without parsing anything.
    pub fn wait_exit(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let deadline = self.started + self.timeout;
        loop {
            if child
                .try_wait()
                .ctx("waiting for QEMU", &self.serial)?
                .is_some()
            {
                self.child = None;
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(Error::Timeout {
                    seconds: self.timeout.as_secs(),
                    serial: self.serial.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills QEMU now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        self.kill();
    }
}

fn qemu_stderr_hint(qlog: &Path) -> String {
    match std::fs::read_to_string(qlog) {
        Ok(s) if !s.trim().is_empty() => format!("; QEMU said: {}", s.trim()),
        _ => String::new(),
    }
}

/// Picks the accelerator: `$GAMMARAY_TESTBED_ACCEL`, else KVM if
/// `/dev/kvm` opens and a probe boot reaches `/init` within a few seconds,
/// else TCG. Probed once per process.
fn choose_accel(g: &Guest) -> Accel {
    static CHOSEN: OnceLock<Accel> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        match std::env::var(ACCEL_ENV).as_deref() {
            Ok("kvm") => return Accel::Kvm,
            Ok("tcg") => return Accel::Tcg,
            _ => {}
        }
        let kvm_opens = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if !kvm_opens {
            return Accel::Tcg;
        }
        let ok = probe_kvm(g).unwrap_or(false);
        tracing::info!(kvm = ok, "KVM probe");
        if ok {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    })
}

fn probe_kvm(g: &Guest) -> Result<bool> {
    // A whole small run (mount, write, sync, listing, power-off), not just
    // a boot: nested KVM has been seen to boot and then fail on
    // instructions such as xrstor or cmpxchg16b.
    let dir = std::env::temp_dir().join(format!("gammaray-kvm-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ctx("creating", &dir)?;
    let disk = dir.join("probe.img");
    crate::disk::make_base_image(FsKind::Ext4, &disk, 16)?;
    let mut spec = RunSpec::new(
        &dir,
        "op_write /probe kvm\n",
        FsKind::Ext4,
        Drive::Raw(disk),
    );
    spec.timeout = Duration::from_secs(30);
    let ok = g
        .spawn_with(&spec, Accel::Kvm)
        .and_then(RunningGuest::wait)
        .map(|out| out.truth.listing.iter().any(|e| e.path == "/probe"));
    if let Err(e) = &ok {
        tracing::debug!(error = %e, "KVM probe failed");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ok.unwrap_or(false))
}
