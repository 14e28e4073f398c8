//! The Ember appliance binary (layer 5 wiring, plus the layer 4 platform modules).
//!
//! Boot flow (ARCHITECTURE.md "Boot flow"): the UEFI phase (`boot`) gathers the memory map, ACPI RSDP,
//! SMBIOS, the GOP framebuffer and `\EFI\ember\boot.cfg`, then exits boot services and switches to the
//! kernel stack. The kernel phase (`kernel_main`) installs its own GDT/IDT/page tables, the frame
//! allocator, reads ACPI, calibrates the timers, starts every CPU in the MADT, enumerates PCIe, binds
//! the NIC drivers, prints the boot line, starts the management network (`ember-net`) and runs the
//! management loop: console input, network polling, the DCUI idle screen.
//!
//! `unsafe` lives only in `arch`, `console::fb`, `firmware` and the allocator set-up here; every block
//! says why it holds. `drivers` forbids it: drivers use the platform's MMIO windows and DMA buffers.
#![cfg_attr(target_os = "uefi", no_std)]
#![cfg_attr(target_os = "uefi", no_main)]

#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!("the Ember appliance builds only for x86_64-unknown-uefi (see scripts/build-kernel)");
}

#[cfg(target_os = "uefi")]
extern crate alloc;

/// Prints a line to every console.
#[cfg(target_os = "uefi")]
macro_rules! kprintln {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

#[cfg(target_os = "uefi")]
mod arch;
#[cfg(target_os = "uefi")]
mod boot;
#[cfg(target_os = "uefi")]
mod console;
// Drivers reach hardware only through the platform's MMIO windows, DMA buffers and PCI accessors.
#[cfg(target_os = "uefi")]
#[forbid(unsafe_code)]
mod drivers;
#[cfg(target_os = "uefi")]
mod firmware;
#[cfg(target_os = "uefi")]
mod kmain;
// The hypervisor runtime: safe code over the platform's SVM, guest RAM and timer modules.
#[cfg(target_os = "uefi")]
#[forbid(unsafe_code)]
mod vmhost;
