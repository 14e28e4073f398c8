//! End of interrupt without an exit: KVM's paravirtual EOI (Linux's
//! `Documentation/virt/kvm/x86/msr.rst`, `MSR_KVM_PV_EOI_EN`), which stock Linux guests use by
//! themselves when CPUID leaf 0x40000001 EAX has `KVM_FEATURE_PV_EOI` (bit 6).
//!
//! The guest writes MSR 0x4b564d04 with the guest-physical address of a 4-byte-aligned word and
//! bit 0 set (0 turns it off). Before entering the guest, when the vCPU's local APIC has exactly one
//! vector in service, that vector is edge-triggered (so the I/O APIC need not hear of its end) and
//! no other interrupt is requested, Ember sets bit 0 of the word. The guest's end-of-interrupt
//! routine then clears the bit instead of writing the APIC's EOI register (an MMIO exit). At the
//! next exit Ember reads the bit back: clear, and it ends the interrupt in the APIC model itself;
//! still set, and it clears it, so that the guest's next EOI goes to the register. Only the word's
//! bit 0 is ever written, only while the vCPU is out of the guest, and only at the address it was
//! set at; a word outside the guest's RAM gets nothing written and the guest writes its EOIs to
//! the register as without the feature. An INIT turns the feature off (the MSR reads 0 again), as
//! KVM's APIC reset does.

use crate::memory::GuestMemory;
use crate::GuestPhysAddr;

pub const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
pub const KVM_FEATURE_PV_EOI: u32 = 1 << 6;
const ENABLED: u64 = 1;

/// One vCPU's paravirtual EOI state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PvEoi {
    /// `MSR_KVM_PV_EOI_EN` as the guest wrote it.
    msr: u64,
    /// Where Ember set the flag before the guest last ran (the guest may have cleared it since).
    set_at: Option<u64>,
}

impl PvEoi {
    pub fn msr(&self) -> u64 {
        self.msr
    }

    /// A guest write of the MSR; `false` (a #GP for the guest) for an address that is not 4-byte
    /// aligned. A flag already set stays where it is until the next exit's [`PvEoi::ended`].
    pub fn write_msr(&mut self, value: u64) -> bool {
        if value & !ENABLED & 3 != 0 {
            return false;
        }
        self.msr = value;
        true
    }

    /// After an exit: whether the guest ended its interrupt by clearing the flag (the caller then
    /// ends it in the APIC). A flag the guest left set is cleared.
    pub fn ended(&mut self, mem: &mut dyn GuestMemory) -> bool {
        let Some(at) = self.set_at.take() else { return false };
        let mut b = [0u8];
        if mem.read(GuestPhysAddr(at), &mut b).is_err() {
            return false;
        }
        if b[0] & 1 == 0 {
            return true;
        }
        let _ = mem.write(GuestPhysAddr(at), &[b[0] & !1]);
        false
    }

    /// Before an entry: sets the flag when the guest enabled it and `possible` (exactly one
    /// edge-triggered vector in service, nothing requested: see the module's description).
    pub fn offer(&mut self, possible: bool, mem: &mut dyn GuestMemory) {
        if self.set_at.is_some() || !possible || self.msr & ENABLED == 0 {
            return;
        }
        let at = self.msr & !ENABLED;
        let mut b = [0u8];
        if mem.read(GuestPhysAddr(at), &mut b).is_ok() && mem.write(GuestPhysAddr(at), &[b[0] | 1]).is_ok() {
            self.set_at = Some(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    fn flag(m: &GuestRam, at: u64) -> u8 {
        let mut b = [0u8];
        m.read(GuestPhysAddr(at), &mut b).unwrap();
        b[0]
    }

    #[test]
    fn the_guest_ends_an_interrupt_through_the_flag_or_the_register() {
        let mut m = GuestRam::new(8192);
        m.write(GuestPhysAddr(0x1000), &[0x80]).unwrap(); // bits of the guest's own
        let mut p = PvEoi::default();
        p.offer(true, &mut m);
        assert_eq!(flag(&m, 0x1000), 0x80, "not enabled: nothing written");
        assert!(!p.ended(&mut m));
        assert!(p.write_msr(0x1000 | 1));
        assert_eq!(p.msr(), 0x1001);
        p.offer(false, &mut m);
        assert_eq!(flag(&m, 0x1000), 0x80, "not possible: nothing written");
        p.offer(true, &mut m);
        assert_eq!(flag(&m, 0x1000), 0x81);
        // The guest's EOI clears the bit: the host ends the interrupt, once.
        m.write(GuestPhysAddr(0x1000), &[0x80]).unwrap();
        assert!(p.ended(&mut m));
        assert!(!p.ended(&mut m));
        // Left set (the guest did not get to its EOI): cleared, so that its EOI goes to the APIC.
        p.offer(true, &mut m);
        p.offer(true, &mut m);
        assert_eq!(flag(&m, 0x1000), 0x81);
        assert!(!p.ended(&mut m));
        assert_eq!(flag(&m, 0x1000), 0x80);
        // Moved while set: the old word is the one read back and cleared.
        p.offer(true, &mut m);
        assert!(p.write_msr(0x1800 | 1));
        assert!(!p.ended(&mut m));
        assert_eq!(flag(&m, 0x1000), 0x80);
        p.offer(true, &mut m);
        assert_eq!(flag(&m, 0x1800), 1);
        // Turned off: nothing more is set.
        m.write(GuestPhysAddr(0x1800), &[0]).unwrap();
        assert!(p.ended(&mut m));
        assert!(p.write_msr(0));
        p.offer(true, &mut m);
        assert_eq!(flag(&m, 0x1800), 0);
    }

    #[test]
    fn a_hostile_address_gets_nothing_written() {
        let mut m = GuestRam::new(8192);
        let mut p = PvEoi::default();
        assert!(!p.write_msr(0x1002 | 1), "not 4-byte aligned: #GP");
        assert!(!p.write_msr(0x1004 | 2));
        assert_eq!(p.msr(), 0);
        for outside in [8192u64, 0xfee0_0000, !3] {
            assert!(p.write_msr(outside | 1));
            p.offer(true, &mut m);
            assert!(!p.ended(&mut m), "{outside:#x}: never set, never ends an interrupt");
        }
        let mut all = [1u8; 8192];
        m.read(GuestPhysAddr(0), &mut all).unwrap();
        assert!(all.iter().all(|&b| b == 0));
    }
}
