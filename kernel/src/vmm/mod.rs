//! The hypervisor's host-testable parts (layers 1 and 3): guest-physical addresses and guest memory,
//! nested page tables built from a VM's memory, the Linux boot protocol loader, walking the guest's
//! page tables and decoding the instruction behind an MMIO access, the I/O port and MMIO buses, the
//! guest's CPUID answers and MSRs, vendor-neutral VM exits and their handling (port I/O, MMIO
//! emulation, CPUID, MSRs with #GP for unknown ones, HLT, the exits that end a VM), the device
//! models (the 16550A serial console, the CMOS real-time clock, the 8254 timer, the 8259A PICs)
//! wired into a PC chipset ([`machine`]) with ACPI tables ([`acpi`]), and the vendor-neutral vCPU
//! loop ([`vcpu`]: interrupt delivery and windows, halts, reset and power-off).
//!
//! The SVM backend is platform code in the appliance binary (`arch/x86_64/svm.rs`), and the runtime
//! that runs VMs on the application processors is `vmhost.rs` there. The virtio block device
//! ([`virtio_blk`]) is on the VMs' MMIO bus. The local APIC ([`lapic`]), I/O APIC ([`ioapic`]) and
//! MADT ([`acpi::madt`]) models are host-tested but not wired into VMs yet (guests use the PICs; SMP
//! guests need them).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

// Guest-controlled paths are total: in the modules marked below - every device model (virtio,
// PICs, PIT, RTC, serial, local and I/O APICs, the chipset and the board), the buses, the exit
// handling, instruction decoding and the guest page walk, guest memory, the vCPU loop and the disk
// write-back - indexing, slicing and unchecked arithmetic are refused by clippy, and so are
// unwrap/expect/panic in all of `vmm` (outside tests). Still to be converted: the CPUID and MSR
// policies, the ACPI table writer, the Linux loader and the nested page table builder (all
// fuzzed; they see the VM definition's files and the host's choices, not a running guest's
// accesses - except the MSR policy).
pub mod acpi;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod board;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod bus;
pub mod cpuid;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod decode;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod disk;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod exit;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod ioapic;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod lapic;
pub mod linux;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod machine;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod memory;
pub mod msr;
pub mod npt;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod paging;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod pic;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod pit;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod rtc;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod serial;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod vcpu;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod virtio_blk;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod virtqueue;
#[cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
pub mod writeback;

/// The next value of a xorshift32 sequence (the device models' tests drive them with random
/// accesses from it).
#[cfg(test)]
pub(crate) fn xorshift32(x: &mut u32) {
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
}

/// An address in a guest's physical address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestPhysAddr(pub u64);

/// An address in the host's physical address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPhysAddr(pub u64);

impl GuestPhysAddr {
    /// `self + n`, or `None` past the end of the address space.
    pub fn checked_add(self, n: u64) -> Option<GuestPhysAddr> {
        self.0.checked_add(n).map(GuestPhysAddr)
    }
}

impl core::fmt::Display for GuestPhysAddr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GPA {:#x}", self.0)
    }
}
