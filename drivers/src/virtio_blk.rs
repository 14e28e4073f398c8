//! virtio-blk (virtio 1.2 section 5.2) through the `virtio-drivers` crate's PCI transport, polled,
//! behind the storage layer's [`BlockDevice`].
//!
//! The crate owns the virtqueue and negotiates VIRTIO_BLK_F_FLUSH when the device offers it; `flush`
//! then sends a FLUSH request, so a configuration write is on the medium before it is acknowledged. A
//! device without the feature has no volatile cache to flush (virtio 1.2 5.2.6.2: writes are durable
//! when completed). Requests are split so no buffer exceeds [`MAX_REQUEST_BYTES`].
//!
//! Known limit: the crate waits for each request's completion without a time-out, so a device that
//! never completes a request stalls the management CPU.

use alloc::format;
use ember_hw::mm::frames::FrameAllocator;
use ember_platform::arch::x86_64::dma::EmberHal;
use ember_platform::firmware::pcie::PciFunction;
use ember_storage::block::{BlockDevice, IoError};
use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::pci::PciTransport;

/// Largest single request (keeps descriptor buffers small).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

pub struct VirtioBlk {
    dev: VirtIOBlk<EmberHal, PciTransport>,
    blocks: u64,
}

impl VirtioBlk {
    pub fn new(f: &PciFunction, frames: &mut FrameAllocator) -> Result<Self, &'static str> {
        let transport = super::virtio_pci_transport(f, frames)?;
        let dev = VirtIOBlk::new(transport).map_err(|_| "virtio-blk initialisation failed")?;
        let blocks = dev.capacity();
        Ok(VirtioBlk { dev, blocks })
    }

    pub fn readonly(&self) -> bool {
        self.dev.readonly()
    }
}

fn device_error(what: &str, lba: u64, e: virtio_drivers::Error) -> IoError {
    IoError::Device(format!("virtio-blk {what} at block {lba}: {e:?}"))
}

impl BlockDevice for VirtioBlk {
    fn block_size(&self) -> u32 {
        SECTOR_SIZE as u32
    }

    fn num_blocks(&self) -> u64 {
        self.blocks
    }

    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check_request(lba, buf.len())?;
        for (i, chunk) in buf.chunks_mut(MAX_REQUEST_BYTES).enumerate() {
            let at = lba + (i * MAX_REQUEST_BYTES / SECTOR_SIZE) as u64;
            self.dev.read_blocks(at as usize, chunk).map_err(|e| device_error("read", at, e))?;
        }
        Ok(())
    }

    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.check_request(lba, buf.len())?;
        if self.dev.readonly() {
            return Err(IoError::Device(format!("virtio-blk write at block {lba}: the disk is read-only")));
        }
        for (i, chunk) in buf.chunks(MAX_REQUEST_BYTES).enumerate() {
            let at = lba + (i * MAX_REQUEST_BYTES / SECTOR_SIZE) as u64;
            self.dev.write_blocks(at as usize, chunk).map_err(|e| device_error("write", at, e))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.dev.flush().map_err(|e| device_error("flush", 0, e))
    }
}
