//! The error type shared by the disk layer, the model and the index.

use std::io;

/// Everything that can go wrong in `gammaray-core`.
///
/// Corruption errors name the structure and the absolute byte offset on the
/// disk where it lies, so an operator knows where the damage is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the image failed.
    #[error("I/O error at byte {offset}: {source}")]
    Io {
        /// Absolute byte offset of the failed read.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A read ran past the end of the device.
    #[error("read of {len} bytes at byte {offset} runs past the end of the device ({size} bytes)")]
    OutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Device size.
        size: u64,
    },
    /// An on-disk structure is corrupt.
    #[error("corrupt {structure} at byte {offset}: {detail}")]
    Corrupt {
        /// Which structure ("GPT header", "ext4 superblock", ...).
        structure: &'static str,
        /// Absolute byte offset of the structure on the disk.
        offset: u64,
        /// What is wrong, with expected and actual values where known.
        detail: String,
    },
    /// The structure is valid but uses something gammaray does not support.
    #[error("unsupported {structure}: {detail}")]
    Unsupported {
        /// Which structure.
        structure: &'static str,
        /// What is not supported.
        detail: String,
    },
    /// The index file is unreadable or of another version.
    #[error("index {path}: {detail}")]
    Index {
        /// The index file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Corrupt`].
    pub fn corrupt(structure: &'static str, offset: u64, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            structure,
            offset,
            detail: detail.into(),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
