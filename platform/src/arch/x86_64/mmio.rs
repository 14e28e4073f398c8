//! Memory-mapped device registers as an owned, bounds-checked region.
//!
//! An [`MmioRegion`] is created once per device BAR (by the PCIe code, after the BAR has been sized and
//! mapped uncached) and handed to the driver, which can then only touch offsets inside it.

/// A device register window, identity mapped and uncached.
pub struct MmioRegion {
    base: u64,
    len: u64,
}

impl MmioRegion {
    /// # Safety
    /// `[base, base + len)` must be a device's register window (not RAM), mapped uncached in the
    /// current page tables, and no other `MmioRegion` may cover it.
    pub unsafe fn new(base: u64, len: u64) -> Self {
        MmioRegion { base, len }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: u64, size: u64) {
        assert!(
            offset.is_multiple_of(size) && offset.checked_add(size).is_some_and(|end| end <= self.len),
            "MMIO access at {offset:#x} outside the {:#x}-byte region",
            self.len
        );
    }

    /// Reads a 32-bit register.
    pub fn read32(&self, offset: u64) -> u32 {
        self.check(offset, 4);
        // SAFETY: the offset is aligned and inside the region, which `new`'s caller guaranteed is a
        // mapped device window owned by this value.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    /// Writes a 32-bit register.
    pub fn write32(&self, offset: u64, value: u32) {
        self.check(offset, 4);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }
}
