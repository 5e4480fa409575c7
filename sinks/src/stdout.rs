//! `type = "stdout"`: events as JSON lines on standard output.
//!
//! Each batch is encoded into one buffer, written with one `write_all`
//! and flushed, so a reader sees whole batches promptly and lines from
//! different batches never interleave. A closed reader (`gammaray run |
//! head`) gives [`SinkError::Closed`], not a panic: Rust ignores `SIGPIPE`,
//! so the write returns `EPIPE`.

use std::io::Write;
use std::sync::Arc;

use gammaray_config::StdoutSinkConfig;

use crate::{write_json_lines, Sink, SinkError, SinkStats, Stamped};

/// JSON lines to standard output (or, for tests, to any writer).
pub struct StdoutSink {
    name: String,
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
    stats: SinkStats,
}

impl StdoutSink {
    /// A sink writing to the process's standard output.
    pub fn new(name: &str, _cfg: &StdoutSinkConfig) -> StdoutSink {
        StdoutSink::with_writer(name, Box::new(std::io::stdout()))
    }

    /// A sink writing the same lines to another writer.
    pub fn with_writer(name: &str, out: Box<dyn Write + Send>) -> StdoutSink {
        StdoutSink {
            name: name.to_string(),
            out,
            buf: Vec::new(),
            stats: SinkStats::default(),
        }
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, batch: &[Arc<Stamped>]) -> Result<(), SinkError> {
        write_json_lines(
            &self.name,
            &mut self.out,
            &mut self.buf,
            batch,
            &mut self.stats,
        )
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| SinkError::io(&self.name, e))
    }

    fn stats(&self) -> SinkStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_events::{batch, check_lines};
    use std::io;
    use std::sync::Mutex;

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A reader that has gone away.
    struct BrokenPipe;

    impl Write for BrokenPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn writes_json_lines() {
        let out = Shared::default();
        let mut sink = StdoutSink::with_writer("out", Box::new(out.clone()));
        let b = batch();
        sink.send(&b).unwrap();
        sink.send(&b).unwrap();
        sink.send(&[]).unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        check_lines(&text, 2);
        assert_eq!(
            sink.stats(),
            SinkStats {
                sent: 8,
                failed: 0,
                dropped: 0
            }
        );
    }

    #[test]
    fn broken_pipe_is_an_error_not_a_panic() {
        let mut sink = StdoutSink::with_writer("out", Box::new(BrokenPipe));
        let e = sink.send(&batch()).unwrap_err();
        assert!(matches!(e, SinkError::Closed { .. }), "{e}");
        assert!(e.to_string().contains("broken pipe"), "{e}");
        assert_eq!(sink.stats().failed, 4);
        assert_eq!(sink.stats().sent, 0);
        assert!(matches!(sink.flush(), Err(SinkError::Closed { .. })));
    }

    #[test]
    fn real_stdout_sink_builds() {
        let mut sink = StdoutSink::new("stdout", &StdoutSinkConfig {});
        assert_eq!(sink.name(), "stdout");
        sink.send(&[]).unwrap();
    }
}
