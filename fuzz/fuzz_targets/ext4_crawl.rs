//! A whole crawl of a small image: the input itself (2 KiB or more) or
//! patches over a seed image made by mkfs.ext4 (see fuzz/README.md).
#![no_main]

static SEED: &[u8] = include_bytes!("../seeds/ext4-1k-inline.img");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gammaray_ext4::fuzzing::crawl(SEED, data);
});
