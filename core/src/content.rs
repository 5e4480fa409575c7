//! Reading a file's contents through the block map (and inline data).
//!
//! This is how `--hash` proves the map right: the bytes come only from the
//! blocks the map says a file owns, with holes and unwritten extents read as
//! zeroes and the result clipped to the file's size.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::blockmap::Owner;
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::model::{FileId, FsModel};

/// Files larger than this are not hashed: a guest can declare a sparse file
/// of exabytes, and hashing its zeroes would never end.
pub const MAX_HASH_BYTES: u64 = 64 << 30;
/// Largest single read issued while streaming a file.
const CHUNK: u64 = 1 << 20;

/// One contiguous piece of a file: `len` blocks from logical block `logical`
/// stored at physical block `phys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub logical: u64,
    /// First physical block.
    pub phys: u64,
    /// Number of blocks.
    pub len: u64,
    /// Reads as zeroes (allocated, unwritten).
    pub unwritten: bool,
}

/// Every file's data extents, gathered from the block map in one pass.
#[derive(Debug, Default)]
pub struct ContentIndex {
    files: HashMap<FileId, Vec<Extent>>,
}

impl ContentIndex {
    /// Groups the model's `FileData` and `Unwritten` runs by file, sorted by
    /// logical block.
    pub fn build(model: &FsModel) -> Self {
        let mut files: HashMap<FileId, Vec<Extent>> = HashMap::new();
        for run in model.blocks.runs() {
            let (file, logical, unwritten) = match run.owner {
                Owner::FileData { file, logical } => (file, logical, false),
                Owner::Unwritten { file, logical } => (file, logical, true),
                _ => continue,
            };
            files.entry(file).or_default().push(Extent {
                logical,
                phys: run.start,
                len: run.len,
                unwritten,
            });
        }
        for extents in files.values_mut() {
            extents.sort_by_key(|e| e.logical);
        }
        ContentIndex { files }
    }

    /// The extents of `file`, sorted by logical block.
    pub fn extents(&self, file: FileId) -> &[Extent] {
        self.files.get(&file).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Streams the first `size` bytes of `file` to `out`, in order.
    pub fn read_file(
        &self,
        dev: &dyn BlockDevice,
        model: &FsModel,
        file: FileId,
        size: u64,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        if let Some(data) = model.inline.get(&file) {
            let have = (data.len() as u64).min(size) as usize;
            out(&data[..have]);
            return emit_zeroes(size - have as u64, out);
        }
        let bs = u64::from(model.block_size);
        let mut pos = 0u64; // bytes emitted so far
        let mut buf = Vec::new();
        for e in self.extents(file) {
            if pos >= size {
                break;
            }
            let start = e.logical.saturating_mul(bs);
            if start < pos {
                // Overlapping logical ranges: corrupt metadata.
                return Err(Error::corrupt(
                    "file extent map",
                    e.phys.saturating_mul(bs),
                    format!(
                        "file {file}: logical block {} overlaps an earlier extent",
                        e.logical
                    ),
                ));
            }
            emit_zeroes(start.min(size) - pos, out)?;
            pos = start.min(size);
            let mut done = 0u64;
            let bytes = e.len.saturating_mul(bs);
            while done < bytes && pos < size {
                let n = (bytes - done).min(CHUNK).min(size - pos);
                buf.resize(n as usize, 0);
                if e.unwritten {
                    buf.fill(0);
                } else {
                    dev.read_at(e.phys.saturating_mul(bs).saturating_add(done), &mut buf)?;
                }
                out(&buf);
                done += n;
                pos += n;
            }
        }
        emit_zeroes(size.saturating_sub(pos), out)
    }

    /// SHA-256 of `file`'s first `size` bytes, or `None` when the file is
    /// larger than [`MAX_HASH_BYTES`].
    pub fn sha256(
        &self,
        dev: &dyn BlockDevice,
        model: &FsModel,
        file: FileId,
        size: u64,
    ) -> Result<Option<[u8; 32]>> {
        if size > MAX_HASH_BYTES {
            return Ok(None);
        }
        let mut h = Sha256::new();
        self.read_file(dev, model, file, size, &mut |b| h.update(b))?;
        Ok(Some(h.finalize().into()))
    }
}

fn emit_zeroes(mut n: u64, out: &mut dyn FnMut(&[u8])) -> Result<()> {
    static ZERO: [u8; 65536] = [0u8; 65536];
    while n > 0 {
        let k = n.min(ZERO.len() as u64) as usize;
        out(&ZERO[..k]);
        n -= k as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_and_unwritten_extents_read_as_zeroes_and_size_clips() {
        let mut disk = vec![0u8; 16 * 4];
        disk[8..12].copy_from_slice(b"AAAA"); // block 2
        disk[20..24].copy_from_slice(b"BBBB"); // block 5
        disk[24..28].copy_from_slice(b"CCCC"); // block 6 (unwritten)
        let mut m = FsModel::new("test", 4, 2);
        m.blocks.push(
            2,
            1,
            Owner::FileData {
                file: 7,
                logical: 0,
            },
        );
        m.blocks.push(
            5,
            1,
            Owner::FileData {
                file: 7,
                logical: 2,
            },
        );
        m.blocks.push(
            6,
            1,
            Owner::Unwritten {
                file: 7,
                logical: 3,
            },
        );
        m.blocks.finish();
        let idx = ContentIndex::build(&m);
        let mut got = Vec::new();
        idx.read_file(&disk, &m, 7, 15, &mut |b| got.extend_from_slice(b))
            .unwrap();
        assert_eq!(got, b"AAAA\0\0\0\0BBBB\0\0\0");
    }
}
