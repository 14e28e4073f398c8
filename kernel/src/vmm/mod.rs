//! The hypervisor's host-testable parts (layers 1 and 3): guest-physical addresses and guest memory,
//! nested page tables built from a VM's memory, the Linux boot protocol loader, decoding of the
//! instruction behind an MMIO access, and the first device model (the 16550A serial console).
//!
//! Not here yet (later increments of the hypervisor work): the vCPU trait and its SVM backend (VMCB,
//! VMRUN loop, intercepts - platform code in the appliance binary), the guest page walk that
//! fetches the instruction bytes, the other device models, the scheduler and VM lifecycle. Nothing in the appliance runs a guest yet.

pub mod decode;
pub mod linux;
pub mod memory;
pub mod npt;
pub mod serial;

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
