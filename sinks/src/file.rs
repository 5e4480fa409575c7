//! `type = "file"`: events as JSON lines appended to a file.
//!
//! The file is opened for appending and created if missing; its directory
//! must exist (checked by `gammaray check` too). Each batch is encoded into
//! one buffer and written with one `write_all`, so concurrent readers
//! (`tail -f`) see whole lines; a failed write may leave a partial last
//! line, which a reader of JSON lines skips. [`Sink::flush`] also asks the
//! kernel to write the data to disk (`fdatasync`).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gammaray_config::FileSinkConfig;

use crate::{write_json_lines, Sink, SinkError, SinkStats, Stamped};

/// JSON lines appended to a file.
pub struct FileSink {
    name: String,
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    stats: SinkStats,
}

impl FileSink {
    /// Opens (or creates) the file for appending.
    pub fn new(name: &str, cfg: &FileSinkConfig) -> Result<FileSink, SinkError> {
        let path = &cfg.path;
        let config_err = |message: String| SinkError::Config {
            sink: name.to_string(),
            message,
        };
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.is_dir() {
                return Err(config_err(format!(
                    "path {}: directory {} does not exist",
                    path.display(),
                    dir.display()
                )));
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| config_err(format!("opening {}: {e}", path.display())))?;
        Ok(FileSink {
            name: name.to_string(),
            path: path.clone(),
            file,
            buf: Vec::new(),
            stats: SinkStats::default(),
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, batch: &[Arc<Stamped>]) -> Result<(), SinkError> {
        write_json_lines(
            &self.name,
            &mut self.file,
            &mut self.buf,
            batch,
            &mut self.stats,
        )
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.file
            .sync_data()
            .map_err(|e| SinkError::io(&self.name, e))
    }

    fn stats(&self) -> SinkStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_events::{batch, check_lines};

    #[test]
    fn appends_json_lines_and_creates_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let cfg = FileSinkConfig { path: path.clone() };
        let mut sink = FileSink::new("f", &cfg).unwrap();
        assert_eq!(sink.path(), path);
        sink.send(&batch()).unwrap();
        sink.flush().unwrap();
        check_lines(&std::fs::read_to_string(&path).unwrap(), 1);
        drop(sink);
        // Reopening appends rather than truncating.
        let mut again = FileSink::new("f", &cfg).unwrap();
        again.send(&batch()).unwrap();
        again.flush().unwrap();
        check_lines(&std::fs::read_to_string(&path).unwrap(), 2);
        assert_eq!(again.stats().sent, 4);
    }

    #[test]
    fn missing_directory_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FileSinkConfig {
            path: dir.path().join("no/such/dir/events.jsonl"),
        };
        let e = FileSink::new("f", &cfg).err().unwrap();
        assert!(matches!(e, SinkError::Config { .. }));
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn a_directory_as_path_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FileSinkConfig {
            path: dir.path().to_path_buf(),
        };
        let e = FileSink::new("f", &cfg).err().unwrap();
        assert!(e.to_string().starts_with("sink \"f\": opening"), "{e}");
    }
}
