//! PCI configuration header decoding (PCI Local Bus 3.0 section 6, PCIe 6.0 section 7.5).

use core::fmt;

/// Address of a function: segment, bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    pub segment: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl Bdf {
    /// Offset of this function's 4 KiB configuration space inside an ECAM window starting at
    /// `start_bus` (PCIe 6.0 7.2.2). `None` if the bus is below the window.
    pub fn ecam_offset(&self, start_bus: u8) -> Option<u64> {
        let bus = self.bus.checked_sub(start_bus)? as u64;
        Some((bus << 20) | ((self.device as u64 & 0x1f) << 15) | ((self.function as u64 & 7) << 12))
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{}", self.segment, self.bus, self.device, self.function)
    }
}

/// A decoded base address register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bar {
    /// I/O space at `port`.
    Io { port: u32, size: u32 },
    /// Memory space.
    Memory { address: u64, size: u64, is_64bit: bool, prefetchable: bool },
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bar::Io { port, size } => write!(f, "io {port:#x} ({size} B)"),
            Bar::Memory { address, size, is_64bit, prefetchable } => {
                write!(f, "mem{} {address:#x} ({})", if *is_64bit { "64" } else { "32" }, Size(*size))?;
                if *prefetchable {
                    write!(f, " pref")?;
                }
                Ok(())
            }
        }
    }
}

struct Size(u64);
impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s >= 1 << 30 && s.is_multiple_of(1 << 30) {
            write!(f, "{} GiB", s >> 30)
        } else if s >= 1 << 20 && s.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", s >> 20)
        } else if s >= 1 << 10 && s.is_multiple_of(1 << 10) {
            write!(f, "{} KiB", s >> 10)
        } else {
            write!(f, "{s} B")
        }
    }
}

/// Decodes a BAR from its original value(s) and the value(s) read back after writing all ones.
/// `high`/`high_mask` are the following BAR for 64-bit memory BARs. Returns `None` for an
/// unimplemented BAR (reads back zero).
pub fn decode_bar(low: u32, low_mask: u32, high: u32, high_mask: u32) -> Option<Bar> {
    if low & 1 == 1 {
        let mask = low_mask & 0xffff_fffc;
        if mask == 0 {
            return None;
        }
        // I/O BARs decode 16 or 32 bits; the upper bits may read back zero.
        let mask = mask | if mask & 0xffff_0000 == 0 { 0xffff_0000 } else { 0 };
        return Some(Bar::Io { port: low & 0xffff_fffc, size: (!mask).wrapping_add(1) });
    }
    let is_64bit = (low >> 1) & 3 == 2;
    let prefetchable = low & 8 != 0;
    let (address, mask) = if is_64bit {
        (
            ((high as u64) << 32) | (low & 0xffff_fff0) as u64,
            ((high_mask as u64) << 32) | (low_mask & 0xffff_fff0) as u64,
        )
    } else {
        ((low & 0xffff_fff0) as u64, (low_mask & 0xffff_fff0) as u64 | 0xffff_ffff_0000_0000)
    };
    if mask & 0xffff_ffff_ffff_fff0 == 0 || mask == 0xffff_ffff_0000_0000 {
        return None;
    }
    Some(Bar::Memory { address, size: (!mask).wrapping_add(1), is_64bit, prefetchable })
}

/// A short human name for a class code (base class, subclass).
pub fn class_name(base: u8, sub: u8) -> &'static str {
    match (base, sub) {
        (0x01, 0x00) => "SCSI controller",
        (0x01, 0x01) => "IDE controller",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x08) => "NVMe controller",
        (0x01, _) => "storage controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x02, _) => "network controller",
        (0x03, _) => "display controller",
        (0x04, _) => "multimedia controller",
        (0x05, _) => "memory controller",
        (0x06, 0x00) => "host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, _) => "bridge",
        (0x07, 0x00) => "serial controller",
        (0x07, _) => "communication controller",
        (0x08, _) => "system peripheral",
        (0x0c, 0x03) => "USB controller",
        (0x0c, 0x05) => "SMBus controller",
        (0x0c, _) => "serial bus controller",
        (0x00, _) => "unclassified device",
        (0xff, _) => "vendor-specific device",
        _ => "other device",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecam_offsets() {
        let b = Bdf { segment: 0, bus: 1, device: 2, function: 3 };
        assert_eq!(b.ecam_offset(0), Some((1 << 20) | (2 << 15) | (3 << 12)));
        assert_eq!(b.ecam_offset(2), None);
        assert_eq!(b.to_string(), "0000:01:02.3");
    }

    #[test]
    fn bars() {
        // 32-bit non-prefetchable 16 MiB at 0xc0000000.
        assert_eq!(
            decode_bar(0xc000_0000, 0xff00_0000, 0, 0),
            Some(Bar::Memory { address: 0xc000_0000, size: 16 << 20, is_64bit: false, prefetchable: false })
        );
        // 64-bit prefetchable 16 KiB above 4 GiB.
        assert_eq!(
            decode_bar(0x0000_400c, 0xffff_c00c, 0x8, 0xffff_ffff),
            Some(Bar::Memory { address: 0x8_0000_4000, size: 16 << 10, is_64bit: true, prefetchable: true })
        );
        // I/O BAR of 32 ports whose upper bits read back zero.
        assert_eq!(decode_bar(0xc001, 0x0000_ffe1, 0, 0), Some(Bar::Io { port: 0xc000, size: 32 }));
        // Unimplemented.
        assert_eq!(decode_bar(0, 0, 0, 0), None);
        assert_eq!(
            decode_bar(0xc000_0000, 0xff00_0000, 0, 0).unwrap().to_string(),
            "mem32 0xc0000000 (16 MiB)"
        );
    }

    #[test]
    fn class_names() {
        assert_eq!(class_name(0x01, 0x08), "NVMe controller");
        assert_eq!(class_name(0x0c, 0x03), "USB controller");
        assert_eq!(class_name(0x42, 0x00), "other device");
    }
}
