//! The file-system-agnostic metadata model: file records, the directory
//! tree of names, and one [`FsModel`] per file system.

use std::collections::{BTreeMap, HashMap};

use crate::blockmap::BlockMap;
pub use crate::name::Name;

/// A file's identity inside one file system: the ext4 inode number, the NTFS
/// MFT record number.
pub type FileId = u64;

/// The type of a file, as the state listing names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FileType {
    /// Regular file.
    File = 1,
    /// Directory.
    Dir = 2,
    /// Symbolic link.
    Symlink = 3,
    /// Named pipe.
    Fifo = 4,
    /// Unix socket.
    Socket = 5,
    /// Character device.
    CharDev = 6,
    /// Block device.
    BlockDev = 7,
}

impl FileType {
    /// The name used in the state listing and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::File => "file",
            FileType::Dir => "dir",
            FileType::Symlink => "symlink",
            FileType::Fifo => "fifo",
            FileType::Socket => "socket",
            FileType::CharDev => "chardev",
            FileType::BlockDev => "blockdev",
        }
    }

    /// From the `S_IFMT` bits of a Unix `st_mode`; `None` for an invalid type.
    pub fn from_unix_mode(mode: u32) -> Option<Self> {
        Some(match mode & 0o170000 {
            0o100000 => FileType::File,
            0o040000 => FileType::Dir,
            0o120000 => FileType::Symlink,
            0o010000 => FileType::Fifo,
            0o140000 => FileType::Socket,
            0o020000 => FileType::CharDev,
            0o060000 => FileType::BlockDev,
            _ => return None,
        })
    }

    /// Inverse of `as u8`; `None` for unknown codes (index data is checked).
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => FileType::File,
            2 => FileType::Dir,
            3 => FileType::Symlink,
            4 => FileType::Fifo,
            5 => FileType::Socket,
            6 => FileType::CharDev,
            7 => FileType::BlockDev,
            _ => return None,
        })
    }
}

/// A point in time with nanoseconds, seconds since the Unix epoch.
///
/// Packed to 12 bytes (alignment 4): a file record holds four of these, and
/// a million resident records should not pay 16 MB of padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C, packed(4))]
pub struct Timestamp {
    /// Seconds since the epoch (may be negative).
    pub sec: i64,
    /// Nanoseconds, below 1e9.
    pub nsec: u32,
}

/// One file's metadata, normalized across file systems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// Inode or MFT record number.
    pub id: FileId,
    /// File type.
    pub ftype: FileType,
    /// Permission bits, `st_mode & 0o7777`.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Link count.
    pub nlink: u32,
    /// Last access.
    pub atime: Timestamp,
    /// Last data change.
    pub mtime: Timestamp,
    /// Last metadata change.
    pub ctime: Timestamp,
    /// Creation, where the file system records it (else zero).
    pub crtime: Timestamp,
    /// Symlink target bytes (symlinks only).
    pub target: Option<Box<[u8]>>,
}

/// One name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name's bytes (not necessarily UTF-8).
    pub name: Name,
    /// The file it names.
    pub child: FileId,
}

/// The directory tree: for each directory, its names (without `.` and `..`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    dirs: HashMap<FileId, Vec<Entry>>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name` → `child` to directory `dir`.
    pub fn add(&mut self, dir: FileId, name: &[u8], child: FileId) {
        self.dirs.entry(dir).or_default().push(Entry {
            name: Name::from(name),
            child,
        });
    }

    /// Removes the name `name` from `dir`; returns the file it named.
    pub fn remove(&mut self, dir: FileId, name: &[u8]) -> Option<FileId> {
        let entries = self.dirs.get_mut(&dir)?;
        let pos = entries.iter().position(|e| &*e.name == name)?;
        let child = entries.swap_remove(pos).child;
        if entries.is_empty() {
            self.dirs.remove(&dir);
        }
        Some(child)
    }

    /// Removes the name `name` of `child` from `dir` (of several equal
    /// names, which a corrupt directory can hold, the one naming `child`);
    /// returns whether it was there.
    pub fn remove_entry(&mut self, dir: FileId, name: &[u8], child: FileId) -> bool {
        let Some(entries) = self.dirs.get_mut(&dir) else {
            return false;
        };
        let Some(pos) = entries
            .iter()
            .position(|e| e.child == child && &*e.name == name)
        else {
            return false;
        };
        entries.swap_remove(pos);
        if entries.is_empty() {
            self.dirs.remove(&dir);
        }
        true
    }

    /// Replaces every name of `dir` (after re-reading a directory).
    pub fn set_dir(&mut self, dir: FileId, entries: Vec<Entry>) {
        if entries.is_empty() {
            self.dirs.remove(&dir);
        } else {
            self.dirs.insert(dir, entries);
        }
    }

    /// Removes and returns every name of `dir` (the lazy-load policy
    /// evicting a directory).
    pub fn take_dir(&mut self, dir: FileId) -> Vec<Entry> {
        self.dirs.remove(&dir).unwrap_or_default()
    }

    /// Number of directories that have names.
    pub fn dir_count(&self) -> usize {
        self.dirs.len()
    }

    /// The names in `dir`, in no particular order.
    pub fn entries(&self, dir: FileId) -> &[Entry] {
        self.dirs.get(&dir).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every directory that has names, with its names.
    pub fn dirs(&self) -> impl Iterator<Item = (FileId, &[Entry])> {
        self.dirs.iter().map(|(d, e)| (*d, e.as_slice()))
    }

    /// Releases spare capacity (after a bulk load).
    pub fn shrink_to_fit(&mut self) {
        for entries in self.dirs.values_mut() {
            entries.shrink_to_fit();
        }
        self.dirs.shrink_to_fit();
    }

    /// Total number of names.
    pub fn len(&self) -> usize {
        self.dirs.values().map(Vec::len).sum()
    }

    /// True when the tree holds no names.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }
}

/// Everything gammaray knows about one file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsModel {
    /// "ext2", "ext3", "ext4", "ntfs".
    pub fs_type: String,
    /// Block (cluster) size in bytes; the unit of the block map.
    pub block_size: u32,
    /// The root directory's id.
    pub root: FileId,
    /// Where the guest last mounted it (`s_last_mounted`), if recorded.
    pub mount_hint: Option<String>,
    /// Every file in use, by id.
    pub files: BTreeMap<FileId, FileRecord>,
    /// Directory names.
    pub tree: Tree,
    /// Which block belongs to what.
    pub blocks: BlockMap,
    /// Contents stored inside the metadata rather than in blocks (ext4
    /// inline data, NTFS resident `$DATA`), by file.
    pub inline: HashMap<FileId, Vec<u8>>,
}

impl FsModel {
    /// An empty model.
    pub fn new(fs_type: impl Into<String>, block_size: u32, root: FileId) -> Self {
        FsModel {
            fs_type: fs_type.into(),
            block_size,
            root,
            mount_hint: None,
            files: BTreeMap::new(),
            tree: Tree::new(),
            blocks: BlockMap::new(),
            inline: HashMap::new(),
        }
    }
}
