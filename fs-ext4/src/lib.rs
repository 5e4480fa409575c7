//! ext2/3/4 for gammaray (being written).
#![forbid(unsafe_code)]
