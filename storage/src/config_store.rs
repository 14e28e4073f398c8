//! The configuration store: two slots in the config partition, so a saved configuration survives a
//! power cut at any instant (ARCHITECTURE.md "Persistent data").
//!
//! Each slot is half of the partition: a header block followed by the payload blocks. The header holds
//! a magic, the format version, a sequence number, the payload length and CRC-32C, and a CRC-32C of the
//! header itself. Loading reads both slots and takes the valid one with the higher sequence number. Saving
//! writes the *other* slot (the older or an invalid one) - payload first, header last - and flushes
//! before returning, so the newest valid slot is never touched: a cut at any point leaves either the old
//! configuration (the new slot fails its checks) or the new one. An unchanged payload is not written
//! again, keeping flash writes rare.

use crate::block::{BlockDevice, IoError};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Identifies a slot header.
pub const SLOT_MAGIC: [u8; 8] = *b"EMBERCFG";
/// Slot format version.
pub const SLOT_FORMAT: u32 = 1;
const HEADER_LEN: usize = 36;
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Why the store could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The partition is too small for two slots of a header and one payload block.
    TooSmall { blocks: u64 },
    /// The payload does not fit a slot.
    TooLarge { len: usize, max: usize },
    /// Neither slot is valid, but at least one is not blank: the store was damaged.
    Damaged { slot_a: SlotState, slot_b: SlotState },
    /// The device failed.
    Io(IoError),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::TooSmall { blocks } => {
                write!(f, "config store: partition of {blocks} blocks is too small")
            }
            StoreError::TooLarge { len, max } => {
                write!(f, "config store: configuration of {len} bytes exceeds the {max}-byte slot")
            }
            StoreError::Damaged { slot_a, slot_b } => {
                write!(f, "config store: no valid configuration (slot A: {slot_a}; slot B: {slot_b})")
            }
            StoreError::Io(e) => write!(f, "config store: {e}"),
        }
    }
}

impl From<IoError> for StoreError {
    fn from(e: IoError) -> Self {
        StoreError::Io(e)
    }
}

/// What a slot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// All zero (never written).
    Blank,
    /// A valid configuration with this sequence number.
    Valid { sequence: u64 },
    /// Written but failing a check; the text says which.
    Invalid(&'static str),
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotState::Blank => write!(f, "blank"),
            SlotState::Valid { sequence } => write!(f, "valid, sequence {sequence}"),
            SlotState::Invalid(why) => write!(f, "invalid ({why})"),
        }
    }
}

/// A stored configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub sequence: u64,
    /// 0 for slot A, 1 for slot B.
    pub slot: usize,
    pub payload: Vec<u8>,
}

/// The two-slot store on a partition `[first_lba, first_lba + blocks)` of a device.
#[derive(Debug, Clone, Copy)]
pub struct ConfigStore {
    first_lba: u64,
    slot_blocks: u64,
}

impl ConfigStore {
    /// The store on the given partition.
    pub fn new(first_lba: u64, blocks: u64) -> Result<Self, StoreError> {
        let slot_blocks = blocks / 2;
        if slot_blocks < 2 {
            return Err(StoreError::TooSmall { blocks });
        }
        Ok(ConfigStore { first_lba, slot_blocks })
    }

    /// Largest payload a slot holds on a device with `block_size`.
    pub fn capacity(&self, block_size: u32) -> usize {
        ((self.slot_blocks - 1) * block_size as u64).min(u32::MAX as u64) as usize
    }

    fn slot_lba(&self, slot: usize) -> u64 {
        self.first_lba + slot as u64 * self.slot_blocks
    }

    /// Reads one slot: its state and, when valid, its payload.
    pub fn read_slot(
        &self,
        dev: &mut dyn BlockDevice,
        slot: usize,
    ) -> Result<(SlotState, Option<Stored>), StoreError> {
        let bs = dev.block_size() as usize;
        let mut header = vec![0u8; bs];
        dev.read_blocks(self.slot_lba(slot), &mut header)?;
        if header.iter().all(|&b| b == 0) {
            return Ok((SlotState::Blank, None));
        }
        if header[..8] != SLOT_MAGIC {
            return Ok((SlotState::Invalid("no slot magic"), None));
        }
        let word = |o: usize| u32::from_le_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
        if word(32) != CRC32C.checksum(&header[..32]) {
            return Ok((SlotState::Invalid("header checksum mismatch"), None));
        }
        if word(8) != SLOT_FORMAT {
            return Ok((SlotState::Invalid("unknown slot format version"), None));
        }
        let sequence = u64::from(word(16)) | (u64::from(word(20)) << 32);
        let len = word(24) as usize;
        if len > self.capacity(bs as u32) {
            return Ok((SlotState::Invalid("payload length beyond the slot"), None));
        }
        let mut payload = vec![0u8; len.div_ceil(bs) * bs];
        dev.read_blocks(self.slot_lba(slot) + 1, &mut payload)?;
        payload.truncate(len);
        if word(28) != CRC32C.checksum(&payload) {
            return Ok((SlotState::Invalid("payload checksum mismatch"), None));
        }
        Ok((SlotState::Valid { sequence }, Some(Stored { sequence, slot, payload })))
    }

    /// The newest valid configuration; `None` when nothing was ever saved completely (first boot).
    pub fn load(&self, dev: &mut dyn BlockDevice) -> Result<Option<Stored>, StoreError> {
        let (state_a, a) = self.read_slot(dev, 0)?;
        let (state_b, b) = self.read_slot(dev, 1)?;
        match (a, b) {
            (Some(a), Some(b)) => Ok(Some(if b.sequence > a.sequence { b } else { a })),
            (Some(x), None) | (None, Some(x)) => Ok(Some(x)),
            // One slot blank and the other unreadable is what a cut during the very first save leaves:
            // there is no configuration yet. Both written and both unreadable is damage.
            (None, None) if state_a == SlotState::Blank || state_b == SlotState::Blank => Ok(None),
            (None, None) => Err(StoreError::Damaged { slot_a: state_a, slot_b: state_b }),
        }
    }

    /// Saves `payload` durably (flushed before returning). Returns the stored record; when the newest
    /// valid slot already holds exactly this payload nothing is written.
    pub fn save(&self, dev: &mut dyn BlockDevice, payload: &[u8]) -> Result<Stored, StoreError> {
        let current = match self.load(dev) {
            Ok(c) => c,
            // Both slots damaged: start a new sequence in slot A.
            Err(StoreError::Damaged { .. }) => None,
            Err(e) => return Err(e),
        };
        if let Some(c) = &current {
            if c.payload == payload {
                return Ok(c.clone());
            }
        }
        let (slot, sequence) = match &current {
            Some(c) => (1 - c.slot, c.sequence.wrapping_add(1)),
            None => (0, 1),
        };
        self.write_slot(dev, slot, sequence, payload)
    }

    /// Zeroes a slot's header block (the slot becomes blank) and flushes.
    pub fn clear_slot(&self, dev: &mut dyn BlockDevice, slot: usize) -> Result<(), StoreError> {
        let zero = vec![0u8; dev.block_size() as usize];
        dev.write_blocks(self.slot_lba(slot), &zero)?;
        dev.flush()?;
        Ok(())
    }

    /// Writes `payload` into `slot` with `sequence` - payload blocks first, the header block last -
    /// and flushes. The caller chooses a slot that does not hold the configuration in use.
    pub fn write_slot(
        &self,
        dev: &mut dyn BlockDevice,
        slot: usize,
        sequence: u64,
        payload: &[u8],
    ) -> Result<Stored, StoreError> {
        let bs = dev.block_size() as usize;
        let max = self.capacity(bs as u32);
        if payload.len() > max {
            return Err(StoreError::TooLarge { len: payload.len(), max });
        }
        let mut body = vec![0u8; payload.len().div_ceil(bs).max(1) * bs];
        body[..payload.len()].copy_from_slice(payload);
        dev.write_blocks(self.slot_lba(slot) + 1, &body)?;
        let mut header = vec![0u8; bs];
        header[..8].copy_from_slice(&SLOT_MAGIC);
        header[8..12].copy_from_slice(&SLOT_FORMAT.to_le_bytes());
        header[16..24].copy_from_slice(&sequence.to_le_bytes());
        header[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[28..32].copy_from_slice(&CRC32C.checksum(payload).to_le_bytes());
        let crc = CRC32C.checksum(&header[..32]);
        header[32..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        dev.write_blocks(self.slot_lba(slot), &header)?;
        dev.flush()?;
        Ok(Stored { sequence, slot, payload: payload.to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::testing::CuttingDisk;
    use crate::block::MemDisk;

    fn config(n: usize) -> Vec<u8> {
        alloc::format!("{{\"config\":{n},\"pad\":\"{}\"}}", "x".repeat(n * 300)).into_bytes()
    }

    #[test]
    fn first_boot_then_alternating_slots() {
        let mut disk = MemDisk::new(512, 2048);
        let store = ConfigStore::new(0, 2048).unwrap();
        assert_eq!(store.load(&mut disk).unwrap(), None);
        let a = store.save(&mut disk, &config(1)).unwrap();
        assert_eq!((a.slot, a.sequence), (0, 1));
        let b = store.save(&mut disk, &config(2)).unwrap();
        assert_eq!((b.slot, b.sequence), (1, 2));
        let c = store.save(&mut disk, &config(3)).unwrap();
        assert_eq!((c.slot, c.sequence), (0, 3));
        assert_eq!(store.load(&mut disk).unwrap().unwrap().payload, config(3));
        assert_eq!(disk.flushes, 3);
        // Saving the same configuration again writes nothing.
        let before = disk.bytes().to_vec();
        store.save(&mut disk, &config(3)).unwrap();
        assert_eq!(disk.bytes(), &before[..]);
        assert_eq!(disk.flushes, 3);
    }

    #[test]
    fn power_cut_at_every_write_leaves_old_or_new() {
        let store = ConfigStore::new(100, 64).unwrap();
        for history in 0..3usize {
            // Establish `history` earlier saves, then cut power during the next one at every block write,
            // with the block in flight torn at several points.
            for budget in 0..12 {
                for torn in [0, 1, 35, 36, 200, 511] {
                    let mut base = MemDisk::new(512, 200);
                    for n in 0..history {
                        store.save(&mut base, &config(n + 1)).unwrap();
                    }
                    let old = store.load(&mut base).unwrap().map(|s| s.payload);
                    let new = config(history + 1);
                    let mut disk = CuttingDisk { inner: base, budget, torn_bytes: torn, dead: false };
                    let result = store.save(&mut disk, &new);
                    let after = store.load(&mut disk.inner).unwrap().map(|s| s.payload);
                    if result.is_ok() {
                        assert_eq!(after.as_ref(), Some(&new), "history {history} budget {budget}");
                    } else {
                        assert!(
                            after == old || after.as_ref() == Some(&new),
                            "history {history} budget {budget} torn {torn}: neither old nor new"
                        );
                    }
                    // Outside the partition nothing changes.
                    assert!(disk.inner.bytes()[..100 * 512].iter().all(|&b| b == 0));
                    assert!(disk.inner.bytes()[164 * 512..].iter().all(|&b| b == 0));
                }
            }
        }
    }

    #[test]
    fn each_corruption_is_detected_and_the_other_slot_used() {
        let store = ConfigStore::new(0, 64).unwrap();
        let mut disk = MemDisk::new(512, 64);
        store.save(&mut disk, &config(1)).unwrap();
        store.save(&mut disk, &config(2)).unwrap(); // slot B, sequence 2
        let b = 32 * 512;
        for (offset, why) in [
            (b, "no slot magic"),
            (b + 12, "header checksum mismatch"),
            (b + 17, "header checksum mismatch"),
            (b + 512 + 3, "payload checksum mismatch"),
        ] {
            let mut d = MemDisk::from_bytes(512, disk.bytes().to_vec());
            d.bytes_mut()[offset] ^= 0x40;
            assert_eq!(store.read_slot(&mut d, 1).unwrap().0, SlotState::Invalid(why));
            assert_eq!(store.load(&mut d).unwrap().unwrap().payload, config(1), "{why}");
        }
        // Both slots damaged: an error naming both, not an empty configuration.
        let mut d = MemDisk::from_bytes(512, disk.bytes().to_vec());
        d.bytes_mut()[0] ^= 1;
        d.bytes_mut()[b + 512] ^= 1;
        let e = store.load(&mut d).unwrap_err();
        assert_eq!(e.to_string(), "config store: no valid configuration (slot A: invalid (no slot magic); slot B: invalid (payload checksum mismatch))");
        // A save on a damaged store starts over in slot A.
        assert_eq!(store.save(&mut d, &config(5)).unwrap().slot, 0);
        assert_eq!(store.load(&mut d).unwrap().unwrap().payload, config(5));
    }

    #[test]
    fn limits() {
        assert!(matches!(ConfigStore::new(0, 3), Err(StoreError::TooSmall { .. })));
        let store = ConfigStore::new(0, 8).unwrap();
        assert_eq!(store.capacity(512), 3 * 512);
        let mut disk = MemDisk::new(512, 8);
        assert!(matches!(store.save(&mut disk, &[1; 3 * 512 + 1]), Err(StoreError::TooLarge { .. })));
        store.save(&mut disk, &[1; 3 * 512]).unwrap();
        // A header claiming more than the slot holds is refused, not read past the slot.
        let mut d = MemDisk::from_bytes(512, disk.bytes().to_vec());
        d.bytes_mut()[24..28].copy_from_slice(&9999u32.to_le_bytes());
        let crc = CRC32C.checksum(&d.bytes()[..32]);
        d.bytes_mut()[32..36].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            store.read_slot(&mut d, 0).unwrap().0,
            SlotState::Invalid("payload length beyond the slot")
        );
    }
}
