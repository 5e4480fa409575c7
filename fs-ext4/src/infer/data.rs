//! File data: writes to known data blocks, and the byte ranges a
//! transaction makes valid (appends, filled holes, new files).

use bytes::Bytes;
use gammaray_core::model::FileType;
use gammaray_core::{BlockDevice, DiskWrite, EventKind, FileEvent, LostReason};
use rustc_hash::FxHashMap as HashMap;

use super::pending::Held;
use super::Ext4Inference;

/// Events about a hard-linked file go to at most this many of its names.
pub const MAX_LINK_PATHS: usize = 16;

/// A file's mapping: `(first logical, first physical, count, written)`,
/// sorted by logical block.
pub(crate) type FileMap = Vec<(u64, u64, u64, bool)>;

/// How a range that a transaction made valid is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeKind {
    /// Bytes past the old size: reported exactly (an append).
    Grow,
    /// Blocks newly mapped inside the old size: leading and trailing zero
    /// bytes (what the hole read as before) are trimmed.
    Fill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Data,
    Hole,
    Lost(LostReason),
}

fn lookup(map: &FileMap, logical: u64) -> Option<(u64, bool)> {
    let idx = map.partition_point(|r| r.0 <= logical);
    let &(l, p, n, written) = map.get(idx.checked_sub(1)?)?;
    (logical < l + n).then(|| (p + (logical - l), written))
}

/// First logical block after `logical` where a run of `map` starts.
fn next_mapped(map: &FileMap, logical: u64) -> Option<u64> {
    map.get(map.partition_point(|r| r.0 <= logical))
        .map(|r| r.0)
}

/// The part of a write to a file's data blocks that lies inside the file.
struct Inside {
    /// The file's size.
    size: u64,
    /// First byte of the part, on the partition.
    lo: u64,
    /// Its offset in the file.
    fo: u64,
    /// Its length.
    n: u64,
}

impl Ext4Inference {
    /// The part of write `w` to blocks `[s, e)`, which hold regular file
    /// `file`'s data from logical block `logical`, that lies inside the
    /// file's size; marks the file as having data written. `None` for
    /// other file types or a write wholly past the end.
    fn inside(&mut self, w: &DiskWrite, s: u64, e: u64, file: u64, logical: u64) -> Option<Inside> {
        let bs = self.bs;
        // Lazy load: the record, and the paths the events need.
        self.load_paths(&[file]);
        let rec = self.model.files.get(&file)?;
        if rec.ftype != FileType::File {
            return None;
        }
        let size = rec.size;
        self.data_dirty.insert(file);
        let lo = (s * bs).max(w.offset);
        let hi = (e * bs).min(w.offset + w.len);
        let fo = logical.saturating_mul(bs).saturating_add(lo - s * bs);
        if fo >= size || lo >= hi {
            return None;
        }
        Some(Inside {
            size,
            lo,
            fo,
            n: (hi - lo).min(size - fo),
        })
    }

    /// A write to blocks `[s, e)`, which hold `file`'s data from logical
    /// block `logical`: report the bytes inside the file's size that
    /// changed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn data_write(
        &mut self,
        before: &dyn BlockDevice,
        w: &DiskWrite,
        data: &Bytes,
        s: u64,
        e: u64,
        file: u64,
        logical: u64,
        out: &mut Vec<FileEvent>,
    ) {
        let Some(Inside { size, lo, fo, n }) = self.inside(w, s, e, file, logical) else {
            return;
        };
        let n = n as usize;
        let a = (lo - w.offset) as usize;
        let Some(new) = data.get(a..a + n) else {
            return;
        };
        let mut old = vec![0u8; n];
        let (i, j) = if before.read_at(lo, &mut old).is_ok() {
            match (
                new.iter().zip(&old).position(|(x, y)| x != y),
                new.iter().zip(&old).rposition(|(x, y)| x != y),
            ) {
                (Some(i), Some(j)) => (i, j),
                _ => return,
            }
        } else {
            (0, n - 1)
        };
        let path = self.parents.path(file, self.model.root);
        let bytes = data.slice(a + i..a + j + 1);
        let first_event = out.len();
        self.emit_bytes(&path, file, size, fo + i as u64, bytes, w.ts_ns, out);
        self.fan_out(out, first_event, file);
    }

    /// Copies the events from `out[from..]` (about `file`, under its first
    /// name) to the file's other names, so that subscribers of every hard
    /// link's channel see them. At most [`MAX_LINK_PATHS`] names.
    pub(super) fn fan_out(&self, out: &mut Vec<FileEvent>, from: usize, file: u64) {
        let names = self.parents.of(file);
        if names.len() < 2 || from >= out.len() {
            return;
        }
        let root = self.model.root;
        let others: Vec<String> = names
            .iter()
            .skip(1)
            .take(MAX_LINK_PATHS - 1)
            .map(|(d, n)| self.parents.child_path(*d, n, root))
            .collect();
        let evs: Vec<FileEvent> = out[from..].to_vec();
        for p in others {
            for e in &evs {
                let mut e = e.clone();
                e.path = p.clone();
                out.push(e);
            }
        }
    }

    /// Under the data-drop policy: a write to `file`'s blocks `[s, e)` is
    /// reported as a `lost` range (inside the file's size), not inspected.
    pub(super) fn drop_data(
        &mut self,
        w: &DiskWrite,
        s: u64,
        e: u64,
        file: u64,
        logical: u64,
        out: &mut Vec<FileEvent>,
    ) {
        let Some(Inside { size, fo, n, .. }) = self.inside(w, s, e, file, logical) else {
            return;
        };
        let path = self.parents.path(file, self.model.root);
        let first_event = out.len();
        self.c.lost_events += 1;
        let mut ev = FileEvent::new(0, EventKind::Lost, path, FileType::File, file);
        ev.size = Some(size);
        ev.offset = Some(fo);
        ev.len = Some(n);
        ev.reason = Some(LostReason::DataDrop);
        ev.ts_ns = w.ts_ns;
        out.push(ev);
        self.fan_out(out, first_event, file);
    }

    /// `modify` events for `bytes` at file offset `offset`, split at the
    /// configured event size.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit_bytes(
        &mut self,
        path: &str,
        file: u64,
        size: u64,
        offset: u64,
        bytes: Bytes,
        ts_ns: u64,
        out: &mut Vec<FileEvent>,
    ) {
        let max = self.cfg.max_event_data.max(1);
        let mut done = 0usize;
        while done < bytes.len() {
            let n = (bytes.len() - done).min(max);
            let mut ev = FileEvent::new(0, EventKind::Modify, path.into(), FileType::File, file);
            ev.size = Some(size);
            ev.offset = Some(offset + done as u64);
            ev.len = Some(n as u64);
            ev.data = Some(bytes.slice(done..done + n));
            ev.ts_ns = ts_ns;
            out.push(ev);
            done += n;
        }
    }

    /// Reports file bytes `[a, z)` that a transaction made valid, reading
    /// them through `map` from `dev` (held writes laid over), with `lost`
    /// events for blocks whose held write fell out.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit_range(
        &mut self,
        dev: &dyn BlockDevice,
        path: &str,
        file: u64,
        size: u64,
        map: &FileMap,
        (a, z): (u64, u64),
        kind: RangeKind,
        held: &HashMap<u64, (Option<Held>, Option<LostReason>)>,
        ts_ns: u64,
        out: &mut Vec<FileEvent>,
    ) {
        let bs = self.bs;
        if a >= z || bs == 0 {
            return;
        }
        // Classify block by block; merge neighbours of one kind.
        let mut pieces: Vec<(u64, u64, Piece)> = Vec::new();
        let mut lb = a / bs;
        let last = (z - 1) / bs;
        while lb <= last {
            let (piece, next) = match lookup(map, lb) {
                Some((p, true)) => match held.get(&p) {
                    Some((None, Some(why))) => (Piece::Lost(*why), lb + 1),
                    _ => (Piece::Data, lb + 1),
                },
                Some((_, false)) => (Piece::Hole, lb + 1),
                // A hole runs to the next mapped block: step over it at
                // once (a hostile i_size must not make this walk 2^50
                // blocks).
                None => (Piece::Hole, next_mapped(map, lb).unwrap_or(last + 1)),
            };
            let next = next.clamp(lb + 1, last + 1);
            let (s, e) = ((lb * bs).max(a), next.saturating_mul(bs).min(z));
            match pieces.last_mut() {
                Some(last) if last.2 == piece && last.1 == s => last.1 = e,
                _ => pieces.push((s, e, piece)),
            }
            lb = next;
        }
        if kind == RangeKind::Grow && pieces.iter().all(|p| p.2 == Piece::Hole) {
            // Grown over a hole (truncate to a larger size): the size says it.
            let mut ev = FileEvent::new(0, EventKind::Modify, path.into(), FileType::File, file);
            ev.size = Some(size);
            ev.ts_ns = ts_ns;
            out.push(ev);
            return;
        }
        let first_event = out.len();
        let max = self.cfg.max_event_data.max(1) as u64;
        // Zeros next to holes are what the holes read as (a sparse file
        // grown by truncate): trim them. A plain append is reported exactly.
        let trim = kind == RangeKind::Fill || pieces.iter().any(|p| p.2 == Piece::Hole);
        for (s, e, piece) in pieces {
            match piece {
                Piece::Hole => {}
                Piece::Lost(why) => {
                    self.c.lost_events += 1;
                    let mut ev =
                        FileEvent::new(0, EventKind::Lost, path.into(), FileType::File, file);
                    ev.size = Some(size);
                    ev.offset = Some(s);
                    ev.len = Some(e - s);
                    ev.reason = Some(why);
                    ev.ts_ns = ts_ns;
                    out.push(ev);
                }
                Piece::Data => {
                    let mut cs = s;
                    while cs < e {
                        let ce = (cs + max).min(e);
                        let buf = self.read_file(dev, map, held, cs, ce);
                        let (mut i, mut j) = (0usize, buf.len());
                        if trim {
                            while i < j && buf[i] == 0 {
                                i += 1;
                            }
                            while j > i && buf[j - 1] == 0 {
                                j -= 1;
                            }
                        }
                        if i < j {
                            let bytes = Bytes::from(buf).slice(i..j);
                            self.emit_bytes(path, file, size, cs + i as u64, bytes, ts_ns, out);
                        }
                        cs = ce;
                    }
                }
            }
        }
        if kind == RangeKind::Grow && out.len() == first_event {
            // All trimmed away (zeros over holes): the size still changed.
            let mut ev = FileEvent::new(0, EventKind::Modify, path.into(), FileType::File, file);
            ev.size = Some(size);
            ev.ts_ns = ts_ns;
            out.push(ev);
        }
    }

    /// File bytes `[s, e)` through `map`; holes and unreadable blocks read
    /// as zeros.
    fn read_file(
        &mut self,
        dev: &dyn BlockDevice,
        map: &FileMap,
        held: &HashMap<u64, (Option<Held>, Option<LostReason>)>,
        s: u64,
        e: u64,
    ) -> Vec<u8> {
        let bs = self.bs;
        let mut buf = vec![0u8; (e - s) as usize];
        let mut pos = s;
        while pos < e {
            let lb = pos / bs;
            let be = ((lb + 1) * bs).min(e);
            if let Some((p, true)) = lookup(map, lb) {
                let within = pos - lb * bs;
                let a = (pos - s) as usize;
                let n = (be - pos) as usize;
                if let Some(dst) = buf.get_mut(a..a + n) {
                    if dev.read_at(p * bs + within, dst).is_err() {
                        self.c.anomalies += 1;
                    }
                    // Held bytes are what the guest wrote there.
                    if let Some((Some(h), _)) = held.get(&p) {
                        let h_lo = u64::from(h.off);
                        let h_hi = h_lo + h.data.len() as u64;
                        let lo = within.max(h_lo);
                        let hi = (within + n as u64).min(h_hi);
                        if lo < hi {
                            let d = (lo - within) as usize;
                            let src = (lo - h_lo) as usize;
                            let k = (hi - lo) as usize;
                            if let (Some(dd), Some(ss)) =
                                (dst.get_mut(d..d + k), h.data.get(src..src + k))
                            {
                                dd.copy_from_slice(ss);
                            }
                        }
                    }
                }
            }
            pos = be;
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_mapped_blocks() {
        let map: FileMap = vec![(0, 100, 4, true), (10, 200, 2, false)];
        assert_eq!(lookup(&map, 3), Some((103, true)));
        assert_eq!(lookup(&map, 4), None);
        assert_eq!(lookup(&map, 11), Some((201, false)));
        assert_eq!(lookup(&map, 12), None);
    }

    #[test]
    fn next_mapped_skips_holes() {
        let map: FileMap = vec![(0, 100, 4, true), (10, 200, 2, false)];
        assert_eq!(next_mapped(&map, 0), Some(10));
        assert_eq!(next_mapped(&map, 5), Some(10));
        assert_eq!(next_mapped(&map, 10), None);
    }
}
