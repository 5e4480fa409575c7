//! The workloads: busybox ash scripts from `testbed/guest/workloads/`, run
//! in the guest with the `op_*` helpers of `testbed/guest/lib.sh`.

/// A named guest workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// Log appends, logrotate-style rotation, copy-truncate.
    Logs,
    /// Create, delete and move files and directories; odd names.
    Tree,
    /// chmod, chown, `touch -d`, hard links, symlinks (mode and owner on
    /// ext4 only: ntfs3 keeps no POSIX owner or mode).
    Attrs,
    /// One directory with 3000 entries, then deletions and renames.
    Bigdir,
    /// Write-temp-then-rename, truncate smaller and larger, in-place
    /// overwrites, repeated rewrites.
    Edits,
    /// Work with no `sync` at all until the end.
    Nosync,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 6] = [
        Workload::Logs,
        Workload::Tree,
        Workload::Attrs,
        Workload::Bigdir,
        Workload::Edits,
        Workload::Nosync,
    ];

    /// The workload's name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Logs => "logs",
            Workload::Tree => "tree",
            Workload::Attrs => "attrs",
            Workload::Bigdir => "bigdir",
            Workload::Edits => "edits",
            Workload::Nosync => "nosync",
        }
    }

    /// The script.
    pub fn script(self) -> &'static str {
        match self {
            Workload::Logs => include_str!("../guest/workloads/logs.sh"),
            Workload::Tree => include_str!("../guest/workloads/tree.sh"),
            Workload::Attrs => include_str!("../guest/workloads/attrs.sh"),
            Workload::Bigdir => include_str!("../guest/workloads/bigdir.sh"),
            Workload::Edits => include_str!("../guest/workloads/edits.sh"),
            Workload::Nosync => include_str!("../guest/workloads/nosync.sh"),
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
                format!("unknown workload {s:?}; one of {}", names.join(", "))
            })
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
