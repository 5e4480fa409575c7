//! stock-QEMU capture for gammaray (being written).
