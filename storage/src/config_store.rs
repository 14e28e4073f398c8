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
use alloc::string::String;
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
        let mut w = self.start_write(dev.block_size(), slot, sequence, payload)?;
        while !w.step(dev)? {}
        Ok(w.stored)
    }

    /// The same write as [`ConfigStore::write_slot`], carried out one device command per
    /// [`SlotWrite::step`], so a caller that also serves users between steps never waits for more
    /// than one command of a slow medium.
    pub fn start_write(
        &self,
        block_size: u32,
        slot: usize,
        sequence: u64,
        payload: &[u8],
    ) -> Result<SlotWrite, StoreError> {
        let bs = block_size as usize;
        let max = self.capacity(block_size);
        if payload.len() > max {
            return Err(StoreError::TooLarge { len: payload.len(), max });
        }
        let mut body = vec![0u8; payload.len().div_ceil(bs).max(1) * bs];
        body[..payload.len()].copy_from_slice(payload);
        let mut header = vec![0u8; bs];
        header[..8].copy_from_slice(&SLOT_MAGIC);
        header[8..12].copy_from_slice(&SLOT_FORMAT.to_le_bytes());
        header[16..24].copy_from_slice(&sequence.to_le_bytes());
        header[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[28..32].copy_from_slice(&CRC32C.checksum(payload).to_le_bytes());
        let crc = CRC32C.checksum(&header[..32]);
        header[32..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        Ok(SlotWrite {
            lba: self.slot_lba(slot),
            block_size: bs,
            body,
            header,
            written: 0,
            stage: WriteStage::Payload,
            stored: Stored { sequence, slot, payload: payload.to_vec() },
        })
    }
}

/// Most payload bytes one [`SlotWrite::step`] writes (one device command).
pub const STEP_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteStage {
    Payload,
    Header,
    Flush,
    Done,
    Failed,
}

/// A slot being written in steps (see [`ConfigStore::start_write`]): the payload in commands of
/// at most [`STEP_BYTES`], then the header block, then a flush. Until the header is written the
/// slot is not valid, and the header is only written after the whole payload, so abandoning the
/// write (or a power cut) at any step leaves the other slot's configuration in force; the write
/// counts as saved only once the flush after the header has returned (the last step's `true`).
#[derive(Debug)]
pub struct SlotWrite {
    lba: u64,
    block_size: usize,
    body: Vec<u8>,
    header: Vec<u8>,
    /// Payload bytes written so far.
    written: usize,
    stage: WriteStage,
    /// What the slot holds once written.
    pub stored: Stored,
}

impl SlotWrite {
    /// Issues the next device command; `Ok(true)` once the slot is written and flushed. After an
    /// error the write is over (start a new one to try again).
    pub fn step(&mut self, dev: &mut dyn BlockDevice) -> Result<bool, StoreError> {
        let result = match self.stage {
            WriteStage::Payload => {
                // Whole blocks per command; the body is a whole number of blocks.
                let step = (STEP_BYTES / self.block_size).max(1) * self.block_size;
                let end = self.body.len().min(self.written + step);
                let first = self.lba + 1 + (self.written / self.block_size) as u64;
                dev.write_blocks(first, &self.body[self.written..end]).map(|()| {
                    self.written = end;
                    if end == self.body.len() {
                        self.stage = WriteStage::Header;
                    }
                })
            }
            WriteStage::Header => {
                dev.write_blocks(self.lba, &self.header).map(|()| self.stage = WriteStage::Flush)
            }
            WriteStage::Flush => dev.flush().map(|()| self.stage = WriteStage::Done),
            WriteStage::Done => Ok(()),
            WriteStage::Failed => Err(IoError::Device(String::from("the write was given up after an error"))),
        };
        if let Err(e) = result {
            self.stage = WriteStage::Failed;
            return Err(e.into());
        }
        Ok(self.stage == WriteStage::Done)
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
                    let after = store.load(&mut disk).unwrap().map(|s| s.payload);
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
    fn a_write_in_steps_issues_one_command_per_step_and_is_invisible_until_the_last() {
        // The real partition: 1 MiB, slots of 512 KiB.
        let store = ConfigStore::new(0, 2048).unwrap();
        let mut disk = MemDisk::new(512, 2048);
        let commands = |d: &MemDisk| d.writes + d.flushes;
        store.save(&mut disk, &config(1)).unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = store.start_write(512, 1, 2, &big).unwrap();
        let mut steps = 0;
        loop {
            let before = commands(&disk);
            let done = w.step(&mut disk).unwrap();
            steps += 1;
            assert_eq!(commands(&disk), before + 1, "step {steps}: one command");
            if done {
                break;
            }
            // Until the header is written, the other slot's configuration is the one a boot finds.
            let found = store.load(&mut disk).unwrap().unwrap().payload;
            if steps <= 200_000usize.div_ceil(STEP_BYTES) {
                assert!(found == config(1), "step {steps}: the old configuration");
            } else {
                assert!(found == big, "step {steps}: header written");
            }
        }
        // 200,000 bytes in commands of 1 KiB, the header, the flush.
        assert_eq!(steps, 200_000usize.div_ceil(STEP_BYTES) + 2);
        assert_eq!(w.stored.sequence, 2);
        assert!(store.load(&mut disk).unwrap().unwrap().payload == big);

        // A failed step ends the write: later steps fail too and the slot stays invalid.
        let mut protected = MemDisk::from_bytes(512, disk.bytes().to_vec());
        protected.write_protected = true;
        let mut w = store.start_write(512, 0, 3, &config(3)).unwrap();
        assert!(w.step(&mut protected).is_err());
        protected.write_protected = false;
        assert!(w.step(&mut protected).is_err(), "given up");
        assert!(store.load(&mut protected).unwrap().unwrap().payload == big);
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
