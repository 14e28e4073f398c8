//! PCIe enumeration through ECAM (PCIe 6.0 7.2.2): every function on every bus of every MCFG window,
//! with vendor, device, class and sized BARs logged. Drivers bind to this list in later work.

use super::acpi::EcamRegion;
use crate::arch::x86_64::mmio::MmioRegion;
use crate::arch::x86_64::paging;
use alloc::vec::Vec;
use ember_hw::mm::frames::FrameAllocator;
use ember_hw::pci::{class_name, decode_bar, Bar, Bdf};
use virtio_drivers::transport::pci::bus::{Cam, MmioCam, PciRoot};

/// A function found on the bus.
#[derive(Debug, Clone)]
pub struct PciFunction {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub bars: Vec<(usize, Bar)>,
    /// Address of this function's 4 KiB configuration space.
    config_base: u64,
    /// Address of bus 0 of the ECAM window this function sits in (for `virtio-drivers`' `PciRoot`).
    pub ecam_bus0: u64,
}

impl PciFunction {
    /// Turns on memory decoding and bus mastering (DMA) for a function a driver takes over.
    pub fn enable_memory_and_dma(&self) {
        let cs = ConfigSpace { base: self.config_base };
        let command = cs.read32(0x04);
        // Memory space (bit 1) and bus master (bit 2); keep INTx disabled (bit 10): drivers poll.
        cs.write32(0x04, (command & 0xffff) | 0x2 | 0x4 | 0x400);
    }

    /// Maps memory BAR `index` uncached and hands it out as a register window.
    pub fn map_memory_bar(&self, index: usize, frames: &mut FrameAllocator) -> Option<MmioRegion> {
        let (address, size) = self.bars.iter().find_map(|(i, b)| match b {
            Bar::Memory { address, size, .. } if *i == index && *address != 0 && *size != 0 => {
                Some((*address, *size))
            }
            _ => None,
        })?;
        paging::map_mmio(frames, address, size);
        // SAFETY: the range is a memory BAR sized by `probe`, assigned by firmware (non-zero), now mapped
        // uncached; each driver maps each BAR of its own function once.
        Some(unsafe { MmioRegion::new(address, size) })
    }

    /// Configuration access for `virtio-drivers`' PCI transport, which reads the function's virtio
    /// capabilities itself.
    pub fn virtio_pci_root(&self) -> PciRoot<MmioCam<'static>> {
        // SAFETY: `ecam_bus0` is the base of the MCFG window the scan found this function in, inside the
        // identity map (the scan skips windows outside it), and configuration space is never accessed
        // through Rust references. The transport only reads this function's configuration space.
        PciRoot::new(unsafe { MmioCam::new(self.ecam_bus0 as *mut u8, Cam::Ecam) })
    }

    /// Maps every memory BAR (for drivers that reach their registers through capabilities).
    pub fn map_all_memory_bars(&self, frames: &mut FrameAllocator) {
        for (_, b) in &self.bars {
            if let Bar::Memory { address, size, .. } = b {
                if *address != 0 && *size != 0 {
                    paging::map_mmio(frames, *address, *size);
                }
            }
        }
    }
}

/// Configuration space of one function (4 KiB of ECAM, identity mapped).
struct ConfigSpace {
    base: u64,
}

impl ConfigSpace {
    fn read32(&self, offset: u64) -> u32 {
        // SAFETY: `base` is a 4 KiB ECAM function window inside the identity map (checked by the scan
        // before constructing), `offset` is a dword-aligned offset below 4096.
        unsafe { core::ptr::read_volatile((self.base + (offset & 0xffc)) as *const u32) }
    }
    fn write32(&self, offset: u64, v: u32) {
        // SAFETY: as in `read32`; writes go only to the command register and BARs during sizing, with
        // decoding disabled and original values restored.
        unsafe { core::ptr::write_volatile((self.base + (offset & 0xffc)) as *mut u32, v) }
    }
}

/// Enumerates all functions and logs them.
pub fn scan(regions: &[EcamRegion]) -> Vec<PciFunction> {
    let mut found = Vec::new();
    for r in regions {
        let buses = (r.bus_end as u64).saturating_sub(r.bus_start as u64) + 1;
        let end = r.base.saturating_add(buses << 20);
        if end > paging::mapped_limit() {
            kprintln!("ember: WARNING: ECAM window at {:#x} is outside the identity map; skipped", r.base);
            continue;
        }
        for bus in r.bus_start..=r.bus_end {
            for device in 0..32u8 {
                for function in 0..8u8 {
                    let bdf = Bdf { segment: r.segment, bus, device, function };
                    let Some(off) = bdf.ecam_offset(r.bus_start) else { continue };
                    let cs = ConfigSpace { base: r.base + off };
                    let id = cs.read32(0);
                    if id & 0xffff == 0xffff {
                        if function == 0 {
                            break;
                        }
                        continue;
                    }
                    let header_type = (cs.read32(0x0c) >> 16) as u8;
                    let mut f = probe(&cs, bdf, id, header_type);
                    f.ecam_bus0 = r.base.wrapping_sub((r.bus_start as u64) << 20);
                    found.push(f);
                    if function == 0 && header_type & 0x80 == 0 {
                        break; // single-function device
                    }
                }
            }
        }
    }
    for f in &found {
        kprintln!(
            "ember: pci {} {:04x}:{:04x} {} ({:02x}.{:02x}.{:02x})",
            f.bdf,
            f.vendor,
            f.device,
            class_name(f.class, f.subclass),
            f.class,
            f.subclass,
            f.prog_if
        );
        for (i, bar) in &f.bars {
            kprintln!("ember:     BAR{i} {bar}");
        }
    }
    kprintln!("ember: PCIe: {} functions", found.len());
    found
}

fn probe(cs: &ConfigSpace, bdf: Bdf, id: u32, header_type: u8) -> PciFunction {
    let class_reg = cs.read32(0x08);
    let bar_count = match header_type & 0x7f {
        0 => 6,
        1 => 2,
        _ => 0,
    };
    let command = cs.read32(0x04);
    // Disable I/O and memory decoding while sizing so no half-written BAR decodes anything.
    cs.write32(0x04, command & !0x3);
    let mut bars = Vec::new();
    let mut i = 0;
    while i < bar_count {
        let off = 0x10 + 4 * i as u64;
        let low = cs.read32(off);
        cs.write32(off, 0xffff_ffff);
        let low_mask = cs.read32(off);
        cs.write32(off, low);
        let is_64 = low & 1 == 0 && (low >> 1) & 3 == 2 && i + 1 < bar_count;
        let (high, high_mask) = if is_64 {
            let high = cs.read32(off + 4);
            cs.write32(off + 4, 0xffff_ffff);
            let m = cs.read32(off + 4);
            cs.write32(off + 4, high);
            (high, m)
        } else {
            (0, 0)
        };
        if let Some(bar) = decode_bar(low, low_mask, high, high_mask) {
            bars.push((i, bar));
        }
        i += if is_64 { 2 } else { 1 };
    }
    cs.write32(0x04, command);
    PciFunction {
        bdf,
        vendor: id as u16,
        device: (id >> 16) as u16,
        class: (class_reg >> 24) as u8,
        subclass: (class_reg >> 16) as u8,
        prog_if: (class_reg >> 8) as u8,
        bars,
        config_base: cs.base,
        ecam_bus0: 0,
    }
}
