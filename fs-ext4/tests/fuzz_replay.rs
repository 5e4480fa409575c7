//! Replays the committed fuzz corpus (`fuzz/corpus/`) and every crash the
//! fuzzer found (`tests/fuzz_regressions/`) through the same entry points
//! as the cargo-fuzz targets, on stable Rust without libFuzzer. A replay
//! passes when it returns (no panic).

use std::path::{Path, PathBuf};

use gammaray_ext4::fuzzing;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn seed() -> Vec<u8> {
    std::fs::read(root().join("fuzz/seeds/ext4-1k-inline.img")).unwrap()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn corpus_ext4_parsers() {
    let f = files(&root().join("fuzz/corpus/ext4_parsers"));
    assert!(!f.is_empty());
    for p in f {
        fuzzing::parsers(&std::fs::read(&p).unwrap());
    }
}

#[test]
fn corpus_ext4_crawl() {
    let seed = seed();
    let f = files(&root().join("fuzz/corpus/ext4_crawl"));
    assert!(!f.is_empty());
    for p in f {
        fuzzing::crawl(&seed, &std::fs::read(&p).unwrap());
    }
}

#[test]
fn seed_image_crawls_clean() {
    use gammaray_core::{FileSystem, NoProgress};
    let c = gammaray_ext4::Ext4.crawl(&seed(), &NoProgress).unwrap();
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    assert_eq!(c.model.files.len(), 39);
}

/// Replays one saved crash input for `target`.
#[allow(dead_code)]
fn regression(target: &str, name: &str) {
    let data = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz_regressions")
            .join(name),
    )
    .unwrap();
    match target {
        "ext4_parsers" => fuzzing::parsers(&data),
        _ => fuzzing::crawl(&seed(), &data),
    }
}
