//! A VM's RAM: one run of physical frames the frame allocator handed out for it alone, reached
//! through the kernel's identity map. The nested page tables map guest-physical 0.. onto it; the
//! hypervisor reads and writes it only through [`GuestMemory`], bounds-checked.

use ember_hw::mm::frames::FrameAllocator;
use ember_vmm::memory::{checked_range, GuestMemory, OutOfRange};
use ember_vmm::GuestPhysAddr;

pub struct GuestRamRegion {
    base: u64,
    size: u64,
}

impl GuestRamRegion {
    /// Takes `size` bytes (whole pages) aligned to `align` from the frame allocator, or `None`
    /// when there is no such run. Invariant: the run is RAM inside the kernel's identity map
    /// (which covers all RAM) and belongs to this value alone until [`Self::release`].
    pub fn allocate(frames: &mut FrameAllocator, size: u64, align: u64) -> Option<GuestRamRegion> {
        if size == 0 || !size.is_multiple_of(4096) {
            return None;
        }
        let base = frames.alloc_contiguous(size / 4096, align, u64::MAX)?;
        Some(GuestRamRegion { base, size })
    }

    /// Gives the memory back to the frame allocator.
    pub fn release(self, frames: &mut FrameAllocator) {
        frames.free_contiguous(self.base, self.size / 4096);
    }

    /// Host-physical address of guest-physical 0.
    pub fn base(&self) -> u64 {
        self.base
    }
}

// SAFETY: the region is plain memory owned by this value; moving it to another CPU is harmless.
unsafe impl Send for GuestRamRegion {}

impl GuestMemory for GuestRamRegion {
    fn size(&self) -> u64 {
        self.size
    }

    fn zero(&mut self) {
        // SAFETY: the region is owned by this value and identity mapped (`allocate`'s invariant).
        unsafe { core::ptr::write_bytes(self.base as *mut u8, 0, self.size as usize) }
    }

    fn read(&self, addr: GuestPhysAddr, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let r = checked_range(self.size, addr, buf.len())?;
        // SAFETY: `r` is inside the region (checked); the guest may be writing other parts of its
        // RAM, which a byte copy into our own buffer tolerates.
        unsafe {
            core::ptr::copy_nonoverlapping((self.base as *const u8).add(r.start), buf.as_mut_ptr(), buf.len())
        }
        Ok(())
    }

    fn write(&mut self, addr: GuestPhysAddr, data: &[u8]) -> Result<(), OutOfRange> {
        let r = checked_range(self.size, addr, data.len())?;
        // SAFETY: as in `read`; the destination range is inside the region.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), (self.base as *mut u8).add(r.start), data.len())
        }
        Ok(())
    }
}
