//! Physical memory: the map the firmware hands over, and the frame allocator built from it.
pub mod frames;

/// Page size used throughout.
pub const PAGE_SIZE: u64 = 4096;

/// What a physical memory range is, independent of the firmware interface that reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Free RAM (UEFI conventional memory, and boot services code/data after ExitBootServices).
    Free,
    /// RAM holding the appliance itself and what it allocated before ExitBootServices.
    Loader,
    /// ACPI tables (reclaimable once parsed; kept).
    AcpiReclaim,
    /// ACPI NVS.
    AcpiNvs,
    /// Firmware runtime services code/data.
    FirmwareRuntime,
    /// Memory-mapped I/O.
    Mmio,
    /// Reserved, unusable or anything else.
    Reserved,
}

impl RegionKind {
    /// RAM the appliance may use (free now or holding the appliance).
    pub fn is_usable_ram(self) -> bool {
        matches!(self, RegionKind::Free | RegionKind::Loader)
    }
}

/// One range of the memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub pages: u64,
    pub kind: RegionKind,
}

impl Region {
    /// End address (exclusive), saturating.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.pages.saturating_mul(PAGE_SIZE))
    }
}

/// Bytes of usable RAM in a memory map.
pub fn usable_bytes(map: &[Region]) -> u64 {
    map.iter()
        .filter(|r| r.kind.is_usable_ram())
        .fold(0u64, |a, r| a.saturating_add(r.pages.saturating_mul(PAGE_SIZE)))
}

/// The highest end address of any RAM range (what the identity map must cover at least).
pub fn top_of_ram(map: &[Region]) -> u64 {
    map.iter()
        .filter(|r| !matches!(r.kind, RegionKind::Mmio | RegionKind::Reserved))
        .map(Region::end)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting() {
        let map = [
            Region { start: 0, pages: 160, kind: RegionKind::Free },
            Region { start: 0x10_0000, pages: 1000, kind: RegionKind::Free },
            Region { start: 0x50_0000, pages: 24, kind: RegionKind::Loader },
            Region { start: 0x7f00_0000, pages: 16, kind: RegionKind::AcpiNvs },
            Region { start: 0xffc0_0000, pages: 1024, kind: RegionKind::Mmio },
        ];
        assert_eq!(usable_bytes(&map), (160 + 1000 + 24) * 4096);
        assert_eq!(top_of_ram(&map), 0x7f01_0000);
    }
}
