//! The testbed's error type.

use std::path::PathBuf;

/// Everything that can go wrong while building, booting or reading a guest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named path.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A host tool is not installed (run `scripts/setup-host.sh`).
    #[error("host tool `{0}` not found; run scripts/setup-host.sh")]
    MissingTool(String),
    /// A host command ran but failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the message.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// The guest kernel package could not be found or unpacked.
    #[error("guest kernel: {0}")]
    Kernel(String),
    /// QEMU did not finish in time and was killed.
    #[error("QEMU ran longer than {seconds} s and was killed; serial log: {serial}")]
    Timeout {
        /// The time limit.
        seconds: u64,
        /// The serial log, which usually says where the guest stopped.
        serial: PathBuf,
    },
    /// The guest reported an error or its output was incomplete.
    #[error("guest run failed: {message}; serial log: {serial}")]
    Guest {
        /// What went wrong.
        message: String,
        /// The serial log.
        serial: PathBuf,
    },
    /// A line of the guest's ground truth could not be parsed.
    #[error("ground truth line {line}: {message}: {text:?}")]
    Truth {
        /// The line number in the serial log (1-based).
        line: usize,
        /// What is wrong with it.
        message: &'static str,
        /// The line itself.
        text: String,
    },
    /// A dm-log-writes trace is malformed.
    #[error("trace {path} at byte {offset}: {message}")]
    Trace {
        /// The trace file.
        path: PathBuf,
        /// Where in the file.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// Setting up the guest failed earlier in this process (the first
    /// error, repeated).
    #[error("{0}")]
    Setup(String),
    /// The pacing channel misbehaved.
    #[error("pacing channel: {0}")]
    Pace(String),
}

/// The testbed's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds path context to an I/O result.
pub(crate) trait IoContext<T> {
    /// Wraps the error with what was being done and on which path.
    fn ctx(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            context,
            path: path.into(),
            source,
        })
    }
}
