//! The hypervisor's host-testable parts (layers 1 and 3): guest-physical addresses and guest memory,
//! nested page tables built from a VM's memory, the Linux boot protocol loader, walking the guest's
//! page tables and decoding the instruction behind an MMIO access, the I/O port and MMIO buses, the
//! guest's CPUID answers and MSRs, vendor-neutral VM exits and their handling (port I/O, MMIO
//! emulation, CPUID, MSRs with #GP for unknown ones, HLT, the exits that end a VM), the device
//! models (the 16550A serial console, the CMOS real-time clock, the 8254 timer, the 8259A PICs)
//! wired into a PC chipset ([`machine`]) with ACPI tables ([`acpi`]), and the vendor-neutral vCPU
//! loop ([`vcpu`]: interrupt delivery and windows, halts, reset and power-off).
//!
//! The runtime that runs VMs on the CPUs - the run queue, the VM lifecycle, the workers - is
//! [`runtime`], generic over a hardware-virtualization [`runtime::Backend`] (AMD SVM is platform
//! code: `ember_platform::arch::x86_64::svm`) and the machine's [`runtime::Platform`]. The virtio block device
//! ([`virtio_blk`], over [`virtqueue`]) is on the VMs' MMIO bus; its requests go to the datastore
//! through [`blkio`]'s queues. The local APIC ([`lapic`]), I/O APIC ([`ioapic`]) and MADT
//! ([`acpi::madt`]) models route SMP guests' interrupts ([`board`]).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

extern crate alloc;

// Guest-controlled paths are total: clippy refuses unwrap/expect/panic, indexing, slicing and
// unchecked arithmetic in every module of `vmm` outside tests - the device models, the buses, exit
// handling, decoding, the page walk, guest memory, the vCPU loop, the disk request queues, the CPUID
// and MSR policies, the ACPI table writer, the Linux loader and the nested page table builder.
pub mod acpi;
pub mod blkio;
pub mod board;
pub mod bus;
pub mod cpuid;
pub mod decode;
pub mod exit;
pub mod ioapic;
pub mod lapic;
pub mod linux;
pub mod machine;
pub mod memory;
pub mod msr;
pub mod npt;
pub mod paging;
pub mod pic;
pub mod pit;
pub mod pvclock;
pub mod pveoi;
pub mod rtc;
pub mod runtime;
pub mod serial;
pub mod vcpu;
pub mod virtio_blk;
pub mod virtio_mmio;
pub mod virtio_net;
pub mod virtqueue;

/// The next value of a xorshift32 sequence (the device models' tests drive them with random
/// accesses from it).
#[cfg(test)]
pub(crate) fn xorshift32(x: &mut u32) {
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
}

/// `m`'s lock, tried at most `tries` times: the management CPU's way to a lock a vCPU's CPU holds
/// briefly - or for good, if that CPU stopped holding it, and the management CPU must go on.
pub(crate) fn try_lock_bounded<T>(m: &spin::Mutex<T>, tries: usize) -> Option<spin::MutexGuard<'_, T>> {
    (0..tries).find_map(|_| {
        let g = m.try_lock();
        if g.is_none() {
            core::hint::spin_loop();
        }
        g
    })
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
