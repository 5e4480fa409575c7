//! Write inference on a small ext4 image with a journal: the input is a
//! stream of writes (plain writes, whole jbd2 transactions with
//! well-formed commits, stray commits, ticks, odd requests) fed through
//! an overlay and `Ext4Inference` (see `gammaray_ext4::fuzzing::infer`).
#![no_main]

use std::sync::OnceLock;

static SEED: &[u8] = include_bytes!("../seeds/ext4-1k-journal.sparse");

fn image() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| gammaray_ext4::fuzzing::unsparse(SEED))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = gammaray_ext4::fuzzing::infer(image(), data);
});
