//! Entry points for fuzzing, shared by the cargo-fuzz targets in `fuzz/`
//! and the corpus replay test, so a crash found by one is replayed by the
//! other. Each function must return (never panic, never hang) on any
//! input.

use gammaray_core::{FileSystem, NoProgress};

use crate::dir::DirBlock;
use crate::extent::ExtentNode;
use crate::group_desc::GroupDesc;
use crate::indirect::IndirectBlock;
use crate::inode::Inode;
use crate::superblock::{Superblock, SUPERBLOCK_SIZE};
use crate::xattr::InodeXattrs;
use crate::Ext4;

/// Feeds `data` to every structure parser. The first byte picks the
/// block or inode size where a parser needs one.
pub fn parsers(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let block_size = 1024usize << (sel & 3);
    let inode_size = 128usize << ((sel >> 2) & 3);
    if let Ok(sb) = Superblock::from_bytes(rest, 1024) {
        let _ = sb.fs_type();
        let layout = crate::group_desc::Layout::new(&sb);
        // Bounded: only look at the first descriptors of the table.
        let _ = layout.primary_desc_block(&sb, 0);
        if let Some(gd_bytes) = rest.get(SUPERBLOCK_SIZE..) {
            if let Ok(gd) = GroupDesc::from_bytes(gd_bytes, &sb, 0, 2048) {
                let _ = gd.used_inodes(&sb);
            }
        }
        if layout.groups <= 4096 {
            let _ = layout.desc_runs(&sb);
        }
    }
    if let Ok(ino) = Inode::from_bytes(rest, inode_size, 0) {
        let _ = ino.file_type();
        if let Some(x) = InodeXattrs::from_bytes(ino.xattr_area(rest, inode_size), 0) {
            for a in x.iter() {
                let _ = a;
            }
        }
        if let Ok(n) = ExtentNode::from_bytes(&ino.i_block, 0) {
            n.entries().for_each(drop);
        }
    }
    if let Ok(n) = ExtentNode::from_bytes(rest, 0) {
        n.entries().for_each(drop);
    }
    for e in DirBlock::from_bytes(rest, 0, sel & 0x40 != 0, block_size) {
        let _ = e;
    }
    if let Some(x) = InodeXattrs::from_bytes(rest, 0) {
        let _ = x.system_data();
    }
    if let Some(b) = rest.get(..block_size) {
        if let Ok(ib) = IndirectBlock::from_bytes(b, block_size, 0) {
            ib.pointers().for_each(drop);
        }
    }
    // `rest` as a whole journal (block 0 its superblock): the recovery
    // scan; blocks past the data read as zeros (the end of the log).
    if let Ok(jsb) = crate::journal::JournalSuperblock::from_bytes(rest, 0) {
        let bs = jsb.block_size as usize;
        let _ = crate::recovery::scan_log(&jsb, u64::MAX, &mut |l, buf| {
            buf.fill(0);
            let start = (l as usize).saturating_mul(bs);
            if let Some(src) = rest.get(start..start.saturating_add(bs)) {
                if let Some(dst) = buf.get_mut(..src.len()) {
                    dst.copy_from_slice(src);
                }
            }
            Ok(())
        });
    }
}

/// Crawls an image built from `data`: `data` itself when it is at least
/// 2 KiB long (a whole image), else `data` read as patches over `seed`:
/// repeated `[offset: u32 LE][len: u8][len bytes]`, offsets taken modulo
/// the seed's length.
pub fn crawl(seed: &[u8], data: &[u8]) {
    let image: Vec<u8> = if data.len() >= 2048 {
        data.to_vec()
    } else {
        patched(seed, data)
    };
    if let Ok(c) = Ext4.crawl(&image, &NoProgress) {
        // Lookups on the finished map must work too.
        let _ = c.model.blocks.owner(0);
        let _ = c.model.tree.len();
    }
}

/// Applies the patch records of [`crawl`] to a copy of `seed`.
pub fn patched(seed: &[u8], mut data: &[u8]) -> Vec<u8> {
    let mut image = seed.to_vec();
    if image.is_empty() {
        return image;
    }
    while let Some((head, rest)) = data.split_first_chunk::<5>() {
        let [a, b, c, d, n] = *head;
        let off = u32::from_le_bytes([a, b, c, d]) as usize % image.len();
        let n = usize::from(n).min(rest.len());
        let (bytes, rest) = rest.split_at(n);
        for (i, &v) in bytes.iter().enumerate() {
            if let Some(slot) = image.get_mut(off.saturating_add(i)) {
                *slot = v;
            }
        }
        data = rest;
    }
    image
}

/// Expands a sparse image: `[blocks: u32 LE][block size: u32 LE]` then
/// records `[block: u32 LE][block size bytes]` for the blocks that are
/// not all zero. Empty when malformed or larger than 64 MiB. The fuzz
/// seeds that carry a journal are stored this way (a journal is at least
/// 1024 blocks, mostly zeros).
pub fn unsparse(sparse: &[u8]) -> Vec<u8> {
    const MAX: u64 = 64 << 20;
    let (Some(n), Some(bs)) = (le32(sparse, 0), le32(sparse, 4)) else {
        return Vec::new();
    };
    let (n, bs) = (u64::from(n), u64::from(bs));
    let total = n.saturating_mul(bs);
    if bs == 0 || total > MAX {
        return Vec::new();
    }
    let bsz = bs as usize;
    let mut image = vec![0u8; total as usize];
    let mut rest = sparse.get(8..).unwrap_or(&[]);
    while let Some(b) = le32(rest, 0) {
        let Some(src) = rest.get(4..4 + bsz) else {
            break;
        };
        let at = u64::from(b) * bs;
        if let Some(dst) = image.get_mut(at as usize..at as usize + bsz) {
            dst.copy_from_slice(src);
        }
        rest = &rest[4 + bsz..];
    }
    image
}

/// The inverse of [`unsparse`].
pub fn sparse(image: &[u8], bs: usize) -> Vec<u8> {
    let n = image.len() / bs.max(1);
    let mut out = Vec::new();
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&(bs as u32).to_le_bytes());
    for (i, b) in image.chunks_exact(bs.max(1)).enumerate() {
        if b.iter().any(|&x| x != 0) {
            out.extend_from_slice(&(i as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
    out
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Builders of well-formed jbd2 blocks (as the kernel writes them), for
/// the inference fuzz target and the hostile-input tests.
pub mod jbd2 {
    use crate::csum::crc32c_raw;
    use crate::journal::{block_type, tag_flags, JournalSuperblock, HEADER_SIZE, JBD2_MAGIC};

    fn put32(b: &mut [u8], off: usize, v: u32) {
        if let Some(s) = b.get_mut(off..off + 4) {
            s.copy_from_slice(&v.to_be_bytes());
        }
    }

    /// A block of `kind` (a [`block_type`]) for transaction `seq`.
    pub fn header(sb: &JournalSuperblock, kind: u32, seq: u32) -> Vec<u8> {
        let mut b = vec![0u8; sb.block_size as usize];
        put32(&mut b, 0, JBD2_MAGIC);
        put32(&mut b, 4, kind);
        put32(&mut b, 8, seq);
        b
    }

    /// A commit block for `seq`, with its checksum when the journal has
    /// csum v2/v3.
    pub fn commit(sb: &JournalSuperblock, seq: u32) -> Vec<u8> {
        let mut b = header(sb, block_type::COMMIT, seq);
        if sb.csum_v2or3() {
            // The checksum field (0x10) is zero while summing.
            let c = crc32c_raw(sb.csum_seed, &b);
            put32(&mut b, 0x10, c);
        }
        b
    }

    /// A descriptor for `seq` logging `blocks` (home, contents); returns
    /// it and the blocks as stored in the log (escaped where they start
    /// with the magic). Tags that do not fit one block are left out.
    pub fn descriptor(
        sb: &JournalSuperblock,
        seq: u32,
        blocks: &[(u64, Vec<u8>)],
    ) -> (Vec<u8>, Vec<Vec<u8>>) {
        let bs = sb.block_size as usize;
        let mut b = header(sb, block_type::DESCRIPTOR, seq);
        let tail = if sb.csum_v2or3() { 4 } else { 0 };
        let tb = sb.tag_bytes();
        let mut p = HEADER_SIZE;
        let mut logged = Vec::new();
        for (i, (home, data)) in blocks.iter().enumerate() {
            let uuid = if i == 0 { 16 } else { 0 };
            if p + tb + uuid + tail > bs {
                break;
            }
            let mut d = data.clone();
            d.resize(bs, 0);
            let mut flags = if i == 0 { 0 } else { tag_flags::SAME_UUID };
            if d.get(..4) == Some(&JBD2_MAGIC.to_be_bytes()[..]) {
                flags |= tag_flags::ESCAPE;
                d[..4].fill(0);
            }
            let last = i + 1 == blocks.len() || p + 2 * tb + uuid + tail > bs;
            if last {
                flags |= tag_flags::LAST_TAG;
            }
            let c = crc32c_raw(crc32c_raw(sb.csum_seed, &seq.to_be_bytes()), &d);
            put32(&mut b, p, *home as u32);
            if sb.csum_v3() {
                put32(&mut b, p + 4, flags);
                put32(&mut b, p + 8, (*home >> 32) as u32);
                put32(&mut b, p + 12, c);
            } else {
                let v = ((c & 0xFFFF) << 16) | (flags & 0xFFFF);
                put32(&mut b, p + 4, if sb.csum_v2or3() { v } else { flags });
                if sb.is_64bit() {
                    put32(&mut b, p + 8, (*home >> 32) as u32);
                }
            }
            p += tb;
            if uuid > 0 {
                if let Some(u) = b.get_mut(p..p + 16) {
                    u.copy_from_slice(&sb.uuid);
                }
                p += 16;
            }
            logged.push(d);
            if last {
                break;
            }
        }
        if tail > 0 {
            let t = bs - 4;
            let c = crc32c_raw(sb.csum_seed, &b[..t]);
            let c = crc32c_raw(c, &[0u8; 4]);
            put32(&mut b, t, c);
        }
        (b, logged)
    }
}

/// Whether two models hold the same files, names (in any order), inline
/// data and block map.
fn same_model(a: &gammaray_core::FsModel, b: &gammaray_core::FsModel) -> bool {
    let names = |m: &gammaray_core::FsModel| {
        let mut v: Vec<(u64, Vec<u8>, u64)> = m
            .tree
            .dirs()
            .flat_map(|(d, es)| es.iter().map(move |e| (d, e.name.to_vec(), e.child)))
            .collect();
        v.sort();
        v
    };
    a.files == b.files && a.inline == b.inline && a.blocks == b.blocks && names(a) == names(b)
}

/// Follows a stream of writes built from `data` over `image` (a whole
/// ext4 image): the driving loop of the engine (infer against the disk
/// before the write, then apply it to an overlay), with ticks. `data` is
/// a sequence of records, each a kind byte and its arguments:
///
/// - `0..=3`: a plain write: `[block: u16][offset: u16][n: u8][n bytes]`
///   at `block` modulo the image's blocks, `offset` modulo the block size;
///   the kind's high nibble repeats the bytes (a longer write), bit 3
///   makes it FUA (home metadata is applied at a flush or FUA);
/// - `4`: a whole jbd2 transaction at the journal's head: `[k: u8]` then
///   `k % 4 + 1` times `[home: u16][offset: u16][n: u8][n bytes]`, each
///   the home block's current contents patched; a descriptor, the logged
///   blocks and a well-formed commit block (bit 4 of the kind leaves the
///   commit out, bit 5 gives it the wrong sequence);
/// - `5`: a lone commit block `[delta: i8]` sequences from the next one;
/// - `6`: a tick `[ms: u16]` later;
/// - `7`: an odd request `[which: u8][block: u16][len: u16]`: discard,
///   write-zeroes, past the end, data shorter than its length.
///
/// At the end the inference settles (the stream ended). Invariants
/// checked (a panic is a finding): the bytes held for unknown blocks never
/// exceed the budget; a second inference under the lazy-load policy, with
/// a budget that evicts nearly everything after each write, gives the same
/// events write for write and ends with the same model. Returns the inference's counters at the
/// end (none when the image does not crawl).
pub fn infer(image: &[u8], data: &[u8]) -> Vec<gammaray_core::Counter> {
    use crate::infer::Ext4Inference;
    use crate::journal::JournalSuperblock;
    use bytes::Bytes;
    use gammaray_core::blockmap::Owner;
    use gammaray_core::overlay::OverlayDevice;
    use gammaray_core::{BlockDevice, DiskWrite, InferConfig, Inference, WriteFlags};

    let Ok(c) = Ext4.crawl(&image, &NoProgress) else {
        return Vec::new();
    };
    let bs = u64::from(c.model.block_size);
    let size = image.len() as u64;
    if bs == 0 || size < bs {
        return Vec::new();
    }
    let nblocks = size / bs;
    // Journal logical -> physical, and its superblock.
    let mut jmap: Vec<(u64, u64, u64)> = Vec::new();
    for r in c.model.blocks.runs() {
        if let Owner::Journal { logical } = r.owner {
            jmap.push((logical, r.start, r.len));
        }
    }
    jmap.sort_unstable();
    let jphys = |l: u64| -> Option<u64> {
        let i = jmap.partition_point(|r| r.0 <= l).checked_sub(1)?;
        let &(ls, ps, n) = jmap.get(i)?;
        (l < ls + n).then(|| ps + (l - ls))
    };
    let jsb = jphys(0).and_then(|p| {
        let b = image.get((p * bs) as usize..((p + 1) * bs) as usize)?;
        JournalSuperblock::from_bytes(b, p * bs).ok()
    });
    let mut jhead = jsb.map_or(0, |j| if j.start == 0 { j.first } else { j.start });
    let mut jseq = jsb.map_or(0, |j| j.sequence);

    const BUDGET: u64 = 64 << 10;
    let cfg = InferConfig {
        unknown_ttl_ns: 50_000_000,
        unknown_budget_bytes: BUDGET,
        max_event_data: 4096,
        lazy_budget_bytes: None,
    };
    // The same stream is followed twice: with the model resident, and
    // under the lazy-load policy with a budget so small that nearly every
    // file is evicted after each write and loaded back from the scratch
    // store. Both must give the same events and end with the same model.
    let lazy_cfg = InferConfig {
        lazy_budget_bytes: Some(1),
        ..cfg
    };
    let Ok(lazy) = Ext4Inference::new(&image, c.model.clone(), &lazy_cfg) else {
        return Vec::new();
    };
    let Ok(inf) = Ext4Inference::new(&image, c.model, &cfg) else {
        return Vec::new();
    };
    struct Driver {
        inf: Ext4Inference,
        lazy: Ext4Inference,
        ov: OverlayDevice,
        out: Vec<gammaray_core::FileEvent>,
        lazy_out: Vec<gammaray_core::FileEvent>,
        seq: u64,
        now: u64,
    }
    impl Driver {
        fn send(&mut self, mut w: DiskWrite) {
            self.seq += 1;
            w.seq = self.seq;
            w.ts_ns = self.now;
            self.inf.write(&self.ov, &w, &mut self.out);
            self.lazy.write(&self.ov, &w, &mut self.lazy_out);
            self.ov.apply(&w);
            assert!(
                self.inf.stats().unknown_held_bytes <= BUDGET,
                "held over budget"
            );
            self.same_events();
        }
        fn tick(&mut self) {
            self.inf.tick(&self.ov, self.now, &mut self.out);
            self.lazy.tick(&self.ov, self.now, &mut self.lazy_out);
            self.same_events();
        }
        fn same_events(&mut self) {
            assert_eq!(self.out, self.lazy_out, "lazy load changed the events");
            self.out.clear();
            self.lazy_out.clear();
        }
    }
    let mut dr = Driver {
        inf,
        lazy,
        ov: OverlayDevice::new(Box::new(image.to_vec())),
        out: Vec::new(),
        lazy_out: Vec::new(),
        seq: 0,
        now: 1_000_000_000,
    };
    let mut d = data;
    let mut take = |n: usize| -> Option<&[u8]> {
        let n = n.min(d.len());
        let (a, b) = d.split_at(n);
        d = b;
        (n > 0).then_some(a)
    };
    let u16_of = |b: Option<&[u8]>| -> u64 {
        b.map_or(0, |b| {
            u64::from(b[0]) | u64::from(b.get(1).copied().unwrap_or(0)) << 8
        })
    };
    // A patch `[block][offset][n][bytes]` over a block's current contents.
    let mut steps = 0;
    while let Some(&[kind]) = take(1) {
        steps += 1;
        if steps > 512 {
            break;
        }
        match kind & 7 {
            0..=3 => {
                let block = u16_of(take(2)) % nblocks;
                let off = u16_of(take(2)) % bs;
                let n = take(1).map_or(0, |b| usize::from(b[0]));
                let bytes = take(n).unwrap_or(&[]);
                let reps = usize::from(kind >> 4) + 1;
                let buf: Vec<u8> = bytes.repeat(reps);
                if buf.is_empty() {
                    continue;
                }
                let at = block * bs + off;
                let buf = &buf[..buf.len().min((size - at) as usize)];
                let mut w = DiskWrite::write(0, at, Bytes::copy_from_slice(buf));
                if kind & 8 != 0 {
                    // Durable at once: applies home metadata written so far.
                    w.flags = WriteFlags::FUA;
                }
                dr.send(w);
            }
            4 | 5 => {
                let Some(j) = jsb else { continue };
                let mut blocks: Vec<(u64, Vec<u8>)> = Vec::new();
                let mut commit_seq = jseq;
                if kind & 7 == 4 {
                    let k = take(1).map_or(0, |b| b[0] % 4) + 1;
                    for _ in 0..k {
                        let home = u16_of(take(2)) % nblocks;
                        let off = (u16_of(take(2)) % bs) as usize;
                        let n = take(1).map_or(0, |b| usize::from(b[0]));
                        let bytes = take(n).unwrap_or(&[]);
                        let mut cur = vec![0u8; bs as usize];
                        let _ = dr.ov.read_at(home * bs, &mut cur);
                        let end = (off + bytes.len()).min(cur.len());
                        cur[off..end].copy_from_slice(&bytes[..end - off]);
                        blocks.push((home, cur));
                    }
                    if kind & 0x20 != 0 {
                        commit_seq = commit_seq.wrapping_add(7);
                    }
                } else {
                    let delta = take(1).map_or(0, |b| b[0] as i8);
                    commit_seq = commit_seq.wrapping_add(delta as u32);
                }
                let mut log: Vec<Vec<u8>> = Vec::new();
                if !blocks.is_empty() {
                    let (desc, logged) = jbd2::descriptor(&j, jseq, &blocks);
                    log.push(desc);
                    log.extend(logged);
                }
                if kind & 0x10 == 0 || kind & 7 == 5 {
                    log.push(jbd2::commit(&j, commit_seq));
                }
                for b in log {
                    let Some(p) = jphys(u64::from(jhead)) else {
                        break;
                    };
                    dr.send(DiskWrite::write(0, p * bs, Bytes::from(b)));
                    jhead = j.next(jhead);
                }
                jseq = jseq.wrapping_add(1);
            }
            6 => {
                dr.now += u16_of(take(2)) * 1_000_000;
                dr.tick();
            }
            _ => {
                let which = take(1).map_or(0, |b| b[0]);
                let block = u16_of(take(2));
                let len = u16_of(take(2));
                let mut w = DiskWrite {
                    offset: (block % (nblocks + 2)) * bs,
                    len: len * 64,
                    ..DiskWrite::default()
                };
                match which % 4 {
                    0 => w.flags = WriteFlags::DISCARD,
                    1 => w.flags = WriteFlags::ZEROES,
                    2 => w.data = Bytes::from(vec![0xAB; (len % 4096) as usize]),
                    _ => {
                        w.offset = size.saturating_sub(len);
                        w.data = Bytes::from(vec![0xCD; 4096]);
                        w.len = 4096;
                    }
                }
                dr.send(w);
            }
        }
    }
    dr.inf.settle(&dr.ov, &mut dr.out);
    dr.lazy.settle(&dr.ov, &mut dr.lazy_out);
    dr.same_events();
    assert!(
        same_model(&dr.inf.model(), &dr.lazy.model()),
        "lazy load changed the model"
    );
    dr.inf.counters()
}
