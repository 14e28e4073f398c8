//! Ember's platform layer: the only crate with `unsafe` code, and the only one that touches hardware.
//!
//! - [`arch::x86_64`]: GDT/IDT and exception entry, paging, the local APIC and timers, SMP start-up,
//!   port and MMIO access, DMA buffers, guest RAM, the heap, power control, and the AMD SVM backend.
//! - [`firmware`]: reading ACPI tables, SMBIOS and PCIe configuration space out of physical memory
//!   (the decoding is the safe code in `ember_hw`).
//! - [`console`]: the serial port and framebuffer consoles, the in-memory log, fatal reports and the
//!   panic handler.
//! - [`boot`]: the UEFI phase - memory map, firmware tables, the framebuffer, `boot.cfg`, the files
//!   on the boot media - up to ExitBootServices and the switch to the kernel stack.
//!
//! Every `unsafe` block carries a `SAFETY:` comment. The crate builds only for
//! `x86_64-unknown-uefi`; on the build host it is empty.
// Empty on the build host: everything here is x86_64-unknown-uefi code.
#![cfg(target_os = "uefi")]
#![no_std]

extern crate alloc;

/// Prints a line to every console (and to the in-memory log).
#[macro_export]
macro_rules! kprintln {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

pub mod arch;
pub mod boot;
pub mod console;
pub mod firmware;
