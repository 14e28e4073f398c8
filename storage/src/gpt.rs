//! GUID partition tables (UEFI 2.10 section 5.3): writing a fresh table and reading one back with
//! every check the spec asks for (protective MBR, header signature, revision, size and CRC32, entry
//! array CRC32, usable range, overlapping partitions, the backup header at the end of the disk).
//!
//! The on-disk structures come from the `gpt_disk_types` crate (rust-osdev, no_std, used by the
//! `uefi` ecosystem), reinterpreted through `bytemuck`, so no field offsets are written by hand here.

use crate::block::{BlockDevice, IoError};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
/// GUIDs as the partition table stores them (re-exported for the drivers and the API).
pub use gpt_disk_types::Guid;
use gpt_disk_types::{
    GptHeader, GptHeaderRevision, GptHeaderSignature, GptPartitionAttributes, GptPartitionEntry,
    GptPartitionName, GptPartitionType, LbaLe, MasterBootRecord, U32Le,
};

/// Number of entries in the partition entry arrays written here (the spec minimum, 16 KiB).
pub const ENTRY_COUNT: u32 = 128;
/// Size of each partition entry written here.
pub const ENTRY_SIZE: u32 = 128;
/// The largest entry array accepted when reading (1 MiB) - bounds a hostile header.
const MAX_ENTRY_ARRAY_BYTES: u64 = 1024 * 1024;

/// One partition as the rest of Ember sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Index in the entry array (0-based).
    pub index: u32,
    /// Partition type GUID.
    pub type_guid: Guid,
    /// Unique partition GUID.
    pub unique_guid: Guid,
    /// First block.
    pub first_lba: u64,
    /// Last block (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Name (UCS-2 decoded).
    pub name: String,
}

impl Partition {
    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.last_lba - self.first_lba + 1
    }

    /// The same partition, to write again with [`write_gpt`].
    pub fn to_new(&self) -> NewPartition<'_> {
        NewPartition {
            type_guid: self.type_guid,
            unique_guid: self.unique_guid,
            first_lba: self.first_lba,
            last_lba: self.last_lba,
            attributes: self.attributes,
            name: &self.name,
        }
    }
}

/// A validated partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// Disk GUID.
    pub disk_guid: Guid,
    /// First block usable by partitions.
    pub first_usable_lba: u64,
    /// Last block usable by partitions.
    pub last_usable_lba: u64,
    /// Used entries, in entry-array order.
    pub partitions: Vec<Partition>,
    /// Problems that do not stop use of the table (for example a damaged backup header).
    pub warnings: Vec<String>,
}

/// What is wrong with a partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GptError {
    /// The device could not be read or written.
    Io(IoError),
    /// Block size other than 512 or 4096.
    UnsupportedBlockSize(u32),
    /// The device is too small for a partition table.
    TooSmall { blocks: u64 },
    /// LBA 0 has no 0x55AA boot signature.
    NoMbrSignature,
    /// The MBR is not a GPT protective MBR (no type 0xEE record).
    NotProtectiveMbr,
    /// The header at `lba` does not start with "EFI PART".
    BadSignature { lba: u64 },
    /// Unsupported header revision.
    BadRevision { lba: u64, revision: u32 },
    /// Header size outside 92..=block size.
    BadHeaderSize { lba: u64, size: u32 },
    /// Header CRC32 mismatch.
    HeaderCrc { lba: u64 },
    /// The header's `my_lba` field does not point at itself.
    WrongMyLba { lba: u64, my_lba: u64 },
    /// The header describes a disk larger than the device (for example a truncated image).
    Truncated { alternate_lba: u64, device_blocks: u64 },
    /// Entry array geometry is unusable.
    BadEntryArray { lba: u64, why: &'static str },
    /// Entry array CRC32 mismatch.
    EntryArrayCrc { lba: u64 },
    /// Usable range is inconsistent.
    BadUsableRange { first: u64, last: u64 },
    /// A partition lies outside the usable range or ends before it starts.
    PartitionOutOfRange { index: u32, first: u64, last: u64 },
    /// Two partitions overlap.
    Overlap { a: u32, b: u32 },
    /// A partition name does not fit or is not UCS-2.
    BadName(String),
    /// Partitions requested when writing do not fit the disk.
    DoesNotFit { index: u32 },
}

impl From<IoError> for GptError {
    fn from(e: IoError) -> Self {
        GptError::Io(e)
    }
}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GptError::*;
        match self {
            Io(e) => write!(f, "{e}"),
            UnsupportedBlockSize(b) => write!(f, "block size {b} is not supported (512 or 4096)"),
            TooSmall { blocks } => write!(f, "disk of {blocks} blocks is too small for a GPT"),
            NoMbrSignature => write!(f, "no partition table: block 0 lacks the 0x55AA boot signature"),
            NotProtectiveMbr => {
                write!(f, "not a GPT disk: the MBR has no protective (type 0xEE) partition")
            }
            BadSignature { lba } => write!(f, "GPT header at LBA {lba}: signature is not \"EFI PART\""),
            BadRevision { lba, revision } => {
                write!(f, "GPT header at LBA {lba}: unsupported revision {revision:#x}")
            }
            BadHeaderSize { lba, size } => write!(f, "GPT header at LBA {lba}: bad header size {size}"),
            HeaderCrc { lba } => write!(f, "GPT header at LBA {lba}: CRC32 mismatch (corrupt header)"),
            WrongMyLba { lba, my_lba } => {
                write!(f, "GPT header at LBA {lba}: claims to be at LBA {my_lba}")
            }
            Truncated { alternate_lba, device_blocks } => write!(
                f,
                "image is truncated: the GPT expects {} blocks but there are only {device_blocks}",
                alternate_lba.saturating_add(1)
            ),
            BadEntryArray { lba, why } => write!(f, "GPT header at LBA {lba}: partition entry array {why}"),
            EntryArrayCrc { lba } => {
                write!(f, "GPT header at LBA {lba}: partition entry array CRC32 mismatch")
            }
            BadUsableRange { first, last } => write!(f, "GPT usable range {first}..={last} is invalid"),
            PartitionOutOfRange { index, first, last } => {
                write!(f, "partition {} (LBA {first}..={last}) lies outside the usable area", index + 1)
            }
            Overlap { a, b } => write!(f, "partitions {} and {} overlap", a + 1, b + 1),
            BadName(n) => write!(f, "partition name {n:?} is not valid (at most 36 UCS-2 characters)"),
            DoesNotFit { index } => write!(f, "partition {} does not fit on the disk", index + 1),
        }
    }
}

/// A partition to create with [`write_gpt`].
#[derive(Debug, Clone)]
pub struct NewPartition<'a> {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: &'a str,
}

/// Blocks taken by one entry array written here.
pub fn entry_array_blocks(block_size: u32) -> u64 {
    (ENTRY_COUNT as u64 * ENTRY_SIZE as u64).div_ceil(block_size as u64)
}

/// First and last LBA available to partitions on a disk of `blocks` blocks.
pub fn usable_range(block_size: u32, blocks: u64) -> Option<(u64, u64)> {
    let array = entry_array_blocks(block_size);
    let first = 2 + array;
    let last = blocks.checked_sub(2 + array)?;
    (first <= last).then_some((first, last))
}

fn check_block_size(bs: u32) -> Result<(), GptError> {
    if bs == 512 || bs == 4096 {
        Ok(())
    } else {
        Err(GptError::UnsupportedBlockSize(bs))
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(bytes)
}

/// Writes a protective MBR, the primary and the backup GPT. Partition data is left alone.
pub fn write_gpt<D: BlockDevice + ?Sized>(
    dev: &mut D,
    disk_guid: Guid,
    parts: &[NewPartition<'_>],
) -> Result<(), GptError> {
    let bs = dev.block_size();
    check_block_size(bs)?;
    let blocks = dev.num_blocks();
    let (first_usable, last_usable) = usable_range(bs, blocks).ok_or(GptError::TooSmall { blocks })?;
    if parts.len() > ENTRY_COUNT as usize {
        return Err(GptError::DoesNotFit { index: ENTRY_COUNT });
    }

    let array_blocks = entry_array_blocks(bs);
    let mut array = vec![0u8; (array_blocks * bs as u64) as usize];
    for (i, p) in parts.iter().enumerate() {
        if p.first_lba < first_usable || p.last_lba > last_usable || p.last_lba < p.first_lba {
            return Err(GptError::DoesNotFit { index: i as u32 });
        }
        let name: GptPartitionName = p.name.parse().map_err(|_| GptError::BadName(String::from(p.name)))?;
        let entry = GptPartitionEntry {
            partition_type_guid: GptPartitionType(p.type_guid),
            unique_partition_guid: p.unique_guid,
            starting_lba: LbaLe::from_u64(p.first_lba),
            ending_lba: LbaLe::from_u64(p.last_lba),
            attributes: GptPartitionAttributes(gpt_disk_types::U64Le::from_u64(p.attributes)),
            name,
        };
        let off = i * ENTRY_SIZE as usize;
        array[off..off + ENTRY_SIZE as usize].copy_from_slice(bytemuck::bytes_of(&entry));
    }
    let array_crc = crc32(&array[..(ENTRY_COUNT * ENTRY_SIZE) as usize]);

    let last_lba = blocks - 1;
    let make_header = |my: u64, alt: u64, entries: u64| {
        let mut h = GptHeader {
            signature: GptHeaderSignature::EFI_COMPATIBLE_PARTITION_TABLE_HEADER,
            revision: GptHeaderRevision::VERSION_1_0,
            header_size: U32Le::from_u32(92),
            header_crc32: Default::default(),
            reserved: U32Le::from_u32(0),
            my_lba: LbaLe::from_u64(my),
            alternate_lba: LbaLe::from_u64(alt),
            first_usable_lba: LbaLe::from_u64(first_usable),
            last_usable_lba: LbaLe::from_u64(last_usable),
            disk_guid,
            partition_entry_lba: LbaLe::from_u64(entries),
            number_of_partition_entries: U32Le::from_u32(ENTRY_COUNT),
            size_of_partition_entry: U32Le::from_u32(ENTRY_SIZE),
            partition_entry_array_crc32: gpt_disk_types::Crc32(U32Le::from_u32(array_crc)),
        };
        h.update_header_crc32();
        let mut block = vec![0u8; bs as usize];
        block[..core::mem::size_of::<GptHeader>()].copy_from_slice(bytemuck::bytes_of(&h));
        block
    };

    let mut mbr_block = vec![0u8; bs as usize];
    let mbr = MasterBootRecord::protective_mbr(blocks);
    mbr_block[..512].copy_from_slice(bytemuck::bytes_of(&mbr));

    let backup_array_lba = last_lba - array_blocks;
    // Backup first (made durable), primary last: a disk interrupted mid-write has a valid primary
    // (the old table) or a valid backup (the new one, which `read_gpt` then uses), never only a
    // primary that points at a half-written table.
    dev.write_blocks(backup_array_lba, &array)?;
    dev.write_blocks(last_lba, &make_header(last_lba, 1, backup_array_lba))?;
    dev.flush()?;
    dev.write_blocks(2, &array)?;
    dev.write_blocks(1, &make_header(1, last_lba, 2))?;
    dev.write_blocks(0, &mbr_block)?;
    dev.flush()?;
    Ok(())
}

/// Reads and validates the header at `lba`, then its entry array.
fn read_header_and_entries<D: BlockDevice + ?Sized>(
    dev: &mut D,
    lba: u64,
) -> Result<(GptHeader, Vec<u8>), GptError> {
    let bs = dev.block_size();
    let mut block = vec![0u8; bs as usize];
    dev.read_blocks(lba, &mut block)?;
    let hdr: GptHeader = bytemuck::pod_read_unaligned(&block[..core::mem::size_of::<GptHeader>()]);
    if !hdr.is_signature_valid() {
        return Err(GptError::BadSignature { lba });
    }
    let rev = hdr.revision.0.to_u32();
    if rev >> 16 != 1 {
        return Err(GptError::BadRevision { lba, revision: rev });
    }
    let size = hdr.header_size.to_u32();
    if size < 92 || size > bs {
        return Err(GptError::BadHeaderSize { lba, size });
    }
    // The CRC covers `header_size` bytes with the CRC field zeroed.
    let mut covered = block[..size as usize].to_vec();
    covered[16..20].fill(0);
    if crc32(&covered) != hdr.header_crc32.0.to_u32() {
        return Err(GptError::HeaderCrc { lba });
    }
    let my_lba = hdr.my_lba.to_u64();
    if my_lba != lba {
        return Err(GptError::WrongMyLba { lba, my_lba });
    }
    let entry_size = hdr.size_of_partition_entry.to_u32();
    if entry_size < 128 || !entry_size.is_power_of_two() {
        return Err(GptError::BadEntryArray { lba, why: "has an entry size that is not 128 * 2^n" });
    }
    let count = hdr.number_of_partition_entries.to_u32();
    let bytes = count as u64 * entry_size as u64;
    if bytes > MAX_ENTRY_ARRAY_BYTES {
        return Err(GptError::BadEntryArray { lba, why: "is larger than 1 MiB" });
    }
    let array_lba = hdr.partition_entry_lba.to_u64();
    let array_blocks = bytes.div_ceil(bs as u64);
    match array_lba.checked_add(array_blocks) {
        Some(end) if end <= dev.num_blocks() && array_lba >= 1 => {}
        _ => return Err(GptError::BadEntryArray { lba, why: "lies outside the disk" }),
    }
    let mut array = vec![0u8; (array_blocks * bs as u64) as usize];
    dev.read_blocks(array_lba, &mut array)?;
    array.truncate(bytes as usize);
    if crc32(&array) != hdr.partition_entry_array_crc32.0.to_u32() {
        return Err(GptError::EntryArrayCrc { lba });
    }
    Ok((hdr, array))
}

/// Reads and validates the partition table of `dev`.
pub fn read_gpt<D: BlockDevice + ?Sized>(dev: &mut D) -> Result<Gpt, GptError> {
    let bs = dev.block_size();
    check_block_size(bs)?;
    let blocks = dev.num_blocks();
    if blocks < 3 {
        return Err(GptError::TooSmall { blocks });
    }
    let mut mbr_block = vec![0u8; bs as usize];
    dev.read_blocks(0, &mut mbr_block)?;
    if mbr_block[510] != 0x55 || mbr_block[511] != 0xAA {
        return Err(GptError::NoMbrSignature);
    }
    let mbr: MasterBootRecord = bytemuck::pod_read_unaligned(&mbr_block[..512]);
    if !mbr.partitions.iter().any(|p| p.os_indicator == 0xEE) {
        return Err(GptError::NotProtectiveMbr);
    }

    let mut warnings = Vec::new();
    let (hdr, array, primary) = match read_header_and_entries(dev, 1) {
        Ok((hdr, array)) => (hdr, array, true),
        // A damaged primary (a power cut while the table was rewritten, a bad block): the backup
        // at the last block, as UEFI firmware does (UEFI 2.10 5.3.2).
        Err(e) => match read_header_and_entries(dev, blocks - 1) {
            Ok((hdr, array)) if hdr.alternate_lba.to_u64() == 1 => {
                warnings.push(alloc::format!("the primary GPT is damaged ({e}); the backup is used"));
                (hdr, array, false)
            }
            _ => return Err(e),
        },
    };
    let alternate = if primary { hdr.alternate_lba.to_u64() } else { blocks - 1 };
    if alternate >= blocks {
        return Err(GptError::Truncated { alternate_lba: alternate, device_blocks: blocks });
    }
    let first = hdr.first_usable_lba.to_u64();
    let last = hdr.last_usable_lba.to_u64();
    if first > last || last >= blocks || first < 2 {
        return Err(GptError::BadUsableRange { first, last });
    }

    match primary.then(|| read_header_and_entries(dev, alternate)) {
        Some(Ok((backup, backup_array)))
            if backup_array != array
                || backup.first_usable_lba.to_u64() != first
                || backup.last_usable_lba.to_u64() != last
                || { backup.disk_guid } != { hdr.disk_guid } =>
        {
            warnings.push(String::from("the backup GPT does not match the primary"));
        }
        None | Some(Ok(_)) => {}
        Some(Err(e)) => warnings.push(alloc::format!("the backup GPT is damaged: {e}")),
    }
    if alternate != blocks - 1 {
        warnings.push(alloc::format!(
            "the backup GPT is at LBA {alternate}, not at the last block {} (disk grown?)",
            blocks - 1
        ));
    }

    let entry_size = hdr.size_of_partition_entry.to_u32() as usize;
    let mut partitions: Vec<Partition> = Vec::new();
    for (i, raw) in array.chunks_exact(entry_size).enumerate() {
        let e: GptPartitionEntry =
            bytemuck::pod_read_unaligned(&raw[..core::mem::size_of::<GptPartitionEntry>()]);
        if !e.is_used() {
            continue;
        }
        let p = Partition {
            index: i as u32,
            type_guid: e.partition_type_guid.0,
            unique_guid: e.unique_partition_guid,
            first_lba: e.starting_lba.to_u64(),
            last_lba: e.ending_lba.to_u64(),
            attributes: e.attributes.0.to_u64(),
            name: e.name.chars().collect(),
        };
        if p.first_lba < first || p.last_lba > last || p.last_lba < p.first_lba {
            return Err(GptError::PartitionOutOfRange {
                index: p.index,
                first: p.first_lba,
                last: p.last_lba,
            });
        }
        if let Some(o) = partitions.iter().find(|o| p.first_lba <= o.last_lba && o.first_lba <= p.last_lba) {
            return Err(GptError::Overlap { a: o.index, b: p.index });
        }
        partitions.push(p);
    }
    Ok(Gpt { disk_guid: hdr.disk_guid, first_usable_lba: first, last_usable_lba: last, partitions, warnings })
}

/// The gaps between partitions inside the usable range, as (first, last) LBAs, with each start rounded
/// up to `align` blocks; gaps smaller than one aligned block are left out.
pub fn free_ranges(gpt: &Gpt, align: u64) -> Vec<(u64, u64)> {
    let align = align.max(1);
    let mut used: Vec<(u64, u64)> = gpt.partitions.iter().map(|p| (p.first_lba, p.last_lba)).collect();
    used.sort_unstable();
    let mut out = Vec::new();
    let mut at = gpt.first_usable_lba;
    for (first, last) in used.into_iter().chain([(gpt.last_usable_lba.saturating_add(1), 0)]) {
        let start = at.next_multiple_of(align);
        if first > start && first - start >= align {
            out.push((start, first - 1));
        }
        at = at.max(last.saturating_add(1));
    }
    out
}

/// The largest of [`free_ranges`], as (first, last) LBAs.
pub fn largest_free_range(gpt: &Gpt, align: u64) -> Option<(u64, u64)> {
    free_ranges(gpt, align).into_iter().max_by_key(|&(f, l)| l - f)
}

/// Adds a partition in the largest free range of `dev`'s table (aligned to `align` blocks; at most
/// `max_blocks` long when given) and rewrites the table, keeping every existing entry. Returns the
/// new partition as read back.
pub fn add_partition<D: BlockDevice + ?Sized>(
    dev: &mut D,
    type_guid: Guid,
    unique_guid: Guid,
    name: &str,
    align: u64,
    max_blocks: Option<u64>,
) -> Result<Partition, GptError> {
    let gpt = read_gpt(dev)?;
    if gpt.partitions.len() >= ENTRY_COUNT as usize {
        return Err(GptError::DoesNotFit { index: ENTRY_COUNT });
    }
    let Some((first, last)) = largest_free_range(&gpt, align) else {
        return Err(GptError::DoesNotFit { index: gpt.partitions.len() as u32 });
    };
    let last = match max_blocks {
        Some(n) if n > 0 => last.min(first.saturating_add(n - 1)),
        _ => last,
    };
    let mut parts: Vec<NewPartition<'_>> = gpt.partitions.iter().map(Partition::to_new).collect();
    parts.push(NewPartition {
        type_guid,
        unique_guid,
        first_lba: first,
        last_lba: last,
        attributes: 0,
        name,
    });
    write_gpt(dev, gpt.disk_guid, &parts)?;
    let back = read_gpt(dev)?;
    back.partitions
        .into_iter()
        .find(|p| p.unique_guid == unique_guid)
        .ok_or(GptError::DoesNotFit { index: gpt.partitions.len() as u32 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;
    use gpt_disk_types::guid;

    const T1: Guid = guid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    const T2: Guid = guid!("0fc63daf-8483-4772-8e79-3d69d8477de4");

    fn sample(blocks: u64) -> MemDisk {
        let mut d = MemDisk::new(512, blocks);
        let parts = [
            NewPartition {
                type_guid: T1,
                unique_guid: guid!("11111111-2222-3333-4444-555555555555"),
                first_lba: 2048,
                last_lba: 4095,
                attributes: 1,
                name: "EFI System",
            },
            NewPartition {
                type_guid: T2,
                unique_guid: guid!("11111111-2222-3333-4444-666666666666"),
                first_lba: 4096,
                last_lba: 8191,
                attributes: 0,
                name: "data",
            },
        ];
        write_gpt(&mut d, guid!("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"), &parts).unwrap();
        d
    }

    #[test]
    fn round_trip() {
        let mut d = sample(16384);
        let gpt = read_gpt(&mut d).unwrap();
        assert!(gpt.warnings.is_empty(), "{:?}", gpt.warnings);
        assert_eq!(gpt.first_usable_lba, 34);
        assert_eq!(gpt.last_usable_lba, 16384 - 34);
        assert_eq!(gpt.partitions.len(), 2);
        assert_eq!(gpt.partitions[0].name, "EFI System");
        assert_eq!(gpt.partitions[0].type_guid, T1);
        assert_eq!(gpt.partitions[0].attributes, 1);
        assert_eq!(gpt.partitions[1].first_lba, 4096);
        assert_eq!(gpt.partitions[1].blocks(), 4096);
        assert_eq!(d.flushes, 2, "the backup is made durable before the primary is written");
    }

    /// Layout facts any GPT reader relies on, checked against the raw bytes.
    #[test]
    fn raw_bytes_match_the_spec() {
        let d = sample(16384);
        let b = d.bytes();
        assert_eq!(&b[510..512], &[0x55, 0xAA]);
        assert_eq!(b[446 + 4], 0xEE, "protective MBR partition type");
        assert_eq!(&b[512..520], b"EFI PART");
        assert_eq!(&b[512 + 8..512 + 12], &[0, 0, 1, 0], "revision 1.0");
        let last = 16383 * 512;
        assert_eq!(&b[last..last + 8], b"EFI PART", "backup header in the last block");
        // First entry: type GUID in mixed-endian form at LBA 2.
        assert_eq!(&b[1024..1028], &[0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(u64::from_le_bytes(b[1024 + 32..1024 + 40].try_into().unwrap()), 2048);
    }

    #[test]
    fn corrupt_fields_give_exact_errors() {
        let base = sample(16384);
        let check = |f: &dyn Fn(&mut [u8]), want: GptError| {
            let mut d = base.clone();
            f(d.bytes_mut());
            assert_eq!(read_gpt(&mut d).unwrap_err(), want);
        };
        check(&|b| b[511] = 0, GptError::NoMbrSignature);
        check(&|b| b[446 + 4] = 0x83, GptError::NotProtectiveMbr);
        // A damaged primary is an error when the backup is damaged too (else the backup is used).
        let backup = 16383 * 512;
        check(
            &|b| {
                b[512] = b'X';
                b[backup] = 0
            },
            GptError::BadSignature { lba: 1 },
        );
        check(
            &|b| {
                b[512 + 30] ^= 1;
                b[backup] = 0
            },
            GptError::HeaderCrc { lba: 1 },
        );
        check(
            &|b| {
                b[1024 + 40] ^= 1;
                b[backup] = 0
            },
            GptError::EntryArrayCrc { lba: 1 },
        );
    }

    /// A rewrite cut short after the backup was written (the primary's array half written): the
    /// backup, which holds the new table, is used, with a warning.
    #[test]
    fn a_table_rewrite_cut_short_leaves_the_backup_in_use() {
        let old = sample(16384);
        let mut new = old.clone();
        let mut parts: Vec<NewPartition<'_>> = Vec::new();
        let table = read_gpt(&mut new).unwrap();
        parts.extend(table.partitions.iter().map(Partition::to_new));
        parts.push(NewPartition {
            type_guid: T2,
            unique_guid: guid!("11111111-2222-3333-4444-777777777777"),
            first_lba: 9000,
            last_lba: 9999,
            attributes: 0,
            name: "added",
        });
        write_gpt(&mut new, table.disk_guid, &parts).unwrap();
        let mut cut = old.clone();
        let backup_from = (16383 - entry_array_blocks(512)) as usize * 512;
        cut.bytes_mut()[backup_from..].copy_from_slice(&new.bytes()[backup_from..]);
        cut.bytes_mut()[1024..1024 + 512].copy_from_slice(&new.bytes()[1024..1024 + 512]);
        let gpt = read_gpt(&mut cut).unwrap();
        assert_eq!(gpt.partitions.len(), 3, "the new table");
        assert!(gpt.warnings[0].starts_with("the primary GPT is damaged"), "{:?}", gpt.warnings);
        // Written again, both copies agree.
        write_gpt(&mut cut, gpt.disk_guid, &parts).unwrap();
        assert!(read_gpt(&mut cut).unwrap().warnings.is_empty());
    }

    #[test]
    fn truncated_image_is_reported() {
        let d = sample(16384);
        let mut short = MemDisk::from_bytes(512, d.bytes()[..8192 * 512].to_vec());
        assert_eq!(
            read_gpt(&mut short).unwrap_err(),
            GptError::Truncated { alternate_lba: 16383, device_blocks: 8192 }
        );
        assert!(read_gpt(&mut short).unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn damaged_backup_is_a_warning() {
        let mut d = sample(16384);
        d.bytes_mut()[16383 * 512] = 0;
        let gpt = read_gpt(&mut d).unwrap();
        assert_eq!(gpt.warnings.len(), 1);
        assert!(gpt.warnings[0].contains("backup GPT is damaged"));
    }

    #[test]
    fn overlapping_partitions_are_rejected() {
        let mut d = MemDisk::new(512, 16384);
        let p = |first, last| NewPartition {
            type_guid: T2,
            unique_guid: T2,
            first_lba: first,
            last_lba: last,
            attributes: 0,
            name: "x",
        };
        write_gpt(&mut d, T1, &[p(100, 200), p(200, 300)]).unwrap();
        assert_eq!(read_gpt(&mut d).unwrap_err(), GptError::Overlap { a: 0, b: 1 });
    }

    #[test]
    fn partitions_outside_the_disk_are_refused_when_writing() {
        let mut d = MemDisk::new(512, 1000);
        let p = NewPartition {
            type_guid: T2,
            unique_guid: T2,
            first_lba: 34,
            last_lba: 999,
            attributes: 0,
            name: "x",
        };
        assert_eq!(write_gpt(&mut d, T1, &[p]).unwrap_err(), GptError::DoesNotFit { index: 0 });
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic sweep: random bytes in the first blocks must give errors, not panics.
        let mut seed = 0x1234_5678u32;
        for _ in 0..200 {
            let mut d = sample(16384);
            for b in d.bytes_mut()[..4 * 512].iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                if seed.is_multiple_of(7) {
                    *b = seed as u8;
                }
            }
            let _ = read_gpt(&mut d);
        }
    }

    #[test]
    fn a_partition_is_added_in_the_largest_gap_and_the_others_are_kept() {
        let mut d = MemDisk::new(512, 64 * 2048);
        let mk = |first, last, n: &'static str| NewPartition {
            type_guid: Guid::from_bytes([1; 16]),
            unique_guid: Guid::from_bytes([first as u8; 16]),
            first_lba: first,
            last_lba: last,
            attributes: 0,
            name: n,
        };
        write_gpt(&mut d, Guid::from_bytes([9; 16]), &[mk(2048, 4095, "a"), mk(8192, 16383, "b")]).unwrap();
        let gpt = read_gpt(&mut d).unwrap();
        let free = free_ranges(&gpt, 2048);
        assert_eq!(free, [(4096, 8191), (16384, gpt.last_usable_lba)]);
        let p = add_partition(&mut d, Guid::from_bytes([3; 16]), Guid::from_bytes([4; 16]), "ds", 2048, None)
            .unwrap();
        assert_eq!((p.first_lba, p.last_lba, p.name.as_str()), (16384, gpt.last_usable_lba, "ds"));
        let again = read_gpt(&mut d).unwrap();
        assert_eq!(again.partitions.len(), 3);
        assert_eq!(again.disk_guid, Guid::from_bytes([9; 16]));
        assert_eq!(&again.partitions[..2], &gpt.partitions[..]);
        // Now only the small gap is left; a size cap is honoured.
        let q =
            add_partition(&mut d, Guid::from_bytes([3; 16]), Guid::from_bytes([5; 16]), "x", 2048, Some(100))
                .unwrap();
        assert_eq!((q.first_lba, q.last_lba), (4096, 4195));
    }
}
