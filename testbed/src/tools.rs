//! Running host tools (apt-get, dpkg, xz, zstd, mkfs) with useful errors.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::{Error, Result};

/// Finds `name` on `PATH` (and in the sbin directories, which a non-root
/// `PATH` often lacks).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Like [`find_tool`], but an error naming the tool when it is missing.
pub fn require_tool(name: &str) -> Result<PathBuf> {
    find_tool(name).ok_or_else(|| Error::MissingTool(name.to_string()))
}

/// Renders a command for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion and fails unless it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let text = describe(cmd);
    tracing::debug!(command = %text, "running");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Io {
            context: "running",
            path: PathBuf::from(cmd.get_program()),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(Error::Command {
            command: text,
            status: out.status.to_string(),
            stderr: tail,
        });
    }
    Ok(out)
}

/// A command for the tool `name`, found with [`require_tool`].
pub fn tool(name: &str) -> Result<Command> {
    Ok(Command::new(require_tool(name)?))
}

/// Runs `tool args... ` with `input` on stdin... via a file, writing stdout
/// to `out`.
pub fn run_to_file(name: &str, args: &[&OsStr], input: &Path, out: &Path) -> Result<()> {
    use crate::error::IoContext;
    let stdin = std::fs::File::open(input).ctx("opening", input)?;
    let stdout = std::fs::File::create(out).ctx("creating", out)?;
    let mut cmd = tool(name)?;
    cmd.args(args).stdin(stdin).stdout(stdout);
    let text = describe(&cmd);
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .ctx("running", PathBuf::from(name))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: text,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}
