//! `gammaray capture` (being written).

use crate::CaptureArgs;

/// Runs `gammaray capture`.
pub fn run(_args: &CaptureArgs) -> anyhow::Result<()> {
    anyhow::bail!("gammaray capture is not implemented yet")
}
