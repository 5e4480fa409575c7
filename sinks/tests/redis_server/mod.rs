//! A real `redis-server` for tests, on a free loopback port, stopped when
//! dropped. Shared by the sinks' and the engine's Redis tests.

#![allow(dead_code)] // each test crate uses a different part

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set (non-empty) to make a missing `redis-server` a failure instead of
/// a skip; CI sets it (with the guests' `GAMMARAY_REQUIRE_GUEST`).
pub const REQUIRE_ENVS: [&str; 2] = ["GAMMARAY_REQUIRE_REDIS", "GAMMARAY_REQUIRE_GUEST"];

/// The `redis-server` binary, if installed.
pub fn redis_binary() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file())
    })
}

/// Whether tests with a real Redis can run: true if `redis-server` is
/// installed; otherwise a loud skip, or a failure when one of
/// [`REQUIRE_ENVS`] is set (the policy of the testbed's
/// `guest_available`).
pub fn redis_available(test: &str) -> bool {
    if redis_binary().is_some() {
        return true;
    }
    let required = REQUIRE_ENVS
        .iter()
        .find(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    if let Some(var) = required {
        panic!("{test}: redis-server not found and {var} is set; run scripts/setup-host.sh");
    }
    eprintln!(
        "\n!!!!! SKIPPING {test}: redis-server not found (run scripts/setup-host.sh, or set \
         GAMMARAY_REQUIRE_REDIS=1 to make this a failure) !!!!!\n"
    );
    false
}

/// A running `redis-server --port P --save '' --appendonly no`.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    unix: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Sends one inline command and reads the first reply line.
pub fn command(port: u16, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Some(line.trim_end().to_string())
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// Starts a server on a free port that also listens on a unix socket
    /// ([`RedisServer::unix_url`]).
    pub fn start_with_unix_socket() -> RedisServer {
        RedisServer::start_with(true)
    }

    fn start_with(unix: bool) -> RedisServer {
        for _ in 0..5 {
            let mut s = RedisServer {
                port: free_port(),
                child: None,
                dir: tempfile::tempdir().expect("temp dir"),
                unix,
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    /// (Re)starts the server process on this port; false if it did not
    /// answer PING within 10 s.
    fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log file");
        let mut cmd = Command::new(redis_binary().expect("redis-server"));
        if self.unix {
            cmd.args(["--unixsocket", &self.socket().display().to_string()])
                .args(["--unixsocketperm", "700"]);
        }
        let child = cmd
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if command(self.port, "PING").as_deref() == Some("+PONG") {
                return true;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    /// The unix socket's path (with [`RedisServer::start_with_unix_socket`]).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// `unix:///…/redis.sock`.
    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server process (SIGKILL: like a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends the server process a signal by name (`STOP`, `CONT`).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -{sig} redis-server");
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal("CONT");
        self.stop();
    }
}
