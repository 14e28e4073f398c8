//! The Ember boot media layout (ARCHITECTURE.md "Persistent data", REFERENCE.md 3).
//!
//! ```text
//! LBA 0        protective MBR
//! LBA 1..33    primary GPT
//! 1 MiB        ESP, FAT32 (\EFI\BOOT\BOOTX64.EFI, \EFI\ember\boot.cfg)      ESP_SIZE
//!              Ember boot bank A                                            BANK_SIZE
//!              Ember boot bank B                                            BANK_SIZE
//!              Ember config store (two slots, written by the config issue)  CONFIG_SIZE
//!              (free: a datastore on large non-flash media, later)
//! last 33      backup GPT
//! ```
//! Partitions are found by their type GUID, never by position, so a resized or re-ordered table still
//! works. The boot banks and the config store are created zero-filled: their formats arrive with the
//! A/B update and configuration-store features; until then nothing reads or writes them.

use crate::gpt::{Gpt, NewPartition, Partition};
use alloc::vec::Vec;
use core::fmt;
use gpt_disk_types::{guid, Guid};

/// EFI System Partition type (UEFI 2.10 5.3.3).
pub const ESP_TYPE: Guid = guid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
/// Ember boot bank partition type (Ember's own GUID).
pub const BOOT_BANK_TYPE: Guid = guid!("3f0b2a2e-5d1c-4e8a-9a57-e4b1e0b7a001");
/// Ember config store partition type (Ember's own GUID).
pub const CONFIG_STORE_TYPE: Guid = guid!("3f0b2a2e-5d1c-4e8a-9a57-e4b1e0b7a002");
/// Ember datastore partition type (Ember's own GUID; the file system is `docs/datastore-format.md`).
pub const DATASTORE_TYPE: Guid = guid!("3f0b2a2e-5d1c-4e8a-9a57-e4b1e0b7a003");
/// The GPT name of a datastore partition.
pub const DATASTORE_PARTITION_NAME: &str = "Ember datastore";

/// Partition names, as `ember-image inspect` and `sgdisk -p` show them.
pub const ESP_NAME: &str = "EFI System";
pub const BANK_A_NAME: &str = "Ember boot bank A";
pub const BANK_B_NAME: &str = "Ember boot bank B";
pub const CONFIG_NAME: &str = "Ember config store";

const MIB: u64 = 1024 * 1024;
/// Partition alignment.
pub const ALIGN: u64 = MIB;
/// ESP size: FAT32 needs at least 65525 clusters (with 512-byte clusters, about 33 MiB).
pub const ESP_SIZE: u64 = 36 * MIB;
/// Size of each boot bank.
pub const BANK_SIZE: u64 = 16 * MIB;
/// Size of the config store.
pub const CONFIG_SIZE: u64 = MIB;
/// The smallest media the layout fits on.
pub const MIN_MEDIA_SIZE: u64 = ALIGN + ESP_SIZE + 2 * BANK_SIZE + CONFIG_SIZE + ALIGN;
/// Default image size written by `ember-image build`.
pub const DEFAULT_IMAGE_SIZE: u64 = 80 * MIB;

/// The role of a partition in the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Esp,
    BankA,
    BankB,
    ConfigStore,
}

impl Role {
    /// All roles, in on-disk order.
    pub const ALL: [Role; 4] = [Role::Esp, Role::BankA, Role::BankB, Role::ConfigStore];

    /// Partition type GUID of this role.
    pub fn type_guid(self) -> Guid {
        match self {
            Role::Esp => ESP_TYPE,
            Role::BankA | Role::BankB => BOOT_BANK_TYPE,
            Role::ConfigStore => CONFIG_STORE_TYPE,
        }
    }
    /// Partition name of this role.
    pub fn name(self) -> &'static str {
        match self {
            Role::Esp => ESP_NAME,
            Role::BankA => BANK_A_NAME,
            Role::BankB => BANK_B_NAME,
            Role::ConfigStore => CONFIG_NAME,
        }
    }
    /// Size in bytes.
    pub fn size(self) -> u64 {
        match self {
            Role::Esp => ESP_SIZE,
            Role::BankA | Role::BankB => BANK_SIZE,
            Role::ConfigStore => CONFIG_SIZE,
        }
    }
}

/// A planned or discovered partition with its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub role: Role,
    pub first_lba: u64,
    pub last_lba: u64,
}

impl Placed {
    /// Byte offset of the partition.
    pub fn byte_offset(&self, block_size: u32) -> u64 {
        self.first_lba * block_size as u64
    }
    /// Size in bytes.
    pub fn byte_len(&self, block_size: u32) -> u64 {
        (self.last_lba - self.first_lba + 1) * block_size as u64
    }
}

/// The Ember partitions of a medium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmberLayout {
    pub esp: Placed,
    pub bank_a: Placed,
    pub bank_b: Placed,
    pub config: Placed,
}

impl EmberLayout {
    /// The partitions in on-disk order.
    pub fn all(&self) -> [Placed; 4] {
        [self.esp, self.bank_a, self.bank_b, self.config]
    }
}

/// Why a medium is not an Ember medium, or a layout cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// The medium is smaller than [`MIN_MEDIA_SIZE`].
    TooSmall { bytes: u64 },
    /// Block size does not divide the alignment.
    BadBlockSize(u32),
    /// No partition of the role (foreign disk).
    Missing(Role),
    /// More than one partition of the role.
    Duplicate(Role),
    /// A partition is smaller than the role needs.
    TooSmallPartition { role: Role, bytes: u64 },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::TooSmall { bytes } => write!(
                f,
                "medium of {bytes} bytes is too small: Ember needs at least {MIN_MEDIA_SIZE} bytes ({} MiB)",
                MIN_MEDIA_SIZE / MIB
            ),
            LayoutError::BadBlockSize(b) => write!(f, "block size {b} is not supported"),
            LayoutError::Missing(r) => {
                write!(f, "not an Ember medium: no \"{}\" partition (type {})", r.name(), r.type_guid())
            }
            LayoutError::Duplicate(r) => write!(f, "more than one \"{}\" partition", r.name()),
            LayoutError::TooSmallPartition { role, bytes } => write!(
                f,
                "partition \"{}\" is {bytes} bytes; at least {} are needed",
                role.name(),
                role.size()
            ),
        }
    }
}

/// Plans the layout on a medium of `blocks` blocks.
pub fn plan(block_size: u32, blocks: u64) -> Result<EmberLayout, LayoutError> {
    if block_size == 0 || !ALIGN.is_multiple_of(block_size as u64) {
        return Err(LayoutError::BadBlockSize(block_size));
    }
    let bytes = blocks.saturating_mul(block_size as u64);
    if bytes < MIN_MEDIA_SIZE {
        return Err(LayoutError::TooSmall { bytes });
    }
    let bs = block_size as u64;
    let mut next = ALIGN / bs;
    let mut place = |role: Role| {
        let first = next;
        let n = role.size() / bs;
        next += n;
        Placed { role, first_lba: first, last_lba: first + n - 1 }
    };
    Ok(EmberLayout {
        esp: place(Role::Esp),
        bank_a: place(Role::BankA),
        bank_b: place(Role::BankB),
        config: place(Role::ConfigStore),
    })
}

/// The GPT entries for a planned layout; `guid_for(i)` supplies unique partition GUIDs.
pub fn gpt_entries(layout: &EmberLayout, guid_for: impl Fn(usize) -> Guid) -> Vec<NewPartition<'static>> {
    layout
        .all()
        .iter()
        .enumerate()
        .map(|(i, p)| NewPartition {
            type_guid: p.role.type_guid(),
            unique_guid: guid_for(i),
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            attributes: 0,
            name: p.role.name(),
        })
        .collect()
}

/// Finds the Ember partitions in a validated GPT. Banks are told apart by name; the ESP and config store
/// by type.
pub fn identify(gpt: &Gpt, block_size: u32) -> Result<EmberLayout, LayoutError> {
    let find = |role: Role| -> Result<Placed, LayoutError> {
        let matches: Vec<&Partition> = gpt
            .partitions
            .iter()
            .filter(|p| {
                p.type_guid == role.type_guid()
                    && match role {
                        Role::BankA | Role::BankB => p.name == role.name(),
                        _ => true,
                    }
            })
            .collect();
        match matches.as_slice() {
            [] => Err(LayoutError::Missing(role)),
            [p] => {
                let bytes = p.blocks() * block_size as u64;
                if bytes < role.size() {
                    return Err(LayoutError::TooSmallPartition { role, bytes });
                }
                Ok(Placed { role, first_lba: p.first_lba, last_lba: p.last_lba })
            }
            _ => Err(LayoutError::Duplicate(role)),
        }
    };
    Ok(EmberLayout {
        esp: find(Role::Esp)?,
        bank_a: find(Role::BankA)?,
        bank_b: find(Role::BankB)?,
        config: find(Role::ConfigStore)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;
    use crate::gpt::{read_gpt, write_gpt};

    fn disk_with(parts: &[NewPartition<'_>], blocks: u64) -> Gpt {
        let mut d = MemDisk::new(512, blocks);
        write_gpt(&mut d, ESP_TYPE, parts).unwrap();
        read_gpt(&mut d).unwrap()
    }

    #[test]
    fn planned_layout_is_aligned_and_in_order() {
        let l = plan(512, DEFAULT_IMAGE_SIZE / 512).unwrap();
        assert_eq!(l.esp.first_lba, 2048);
        let mut prev_end = 0;
        for p in l.all() {
            assert_eq!(p.byte_offset(512) % ALIGN, 0, "{:?} aligned", p.role);
            assert_eq!(p.byte_len(512), p.role.size());
            assert!(p.first_lba > prev_end);
            prev_end = p.last_lba;
        }
        let (_, last_usable) = crate::gpt::usable_range(512, DEFAULT_IMAGE_SIZE / 512).unwrap();
        assert!(prev_end <= last_usable);
    }

    #[test]
    fn planning_rejects_small_media() {
        assert_eq!(plan(512, 1000).unwrap_err(), LayoutError::TooSmall { bytes: 512_000 });
        assert!(plan(512, MIN_MEDIA_SIZE / 512).is_ok());
        assert_eq!(plan(3000, 1 << 20).unwrap_err(), LayoutError::BadBlockSize(3000));
    }

    #[test]
    fn planned_layout_identifies_itself() {
        let blocks = DEFAULT_IMAGE_SIZE / 512;
        let l = plan(512, blocks).unwrap();
        let gpt = disk_with(&gpt_entries(&l, |i| Guid::from_bytes([i as u8 + 1; 16])), blocks);
        assert_eq!(identify(&gpt, 512).unwrap(), l);
    }

    #[test]
    fn foreign_disks_are_named_as_such() {
        let blocks = DEFAULT_IMAGE_SIZE / 512;
        let l = plan(512, blocks).unwrap();
        let mut entries = gpt_entries(&l, |i| Guid::from_bytes([i as u8 + 1; 16]));
        entries.truncate(1); // only an ESP: any ordinary UEFI disk
        let gpt = disk_with(&entries, blocks);
        let e = identify(&gpt, 512).unwrap_err();
        assert_eq!(e, LayoutError::Missing(Role::BankA));
        assert!(e.to_string().starts_with("not an Ember medium"));

        let mut entries = gpt_entries(&l, |i| Guid::from_bytes([i as u8 + 1; 16]));
        entries[2].name = BANK_A_NAME;
        let gpt = disk_with(&entries, blocks);
        assert_eq!(identify(&gpt, 512).unwrap_err(), LayoutError::Duplicate(Role::BankA));
    }
}
