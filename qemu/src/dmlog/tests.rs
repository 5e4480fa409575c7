use super::*;
use bytes::Bytes;
use gammaray_core::write::{DiskWrite, WriteFlags};
use std::io::{Seek, SeekFrom, Write};

fn sample() -> Vec<DiskWrite> {
    let mut v = vec![
        DiskWrite::write(0, 4096, Bytes::from(vec![0xab; 4096])),
        DiskWrite::write(1, 0, Bytes::from(vec![0x11; 8192])),
        DiskWrite::flush(2),
    ];
    let mut fua = DiskWrite::write(3, 12288, Bytes::from(vec![0x22; 4096]));
    fua.flags = WriteFlags::FUA;
    v.push(fua);
    v.push(DiskWrite {
        seq: 4,
        offset: 1 << 20,
        len: 1 << 16,
        flags: WriteFlags::DISCARD,
        ..Default::default()
    });
    v.push(DiskWrite {
        seq: 5,
        offset: 0,
        len: 4,
        data: Bytes::from_static(b"mark"),
        flags: WriteFlags::MARK,
        ..Default::default()
    });
    v
}

fn roundtrip(ss: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.log");
    let mut w = TraceWriter::create(&path, ss).unwrap();
    for d in sample() {
        w.append(&d).unwrap();
    }
    assert_eq!(w.finish().unwrap(), 6);
    let r = TraceReader::open(&path).unwrap();
    assert_eq!(
        r.super_block(),
        Super {
            nr_entries: 6,
            sector_size: ss
        }
    );
    let got: Vec<_> = r.map(|e| e.unwrap().write).collect();
    assert_eq!(got, sample());
}

#[test]
fn roundtrip_512() {
    roundtrip(512);
}

#[test]
fn roundtrip_4096() {
    roundtrip(4096);
}

#[test]
fn sector_units_are_log_sectors() {
    // With 4096-byte log sectors a write at byte 8192 is sector 2 (as the
    // kernel's bio_to_dev_sectors and QEMU's offset >> sectorbits store it).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.log");
    let mut w = TraceWriter::create(&path, 4096).unwrap();
    w.append(&DiskWrite::write(0, 8192, Bytes::from(vec![1; 4096])))
        .unwrap();
    w.finish().unwrap();
    let raw = std::fs::read(&path).unwrap();
    assert_eq!(raw.len(), 3 * 4096);
    assert_eq!(u64::from_le_bytes(raw[4096..4104].try_into().unwrap()), 2);
    assert_eq!(u64::from_le_bytes(raw[4104..4112].try_into().unwrap()), 1);
}

#[test]
fn zeroes_leave_hole_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.log");
    let mut w = TraceWriter::create(&path, 512).unwrap();
    let big = MAX_ENTRY_DATA + 4096;
    w.append(&DiskWrite {
        seq: 0,
        offset: 0,
        len: big,
        flags: WriteFlags::ZEROES,
        ..Default::default()
    })
    .unwrap();
    w.append(&DiskWrite {
        seq: 1,
        offset: 0,
        len: 1024,
        flags: WriteFlags::ZEROES,
        ..Default::default()
    })
    .unwrap();
    w.finish().unwrap();
    let got: Vec<_> = TraceReader::open(&path)
        .unwrap()
        .map(|e| e.unwrap().write)
        .collect();
    // An oversized all-zero entry comes back as write-zeroes, without allocation.
    assert_eq!(got[0].flags, WriteFlags::ZEROES);
    assert_eq!(got[0].len, big);
    assert!(got[0].data.is_empty());
    // A small one comes back as a write of zeroes.
    assert_eq!(got[1].data, Bytes::from(vec![0u8; 1024]));
}

#[test]
fn unaligned_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TraceWriter::create(&dir.path().join("t"), 4096).unwrap();
    let e = w
        .append(&DiskWrite::write(0, 512, Bytes::from(vec![0; 512])))
        .unwrap_err();
    assert!(
        matches!(
            e,
            TraceError::Unaligned {
                offset: 512,
                len: 512,
                sector_size: 4096
            }
        ),
        "{e}"
    );
}

fn write_file(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.log");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn good_log() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.log");
    let mut w = TraceWriter::create(&path, 512).unwrap();
    for d in sample() {
        w.append(&d).unwrap();
    }
    w.finish().unwrap();
    std::fs::read(&path).unwrap()
}

fn first_error(bytes: &[u8]) -> TraceError {
    let (_d, path) = write_file(bytes);
    match TraceReader::open(&path) {
        Err(e) => e,
        Ok(r) => {
            let mut errs = r.filter_map(|e| e.err());
            errs.next().expect("an error")
        }
    }
}

#[test]
fn corrupt_magic() {
    let mut b = good_log();
    b[0] ^= 1;
    assert!(matches!(first_error(&b), TraceError::BadMagic { found } if found == MAGIC ^ 1));
}

#[test]
fn corrupt_version() {
    let mut b = good_log();
    b[8] = 2;
    assert!(matches!(
        first_error(&b),
        TraceError::BadVersion { found: 2 }
    ));
}

#[test]
fn corrupt_sector_size() {
    let mut b = good_log();
    b[24..28].copy_from_slice(&1000u32.to_le_bytes());
    assert!(matches!(
        first_error(&b),
        TraceError::BadSectorSize { found: 1000 }
    ));
}

#[test]
fn corrupt_flags_names_entry_and_offset() {
    let mut b = good_log();
    // Entry 1 starts after the super (512) + entry 0 (512 + 4096).
    let at = 512 + 512 + 4096;
    b[at + 16] = 0x40;
    let e = first_error(&b);
    assert!(
        matches!(
            e,
            TraceError::BadFlags {
                entry: 1,
                offset: 5120,
                flags: 0x40
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "trace entry 1 at byte 5120: invalid flags 0x40"
    );
}

#[test]
fn corrupt_huge_length_is_not_allocated() {
    let mut b = good_log();
    let at = 512 + 512 + 4096;
    b[at + 8..at + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = first_error(&b);
    // 2^40 sectors of 512 bytes: far beyond the file; reported as truncated
    // before any allocation.
    assert!(
        matches!(
            e,
            TraceError::Truncated {
                entry: 1,
                offset: 5120,
                ..
            }
        ),
        "{e}"
    );
    b[at + 8..at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = first_error(&b);
    assert!(
        matches!(
            e,
            TraceError::RangeOverflow {
                entry: 1,
                offset: 5120,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn oversized_nonzero_entry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.log");
    let mut w = TraceWriter::create(&path, 512).unwrap();
    let n = MAX_ENTRY_DATA + 512;
    w.append(&DiskWrite {
        seq: 0,
        offset: 0,
        len: n,
        flags: WriteFlags::ZEROES,
        ..Default::default()
    })
    .unwrap();
    w.finish().unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(1024 + 12345)).unwrap();
    f.write_all(&[1]).unwrap();
    drop(f);
    let e = TraceReader::open(&path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(e, TraceError::EntryTooLarge { entry: 0, offset: 512, len } if len == n),
        "{e}"
    );
}

#[test]
fn mark_too_long() {
    let mut b = good_log();
    // Entry 5 (the mark) is the last sector.
    let at = b.len() - 512;
    b[at + 24..at + 32].copy_from_slice(&1000u64.to_le_bytes());
    let e = first_error(&b);
    assert!(
        matches!(
            e,
            TraceError::BadMarkLen {
                entry: 5,
                data_len: 1000,
                sector_size: 512,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn truncated_log() {
    let b = good_log();
    let e = first_error(&b[..b.len() - 600]);
    assert!(
        matches!(
            e,
            TraceError::Truncated {
                entry: 4,
                offset: 18944,
                needed: 512,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        first_error(&b[..10]),
        TraceError::TooShort { len: 10 }
    ));
}

#[test]
fn stale_super_count_and_past_super_option() {
    let mut b = good_log();
    b[16..24].copy_from_slice(&2u64.to_le_bytes());
    let (_d, path) = write_file(&b);
    assert_eq!(TraceReader::open(&path).unwrap().count(), 2);
    let opts = ReadOptions {
        past_super_count: true,
        tail: None,
    };
    let r = TraceReader::with_options(std::fs::File::open(&path).unwrap(), opts).unwrap();
    assert_eq!(r.filter(|e| e.is_ok()).count(), 6);
}

#[test]
fn tail_follows_growing_log() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.log");
    let mut w = TraceWriter::create(&path, 512).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let opts = ReadOptions {
        past_super_count: false,
        tail: Some(TailOptions {
            poll: std::time::Duration::from_millis(5),
            stop: stop.clone(),
        }),
    };
    let p2 = path.clone();
    let reader = std::thread::spawn(move || {
        let r = TraceReader::with_options(std::fs::File::open(&p2).unwrap(), opts).unwrap();
        r.map(|e| e.unwrap().write.seq).collect::<Vec<_>>()
    });
    for i in 0..50u64 {
        w.append(&DiskWrite::write(
            i,
            i * 512,
            Bytes::from(vec![i as u8; 512]),
        ))
        .unwrap();
        if i % 7 == 0 {
            w.sync_super().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    w.finish().unwrap();
    stop.store(true, Ordering::Release);
    assert_eq!(reader.join().unwrap(), (0..50).collect::<Vec<_>>());
}

#[test]
fn assembler_in_order_out_of_order_and_split() {
    let log = good_log();
    let ss = 512usize;
    let expect = sample();
    // In order, one sector at a time.
    let mut a = LogAssembler::new(512).unwrap();
    let mut got = Vec::new();
    for (i, c) in log.chunks(ss).enumerate() {
        got.extend(a.write((i * ss) as u64, Bytes::copy_from_slice(c)).unwrap());
    }
    assert_eq!(got, expect);
    assert!(a.is_idle());
    assert_eq!(a.stats().super_nr_entries, 6);
    // Reversed order: nothing completes until the gap after the super fills.
    let mut a = LogAssembler::new(512).unwrap();
    let mut got = Vec::new();
    let chunks: Vec<_> = log.chunks(1000).enumerate().collect();
    for (i, c) in chunks.iter().rev() {
        got.extend(
            a.write((i * 1000) as u64, Bytes::copy_from_slice(c))
                .unwrap(),
        );
    }
    assert_eq!(got, expect);
    // Reads of sector 0 return the super last written.
    assert_eq!(&a.read(0, 512)[..], &log[..512]);
}

#[test]
fn assembler_zero_data_becomes_write_zeroes() {
    let mut a = LogAssembler::new(512).unwrap();
    let mut hdr = vec![0u8; 512];
    EntryHeader {
        sector: 8,
        nr_sectors: 1 << 20,
        flags: 0,
        data_len: 0,
    }
    .write_to(&mut hdr);
    assert!(a.write(512, Bytes::from(hdr)).unwrap().is_empty());
    let got = a.write_zeroes(1024, 512 << 20).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].flags, WriteFlags::ZEROES);
    assert_eq!((got[0].offset, got[0].len), (4096, 512 << 20));
}

#[test]
fn assembler_rejects_garbage() {
    let mut a = LogAssembler::new(512).unwrap();
    let mut hdr = vec![0u8; 512];
    EntryHeader {
        sector: 0,
        nr_sectors: 0,
        flags: 0x100,
        data_len: 0,
    }
    .write_to(&mut hdr);
    let e = a.write(512, Bytes::from(hdr)).unwrap_err();
    assert!(
        matches!(
            e,
            TraceError::BadFlags {
                entry: 0,
                offset: 512,
                flags: 0x100
            }
        ),
        "{e}"
    );
    let mut a = LogAssembler::new(512).unwrap();
    a.write(4096, Bytes::from(vec![0u8; 512])).unwrap();
    let e = a.write(4000, Bytes::from(vec![0u8; 512])).unwrap_err();
    assert!(matches!(e, TraceError::Stream { offset: 4000, .. }), "{e}");
    let mut bad_super = Super {
        nr_entries: 0,
        sector_size: 512,
    }
    .to_sector();
    bad_super[24..28].copy_from_slice(&4096u32.to_le_bytes());
    let e = a.write(0, Bytes::from(bad_super)).unwrap_err();
    assert!(matches!(e, TraceError::Stream { offset: 0, .. }), "{e}");
}
