//! Decoders for what firmware and hardware report: SMBIOS, PCI configuration headers, CPUID strings,
//! ACPI table checksums, USB descriptors.
pub mod acpi;
pub mod cpu;
pub mod pci;
pub mod smbios;
pub mod time;
pub mod usb;
