//! Reading SMBIOS from the address in the UEFI configuration table.

use ember_hw::smbios::{parse_entry_point, system_info, SystemInfo};

/// Longest structure table read (SMBIOS 3 tables give only a maximum length).
const MAX_TABLE: u32 = 64 * 1024;

/// Reads the system identity from the SMBIOS entry point at `entry`.
pub fn read_system_info(entry: u64) -> SystemInfo {
    // SAFETY: the firmware's configuration table points at the entry point structure, which lives in
    // reserved/runtime memory identity mapped during the UEFI phase; 32 bytes covers both forms.
    let ep = unsafe { super::phys_bytes(entry, 32) };
    let loc = match parse_entry_point(ep) {
        Ok(l) => l,
        Err(e) => {
            kprintln!("ember: WARNING: SMBIOS entry point at {entry:#x} is invalid ({e:?})");
            return SystemInfo::default();
        }
    };
    // SAFETY: the validated entry point gives the table's address and (maximum) length; the table is
    // firmware memory that is never written while Ember runs.
    let table = unsafe { super::phys_bytes(loc.address, loc.length.min(MAX_TABLE) as usize) };
    system_info(table)
}
