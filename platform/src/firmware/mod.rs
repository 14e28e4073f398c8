//! Firmware tables (platform layer): ACPI through the `acpi` crate, SMBIOS, PCIe configuration space.
//! Reading firmware memory is `unsafe`; the decoding is the safe code in `ember_hw`.
pub mod acpi;
pub mod pcie;
pub mod smbios;

/// A byte slice over identity-mapped physical memory.
///
/// # Safety
/// `[phys, phys + len)` must be identity mapped, readable memory (firmware tables in RAM or reserved
/// memory) that is not written while the slice lives.
pub unsafe fn phys_bytes(phys: u64, len: usize) -> &'static [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { core::slice::from_raw_parts(phys as *const u8, len) }
}
