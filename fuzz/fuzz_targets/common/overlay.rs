//! A copy-on-write view of a prepared disk image: one fuzz input's writes land in a map on top of a
//! shared base, so each input starts from the same image without copying it. Shared by the fuzz
//! targets that need a disk (`#[path]`-included: the targets are separate binaries).

use ember_storage::block::{BlockDevice, IoError, MemDisk};
use std::collections::HashMap;

/// `base` (512-byte blocks) with this input's writes on top.
pub struct Overlay {
    base: &'static MemDisk,
    blocks: HashMap<u64, Vec<u8>>,
}

impl Overlay {
    pub fn new(base: &'static MemDisk) -> Overlay {
        assert_eq!(base.block_size(), 512, "overlays are of 512-byte-block images");
        Overlay { base, blocks: HashMap::new() }
    }
}

impl BlockDevice for Overlay {
    fn block_size(&self) -> u32 {
        512
    }
    fn num_blocks(&self) -> u64 {
        self.base.num_blocks()
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check_request(lba, buf.len())?;
        for (i, chunk) in buf.chunks_mut(512).enumerate() {
            let at = lba + i as u64;
            match self.blocks.get(&at) {
                Some(b) => chunk.copy_from_slice(b),
                None => chunk.copy_from_slice(&self.base.bytes()[at as usize * 512..][..512]),
            }
        }
        Ok(())
    }
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.check_request(lba, buf.len())?;
        for (i, chunk) in buf.chunks(512).enumerate() {
            self.blocks.insert(lba + i as u64, chunk.to_vec());
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }
}
