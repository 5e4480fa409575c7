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

fn journal_seed() -> Vec<u8> {
    fuzzing::unsparse(&std::fs::read(root().join("fuzz/seeds/ext4-1k-journal.sparse")).unwrap())
}

#[test]
fn corpus_ext4_infer() {
    let image = journal_seed();
    let f = files(&root().join("fuzz/corpus/ext4_infer"));
    assert!(!f.is_empty());
    for p in f {
        fuzzing::infer(&image, &std::fs::read(&p).unwrap());
    }
}

/// The journal seed is a clean ext4 image with a csum-v3 journal, and the
/// transaction seeds of its corpus really commit (the fuzz target reaches
/// the journal path, not only garbage).
#[test]
fn journal_seed_crawls_clean_and_commits() {
    use gammaray_core::{FileSystem, NoProgress};
    let image = journal_seed();
    let c = gammaray_ext4::Ext4.crawl(&image, &NoProgress).unwrap();
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let counter = |v: &[gammaray_core::Counter], n: &str| {
        v.iter().find(|c| c.name == n).map_or(0, |c| c.value)
    };
    let seed = |name: &str| {
        let p = root().join("fuzz/corpus/ext4_infer").join(name);
        fuzzing::infer(&image, &std::fs::read(p).unwrap())
    };
    let v = seed("seed-txn-rename-in-root");
    assert_eq!(counter(&v, "journal_txns"), 1, "{v:?}");
    assert_eq!(counter(&v, "journal_bad_checksums"), 0, "{v:?}");
    let v = seed("seed-txn-inode-size");
    assert_eq!(counter(&v, "journal_txns"), 1, "{v:?}");
    // A stray commit of the next sequence commits only itself (an empty
    // transaction), never the uncommitted descriptor before it.
    let v = seed("seed-uncommitted-then-commit");
    assert_eq!(counter(&v, "inodes_rescanned"), 0, "{v:?}");
    assert_eq!(counter(&v, "journal_stale_commits"), 1, "{v:?}");
    // A commit of another sequence does not commit the descriptor before
    // it (it is taken as an empty transaction of its own).
    let v = seed("seed-bad-seq-commit");
    assert_eq!(counter(&v, "inodes_rescanned"), 0, "{v:?}");
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
        "ext4_infer" => drop(fuzzing::infer(&journal_seed(), &data)),
        _ => fuzzing::crawl(&seed(), &data),
    }
}

/// Random write streams (the corpus inputs with random bytes appended, and
/// random records alone) through the inference target, which follows each
/// stream with the model resident and under the lazy-load policy and
/// panics if their events or final models differ.
#[test]
fn lazy_load_matches_resident_on_random_streams() {
    let image = journal_seed();
    let corpus = files(&root().join("fuzz/corpus/ext4_infer"));
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..150 {
        let mut data = match corpus.get(round % (corpus.len() + 1)) {
            Some(p) => std::fs::read(p).unwrap(),
            None => Vec::new(),
        };
        let extra = 64 + (next() % 1024) as usize;
        data.extend((0..extra).map(|_| next() as u8));
        fuzzing::infer(&image, &data);
    }
}
