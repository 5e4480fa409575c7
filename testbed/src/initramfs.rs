//! The guest's initramfs: static busybox, the `/init` script and helper
//! library from `testbed/guest/`, the kernel modules, and `/dev/console`
//! (without it `/init` has no standard output). cpio newc, gzip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::cache;
use crate::cpio::{Member, Writer};
use crate::error::{Error, IoContext, Result};
use crate::kernel::{Kernel, MODULES};
use crate::tools;

/// The guest's `/init` (busybox ash).
pub const INIT_SCRIPT: &str = include_str!("../guest/init.sh");
/// Helpers for workloads (`op_*`, `gr_pace`, `gr_listing`), at `/lib/gr/lib.sh`.
pub const LIB_SCRIPT: &str = include_str!("../guest/lib.sh");

/// A bootable guest: kernel plus initramfs.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The kernel and its modules.
    pub kernel: Kernel,
    /// The gzipped initramfs.
    pub initrd: PathBuf,
}

impl GuestImage {
    /// Builds (or finds in the cache) the kernel and the initramfs. The
    /// result is computed once per process.
    pub fn ensure() -> Result<GuestImage> {
        static IMAGE: OnceLock<std::result::Result<GuestImage, String>> = OnceLock::new();
        IMAGE
            .get_or_init(|| Self::build().map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Setup)
    }

    fn build() -> Result<GuestImage> {
        let kernel = Kernel::ensure()?;
        let busybox = tools::require_tool("busybox")?;
        let bb = std::fs::read(&busybox).ctx("reading", &busybox)?;
        if has_interpreter(&bb) {
            return Err(Error::Kernel(format!(
                "{} is dynamically linked; install busybox-static",
                busybox.display()
            )));
        }
        let key = cache::digest(&[
            kernel.package.as_bytes(),
            INIT_SCRIPT.as_bytes(),
            LIB_SCRIPT.as_bytes(),
            &bb,
        ]);
        let dir = cache::cached_dir(&format!("initrd-{key}"), |d| {
            write_initrd(&kernel, &bb, &d.join("initrd.gz"))
        })?;
        Ok(GuestImage {
            kernel,
            initrd: dir.join("initrd.gz"),
        })
    }
}

/// Whether an ELF64 file names a program interpreter (is dynamically
/// linked): a `PT_INTERP` program header.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).any(|i| {
        let at = usize::try_from(phoff)
            .unwrap_or(usize::MAX)
            .saturating_add(i.saturating_mul(usize::from(phentsize)));
        elf.get(at..at + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

fn write_initrd(kernel: &Kernel, busybox: &[u8], out: &Path) -> Result<()> {
    let mut w = Writer::new(1_700_000_000);
    for d in [
        "bin",
        "dev",
        "lib",
        "lib/modules",
        "lib/gr",
        "mnt",
        "proc",
        "sys",
        "tmp",
    ] {
        w.add(&Member::Dir {
            path: d.into(),
            mode: 0o755,
        });
    }
    w.add(&Member::CharDev {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    w.add(&Member::File {
        path: "bin/busybox".into(),
        mode: 0o755,
        data: busybox.to_vec(),
    });
    w.add(&Member::Symlink {
        path: "bin/sh".into(),
        target: "busybox".into(),
    });
    w.add(&Member::File {
        path: "init".into(),
        mode: 0o755,
        data: INIT_SCRIPT.as_bytes().to_vec(),
    });
    w.add(&Member::File {
        path: "lib/gr/lib.sh".into(),
        mode: 0o644,
        data: LIB_SCRIPT.as_bytes().to_vec(),
    });
    for (name, path) in MODULES.iter().zip(&kernel.modules) {
        let data = std::fs::read(path).ctx("reading", path)?;
        w.add(&Member::File {
            path: format!("lib/modules/{name}.ko"),
            mode: 0o644,
            data,
        });
    }
    let archive = w.finish();
    let f = std::fs::File::create(out).ctx("creating", out)?;
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    gz.write_all(&archive).ctx("writing", out)?;
    gz.finish().ctx("writing", out)?;
    Ok(())
}
