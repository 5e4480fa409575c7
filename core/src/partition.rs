//! Partition tables: MBR (with extended/logical partitions), GPT (with CRC
//! checks and the backup header), or none.
//!
//! Partition numbers follow Linux: MBR primaries 1-4, logical partitions from
//! 5 in chain order, GPT entries by their slot from 1, and 1 for an
//! unpartitioned disk.

use std::collections::HashSet;

use crate::device::BlockDevice;
use crate::error::{Error, Result};

/// Sector size assumed for MBR and GPT (512-byte logical sectors).
pub const SECTOR: u64 = 512;
/// Longest EBR chain followed; real disks have a few dozen logical
/// partitions at most, a hostile chain could be endless.
pub const MAX_LOGICAL_PARTITIONS: usize = 256;
/// Cap on the GPT entry array (the spec's minimum is 16 KiB; 1 MiB allows
/// 8192 entries of 128 bytes).
pub const MAX_GPT_ENTRY_BYTES: u64 = 1 << 20;

/// Which kind of table described a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// No table: the file system spans the whole disk.
    None,
    /// MBR (DOS) table.
    Mbr,
    /// GUID partition table.
    Gpt,
}

impl Scheme {
    /// "none", "mbr" or "gpt".
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::None => "none",
            Scheme::Mbr => "mbr",
            Scheme::Gpt => "gpt",
        }
    }
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Number as Linux gives it (sda1 → 1).
    pub number: u32,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// The table it came from.
    pub scheme: Scheme,
    /// MBR type byte as `0xNN`, or GPT type GUID; empty for no table.
    pub type_id: String,
}

/// The partitions of a disk, plus warnings about entries that were skipped.
#[derive(Debug)]
pub struct PartitionTable {
    /// The table kind.
    pub scheme: Scheme,
    /// Partitions in number order.
    pub partitions: Vec<Partition>,
    /// Damage found and worked around (bad entries, a bad primary GPT).
    pub warnings: Vec<Error>,
}

fn u16le(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

fn u32le(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64le(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// One 16-byte MBR/EBR slot.
#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    boot: u8,
    kind: u8,
    lba: u64,
    sectors: u64,
}

impl MbrEntry {
    fn parse(sector: &[u8], slot: usize) -> MbrEntry {
        let at = 446 + slot * 16;
        MbrEntry {
            boot: sector.get(at).copied().unwrap_or(0),
            kind: sector.get(at + 4).copied().unwrap_or(0),
            lba: u64::from(u32le(sector, at + 8)),
            sectors: u64::from(u32le(sector, at + 12)),
        }
    }

    fn is_extended(&self) -> bool {
        matches!(self.kind, 0x05 | 0x0f | 0x85)
    }
}

/// Reads the partition table of `dev`.
///
/// A disk whose sector 0 is not a plausible MBR (no 0x55AA signature, a boot
/// sector of a file system such as NTFS, or impossible entries) is treated as
/// unpartitioned: one partition, number 1, spanning the disk.
pub fn read_partitions(dev: &dyn BlockDevice) -> Result<PartitionTable> {
    let size = dev.size();
    let whole = || PartitionTable {
        scheme: Scheme::None,
        partitions: vec![Partition {
            number: 1,
            start: 0,
            len: size,
            scheme: Scheme::None,
            type_id: String::new(),
        }],
        warnings: Vec::new(),
    };
    if size < SECTOR {
        return Ok(whole());
    }
    let mut mbr = [0u8; 512];
    dev.read_at(0, &mut mbr)?;
    if u16le(&mbr, 510) != 0xaa55 || looks_like_fs_boot_sector(&mbr) {
        return Ok(whole());
    }
    let entries: Vec<MbrEntry> = (0..4).map(|i| MbrEntry::parse(&mbr, i)).collect();
    let disk_sectors = size / SECTOR;
    // A real MBR has boot flags 0 or 0x80 and entries inside the disk.
    let plausible = entries.iter().all(|e| {
        (e.boot == 0 || e.boot == 0x80)
            && (e.kind == 0 || (e.lba > 0 && e.sectors > 0 && e.lba < disk_sectors))
    });
    if !plausible || entries.iter().all(|e| e.kind == 0) {
        return Ok(whole());
    }
    if entries.iter().any(|e| e.kind == 0xee) {
        return read_gpt(dev);
    }
    read_mbr(dev, &entries)
}

/// NTFS, FAT and exFAT boot sectors also end in 0x55AA; their OEM name at
/// byte 3 tells them from an MBR.
fn looks_like_fs_boot_sector(sector: &[u8]) -> bool {
    let oem = sector.get(3..11).unwrap_or(&[]);
    oem == b"NTFS    " || oem == b"EXFAT   " || sector.get(0x52..0x57) == Some(b"FAT32")
}

fn read_mbr(dev: &dyn BlockDevice, entries: &[MbrEntry]) -> Result<PartitionTable> {
    let disk_sectors = dev.size() / SECTOR;
    let mut warnings = Vec::new();
    let mut partitions = Vec::new();
    let mut extended: Option<MbrEntry> = None;
    for (i, e) in entries.iter().enumerate() {
        if e.kind == 0 {
            continue;
        }
        let number = i as u32 + 1;
        let end = e.lba.saturating_add(e.sectors);
        if end > disk_sectors {
            warnings.push(Error::corrupt(
                "MBR partition entry",
                446 + i as u64 * 16,
                format!(
                    "partition {number} ends at sector {end}, past the disk's {disk_sectors} sectors"
                ),
            ));
            continue;
        }
        if e.is_extended() {
            if extended.is_none() {
                extended = Some(*e);
            } else {
                warnings.push(Error::corrupt(
                    "MBR partition entry",
                    446 + i as u64 * 16,
                    "second extended partition ignored",
                ));
            }
            continue;
        }
        partitions.push(Partition {
            number,
            start: e.lba * SECTOR,
            len: e.sectors * SECTOR,
            scheme: Scheme::Mbr,
            type_id: format!("0x{:02x}", e.kind),
        });
    }
    if let Some(ext) = extended {
        read_logical(dev, ext, &mut partitions, &mut warnings)?;
    }
    Ok(PartitionTable {
        scheme: Scheme::Mbr,
        partitions,
        warnings,
    })
}

/// Follows the EBR chain inside the extended partition `ext`.
fn read_logical(
    dev: &dyn BlockDevice,
    ext: MbrEntry,
    partitions: &mut Vec<Partition>,
    warnings: &mut Vec<Error>,
) -> Result<()> {
    let ext_end = ext.lba.saturating_add(ext.sectors);
    let mut ebr_lba = ext.lba;
    let mut seen = HashSet::new();
    let mut number = 5u32;
    let mut sector = [0u8; 512];
    for _ in 0..MAX_LOGICAL_PARTITIONS {
        let offset = ebr_lba * SECTOR;
        if !seen.insert(ebr_lba) {
            warnings.push(Error::corrupt(
                "EBR",
                offset,
                "EBR chain loops back to an EBR already read; chain cut",
            ));
            return Ok(());
        }
        dev.read_at(offset, &mut sector)?;
        if u16le(&sector, 510) != 0xaa55 {
            warnings.push(Error::corrupt(
                "EBR",
                offset,
                format!("signature 0x{:04x}, expected 0xaa55", u16le(&sector, 510)),
            ));
            return Ok(());
        }
        let this = MbrEntry::parse(&sector, 0);
        let next = MbrEntry::parse(&sector, 1);
        if this.kind != 0 && this.sectors > 0 {
            let start = ebr_lba.saturating_add(this.lba);
            let end = start.saturating_add(this.sectors);
            if this.lba == 0 || end > ext_end {
                warnings.push(Error::corrupt(
                    "EBR",
                    offset,
                    format!(
                        "logical partition {number} at sectors {start}..{end} lies outside the extended partition {}..{ext_end}",
                        ext.lba
                    ),
                ));
            } else {
                partitions.push(Partition {
                    number,
                    start: start * SECTOR,
                    len: this.sectors * SECTOR,
                    scheme: Scheme::Mbr,
                    type_id: format!("0x{:02x}", this.kind),
                });
            }
            number += 1;
        }
        if next.kind == 0 || next.lba == 0 {
            return Ok(());
        }
        let next_lba = ext.lba.saturating_add(next.lba);
        if next_lba >= ext_end {
            warnings.push(Error::corrupt(
                "EBR",
                offset,
                format!("next EBR at sector {next_lba} is outside the extended partition"),
            ));
            return Ok(());
        }
        ebr_lba = next_lba;
    }
    warnings.push(Error::corrupt(
        "EBR",
        ebr_lba * SECTOR,
        format!("more than {MAX_LOGICAL_PARTITIONS} logical partitions; chain cut"),
    ));
    Ok(())
}

/// A validated GPT header.
struct GptHeader {
    entries_lba: u64,
    num_entries: u64,
    entry_size: u64,
    entries_crc: u32,
    first_usable: u64,
    last_usable: u64,
}

fn parse_gpt_header(dev: &dyn BlockDevice, lba: u64) -> Result<GptHeader> {
    let offset = lba.saturating_mul(SECTOR);
    let mut s = [0u8; 512];
    dev.read_at(offset, &mut s)?;
    let bad = |detail: String| Error::corrupt("GPT header", offset, detail);
    if &s[0..8] != b"EFI PART" {
        return Err(bad("signature is not \"EFI PART\"".into()));
    }
    let header_size = u32le(&s, 12) as usize;
    if !(92..=512).contains(&header_size) {
        return Err(bad(format!("header size {header_size}, expected 92..=512")));
    }
    let stored_crc = u32le(&s, 16);
    let mut h = s;
    h[16..20].fill(0);
    let crc = crc32fast::hash(&h[..header_size]);
    if crc != stored_crc {
        return Err(bad(format!(
            "header CRC32 0x{stored_crc:08x}, computed 0x{crc:08x}"
        )));
    }
    let my_lba = u64le(&s, 24);
    if my_lba != lba {
        return Err(bad(format!("MyLBA {my_lba}, read at LBA {lba}")));
    }
    let entry_size = u64::from(u32le(&s, 84));
    let num_entries = u64::from(u32le(&s, 80));
    if entry_size < 128 || !entry_size.is_power_of_two() {
        return Err(bad(format!("entry size {entry_size}, expected 128 x 2^n")));
    }
    if num_entries.saturating_mul(entry_size) > MAX_GPT_ENTRY_BYTES {
        return Err(bad(format!(
            "{num_entries} entries of {entry_size} bytes exceed the {MAX_GPT_ENTRY_BYTES}-byte cap"
        )));
    }
    Ok(GptHeader {
        first_usable: u64le(&s, 40),
        last_usable: u64le(&s, 48),
        entries_lba: u64le(&s, 72),
        num_entries,
        entry_size,
        entries_crc: u32le(&s, 88),
    })
}

fn read_gpt_entries(dev: &dyn BlockDevice, h: &GptHeader) -> Result<Vec<u8>> {
    let offset = h.entries_lba.saturating_mul(SECTOR);
    // Bounded by MAX_GPT_ENTRY_BYTES in parse_gpt_header.
    let bytes = dev.read_vec(offset, (h.num_entries * h.entry_size) as usize)?;
    let crc = crc32fast::hash(&bytes);
    if crc != h.entries_crc {
        return Err(Error::corrupt(
            "GPT entry array",
            offset,
            format!("CRC32 0x{:08x}, computed 0x{crc:08x}", h.entries_crc),
        ));
    }
    Ok(bytes)
}

fn read_gpt(dev: &dyn BlockDevice) -> Result<PartitionTable> {
    let mut warnings = Vec::new();
    let last_lba = (dev.size() / SECTOR).saturating_sub(1);
    let primary = parse_gpt_header(dev, 1).and_then(|h| {
        let e = read_gpt_entries(dev, &h)?;
        Ok((h, e))
    });
    let (header, entries) = match primary {
        Ok(ok) => ok,
        Err(err) => {
            warnings.push(err);
            let backup = parse_gpt_header(dev, last_lba).and_then(|h| {
                let e = read_gpt_entries(dev, &h)?;
                Ok((h, e))
            });
            match backup {
                Ok(ok) => ok,
                Err(err) => {
                    return Err(Error::corrupt(
                        "GPT",
                        SECTOR,
                        format!(
                            "primary header unusable ({}); backup header unusable ({err})",
                            warnings.first().map(|w| w.to_string()).unwrap_or_default()
                        ),
                    ))
                }
            }
        }
    };
    let mut partitions = Vec::new();
    for i in 0..header.num_entries {
        let at = (i * header.entry_size) as usize;
        let Some(e) = entries.get(at..at + 128) else {
            break;
        };
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let first = u64le(e, 32);
        let last = u64le(e, 40);
        let number = i as u32 + 1;
        if first > last
            || first < header.first_usable
            || last > header.last_usable
            || last > last_lba
        {
            warnings.push(Error::corrupt(
                "GPT entry",
                header.entries_lba * SECTOR + at as u64,
                format!(
                    "partition {number} spans LBA {first}..={last}, outside the usable {}..={}",
                    header.first_usable, header.last_usable
                ),
            ));
            continue;
        }
        partitions.push(Partition {
            number,
            start: first * SECTOR,
            len: (last - first + 1) * SECTOR,
            scheme: Scheme::Gpt,
            type_id: guid_string(&e[0..16]),
        });
    }
    Ok(PartitionTable {
        scheme: Scheme::Gpt,
        partitions,
        warnings,
    })
}

/// A GUID in its usual mixed-endian text form.
fn guid_string(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        u32le(b, 0),
        u16le(b, 4),
        u16le(b, 6),
        b.get(8).copied().unwrap_or(0),
        b.get(9).copied().unwrap_or(0),
        b.get(10..16)
            .unwrap_or(&[])
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_entry(s: &mut [u8], slot: usize, kind: u8, lba: u32, sectors: u32) {
        let at = 446 + slot * 16;
        s[at + 4] = kind;
        s[at + 8..at + 12].copy_from_slice(&lba.to_le_bytes());
        s[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
        s[510] = 0x55;
        s[511] = 0xaa;
    }

    #[test]
    fn blank_disk_is_unpartitioned() {
        let disk = vec![0u8; 8192];
        let t = read_partitions(&disk).unwrap();
        assert_eq!(t.scheme, Scheme::None);
        assert_eq!(t.partitions[0].number, 1);
        assert_eq!(t.partitions[0].len, 8192);
    }

    #[test]
    fn logical_partitions_are_numbered_from_five() {
        let mut disk = vec![0u8; 512 * 400];
        put_entry(&mut disk[..512], 0, 0x83, 10, 20);
        put_entry(&mut disk[..512], 1, 0x05, 100, 300);
        // EBR 1 at 100: logical at +10, next EBR at ext+100.
        put_entry(&mut disk[100 * 512..101 * 512], 0, 0x83, 10, 50);
        put_entry(&mut disk[100 * 512..101 * 512], 1, 0x05, 100, 100);
        // EBR 2 at 200: logical at +5.
        put_entry(&mut disk[200 * 512..201 * 512], 0, 0x83, 5, 40);
        let t = read_partitions(&disk).unwrap();
        let got: Vec<(u32, u64)> = t
            .partitions
            .iter()
            .map(|p| (p.number, p.start / 512))
            .collect();
        assert_eq!(got, vec![(1, 10), (5, 110), (6, 205)]);
        assert!(t.warnings.is_empty());
    }

    #[test]
    fn ebr_loop_is_cut_with_a_warning() {
        let mut disk = vec![0u8; 512 * 400];
        put_entry(&mut disk[..512], 0, 0x05, 100, 300);
        put_entry(&mut disk[100 * 512..101 * 512], 0, 0x83, 10, 20);
        // EBR 1 links to EBR 2 at extended+50, which links to itself.
        put_entry(&mut disk[100 * 512..101 * 512], 1, 0x05, 50, 50);
        put_entry(&mut disk[150 * 512..151 * 512], 0, 0x83, 10, 20);
        put_entry(&mut disk[150 * 512..151 * 512], 1, 0x05, 50, 50);
        let t = read_partitions(&disk).unwrap();
        assert_eq!(t.partitions.len(), 2);
        assert!(t.warnings.iter().any(|w| w.to_string().contains("loops")));
    }

    #[test]
    fn out_of_range_primary_is_rejected() {
        let mut disk = vec![0u8; 512 * 100];
        put_entry(&mut disk[..512], 0, 0x83, 10, 20);
        put_entry(&mut disk[..512], 1, 0x83, 50, 500);
        let t = read_partitions(&disk).unwrap();
        assert_eq!(t.partitions.len(), 1);
        assert_eq!(t.warnings.len(), 1);
    }
}
