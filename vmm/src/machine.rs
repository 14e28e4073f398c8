//! A VM's PC chipset: the legacy devices every x86 guest expects at fixed ports, wired together -
//! the two 8259A interrupt controllers, the 8254 timer (its counter 0 on IRQ 0) with port 0x61,
//! the CMOS clock, COM1 (a 16550A on IRQ 4 writing into the VM's console log), the ACPI power
//! management block (PM1 event and control registers for power-off, the fixed-feature power
//! button that raises the SCI on IRQ 9, the PM timer), and the part
//! of an 8042 keyboard controller that guests use to reset the machine.
//!
//! Every ISA interrupt line goes to both the 8259A pair and the I/O APIC (IRQ 0 on pin 2, the
//! others on the pin of their number, as the MADT's interrupt source override says), so a guest
//! can use either; what the I/O APIC delivers is collected for the local APICs
//! ([`Machine::take_deliveries`]).
//!
//! The vCPU loop (`super::vcpu`) tells the machine the time before each access ([`Machine::set_time`],
//! nanoseconds of a monotonic clock), asks it for IRQ 0 edges, and checks [`Machine::request`] for a
//! reset or power-off the guest asked for. Ports no device claims read as all ones and ignore
//! writes, as on a PC.

use super::acpi::RESET_PORT;
use super::bus::PortBus;
use super::ioapic::{Delivery, IoApic};
use super::pic::Pic;
use super::pit::Pit;
use super::rtc::{Rtc, UnixTime};
use super::serial::{ConsoleLog, IrqLine, Serial};
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;

/// The ACPI PM1 event block (PM1a_EVT_BLK: status, enable; 4 bytes), control block
/// (PM1a_CNT_BLK, 2 bytes) and PM timer (PM_TMR_BLK, 4 bytes), as the VM's FADT lists them.
pub const PM1_EVT_PORT: u16 = 0x600;
pub const PM1_CNT_PORT: u16 = 0x604;
pub const PM_TMR_PORT: u16 = 0x608;
const PM1_CNT_LAST: u16 = PM1_CNT_PORT + 1;
const PM_TMR_LAST: u16 = PM_TMR_PORT + 3;
/// The sleep type `\_S5` gives in the VM's DSDT (SLP_TYP for soft-off).
pub const S5_SLP_TYP: u16 = 5;
/// The ACPI PM timer's frequency (ACPI 6.5, 4.8.3.3).
pub const PM_TIMER_HZ: u64 = 3_579_545;
const PM1_SCI_EN: u16 = 1 << 0;
/// PWRBTN_STS in PM1 status, PWRBTN_EN in PM1 enable (ACPI 6.5, 4.8.3.1).
const PM1_PWRBTN: u16 = 1 << 8;
/// The SCI's ISA line (the FADT's SCI_INT).
pub const SCI_IRQ: u8 = 9;
const PM1_SLP_EN: u16 = 1 << 13;

/// COM1's ports and IRQ.
const COM1: u16 = 0x3f8;
const COM1_IRQ: u8 = 4;

/// Something the guest asked of the machine as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineRequest {
    /// Reset (8042 pulse of the reset line, its output port's bit 0 cleared, or the reset control
    /// register at 0xcf9).
    Reset,
    /// ACPI soft-off (S5) through PM1a_CNT.
    PowerOff,
}

/// The 8042's controller commands that matter to guests: configuration byte reads and writes,
/// the self-tests, and the reset pulse.
#[derive(Debug, Default)]
struct Kbc {
    config: u8,
    /// Answers waiting for the guest to read them: at most [`KBC_OUTPUT_BYTES`] (a real 8042
    /// holds one; a few more cover command sequences), further ones are dropped.
    output: VecDeque<u8>,
    /// The next data-port write is for this controller command (0x60 or 0xd1).
    pending: Option<u8>,
}

/// Bytes the 8042 model keeps for the guest to read, at most.
const KBC_OUTPUT_BYTES: usize = 16;

impl Kbc {
    fn answer(&mut self, v: u8) {
        if self.output.len() < KBC_OUTPUT_BYTES {
            self.output.push_back(v);
        }
    }
}

/// The VM's chipset (see the module documentation).
pub struct Machine {
    pub pic: Pic,
    pub ioapic: IoApic,
    /// Interrupts the I/O APIC delivered, for the local APICs.
    deliveries: Vec<Delivery>,
    pub pit: Pit,
    pub rtc: Rtc,
    pub com1: Serial,
    /// What the guest wrote to COM1 (shared with the management plane).
    pub console: Arc<Mutex<ConsoleLog>>,
    kbc: Kbc,
    pm1_status: u16,
    pm1_enable: u16,
    pm1_control: u16,
    request: Option<MachineRequest>,
    /// Set by the host to press the power button; taken at the next [`Machine::poll_power_button`].
    pub power_button: Arc<AtomicBool>,
    /// Monotonic time of the current access, ns.
    now: u64,
    /// Wall-clock time at monotonic 0 (for the CMOS clock).
    wall_base: UnixTime,
}

/// The I/O APIC pin ISA line `irq` is wired to.
pub fn ioapic_pin(irq: u8) -> usize {
    if irq == 0 {
        2
    } else {
        irq as usize
    }
}

/// The interrupt controllers an ISA line drives.
struct IsaLines<'a> {
    pic: &'a mut Pic,
    ioapic: &'a mut IoApic,
    deliveries: &'a mut Vec<Delivery>,
}

impl IsaLines<'_> {
    fn set(&mut self, irq: u8, high: bool) {
        self.pic.set_irq(irq, high);
        self.deliveries.extend(self.ioapic.set_irq(ioapic_pin(irq), high));
    }
}

/// COM1's interrupt output.
struct Com1Irq<'a>(IsaLines<'a>);

impl IrqLine for Com1Irq<'_> {
    fn set_level(&mut self, high: bool) {
        self.0.set(COM1_IRQ, high);
    }
}

impl Machine {
    /// A machine whose CMOS clock reads `wall_base` at monotonic time 0, writing its console into
    /// `console`.
    pub fn new(wall_base: UnixTime, console: Arc<Mutex<ConsoleLog>>) -> Machine {
        Machine {
            pic: Pic::new(),
            ioapic: IoApic::new(),
            deliveries: Vec::new(),
            pit: Pit::new(),
            rtc: Rtc::new(),
            com1: Serial::new(),
            console,
            kbc: Kbc { config: 0x45, ..Kbc::default() },
            pm1_status: 0,
            pm1_enable: 0,
            // Hardware already in ACPI mode: the FADT has no SMI command port.
            pm1_control: PM1_SCI_EN,
            request: None,
            power_button: Arc::new(AtomicBool::new(false)),
            now: 0,
            wall_base,
        }
    }

    /// Presses the power button if the host asked to since the last call: PWRBTN_STS is set, and
    /// the SCI raised while the guest has PWRBTN_EN set (until it clears the status bit).
    pub fn poll_power_button(&mut self) {
        if self.power_button.swap(false, Ordering::AcqRel) {
            self.pm1_status |= PM1_PWRBTN;
            self.update_sci();
        }
    }

    /// The SCI's level: an enabled fixed event is pending.
    fn update_sci(&mut self) {
        let level = self.pm1_status & self.pm1_enable & PM1_PWRBTN != 0;
        self.lines().set(SCI_IRQ, level);
    }

    /// The monotonic time (ns) of the accesses that follow.
    pub fn set_time(&mut self, now: u64) {
        // vCPUs on different CPUs read the clock a little apart: time never goes back.
        self.now = self.now.max(now);
    }

    /// The monotonic time of the current access, ns.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Raises the timer's IRQ 0 if its output rose since the last call; returns when (ns) it rises
    /// next, if it will.
    pub fn update_timers(&mut self) -> Option<u64> {
        if self.pit.take_irq0(self.now) {
            self.pic.pulse_irq(0);
            let pin = ioapic_pin(0);
            self.deliveries.extend(self.ioapic.set_irq(pin, true));
            self.ioapic.set_irq(pin, false);
        }
        self.pit.next_irq0()
    }

    fn lines(&mut self) -> IsaLines<'_> {
        IsaLines { pic: &mut self.pic, ioapic: &mut self.ioapic, deliveries: &mut self.deliveries }
    }

    /// Sets the level of ISA interrupt line `irq` (a device outside the chipset: virtio).
    pub fn set_irq(&mut self, irq: u8, high: bool) {
        self.lines().set(irq, high);
    }

    /// A write to the I/O APIC's window (its deliveries are collected with the others).
    pub fn ioapic_write(&mut self, offset: u64, value: u32) {
        let d = self.ioapic.write(offset, value);
        self.deliveries.extend(d);
    }

    /// A local APIC's EOI of level-triggered `vector` (the I/O APIC may deliver again).
    pub fn level_eoi(&mut self, vector: u8) {
        let d = self.ioapic.eoi(vector);
        self.deliveries.extend(d);
    }

    /// The interrupts the I/O APIC delivered since the last call, oldest first.
    pub fn take_deliveries(&mut self) -> Vec<Delivery> {
        core::mem::take(&mut self.deliveries)
    }

    /// Bytes for the guest's COM1 receiver (console input); returns how many it took.
    pub fn console_input(&mut self, bytes: &[u8]) -> usize {
        let lines =
            IsaLines { pic: &mut self.pic, ioapic: &mut self.ioapic, deliveries: &mut self.deliveries };
        self.com1.enqueue_input(bytes, &mut Com1Irq(lines))
    }

    /// A reset or power-off the guest asked for (taken: asked once).
    pub fn request(&mut self) -> Option<MachineRequest> {
        self.request.take()
    }

    fn wall_clock(&self) -> UnixTime {
        self.wall_base.saturating_add((self.now / 1_000_000_000) as i64)
    }

    fn pm_timer(&self) -> u32 {
        ((u128::from(self.now).saturating_mul(u128::from(PM_TIMER_HZ)) / 1_000_000_000) as u32) & 0x00ff_ffff
    }

    fn kbc_read(&mut self, port: u16) -> u8 {
        if port == 0x64 {
            // Status: output buffer full, system flag (self-test passed), input buffer empty.
            return u8::from(!self.kbc.output.is_empty()) | 0x04;
        }
        self.kbc.output.pop_front().unwrap_or(0)
    }

    fn kbc_write(&mut self, port: u16, v: u8) {
        if port == 0x60 {
            match self.kbc.pending.take() {
                Some(0x60) => self.kbc.config = v,
                // Output port: bit 0 low holds the CPU in reset.
                Some(0xd1) if v & 1 == 0 => self.request = Some(MachineRequest::Reset),
                Some(_) => {}
                // A byte for the keyboard itself: there is none; answer "resend" as an absent one.
                None => self.kbc.answer(0xfe),
            }
            return;
        }
        self.kbc.pending = None;
        match v {
            0x20 => self.kbc.answer(self.kbc.config),
            0x60 | 0xd1 => self.kbc.pending = Some(v),
            0xaa => self.kbc.answer(0x55),        // controller self-test passed
            0xab | 0xa9 => self.kbc.answer(0x00), // interface tests passed
            0xfe => self.request = Some(MachineRequest::Reset), // pulse the reset line
            _ => {}
        }
    }

    fn pm_read(&mut self, port: u16, size: u8) -> u32 {
        let regs = [self.pm1_status, self.pm1_enable, self.pm1_control];
        // Byte `o` of the three 16-bit registers (0 past them).
        let byte = |o: u16| -> u32 {
            let reg = regs.get(usize::from(o / 2)).copied().unwrap_or(0);
            u32::from(reg).checked_shr(u32::from(o % 2).wrapping_mul(8)).unwrap_or(0) & 0xff
        };
        // The caller's match puts `port` inside the PM ranges; sizes are 1, 2 or 4.
        match port {
            PM_TMR_PORT..=PM_TMR_LAST => self
                .pm_timer()
                .checked_shr(u32::from(port.wrapping_sub(PM_TMR_PORT)).wrapping_mul(8))
                .unwrap_or(0),
            _ => {
                let o = port.wrapping_sub(PM1_EVT_PORT);
                (0..u16::from(size.min(4))).fold(0, |acc, i| {
                    acc | byte(o.wrapping_add(i)).checked_shl(u32::from(i).wrapping_mul(8)).unwrap_or(0)
                })
            }
        }
    }

    fn pm_write(&mut self, port: u16, size: u8, value: u32) {
        for i in 0..u16::from(size.min(4)) {
            let byte = value.checked_shr(u32::from(i).wrapping_mul(8)).unwrap_or(0) as u16 & 0xff;
            let o = port.wrapping_sub(PM1_EVT_PORT).wrapping_add(i);
            let shift = (o % 2).wrapping_mul(8);
            match o {
                // Status bits are cleared by writing ones.
                0 | 1 => self.pm1_status &= !(byte << shift),
                2 | 3 => self.pm1_enable = (self.pm1_enable & !(0xff << shift)) | (byte << shift),
                4 | 5 => {
                    let v = (self.pm1_control & !(0xff << shift)) | (byte << shift);
                    // SLP_EN is write-only: it starts the transition and reads back as 0.
                    self.pm1_control = (v & !PM1_SLP_EN) | PM1_SCI_EN;
                    if v & PM1_SLP_EN != 0 && (v >> 10) & 7 == S5_SLP_TYP {
                        self.request = Some(MachineRequest::PowerOff);
                    }
                }
                _ => {}
            }
        }
        self.update_sci();
    }
}

impl PortBus for Machine {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        let now = self.now;
        let v = match port {
            0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1 => self.pic.read_port(port) as u32,
            0x40..=0x43 => self.pit.read(port.wrapping_sub(0x40), now) as u32,
            0x61 => self.pit.read_port_b(now) as u32,
            0x60 | 0x64 => self.kbc_read(port) as u32,
            0x70 | 0x71 => {
                let wall = self.wall_clock();
                self.rtc.read(port.wrapping_sub(0x70), wall) as u32
            }
            COM1..=0x3ff => {
                let lines = IsaLines {
                    pic: &mut self.pic,
                    ioapic: &mut self.ioapic,
                    deliveries: &mut self.deliveries,
                };
                self.com1.read(port.wrapping_sub(COM1), &mut Com1Irq(lines)) as u32
            }
            PM1_EVT_PORT..=PM_TMR_LAST => self.pm_read(port, size),
            _ => u32::MAX,
        };
        match size {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        }
    }

    fn write(&mut self, port: u16, size: u8, value: u32) {
        let now = self.now;
        let b = value as u8;
        match port {
            0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1 => self.pic.write_port(port, b),
            0x40..=0x43 => self.pit.write(port.wrapping_sub(0x40), b, now),
            0x61 => self.pit.write_port_b(b, now),
            0x60 | 0x64 => self.kbc_write(port, b),
            0x70 | 0x71 => {
                let wall = self.wall_clock();
                self.rtc.write(port.wrapping_sub(0x70), b, wall)
            }
            COM1..=0x3ff => {
                let mut log = self.console.lock();
                let lines = IsaLines {
                    pic: &mut self.pic,
                    ioapic: &mut self.ioapic,
                    deliveries: &mut self.deliveries,
                };
                self.com1.write(port.wrapping_sub(COM1), b, &mut *log, &mut Com1Irq(lines));
            }
            PM1_EVT_PORT..=PM1_CNT_LAST => self.pm_write(port, size, value),
            // The reset control register (the FADT's reset register): bit 2 starts the reset.
            RESET_PORT if b & 0x04 != 0 => self.request = Some(MachineRequest::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine::new(1_700_000_000, Arc::new(Mutex::new(ConsoleLog::default())))
    }

    #[test]
    fn the_timer_interrupts_through_the_pic() {
        let mut m = machine();
        // Linux: PICs at 0x30, IRQ 0 unmasked; PIT counter 0 periodic at 1 kHz.
        for (p, v) in [(0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01), (0x21, 0xfe)] {
            m.write(p, 1, v);
        }
        for (p, v) in [(0x43, 0x34), (0x40, 0xa9), (0x40, 0x04)] {
            m.write(p, 1, v);
        }
        let due = m.update_timers().expect("an edge is due");
        assert!(!m.pic.interrupt_pending());
        m.set_time(due);
        m.update_timers();
        assert!(m.pic.interrupt_pending());
        assert_eq!(m.pic.acknowledge(), 0x30);
    }

    #[test]
    fn com1_output_and_its_interrupt() {
        let mut m = machine();
        for (p, v) in [(0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01), (0x21, 0xef)] {
            m.write(p, 1, v);
        }
        for b in b"hi" {
            m.write(0x3f8, 1, *b as u32);
        }
        assert_eq!(m.console.lock().contents(), b"hi");
        m.write(0x3fc, 1, 0x08); // OUT2
        m.write(0x3f9, 1, 0x02); // THRE interrupt
        assert!(m.pic.interrupt_pending());
        assert_eq!(m.pic.acknowledge(), 0x34);
        assert_eq!(m.read(0x3fa, 1) & 0x0f, 0x02, "IIR: THRE");
        m.write(0x20, 1, 0x20);
        assert!(!m.pic.interrupt_pending(), "IIR read cleared it");
        assert_eq!(m.console_input(b"x"), 1);
        assert!(m.pic.interrupt_pending() || m.read(0x3f9, 1) & 1 == 0);
        m.write(0x3f9, 1, 0x01);
        assert!(m.pic.interrupt_pending(), "receive interrupt");
        assert_eq!(m.read(0x3f8, 1), b'x' as u32);
    }

    /// The host presses the power button: PWRBTN_STS is set at once, the SCI (IRQ 9) rises when
    /// the guest enables the event and falls when it clears the status.
    #[test]
    fn the_power_button_raises_the_sci() {
        let mut m = machine();
        for (p, v) in [(0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01), (0x21, 0xfb)] {
            m.write(p, 1, v);
        }
        for (p, v) in [(0xa0, 0x11), (0xa1, 0x38), (0xa1, 0x02), (0xa1, 0x01), (0xa1, 0xfd)] {
            m.write(p, 1, v);
        }
        m.poll_power_button();
        assert_eq!(m.read(PM1_EVT_PORT, 2) & 0x100, 0, "not pressed");
        m.power_button.store(true, Ordering::Release);
        m.poll_power_button();
        assert_eq!(m.read(PM1_EVT_PORT, 2) & 0x100, 0x100, "PWRBTN_STS");
        assert!(!m.pic.interrupt_pending(), "not enabled yet");
        m.write(PM1_EVT_PORT + 2, 2, 0x100);
        assert!(m.pic.interrupt_pending());
        assert_eq!(m.pic.acknowledge(), 0x39, "IRQ 9");
        m.write(PM1_EVT_PORT, 2, 0x100); // cleared by writing one
        assert_eq!(m.read(PM1_EVT_PORT, 2) & 0x100, 0);
        m.write(0xa0, 1, 0x20);
        m.write(0x20, 1, 0x20);
        assert!(!m.pic.interrupt_pending());
        assert!(!m.power_button.load(Ordering::Acquire), "taken");
    }

    #[test]
    fn reset_and_power_off_requests() {
        let mut m = machine();
        assert_eq!(m.request(), None);
        m.write(0x64, 1, 0xfe);
        assert_eq!(m.request(), Some(MachineRequest::Reset));
        assert_eq!(m.request(), None, "taken once");
        // Output port with bit 0 clear.
        m.write(0x64, 1, 0xd1);
        m.write(0x60, 1, 0xfe);
        assert_eq!(m.request(), Some(MachineRequest::Reset));
        m.write(0xcf9, 1, 0x02);
        assert_eq!(m.request(), None, "0xcf9 without the reset bit");
        m.write(0xcf9, 1, 0x06);
        assert_eq!(m.request(), Some(MachineRequest::Reset));
        // The configuration byte round-trips; the self-test answers.
        m.write(0x64, 1, 0x60);
        m.write(0x60, 1, 0x47);
        m.write(0x64, 1, 0x20);
        assert_eq!(m.read(0x64, 1) & 1, 1);
        assert_eq!(m.read(0x60, 1), 0x47);
        m.write(0x64, 1, 0xaa);
        assert_eq!(m.read(0x60, 1), 0x55);
        assert_eq!(m.read(0x64, 1) & 1, 0);
        // ACPI: SCI_EN reads set; S1 does nothing, S5 powers off.
        assert_eq!(m.read(PM1_CNT_PORT, 2) & 1, 1);
        m.write(PM1_CNT_PORT, 2, (1 << 10) | (1 << 13));
        assert_eq!(m.request(), None);
        m.write(PM1_CNT_PORT, 2, (S5_SLP_TYP as u32) << 10 | (1 << 13));
        assert_eq!(m.request(), Some(MachineRequest::PowerOff));
        assert_eq!(m.read(PM1_CNT_PORT, 2) & (1 << 13), 0, "SLP_EN reads as 0");
        // The PM enable register keeps what is written; status clears by writing ones.
        m.write(PM1_EVT_PORT + 2, 2, 0x0120);
        assert_eq!(m.read(PM1_EVT_PORT, 4), 0x0120 << 16);
    }

    /// A guest writing the 8042 in a loop without reading cannot grow the host's heap.
    #[test]
    fn the_8042_keeps_a_bounded_number_of_answers() {
        let mut m = machine();
        for _ in 0..1_000_000 {
            m.write(0x60, 1, 0xff);
            m.write(0x64, 1, 0xaa);
        }
        assert_eq!(m.kbc.output.len(), KBC_OUTPUT_BYTES);
        for _ in 0..KBC_OUTPUT_BYTES {
            assert_eq!(m.read(0x64, 1) & 1, 1);
            m.read(0x60, 1);
        }
        assert_eq!(m.read(0x64, 1) & 1, 0, "empty");
    }

    #[test]
    fn pm_timer_clock_and_empty_ports() {
        let mut m = machine();
        m.set_time(1_000_000_000);
        assert_eq!(m.read(PM_TMR_PORT, 4), (PM_TIMER_HZ & 0xff_ffff) as u32);
        m.set_time(0);
        m.write(0x70, 1, 0x0b);
        m.write(0x71, 1, 0x06); // binary, 24-hour
        m.write(0x70, 1, 0x09);
        assert_eq!(m.read(0x71, 1), 23, "2023");
        assert_eq!(m.read(0x510, 1), 0xff);
        assert_eq!(m.read(0x510, 4), 0xffff_ffff);
        m.write(0x510, 4, 0);
    }
}
