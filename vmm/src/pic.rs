//! The PC's two cascaded 8259A programmable interrupt controllers (Intel 8259A data sheet) on ports
//! 0x20-0x21 (master) and 0xa0-0xa1 (slave, on the master's input 2), with the edge/level control
//! registers (ELCR) at 0x4d0-0x4d1 that PCs add.
//!
//! Modelled: initialization (ICW1-ICW4: vector base, auto-EOI, level-triggered mode), the mask
//! register, non-specific and specific EOI, rotation on EOI and set-priority, reading IRR or ISR
//! (OCW3), poll mode, special mask mode, edge detection (an input must go low before it raises
//! another request) and level-triggered inputs (ELCR, or LTIM), and the spurious IRQ 7/15 that
//! an acknowledge without a request gives. Buffered mode and the 8080 call mode have no effect a
//! PC guest can see and are ignored. Every value a guest writes is accepted.

/// One 8259A.
#[derive(Debug, Clone, Default)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    /// Input levels as last set (for edge detection).
    lines: u8,
    /// Level-triggered inputs (ELCR bits, or all with ICW1.LTIM).
    level: u8,
    elcr: u8,
    elcr_mask: u8,
    /// Vector of input 0 (ICW2 & 0xf8).
    base: u8,
    /// The lowest-priority input is `priority_add - 1`: input `priority_add` has top priority.
    priority_add: u8,
    /// Initialization step awaited on the data port: 0 = none, 2 = ICW2, 3 = ICW3, 4 = ICW4.
    init: u8,
    icw4_needed: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    /// OCW3: command port reads give ISR (true) or IRR.
    read_isr: bool,
    poll: bool,
    special_mask: bool,
}

impl Chip {
    /// Priority of input `irq` (0 = highest) under the current rotation.
    fn priority(&self, irq: u8) -> u8 {
        irq.wrapping_sub(self.priority_add) & 7
    }

    /// The highest-priority input set in `bits`.
    fn highest(&self, bits: u8) -> Option<u8> {
        (0..8u8).map(|p| p.wrapping_add(self.priority_add) & 7).find(|&irq| bits & (1 << irq) != 0)
    }

    /// The input that would interrupt the CPU now, if any.
    fn pending(&self) -> Option<u8> {
        let candidate = self.highest(self.irr & !self.imr)?;
        // In special mask mode masked in-service inputs do not block lower ones.
        let isr = if self.special_mask { self.isr & !self.imr } else { self.isr };
        match self.highest(isr) {
            Some(in_service) if self.priority(in_service) <= self.priority(candidate) => None,
            _ => Some(candidate),
        }
    }

    fn set_line(&mut self, irq: u8, high: bool) {
        let bit = 1 << irq;
        if self.level & bit != 0 {
            if high {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if high && self.lines & bit == 0 {
            self.irr |= bit;
        }
        if high {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    /// The CPU's interrupt acknowledge for input `irq`.
    fn acknowledge(&mut self, irq: u8) {
        let bit = 1 << irq;
        if self.level & bit == 0 {
            self.irr &= !bit;
        }
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = irq.wrapping_add(1) & 7;
            }
        } else {
            self.isr |= bit;
        }
    }

    fn write_command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1: the chip resets its state and waits for ICW2 (and ICW3/ICW4).
            let elcr = (self.elcr, self.elcr_mask);
            let lines = self.lines;
            *self = Chip { elcr: elcr.0, elcr_mask: elcr.1, lines, ..Chip::default() };
            self.level = if v & 0x08 != 0 { 0xff } else { self.elcr };
            self.icw4_needed = v & 0x01 != 0;
            self.init = 2;
            return;
        }
        if v & 0x08 != 0 {
            // OCW3.
            if v & 0x04 != 0 {
                self.poll = true;
            }
            if v & 0x02 != 0 {
                self.read_isr = v & 0x01 != 0;
            }
            if v & 0x40 != 0 {
                self.special_mask = v & 0x20 != 0;
            }
            return;
        }
        // OCW2: R SL EOI in bits 7-5, the input in bits 2-0.
        let irq = v & 7;
        match v >> 5 {
            0b001 | 0b101 => {
                if let Some(s) = self.highest(self.isr) {
                    self.isr &= !(1 << s);
                    if v >> 5 == 0b101 {
                        self.priority_add = s.wrapping_add(1) & 7;
                    }
                }
            }
            0b011 => self.isr &= !(1 << irq),
            0b111 => {
                self.isr &= !(1 << irq);
                self.priority_add = irq.wrapping_add(1) & 7;
            }
            0b110 => self.priority_add = irq.wrapping_add(1) & 7,
            0b100 => self.rotate_on_auto_eoi = true,
            0b000 => self.rotate_on_auto_eoi = false,
            _ => {} // 0b010: no operation
        }
    }

    fn write_data(&mut self, v: u8) {
        match self.init {
            2 => {
                self.base = v & 0xf8;
                self.init = 3; // cascaded (ICW1.SNGL clear on PCs): ICW3 follows
            }
            3 => self.init = if self.icw4_needed { 4 } else { 0 },
            4 => {
                self.auto_eoi = v & 0x02 != 0;
                self.init = 0;
            }
            _ => self.imr = v,
        }
    }

    fn read_command(&mut self) -> Option<u8> {
        if self.poll {
            return None; // handled by the controller (it may involve the slave)
        }
        Some(if self.read_isr { self.isr } else { self.irr })
    }
}

/// The master and slave 8259A.
#[derive(Debug, Clone)]
pub struct Pic {
    chips: [Chip; 2],
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

/// The slave's input on the master.
const CASCADE: u8 = 2;

impl Pic {
    pub fn new() -> Pic {
        let mut p = Pic { chips: [Chip::default(), Chip::default()] };
        // ELCR: IRQ 0, 1, 2, 8 and 13 are always edge-triggered on PCs.
        p.chips[0].elcr_mask = 0xf8;
        p.chips[1].elcr_mask = 0xde;
        p
    }

    /// Sets the level of ISA interrupt line `irq` (0-15). Edge-triggered inputs request an
    /// interrupt on a rising edge; level-triggered ones while high.
    pub fn set_irq(&mut self, irq: u8, high: bool) {
        let [master, slave] = &mut self.chips;
        if irq < 8 {
            master.set_line(irq, high);
        } else if irq < 16 {
            slave.set_line(irq.wrapping_sub(8), high);
        }
        self.cascade();
    }

    /// Raises and lowers an edge-triggered line (a pulse).
    pub fn pulse_irq(&mut self, irq: u8) {
        self.set_irq(irq, true);
        self.set_irq(irq, false);
    }

    /// Carries the slave's interrupt output to the master's input 2. The master sees it as a
    /// level: a request the slave withdraws is withdrawn on the master too.
    fn cascade(&mut self) {
        let [m, slave] = &mut self.chips;
        let out = slave.pending().is_some();
        if out {
            m.irr |= 1 << CASCADE;
            m.lines |= 1 << CASCADE;
        } else {
            m.irr &= !(1 << CASCADE);
            m.lines &= !(1 << CASCADE);
        }
    }

    /// Whether the master asks the CPU for an interrupt (INTR high).
    pub fn interrupt_pending(&self) -> bool {
        let [master, _] = &self.chips;
        master.pending().is_some()
    }

    /// The CPU's interrupt acknowledge cycle: the vector to deliver. Without a request (it went away)
    /// the chip answers with its spurious input 7 and sets nothing in service, as the 8259A does.
    pub fn acknowledge(&mut self) -> u8 {
        // Vector bases are multiples of 8 (ICW2): base | input is base + input.
        let [master, slave] = &mut self.chips;
        let vector = match master.pending() {
            Some(CASCADE) => {
                master.acknowledge(CASCADE);
                match slave.pending() {
                    Some(s) => {
                        slave.acknowledge(s);
                        slave.base | s
                    }
                    None => slave.base | 7,
                }
            }
            Some(m) => {
                master.acknowledge(m);
                master.base | m
            }
            None => master.base | 7,
        };
        self.cascade();
        vector
    }

    /// Poll mode: the read acknowledges the highest request and returns 0x80 | input, or 0.
    fn poll_read(&mut self, chip: usize) -> u8 {
        let Some(c) = self.chips.get_mut(chip) else { return 0 };
        c.poll = false;
        let r = match c.pending() {
            Some(irq) => {
                c.acknowledge(irq);
                0x80 | irq
            }
            None => 0,
        };
        self.cascade();
        r
    }

    /// A guest read of `port` (0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1).
    pub fn read_port(&mut self, port: u16) -> u8 {
        let chip = usize::from(port & 0x80 != 0);
        match port {
            0x4d0 | 0x4d1 => self.chips.get(usize::from(port & 1)).map_or(0, |c| c.elcr),
            _ if port & 1 == 0 => match self.chips.get_mut(chip).and_then(|c| c.read_command()) {
                Some(v) => v,
                None => self.poll_read(chip),
            },
            _ => self.chips.get(chip).map_or(0, |c| c.imr),
        }
    }

    /// A guest write of `value` to `port`.
    pub fn write_port(&mut self, port: u16, value: u8) {
        let chip = usize::from(port & 0x80 != 0);
        match port {
            0x4d0 | 0x4d1 => {
                if let Some(c) = self.chips.get_mut(usize::from(port & 1)) {
                    c.elcr = value & c.elcr_mask;
                    c.level = c.elcr;
                }
            }
            _ => {
                if let Some(c) = self.chips.get_mut(chip) {
                    if port & 1 == 0 {
                        c.write_command(value)
                    } else {
                        c.write_data(value)
                    }
                }
            }
        }
        self.cascade();
    }

    /// The vector base of the master (ICW2), as programmed.
    pub fn master_base(&self) -> u8 {
        self.chips[0].base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Programs the PICs the way Linux's init_8259A does: vectors 0x30/0x38, cascade on 2, 8086 mode.
    fn linux_init(p: &mut Pic) {
        p.write_port(0x21, 0xff);
        p.write_port(0xa1, 0xff);
        p.write_port(0x20, 0x11);
        p.write_port(0x21, 0x30);
        p.write_port(0x21, 0x04);
        p.write_port(0x21, 0x01);
        p.write_port(0xa0, 0x11);
        p.write_port(0xa1, 0x38);
        p.write_port(0xa1, 0x02);
        p.write_port(0xa1, 0x01);
        p.write_port(0x21, 0xfa); // IRQ 0 and the cascade unmasked
        p.write_port(0xa1, 0xff);
    }

    #[test]
    fn an_edge_on_irq0_is_delivered_once_and_blocks_until_eoi() {
        let mut p = Pic::new();
        linux_init(&mut p);
        assert!(!p.interrupt_pending());
        p.pulse_irq(0);
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), 0x30);
        assert!(!p.interrupt_pending(), "edge consumed");
        p.write_port(0x20, 0x0b); // OCW3: read ISR
        assert_eq!(p.read_port(0x20), 1);
        p.pulse_irq(0);
        assert!(!p.interrupt_pending(), "IRQ 0 in service blocks itself");
        p.write_port(0x20, 0x20); // non-specific EOI
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), 0x30);
        // A line held high gives one request only.
        p.write_port(0x20, 0x20);
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), 0x30);
        p.write_port(0x20, 0x20);
        p.set_irq(0, true);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn masks_priorities_and_the_slave() {
        let mut p = Pic::new();
        linux_init(&mut p);
        p.pulse_irq(4);
        assert!(!p.interrupt_pending(), "IRQ 4 masked");
        p.write_port(0x21, 0xea); // unmask 4
        assert!(p.interrupt_pending());
        p.pulse_irq(0);
        assert_eq!(p.acknowledge(), 0x30, "IRQ 0 before IRQ 4");
        assert!(!p.interrupt_pending(), "IRQ 4 waits for IRQ 0's EOI");
        p.write_port(0x20, 0x60); // specific EOI for 0
        assert_eq!(p.acknowledge(), 0x34);
        p.write_port(0x20, 0x20);
        // The slave: IRQ 12 through the cascade.
        p.write_port(0xa1, 0xef);
        p.pulse_irq(12);
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), 0x3c);
        p.write_port(0xa0, 0x0b);
        assert_eq!(p.read_port(0xa0), 1 << 4);
        p.write_port(0x20, 0x0b);
        assert_eq!(p.read_port(0x20), 1 << 2, "the cascade input is in service on the master");
        p.write_port(0xa0, 0x20);
        p.write_port(0x20, 0x20);
        assert_eq!(p.read_port(0x20), 0);
        assert_eq!(p.read_port(0x21), 0xea);
    }

    #[test]
    fn spurious_level_auto_eoi_poll_and_rotation() {
        let mut p = Pic::new();
        linux_init(&mut p);
        // No request: spurious 7 with nothing in service.
        assert_eq!(p.acknowledge(), 0x37);
        p.write_port(0x20, 0x0b);
        assert_eq!(p.read_port(0x20), 0);
        // Level-triggered IRQ 10 via ELCR: requests while high, drops when low.
        p.write_port(0x4d1, 0x04);
        assert_eq!(p.read_port(0x4d1), 0x04);
        p.write_port(0x4d0, 0xff);
        assert_eq!(p.read_port(0x4d0), 0xf8, "IRQ 0-2 cannot be level-triggered");
        p.write_port(0x4d0, 0);
        p.write_port(0xa1, 0xfb);
        p.set_irq(10, true);
        assert_eq!(p.acknowledge(), 0x3a);
        p.write_port(0xa0, 0x20);
        p.write_port(0x20, 0x20);
        assert!(p.interrupt_pending(), "still high: requests again");
        p.set_irq(10, false);
        assert!(!p.interrupt_pending());
        // Auto-EOI: nothing stays in service.
        p.write_port(0x20, 0x11);
        p.write_port(0x21, 0x08);
        p.write_port(0x21, 0x04);
        p.write_port(0x21, 0x03);
        assert_eq!(p.master_base(), 0x08);
        p.write_port(0x21, 0x00);
        p.pulse_irq(1);
        assert_eq!(p.acknowledge(), 0x09);
        p.pulse_irq(1);
        assert_eq!(p.acknowledge(), 0x09, "no EOI needed");
        // Poll mode.
        p.pulse_irq(3);
        p.write_port(0x20, 0x0c);
        assert_eq!(p.read_port(0x20), 0x83);
        p.write_port(0x20, 0x0c);
        assert_eq!(p.read_port(0x20), 0);
        // Set priority: IRQ 5 lowest, so 6 beats 1.
        p.write_port(0x20, 0xc5);
        p.pulse_irq(1);
        p.pulse_irq(6);
        assert_eq!(p.acknowledge(), 0x0e);
    }

    #[test]
    fn random_accesses_never_panic() {
        let mut p = Pic::new();
        let mut x = 0x1234_5678u32;
        for _ in 0..100_000 {
            crate::xorshift32(&mut x);
            let port = [0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1][(x % 6) as usize];
            match (x >> 8) % 4 {
                0 => p.write_port(port, (x >> 16) as u8),
                1 => {
                    p.read_port(port);
                }
                2 => p.set_irq(((x >> 16) % 16) as u8, x & 0x100_0000 != 0),
                _ => {
                    if p.interrupt_pending() {
                        p.acknowledge();
                    }
                }
            }
        }
    }
}
