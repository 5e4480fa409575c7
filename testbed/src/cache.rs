//! The build cache: `$GAMMARAY_TESTBED_CACHE`, else `testbed/cache/`.
//!
//! Each cached item is a directory that appears atomically: it is built
//! under a private temporary name and renamed into place, so concurrent test
//! processes never see a half-built item and never need a lock (when two
//! build the same item, the second rename loses and its copy is removed).

use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// The environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "GAMMARAY_TESTBED_CACHE";

/// The cache directory (created if missing).
pub fn cache_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os(CACHE_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cache"),
    };
    std::fs::create_dir_all(&dir).ctx("creating cache directory", &dir)?;
    Ok(dir)
}

/// Returns `cache/<name>`, building it with `build` (which fills the empty
/// directory it is given) if it does not exist yet.
pub fn cached_dir(name: &str, build: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let root = cache_dir()?;
    let target = root.join(name);
    if target.is_dir() {
        return Ok(target);
    }
    let tmp = root.join(format!(
        ".tmp-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).ctx("creating", &tmp)?;
    tracing::info!(item = name, "building testbed cache item");
    if let Err(e) = build(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if std::fs::rename(&tmp, &target).is_err() {
        // Someone else published it first; theirs is as good as ours.
        let _ = std::fs::remove_dir_all(&tmp);
        if !target.is_dir() {
            return Err(crate::Error::Io {
                context: "publishing cache item",
                path: target,
                source: std::io::Error::other("rename failed"),
            });
        }
    }
    Ok(target)
}

/// A short hex digest of some inputs, for cache item names.
pub fn digest(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..8])
}
