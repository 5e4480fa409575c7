//! The guest kernel: a Debian cloud kernel package, unpacked (never
//! installed) into the cache, with the few modules the guest needs
//! decompressed and, when possible, an uncompressed `vmlinux` cut out of the
//! bzImage (it boots about a second faster under TCG).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::cache;
use crate::error::{Error, IoContext, Result};
use crate::tools;

/// The kernel package used unless `GAMMARAY_TESTBED_KERNEL` names another.
/// 6.12 is needed for ntfs3 (Debian's 6.1 lacks it); this exact build was
/// checked on the project's machines.
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-6.12.95+deb12-cloud-amd64";
/// Used when the pinned package is gone from the mirror.
const FALLBACK_META_PACKAGE: &str = "linux-image-6.12-cloud-amd64";
/// The environment variable that picks another kernel package.
pub const KERNEL_ENV: &str = "GAMMARAY_TESTBED_KERNEL";
/// The private apt configuration written by `scripts/setup-host.sh`.
pub const APT_CONFIG: &str = "/var/cache/gammaray-apt/apt.conf";

/// The modules the guest loads, in load order. None has dependencies in
/// the cloud kernel (each `.ko`'s `depends=` is empty).
pub const MODULES: [&str; 4] = ["qemu_fw_cfg", "virtio_blk", "nls_utf8", "ntfs3"];

/// An unpacked guest kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The package it came from.
    pub package: String,
    /// The compressed kernel (`vmlinuz`).
    pub bzimage: PathBuf,
    /// The uncompressed kernel, when it could be extracted.
    pub vmlinux: Option<PathBuf>,
    /// Decompressed modules: `qemu_fw_cfg`, `virtio_blk`, `nls_utf8`, `ntfs3`.
    pub modules: Vec<PathBuf>,
}

impl Kernel {
    /// The kernel image to boot: `vmlinux` if present, else the bzImage.
    pub fn boot_image(&self) -> &Path {
        self.vmlinux.as_deref().unwrap_or(&self.bzimage)
    }

    /// Downloads and unpacks the kernel into the cache, or finds it there.
    pub fn ensure() -> Result<Kernel> {
        let package = std::env::var(KERNEL_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_KERNEL_PACKAGE.to_string());
        let dir = match cache::cached_dir(&format!("kernel-{package}"), |d| build(&package, d)) {
            Ok(d) => d,
            Err(first) => {
                tracing::warn!(%package, error = %first, "pinned kernel unavailable, trying the newest 6.12");
                let newest = resolve_meta().map_err(|_| first)?;
                cache::cached_dir(&format!("kernel-{newest}"), |d| build(&newest, d))?
            }
        };
        Self::load(&dir)
    }

    fn load(dir: &Path) -> Result<Kernel> {
        let package = std::fs::read_to_string(dir.join("package"))
            .ctx("reading", dir.join("package"))?
            .trim()
            .to_string();
        let vmlinux = dir.join("vmlinux");
        Ok(Kernel {
            package,
            bzimage: dir.join("bzImage"),
            vmlinux: vmlinux.is_file().then_some(vmlinux),
            modules: MODULES
                .iter()
                .map(|m| dir.join("modules").join(format!("{m}.ko")))
                .collect(),
        })
    }
}

fn apt_command(program: &str) -> Result<std::process::Command> {
    let mut cmd = tools::tool(program)?;
    if Path::new(APT_CONFIG).is_file() {
        cmd.env("APT_CONFIG", APT_CONFIG);
    }
    Ok(cmd)
}

/// The concrete package the 6.12 cloud meta-package depends on.
fn resolve_meta() -> Result<String> {
    let out = tools::run(apt_command("apt-cache")?.args(["depends", FALLBACK_META_PACKAGE]))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| Error::Kernel(format!("{FALLBACK_META_PACKAGE} names no kernel")))
}

fn build(package: &str, dir: &Path) -> Result<()> {
    let dl = dir.join("download");
    std::fs::create_dir_all(&dl).ctx("creating", &dl)?;
    tools::run(
        apt_command("apt-get")?
            .args(["download", "-q", package])
            .current_dir(&dl),
    )?;
    let deb = first_file(&dl, |n| n.ends_with(".deb"))?
        .ok_or_else(|| Error::Kernel(format!("apt-get download {package} left no .deb")))?;
    let root = dir.join("root");
    tools::run(tools::tool("dpkg")?.arg("-x").arg(&deb).arg(&root))?;

    let vmlinuz = first_file(&root.join("boot"), |n| n.starts_with("vmlinuz-"))?
        .ok_or_else(|| Error::Kernel(format!("{package} has no /boot/vmlinuz-*")))?;
    let bz = dir.join("bzImage");
    std::fs::copy(&vmlinuz, &bz).ctx("copying", &vmlinuz)?;

    let mods = dir.join("modules");
    std::fs::create_dir_all(&mods).ctx("creating", &mods)?;
    let mut found = Vec::new();
    walk(&root.join("lib/modules"), &mut found)?;
    walk(&root.join("usr/lib/modules"), &mut found)?;
    for m in MODULES {
        let src = found
            .iter()
            .find(|p| {
                let n = p.file_name().and_then(OsStr::to_str).unwrap_or("");
                n == format!("{m}.ko") || n.starts_with(&format!("{m}.ko."))
            })
            .ok_or_else(|| Error::Kernel(format!("{package} has no module {m}")))?;
        let out = mods.join(format!("{m}.ko"));
        match src.extension().and_then(OsStr::to_str) {
            Some("xz") => tools::run_to_file("xz", &[OsStr::new("-dc")], src, &out)?,
            Some("zst") => tools::run_to_file("zstd", &[OsStr::new("-dc")], src, &out)?,
            Some("gz") => tools::run_to_file("gzip", &[OsStr::new("-dc")], src, &out)?,
            _ => {
                std::fs::copy(src, &out).ctx("copying", src)?;
            }
        }
    }

    match extract_vmlinux(&bz, &dir.join("vmlinux")) {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(error = %e, "no vmlinux; booting the bzImage");
            let _ = std::fs::remove_file(dir.join("vmlinux"));
        }
    }
    std::fs::write(dir.join("package"), package).ctx("writing", dir.join("package"))?;
    std::fs::remove_dir_all(&root).ctx("removing", &root)?;
    std::fs::remove_dir_all(&dl).ctx("removing", &dl)?;
    Ok(())
}

/// Cuts the zstd payload out of a bzImage (offset and length at 0x248 in
/// the setup header, relative to the protected-mode code that starts after
/// the setup sectors), drops its trailing 4-byte size and decompresses it.
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let data = std::fs::read(bzimage).ctx("reading", bzimage)?;
    let bad = |m: &str| Error::Kernel(format!("{}: {m}", bzimage.display()));
    let u32_at = |o: usize| -> Option<u32> {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if data.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("no HdrS setup header"));
    }
    let setup_sects = match data.get(0x1f1) {
        Some(0) => 4,
        Some(&n) => usize::from(n),
        None => return Err(bad("too short")),
    };
    let pm_start = (setup_sects + 1) * 512;
    let off = u32_at(0x248).ok_or_else(|| bad("too short"))? as usize;
    let len = u32_at(0x24c).ok_or_else(|| bad("too short"))? as usize;
    let start = pm_start + off;
    let payload = data
        .get(start..start + len)
        .ok_or_else(|| bad("payload outside the file"))?;
    if !payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(bad("payload is not zstd"));
    }
    let zst = out.with_extension("zst");
    std::fs::write(&zst, &payload[..len.saturating_sub(4)]).ctx("writing", &zst)?;
    let r = tools::run_to_file(
        "zstd",
        &[OsStr::new("-dc"), OsStr::new("--long=31")],
        &zst,
        out,
    );
    let _ = std::fs::remove_file(&zst);
    r?;
    let mut head = [0u8; 4];
    std::io::Read::read_exact(
        &mut std::fs::File::open(out).ctx("opening", out)?,
        &mut head,
    )
    .ctx("reading", out)?;
    if &head != b"\x7fELF" {
        return Err(bad("decompressed payload is not ELF"));
    }
    Ok(())
}

fn first_file(dir: &Path, pred: impl Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .ctx("listing", dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(OsStr::to_str).is_some_and(&pred))
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd {
        let e = e.ctx("listing", dir)?;
        let ft = e.file_type().ctx("stat", e.path())?;
        if ft.is_dir() {
            walk(&e.path(), out)?;
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}
