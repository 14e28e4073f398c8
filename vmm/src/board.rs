//! What all vCPUs of a VM share, behind one lock: the chipset ([`Machine`], with the I/O APIC), a
//! local APIC per vCPU and the routing between them ([`Apics`]), the MMIO devices, and the RAM.
//!
//! Interrupt routing (Intel SDM vol. 3A 11.6, 11.12; the MP specification's INIT/STARTUP sequence):
//! - The I/O APIC's deliveries and the IPIs a local APIC's ICR asks for go to the local APICs their
//!   destination names: physical (APIC ID, 0xff for all), logical (flat or cluster, matched
//!   against each LDR), or a shorthand. Fixed delivery goes to every target, lowest priority to one.
//! - NMI is kept per vCPU until it is injected. INIT puts a vCPU into wait-for-SIPI (its local APIC
//!   back to its reset state); a STARTUP IPI to a waiting vCPU starts it in real mode at the
//!   vector's page. A second STARTUP (the MP sequence sends two) finds it running and is ignored.
//! - The 8259A reaches the vCPU whose LINT0 is in ExtINT mode (virtual wire), or the bootstrap vCPU
//!   while its local APIC is disabled.
//!
//! Every vCPU that receives something is noted in a wake mask, so the host can run or kick it.

use super::bus::{ApicTimer, MmioBus, MmioSpace, PortBus};
use super::ioapic::Delivery;
use super::lapic::{DeliveryMode, Ipi, Lapic, LapicEvent, Shorthand};
use super::machine::Machine;
use super::memory::GuestMemory;
use alloc::boxed::Box;
use alloc::vec::Vec;

/// The local APICs' page and the I/O APIC's window in every VM's physical address space.
pub const LAPIC_BASE: u64 = super::acpi::LAPIC_ADDR as u64;
pub const IOAPIC_BASE: u64 = super::acpi::IOAPIC_ADDR as u64;
const WINDOW: u64 = 0x1000;

/// Most vCPUs a VM can have (the wake mask is a `u64`; xAPIC IDs stop at 0xfe).
pub const MAX_VCPUS: usize = 64;

/// Where a vCPU is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuState {
    Running,
    /// After INIT (application processors start here): nothing runs until a STARTUP IPI.
    WaitForSipi,
    /// A STARTUP IPI with this vector arrived: start in real mode at `vector << 12`.
    Startup(u8),
}

/// What the vCPU takes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Nmi,
    Interrupt(u8),
}

/// The local APICs of a VM and their vCPUs' start-up states.
pub struct Apics {
    lapics: Vec<Lapic>,
    states: Vec<CpuState>,
    nmi: Vec<bool>,
    wakes: u64,
    /// The vCPUs that received an INIT since their loop last looked (bit `i`: vCPU `i`).
    inits: u64,
}

impl Apics {
    /// `vcpus` local APICs with IDs 0..; vCPU 0 runs, the others wait for their STARTUP IPI.
    pub fn new(vcpus: usize) -> Apics {
        let vcpus = vcpus.clamp(1, MAX_VCPUS);
        Apics {
            lapics: (0..vcpus).map(|i| Lapic::new(i as u8)).collect(),
            states: (0..vcpus)
                .map(|i| if i == 0 { CpuState::Running } else { CpuState::WaitForSipi })
                .collect(),
            nmi: alloc::vec![false; vcpus],
            wakes: 0,
            inits: 0,
        }
    }

    pub fn count(&self) -> usize {
        self.lapics.len()
    }

    /// `cpu`'s start-up state (a vCPU the VM does not have waits for ever).
    pub fn state(&self, cpu: usize) -> CpuState {
        self.states.get(cpu).copied().unwrap_or(CpuState::WaitForSipi)
    }

    /// The vCPU started (after [`CpuState::Startup`]).
    pub fn set_running(&mut self, cpu: usize) {
        if let Some(s) = self.states.get_mut(cpu) {
            *s = CpuState::Running;
        }
    }

    /// Whether an NMI waits for `cpu`.
    pub fn nmi_pending(&self, cpu: usize) -> bool {
        self.nmi.get(cpu).copied().unwrap_or(false)
    }

    /// `cpu` takes its NMI.
    pub fn take_nmi(&mut self, cpu: usize) {
        if let Some(n) = self.nmi.get_mut(cpu) {
            *n = false;
        }
    }

    /// Whether `cpu` received an INIT since the last call (its paravirtual EOI is turned off, as
    /// KVM's APIC reset does).
    pub fn take_init(&mut self, cpu: usize) -> bool {
        let bit = 1u64.checked_shl(cpu as u32).unwrap_or(0);
        let hit = self.inits & bit != 0;
        self.inits &= !bit;
        hit
    }

    /// The vCPUs that received something since the last call (bit `i`: vCPU `i`).
    pub fn take_wakes(&mut self) -> u64 {
        core::mem::take(&mut self.wakes)
    }

    /// The vCPUs a destination names (a bit mask).
    fn targets(
        &self,
        from: Option<usize>,
        dest: u32,
        logical: bool,
        x2apic: bool,
        shorthand: Shorthand,
    ) -> u64 {
        // At most MAX_VCPUS (64) vCPUs: every index fits a u64 mask.
        let all = u64::MAX.checked_shr(64u32.saturating_sub(self.count() as u32)).unwrap_or(0);
        let me = from.map_or(0, |f| 1u64.checked_shl(f as u32).unwrap_or(0));
        match shorthand {
            Shorthand::SelfOnly => me,
            Shorthand::AllIncludingSelf => all,
            Shorthand::AllExcludingSelf => all & !me,
            Shorthand::None => {
                let mut mask = 0;
                for (i, l) in self.lapics.iter().enumerate() {
                    let hit = match (x2apic, logical) {
                        (true, _) => l.matches_x2apic(dest, logical),
                        (false, true) => l.matches_logical(dest as u8),
                        (false, false) => dest == 0xff || u32::from(l.id()) == dest,
                    };
                    if hit {
                        mask |= 1u64.checked_shl(i as u32).unwrap_or(0);
                    }
                }
                mask
            }
        }
    }

    /// Delivers to the vCPUs in `mask`.
    fn deliver(&mut self, mask: u64, mode: DeliveryMode, vector: u8, level: bool) {
        let mut mask = mask;
        if mode == DeliveryMode::LowestPriority {
            // One of them (all have the same priority here): the first.
            mask &= mask.wrapping_neg();
        }
        for (cpu, ((lapic, state), nmi)) in
            self.lapics.iter_mut().zip(self.states.iter_mut()).zip(self.nmi.iter_mut()).enumerate()
        {
            let bit = 1u64.checked_shl(cpu as u32).unwrap_or(0);
            if mask & bit == 0 {
                continue;
            }
            match mode {
                DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                    if !lapic.enabled() {
                        continue; // a software-disabled APIC takes no fixed interrupts
                    }
                    lapic.accept(vector, level);
                }
                DeliveryMode::Nmi => *nmi = true,
                DeliveryMode::Init => {
                    self.inits |= bit;
                    // INIT keeps the APIC's mode (IA32_APIC_BASE is not reset).
                    let x2apic = lapic.x2apic();
                    *lapic = Lapic::new(cpu as u8);
                    lapic.set_x2apic(x2apic);
                    *nmi = false;
                    *state = CpuState::WaitForSipi;
                }
                DeliveryMode::Startup => {
                    if *state != CpuState::WaitForSipi {
                        continue;
                    }
                    *state = CpuState::Startup(vector);
                }
                // SMI has no handler in a VM; ExtINT through an APIC is not modelled.
                DeliveryMode::Smi | DeliveryMode::ExtInt => continue,
            }
            self.wakes |= bit;
        }
    }

    /// An IPI from `from`'s ICR.
    pub fn ipi(&mut self, from: usize, ipi: Ipi) {
        if ipi.deassert {
            return; // INIT level de-assert: nothing happens
        }
        let mask = self.targets(Some(from), ipi.dest, ipi.logical, ipi.x2apic, ipi.shorthand);
        self.deliver(mask, ipi.mode, ipi.vector, ipi.level_triggered);
    }

    /// An interrupt from the I/O APIC.
    pub fn from_ioapic(&mut self, d: Delivery) {
        let mode = match d.mode {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            7 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Smi, // reserved modes: dropped
        };
        let mask = self.targets(None, u32::from(d.dest), d.logical, false, Shorthand::None);
        self.deliver(mask, mode, d.vector, d.level_triggered);
    }

    /// Brings `cpu`'s APIC timer up to `now`; returns when it fires next.
    pub fn update_timer(&mut self, cpu: usize, now: u64) -> Option<u64> {
        let lapic = self.lapics.get_mut(cpu)?;
        let before = lapic.pending();
        let next = lapic.update_timer(now);
        if lapic.pending() != before {
            self.wakes |= 1u64.checked_shl(cpu as u32).unwrap_or(0);
        }
        next
    }

    fn read(&self, cpu: usize, offset: u64, now: u64) -> u32 {
        self.lapics.get(cpu).map_or(0, |l| l.read(offset, now))
    }

    /// `cpu`'s IA32_TSC_DEADLINE.
    pub fn tsc_deadline(&self, cpu: usize) -> Option<u64> {
        self.lapics.get(cpu).map(Lapic::tsc_deadline)
    }

    /// A write of `cpu`'s IA32_TSC_DEADLINE (`ns`: the host time it stands for).
    pub fn set_tsc_deadline(&mut self, cpu: usize, tsc: u64, ns: u64) -> bool {
        self.lapics.get_mut(cpu).map(|l| l.set_tsc_deadline(tsc, ns)).is_some()
    }

    /// An RDMSR of `cpu`'s x2APIC register `msr`; `None`: #GP.
    fn read_msr(&self, cpu: usize, msr: u32, now: u64) -> Option<u64> {
        self.lapics.get(cpu)?.read_msr(msr, now)
    }

    /// A WRMSR of `cpu`'s x2APIC register `msr`: `Err(())` for #GP, else a level-triggered
    /// vector's EOI for the I/O APIC.
    fn write_msr(&mut self, cpu: usize, msr: u32, value: u64, now: u64) -> Result<Option<u8>, ()> {
        match self.lapics.get_mut(cpu).ok_or(())?.write_msr(msr, value, now)? {
            Some(LapicEvent::Ipi(ipi)) => {
                self.ipi(cpu, ipi);
                Ok(None)
            }
            Some(LapicEvent::LevelEoi(v)) => Ok(Some(v)),
            None => Ok(None),
        }
    }

    /// `cpu`'s APIC enters x2APIC mode (`on`) or leaves it (disabled).
    fn set_x2apic(&mut self, cpu: usize, on: bool) {
        if let Some(l) = self.lapics.get_mut(cpu) {
            l.set_x2apic(on);
        }
    }

    /// A write to `cpu`'s APIC; returns a level-triggered vector's EOI for the I/O APIC.
    fn write(&mut self, cpu: usize, offset: u64, value: u32, now: u64) -> Option<u8> {
        match self.lapics.get_mut(cpu)?.write(offset, value, now)? {
            LapicEvent::Ipi(ipi) => {
                self.ipi(cpu, ipi);
                None
            }
            LapicEvent::LevelEoi(v) => Some(v),
        }
    }
}

/// The devices and memory of a VM, shared by its vCPUs.
pub struct Board {
    pub machine: Machine,
    pub apics: Apics,
    pub mmio: MmioBus,
    pub mem: Box<dyn GuestMemory + Send>,
    /// What devices had to tell the host's log (device base address, what), oldest first; at
    /// most [`MAX_NOTICES`] wait, further ones are dropped.
    pub notices: Vec<(u64, &'static str)>,
}

/// Device notices kept for the host's log, at most.
pub const MAX_NOTICES: usize = 16;

impl Board {
    pub fn new(machine: Machine, vcpus: usize, mmio: MmioBus, mem: Box<dyn GuestMemory + Send>) -> Board {
        Board { machine, apics: Apics::new(vcpus), mmio, mem, notices: Vec::new() }
    }

    /// Hands what the I/O APIC delivered to the local APICs.
    pub fn route(&mut self) {
        for d in self.machine.take_deliveries() {
            self.apics.from_ioapic(d);
        }
    }

    /// Lets the MMIO devices do the work their registers asked for (virtio queues) or that
    /// finished meanwhile (flushes), and routes their interrupt lines.
    pub fn service_devices(&mut self) {
        self.machine.poll_power_button();
        let Board { machine, mmio, mem, notices, .. } = self;
        mmio.service(
            &mut **mem,
            |line, level| machine.set_irq(line, level),
            |base, what| {
                if notices.len() < MAX_NOTICES {
                    notices.push((base, what));
                }
            },
        );
        self.route();
    }

    /// Brings the chipset's timers and `cpu`'s APIC timer up to `now`, and the devices' work;
    /// returns the earliest time a timer fires next.
    pub fn update(&mut self, cpu: usize, now: u64) -> Option<u64> {
        self.machine.set_time(now);
        let chipset = self.machine.update_timers();
        self.service_devices();
        let lapic = self.apics.update_timer(cpu, now);
        match (chipset, lapic) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether `cpu` has something to take (a halted vCPU wakes for it).
    pub fn pending(&self, cpu: usize) -> bool {
        let Some(lapic) = self.apics.lapics.get(cpu) else { return false };
        self.apics.nmi_pending(cpu)
            || lapic.pending().is_some()
            || (lapic.accepts_pic_interrupts() && self.machine.pic.interrupt_pending())
    }

    /// Whether `cpu` may end its interrupt in service through the paravirtual EOI flag.
    pub fn pv_eoi_possible(&self, cpu: usize) -> bool {
        self.apics.lapics.get(cpu).is_some_and(Lapic::pv_eoi_possible)
    }

    /// `cpu`'s guest ended its interrupt in service through the paravirtual EOI flag: the EOI its
    /// APIC register would have had.
    pub fn end_of_interrupt(&mut self, cpu: usize) {
        let now = self.machine.now();
        if let Some(v) = self.apics.write(cpu, 0xb0, 0, now) {
            self.machine.level_eoi(v);
        }
        self.route();
    }

    /// Takes what `cpu` is to be given next: an NMI, its APIC's highest pending vector, or the
    /// 8259A's (through LINT0).
    pub fn acknowledge(&mut self, cpu: usize) -> Option<Event> {
        if self.apics.nmi.get_mut(cpu).is_some_and(core::mem::take) {
            return Some(Event::Nmi);
        }
        let lapic = self.apics.lapics.get_mut(cpu)?;
        if let Some(v) = lapic.acknowledge() {
            return Some(Event::Interrupt(v));
        }
        if lapic.accepts_pic_interrupts() && self.machine.pic.interrupt_pending() {
            return Some(Event::Interrupt(self.machine.pic.acknowledge()));
        }
        None
    }

    /// The buses as vCPU `cpu` sees them (its own local APIC at [`LAPIC_BASE`]), and the RAM.
    pub fn view(&mut self, cpu: usize) -> (CpuBus<'_>, &mut dyn GuestMemory) {
        let Board { machine, apics, mmio, mem, .. } = self;
        (CpuBus { machine, apics, mmio, cpu }, &mut **mem)
    }
}

/// Ports and MMIO as one vCPU sees them.
pub struct CpuBus<'a> {
    pub machine: &'a mut Machine,
    pub apics: &'a mut Apics,
    pub mmio: &'a mut MmioBus,
    pub cpu: usize,
}

/// `addr`'s offset in the APIC window at `base`, if it is inside it.
fn window_offset(addr: u64, base: u64) -> Option<u64> {
    addr.checked_sub(base).filter(|o| *o < WINDOW)
}

/// The 32-bit register an access of `len` bytes at `offset` falls in, and the shift of the
/// access within it; `None` when it straddles two registers (an aligned 8-byte access is taken as
/// the register and zeros above it).
fn register_of(offset: u64, len: usize) -> Option<(u64, u32)> {
    let within = (offset & 3) as usize;
    let shift = (within as u32).wrapping_mul(8);
    (within.saturating_add(len.min(4)) <= 4).then_some((offset & !3, shift))
}

impl ApicTimer for CpuBus<'_> {
    fn tsc_deadline(&mut self) -> Option<u64> {
        self.apics.tsc_deadline(self.cpu)
    }
    fn set_tsc_deadline(&mut self, tsc: u64, ns: u64) -> bool {
        self.apics.set_tsc_deadline(self.cpu, tsc, ns)
    }
    fn x2apic_read(&mut self, msr: u32) -> Option<u64> {
        self.apics.read_msr(self.cpu, msr, self.machine.now())
    }
    fn x2apic_write(&mut self, msr: u32, value: u64) -> bool {
        let now = self.machine.now();
        match self.apics.write_msr(self.cpu, msr, value, now) {
            Err(()) => return false,
            Ok(Some(v)) => self.machine.level_eoi(v),
            Ok(None) => {}
        }
        // What the I/O APIC delivered meanwhile (EOI) goes out at once.
        for d in self.machine.take_deliveries() {
            self.apics.from_ioapic(d);
        }
        true
    }
    fn set_x2apic(&mut self, on: bool) {
        self.apics.set_x2apic(self.cpu, on);
    }
}

impl PortBus for CpuBus<'_> {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        self.machine.read(port, size)
    }
    fn write(&mut self, port: u16, size: u8, value: u32) {
        self.machine.write(port, size, value)
    }
}

impl MmioSpace for CpuBus<'_> {
    fn mmio_claims(&self, addr: u64, len: u64) -> bool {
        let inside = |base: u64| addr >= base && addr.saturating_add(len) <= base.saturating_add(WINDOW);
        inside(LAPIC_BASE) || inside(IOAPIC_BASE) || self.mmio.claims(addr, len)
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        let now = self.machine.now();
        let value = if let Some(off) = window_offset(addr, LAPIC_BASE) {
            register_of(off, data.len())
                .map(|(r, s)| self.apics.read(self.cpu, r, now).checked_shr(s).unwrap_or(0))
        } else if let Some(off) = window_offset(addr, IOAPIC_BASE) {
            register_of(off, data.len()).map(|(r, s)| self.machine.ioapic.read(r).checked_shr(s).unwrap_or(0))
        } else {
            return self.mmio.read(addr, data);
        };
        // Accesses that straddle registers (or are 8 bytes wide) read as zeros above the register.
        let v = value.unwrap_or(0) as u64;
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.checked_shr((i as u32).saturating_mul(8)).unwrap_or(0) as u8;
        }
        true
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        let now = self.machine.now();
        let (lapic, ioapic) = (window_offset(addr, LAPIC_BASE), window_offset(addr, IOAPIC_BASE));
        if lapic.is_none() && ioapic.is_none() {
            return self.mmio.write(addr, data);
        }
        // Registers take 32-bit writes; narrower or straddling ones are dropped, as on hardware
        // where they are undefined.
        let Ok(bytes) = <[u8; 4]>::try_from(data) else { return true };
        if addr & 3 != 0 {
            return true;
        }
        let value = u32::from_le_bytes(bytes);
        if let Some(off) = lapic {
            if let Some(v) = self.apics.write(self.cpu, off, value, now) {
                self.machine.level_eoi(v);
            }
        } else if let Some(off) = ioapic {
            self.machine.ioapic_write(off, value);
        }
        // What the I/O APIC delivered meanwhile (unmasking, EOI) goes out at once.
        for d in self.machine.take_deliveries() {
            self.apics.from_ioapic(d);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lapic::VERSION;
    use crate::memory::GuestRam;
    use crate::serial::ConsoleLog;
    use alloc::sync::Arc;

    fn board(vcpus: usize) -> Board {
        let machine = Machine::new(0, Arc::new(spin::Mutex::new(ConsoleLog::default())));
        Board::new(machine, vcpus, MmioBus::new(), Box::new(GuestRam::new(4096)))
    }

    fn w32(b: &mut Board, cpu: usize, addr: u64, v: u32) {
        assert!(b.view(cpu).0.mmio_write(addr, &v.to_le_bytes()));
    }

    fn r32(b: &mut Board, cpu: usize, addr: u64) -> u32 {
        let mut d = [0u8; 4];
        assert!(b.view(cpu).0.mmio_read(addr, &mut d));
        u32::from_le_bytes(d)
    }

    /// Software-enables every APIC with flat logical IDs 1 << i, as Linux does.
    fn enable_all(b: &mut Board) {
        for cpu in 0..b.apics.count() {
            w32(b, cpu, LAPIC_BASE + 0xf0, 0x1ff);
            w32(b, cpu, LAPIC_BASE + 0xd0, 1 << (24 + cpu));
        }
    }

    #[test]
    fn an_init_is_reported_once_to_its_vcpu() {
        let mut b = board(2);
        enable_all(&mut b);
        assert!(!b.apics.take_init(1));
        b.apics.from_ioapic(Delivery { vector: 0, mode: 5, logical: false, dest: 1, level_triggered: false });
        assert!(!b.apics.take_init(0), "not for vCPU 0");
        assert!(b.apics.take_init(1));
        assert!(!b.apics.take_init(1), "once");
        assert!(!b.apics.take_init(99));
    }

    #[test]
    fn each_vcpu_has_its_own_tsc_deadline() {
        let mut b = board(2);
        enable_all(&mut b);
        w32(&mut b, 1, LAPIC_BASE + 0x320, 0x4_0041); // TSC-deadline mode, vector 0x41
        assert!(b.view(1).0.set_tsc_deadline(7000, 3_000_000));
        assert_eq!(b.view(1).0.tsc_deadline(), Some(7000));
        assert_eq!(b.view(0).0.tsc_deadline(), Some(0), "vCPU 0's timer is not in that mode");
        assert_eq!(b.apics.update_timer(1, 2_000_000), Some(3_000_000));
        assert_eq!(b.apics.update_timer(1, 3_000_000), None);
        assert_eq!(b.acknowledge(1), Some(Event::Interrupt(0x41)));
        assert_eq!(b.view(1).0.tsc_deadline(), Some(0));
    }

    #[test]
    fn each_vcpu_sees_its_own_apic() {
        let mut b = board(3);
        assert_eq!(r32(&mut b, 0, LAPIC_BASE + 0x20), 0);
        assert_eq!(r32(&mut b, 2, LAPIC_BASE + 0x20), 2 << 24);
        // A byte read of the ID register's top byte.
        let mut d = [0u8; 1];
        assert!(b.view(2).0.mmio_read(LAPIC_BASE + 0x23, &mut d));
        assert_eq!(d[0], 2);
        assert!(b.view(1).0.mmio_claims(IOAPIC_BASE + 0x10, 4));
        assert!(!b.view(1).0.mmio_claims(0xd000_0000, 4));
    }

    #[test]
    fn init_and_startup_start_an_application_processor_once() {
        let mut b = board(2);
        enable_all(&mut b);
        assert_eq!(b.apics.state(1), CpuState::WaitForSipi);
        // INIT assert, INIT de-assert, STARTUP 0x9a twice, to APIC ID 1 (physical).
        w32(&mut b, 0, LAPIC_BASE + 0x310, 1 << 24);
        w32(&mut b, 0, LAPIC_BASE + 0x300, 0x0000_c500);
        w32(&mut b, 0, LAPIC_BASE + 0x300, 0x0000_8500);
        assert_eq!(b.apics.take_wakes(), 0b10);
        w32(&mut b, 0, LAPIC_BASE + 0x300, 0x0000_069a);
        assert_eq!(b.apics.state(1), CpuState::Startup(0x9a));
        b.apics.set_running(1);
        w32(&mut b, 0, LAPIC_BASE + 0x300, 0x0000_069b);
        assert_eq!(b.apics.state(1), CpuState::Running, "the second STARTUP finds it running");
        assert_eq!(b.apics.state(0), CpuState::Running);
    }

    #[test]
    fn ipis_reach_their_destinations() {
        let mut b = board(4);
        enable_all(&mut b);
        // Logical flat destination 0b1010: vCPUs 1 and 3, vector 0xfd.
        w32(&mut b, 0, LAPIC_BASE + 0x310, 0x0a << 24);
        w32(&mut b, 0, LAPIC_BASE + 0x300, 0x0000_08fd);
        assert_eq!(b.apics.take_wakes(), 0b1010);
        assert_eq!(b.acknowledge(1), Some(Event::Interrupt(0xfd)));
        assert_eq!(b.acknowledge(3), Some(Event::Interrupt(0xfd)));
        assert_eq!(b.acknowledge(2), None);
        // All excluding self, NMI.
        w32(&mut b, 2, LAPIC_BASE + 0x300, 0x000c_0400);
        assert_eq!(b.apics.take_wakes(), 0b1011);
        for cpu in [0, 1, 3] {
            assert_eq!(b.acknowledge(cpu), Some(Event::Nmi));
        }
        assert!(!b.pending(2));
        // Self, vector 0xec.
        w32(&mut b, 2, LAPIC_BASE + 0x300, 0x0004_00ec);
        assert!(b.pending(2));
        assert_eq!(b.acknowledge(2), Some(Event::Interrupt(0xec)));
        // Lowest priority to several: one of them.
        b.apics.take_wakes();
        w32(&mut b, 0, LAPIC_BASE + 0x310, 0x0e << 24);
        w32(&mut b, 0, LAPIC_BASE + 0x300, 0x0000_0941);
        assert_eq!(b.apics.take_wakes().count_ones(), 1);
        // A disabled APIC takes no fixed interrupts.
        w32(&mut b, 3, LAPIC_BASE + 0xf0, 0xff);
        w32(&mut b, 0, LAPIC_BASE + 0x310, 3 << 24);
        w32(&mut b, 0, LAPIC_BASE + 0x300, 0x0000_0050);
        assert!(!b.pending(3));
    }

    #[test]
    fn x2apic_mode_registers_ipis_and_init() {
        let mut b = board(4);
        enable_all(&mut b);
        // Not in x2APIC mode: the registers fault.
        assert_eq!(b.view(0).0.x2apic_read(0x802), None);
        assert!(!b.view(0).0.x2apic_write(0x808, 0));
        for cpu in 0..4 {
            b.view(cpu).0.set_x2apic(true);
        }
        let mut bus = b.view(2).0;
        assert_eq!(bus.x2apic_read(0x802), Some(2), "the 32-bit ID");
        assert_eq!(bus.x2apic_read(0x80d), Some(1 << 2), "logical ID: cluster 0, bit 2");
        assert_eq!(bus.x2apic_read(0x803), Some(u64::from(VERSION)));
        for (msr, what) in
            [(0x80e, "DFR"), (0x831, "ICR high"), (0x80b, "EOI read"), (0x83f, "SELF IPI read")]
        {
            assert_eq!(bus.x2apic_read(msr), None, "{what}");
        }
        assert!(!bus.x2apic_write(0x802, 5), "the ID is read-only");
        assert!(!bus.x2apic_write(0x80b, 1), "EOI takes 0 only");
        assert!(!bus.x2apic_write(0x808, 1 << 32), "above 32 bits");
        // Linux's disconnect_bsp_APIC writes LINT0 with the read-only status bits set.
        assert!(bus.x2apic_write(0x835, 0x5700));
        assert_eq!(bus.x2apic_read(0x835), Some(0x0700));
        assert!(bus.x2apic_write(0x808, 0x20));
        assert_eq!(bus.x2apic_read(0x808), Some(0x20));
        assert!(bus.x2apic_write(0x808, 0));
        // Physical IPI to APIC 3 through the 64-bit ICR.
        assert!(bus.x2apic_write(0x830, (3 << 32) | 0x0000_0041));
        assert_eq!(bus.x2apic_read(0x830), Some((3 << 32) | 0x41));
        assert_eq!(b.apics.take_wakes(), 0b1000);
        assert_eq!(b.acknowledge(3), Some(Event::Interrupt(0x41)));
        assert!(b.view(3).0.x2apic_write(0x80b, 0), "EOI");
        // Logical: cluster 0, bits 0 and 1.
        assert!(b.view(2).0.x2apic_write(0x830, (0b11 << 32) | 0x0000_0842));
        assert_eq!(b.apics.take_wakes(), 0b0011);
        // Broadcast.
        assert!(b.view(2).0.x2apic_write(0x830, (0xffff_ffff << 32) | 0x43));
        assert_eq!(b.apics.take_wakes(), 0b1111);
        // SELF IPI.
        assert!(b.view(1).0.x2apic_write(0x83f, 0x44));
        assert!(!b.view(1).0.x2apic_write(0x83f, 0x144), "only a vector");
        assert_eq!(b.apics.take_wakes(), 0b0010);
        assert_eq!(b.acknowledge(1), Some(Event::Interrupt(0x44)));
        // The memory-mapped ID cannot change the x2APIC ID; INIT keeps the mode.
        w32(&mut b, 1, LAPIC_BASE + 0x20, 7 << 24);
        assert_eq!(b.view(1).0.x2apic_read(0x802), Some(1));
        assert!(b.view(0).0.x2apic_write(0x830, (1 << 32) | 0x0000_4500));
        assert_eq!(b.view(1).0.x2apic_read(0x802), Some(1), "still in x2APIC mode after INIT");
        b.view(1).0.set_x2apic(false);
        assert_eq!(b.view(1).0.x2apic_read(0x802), None);
    }

    #[test]
    fn the_timer_and_devices_reach_the_cpu_the_io_apic_names() {
        let mut b = board(2);
        enable_all(&mut b);
        // Pin 2 (IRQ 0) -> vector 0x30, physical APIC 1; pin 4 (COM1) level -> 0x31, logical 0b01.
        for (reg, v) in [(0x14, 0x30), (0x15, 1 << 24), (0x18, 0x8831), (0x19, 1 << 24)] {
            w32(&mut b, 0, IOAPIC_BASE, reg);
            w32(&mut b, 0, IOAPIC_BASE + 0x10, v);
        }
        w32(&mut b, 0, IOAPIC_BASE, 0x14);
        assert_eq!(r32(&mut b, 0, IOAPIC_BASE + 0x10), 0x30);
        // The PIT in mode 2 at 1 kHz (count 1193).
        for (p, v) in [(0x43u16, 0x34u32), (0x40, 0xa9), (0x40, 0x04)] {
            b.view(0).0.machine.write(p, 1, v);
        }
        let next = b.update(0, 0).expect("the PIT runs");
        b.update(0, next + 1);
        assert_eq!(b.apics.take_wakes(), 0b10);
        assert_eq!(b.acknowledge(1), Some(Event::Interrupt(0x30)));
        assert_eq!(b.acknowledge(0), None, "vCPU 0's LINT0 is masked once its APIC is on");
        // COM1 transmit interrupt (IER bit 1, OUT2): level on pin 4 to vCPU 0, again after EOI
        // only while the line stays high.
        b.view(0).0.machine.write(0x3fc, 1, 0x08);
        b.view(0).0.machine.write(0x3f9, 1, 0x02);
        b.route();
        assert_eq!(b.acknowledge(0), Some(Event::Interrupt(0x31)));
        w32(&mut b, 0, LAPIC_BASE + 0xb0, 0);
        assert_eq!(b.acknowledge(0), Some(Event::Interrupt(0x31)), "still high: delivered again");
        b.view(0).0.machine.write(0x3f9, 1, 0x00);
        w32(&mut b, 0, LAPIC_BASE + 0xb0, 0);
        assert_eq!(b.acknowledge(0), None);
    }

    #[test]
    fn before_its_apic_is_enabled_the_bootstrap_cpu_takes_the_pic() {
        let mut b = board(2);
        // Linux's PIC set-up: vectors 0x30, IRQ 0 unmasked; a PIT edge.
        for (p, v) in [(0x20u16, 0x11u32), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01), (0x21, 0xfe)] {
            b.machine.write(p, 1, v);
        }
        for (p, v) in [(0x43u16, 0x34u32), (0x40, 0xa9), (0x40, 0x04)] {
            b.machine.write(p, 1, v);
        }
        let next = b.update(0, 0).unwrap();
        b.update(0, next + 1);
        assert!(b.pending(0) && !b.pending(1));
        assert_eq!(b.acknowledge(0), Some(Event::Interrupt(0x30)));
    }

    #[test]
    fn odd_accesses_to_the_apics_do_not_reach_the_registers() {
        let mut b = board(1);
        let mut bus = b.view(0).0;
        assert!(bus.mmio_write(LAPIC_BASE + 0xf0, &[0xff]), "a byte write is dropped");
        assert!(bus.mmio_write(LAPIC_BASE + 0xf2, &[0xff, 0xff, 0xff, 0xff]), "a misaligned one too");
        let mut d = [0u8; 8];
        assert!(bus.mmio_read(LAPIC_BASE + 0xf0, &mut d));
        assert_eq!(u64::from_le_bytes(d), 0xff, "8-byte read: the register, zeros above");
        assert!(bus.mmio_read(LAPIC_BASE + 0xf3, &mut d[..2]), "straddling: zeros");
        assert_eq!(&d[..2], &[0, 0]);
    }
}
