//! The jbd2 parser against e2fsprogs: debugfs writes real journal
//! transactions (`journal_open`, `journal_write`, `journal_close`) into
//! fresh ext4 images, `debugfs logdump` says what the journal holds, and
//! walking each committed transaction with [`gammaray_ext4::journal`] must
//! find exactly the same home blocks, journal positions, escape flags,
//! sequences and revokes. The logged copies must also equal the data that
//! was written, after unescaping.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use gammaray_core::Result;
use gammaray_ext4::journal::{self, JournalSuperblock, Transaction, JBD2_MAGIC};

/// debugfs with the journal commands, or `None` (after saying so loudly)
/// when it is missing and `GAMMARAY_REQUIRE_GUEST` is not set.
fn have_debugfs() -> bool {
    let ok = common::debugfs_has_journal_commands();
    if !ok {
        assert!(
            std::env::var_os("GAMMARAY_REQUIRE_GUEST").is_none(),
            "debugfs with journal_write is required (GAMMARAY_REQUIRE_GUEST is set)"
        );
        eprintln!(
            "\n*** SKIPPING journal_debugfs: no debugfs with journal_open/journal_write \
             (install e2fsprogs >= 1.43) ***\n"
        );
    }
    ok
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic block contents; `escape` makes it start with the jbd2
/// magic so that jbd2 must escape it.
fn block_data(bs: usize, seed: u64, escape: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<u8> = (0..bs)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    if escape {
        v[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
    }
    v
}

/// One `journal_write`: home blocks (with their data), revokes, committed?
struct Jw {
    homes: Vec<u64>,
    escape_first: bool,
    revokes: Vec<u64>,
    commit: bool,
}

/// What logdump says about one transaction.
#[derive(Debug, Default)]
struct Logged {
    start: u32,
    commit: Option<u32>,
    /// (home, journal block, flags)
    blocks: Vec<(u64, u32, u32)>,
    revoked: Vec<u64>,
}

fn num<T: std::str::FromStr>(s: &str) -> T {
    s.trim_end_matches([',', ':'])
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// Parses `debugfs -R "logdump -a"`: the ground truth.
fn parse_logdump(text: &str) -> BTreeMap<u32, Logged> {
    let mut out: BTreeMap<u32, Logged> = BTreeMap::new();
    let mut cur = None;
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("Found expected sequence") {
            // Found expected sequence S, type T (...) at block B
            let seq: u32 = num(w[3]);
            let ty: u32 = num(w[5]);
            let block: u32 = num(w[w.len() - 1]);
            let e = out.entry(seq).or_insert_with(|| Logged {
                start: block,
                ..Logged::default()
            });
            if ty == 2 {
                e.commit = Some(block);
            }
            cur = Some(seq);
        } else if line.trim_start().starts_with("FS block") {
            // FS block H logged at journal block L (flags 0xF)
            let flags =
                u32::from_str_radix(w[9].trim_start_matches("0x").trim_end_matches(')'), 16)
                    .unwrap();
            let e = out.get_mut(&cur.unwrap()).unwrap();
            e.blocks.push((num(w[2]), num(w[7]), flags));
        } else if line.trim_start().starts_with("Revoke FS block") {
            let e = out.get_mut(&cur.unwrap()).unwrap();
            e.revoked.push(num(w[3]));
        }
    }
    out
}

struct Case {
    name: &'static str,
    block_size: usize,
    mkfs: &'static [&'static str],
    jo: &'static str,
    csum_v3: bool,
    csum_v2: bool,
    bit64: bool,
}

fn check(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let bs = case.block_size;
    run(Command::new("mkfs.ext4")
        .args(["-F", "-q", "-b", &bs.to_string()])
        .args(case.mkfs)
        .arg(&img)
        .arg("64M"));

    // Home blocks are only logged, never replayed, so any numbers do.
    let many: Vec<u64> = (2000..2000 + 3 * (bs as u64 / 16) + 7).collect();
    let writes = [
        Jw {
            homes: vec![333, 334],
            escape_first: false,
            revokes: vec![],
            commit: true,
        },
        Jw {
            homes: vec![],
            escape_first: false,
            revokes: vec![335, 336],
            commit: true,
        },
        Jw {
            homes: vec![400, 401, 400],
            escape_first: true,
            revokes: vec![],
            commit: true,
        },
        Jw {
            homes: many,
            escape_first: true,
            revokes: vec![],
            commit: true,
        },
        // debugfs 1.47 writes no commit block for a `jw` with both -b and
        // -r, so blocks and revokes go in separate transactions.
        Jw {
            homes: vec![500],
            escape_first: false,
            revokes: vec![],
            commit: true,
        },
        Jw {
            homes: vec![],
            escape_first: false,
            revokes: vec![501, 502, 503],
            commit: true,
        },
        Jw {
            homes: vec![600, 601],
            escape_first: false,
            revokes: vec![],
            commit: false,
        },
    ];
    let mut script = format!("{}\n", case.jo);
    let mut wanted: Vec<Vec<Vec<u8>>> = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        let data: Vec<Vec<u8>> = (0..w.homes.len())
            .map(|k| block_data(bs, (i * 10_000 + k) as u64, w.escape_first && k == 0))
            .collect();
        let file = dir.path().join(format!("data{i}"));
        fs::write(&file, data.concat()).unwrap();
        let mut cmd = String::from("jw");
        if !w.homes.is_empty() {
            let list: Vec<String> = w.homes.iter().map(u64::to_string).collect();
            cmd += &format!(" -b {}", list.join(","));
        }
        if !w.revokes.is_empty() {
            let list: Vec<String> = w.revokes.iter().map(u64::to_string).collect();
            cmd += &format!(" -r {}", list.join(","));
        }
        if !w.commit {
            cmd += " -c";
        }
        cmd += &format!(" {}\n", file.display());
        script += &cmd;
        wanted.push(data);
    }
    script += "jc\n";
    let cmds = dir.path().join("cmds");
    fs::write(&cmds, &script).unwrap();
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(&img)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: debugfs failed: {err}", case.name);

    let logdump = run(Command::new("debugfs").args(["-R", "logdump -a"]).arg(&img));
    let truth = parse_logdump(&logdump);
    assert_eq!(
        truth.len(),
        writes.len(),
        "{}: logdump:\n{logdump}",
        case.name
    );

    let journal = read_journal(&img, bs);
    let sb = JournalSuperblock::from_bytes(&journal[0], 0).unwrap();
    assert_eq!(sb.block_size as usize, bs, "{}", case.name);
    assert_eq!(sb.maxlen as usize, journal.len(), "{}", case.name);
    assert_eq!(sb.csum_v3(), case.csum_v3, "{}", case.name);
    assert_eq!(
        sb.csum_v2or3(),
        case.csum_v2 || case.csum_v3,
        "{}",
        case.name
    );
    assert_eq!(sb.is_64bit(), case.bit64, "{}", case.name);
    assert!(
        journal::superblock_checksum_ok(&sb, &journal[0]),
        "{}",
        case.name
    );
    let first = truth.keys().next().copied().unwrap();
    assert_eq!(sb.sequence, first, "{}", case.name);
    assert_eq!(sb.start, truth[&first].start, "{}", case.name);

    let mut read = |l: u32, buf: &mut [u8]| -> Result<()> {
        buf.copy_from_slice(&journal[l as usize]);
        Ok(())
    };
    for ((seq, logged), (w, data)) in truth.iter().zip(writes.iter().zip(&wanted)) {
        let ctx = format!("{} transaction {seq}", case.name);
        let Some(commit) = logged.commit else {
            // Uncommitted: logdump ends where our commit would be, and the
            // walker refuses it.
            assert!(!w.commit, "{ctx}");
            let end = logged.blocks.last().map_or(logged.start, |b| b.1);
            let end = sb.next(end);
            assert!(journal::walk_transaction(&sb, logged.start, *seq, end, &mut read).is_err());
            continue;
        };
        assert!(w.commit, "{ctx}");
        let t: Transaction = journal::walk_transaction(&sb, logged.start, *seq, commit, &mut read)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(t.sequence, *seq, "{ctx}");
        assert_eq!(t.commit, commit, "{ctx}");
        assert_eq!(t.len, commit - logged.start + 1, "{ctx}");
        assert_eq!(t.bad_block_checksums, 0, "{ctx}");
        assert_eq!(t.bad_tag_checksums, 0, "{ctx}");
        let got: Vec<(u64, u32, bool)> = t
            .blocks
            .iter()
            .map(|b| (b.home, b.logical, b.escaped))
            .collect();
        let want: Vec<(u64, u32, bool)> = logged
            .blocks
            .iter()
            .map(|&(h, l, f)| (h, l, f & 1 != 0))
            .collect();
        assert_eq!(got, want, "{ctx}");
        assert_eq!(t.revoked, logged.revoked, "{ctx}");
        // Against what we asked debugfs to write, too.
        let homes: Vec<u64> = t.blocks.iter().map(|b| b.home).collect();
        assert_eq!(homes, w.homes, "{ctx}");
        assert_eq!(t.revoked, w.revokes, "{ctx}");
        for (b, want) in t.blocks.iter().zip(data) {
            let mut copy = journal[b.logical as usize].clone();
            if b.escaped {
                journal::unescape(&mut copy);
            }
            assert!(&copy == want, "{ctx}: copy of home {} differs", b.home);
        }
        if w.escape_first && !w.homes.is_empty() {
            assert!(t.blocks[0].escaped, "{ctx}: first block not escaped");
        }
        // The same transaction rotated round the log so that it wraps from
        // the last journal block back to s_first: same homes, positions
        // rotated likewise.
        let (first, len) = (sb.first, sb.maxlen - sb.first);
        let k = (sb.maxlen - 3 - logged.start) % len;
        let rot = |l: u32| first + (l - first + k) % len;
        let unrot = |l: u32| first + (l - first + len - k) % len;
        let mut rotated = |l: u32, buf: &mut [u8]| -> Result<()> {
            buf.copy_from_slice(&journal[unrot(l) as usize]);
            Ok(())
        };
        let r = journal::walk_transaction(&sb, rot(logged.start), *seq, rot(commit), &mut rotated)
            .unwrap_or_else(|e| panic!("{ctx} rotated: {e}"));
        let got: Vec<(u64, u32)> = r.blocks.iter().map(|b| (b.home, b.logical)).collect();
        let want: Vec<(u64, u32)> = logged.blocks.iter().map(|&(h, l, _)| (h, rot(l))).collect();
        assert_eq!(got, want, "{ctx} rotated");
        assert_eq!((r.len, &r.revoked), (t.len, &t.revoked), "{ctx} rotated");
        assert_eq!(r.bad_tag_checksums, 0, "{ctx} rotated");
        // Damaging the commit block makes the walk fail under checksums.
        if sb.csum_v2or3() {
            let mut bad = |l: u32, buf: &mut [u8]| -> Result<()> {
                buf.copy_from_slice(&journal[l as usize]);
                if l == commit {
                    buf[0x40] ^= 1;
                }
                Ok(())
            };
            assert!(journal::walk_transaction(&sb, logged.start, *seq, commit, &mut bad).is_err());
        }
    }
}

/// The journal inode's blocks, in journal order, as debugfs lists them.
fn read_journal(img: &Path, bs: usize) -> Vec<Vec<u8>> {
    let list = run(Command::new("debugfs").args(["-R", "blocks <8>"]).arg(img));
    let image = fs::read(img).unwrap();
    list.split_whitespace()
        .map(|p| {
            let p: usize = num(p);
            image[p * bs..(p + 1) * bs].to_vec()
        })
        .collect()
}

#[test]
fn csum_v3_64bit_4k() {
    if !have_debugfs() {
        return;
    }
    check(&Case {
        name: "4K metadata_csum, jo -c -v 3",
        block_size: 4096,
        mkfs: &["-O", "metadata_csum"],
        jo: "jo -c -v 3",
        csum_v3: true,
        csum_v2: false,
        bit64: true,
    });
}

#[test]
fn no_csum_32bit_1k() {
    if !have_debugfs() {
        return;
    }
    check(&Case {
        name: "1K ^metadata_csum ^64bit, jo",
        block_size: 1024,
        mkfs: &["-O", "^metadata_csum,^64bit"],
        jo: "jo",
        csum_v3: false,
        csum_v2: false,
        bit64: false,
    });
}

#[test]
fn no_csum_64bit_1k() {
    if !have_debugfs() {
        return;
    }
    check(&Case {
        name: "1K ^metadata_csum, jo",
        block_size: 1024,
        mkfs: &["-O", "^metadata_csum"],
        jo: "jo",
        csum_v3: false,
        csum_v2: false,
        bit64: true,
    });
}

#[test]
fn csum_v2_32bit_4k() {
    if !have_debugfs() {
        return;
    }
    check(&Case {
        name: "4K ^64bit, jo -c -v 2",
        block_size: 4096,
        mkfs: &["-O", "^64bit"],
        jo: "jo -c -v 2",
        csum_v3: false,
        csum_v2: true,
        bit64: false,
    });
}
