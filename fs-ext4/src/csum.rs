//! The checksums ext4 keeps on its metadata: crc32c (`metadata_csum`) and
//! crc16 (`uninit_bg`, a.k.a. `gdt_csum`).

/// The kernel's `crc32c_le(seed, data)`: CRC-32C without the final
/// inversion, continued from `seed`.
pub fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// The kernel's `crc16(crc, data)`: CRC-16/ARC (polynomial 0x8005,
/// reflected), continued from `crc`.
pub fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // CRC-32C of "123456789" is 0xE3069283 (with the final inversion).
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
        // CRC-16/ARC of "123456789" is 0xBB3D (initial value 0).
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
    }
}
