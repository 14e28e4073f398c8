//! What hardware and firmware report, decoded, and the interfaces drivers implement - the host-tested
//! base every other Ember crate builds on. Decoders for SMBIOS, PCI configuration headers, CPUID
//! strings, ACPI table checksums and the MADT, USB descriptors and the firmware clock; the physical
//! memory map and frame allocator ([`mm`]); CPU exception reports ([`exception`]); serial-terminal
//! and local keyboard decoding ([`keys`], [`keyboard`]); the NIC interface ([`nic`]).
//!
//! Plain logic over bytes and values the platform hands in: no `unsafe`, runs under `cargo test`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod cpu;
pub mod exception;
pub mod keyboard;
pub mod keys;
pub mod mm;
pub mod nic;
pub mod pci;
pub mod smbios;
pub mod time;
pub mod usb;
