//! Crawls an image and prints what was found and how long it took:
//! `cargo run --release -p gammaray-ext4 --example crawl -- IMAGE`.

use std::time::Instant;

use gammaray_core::{FileDevice, FileSystem, NoProgress};
use gammaray_ext4::Ext4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: crawl IMAGE")?;
    let dev = FileDevice::open(std::path::Path::new(&path))?;
    let t = Instant::now();
    let c = Ext4.crawl(&dev, &NoProgress)?;
    let el = t.elapsed();
    println!(
        "{}: {} files, {} names, {} block runs, {} inline, {} warnings in {:.3} s",
        c.model.fs_type,
        c.model.files.len(),
        c.model.tree.len(),
        c.model.blocks.len(),
        c.model.inline.len(),
        c.warnings.len(),
        el.as_secs_f64()
    );
    for w in c.warnings.iter().take(10) {
        println!("warning: {w}");
    }
    Ok(())
}
