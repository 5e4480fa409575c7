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
