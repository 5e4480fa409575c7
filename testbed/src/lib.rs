//! Real Linux guests for gammaray's tests and benchmarks.
//!
//! gammaray infers file changes from a VM's disk writes; every test of that
//! inference needs to know what *really* happened inside a guest. This
//! crate boots a tiny guest (a Debian cloud kernel and a busybox initramfs,
//! both built on first use and cached under `testbed/cache/` or
//! `$GAMMARAY_TESTBED_CACHE`) under stock QEMU, runs a workload script on an
//! ext4 or NTFS disk, and collects the ground truth from inside the guest:
//! the operations performed and a listing of the whole file system after a
//! `sync`, in the state-listing format of DESIGN.md.
//!
//! Overview:
//! - [`record`] makes a fresh disk, boots the guest behind QEMU's
//!   `blklogwrites` driver and leaves `base.img`, `trace.log`, `final.img`,
//!   `truth.jsonl`, `ops.txt` and `serial.log` in a directory.
//! - [`Guest`] and [`RunSpec`] boot the guest with any [`Drive`] (a plain
//!   file laid out for live attach, an NBD socket, custom `-blockdev`
//!   arguments), optionally with a QMP socket and a [`Pacer`] that holds
//!   the guest at named points.
//! - [`trace`] reads and applies dm-log-writes traces.
//! - [`expect`] checks gammaray's file events against the workload's
//!   operations.
//! - [`record_crash`] records two boots of one disk, the first crashing
//!   after a `sync` so that the second replays its journal.
//! - [`record_capture`] records through `gammaray capture` (served disk,
//!   live blklogwrites, live mirror) instead.
//!
//! ```no_run
//! use gammaray_testbed::{record, FsKind, RecordSpec, Workload};
//! let rec = record(&RecordSpec::new(Workload::Logs, FsKind::Ext4, "/tmp/rec"))?;
//! gammaray_testbed::trace::replay_to(&rec.base, &rec.trace, "/tmp/replayed.img".as_ref())?;
//! # Ok::<(), gammaray_testbed::Error>(())
//! ```
//!
//! Design notes: KVM is used only if a probe boot works (on the project's
//! machines it does not; TCG boots in about 4 s). Every QEMU run has a hard
//! timeout because QEMU pauses rather than exits on internal errors. The
//! guest prints raw records and the host does the JSON escaping and the
//! sorting, which busybox cannot be trusted with.

#![deny(missing_docs)]

mod cache;
mod capture;
mod cpio;
pub mod disk;
mod error;
pub mod expect;
mod initramfs;
mod kernel;
pub mod listing;
mod pace;
mod qemu;
mod record;
mod tools;
pub mod trace;
pub mod truth;
mod workload;

pub use cache::{cache_dir, CACHE_ENV};
pub use capture::{gammaray_binary, record_capture, CapturePath, CaptureProcess, GAMMARAY_BIN_ENV};
pub use error::{Error, Result};
pub use initramfs::GuestImage;
pub use kernel::Kernel;
pub use listing::ListingEntry;
pub use pace::Pacer;
pub use qemu::{
    qemu_binary, Accel, Drive, FsKind, Guest, GuestOutput, RunSpec, RunningGuest, ACCEL_ENV,
    DISK_FILE_NODE, DISK_NODE,
};
pub use record::{
    needs_recovery, record, record_crash, record_with, write_truth, CrashRecording, RecordSpec,
    Recording, CRASH_SNAPSHOT,
};
pub use tools::find_tool;
pub use truth::{Snapshot, Truth};
pub use workload::Workload;

/// Set to a non-empty value to make guest tests fail, not skip, when QEMU
/// is missing.
pub const REQUIRE_ENV: &str = "GAMMARAY_REQUIRE_GUEST";

/// Whether guest tests can run here. Without QEMU this prints a loud
/// message and returns `false`, unless `GAMMARAY_REQUIRE_GUEST` is set, in
/// which case it panics (CI sets it so that missing QEMU is a failure).
pub fn guest_available(test: &str) -> bool {
    if qemu_binary().is_some() {
        return true;
    }
    let required = std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty());
    assert!(
        !required,
        "{test}: qemu-system-x86_64 not found and {REQUIRE_ENV} is set; run scripts/setup-host.sh"
    );
    eprintln!(
        "\n!!!!! SKIPPING {test}: qemu-system-x86_64 not found (run scripts/setup-host.sh, \
         or set {REQUIRE_ENV}=1 to make this a failure) !!!!!\n"
    );
    false
}
