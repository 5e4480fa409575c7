//! `gammaray run` as a child process, for the live tests.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::gammaray;

/// A `gammaray run` process; its stderr goes to `DIR/run.stderr`.
pub struct Engine {
    child: Child,
    stderr: PathBuf,
}

impl Engine {
    /// Starts `gammaray run ARGS…` with `env`.
    pub fn start(dir: &Path, env: &[(&str, &str)], args: &[&OsStr]) -> Result<Engine, String> {
        let stderr = dir.join("run.stderr");
        let file = std::fs::File::create(&stderr).map_err(|e| e.to_string())?;
        let child = Command::new(gammaray())
            .envs(env.iter().copied())
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("starting gammaray run: {e}"))?;
        Ok(Engine { child, stderr })
    }

    /// Starts `gammaray run --for 300 -c DIR/gammaray.toml` with `toml`
    /// written there.
    pub fn with_config(dir: &Path, toml: &str) -> Result<Engine, String> {
        let cfg = dir.join("gammaray.toml");
        std::fs::write(&cfg, toml).map_err(|e| e.to_string())?;
        Engine::start(
            dir,
            &[],
            &[
                "--for".as_ref(),
                "300".as_ref(),
                "-c".as_ref(),
                cfg.as_os_str(),
            ],
        )
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (at most 60 s) until every socket in `socks` is served.
    pub fn wait_serving(&mut self, socks: &[PathBuf]) -> Result<(), String> {
        let t0 = Instant::now();
        for sock in socks {
            while !sock.exists() {
                let exited = self.child.try_wait().ok().flatten().is_some();
                if exited || t0.elapsed() > Duration::from_secs(60) {
                    let _ = self.child.kill();
                    return Err(format!(
                        "gammaray run did not serve {}: {}",
                        sock.display(),
                        self.stderr()
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// The guests are gone: the engine follows the last writes and exits
    /// (killed after 60 s). Its stderr, if it exited successfully.
    pub fn finish(self) -> Result<String, String> {
        match self.exit() {
            (Some(s), err) if s.success() => Ok(err),
            (other, err) => Err(format!("gammaray run ended with {other:?}: {err}")),
        }
    }

    /// Waits (at most 60 s) for the engine to exit: its status (`None` if
    /// it had to be killed) and its stderr.
    pub fn exit(mut self) -> (Option<std::process::ExitStatus>, String) {
        let t0 = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                _ if t0.elapsed() > Duration::from_secs(60) => {
                    let _ = self.child.kill();
                    break None;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let err = self.stderr();
        eprintln!("gammaray run: {err}");
        (status, err)
    }

    /// Waits until stderr contains `what` (the engine still running).
    pub fn wait_for(&mut self, what: &str, timeout: Duration) -> Result<String, String> {
        let t0 = Instant::now();
        loop {
            let err = self.stderr();
            if err.contains(what) {
                return Ok(err);
            }
            if self.child.try_wait().ok().flatten().is_some() || t0.elapsed() > timeout {
                let _ = self.child.kill();
                return Err(format!("gammaray run never said {what:?}:\n{err}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits (at most 120 s) for a clean exit.
    pub fn stop(mut self) -> Result<String, String> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let t0 = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                _ if t0.elapsed() > Duration::from_secs(120) => {
                    let _ = self.child.kill();
                    break None;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let err = self.stderr();
        eprintln!("gammaray run: {err}");
        match status {
            Some(s) if s.success() => Ok(err),
            other => Err(format!("gammaray run ended with {other:?}: {err}")),
        }
    }
}
