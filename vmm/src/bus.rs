//! The buses of a VM: I/O port ranges and MMIO ranges mapped to device models (Firecracker's
//! `vstate/bus.rs` pattern). Devices are addressed by offset from their base; overlapping ranges
//! are refused when a device is added. A port nothing claims reads as all ones and ignores writes,
//! as on a PC's bus; an MMIO address nothing claims is not on the bus at all (the access ends the
//! VM, see [`super::exit`]).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// What a vCPU's port I/O goes to: an [`IoBus`] of devices, or a whole chipset
/// (`super::machine::Machine`).
pub trait PortBus {
    /// A guest IN of `size` bytes (1, 2, 4) from `port`.
    fn read(&mut self, port: u16, size: u8) -> u32;
    /// A guest OUT of the low `size` bytes of `value` to `port`.
    fn write(&mut self, port: u16, size: u8, value: u32);
}

impl PortBus for IoBus {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        IoBus::read(self, port, size)
    }
    fn write(&mut self, port: u16, size: u8, value: u32) {
        IoBus::write(self, port, size, value)
    }
}

/// A device on the port bus.
pub trait PortDevice {
    /// A read of `size` bytes (1, 2 or 4) at `offset` from the device's base.
    fn read(&mut self, offset: u16, size: u8) -> u32;
    /// A write of the low `size` bytes of `value` at `offset`.
    fn write(&mut self, offset: u16, size: u8, value: u32);
}

/// One mapped range.
struct Range {
    base: u16,
    len: u16,
    device: Box<dyn PortDevice>,
}

#[derive(Default)]
pub struct IoBus {
    ranges: Vec<Range>,
}

/// All ones in the low `size` bytes.
fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

impl IoBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at ports `base`..`base + len`; refused if it overlaps a mapped range.
    pub fn add(&mut self, base: u16, len: u16, device: Box<dyn PortDevice>) -> Result<(), String> {
        let end = u32::from(base).saturating_add(u32::from(len));
        if len == 0 || end > 0x1_0000 {
            return Err(format!("port range {base:#x}+{len} is empty or past 0xffff"));
        }
        let overlaps = |r: &&Range| {
            u32::from(base) < u32::from(r.base).saturating_add(u32::from(r.len)) && u32::from(r.base) < end
        };
        if let Some(r) = self.ranges.iter().find(overlaps) {
            return Err(format!("ports {base:#x}+{len} overlap the device at {:#x}+{}", r.base, r.len));
        }
        self.ranges.push(Range { base, len, device });
        Ok(())
    }

    fn find(&mut self, port: u16) -> Option<(&mut Range, u16)> {
        self.ranges
            .iter_mut()
            .find(|r| port >= r.base && u32::from(port) < u32::from(r.base).saturating_add(u32::from(r.len)))
            .map(|r| {
                let offset = port.wrapping_sub(r.base);
                (r, offset)
            })
    }

    /// A guest IN of `size` bytes from `port`.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        match self.find(port) {
            Some((r, offset)) => r.device.read(offset, size) & all_ones(size),
            None => all_ones(size),
        }
    }

    /// A guest OUT of `size` bytes to `port`.
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        if let Some((r, offset)) = self.find(port) {
            r.device.write(offset, size, value & all_ones(size));
        }
    }
}

/// A device in the MMIO space.
pub trait MmioDevice: Send {
    /// A read of `data.len()` bytes (1, 2, 4 or 8) at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
    /// Work an access asked for that needs guest memory (a virtio queue notification), done by
    /// the vCPU loop right after the exit.
    fn process(&mut self, _mem: &mut dyn super::memory::GuestMemory) {}
    /// The device's interrupt line (an ISA IRQ) and its level, if it has one.
    fn irq(&self) -> Option<(u8, bool)> {
        None
    }
    /// Something the host should log about the guest's use of the device (a driver that broke
    /// the device's rules), given once.
    fn take_notice(&mut self) -> Option<&'static str> {
        None
    }
}

/// A guest-physical address space without RAM behind it, as the exit handler uses it.
pub trait MmioSpace {
    /// Whether something answers all of `addr`..`addr + len`.
    fn mmio_claims(&self, addr: u64, len: u64) -> bool;
    /// A read; `false` when nothing claims the whole access.
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool;
    /// A write; `false` when nothing claims the whole access.
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool;
}

/// The vCPU's local APIC timer's IA32_TSC_DEADLINE register (MSR 0x6e0), where the VM has local
/// APICs; without one (the defaults) the MSR faults.
pub trait ApicTimer {
    /// The register as the guest reads it.
    fn tsc_deadline(&mut self) -> Option<u64> {
        None
    }
    /// A guest write of `tsc`, which is host time `ns`; `false`: there is no local APIC.
    fn set_tsc_deadline(&mut self, _tsc: u64, _ns: u64) -> bool {
        false
    }
    /// An RDMSR of x2APIC register `msr`; `None`: #GP.
    fn x2apic_read(&mut self, _msr: u32) -> Option<u64> {
        None
    }
    /// A WRMSR of x2APIC register `msr`; `false`: #GP.
    fn x2apic_write(&mut self, _msr: u32, _value: u64) -> bool {
        false
    }
    /// The APIC enters x2APIC mode (`on`) or leaves it (disabled through IA32_APIC_BASE).
    fn set_x2apic(&mut self, _on: bool) {}
}

/// Everything a vCPU's exits reach: ports, MMIO and its local APIC's timer.
pub trait VmBus: PortBus + MmioSpace + ApicTimer {}
impl<T: PortBus + MmioSpace + ApicTimer> VmBus for T {}

impl MmioSpace for MmioBus {
    fn mmio_claims(&self, addr: u64, len: u64) -> bool {
        MmioBus::claims(self, addr, len)
    }
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        MmioBus::read(self, addr, data)
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        MmioBus::write(self, addr, data)
    }
}

/// Ports and MMIO devices on buses of their own (the boot probe's guest, tests).
#[derive(Default)]
pub struct Buses {
    pub io: IoBus,
    pub mmio: MmioBus,
}

/// The boot probe's guest and tests have no local APIC.
impl ApicTimer for Buses {}

impl PortBus for Buses {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        self.io.read(port, size)
    }
    fn write(&mut self, port: u16, size: u8, value: u32) {
        self.io.write(port, size, value)
    }
}

impl MmioSpace for Buses {
    fn mmio_claims(&self, addr: u64, len: u64) -> bool {
        self.mmio.claims(addr, len)
    }
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        self.mmio.read(addr, data)
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        self.mmio.write(addr, data)
    }
}

struct MmioRange {
    base: u64,
    len: u64,
    device: Box<dyn MmioDevice>,
}

/// The MMIO ranges of a VM (guest-physical addresses not backed by RAM).
#[derive(Default)]
pub struct MmioBus {
    ranges: Vec<MmioRange>,
}

impl MmioBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at `base`..`base + len`; refused if it overlaps a mapped range.
    pub fn add(&mut self, base: u64, len: u64, device: Box<dyn MmioDevice>) -> Result<(), String> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(|| format!("MMIO range {base:#x}+{len:#x} is empty or wraps"))?;
        if let Some(r) = self.ranges.iter().find(|r| base < r.base.saturating_add(r.len) && r.base < end) {
            return Err(format!("MMIO {base:#x}+{len:#x} overlaps the device at {:#x}+{:#x}", r.base, r.len));
        }
        self.ranges.push(MmioRange { base, len, device });
        Ok(())
    }

    /// Whether a device covers all of `addr`..`addr + len`.
    pub fn claims(&self, addr: u64, len: u64) -> bool {
        self.ranges.iter().any(|r| addr >= r.base && addr.saturating_add(len) <= r.base.saturating_add(r.len))
    }

    fn find(&mut self, addr: u64, len: usize) -> Option<(&mut MmioRange, u64)> {
        self.ranges
            .iter_mut()
            .find(|r| addr >= r.base && addr.saturating_add(len as u64) <= r.base.saturating_add(r.len))
            .map(|r| {
                let offset = addr.wrapping_sub(r.base);
                (r, offset)
            })
    }

    /// Lets every device do the work its last accesses asked for, then reports each device's
    /// interrupt line and level to `set_irq`, and what a device has to tell the host's log to
    /// `notice` (with the device's base address).
    pub fn service(
        &mut self,
        mem: &mut dyn super::memory::GuestMemory,
        mut set_irq: impl FnMut(u8, bool),
        mut notice: impl FnMut(u64, &'static str),
    ) {
        // Devices may share a line (level-triggered, as virtio-mmio's are): it is high while any
        // of them holds it high.
        let mut lines: u16 = 0;
        let mut high: u16 = 0;
        for r in &mut self.ranges {
            r.device.process(mem);
            if let Some((line, level)) = r.device.irq() {
                let bit = 1u16.checked_shl(u32::from(line)).unwrap_or(0);
                lines |= bit;
                if level {
                    high |= bit;
                }
            }
            if let Some(what) = r.device.take_notice() {
                notice(r.base, what);
            }
        }
        for line in 0..16u8 {
            let bit = 1u16 << line;
            if lines & bit != 0 {
                set_irq(line, high & bit != 0);
            }
        }
    }

    /// A read; `false` when nothing claims the whole access.
    pub fn read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((r, offset)) => {
                r.device.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// A write; `false` when nothing claims the whole access.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((r, offset)) => {
                r.device.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::rc::Rc;
    use core::cell::RefCell;

    /// Records accesses; reads return the offset.
    struct Probe(Rc<RefCell<Vec<(u16, u8, u32)>>>);
    impl PortDevice for Probe {
        fn read(&mut self, offset: u16, _: u8) -> u32 {
            0xabcd_0000 | offset as u32
        }
        fn write(&mut self, offset: u16, size: u8, value: u32) {
            self.0.borrow_mut().push((offset, size, value));
        }
    }

    #[test]
    fn devices_by_offset_and_empty_ports() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut bus = IoBus::new();
        bus.add(0x3f8, 8, Box::new(Probe(log.clone()))).unwrap();
        bus.add(0x60, 1, Box::new(Probe(log.clone()))).unwrap();
        assert_eq!(bus.read(0x3fd, 1), 0x05);
        assert_eq!(bus.read(0x3f8, 2), 0x0000, "masked to the access size");
        assert_eq!(bus.read(0x3f8, 4), 0xabcd_0000);
        bus.write(0x3f8, 1, 0x1234_5641);
        bus.write(0x60, 2, 0xfffe);
        assert_eq!(*log.borrow(), [(0, 1, 0x41), (0, 2, 0xfffe)]);
        // Nothing at 0x400 or just past a device.
        assert_eq!((bus.read(0x400, 1), bus.read(0x400, 2), bus.read(0x400, 4)), (0xff, 0xffff, 0xffff_ffff));
        assert_eq!(bus.read(0x3f8 + 8, 1), 0xff);
        bus.write(0x61, 1, 0);
        assert_eq!(log.borrow().len(), 2);
    }

    #[test]
    fn overlaps_are_refused() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut bus = IoBus::new();
        bus.add(0x3f8, 8, Box::new(Probe(log.clone()))).unwrap();
        for (base, len) in [(0x3f8, 1), (0x3f0, 9), (0x3ff, 4), (0x3f0, 0x20)] {
            assert!(bus.add(base, len, Box::new(Probe(log.clone()))).is_err(), "{base:#x}+{len}");
        }
        assert!(bus.add(0x3f0, 8, Box::new(Probe(log.clone()))).is_ok(), "adjacent below");
        assert!(bus.add(0x400, 8, Box::new(Probe(log.clone()))).is_ok(), "adjacent above");
        assert!(bus.add(0xfff8, 9, Box::new(Probe(log.clone()))).is_err(), "past 0xffff");
        assert!(bus.add(0x10, 0, Box::new(Probe(log))).is_err(), "empty");
        assert_eq!(bus.read(0xffff, 1), 0xff);
    }
}
