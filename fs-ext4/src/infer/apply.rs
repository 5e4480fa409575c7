//! Applying one transaction of metadata blocks: which inodes it touched,
//! what changed in them, the events, and the model update.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gammaray_core::blockmap::{BlockMap, Owner};
use gammaray_core::model::{FileRecord, FileType};
use gammaray_core::name::Name;
use gammaray_core::{BlockDevice, EventKind, FileEvent, LostReason};

use super::data::{FileMap, RangeKind};
use super::pending::Held;
use super::view::View;
use super::{Change, Ext4Inference};
use crate::crawl::{scan_inodes, InodeScan};
use crate::dir::DirBlock;
use crate::inode::EXT4_ROOT_INO;
use crate::superblock::{Superblock, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};

/// Offset of `i_generation` in an inode record.
const I_GENERATION: usize = 0x64;

/// Inodes re-read per transaction at most; a transaction touching more
/// (only a hostile or bulk-initializing guest does) is applied in parts.
const MAX_INODES_PER_BATCH: usize = 65_536;

type NameKey = (u64, Box<[u8]>, u64);

/// How deep an event's path lies (events are ordered by it).
fn depth(e: &FileEvent) -> usize {
    e.path.matches('/').count()
}

/// Names of a directory: `(name, child)`.
type Names = Vec<(Name, u64)>;

impl Ext4Inference {
    /// Inode number of slot `k` of inode-table block `b` in `group`.
    fn inodes_of_block(&self, group: u64, b: u64) -> Option<(u64, u64)> {
        let table = *self.tables.get(usize::try_from(group).ok()?)?;
        if table == 0 || b < table || self.isz == 0 {
            return None;
        }
        let per = self.bs / self.isz;
        let first_idx = (b - table).checked_mul(per)?;
        if first_idx >= self.ipg {
            return None;
        }
        Some((
            group * self.ipg + first_idx + 1,
            per.min(self.ipg - first_idx),
        ))
    }

    /// Byte offset of inode `ino`'s record.
    fn inode_offset(&self, ino: u64) -> Option<u64> {
        let idx = ino.checked_sub(1)?;
        let group = idx / self.ipg.max(1);
        let table = *self.tables.get(usize::try_from(group).ok()?)?;
        if table == 0 {
            return None;
        }
        let within = (idx % self.ipg.max(1)).checked_mul(self.isz)?;
        table.checked_mul(self.bs)?.checked_add(within)
    }

    fn reserved(&self, ino: u64) -> bool {
        (ino < u64::from(self.sb.s_first_ino) && ino != u64::from(EXT4_ROOT_INO))
            || ino == 0
            || ino > u64::from(self.sb.s_inodes_count)
            || [
                self.sb.s_orphan_file_inum,
                self.sb.s_quota_inums[0],
                self.sb.s_quota_inums[1],
                self.sb.s_quota_inums[2],
            ]
            .iter()
            .any(|&q| q != 0 && u64::from(q) == ino)
    }

    /// Applies one transaction: `changes` are whole metadata blocks with
    /// their old and new contents; `dev` reads the disk with the write that
    /// brought them already applied.
    pub(super) fn apply(
        &mut self,
        dev: &dyn BlockDevice,
        changes: Vec<Change>,
        ts_ns: u64,
        out: &mut Vec<FileEvent>,
    ) {
        if changes.is_empty() {
            return;
        }
        let isz = self.isz as usize;
        let mut dirty: BTreeSet<u64> = BTreeSet::new();
        let mut reborn: HashSet<u64> = HashSet::default();
        let mut resize = false;
        for (b, old, new) in &changes {
            match self.model.blocks.owner(*b) {
                Some(Owner::InodeTable { group }) => {
                    let Some((first, n)) = self.inodes_of_block(group, *b) else {
                        continue;
                    };
                    for k in 0..n as usize {
                        let (o, nw) = (
                            old.get(k * isz..(k + 1) * isz),
                            new.get(k * isz..(k + 1) * isz),
                        );
                        if o != nw {
                            let ino = first + k as u64;
                            dirty.insert(ino);
                            let g = |r: Option<&[u8]>| {
                                r.and_then(|r| r.get(I_GENERATION..I_GENERATION + 4))
                                    .map(<[u8]>::to_vec)
                            };
                            if g(o) != g(nw) {
                                reborn.insert(ino);
                            }
                        }
                    }
                }
                Some(
                    Owner::DirData { file, .. }
                    | Owner::ExtentTree { file }
                    | Owner::Indirect { file }
                    | Owner::Xattr { file },
                ) => {
                    dirty.insert(file);
                }
                Some(Owner::FileData { file, .. }) => {
                    // Journaled data (data=journal) or a slow symlink.
                    dirty.insert(file);
                    self.data_dirty.insert(file);
                }
                Some(Owner::Superblock) => {
                    resize |= self.superblock_resized(*b, new);
                }
                _ => {}
            }
        }
        let olds: HashMap<u64, Arc<[u8]>> =
            changes.iter().map(|c| (c.0, Arc::clone(&c.1))).collect();
        let news: HashMap<u64, Arc<[u8]>> =
            changes.iter().map(|c| (c.0, Arc::clone(&c.2))).collect();
        if resize {
            self.resync(dev, &news);
            return;
        }
        dirty.retain(|&i| !self.reserved(i));
        let dirty: Vec<u64> = dirty.into_iter().collect();
        for part in dirty.chunks(MAX_INODES_PER_BATCH) {
            self.apply_inodes(dev, part, &reborn, &olds, &news, ts_ns, out);
        }
        // Blocks of this transaction that nobody owned before may hold
        // held data no longer needed (they became metadata).
        for (b, _, _) in &changes {
            if !matches!(
                self.model.blocks.owner(*b),
                None | Some(Owner::FileData { .. })
            ) {
                self.pending.forget(*b);
            }
        }
    }

    fn superblock_resized(&self, b: u64, new: &[u8]) -> bool {
        let start = SUPERBLOCK_OFFSET.saturating_sub(b * self.bs) as usize;
        let Some(raw) = new.get(start..start + SUPERBLOCK_SIZE) else {
            return false;
        };
        match Superblock::from_bytes(raw, SUPERBLOCK_OFFSET) {
            Ok(sb) => {
                sb.s_blocks_count != self.sb.s_blocks_count
                    || sb.s_inodes_count != self.sb.s_inodes_count
            }
            Err(_) => false,
        }
    }

    /// The file system was resized: rebuild the model from scratch.
    fn resync(&mut self, dev: &dyn BlockDevice, news: &HashMap<u64, Arc<[u8]>>) {
        self.c.resyncs += 1;
        let view = View {
            dev,
            journal: &self.jov,
            blocks: Some(news),
            bs: self.bs,
        };
        // The view already lays the committed journal copies over the
        // disk (and the transaction's blocks over both): crawl it as it is,
        // without replaying the log again over the newer blocks.
        match crate::crawl::crawl_home(&view, &gammaray_core::NoProgress) {
            Ok(cr) => {
                if let Ok(sb) = crate::crawl::read_superblock(&view) {
                    if let Ok(t) = crate::crawl::inode_tables(&view, &sb) {
                        self.tables = t;
                    }
                    self.ipg = u64::from(sb.s_inodes_per_group);
                    self.sb = sb;
                }
                self.c.anomalies += cr.warnings.len() as u64;
                self.parents = super::Parents::build(&cr.model.tree);
                self.model = cr.model;
                tracing::info!("ext4 resized; model rebuilt");
                if let Some(budget) = self.lazy.take().map(|l| l.budget()) {
                    if let Err(e) = self.start_lazy(budget) {
                        // The files moved before the error are missing
                        // from the model until the next resync.
                        self.c.anomalies += 1;
                        tracing::warn!("lazy load off after the resize: {e}");
                    }
                }
            }
            Err(e) => {
                self.c.anomalies += 1;
                tracing::warn!("ext4 resized but the new layout is unreadable: {e}");
            }
        }
    }

    fn scan(&mut self, view: &View<'_>, inos: &[u64], read_dirs: bool) -> InodeScan {
        let isz = self.isz as usize;
        let mut recs: Vec<(u64, u64, Vec<u8>)> = Vec::with_capacity(inos.len());
        for &ino in inos {
            let Some(off) = self.inode_offset(ino) else {
                continue;
            };
            let mut r = vec![0u8; isz];
            if view.read_at(off, &mut r).is_ok() {
                recs.push((ino, off, r));
            } else {
                self.c.anomalies += 1;
            }
        }
        let refs: Vec<(u64, u64, &[u8])> = recs
            .iter()
            .map(|(i, o, r)| (*i, *o, r.as_slice()))
            .collect();
        let s = scan_inodes(view, &self.sb, &refs, read_dirs);
        self.c.inodes_rescanned += inos.len() as u64;
        if !s.warnings.is_empty() {
            self.c.anomalies += s.warnings.len() as u64;
            for w in s.warnings.iter().take(3) {
                tracing::warn!("ext4 inference: {w}");
            }
        }
        s
    }

    /// Appends the names in directory blocks `blocks`, read through the
    /// journal overlay with `over` (a transaction's old or new contents)
    /// on top.
    fn read_dir_blocks(
        &mut self,
        dev: &dyn BlockDevice,
        over: &HashMap<u64, Arc<[u8]>>,
        blocks: &[u64],
        out: &mut Names,
    ) {
        let bs = self.bs as usize;
        let filetype = self.sb.has_incompat(crate::superblock::incompat::FILETYPE);
        let max_ino = u64::from(self.sb.s_inodes_count);
        let mut buf = vec![0u8; bs];
        for &b in blocks {
            let off = b * self.bs;
            let bytes: &[u8] = match over.get(&b) {
                Some(c) => c,
                None => {
                    let view = View {
                        dev,
                        journal: &self.jov,
                        blocks: None,
                        bs: self.bs,
                    };
                    if view.read_at(off, &mut buf).is_err() {
                        self.c.anomalies += 1;
                        continue;
                    }
                    &buf
                }
            };
            for e in DirBlock::from_bytes(bytes, off, filetype, bs) {
                match e {
                    Ok(e) if e.inode == 0 || e.is_dot() => {}
                    Ok(e) if u64::from(e.inode) > max_ino => self.c.anomalies += 1,
                    Ok(e) => out.push((Name::from(e.name), u64::from(e.inode))),
                    Err(_) => self.c.anomalies += 1,
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_inodes(
        &mut self,
        dev: &dyn BlockDevice,
        dirty: &[u64],
        reborn: &HashSet<u64>,
        olds: &HashMap<u64, Arc<[u8]>>,
        news: &HashMap<u64, Arc<[u8]>>,
        ts_ns: u64,
        out: &mut Vec<FileEvent>,
    ) {
        let root = self.model.root;
        // Lazy load: the records, names and paths read below.
        self.load_paths(dirty);
        let (old_scan, new_scan) = {
            let jov = std::mem::take(&mut self.jov);
            let before = View {
                dev,
                journal: &jov,
                blocks: Some(olds),
                bs: self.bs,
            };
            let after = View {
                dev,
                journal: &jov,
                blocks: Some(news),
                bs: self.bs,
            };
            let o = self.scan(&before, dirty, false);
            // Block directories are diffed block by block below; only the
            // entries of inline directories come from the scan.
            let n = self.scan(&after, dirty, false);
            self.jov = jov;
            (o, n)
        };
        let new_files: HashMap<u64, FileRecord> = new_scan.files.into_iter().collect();
        let mut old_runs: HashMap<u64, Vec<(u64, u64, Owner)>> = HashMap::default();
        for (s, n, o) in old_scan.runs {
            if let Some(f) = o.file() {
                old_runs.entry(f).or_default().push((s, n, o));
            }
        }
        let mut new_runs: HashMap<u64, Vec<(u64, u64, Owner)>> = HashMap::default();
        for (s, n, o) in new_scan.runs {
            if let Some(f) = o.file() {
                new_runs.entry(f).or_default().push((s, n, o));
            }
        }
        let mut new_entries: HashMap<u64, Names> = HashMap::default();
        for (d, name, child) in new_scan.entries {
            new_entries
                .entry(d)
                .or_default()
                .push((Name::from(&*name), child));
        }
        // Same file before and after (not freed and reused in between).
        let same = |ino: u64, files: &BTreeMap<u64, FileRecord>| -> bool {
            match (files.get(&ino), new_files.get(&ino)) {
                (Some(o), Some(n)) => {
                    o.ftype == n.ftype
                        && !reborn.contains(&ino)
                        && ({ o.crtime } == { n.crtime } || { o.crtime.sec } == 0)
                }
                (Some(_), None) => dirty.binary_search(&ino).is_err(),
                _ => false,
            }
        };

        // 1. Names removed and added, per directory.
        let mut removed: Vec<NameKey> = Vec::new();
        let mut added: Vec<NameKey> = Vec::new();
        let mut dirs_changed: HashSet<u64> = HashSet::default();
        for &ino in dirty {
            let was_dir = self
                .model
                .files
                .get(&ino)
                .is_some_and(|r| r.ftype == FileType::Dir);
            let is_dir = new_files
                .get(&ino)
                .is_some_and(|r| r.ftype == FileType::Dir);
            if !was_dir && !is_dir {
                continue;
            }
            let mut old_side: Names = Vec::new();
            let mut new_side: Names = Vec::new();
            let dir_blocks = |runs: Option<&Vec<(u64, u64, Owner)>>, size: u64| {
                let mut v: Vec<(u64, u64)> = Vec::new();
                let max_logical = size.div_ceil(self.bs.max(1));
                for &(s, n, o) in runs.map(Vec::as_slice).unwrap_or(&[]) {
                    if let Owner::DirData { logical, .. } = o {
                        for k in 0..n {
                            if logical + k < max_logical {
                                v.push((s + k, logical + k));
                            }
                        }
                    }
                }
                v
            };
            let old_size = self.model.files.get(&ino).map_or(0, |r| r.size);
            let new_size = new_files.get(&ino).map_or(0, |r| r.size);
            let old_blocks = if was_dir {
                dir_blocks(old_runs.get(&ino), old_size)
            } else {
                Vec::new()
            };
            let new_blocks = if is_dir {
                dir_blocks(new_runs.get(&ino), new_size)
            } else {
                Vec::new()
            };
            if old_blocks.is_empty() && new_blocks.is_empty() {
                // Inline directory (or an empty one): whole lists.
                if was_dir {
                    for e in self.model.tree.entries(ino) {
                        old_side.push((e.name.clone(), e.child));
                    }
                }
                if let Some(v) = new_entries.get(&ino) {
                    new_side.extend(v.iter().cloned());
                }
            } else if !was_dir || !is_dir || reborn.contains(&ino) {
                // Created or freed: one side is the whole directory.
                if was_dir {
                    for e in self.model.tree.entries(ino) {
                        old_side.push((e.name.clone(), e.child));
                    }
                }
                let blocks: Vec<u64> = new_blocks.iter().map(|b| b.0).collect();
                self.read_dir_blocks(dev, news, &blocks, &mut new_side);
            } else {
                // Only blocks that changed, or joined or left the
                // directory, can hold different names.
                let old_set: HashSet<u64> = old_blocks.iter().map(|b| b.0).collect();
                let new_set: HashSet<u64> = new_blocks.iter().map(|b| b.0).collect();
                let touched =
                    |b: &u64| news.contains_key(b) || !old_set.contains(b) || !new_set.contains(b);
                let o: Vec<u64> = old_blocks.iter().map(|b| b.0).filter(touched).collect();
                let n: Vec<u64> = new_blocks.iter().map(|b| b.0).filter(touched).collect();
                self.read_dir_blocks(dev, olds, &o, &mut old_side);
                self.read_dir_blocks(dev, news, &n, &mut new_side);
            }
            // Multiset difference by sorting both sides and merging.
            old_side.sort_unstable_by(|a, b| (&*a.0, a.1).cmp(&(&*b.0, b.1)));
            new_side.sort_unstable_by(|a, b| (&*a.0, a.1).cmp(&(&*b.0, b.1)));
            let (mut i, mut j) = (0, 0);
            let before_len = (removed.len(), added.len());
            while i < old_side.len() || j < new_side.len() {
                let ord = match (old_side.get(i), new_side.get(j)) {
                    (Some(a), Some(b)) => (&*a.0, a.1).cmp(&(&*b.0, b.1)),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    _ => std::cmp::Ordering::Greater,
                };
                match ord {
                    std::cmp::Ordering::Equal => {
                        i += 1;
                        j += 1;
                    }
                    std::cmp::Ordering::Less => {
                        if let Some((n, c)) = old_side.get(i) {
                            removed.push((ino, Box::from(&**n), *c));
                        }
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        if let Some((n, c)) = new_side.get(j) {
                            added.push((ino, Box::from(&**n), *c));
                        }
                        j += 1;
                    }
                }
            }
            if (removed.len(), added.len()) != before_len {
                dirs_changed.insert(ino);
            }
        }
        removed.sort();
        added.sort();
        // Lazy load: every file named or unnamed, with its path.
        let mut involved: Vec<u64> = removed
            .iter()
            .chain(&added)
            .flat_map(|k| [k.0, k.2])
            .collect();
        involved.sort_unstable();
        involved.dedup();
        self.load_paths(&involved);

        // 2. Pair removals and additions of one inode into moves.
        let mut moves: Vec<(NameKey, NameKey)> = Vec::new();
        let mut rem_left: Vec<NameKey> = Vec::new();
        {
            let mut by_child: HashMap<u64, Vec<NameKey>> = HashMap::default();
            for r in removed {
                by_child.entry(r.2).or_default().push(r);
            }
            let mut add_left = Vec::new();
            for a in added {
                let identity = dirty.binary_search(&a.2).is_err() || same(a.2, &self.model.files);
                match by_child.get_mut(&a.2).and_then(Vec::pop) {
                    Some(r) if identity => moves.push((r, a)),
                    Some(r) => {
                        rem_left.push(r);
                        add_left.push(a);
                    }
                    None => add_left.push(a),
                }
            }
            for (_, v) in by_child {
                rem_left.extend(v);
            }
            added = add_left;
        }

        // 3. Deletes (paths as they were), deepest first. Besides the
        // names removed, files freed while a directory that did not change
        // still names them (only a corrupt or hostile guest does this):
        // those names go too. Names in changed directories were diffed
        // above.
        let mut stale: Vec<(u64, Box<[u8]>, u64)> = Vec::new();
        for &ino in dirty {
            if self.model.files.contains_key(&ino) && !new_files.contains_key(&ino) {
                for (d, n) in self.parents.of(ino) {
                    if dirty.binary_search(d).is_err() {
                        stale.push((*d, Box::from(&**n), ino));
                    }
                }
            }
        }
        let stale_dirs: Vec<u64> = stale.iter().map(|k| k.0).collect();
        self.load_paths(&stale_dirs);
        involved.extend(stale_dirs);
        let mut deletes: Vec<FileEvent> = Vec::new();
        let mut deleted_inodes: HashSet<u64> = HashSet::default();
        for (d, name, child) in rem_left.iter().chain(&stale) {
            let path = self.parents.child_path(*d, name, root);
            let ftype = self
                .model
                .files
                .get(child)
                .map_or(FileType::File, |r| r.ftype);
            let mut ev = FileEvent::new(0, EventKind::Delete, path, ftype, *child);
            ev.ts_ns = ts_ns;
            deletes.push(ev);
            deleted_inodes.insert(*child);
        }
        deletes.sort_by(|a, b| depth(b).cmp(&depth(a)).then_with(|| a.path.cmp(&b.path)));
        let move_old: Vec<String> = moves
            .iter()
            .map(|(r, _)| self.parents.child_path(r.0, &r.1, root))
            .collect();

        // 4. The tree and the reverse map.
        for (d, name, child) in rem_left
            .iter()
            .chain(&stale)
            .chain(moves.iter().map(|m| &m.0))
        {
            self.model.tree.remove_entry(*d, name, *child);
            self.parents.remove(*d, name, *child);
        }
        for (d, name, child) in added.iter().chain(moves.iter().map(|m| &m.1)) {
            self.model.tree.add(*d, name, *child);
            self.parents.add(*d, name, *child);
        }

        // 5. Records, block map, inline data.
        let mut freed: Vec<u64> = Vec::new();
        let mut old_recs: HashMap<u64, FileRecord> = HashMap::default();
        for &ino in dirty {
            if let Some(r) = self.model.files.remove(&ino) {
                old_recs.insert(ino, r);
            }
            match new_files.get(&ino) {
                Some(r) => {
                    self.model.files.insert(ino, r.clone());
                }
                None => freed.push(ino),
            }
        }
        let mut new_inline: HashMap<u64, Vec<u8>> = new_scan.inline.into_iter().collect();
        let mut old_inline: HashMap<u64, Vec<u8>> = HashMap::default();
        for &ino in dirty {
            if let Some(v) = self.model.inline.remove(&ino) {
                old_inline.insert(ino, v);
            }
            if let Some(v) = new_inline.remove(&ino) {
                self.model.inline.insert(ino, v);
            }
        }
        // Newly mapped data blocks, per file: (logical first, phys, count).
        let mut fresh: HashMap<u64, Vec<(u64, u64, u64)>> = HashMap::default();
        for &ino in dirty {
            let old = old_runs.get(&ino).map(Vec::as_slice).unwrap_or(&[]);
            let new = new_runs.get(&ino).map(Vec::as_slice).unwrap_or(&[]);
            if old == new {
                continue;
            }
            for &(s, n, _) in old {
                // Only where the map still says this file (another file in
                // this transaction may have taken the blocks already).
                for (a, e, o) in self.model.blocks.segments(s, s + n) {
                    if o.and_then(Owner::file) == Some(ino) {
                        self.model.blocks.clear(a, e - a);
                    }
                }
            }
            let mut old_map = BlockMap::new();
            for &(s, n, o) in old {
                old_map.push(s, n, o);
            }
            old_map.finish();
            for &(s, n, o) in new {
                self.model.blocks.set(s, n, o);
                if let Owner::FileData { logical, .. } = o {
                    for (a, e, was) in old_map.segments(s, s + n) {
                        if was != Some(o.advance(a - s)) {
                            fresh
                                .entry(ino)
                                .or_default()
                                .push((logical + (a - s), a, e - a));
                        }
                    }
                }
            }
        }
        for &ino in &freed {
            self.data_dirty.remove(&ino);
        }

        // 6. Events: deletes, moves, creates, then data and attributes.
        out.extend(deletes);
        // Moves and creates by depth of the new path, so that a directory
        // appears before what is created or moved into it.
        let mut arrivals: Vec<FileEvent> = Vec::new();
        for ((_, a), old_path) in moves.iter().zip(move_old) {
            let path = self.parents.child_path(a.0, &a.1, root);
            let ftype = self
                .model
                .files
                .get(&a.2)
                .map_or(FileType::File, |r| r.ftype);
            let mut ev = FileEvent::new(0, EventKind::Move, path, ftype, a.2);
            ev.old_path = Some(old_path);
            ev.size = self.model.files.get(&a.2).map(|r| r.size);
            ev.ts_ns = ts_ns;
            arrivals.push(ev);
        }
        let moved: HashSet<u64> = moves.iter().map(|m| m.1 .2).collect();
        let mut created: HashSet<u64> = HashSet::default();
        for (d, name, child) in &added {
            let path = self.parents.child_path(*d, name, root);
            let rec = self.model.files.get(child);
            let mut ev = FileEvent::new(
                0,
                EventKind::Create,
                path,
                rec.map_or(FileType::File, |r| r.ftype),
                *child,
            );
            ev.size = rec.map(|r| r.size);
            ev.ts_ns = ts_ns;
            arrivals.push(ev);
            created.insert(*child);
        }
        arrivals.sort_by(|a, b| depth(a).cmp(&depth(b)).then_with(|| a.path.cmp(&b.path)));
        out.extend(arrivals);

        let files_before = &old_recs;
        for &ino in dirty {
            let Some(new) = self.model.files.get(&ino).cloned() else {
                continue;
            };
            let old = files_before.get(&ino);
            let same_file = old.is_some_and(|o| {
                o.ftype == new.ftype
                    && !reborn.contains(&ino)
                    && ({ o.crtime } == { new.crtime } || { o.crtime.sec } == 0)
            });
            let path = self.parents.path(ino, root);
            let first_event = out.len();
            let mut modified = false;
            if new.ftype == FileType::File {
                let old_size = if same_file {
                    old.map_or(0, |o| o.size)
                } else {
                    0
                };
                let map: FileMap = {
                    let mut m: FileMap = new_runs
                        .get(&ino)
                        .map(Vec::as_slice)
                        .unwrap_or(&[])
                        .iter()
                        .filter_map(|&(s, n, o)| match o {
                            Owner::FileData { logical, .. } => Some((logical, s, n, true)),
                            Owner::Unwritten { logical, .. } => Some((logical, s, n, false)),
                            _ => None,
                        })
                        .collect();
                    m.sort_unstable();
                    m
                };
                if same_file && new.size < old_size {
                    let mut ev =
                        FileEvent::new(0, EventKind::Modify, path.clone(), FileType::File, ino);
                    ev.size = Some(new.size);
                    ev.ts_ns = ts_ns;
                    out.push(ev);
                    modified = true;
                }
                let mut held: HashMap<u64, (Option<Held>, Option<LostReason>)> = HashMap::default();
                for &(_, p, n) in fresh.get(&ino).map(Vec::as_slice).unwrap_or(&[]) {
                    for b in p..p + n {
                        let t = self.pending.take(b);
                        if t.0.is_some() || t.1.is_some() {
                            held.insert(b, t);
                        }
                    }
                }
                if let Some(inline) = self.model.inline.get(&ino).cloned() {
                    let was = old_inline.get(&ino);
                    if was != Some(&inline) && !inline.is_empty() {
                        let bytes = bytes::Bytes::from(inline);
                        self.emit_bytes(&path, ino, new.size, 0, bytes, ts_ns, out);
                        modified = true;
                    }
                } else {
                    let n0 = out.len();
                    let keep = old_size.min(new.size);
                    for &(l, _, n) in fresh.get(&ino).map(Vec::as_slice).unwrap_or(&[]) {
                        let a = l.saturating_mul(self.bs);
                        let z = (l + n).saturating_mul(self.bs).min(keep);
                        if a < z {
                            self.emit_range(
                                dev,
                                &path,
                                ino,
                                new.size,
                                &map,
                                (a, z),
                                RangeKind::Fill,
                                &held,
                                ts_ns,
                                out,
                            );
                        }
                    }
                    if new.size > old_size {
                        self.emit_range(
                            dev,
                            &path,
                            ino,
                            new.size,
                            &map,
                            (old_size, new.size),
                            RangeKind::Grow,
                            &held,
                            ts_ns,
                            out,
                        );
                    }
                    modified = out.len() > n0;
                }
            }
            if !same_file {
                self.data_dirty.remove(&ino);
                self.fan_out(out, first_event, ino);
                continue;
            }
            let Some(old) = old else {
                self.fan_out(out, first_event, ino);
                continue;
            };
            let mut changed: Vec<&'static str> = Vec::new();
            if old.mode != new.mode {
                changed.push("mode");
            }
            if old.uid != new.uid {
                changed.push("uid");
            }
            if old.gid != new.gid {
                changed.push("gid");
            }
            // What sets mtime by itself: data writes, and names added to or
            // removed from a directory (a link or rename of the file itself
            // moves only its ctime).
            let explained =
                modified || self.data_dirty.contains(&ino) || dirs_changed.contains(&ino);
            // A write or a name change sets mtime and ctime to the same
            // "now"; utimes() (touch -d) sets mtime apart from ctime. A
            // later chmod, chown, link or rename also moves ctime on, so
            // mtime apart from ctime only counts when none of those
            // happened.
            let ctime_moved_on = !changed.is_empty()
                || old.nlink != new.nlink
                || moved.contains(&ino)
                || created.contains(&ino)
                || deleted_inodes.contains(&ino);
            let explicit = { new.mtime } != { new.ctime } && !ctime_moved_on;
            if { old.mtime } != { new.mtime } && (!explained || explicit) {
                changed.push("mtime");
                if { old.atime } != { new.atime } {
                    changed.push("atime");
                }
            }
            if old.target != new.target && new.ftype == FileType::Symlink {
                changed.push("target");
            }
            self.data_dirty.remove(&ino);
            if !changed.is_empty() {
                let mut ev = FileEvent::new(0, EventKind::Attrib, path, new.ftype, ino);
                ev.size = Some(new.size);
                ev.changed = changed;
                ev.ts_ns = ts_ns;
                out.push(ev);
            }
            self.fan_out(out, first_event, ino);
        }
        // Lazy load: what this transaction changed is written back when
        // evicted.
        self.lazy_changed(dirty.iter().copied().chain(involved));
    }
}
