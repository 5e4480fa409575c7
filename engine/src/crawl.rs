//! `gammaray crawl` (being written).

use crate::CrawlArgs;

/// Runs `gammaray crawl`.
pub fn run(_args: &CrawlArgs) -> anyhow::Result<()> {
    anyhow::bail!("gammaray crawl is not implemented yet")
}
