//! What a guest sees when it executes CPUID: the host's answers, filtered so the guest is told the
//! truth about the virtual machine (AMD APM vol. 3 appendix E, Intel SDM vol. 2 "CPUID").
//!
//! - leaf 1: the vCPU's own APIC ID and the VM's CPU count; the hypervisor-present bit set; the
//!   TSC-deadline timer when the host knows its TSC rate; x2APIC with the VM's local APIC model;
//!   VMX and MONITOR/MWAIT (not emulated) cleared.
//! - leaves 0x40000000 and 0x40000001: the KVM paravirtual interface's signature `KVMKVMKVM` and
//!   features - the paravirtual clock (see [`crate::pvclock`]) and end of interrupt (see
//!   [`crate::pveoi`]), which stock guests use by themselves; leaf 0x40000100: Ember's own signature, `EmberEmberHV`.
//! - leaf 0x80000001: SVM cleared (no nested virtualization); leaf 0x8000000A: all zero.
//! - leaves 0xB and 0x1F (topology) answer "no topology information"; leaf 4's core counts are
//!   cleared.
//! - leaves above the host's maximum: all zero, as on hardware that clamps.

use crate::{pvclock, pveoi};

/// CPUID's four output registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leaf {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// The VM's CPU facts CPUID reports.
#[derive(Debug, Clone, Copy)]
pub struct VcpuIdentity {
    /// This vCPU's APIC ID (its index in the VM).
    pub apic_id: u8,
    /// vCPUs in the VM.
    pub vcpus: u8,
    /// Whether the VM has local APICs (without, CPUID leaf 1 says there is no APIC and guests use
    /// the 8259A interrupt controllers).
    pub lapic: bool,
    /// Whether the host knows its TSC frequency: the paravirtual clock and the local APIC timer's
    /// TSC-deadline mode are offered.
    pub pv_clock: bool,
}

const HYPERVISOR_BASE: u32 = 0x4000_0000;
/// Ember's own leaf (after the KVM-compatible ones, where guests that scan in steps of 0x100 find
/// it).
pub const EMBER_LEAF: u32 = 0x4000_0100;
/// "EmberEmberHV" in EBX, ECX, EDX.
const SIGNATURE: [u32; 3] =
    [u32::from_le_bytes(*b"Embe"), u32::from_le_bytes(*b"rEmb"), u32::from_le_bytes(*b"erHV")];

/// The guest's answer for `leaf`/`subleaf`, from the host's (`host(leaf, subleaf)`).
pub fn guest_cpuid(leaf: u32, subleaf: u32, vcpu: VcpuIdentity, host: impl Fn(u32, u32) -> Leaf) -> Leaf {
    let max_basic = host(0, 0).eax;
    let max_extended = host(0x8000_0000, 0).eax;
    match leaf {
        pvclock::KVM_CPUID_BASE => {
            let [ebx, ecx, edx] = pvclock::KVM_SIGNATURE;
            return Leaf { eax: pvclock::KVM_CPUID_FEATURES, ebx, ecx, edx };
        }
        pvclock::KVM_CPUID_FEATURES => {
            let clock = pvclock::KVM_FEATURE_CLOCKSOURCE2 | pvclock::KVM_FEATURE_CLOCKSOURCE_STABLE_BIT;
            let eoi = if vcpu.lapic { pveoi::KVM_FEATURE_PV_EOI } else { 0 };
            let eax = eoi | if vcpu.pv_clock { clock } else { 0 };
            return Leaf { eax, ..Leaf::default() };
        }
        EMBER_LEAF => {
            return Leaf { eax: EMBER_LEAF, ebx: SIGNATURE[0], ecx: SIGNATURE[1], edx: SIGNATURE[2] }
        }
        _ => {}
    }
    let in_range = if leaf >= 0x8000_0000 { leaf <= max_extended } else { leaf <= max_basic };
    if !in_range || (HYPERVISOR_BASE..0x8000_0000).contains(&leaf) {
        return Leaf::default();
    }
    let mut l = host(leaf, subleaf);
    match leaf {
        1 => {
            // EBX: APIC ID [31:24], logical processor count [23:16], CLFLUSH size [15:8] kept.
            l.ebx = (l.ebx & 0x0000_ffff) | (u32::from(vcpu.vcpus) << 16) | (u32::from(vcpu.apic_id) << 24);
            l.ecx &= !((1 << 3) | (1 << 5) | (1 << 21)); // MONITOR, VMX, x2APIC
            l.ecx |= 1 << 31; // running under a hypervisor
            if vcpu.lapic {
                l.ecx |= 1 << 21; // x2APIC (the VM's local APIC model has the mode)
            }
            if vcpu.lapic && vcpu.pv_clock {
                l.ecx |= 1 << 24; // TSC-deadline timer
            } else {
                l.ecx &= !(1 << 24);
            }
            l.edx |= 1 << 28; // HTT: the count in EBX is valid
            if !vcpu.lapic {
                l.edx &= !(1 << 9); // APIC
            }
        }
        4 => l.eax &= 0x0000_3fff, // no cores or threads sharing the cache reported
        0xb | 0x1f => l = Leaf { eax: 0, ebx: 0, ecx: subleaf & 0xff, edx: u32::from(vcpu.apic_id) },
        0x8000_0001 => l.ecx &= !(1 << 2), // SVM
        0x8000_000a => l = Leaf::default(),
        _ => {}
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An EPYC-like host: max basic leaf 0xd, max extended 0x8000001f, SVM, x2APIC, MONITOR.
    fn host(leaf: u32, _sub: u32) -> Leaf {
        match leaf {
            0 => Leaf { eax: 0xd, ebx: 0x6874_7541, ecx: 0x444d_4163, edx: 0x6974_6e65 },
            1 => Leaf { eax: 0x0083_0f10, ebx: 0x0310_0800, ecx: 0x7ed8_320b, edx: 0x178b_fbff },
            4 => Leaf { eax: 0xfc00_4121, ..Leaf::default() },
            0xb => Leaf { eax: 1, ebx: 2, ecx: 0x100, edx: 3 },
            0x8000_0000 => Leaf { eax: 0x8000_001f, ..Leaf::default() },
            0x8000_0001 => Leaf { ecx: 0x75c2_37ff, ..Leaf::default() },
            0x8000_000a => Leaf { eax: 1, ebx: 16, ecx: 0, edx: 0x1 },
            _ => Leaf { eax: 0x1111_1111, ..Leaf::default() },
        }
    }

    #[test]
    fn the_guest_is_told_about_its_vm() {
        let v = VcpuIdentity { apic_id: 3, vcpus: 4, lapic: true, pv_clock: true };
        let l1 = guest_cpuid(1, 0, v, host);
        assert_eq!((l1.ebx >> 24, (l1.ebx >> 16) & 0xff, l1.ebx & 0xffff), (3, 4, 0x0800));
        assert_eq!(l1.ecx & (1 << 31), 1 << 31, "hypervisor present");
        assert_eq!(l1.ecx & ((1 << 3) | (1 << 5)), 0, "no MONITOR, VMX");
        assert_eq!(l1.ecx & (1 << 21), 1 << 21, "x2APIC");
        assert_eq!(l1.ecx & 1, 1, "other features kept (SSE3)");
        assert_eq!(l1.ecx & (1 << 24), 1 << 24, "TSC-deadline timer");
        assert_eq!(l1.eax, 0x0083_0f10, "family/model kept");
        let name = |l: Leaf| {
            let mut name = [0u8; 12];
            for (i, r) in [l.ebx, l.ecx, l.edx].iter().enumerate() {
                name[4 * i..4 * i + 4].copy_from_slice(&r.to_le_bytes());
            }
            name
        };
        let kvm = guest_cpuid(0x4000_0000, 0, v, host);
        assert_eq!((&name(kvm), kvm.eax), (b"KVMKVMKVM\0\0\0", 0x4000_0001));
        let features = guest_cpuid(0x4000_0001, 0, v, host);
        assert_eq!(
            features,
            Leaf { eax: (1 << 3) | (1 << 6) | (1 << 24), ..Leaf::default() },
            "kvm-clock, PV EOI"
        );
        let no_clock = VcpuIdentity { pv_clock: false, ..v };
        let eoi_only = Leaf { eax: 1 << 6, ..Leaf::default() };
        assert_eq!(guest_cpuid(0x4000_0001, 0, no_clock, host), eoi_only, "no TSC rate known");
        assert_eq!(guest_cpuid(1, 0, no_clock, host).ecx & (1 << 24), 0, "nor a TSC-deadline timer");
        let ember = guest_cpuid(0x4000_0100, 0, v, host);
        assert_eq!((&name(ember), ember.eax), (b"EmberEmberHV", 0x4000_0100));
        assert_eq!(guest_cpuid(0x8000_0001, 0, v, host).ecx & (1 << 2), 0, "no nested SVM");
        assert_eq!(l1.edx & (1 << 9), 1 << 9, "APIC");
        let no_apic = VcpuIdentity { lapic: false, ..v };
        assert_eq!(guest_cpuid(1, 0, no_apic, host).edx & (1 << 9), 0, "no APIC without LAPIC models");
        assert_eq!(guest_cpuid(1, 0, no_apic, host).ecx & (1 << 21), 0, "nor x2APIC");
        assert_eq!(guest_cpuid(0x4000_0001, 0, no_apic, host).eax & (1 << 6), 0, "nor PV EOI");
        assert_eq!(guest_cpuid(0x8000_000a, 0, v, host), Leaf::default());
        assert_eq!(guest_cpuid(0xb, 1, v, host), Leaf { eax: 0, ebx: 0, ecx: 1, edx: 3 });
        assert_eq!(guest_cpuid(4, 0, v, host).eax, 0x0000_0121);
        // Past the host's maxima, and the unused hypervisor range: zero.
        assert_eq!(guest_cpuid(0xe, 0, v, host), Leaf::default());
        assert_eq!(guest_cpuid(0x8000_0020, 0, v, host), Leaf::default());
        assert_eq!(guest_cpuid(0x4000_0002, 0, v, host), Leaf::default());
        assert_eq!(guest_cpuid(0x4000_0101, 0, v, host), Leaf::default());
        // The rest passes through.
        assert_eq!(guest_cpuid(0, 0, v, host), host(0, 0));
        assert_eq!(guest_cpuid(7, 0, v, host), host(7, 0));
    }
}
