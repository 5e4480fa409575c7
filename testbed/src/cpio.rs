//! A minimal writer for the cpio "newc" format that the kernel unpacks as an
//! initramfs (and busybox `cpio -i` reads).

/// One archive member.
#[derive(Debug, Clone)]
pub enum Member {
    /// A directory.
    Dir {
        /// Path inside the archive, without a leading `/`.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path inside the archive.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Path inside the archive.
        path: String,
        /// Link target.
        target: String,
    },
    /// A character device node.
    CharDev {
        /// Path inside the archive.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// Builds newc archives in memory.
#[derive(Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
    ino: u32,
    mtime: u32,
}

impl Writer {
    /// A new archive whose members all carry modification time `mtime`.
    pub fn new(mtime: u32) -> Self {
        Writer {
            out: Vec::new(),
            ino: 1,
            mtime,
        }
    }

    /// Appends a member.
    pub fn add(&mut self, m: &Member) {
        let (path, mode, data, rdev): (&str, u32, &[u8], (u32, u32)) = match m {
            Member::Dir { path, mode } => (path, 0o040000 | mode, &[], (0, 0)),
            Member::File { path, mode, data } => (path, 0o100000 | mode, data, (0, 0)),
            Member::Symlink { path, target } => (path, 0o120777, target.as_bytes(), (0, 0)),
            Member::CharDev {
                path,
                mode,
                major,
                minor,
            } => (path, 0o020000 | mode, &[], (*major, *minor)),
        };
        let nlink = if matches!(m, Member::Dir { .. }) {
            2
        } else {
            1
        };
        self.entry(path, mode, nlink, data, rdev);
        self.ino += 1;
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8], rdev: (u32, u32)) {
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            self.mtime,
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(path.len() + 1).unwrap_or(u32::MAX),
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() & 3 != 0 {
            self.out.push(0);
        }
    }

    /// Writes the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, 1, &[], (0, 0));
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_newc() {
        let mut w = Writer::new(0);
        w.add(&Member::File {
            path: "init".into(),
            mode: 0o755,
            data: b"hi".to_vec(),
        });
        let a = w.finish();
        assert_eq!(&a[..6], b"070701");
        // mode field is the second 8-hex field
        assert_eq!(&a[14..22], b"000081ed");
        // name right after the 110-byte header, NUL-terminated
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(a.len() % 4, 0);
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
