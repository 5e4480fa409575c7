//! Every ext4 structure parser on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gammaray_ext4::fuzzing::parsers(data);
});
