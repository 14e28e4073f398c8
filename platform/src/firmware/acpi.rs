//! ACPI tables: FADT (reset register), HPET and MCFG through the `acpi` crate; the MADT (CPUs, local
//! APIC address) through Ember's own bounded decoder; and a checksum-validated lookup of any table by
//! signature (for tables the crate does not know, such as the iBFT).

use super::phys_bytes;
use crate::arch::x86_64::paging;
use acpi::fadt::Fadt;
use acpi::mcfg::Mcfg;
use acpi::{AcpiHandler, AcpiTables, HpetInfo, PhysicalMapping};
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use ember_hw::acpi::{parse_madt, sdt_length, validate_sdt};

/// Physical memory is identity mapped, so "mapping" a region is taking its address.
#[derive(Clone, Copy, Debug)]
struct IdentityHandler;

impl AcpiHandler for IdentityHandler {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let ptr = NonNull::new(physical_address as *mut T).expect("ACPI table at physical address 0");
        // SAFETY: all physical memory up to the mapped limit is identity mapped; the acpi crate asks only
        // for regions the firmware's tables point at.
        unsafe { PhysicalMapping::new(physical_address, ptr, size, size, *self) }
    }
    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// One processor from the MADT.
#[derive(Debug, Clone, Copy)]
pub struct CpuEntry {
    pub apic_id: u32,
    /// Enabled at boot (flag bit 0); online-capable-only entries are hot-plug slots.
    pub enabled: bool,
}

/// The FADT reset register, reduced to the address spaces Ember writes.
#[derive(Debug, Clone, Copy)]
pub enum ResetRegister {
    Io { port: u16, value: u8 },
    Memory { address: u64, value: u8 },
}

/// How to enter S5 (soft off): the PM1 control ports and the sleep types from the DSDT's `\_S5`.
#[derive(Debug, Clone, Copy)]
pub struct PowerOff {
    pub pm1a: u16,
    pub pm1b: Option<u16>,
    pub slp_typ_a: u8,
    pub slp_typ_b: u8,
}

/// A PCIe enhanced configuration window.
#[derive(Debug, Clone, Copy)]
pub struct EcamRegion {
    pub base: u64,
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
}

/// What the kernel uses from ACPI.
#[derive(Debug, Default)]
pub struct AcpiInfo {
    pub cpus: Vec<CpuEntry>,
    pub lapic_address: Option<u64>,
    pub ecam: Vec<EcamRegion>,
    pub reset: Option<ResetRegister>,
    pub poweroff: Option<PowerOff>,
    pub hpet: Option<u64>,
}

static RSDP: AtomicU64 = AtomicU64::new(0);

/// Reads the tables the kernel needs and logs what it found.
pub fn read_tables(rsdp: u64) -> AcpiInfo {
    RSDP.store(rsdp, Ordering::Relaxed);
    let mut info = AcpiInfo::default();
    let mut names = String::new();
    let listed = all_tables();
    for (sig, _) in &listed {
        names.push_str(core::str::from_utf8(sig).unwrap_or("????"));
        names.push(' ');
    }
    kprintln!("ember: ACPI tables: {}", names.trim_end());

    // SAFETY: the RSDP address comes from the UEFI configuration table and the handler identity maps.
    let tables = match unsafe { AcpiTables::from_rsdp(IdentityHandler, rsdp as usize) } {
        Ok(t) => t,
        Err(e) => {
            kprintln!("ember: WARNING: ACPI tables unusable ({e:?}); running on one CPU");
            return info;
        }
    };

    // The MADT is decoded by ember_kernel's bounded parser: the acpi crate's entry iterator trusts
    // entry lengths (a zero length loops, an oversized one reads past the table).
    match table_in(&listed, b"APIC").map(parse_madt) {
        Some(Ok(madt)) => {
            info.lapic_address = Some(madt.local_apic_address);
            info.cpus = madt.cpus.iter().map(|&(apic_id, enabled)| CpuEntry { apic_id, enabled }).collect();
            for (id, addr, gsi) in &madt.io_apics {
                kprintln!("ember: I/O APIC {id} at {addr:#x}, GSI base {gsi}");
            }
            kprintln!(
                "ember: MADT: {} CPUs ({} enabled), local APIC at {:#x}",
                info.cpus.len(),
                info.cpus.iter().filter(|c| c.enabled).count(),
                madt.local_apic_address
            );
        }
        Some(Err(e)) => kprintln!("ember: WARNING: the MADT is invalid ({e:?}); running on one CPU"),
        None => kprintln!("ember: WARNING: no MADT; running on one CPU"),
    }

    match tables.find_table::<Fadt>() {
        Ok(fadt) => {
            let flags = fadt.flags;
            let supported = flags.supports_system_reset_via_fadt();
            let value = fadt.reset_value;
            info.reset = match fadt.reset_register() {
                Ok(r) if supported && r.address != 0 => match r.address_space {
                    acpi::address::AddressSpace::SystemIo if r.address <= 0xffff => {
                        Some(ResetRegister::Io { port: r.address as u16, value })
                    }
                    acpi::address::AddressSpace::SystemMemory if r.address < paging::mapped_limit() => {
                        Some(ResetRegister::Memory { address: r.address, value })
                    }
                    _ => None,
                },
                _ => None,
            };
            match info.reset {
                Some(r) => kprintln!("ember: FADT reset register: {r:?}"),
                None => kprintln!("ember: FADT has no usable reset register; will use 0xCF9 / 8042"),
            }
            let io_port = |g: acpi::address::GenericAddress| match g.address_space {
                acpi::address::AddressSpace::SystemIo if g.address != 0 && g.address <= 0xffff => {
                    Some(g.address as u16)
                }
                _ => None,
            };
            let pm1a = fadt.pm1a_control_block().ok().and_then(io_port);
            let pm1b = fadt.pm1b_control_block().ok().flatten().and_then(io_port);
            let s5 = fadt
                .dsdt_address()
                .ok()
                .and_then(|a| read_table(a as u64))
                .and_then(ember_hw::acpi::s5_sleep_types);
            info.poweroff = match (pm1a, s5) {
                (Some(pm1a), Some((a, b))) => Some(PowerOff { pm1a, pm1b, slp_typ_a: a, slp_typ_b: b }),
                _ => None,
            };
            match info.poweroff {
                Some(p) => kprintln!(
                    "ember: ACPI S5 (power off): PM1a control {:#x}, SLP_TYP {}",
                    p.pm1a,
                    p.slp_typ_a
                ),
                None => {
                    kprintln!("ember: WARNING: no ACPI S5 information: Shut Down will halt the CPUs instead")
                }
            }
        }
        Err(e) => kprintln!("ember: WARNING: no FADT ({e:?})"),
    }

    match HpetInfo::new(&tables) {
        Ok(h) => {
            info.hpet = Some(h.base_address as u64);
            kprintln!("ember: HPET at {:#x}, {} comparators", h.base_address, h.num_comparators());
        }
        Err(_) => kprintln!("ember: no HPET"),
    }

    if let Ok(mcfg) = tables.find_table::<Mcfg>() {
        for e in mcfg.entries() {
            let (base, segment, bus_start, bus_end) =
                (e.base_address, e.pci_segment_group, e.bus_number_start, e.bus_number_end);
            kprintln!("ember: MCFG: segment {segment} buses {bus_start}-{bus_end} at {base:#x}");
            info.ecam.push(EcamRegion { base, segment, bus_start, bus_end });
        }
    } else {
        kprintln!("ember: no MCFG: PCIe enumeration skipped");
    }
    info
}

/// Every table listed by the XSDT (or RSDT), as (signature, physical address), checksum-valid only.
pub fn all_tables() -> Vec<([u8; 4], u64)> {
    let mut out = Vec::new();
    let rsdp = RSDP.load(Ordering::Relaxed);
    if rsdp == 0 {
        return out;
    }
    // SAFETY: the RSDP (36 bytes for revision 2) lives in firmware memory, identity mapped.
    let r = unsafe { phys_bytes(rsdp, 36) };
    let (root, entry_size) = if r[15] >= 2 {
        (u64::from_le_bytes(r[24..32].try_into().unwrap_or([0; 8])), 8)
    } else {
        (u32::from_le_bytes(r[16..20].try_into().unwrap_or([0; 4])) as u64, 4)
    };
    let Some(root_table) = read_table(root) else { return out };
    for chunk in root_table[36..].chunks_exact(entry_size) {
        let addr = if entry_size == 8 {
            u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]))
        } else {
            u32::from_le_bytes(chunk.try_into().unwrap_or([0; 4])) as u64
        };
        if let Some(t) = read_table(addr) {
            out.push(([t[0], t[1], t[2], t[3]], addr));
        }
    }
    out
}

/// The bytes of the first valid table with `signature` (the MADT now; the iBFT for iSCSI boot later).
pub fn find_table(signature: &[u8; 4]) -> Option<&'static [u8]> {
    table_in(&all_tables(), signature)
}

/// The bytes of the first valid table with `signature` in a list made by [`all_tables`].
fn table_in(list: &[([u8; 4], u64)], signature: &[u8; 4]) -> Option<&'static [u8]> {
    list.iter().find(|(s, _)| s == signature).and_then(|&(_, a)| read_table(a))
}

/// A whole table at `addr` if it is inside the identity map, at most 1 MiB and its checksum holds.
fn read_table(addr: u64) -> Option<&'static [u8]> {
    let limit = paging::mapped_limit();
    if addr == 0 || addr.checked_add(36)? > limit {
        return None;
    }
    // SAFETY: the 36-byte header is inside the identity map (checked above) in firmware memory.
    let header = unsafe { phys_bytes(addr, 36) };
    let len = sdt_length(header)? as u64;
    if !(36..=1 << 20).contains(&len) || addr.checked_add(len)? > limit {
        return None;
    }
    // SAFETY: the whole table is inside the identity map (checked above) in firmware memory.
    let bytes = unsafe { phys_bytes(addr, len as usize) };
    validate_sdt(bytes).ok().map(|_| bytes)
}
