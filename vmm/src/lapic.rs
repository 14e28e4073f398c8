//! A vCPU's local APIC in xAPIC mode (Intel SDM vol. 3A chapter 11; AMD APM vol. 2 chapter 16),
//! addressed by register offset in its 4 KiB MMIO page (0xfee00000 in Ember's VMs).
//!
//! Modelled: ID, version (0x14, six LVT entries), TPR/PPR and the priority rules for delivery,
//! IRR/ISR/TMR with EOI (level-triggered vectors report their EOI for the I/O APIC), LDR/DFR and
//! logical destination matching (flat and cluster), the spurious-vector register and software
//! disable (which masks every LVT), ESR, the LVT entries, the interrupt command register (the IPIs
//! it asks for are returned to the caller, which routes them), and the timer in one-shot and
//! periodic modes counting at a 1 GHz bus clock through the divide configuration, and in
//! TSC-deadline mode (IA32_TSC_DEADLINE, MSR 0x6e0: the caller converts the guest's TSC value to
//! the host time it stands for). x2APIC mode (Intel SDM vol. 3A 11.12): the registers as MSRs
//! 0x800-0x83f ([`Lapic::read_msr`], [`Lapic::write_msr`]), a 32-bit ID, the logical ID derived from
//! it (cluster in bits 31:16, one bit of 16 below), the ICR as one 64-bit register with a 32-bit
//! destination, the SELF IPI register, and #GP for what x2APIC mode does not have (DFR, ICR high,
//! APR, RRD) or does not allow (writes to read-only registers, a value above 32 bits, an EOI or ESR
//! write other than 0, a SELF IPI with more than a vector). The memory-mapped page keeps answering in x2APIC mode. Not modelled: thermal and
//! performance-counter interrupts (their LVT entries are kept but never fire). Every value a guest writes is accepted; reserved
//! bits read as zero.

/// Local APIC version register: version 0x14 (integrated), max LVT entry 5 (six entries).
pub const VERSION: u32 = 0x0005_0014;
/// The bus clock the timer counts (before the divider), Hz.
pub const BUS_HZ: u64 = 1_000_000_000;

const LVT_MASKED: u32 = 1 << 16;
const SVR_ENABLE: u32 = 1 << 8;
/// LVT indexes: timer, thermal, performance, LINT0, LINT1, error (offsets 0x320-0x370).
const LVT_TIMER: usize = 0;
const LVT_LINT0: usize = 3;

/// Delivery modes of the ICR and LVT entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    Startup,
    ExtInt,
}

fn delivery_mode(bits: u32) -> DeliveryMode {
    match (bits >> 8) & 7 {
        1 => DeliveryMode::LowestPriority,
        2 => DeliveryMode::Smi,
        4 => DeliveryMode::Nmi,
        5 => DeliveryMode::Init,
        6 => DeliveryMode::Startup,
        7 => DeliveryMode::ExtInt,
        _ => DeliveryMode::Fixed,
    }
}

/// The ICR's destination shorthand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shorthand {
    None,
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// An inter-processor interrupt the guest asked for by writing the ICR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipi {
    pub mode: DeliveryMode,
    pub vector: u8,
    /// Destination: ICR bits 56-63 in xAPIC mode, bits 32-63 in x2APIC mode (`x2apic`).
    pub dest: u32,
    pub logical: bool,
    /// The destination is in x2APIC format (32-bit ID; logical: cluster and bit).
    pub x2apic: bool,
    pub shorthand: Shorthand,
    /// INIT level de-assert (the second INIT of the MP start-up sequence; it does nothing).
    pub deassert: bool,
    pub level_triggered: bool,
}

/// What a register write asks of the rest of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LapicEvent {
    /// An IPI to route.
    Ipi(Ipi),
    /// End of interrupt for a level-triggered vector (for the I/O APIC's remote IRR).
    LevelEoi(u8),
}

#[derive(Debug, Clone)]
pub struct Lapic {
    id: u8,
    /// The ID at reset: the x2APIC ID (the xAPIC ID register is writable, the x2APIC ID is not).
    initial_id: u8,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    esr: u32,
    irr: [u32; 8],
    isr: [u32; 8],
    tmr: [u32; 8],
    icr_low: u32,
    icr_high: u32,
    /// x2APIC mode (IA32_APIC_BASE bit 10).
    x2apic: bool,
    /// Timer, thermal, performance, LINT0, LINT1, error.
    lvt: [u32; 6],
    lvt_cmci: u32,
    timer_initial: u32,
    timer_divide: u32,
    /// When the current count was loaded (ns), while it counts.
    timer_start: Option<u64>,
    /// Timer interrupts already raised since `timer_start`.
    timer_fired: u64,
    /// TSC-deadline mode: the IA32_TSC_DEADLINE value armed (0: disarmed) and the host time it
    /// stands for.
    deadline_tsc: u64,
    deadline_ns: Option<u64>,
}

fn bit(v: &[u32; 8], vector: u8) -> bool {
    v.get(usize::from(vector >> 5)).is_some_and(|w| w & (1 << (vector & 31)) != 0)
}

fn set(v: &mut [u32; 8], vector: u8, on: bool) {
    let b = 1u32 << (vector & 31);
    if let Some(w) = v.get_mut(usize::from(vector >> 5)) {
        if on {
            *w |= b;
        } else {
            *w &= !b;
        }
    }
}

/// The highest vector set (word `w`'s highest bit is vector `w * 32 + 31 - leading zeros`).
fn highest(v: &[u32; 8]) -> Option<u8> {
    let (w, bits) = v.iter().enumerate().rev().find(|(_, bits)| **bits != 0)?;
    Some((w as u8).wrapping_mul(32) | (31u8.wrapping_sub(bits.leading_zeros() as u8)))
}

impl Lapic {
    /// The state after reset (INIT) of the APIC with ID `id`.
    pub fn new(id: u8) -> Lapic {
        Lapic {
            id,
            initial_id: id,
            tpr: 0,
            ldr: 0,
            dfr: 0xffff_ffff,
            svr: 0xff,
            esr: 0,
            irr: [0; 8],
            isr: [0; 8],
            tmr: [0; 8],
            icr_low: 0,
            icr_high: 0,
            x2apic: false,
            lvt: [LVT_MASKED; 6],
            lvt_cmci: LVT_MASKED,
            timer_initial: 0,
            timer_divide: 0,
            timer_start: None,
            timer_fired: 0,
            deadline_tsc: 0,
            deadline_ns: None,
        }
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// In x2APIC mode.
    pub fn x2apic(&self) -> bool {
        self.x2apic
    }

    /// The logical x2APIC ID its APIC ID gives (SDM 11.12.10.2).
    fn x2apic_ldr(&self) -> u32 {
        (u32::from(self.id) >> 4) << 16 | 1 << (self.id & 0xf)
    }

    /// Switches x2APIC mode on (from xAPIC mode) or off (the APIC was disabled): the logical ID
    /// becomes the one derived from the APIC ID, or 0.
    pub fn set_x2apic(&mut self, on: bool) {
        self.x2apic = on;
        if on {
            self.id = self.initial_id;
        }
        self.ldr = if on { self.x2apic_ldr() } else { 0 };
    }

    /// Whether this APIC is the target of x2APIC destination `dest` (physical: its ID, or
    /// 0xffffffff for all; logical: the cluster in bits 31:16 and its bit among bits 15:0).
    pub fn matches_x2apic(&self, dest: u32, logical: bool) -> bool {
        if dest == u32::MAX {
            return true; // broadcast, in either destination mode (SDM 11.12.9)
        }
        if logical {
            let ldr = self.x2apic_ldr();
            dest >> 16 == ldr >> 16 && dest & ldr & 0xffff != 0
        } else {
            dest == u32::MAX || dest == u32::from(self.id)
        }
    }

    /// Software-enabled (SVR bit 8).
    pub fn enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    fn ppr(&self) -> u32 {
        let isrv = highest(&self.isr).map_or(0, |v| v as u32);
        if (self.tpr >> 4) >= (isrv >> 4) {
            self.tpr & 0xff
        } else {
            isrv & 0xf0
        }
    }

    /// Whether this APIC is the target of logical destination `mda` (flat or cluster model; in
    /// x2APIC mode an 8-bit destination, from the I/O APIC or an xAPIC-mode sender, is cluster 0
    /// with those bits, and 0xff is all, as KVM takes them).
    pub fn matches_logical(&self, mda: u8) -> bool {
        if self.x2apic {
            let dest = if mda == 0xff { u32::MAX } else { u32::from(mda) };
            return self.matches_x2apic(dest, true);
        }
        let ldr = (self.ldr >> 24) as u8;
        if self.dfr >> 28 == 0xf {
            ldr & mda != 0
        } else {
            (ldr >> 4) == (mda >> 4) && (ldr & mda & 0x0f) != 0
        }
    }

    /// An interrupt arrives for `vector` (fixed delivery). Vectors below 16 are illegal: they set
    /// the receive-illegal-vector error instead.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) {
        if vector < 16 {
            self.esr |= 1 << 6;
            return;
        }
        set(&mut self.irr, vector, true);
        set(&mut self.tmr, vector, level_triggered);
    }

    /// The vector the CPU would take now, if any (above the processor priority).
    pub fn pending(&self) -> Option<u8> {
        let v = highest(&self.irr)?;
        ((v as u32 & 0xf0) > (self.ppr() & 0xf0)).then_some(v)
    }

    /// The CPU takes the pending vector: it moves from IRR to ISR.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.pending()?;
        set(&mut self.irr, v, false);
        set(&mut self.isr, v, true);
        Some(v)
    }

    /// Whether the end of the interrupt in service may be left to the guest's paravirtual EOI flag
    /// ([`crate::pveoi`]): exactly one vector in service, edge-triggered (the I/O APIC needs no
    /// EOI for it), and no interrupt requested.
    pub fn pv_eoi_possible(&self) -> bool {
        let in_service: u32 = self.isr.iter().map(|w| w.count_ones()).sum();
        in_service == 1
            && self.irr.iter().all(|w| *w == 0)
            && highest(&self.isr).is_some_and(|v| !bit(&self.tmr, v))
    }

    /// Whether LINT0 takes the 8259A's interrupts (virtual wire: unmasked, ExtINT), as on the
    /// bootstrap processor before the guest switches to the I/O APIC.
    pub fn accepts_pic_interrupts(&self) -> bool {
        let lint0 = self.lvt[LVT_LINT0];
        !self.enabled() && self.id == 0
            || (lint0 & LVT_MASKED == 0 && delivery_mode(lint0) == DeliveryMode::ExtInt)
    }

    fn divisor(&self) -> u64 {
        // Divide configuration: bits 0, 1 and 3; 0b111 is divide by 1.
        let d = (self.timer_divide & 3) | ((self.timer_divide >> 1) & 4);
        if d == 7 {
            1
        } else {
            2 << d
        }
    }

    fn period_ns(&self) -> u64 {
        u64::from(self.timer_initial)
            .saturating_mul(self.divisor())
            .saturating_mul(1_000_000_000 / BUS_HZ)
            .max(1)
    }

    fn periodic(&self) -> bool {
        (self.lvt[LVT_TIMER] >> 17) & 3 == 1
    }

    /// LVT timer mode 2: the timer fires at the TSC value in IA32_TSC_DEADLINE.
    fn tsc_deadline_mode(&self) -> bool {
        (self.lvt[LVT_TIMER] >> 17) & 3 == 2
    }

    /// IA32_TSC_DEADLINE as the guest reads it: the armed value, 0 once it fired or when the timer
    /// is not in TSC-deadline mode.
    pub fn tsc_deadline(&self) -> u64 {
        if self.tsc_deadline_mode() {
            self.deadline_tsc
        } else {
            0
        }
    }

    /// A write of IA32_TSC_DEADLINE: `tsc` (0 disarms), which is host time `ns`. Ignored unless
    /// the timer is in TSC-deadline mode (as on hardware).
    pub fn set_tsc_deadline(&mut self, tsc: u64, ns: u64) {
        if self.tsc_deadline_mode() {
            self.deadline_tsc = tsc;
            self.deadline_ns = (tsc != 0).then_some(ns);
        }
    }

    fn raise_timer(&mut self) {
        let lvt = self.lvt.get(LVT_TIMER).copied().unwrap_or(LVT_MASKED);
        if lvt & LVT_MASKED == 0 && self.enabled() {
            self.accept(lvt as u8, false);
        }
    }

    fn current_count(&self, now: u64) -> u32 {
        let Some(start) = self.timer_start else { return 0 };
        let elapsed =
            u128::from(now.saturating_sub(start)).saturating_mul(u128::from(BUS_HZ)) / 1_000_000_000;
        let ticks = (elapsed as u64).checked_div(self.divisor()).unwrap_or(0);
        let initial = u64::from(self.timer_initial);
        if self.periodic() {
            ticks.checked_rem(initial).map_or(0, |r| initial.saturating_sub(r)) as u32
        } else {
            initial.saturating_sub(ticks) as u32
        }
    }

    /// Raises the timer interrupt if it expired since the last call (missed periods coalesce);
    /// returns when (ns) it expires next, if it will.
    pub fn update_timer(&mut self, now: u64) -> Option<u64> {
        if self.tsc_deadline_mode() {
            let due = self.deadline_ns?;
            if now < due {
                return Some(due);
            }
            self.deadline_ns = None;
            self.deadline_tsc = 0;
            self.raise_timer();
            return None;
        }
        let start = self.timer_start?;
        let period = self.period_ns();
        let expired = now.saturating_sub(start).checked_div(period).unwrap_or(0);
        if expired > self.timer_fired {
            self.timer_fired = if self.periodic() { expired } else { 1 };
            self.raise_timer();
            if !self.periodic() {
                self.timer_start = None;
                return None;
            }
        }
        Some(start.saturating_add(self.timer_fired.saturating_add(1).saturating_mul(period)))
    }

    /// A guest read of the register at `offset` (aligned 32-bit registers; others read 0).
    pub fn read(&self, offset: u64, now: u64) -> u32 {
        let idx = |base: u64| (offset.wrapping_sub(base) >> 4) as usize;
        let word = |v: &[u32], i: usize| v.get(i).copied().unwrap_or(0);
        match offset {
            0x20 => (self.id as u32) << 24,
            0x30 => VERSION,
            0x80 => self.tpr,
            0x90 => 0, // APR
            0xa0 => self.ppr(),
            0xd0 => self.ldr,
            0xe0 => self.dfr,
            0xf0 => self.svr,
            0x100..=0x170 => word(&self.isr, idx(0x100)),
            0x180..=0x1f0 => word(&self.tmr, idx(0x180)),
            0x200..=0x270 => word(&self.irr, idx(0x200)),
            0x280 => self.esr,
            0x2f0 => self.lvt_cmci,
            0x300 => self.icr_low & !(1 << 12), // delivered at once: never "send pending"
            0x310 => self.icr_high,
            0x320..=0x370 => word(&self.lvt, idx(0x320)),
            0x380 => self.timer_initial,
            0x390 => self.current_count(now),
            0x3e0 => self.timer_divide,
            _ => 0,
        }
    }

    /// A guest write of `value` to the register at `offset`.
    pub fn write(&mut self, offset: u64, value: u32, now: u64) -> Option<LapicEvent> {
        match offset {
            // Read-only in x2APIC mode (and the ID is the x2APIC ID).
            0x20 | 0xd0 | 0xe0 | 0x310 if self.x2apic => {}
            0x20 => self.id = (value >> 24) as u8,
            0x80 => self.tpr = value & 0xff,
            0xb0 => {
                let v = highest(&self.isr)?;
                set(&mut self.isr, v, false);
                if bit(&self.tmr, v) {
                    return Some(LapicEvent::LevelEoi(v));
                }
            }
            0xd0 => self.ldr = value & 0xff00_0000,
            0xe0 => self.dfr = value | 0x0fff_ffff,
            0xf0 => {
                self.svr = value & 0x13ff;
                if !self.enabled() {
                    for l in &mut self.lvt {
                        *l |= LVT_MASKED;
                    }
                    self.lvt_cmci |= LVT_MASKED;
                }
            }
            0x280 => self.esr = 0,
            0x2f0 => self.lvt_cmci = value & 0x0001_07ff,
            0x300 => {
                self.icr_low = value & 0x000c_cfff;
                return Some(LapicEvent::Ipi(self.ipi()));
            }
            0x310 => self.icr_high = value & 0xff00_0000,
            0x320..=0x370 => {
                let i = (offset.wrapping_sub(0x320) >> 4) as usize;
                let mask = match i {
                    LVT_TIMER => 0x0007_00ff,
                    3 | 4 => 0x0001_a7ff, // LINT0/1: vector, mode, polarity, trigger, mask
                    5 => 0x0001_00ff,
                    _ => 0x0001_07ff,
                };
                let mut v = value & mask;
                if !self.enabled() {
                    v |= LVT_MASKED;
                }
                let before = self.lvt.get(i).copied();
                if let Some(l) = self.lvt.get_mut(i) {
                    *l = v;
                }
                // A change of the timer's mode stops it (the count and the deadline are cleared).
                if i == LVT_TIMER && before.map(|b| (b >> 17) & 3) != Some((v >> 17) & 3) {
                    self.timer_start = None;
                    self.deadline_ns = None;
                    self.deadline_tsc = 0;
                }
            }
            // The initial count means nothing in TSC-deadline mode (writes are ignored).
            0x380 if self.tsc_deadline_mode() => {}
            0x380 => {
                self.timer_initial = value;
                self.timer_fired = 0;
                self.timer_start = (value != 0).then_some(now);
            }
            0x3e0 => self.timer_divide = value & 0xb,
            _ => {}
        }
        None
    }

    /// A guest RDMSR of x2APIC register `msr` (0x800-0x8ff); `None`: #GP (not in x2APIC mode, or
    /// a register x2APIC mode does not have or that is write-only).
    pub fn read_msr(&self, msr: u32, now: u64) -> Option<u64> {
        if !self.x2apic {
            return None;
        }
        let offset = u64::from(msr.checked_sub(0x800)?) << 4;
        Some(match offset {
            0x20 => u64::from(self.id),
            0xd0 => u64::from(self.ldr),
            0x300 => u64::from(self.icr_high) << 32 | u64::from(self.read(0x300, now)),
            // APR, EOI, RRD, DFR, ICR high, SELF IPI: none, or write-only.
            0x90 | 0xb0 | 0xc0 | 0xe0 | 0x310 | 0x3f0 => return None,
            0x30 | 0x80 | 0xa0 | 0xf0 | 0x100..=0x270 | 0x280 | 0x2f0 | 0x320..=0x390 | 0x3e0 => {
                u64::from(self.read(offset, now))
            }
            _ => return None,
        })
    }

    /// A guest WRMSR of x2APIC register `msr` with `value`; `Err(())`: #GP (not in x2APIC mode, a
    /// read-only or missing register, reserved bits set).
    #[allow(clippy::result_unit_err)] // the only error is the #GP, which carries nothing
    pub fn write_msr(&mut self, msr: u32, value: u64, now: u64) -> Result<Option<LapicEvent>, ()> {
        if !self.x2apic {
            return Err(());
        }
        let offset = u64::from(msr.checked_sub(0x800).ok_or(())?) << 4;
        if offset == 0x300 {
            // The ICR: one register, the destination in bits 63:32.
            self.icr_high = (value >> 32) as u32;
            self.icr_low = value as u32 & 0x000c_cfff;
            return Ok(Some(LapicEvent::Ipi(self.ipi())));
        }
        let low = u32::try_from(value).map_err(|_| ())?;
        // Writable registers. Read-only status bits (delivery status, remote IRR) and bits this
        // model does not keep are ignored, as Linux writes LVT values with status bits set; only
        // EOI and ESR (0 only) and SELF IPI (a vector only) refuse bits (SDM 11.12.1.2).
        let reserved = match offset {
            0xb0 | 0x280 => u32::MAX,
            0x3f0 => !0xff,
            0x80 | 0xf0 | 0x2f0 | 0x320..=0x370 | 0x380 | 0x3e0 => 0,
            _ => return Err(()),
        };
        if low & reserved != 0 {
            return Err(());
        }
        if offset == 0x3f0 {
            // Fixed, edge, to itself (SDM 11.12.11).
            let ipi = Ipi {
                mode: DeliveryMode::Fixed,
                vector: low as u8,
                dest: 0,
                logical: false,
                x2apic: true,
                shorthand: Shorthand::SelfOnly,
                deassert: false,
                level_triggered: false,
            };
            return Ok(Some(LapicEvent::Ipi(ipi)));
        }
        Ok(self.write(offset, low, now))
    }

    fn ipi(&self) -> Ipi {
        let low = self.icr_low;
        Ipi {
            mode: delivery_mode(low),
            vector: low as u8,
            dest: if self.x2apic { self.icr_high } else { self.icr_high >> 24 },
            logical: low & (1 << 11) != 0,
            x2apic: self.x2apic,
            shorthand: match (low >> 18) & 3 {
                1 => Shorthand::SelfOnly,
                2 => Shorthand::AllIncludingSelf,
                3 => Shorthand::AllExcludingSelf,
                _ => Shorthand::None,
            },
            // INIT level de-assert: level 0 and trigger mode level (SDM 11.6.1).
            deassert: delivery_mode(low) == DeliveryMode::Init
                && low & (1 << 14) == 0
                && low & (1 << 15) != 0,
            // The trigger mode of fixed IPIs is ignored: they are edge-triggered (an EOI of one
            // must not reach the I/O APIC as the end of a device's level interrupt).
            level_triggered: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(id: u8) -> Lapic {
        let mut a = Lapic::new(id);
        a.write(0xf0, 0x1ff, 0);
        a
    }

    #[test]
    fn priorities_eoi_and_level_vectors() {
        let mut a = enabled(0);
        assert_eq!(a.read(0x20, 0), 0);
        assert_eq!(a.read(0x30, 0), VERSION);
        a.accept(0x31, false);
        a.accept(0x81, true);
        assert_eq!(a.pending(), Some(0x81), "highest vector first");
        assert_eq!(a.acknowledge(), Some(0x81));
        assert_eq!(a.read(0x100 + 0x40, 0), 1 << 1, "ISR word 4 bit 1");
        assert_eq!(a.pending(), None, "0x31 is below the in-service class");
        assert_eq!(a.read(0xa0, 0), 0x80, "PPR from ISR");
        assert_eq!(a.write(0xb0, 0, 0), Some(LapicEvent::LevelEoi(0x81)), "level-triggered: EOI reported");
        assert_eq!(a.acknowledge(), Some(0x31));
        assert_eq!(a.write(0xb0, 0, 0), None);
        // TPR holds back lower classes.
        a.write(0x80, 0x50, 0);
        a.accept(0x45, false);
        assert_eq!(a.pending(), None);
        a.accept(0x65, false);
        assert_eq!(a.pending(), Some(0x65));
        // Illegal vectors set ESR instead.
        a.accept(3, false);
        assert_eq!(a.read(0x280, 0), 1 << 6);
        a.write(0x280, 0, 0);
        assert_eq!(a.read(0x280, 0), 0);
    }

    #[test]
    fn x2apic_ids_destinations_and_the_init_de_assert() {
        let mut a = enabled(18);
        a.write(0x20, 7 << 24, 0); // the xAPIC ID is writable...
        a.set_x2apic(true);
        assert_eq!(a.read_msr(0x802, 0), Some(18), "...the x2APIC ID is the one from reset");
        assert_eq!(a.read_msr(0x80d, 0), Some((1 << 16) | (1 << 2)), "cluster 1, bit 2");
        assert!(a.matches_x2apic(18, false) && !a.matches_x2apic(7, false));
        assert!(a.matches_x2apic(u32::MAX, false) && a.matches_x2apic(u32::MAX, true), "broadcast");
        assert!(a.matches_x2apic((1 << 16) | 0b100, true) && !a.matches_x2apic(0b100, true));
        // 8-bit logical destinations (I/O APIC, xAPIC senders): cluster 0; 0xff is all.
        let b = {
            let mut b = enabled(4);
            b.set_x2apic(true);
            b
        };
        assert!(b.matches_logical(0x10) && !b.matches_logical(0x01) && b.matches_logical(0xff));
        // INIT: assert (level 1), de-assert (level 0, trigger level); edge with level 0 is an INIT.
        let mut c = enabled(0);
        let ipi = |c: &mut Lapic, low: u32| match c.write(0x300, low, 0) {
            Some(LapicEvent::Ipi(i)) => i,
            other => panic!("{other:?}"),
        };
        assert!(!ipi(&mut c, 0x0000_c500).deassert);
        assert!(ipi(&mut c, 0x0000_8500).deassert);
        assert!(!ipi(&mut c, 0x0000_0500).deassert, "edge-triggered INIT");
        assert!(!ipi(&mut c, 0x0000_8041).level_triggered, "fixed IPIs are edge-triggered");
    }

    #[test]
    fn the_paravirtual_eoi_only_for_one_edge_vector_in_service_and_none_requested() {
        let mut a = enabled(0);
        assert!(!a.pv_eoi_possible(), "nothing in service");
        a.accept(0x41, false);
        assert!(!a.pv_eoi_possible(), "requested, not in service");
        a.acknowledge();
        assert!(a.pv_eoi_possible());
        a.accept(0x31, false);
        assert!(!a.pv_eoi_possible(), "another one requested");
        a.write(0xb0, 0, 0);
        a.acknowledge();
        assert!(a.pv_eoi_possible());
        a.accept(0x81, false);
        a.acknowledge();
        assert!(!a.pv_eoi_possible(), "two in service (nested)");
        a.write(0xb0, 0, 0);
        a.write(0xb0, 0, 0);
        a.accept(0x81, true);
        a.acknowledge();
        assert!(!a.pv_eoi_possible(), "level-triggered: the I/O APIC needs the EOI");
    }

    #[test]
    fn timer_one_shot_and_periodic() {
        let mut a = enabled(0);
        a.write(0x3e0, 0xb, 0); // divide by 1
        a.write(0x320, 0x30, 0); // one-shot, vector 0x30
        a.write(0x380, 1_000_000, 0); // 1 ms
        assert_eq!(a.read(0x390, 500_000), 500_000);
        // Counts stay right hours into the host's uptime.
        let late = 10_000 * 1_000_000_000u64;
        a.write(0x380, 1_000_000, late);
        assert_eq!(a.read(0x390, late + 250_000), 750_000);
        a.write(0x380, 1_000_000, 0);
        assert_eq!(a.update_timer(500_000), Some(1_000_000));
        assert_eq!(a.update_timer(1_000_000), None, "fired; one-shot stops");
        assert_eq!(a.acknowledge(), Some(0x30));
        assert_eq!(a.read(0x390, 2_000_000), 0);
        // Periodic with divide by 16: 1000 * 16 ns.
        a.write(0xb0, 0, 0);
        a.write(0x3e0, 0x3, 0);
        a.write(0x320, 0x2_0031, 10_000_000);
        a.write(0x380, 1000, 10_000_000);
        assert_eq!(a.update_timer(10_000_000 + 16_000), Some(10_000_000 + 32_000));
        assert_eq!(a.acknowledge(), Some(0x31));
        a.write(0xb0, 0, 0);
        assert_eq!(
            a.update_timer(10_000_000 + 100 * 16_000 + 5),
            Some(10_000_000 + 101 * 16_000),
            "coalesced"
        );
        assert_eq!(a.acknowledge(), Some(0x31));
        assert_eq!(a.pending(), None, "one interrupt for the missed periods");
        // Masked: counts, no interrupt.
        a.write(0xb0, 0, 0);
        a.write(0x320, 0x1_0031, 0);
        a.write(0x380, 10, 0);
        a.update_timer(1_000_000);
        assert_eq!(a.pending(), None);
    }

    #[test]
    fn timer_in_tsc_deadline_mode() {
        let mut a = enabled(0);
        // Not in TSC-deadline mode: the MSR reads 0 and writes are ignored.
        a.set_tsc_deadline(5000, 5000);
        assert_eq!(a.tsc_deadline(), 0);
        a.write(0x320, 0x4_0040, 0); // TSC-deadline, vector 0x40
        a.set_tsc_deadline(5000, 2_000_000);
        assert_eq!(a.tsc_deadline(), 5000);
        // The initial count is ignored in this mode.
        a.write(0x380, 10, 0);
        assert_eq!(a.update_timer(1_000_000), Some(2_000_000));
        assert_eq!(a.pending(), None);
        assert_eq!(a.update_timer(2_000_000), None);
        assert_eq!(a.acknowledge(), Some(0x40));
        a.write(0xb0, 0, 2_000_000); // EOI
        assert_eq!(a.tsc_deadline(), 0, "cleared once it fired");
        assert_eq!(a.update_timer(3_000_000), None, "fires once");
        assert_eq!(a.pending(), None);
        // A deadline in the past fires at the next look; 0 disarms; a mode change disarms.
        a.set_tsc_deadline(1, 0);
        a.update_timer(3_000_001);
        assert_eq!(a.acknowledge(), Some(0x40));
        a.set_tsc_deadline(9, 9_000_000);
        a.set_tsc_deadline(0, 0);
        assert_eq!(a.update_timer(10_000_000), None);
        a.set_tsc_deadline(9, 11_000_000);
        a.write(0x320, 0x40, 10_000_000); // back to one-shot
        assert_eq!((a.tsc_deadline(), a.update_timer(12_000_000)), (0, None));
        assert_eq!(a.pending(), None);
    }

    #[test]
    fn icr_ipis_logical_destinations_and_software_disable() {
        let mut a = enabled(1);
        a.write(0x310, 0x0200_0000, 0);
        let init = a.write(0x300, 0x0000_4500, 0);
        assert!(matches!(
            init,
            Some(LapicEvent::Ipi(Ipi { mode: DeliveryMode::Init, dest: 2, deassert: false, .. }))
        ));
        let sipi = a.write(0x300, 0x0000_0699, 0);
        assert!(matches!(sipi, Some(LapicEvent::Ipi(Ipi { mode: DeliveryMode::Startup, vector: 0x99, .. }))));
        let all = a.write(0x300, 0x000c_00fd, 0);
        assert!(matches!(
            all,
            Some(LapicEvent::Ipi(Ipi { shorthand: Shorthand::AllExcludingSelf, vector: 0xfd, .. }))
        ));
        assert_eq!(a.read(0x300, 0) & (1 << 12), 0, "never send-pending");
        // Flat logical model: LDR bit set per CPU.
        a.write(0xd0, 0x0200_0000, 0);
        assert!(a.matches_logical(0x03) && !a.matches_logical(0x01));
        // Cluster model.
        a.write(0xe0, 0x0fff_ffff, 0);
        a.write(0xd0, 0x1200_0000, 0);
        assert!(a.matches_logical(0x12) && !a.matches_logical(0x22) && !a.matches_logical(0x11));
        // Software disable masks every LVT and they cannot be unmasked.
        a.write(0x350, 0x700, 0);
        assert_eq!(a.read(0x350, 0), 0x700);
        a.write(0xf0, 0xff, 0);
        assert_eq!(a.read(0x350, 0) & LVT_MASKED, LVT_MASKED);
        a.write(0x320, 0x30, 0);
        assert_eq!(a.read(0x320, 0) & LVT_MASKED, LVT_MASKED);
    }

    #[test]
    fn virtual_wire_and_random_accesses() {
        // After reset the BSP takes the PIC's interrupts until its APIC is set up.
        let mut bsp = Lapic::new(0);
        assert!(bsp.accepts_pic_interrupts());
        assert!(!Lapic::new(1).accepts_pic_interrupts());
        bsp.write(0xf0, 0x1ff, 0);
        assert!(!bsp.accepts_pic_interrupts(), "enabled with LINT0 masked");
        bsp.write(0x350, 0x700, 0);
        assert!(bsp.accepts_pic_interrupts(), "LINT0 in ExtINT mode");
        let mut x = 0x2545_f491u32;
        for i in 0..100_000u64 {
            crate::xorshift32(&mut x);
            let off = ((x >> 4) & 0x3f) as u64 * 0x10;
            if x & 1 == 0 {
                let _ = bsp.write(off, x.rotate_left(9), i * 1000);
            } else {
                let _ = bsp.read(off, i * 1000);
            }
            if x & 0x30 == 0 {
                let _ = bsp.update_timer(i * 1000);
                let _ = bsp.acknowledge();
            }
        }
    }
}
