//! The I/O APIC (Intel 82093AA data sheet; ICH9 I/O APIC, version 0x20 with the EOI register),
//! addressed by offset in its MMIO window (0xfec00000 in Ember's VMs): IOREGSEL at 0x00, IOWIN at
//! 0x10, EOI at 0x40; 24 redirection entries.
//!
//! [`IoApic::set_irq`] takes input pin levels; an unmasked edge-triggered pin delivers on a rising
//! edge, a level-triggered one while high and no EOI is outstanding (remote IRR). Deliveries are
//! returned to the caller, which hands them to the local APICs. Every value a guest writes is
//! accepted; read-only fields keep their values.

/// Redirection entries (pins).
pub const PINS: usize = 24;
/// Version register: version 0x20, maximum redirection entry 23.
pub const VERSION: u32 = ((PINS as u32 - 1) << 16) | 0x20;

const MASKED: u64 = 1 << 16;
const LEVEL: u64 = 1 << 15;
const REMOTE_IRR: u64 = 1 << 14;
const DELIVERY_STATUS: u64 = 1 << 12;

/// An interrupt for the local APICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub vector: u8,
    /// Delivery mode bits (0 fixed, 1 lowest priority, 4 NMI, 5 INIT, 7 ExtINT).
    pub mode: u8,
    /// Logical (true) or physical destination.
    pub logical: bool,
    pub dest: u8,
    pub level_triggered: bool,
}

#[derive(Debug, Clone)]
pub struct IoApic {
    id: u32,
    select: u32,
    redir: [u64; PINS],
    /// Input levels.
    levels: u32,
}

impl Default for IoApic {
    fn default() -> Self {
        Self::new()
    }
}

impl IoApic {
    pub fn new() -> IoApic {
        IoApic { id: 0, select: 0, redir: [MASKED; PINS], levels: 0 }
    }

    fn delivery(entry: u64) -> Delivery {
        Delivery {
            vector: entry as u8,
            mode: ((entry >> 8) & 7) as u8,
            logical: entry & (1 << 11) != 0,
            dest: (entry >> 56) as u8,
            level_triggered: entry & LEVEL != 0,
        }
    }

    /// Delivers pin `pin` if its state asks for it now.
    fn try_deliver(&mut self, pin: usize) -> Option<Delivery> {
        let bit = 1u32.checked_shl(pin as u32).unwrap_or(0);
        let entry = self.redir.get_mut(pin)?;
        let e = *entry;
        if e & MASKED != 0 || self.levels & bit == 0 {
            return None;
        }
        if e & LEVEL != 0 {
            if e & REMOTE_IRR != 0 {
                return None;
            }
            *entry |= REMOTE_IRR;
        }
        Some(Self::delivery(e))
    }

    /// Sets the level of input `pin`; returns the interrupt to deliver, if the change causes one.
    pub fn set_irq(&mut self, pin: usize, high: bool) -> Option<Delivery> {
        if pin >= PINS {
            return None;
        }
        let was = self.levels & (1 << pin) != 0;
        if high {
            self.levels |= 1 << pin;
        } else {
            self.levels &= !(1 << pin);
        }
        let level = self.redir.get(pin).is_some_and(|e| e & LEVEL != 0);
        if high && (level || !was) {
            self.try_deliver(pin)
        } else {
            None
        }
    }

    /// A local APIC's EOI for level-triggered `vector`: clears remote IRR of the pins using it and
    /// delivers again those still asserted.
    pub fn eoi(&mut self, vector: u8) -> alloc::vec::Vec<Delivery> {
        let mut out = alloc::vec::Vec::new();
        for pin in 0..PINS {
            let Some(entry) = self.redir.get_mut(pin) else { continue };
            if *entry & REMOTE_IRR != 0 && *entry as u8 == vector {
                *entry &= !REMOTE_IRR;
                out.extend(self.try_deliver(pin));
            }
        }
        out
    }

    fn read_register(&self) -> u32 {
        match self.select {
            0 => self.id,
            1 => VERSION,
            2 => self.id, // arbitration ID
            r @ 0x10..=0x3f => {
                let e = self.redir.get((r.wrapping_sub(0x10) / 2) as usize).copied().unwrap_or(0)
                    & !DELIVERY_STATUS;
                if r % 2 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// A guest read of `size` bytes at `offset`.
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            0x00 => self.select,
            0x10 => self.read_register(),
            _ => 0,
        }
    }

    /// A guest write at `offset`; returns an interrupt that unmasking or retriggering caused.
    pub fn write(&mut self, offset: u64, value: u32) -> alloc::vec::Vec<Delivery> {
        match offset {
            0x00 => self.select = value & 0xff,
            0x40 => return self.eoi(value as u8),
            0x10 => match self.select {
                0 => self.id = value & 0x0f00_0000,
                r @ 0x10..=0x3f => {
                    let pin = (r.wrapping_sub(0x10) / 2) as usize;
                    let Some(&old) = self.redir.get(pin) else { return alloc::vec::Vec::new() };
                    // Remote IRR and delivery status are read-only.
                    let keep = old & (REMOTE_IRR | DELIVERY_STATUS);
                    let new = if r % 2 == 0 {
                        (old & 0xffff_ffff_0000_0000) | (value as u64 & !(REMOTE_IRR | DELIVERY_STATUS))
                    } else {
                        (old & 0x0000_0000_ffff_ffff) | ((value as u64 & 0xff00_0000) << 32)
                    };
                    if let Some(entry) = self.redir.get_mut(pin) {
                        *entry = (new & !(REMOTE_IRR | DELIVERY_STATUS)) | keep;
                        if new & LEVEL == 0 {
                            *entry &= !REMOTE_IRR;
                        }
                    }
                    // A level-triggered input that is asserted when unmasked delivers now.
                    if old & MASKED != 0 && new & MASKED == 0 && new & LEVEL != 0 {
                        return self.try_deliver(pin).into_iter().collect();
                    }
                }
                _ => {}
            },
            _ => {}
        }
        alloc::vec::Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(io: &mut IoApic, pin: u32, low: u32, high: u32) {
        io.write(0, 0x10 + 2 * pin);
        io.write(0x10, low);
        io.write(0, 0x11 + 2 * pin);
        io.write(0x10, high);
    }

    #[test]
    fn edge_and_level_pins() {
        let mut io = IoApic::new();
        io.write(0, 1);
        assert_eq!(io.read(0x10), 0x0017_0020);
        assert_eq!(io.set_irq(2, true), None, "masked after reset");
        io.set_irq(2, false);
        // Pin 2 (the timer behind IRQ 0): edge, vector 0x30, physical APIC 1.
        program(&mut io, 2, 0x30, 0x0100_0000);
        let d = io.set_irq(2, true).unwrap();
        assert_eq!((d.vector, d.dest, d.logical, d.level_triggered, d.mode), (0x30, 1, false, false, 0));
        assert_eq!(io.set_irq(2, true), None, "no new edge");
        io.set_irq(2, false);
        assert!(io.set_irq(2, true).is_some());
        // Pin 9 (SCI): level, logical destination 1.
        program(&mut io, 9, 0x0000_a841, 0x0100_0000);
        let d = io.set_irq(9, true).unwrap();
        assert!(d.level_triggered && d.logical && d.vector == 0x41);
        assert_eq!(io.set_irq(9, true), None, "remote IRR holds it");
        io.write(0, 0x10 + 18);
        assert_eq!(io.read(0x10) & (1 << 14), 1 << 14, "remote IRR visible");
        assert_eq!(io.eoi(0x41).len(), 1, "still asserted: delivered again after EOI");
        io.set_irq(9, false);
        assert!(io.eoi(0x41).is_empty());
        // Unmasking an asserted level pin delivers at once.
        program(&mut io, 10, 0x0001_a050, 0);
        assert_eq!(io.set_irq(10, true), None);
        io.write(0, 0x10 + 20);
        assert_eq!(io.write(0x10, 0x0000_a050).len(), 1);
        // The EOI register does what a local APIC's broadcast EOI does.
        assert_eq!(io.write(0x40, 0x50).len(), 1);
    }

    #[test]
    fn random_accesses_never_panic() {
        let mut io = IoApic::new();
        let mut x = 0x1234_5678u32;
        for _ in 0..100_000 {
            crate::xorshift32(&mut x);
            match x % 4 {
                0 => drop(io.write([0, 0x10, 0x40, 0x20][(x >> 4) as usize % 4], x.rotate_left(3))),
                1 => drop(io.read([0, 0x10, 0x40][(x >> 4) as usize % 3])),
                2 => drop(io.set_irq((x >> 8) as usize % 30, x & 0x100 != 0)),
                _ => drop(io.eoi((x >> 8) as u8)),
            }
        }
    }
}
