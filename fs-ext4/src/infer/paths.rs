//! From a file to its paths: the directory tree read upwards.

use gammaray_core::model::{FileId, Tree};
use gammaray_core::name::Name;
use rustc_hash::FxHashMap as HashMap;

/// Paths deeper than this are cut (a directory loop written by a hostile
/// guest must not make path building run forever).
pub const MAX_DEPTH: usize = 4096;

/// For every file, the directories that name it and under which names.
#[derive(Debug, Default)]
pub struct Parents {
    map: HashMap<FileId, Vec<(FileId, Name)>>,
}

impl Parents {
    /// Builds the reverse of `tree`.
    pub fn build(tree: &Tree) -> Self {
        let mut map: HashMap<FileId, Vec<(FileId, Name)>> =
            HashMap::with_capacity_and_hasher(tree.len(), Default::default());
        for (dir, entries) in tree.dirs() {
            for e in entries {
                map.entry(e.child).or_default().push((dir, e.name.clone()));
            }
        }
        Parents { map }
    }

    /// `dir` now names `child` as `name`.
    pub fn add(&mut self, dir: FileId, name: &[u8], child: FileId) {
        self.map
            .entry(child)
            .or_default()
            .push((dir, Name::from(name)));
    }

    /// `dir` no longer names `child` as `name`.
    pub fn remove(&mut self, dir: FileId, name: &[u8], child: FileId) {
        if let Some(v) = self.map.get_mut(&child) {
            if let Some(pos) = v.iter().position(|(d, n)| *d == dir && &**n == name) {
                v.swap_remove(pos);
            }
            if v.is_empty() {
                self.map.remove(&child);
            }
        }
    }

    /// Removes and returns every name of `file` (the lazy-load policy
    /// evicting it).
    pub fn take(&mut self, file: FileId) -> Vec<(FileId, Name)> {
        self.map.remove(&file).unwrap_or_default()
    }

    /// Adds the names of `file` loaded from the lazy-load store to those
    /// it may already have.
    pub fn extend(&mut self, file: FileId, names: Vec<(FileId, Name)>) {
        if !names.is_empty() {
            self.map.entry(file).or_default().extend(names);
        }
    }

    /// Every file that has a name.
    pub fn files(&self) -> impl Iterator<Item = FileId> + '_ {
        self.map.keys().copied()
    }

    /// Every `(directory, name)` naming `file`.
    pub fn of(&self, file: FileId) -> &[(FileId, Name)] {
        self.map.get(&file).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The path of `file` (through its first name at every level), or a
    /// placeholder `/.unreachable/INODE` when it has no way up to `root`.
    pub fn path(&self, file: FileId, root: FileId) -> String {
        if file == root {
            return "/".into();
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = file;
        for _ in 0..MAX_DEPTH {
            if cur == root {
                return join(&parts);
            }
            match self.of(cur).first() {
                Some((dir, name)) => {
                    parts.push(name);
                    cur = *dir;
                }
                None => break,
            }
        }
        format!("/.unreachable/{file}")
    }

    /// The path of `name` inside directory `dir`.
    pub fn child_path(&self, dir: FileId, name: &[u8], root: FileId) -> String {
        let mut p = self.path(dir, root);
        if !p.ends_with('/') {
            p.push('/');
        }
        p.push_str(&String::from_utf8_lossy(name));
        p
    }
}

fn join(parts: &[&[u8]]) -> String {
    let mut s = String::new();
    for p in parts.iter().rev() {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(p));
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_parents_and_survive_loops() {
        let mut t = Tree::new();
        t.add(2, b"etc", 11);
        t.add(11, b"passwd", 12);
        let mut p = Parents::build(&t);
        assert_eq!(p.path(12, 2), "/etc/passwd");
        assert_eq!(p.child_path(2, b"x", 2), "/x");
        // A loop: 20 names 21 and 21 names 20; neither reaches the root.
        p.add(20, b"a", 21);
        p.add(21, b"b", 20);
        assert_eq!(p.path(21, 2), "/.unreachable/21");
        p.remove(11, b"passwd", 12);
        assert!(p.of(12).is_empty());
    }
}
