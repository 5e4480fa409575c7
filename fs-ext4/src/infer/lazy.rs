//! The lazy-load policy (the paper's section VI-B): only the block-owner
//! map stays resident; file records and names live in a scratch store
//! ([`MetaStore`]) and are loaded when a write needs them, within a
//! resident-memory budget.
//!
//! The model's maps (records, directory names, inline data) and the
//! reverse name map then act as a cache of loaded files. A file is loaded
//! whole: its record, the names it has, and the names it holds if it is a
//! directory. Every access of the inference goes through a load first:
//!
//! - a data write loads the file and the directories up to the root along
//!   each of its paths (its event needs them);
//! - a transaction loads every inode it re-reads, their paths, and every
//!   file named or unnamed by the directories it changed.
//!
//! Files a transaction changed are written back to the store when they
//! are evicted. Eviction runs between writes only (never while a
//! transaction is half applied), least recently used first, down to three
//! quarters of the budget; one huge transaction can exceed the budget
//! until it ends.

use gammaray_core::lazy::{resident_estimate, FileMeta, MetaStore};
use gammaray_core::model::{FileId, FsModel};
use gammaray_core::{Counter, Result};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::paths::{Parents, MAX_DEPTH};
use super::Ext4Inference;
use crate::infer::data::MAX_LINK_PATHS;

/// The lazy-load state of one inference.
#[derive(Debug)]
pub(super) struct Lazy {
    store: MetaStore,
    budget: u64,
    /// Estimated bytes of the loaded files.
    resident: u64,
    /// Loaded files: last use (a clock) and estimated bytes.
    loaded: HashMap<FileId, (u64, u64)>,
    /// Loaded files changed since loading (written back on eviction).
    changed: HashSet<FileId>,
    clock: u64,
    loads: u64,
    evictions: u64,
    errors: u64,
}

impl Lazy {
    /// The resident-memory budget.
    pub(super) fn budget(&self) -> u64 {
        self.budget
    }

    /// Counters for metrics.
    pub(super) fn counters(&self) -> Vec<Counter> {
        vec![
            Counter {
                name: "lazy_resident_bytes",
                value: self.resident,
            },
            Counter {
                name: "lazy_resident_files",
                value: self.loaded.len() as u64,
            },
            Counter {
                name: "lazy_loads",
                value: self.loads,
            },
            Counter {
                name: "lazy_evictions",
                value: self.evictions,
            },
            Counter {
                name: "lazy_store_bytes",
                value: self.store.file_bytes(),
            },
            Counter {
                name: "lazy_store_errors",
                value: self.errors,
            },
        ]
    }
}

impl Ext4Inference {
    /// Moves the model's records and names to a scratch store in the host's
    /// temporary directory (`TMPDIR`) and keeps at most `budget` bytes of
    /// them resident from now on. They are moved file by file, so the
    /// store costs no second copy of the model; an error (the directory
    /// not writable, full) leaves the model partly moved and fails the
    /// inference.
    pub(super) fn start_lazy(&mut self, budget: u64) -> Result<()> {
        let dir = std::env::temp_dir();
        let mut ids: Vec<FileId> = self.model.files.keys().copied().collect();
        ids.extend(self.model.tree.dirs().map(|(d, _)| d));
        ids.extend(self.parents.files());
        ids.extend(self.model.inline.keys().copied());
        ids.sort_unstable();
        ids.dedup();
        let store = MetaStore::create(&dir, &ids, |id| self.take_meta(id))?;
        drop(ids);
        // Emptied above; new maps also give their capacity back.
        self.model.files = Default::default();
        self.model.tree = Default::default();
        self.model.inline = Default::default();
        self.parents = Parents::default();
        tracing::info!(
            "lazy load: metadata moved to a {} KiB scratch store in {}, budget {} KiB",
            store.file_bytes() / 1024,
            dir.display(),
            budget / 1024
        );
        self.lazy = Some(Lazy {
            store,
            budget,
            resident: 0,
            loaded: HashMap::default(),
            changed: HashSet::default(),
            clock: 0,
            loads: 0,
            evictions: 0,
            errors: 0,
        });
        Ok(())
    }

    /// Makes file `id` resident (a no-op when loading eagerly).
    pub(super) fn load(&mut self, id: FileId) {
        let Some(l) = self.lazy.as_mut() else {
            return;
        };
        l.clock += 1;
        if let Some(e) = l.loaded.get_mut(&id) {
            e.0 = l.clock;
            return;
        }
        let meta = match l.store.load(id) {
            Ok(m) => m,
            Err(e) => {
                l.errors += 1;
                tracing::warn!("lazy load of file {id}: {e}");
                FileMeta::default()
            }
        };
        let bytes = meta.resident_bytes();
        l.loaded.insert(id, (l.clock, bytes));
        l.resident += bytes;
        l.loads += 1;
        self.install(id, meta);
    }

    /// Makes `ids` resident with the directories up to the root along each
    /// of their first [`MAX_LINK_PATHS`] names (what their events' paths
    /// read).
    pub(super) fn load_paths(&mut self, ids: &[FileId]) {
        if self.lazy.is_none() {
            return;
        }
        let root = self.model.root;
        for &id in ids {
            self.load(id);
            let dirs: Vec<FileId> = self
                .parents
                .of(id)
                .iter()
                .take(MAX_LINK_PATHS)
                .map(|(d, _)| *d)
                .collect();
            for mut cur in dirs {
                for _ in 0..MAX_DEPTH {
                    self.load(cur);
                    if cur == root {
                        break;
                    }
                    match self.parents.of(cur).first() {
                        Some((d, _)) => cur = *d,
                        None => break,
                    }
                }
            }
        }
    }

    /// Notes that resident files `ids` changed (they are written back when
    /// evicted).
    pub(super) fn lazy_changed(&mut self, ids: impl IntoIterator<Item = FileId>) {
        let Some(l) = self.lazy.as_mut() else {
            return;
        };
        for id in ids {
            if let Some(e) = l.loaded.get_mut(&id) {
                let (names, entries) = (self.parents.of(id), self.model.tree.entries(id));
                let now = resident_estimate(
                    self.model.files.get(&id),
                    names,
                    entries,
                    self.model.inline.get(&id).map(Vec::as_slice),
                );
                l.resident = l.resident.saturating_sub(e.1).saturating_add(now);
                e.1 = now;
                l.changed.insert(id);
            }
        }
    }

    /// Evicts the least recently used files while more than the budget is
    /// resident.
    pub(super) fn trim(&mut self) {
        let Some(l) = self.lazy.as_mut() else {
            return;
        };
        if l.resident <= l.budget {
            return;
        }
        let target = l.budget - l.budget / 4;
        let mut by_age: Vec<(u64, FileId)> = l.loaded.iter().map(|(id, e)| (e.0, *id)).collect();
        by_age.sort_unstable();
        let mut lazy = self.lazy.take();
        if let Some(l) = lazy.as_mut() {
            for (_, id) in by_age {
                if l.resident <= target {
                    break;
                }
                let meta = self.take_meta(id);
                if l.changed.contains(&id) {
                    if let Err(e) = l.store.save(id, &meta) {
                        // Kept resident: evicting it would lose it.
                        l.errors += 1;
                        tracing::warn!("lazy load: file {id} kept resident: {e}");
                        self.install(id, meta);
                        break;
                    }
                    l.changed.remove(&id);
                }
                if let Some((_, bytes)) = l.loaded.remove(&id) {
                    l.resident = l.resident.saturating_sub(bytes);
                }
                l.evictions += 1;
            }
        }
        self.lazy = lazy;
    }

    /// Removes file `id`'s metadata from the resident maps.
    fn take_meta(&mut self, id: FileId) -> FileMeta {
        FileMeta {
            record: self.model.files.remove(&id),
            names: self.parents.take(id),
            entries: self.model.tree.take_dir(id),
            inline: self.model.inline.remove(&id),
        }
    }

    /// Puts file `id`'s metadata in the resident maps (added to whatever
    /// they already hold of it).
    fn install(&mut self, id: FileId, meta: FileMeta) {
        let FileMeta {
            record,
            names,
            mut entries,
            inline,
        } = meta;
        if let Some(r) = record {
            self.model.files.insert(id, r);
        }
        if !entries.is_empty() {
            entries.extend(self.model.tree.take_dir(id));
            self.model.tree.set_dir(id, entries);
        }
        self.parents.extend(id, names);
        if let Some(v) = inline {
            self.model.inline.insert(id, v);
        }
    }

    /// The whole model (resident files, and the rest read from the store).
    pub(super) fn lazy_model(&self) -> Option<FsModel> {
        let l = self.lazy.as_ref()?;
        let mut m = FsModel::new(
            self.model.fs_type.clone(),
            self.model.block_size,
            self.model.root,
        );
        m.mount_hint = self.model.mount_hint.clone();
        m.blocks = self.model.blocks.clone();
        let mut ids = match l.store.ids() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("lazy load: store unreadable: {e}");
                Vec::new()
            }
        };
        ids.extend(l.loaded.keys().copied());
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            if l.loaded.contains_key(&id) {
                if let Some(r) = self.model.files.get(&id) {
                    m.files.insert(id, r.clone());
                }
                let e = self.model.tree.entries(id);
                if !e.is_empty() {
                    m.tree.set_dir(id, e.to_vec());
                }
                if let Some(v) = self.model.inline.get(&id) {
                    m.inline.insert(id, v.clone());
                }
                continue;
            }
            match l.store.load(id) {
                Ok(meta) => {
                    if let Some(r) = meta.record {
                        m.files.insert(id, r);
                    }
                    if !meta.entries.is_empty() {
                        m.tree.set_dir(id, meta.entries);
                    }
                    if let Some(v) = meta.inline {
                        m.inline.insert(id, v);
                    }
                }
                Err(e) => tracing::warn!("lazy load of file {id}: {e}"),
            }
        }
        Some(m)
    }
}
