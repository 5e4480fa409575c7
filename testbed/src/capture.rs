//! Driving `gammaray capture` from tests: finding (or building) the
//! `gammaray` binary, running its three capture paths around a guest run,
//! and stopping it cleanly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::pace::Pacer;
use crate::qemu::{Drive, Guest, RunSpec, DISK_NODE};
use crate::record::{RecordSpec, Recording};

/// The environment variable naming a prebuilt `gammaray` binary.
pub const GAMMARAY_BIN_ENV: &str = "GAMMARAY_BIN";

/// How the writes leave QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapturePath {
    /// `gammaray capture --serve`: the guest's disk is served over NBD.
    Serve,
    /// `gammaray capture --attach --via blklogwrites`, attached while the
    /// guest is held before mounting its disk.
    AttachBlklogwrites,
    /// `gammaray capture --attach --via mirror`, likewise.
    AttachMirror,
}

impl CapturePath {
    /// All three.
    pub const ALL: [CapturePath; 3] = [
        CapturePath::Serve,
        CapturePath::AttachBlklogwrites,
        CapturePath::AttachMirror,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            CapturePath::Serve => "serve",
            CapturePath::AttachBlklogwrites => "blklogwrites",
            CapturePath::AttachMirror => "mirror",
        }
    }
}

/// The `gammaray` binary: `$GAMMARAY_BIN`, else built with
/// `cargo build -p gammaray` into the target directory this process runs
/// from (once per process).
pub fn gammaray_binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_gammaray().map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::Setup)
}

fn build_gammaray() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(GAMMARAY_BIN_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    // A test binary lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().ctx("finding", "current executable")?;
    let mut profile_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir.pop();
    }
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let target = profile_dir
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::Setup(format!("no target dir above {}", exe.display())))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "gammaray", "--bin", "gammaray"])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target);
    if profile == "release" {
        cmd.arg("--release");
    }
    tracing::info!(target = %target.display(), "building gammaray for capture tests");
    crate::tools::run(&mut cmd)?;
    let bin = profile_dir.join("gammaray");
    if !bin.is_file() {
        return Err(Error::Setup(format!(
            "{} missing after cargo build",
            bin.display()
        )));
    }
    Ok(bin)
}

/// A running `gammaray capture`.
#[derive(Debug)]
pub struct CaptureProcess {
    child: Option<Child>,
    stderr: PathBuf,
}

impl CaptureProcess {
    fn spawn(bin: &Path, args: &[&std::ffi::OsStr], stderr: &Path) -> Result<Self> {
        let err = std::fs::File::create(stderr).ctx("creating", stderr)?;
        let child = Command::new(bin)
            .arg("capture")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .ctx("starting", bin)?;
        Ok(CaptureProcess {
            child: Some(child),
            stderr: stderr.to_path_buf(),
        })
    }

    /// `gammaray capture --serve DISK --socket SOCK --log TRACE`; returns
    /// once the socket exists.
    pub fn serve(
        bin: &Path,
        disk: &Path,
        socket: &Path,
        log: &Path,
        stderr: &Path,
    ) -> Result<Self> {
        let _ = std::fs::remove_file(socket);
        let mut p = Self::spawn(
            bin,
            &[
                "--serve".as_ref(),
                disk.as_os_str(),
                "--socket".as_ref(),
                socket.as_os_str(),
                "--log".as_ref(),
                log.as_os_str(),
            ],
            stderr,
        )?;
        p.wait_until(
            Duration::from_secs(30),
            || socket.exists(),
            "the NBD socket",
        )?;
        Ok(p)
    }

    /// `gammaray capture --attach QMP --drive NODE --via VIA --log TRACE`;
    /// returns once it reports being attached.
    pub fn attach(
        bin: &Path,
        qmp: &Path,
        drive: &str,
        via: &str,
        log: &Path,
        stderr: &Path,
    ) -> Result<Self> {
        let mut p = Self::spawn(
            bin,
            &[
                "--attach".as_ref(),
                qmp.as_os_str(),
                "--drive".as_ref(),
                drive.as_ref(),
                "--via".as_ref(),
                via.as_ref(),
                "--log".as_ref(),
                log.as_os_str(),
            ],
            stderr,
        )?;
        let err = p.stderr.clone();
        p.wait_until(
            Duration::from_secs(30),
            || std::fs::read_to_string(&err).is_ok_and(|s| s.contains("attached to")),
            "\"attached to\"",
        )?;
        Ok(p)
    }

    fn wait_until(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
        what: &str,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Err(self.failure(&format!("exited ({st}) before {what}")));
                }
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(self.failure(&format!("no {what} within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn failure(&self, what: &str) -> Error {
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        Error::Guest {
            message: format!("gammaray capture {what}: {}", log.trim()),
            serial: self.stderr.clone(),
        }
    }

    /// Sends SIGTERM (detach and finish the trace).
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            if let Ok(pid) = libc::pid_t::try_from(c.id()) {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
    }

    /// Waits for it to exit successfully (killing it after `timeout`).
    pub fn wait(mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let Some(mut c) = self.child.take() else {
            return Err(self.failure("is not running"));
        };
        loop {
            if let Some(st) = c.try_wait().ctx("waiting for", "gammaray capture")? {
                if st.success() {
                    return Ok(());
                }
                return Err(self.failure(&format!("failed ({st})")));
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return Err(self.failure(&format!("did not exit within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for CaptureProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Records `spec` with `gammaray capture` on `path` instead of QEMU's
/// start-up blklogwrites: `trace.log` in the result is gammaray's trace,
/// `final.img` the disk the guest left, `base.img` the disk before.
pub fn record_capture(guest: &Guest, spec: &RecordSpec, path: CapturePath) -> Result<Recording> {
    let bin = gammaray_binary()?;
    let dir = &spec.out;
    let crate::record::Prepared {
        base,
        final_img,
        trace,
        prepare_time,
    } = crate::record::prepare(spec)?;
    let cap_err = dir.join("capture.stderr");
    let step = spec.timeout;

    let out = match path {
        CapturePath::Serve => {
            let sock = dir.join("nbd.sock");
            let cap = CaptureProcess::serve(&bin, &final_img, &sock, &trace, &cap_err)?;
            let mut run = RunSpec::new(dir, spec.script(), spec.fs, Drive::Nbd(sock));
            run.timeout = spec.timeout;
            let out = guest.run(&run)?;
            cap.wait(Duration::from_secs(30))?;
            out
        }
        CapturePath::AttachBlklogwrites | CapturePath::AttachMirror => {
            let via = if path == CapturePath::AttachMirror {
                "mirror"
            } else {
                "blklogwrites"
            };
            let qmp = dir.join("qmp.sock");
            let pace = dir.join("pace.sock");
            let mut pacer = Pacer::listen(&pace)?;
            let mut run = RunSpec::new(dir, spec.script(), spec.fs, Drive::Raw(final_img.clone()));
            run.timeout = spec.timeout;
            run.qmp = Some(qmp.clone());
            run.pace = Some(pace);
            let guest_run = guest.spawn(&run)?;
            let paced = (|| -> Result<()> {
                // Held before mounting: nothing has been written yet.
                pacer.wait_for("boot", step)?;
                let cap = CaptureProcess::attach(&bin, &qmp, DISK_NODE, via, &trace, &cap_err)?;
                pacer.resume()?;
                pacer.step("mounted", step)?;
                // Unmounted and synced: detach before the guest powers off.
                pacer.wait_for("done", spec.timeout)?;
                cap.terminate();
                cap.wait(Duration::from_secs(30))?;
                pacer.resume()
            })();
            match (paced, guest_run.wait()) {
                (Ok(()), out) => out?,
                // The guest's own error usually explains a pacing failure.
                (Err(_), Err(guest_err)) => return Err(guest_err),
                (Err(e), Ok(_)) => return Err(e),
            }
        }
    };
    crate::record::finish(dir, base, final_img, trace, out, prepare_time)
}
