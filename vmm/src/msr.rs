//! Model-specific registers as a guest sees them. Every guest RDMSR/WRMSR is intercepted (the MSR
//! permission map is all ones); this module decides what each access does, for AMD guests (AMD64
//! APM vol. 2 appendix A, and the MSRs Linux touches on AMD): registers the CPU keeps in the VMCB
//! (EFER, PAT, the SYSCALL/SYSENTER and segment-base MSRs) are handed to the backend, a few are
//! kept per vCPU here (APIC base, MTRR default type, TSC_AUX, the paravirtual clock's two MSRs and
//! the paravirtual EOI's), some read as constants that describe
//! the VM truthfully (no MTRRs, no machine-check banks, SVM disabled for the guest), and everything
//! else faults (#GP), as on hardware that does not have the register.

use crate::pvclock::{ClockMsrs, MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK_NEW};
use crate::pveoi::{PvEoi, MSR_KVM_PV_EOI_EN};

/// Registers the backend keeps in its VMCB (or VMCS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Efer,
    Pat,
    Star,
    Lstar,
    Cstar,
    Sfmask,
    FsBase,
    GsBase,
    KernelGsBase,
    SysenterCs,
    SysenterEsp,
    SysenterEip,
    /// The guest's view of the time-stamp counter (host TSC plus the VM's offset).
    Tsc,
}

/// What an access does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrAccess {
    /// A read answered with this value, or a write taken (kept here or ignored).
    Done(u64),
    /// The backend reads or writes its own copy.
    Saved(Saved),
    /// #GP in the guest.
    Fault,
}

pub const APIC_BASE_ADDRESS: u64 = 0xfee0_0000;
const APIC_BSP: u64 = 1 << 8;
const APIC_X2APIC: u64 = 1 << 10;
const APIC_ENABLE: u64 = 1 << 11;
/// EFER bits a guest may set: SCE, LME, LMA, NXE, FFXSR (SVME is the host's and never shown).
pub const EFER_GUEST_BITS: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11) | (1 << 14);

/// Per-vCPU MSR state kept by the hypervisor.
#[derive(Debug, Clone)]
pub struct VcpuMsrs {
    apic_base: u64,
    mtrr_def_type: u64,
    tsc_aux: u64,
    /// The paravirtual clock's registers ([`crate::pvclock`]); what their writes make the
    /// hypervisor write into guest memory is done by the exit handler, which has the memory.
    pub clock: ClockMsrs,
    /// The paravirtual EOI ([`crate::pveoi`]): its MSR, and the flag the run loop sets and reads.
    pub pv_eoi: PvEoi,
}

impl VcpuMsrs {
    /// vCPU `index` of a VM (0 is the bootstrap processor).
    pub fn new(index: u32) -> Self {
        let bsp = if index == 0 { APIC_BSP } else { 0 };
        VcpuMsrs {
            apic_base: APIC_BASE_ADDRESS | APIC_ENABLE | bsp,
            mtrr_def_type: 0,
            tsc_aux: u64::from(index),
            clock: ClockMsrs::default(),
            pv_eoi: PvEoi::default(),
        }
    }

    /// The guest's xAPIC is enabled (APIC_BASE bit 11).
    pub fn apic_enabled(&self) -> bool {
        self.apic_base & APIC_ENABLE != 0
    }

    /// The guest's APIC is in x2APIC mode (APIC_BASE bits 10 and 11).
    pub fn x2apic(&self) -> bool {
        self.apic_base & (APIC_ENABLE | APIC_X2APIC) == APIC_ENABLE | APIC_X2APIC
    }

    fn saved(msr: u32) -> Option<Saved> {
        Some(match msr {
            0x10 => Saved::Tsc,
            0x174 => Saved::SysenterCs,
            0x175 => Saved::SysenterEsp,
            0x176 => Saved::SysenterEip,
            0x277 => Saved::Pat,
            0xc000_0080 => Saved::Efer,
            0xc000_0081 => Saved::Star,
            0xc000_0082 => Saved::Lstar,
            0xc000_0083 => Saved::Cstar,
            0xc000_0084 => Saved::Sfmask,
            0xc000_0100 => Saved::FsBase,
            0xc000_0101 => Saved::GsBase,
            0xc000_0102 => Saved::KernelGsBase,
            _ => return None,
        })
    }

    /// RDMSR `msr`.
    pub fn read(&self, msr: u32) -> MsrAccess {
        if let Some(s) = Self::saved(msr) {
            return MsrAccess::Saved(s);
        }
        MsrAccess::Done(match msr {
            0x1b => self.apic_base,
            0x8b => 0,          // microcode patch level
            0xfe => 0,          // MTRRCAP: no variable or fixed MTRRs, no write-combining
            0x179 | 0x17a => 0, // MCG_CAP, MCG_STATUS: no machine-check banks
            0x2ff => self.mtrr_def_type,
            0xc000_0103 => self.tsc_aux,
            MSR_KVM_WALL_CLOCK_NEW => self.clock.wall_clock,
            MSR_KVM_SYSTEM_TIME_NEW => self.clock.system_time,
            MSR_KVM_PV_EOI_EN => self.pv_eoi.msr(),
            0xc001_0114 => 1 << 4, // VM_CR: SVM disabled (no nested virtualization)
            0xc001_0010 | 0xc001_0015 | 0xc001_001f | 0xc001_1029 => 0, // SYSCFG, HWCR, NB_CFG, DE_CFG
            _ => return MsrAccess::Fault,
        })
    }

    /// WRMSR `msr` with `value`.
    pub fn write(&mut self, msr: u32, value: u64) -> MsrAccess {
        if let Some(s) = Self::saved(msr) {
            if s == Saved::Efer && value & !EFER_GUEST_BITS != 0 {
                return MsrAccess::Fault;
            }
            return MsrAccess::Saved(s);
        }
        match msr {
            0x1b => {
                // The APIC cannot move. Its modes (SDM 11.12.5): disabled, xAPIC, x2APIC; x2APIC is
                // entered from xAPIC and left only by disabling the APIC.
                let mode = |v: u64| v & (APIC_ENABLE | APIC_X2APIC);
                let (from, to) = (mode(self.apic_base), mode(value));
                let allowed = from == to
                    || to == 0
                    || (from == 0 && to == APIC_ENABLE)
                    || (from == APIC_ENABLE && to == APIC_ENABLE | APIC_X2APIC);
                if value & !0xfff != APIC_BASE_ADDRESS
                    || value & 0xfff & !(APIC_BSP | APIC_ENABLE | APIC_X2APIC) != 0
                    || !allowed
                {
                    return MsrAccess::Fault;
                }
                self.apic_base = (self.apic_base & !(APIC_ENABLE | APIC_X2APIC)) | to;
            }
            0x2ff => {
                // Default memory type (bits 0-7) and the enable bits 10-11; the rest is reserved.
                if value & !0xcff != 0 {
                    return MsrAccess::Fault;
                }
                self.mtrr_def_type = value;
            }
            0xc000_0103 => self.tsc_aux = value & 0xffff_ffff,
            MSR_KVM_WALL_CLOCK_NEW => self.clock.wall_clock = value,
            MSR_KVM_SYSTEM_TIME_NEW => self.clock.system_time = value,
            MSR_KVM_PV_EOI_EN if !self.pv_eoi.write_msr(value) => return MsrAccess::Fault,
            MSR_KVM_PV_EOI_EN => {}
            // Written by Linux on AMD (speculation and errata settings): accepted and ignored.
            // NB_CFG (0xc001001f): Linux sets its extended-config-space bit on AMD; no northbridge here.
            0x8b | 0x17a | 0xc001_0015 | 0xc001_001f | 0xc001_1029 => {}
            _ => return MsrAccess::Fault,
        }
        MsrAccess::Done(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_is_described_truthfully() {
        let bsp = VcpuMsrs::new(0);
        let ap = VcpuMsrs::new(1);
        assert_eq!(bsp.read(0x1b), MsrAccess::Done(0xfee0_0900));
        assert_eq!(ap.read(0x1b), MsrAccess::Done(0xfee0_0800));
        assert_eq!(bsp.read(0xfe), MsrAccess::Done(0), "no MTRRs");
        assert_eq!(bsp.read(0xc001_0114), MsrAccess::Done(0x10), "SVM disabled for the guest");
        assert_eq!(ap.read(0xc000_0103), MsrAccess::Done(1), "TSC_AUX: the vCPU number");
        assert_eq!(bsp.read(0xc000_0080), MsrAccess::Saved(Saved::Efer));
        assert_eq!(bsp.read(0x10), MsrAccess::Saved(Saved::Tsc));
        assert_eq!(bsp.read(0xc000_0102), MsrAccess::Saved(Saved::KernelGsBase));
        assert_eq!(bsp.read(0x4b56_4d01), MsrAccess::Done(0), "kvm-clock off");
        // Unknown registers, the host's own, and the KVM MSRs not offered fault.
        for msr in [0x3a, 0x1a0, 0xc001_0117, 0x4000_0000, 0xdead_beef, 0x11, 0x12, 0x4b56_4d02] {
            assert_eq!(bsp.read(msr), MsrAccess::Fault, "{msr:#x}");
        }
    }

    #[test]
    fn writes_are_checked() {
        let mut m = VcpuMsrs::new(0);
        // The APIC can be disabled and enabled again, not moved, not switched to x2APIC.
        assert_eq!(m.write(0x1b, 0xfee0_0100), MsrAccess::Done(0xfee0_0100));
        assert!(!m.apic_enabled());
        assert_eq!(m.read(0x1b), MsrAccess::Done(0xfee0_0100), "BSP bit kept");
        m.write(0x1b, 0xfee0_0900);
        assert!(m.apic_enabled());
        assert_eq!(m.write(0x1b, 0xfed0_0900), MsrAccess::Fault);
        assert_eq!(m.write(0x1b, 0xfee0_0b00), MsrAccess::Fault, "reserved bit 9");
        // x2APIC: entered from xAPIC mode, left only by disabling; never from disabled at once.
        assert!(!m.x2apic());
        assert_eq!(m.write(0x1b, 0xfee0_0d00), MsrAccess::Done(0xfee0_0d00));
        assert!(m.x2apic() && m.apic_enabled());
        assert_eq!(m.read(0x1b), MsrAccess::Done(0xfee0_0d00));
        assert_eq!(m.write(0x1b, 0xfee0_0900), MsrAccess::Fault, "x2APIC -> xAPIC");
        assert_eq!(m.write(0x1b, 0xfee0_0100), MsrAccess::Done(0xfee0_0100));
        assert!(!m.x2apic() && !m.apic_enabled());
        assert_eq!(m.write(0x1b, 0xfee0_0d00), MsrAccess::Fault, "disabled -> x2APIC");
        assert_eq!(m.write(0x1b, 0xfee0_0500), MsrAccess::Fault, "x2APIC bit without enable");
        m.write(0x1b, 0xfee0_0900);
        // EFER: the guest's bits go to the backend; SVME and reserved bits fault.
        assert_eq!(m.write(0xc000_0080, 0xd01), MsrAccess::Saved(Saved::Efer));
        assert_eq!(m.write(0xc000_0080, 1 << 12), MsrAccess::Fault);
        assert_eq!(m.write(0xc000_0080, 1 << 20), MsrAccess::Fault);
        // MTRR default type: kept; reserved bits fault.
        assert_eq!(m.write(0x2ff, 0xc06), MsrAccess::Done(0xc06));
        assert_eq!(m.read(0x2ff), MsrAccess::Done(0xc06));
        assert_eq!(m.write(0x2ff, 0x1000), MsrAccess::Fault);
        // Errata settings accepted; unknown registers fault.
        assert_eq!(m.write(0xc001_1029, 2), MsrAccess::Done(2));
        assert_eq!(m.write(0x1a0, 0), MsrAccess::Fault);
        assert_eq!(m.write(0xc000_0103, u64::MAX), MsrAccess::Done(u64::MAX));
        assert_eq!(m.read(0xc000_0103), MsrAccess::Done(0xffff_ffff));
        // The paravirtual clock's registers keep what is written (the exit handler fills the
        // structures in).
        assert_eq!(m.write(0x4b56_4d01, 0x1001), MsrAccess::Done(0x1001));
        assert!(m.clock.enabled());
        assert_eq!(m.read(0x4b56_4d01), MsrAccess::Done(0x1001));
        assert_eq!(m.write(0x4b56_4d00, 0x2000), MsrAccess::Done(0x2000));
        assert_eq!(m.read(0x4b56_4d00), MsrAccess::Done(0x2000));
        // The paravirtual EOI's: an aligned address and the enable bit; anything else faults.
        assert_eq!(m.write(0x4b56_4d04, 0x3001), MsrAccess::Done(0x3001));
        assert_eq!(m.read(0x4b56_4d04), MsrAccess::Done(0x3001));
        assert_eq!(m.write(0x4b56_4d04, 0x3003), MsrAccess::Fault);
        assert_eq!(m.read(0x4b56_4d04), MsrAccess::Done(0x3001));
    }
}
