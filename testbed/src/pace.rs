//! The pacing channel: the guest's second serial port (ttyS1) connected to
//! a unix socket the test listens on. At each pacing point the guest prints
//! `PAUSE <name>` and waits for one line back, so a test can hold the guest
//! (for example before it mounts its disk) while it attaches a capture.
//! `/init` pauses at `boot` (before mounting), `mounted` (before the
//! workload) and `done` (after unmounting, before power-off);
//! `gr_snapshot LABEL` pauses at `snap-LABEL` after its `sync`; workloads
//! may add their own with `gr_pace NAME`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};

/// The host end of the pacing channel.
#[derive(Debug)]
pub struct Pacer {
    path: PathBuf,
    listener: UnixListener,
    conn: Option<(BufReader<UnixStream>, UnixStream)>,
}

impl Pacer {
    /// Listens on `path` (put it in [`crate::RunSpec::pace`] before
    /// spawning the guest).
    pub fn listen(path: &Path) -> Result<Pacer> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).ctx("listening on", path)?;
        Ok(Pacer {
            path: path.to_path_buf(),
            listener,
            conn: None,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connection(
        &mut self,
        timeout: Duration,
    ) -> Result<&mut (BufReader<UnixStream>, UnixStream)> {
        if self.conn.is_none() {
            self.listener
                .set_nonblocking(true)
                .ctx("configuring", &self.path)?;
            let deadline = Instant::now() + timeout;
            let stream = loop {
                match self.listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err(Error::Pace("QEMU did not connect".into()));
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e).ctx("accepting on", &self.path),
                }
            };
            stream
                .set_nonblocking(false)
                .ctx("configuring", &self.path)?;
            let w = stream.try_clone().ctx("cloning", &self.path)?;
            self.conn = Some((BufReader::new(stream), w));
        }
        // OK to unwrap: set just above.
        Ok(self.conn.as_mut().expect("connection present"))
    }

    /// Waits until the guest pauses at `name`. Pauses at other points on
    /// the way are answered at once.
    pub fn wait_for(&mut self, name: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let (r, w) = self.connection(timeout)?;
        r.get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(|e| Error::Pace(e.to_string()))?;
        let want = format!("PAUSE {name}");
        let mut line = String::new();
        loop {
            line.clear();
            let n = r
                .read_line(&mut line)
                .map_err(|e| Error::Pace(format!("waiting for {name}: {e}")))?;
            if n == 0 {
                return Err(Error::Pace(format!(
                    "guest closed the channel before {name}"
                )));
            }
            let got = line.trim_end_matches(['\r', '\n']);
            if got == want {
                return Ok(());
            }
            if got.starts_with("PAUSE ") {
                w.write_all(b"go\n")
                    .map_err(|e| Error::Pace(e.to_string()))?;
            }
            if Instant::now() > deadline {
                return Err(Error::Pace(format!("timed out waiting for {name}")));
            }
        }
    }

    /// Lets the paused guest go on.
    pub fn resume(&mut self) -> Result<()> {
        let (_, w) = self.connection(Duration::from_secs(1))?;
        w.write_all(b"go\n").map_err(|e| Error::Pace(e.to_string()))
    }

    /// [`Pacer::wait_for`] then [`Pacer::resume`].
    pub fn step(&mut self, name: &str, timeout: Duration) -> Result<()> {
        self.wait_for(name, timeout)?;
        self.resume()
    }

    /// Answers every further pause in a background thread until the guest
    /// goes away.
    pub fn release_all(self) -> std::thread::JoinHandle<()> {
        self.serve(|_| {})
    }

    /// Answers every further pause in a background thread until the guest
    /// goes away, calling `at(name)` before letting the guest go on (the
    /// guest is held while `at` runs). Waits up to `timeout` for QEMU to
    /// connect.
    pub fn serve(
        mut self,
        mut at: impl FnMut(&str) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let Ok((r, w)) = self.connection(Duration::from_secs(600)) else {
                return;
            };
            let _ = r.get_ref().set_read_timeout(None);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if let Some(name) = line.trim_end().strip_prefix("PAUSE ") {
                            at(name);
                            if w.write_all(b"go\n").is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        })
    }
}
