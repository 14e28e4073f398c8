//! The ACPI tables a VM's firmware would give its guest (ACPI 6.5 chapter 5): RSDP, XSDT, FADT
//! (the PM1 event and control blocks and PM timer of [`super::machine`], SCI on IRQ 9, a reset
//! register at port 0xcf9, no 8042 and no VGA declared), FACS, and a DSDT whose only object is the
//! `\_S5` sleep package, so a guest can power itself off.
//!
//! They sit in the legacy BIOS area (below 1 MiB, reserved in the e820 map) at [`RSDP_ADDR`], where
//! guests that scan for the RSDP find it; Linux is also told its address in the zero page.

use super::machine::{PM1_CNT_PORT, PM1_EVT_PORT, PM_TMR_PORT, S5_SLP_TYP};
use super::memory::{GuestMemory, OutOfRange};
use super::GuestPhysAddr;
use alloc::vec;
use alloc::vec::Vec;

/// Where the RSDP goes (16-byte aligned, in the BIOS read-only area 0xe0000-0xfffff).
pub const RSDP_ADDR: u64 = 0xe_0000;
const XSDT_ADDR: u64 = RSDP_ADDR + 0x40;
const FADT_ADDR: u64 = RSDP_ADDR + 0x100;
const FACS_ADDR: u64 = RSDP_ADDR + 0x240;
const DSDT_ADDR: u64 = RSDP_ADDR + 0x300;
/// The port and value of the FADT's reset register (the PC's reset control register).
pub const RESET_PORT: u16 = 0xcf9;
pub const RESET_VALUE: u8 = 0x06;
const OEM_ID: &[u8; 6] = b"EMBER ";
const OEM_TABLE_ID: &[u8; 8] = b"EMBERVM ";

/// The sum of `bytes`, as the checksum field must make it zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A table of `len` bytes with the standard 36-byte header filled in (checksum last).
fn table(signature: &[u8; 4], len: usize, revision: u8) -> Vec<u8> {
    let mut t = vec![0u8; len];
    t[0..4].copy_from_slice(signature);
    t[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    t[8] = revision;
    t[10..16].copy_from_slice(OEM_ID);
    t[16..24].copy_from_slice(OEM_TABLE_ID);
    t[24..28].copy_from_slice(&1u32.to_le_bytes()); // OEM revision
    t[28..32].copy_from_slice(b"EMBR"); // creator ID
    t[32..36].copy_from_slice(&1u32.to_le_bytes()); // creator revision
    t
}

fn seal(mut t: Vec<u8>) -> Vec<u8> {
    t[9] = 0;
    t[9] = checksum(&t);
    t
}

fn put32(t: &mut [u8], at: usize, v: u32) {
    t[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(t: &mut [u8], at: usize, v: u64) {
    t[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The DSDT: `Name (_S5, Package (4) { 5, 5, 0, 0 })`.
fn dsdt() -> Vec<u8> {
    let s5 = S5_SLP_TYP as u8;
    // NameOp "_S5_" PackageOp PkgLength(8) NumElements(4) BytePrefix 5 BytePrefix 5 Zero Zero
    let aml = [0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, s5, 0x0a, s5, 0x00, 0x00];
    let mut t = table(b"DSDT", 36 + aml.len(), 2);
    t[36..].copy_from_slice(&aml);
    seal(t)
}

/// The FADT (revision 6, 276 bytes; ACPI 6.5 table 5.9).
fn fadt() -> Vec<u8> {
    let mut t = table(b"FACP", 276, 6);
    t[131] = 5; // FADT minor version (6.5)
    put32(&mut t, 36, FACS_ADDR as u32); // FIRMWARE_CTRL
    put32(&mut t, 40, DSDT_ADDR as u32); // DSDT
    t[46..48].copy_from_slice(&9u16.to_le_bytes()); // SCI_INT: IRQ 9
    put32(&mut t, 56, PM1_EVT_PORT as u32); // PM1a_EVT_BLK
    put32(&mut t, 64, PM1_CNT_PORT as u32); // PM1a_CNT_BLK
    put32(&mut t, 76, PM_TMR_PORT as u32); // PM_TMR_BLK
    t[88] = 4; // PM1_EVT_LEN
    t[89] = 2; // PM1_CNT_LEN
    t[91] = 4; // PM_TMR_LEN
               // IAPC_BOOT_ARCH: no 8042, no VGA, no MSI limits (bit 1 clear, bit 2 set = VGA not present).
    t[109..111].copy_from_slice(&(1u16 << 2).to_le_bytes());
    // Flags: WBINVD, PROC_C1, no fixed power/sleep buttons, RESET_REG_SUP.
    put32(&mut t, 112, 1 | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 10));
    // RESET_REG: system I/O, 8 bits, byte access, port 0xcf9.
    t[116] = 1;
    t[117] = 8;
    t[119] = 1;
    put64(&mut t, 120, RESET_PORT as u64);
    t[128] = RESET_VALUE;
    put64(&mut t, 132, FACS_ADDR); // X_FIRMWARE_CTRL
    put64(&mut t, 140, DSDT_ADDR); // X_DSDT
    seal(t)
}

/// The FACS (64 bytes, no checksum).
fn facs() -> Vec<u8> {
    let mut t = vec![0u8; 64];
    t[0..4].copy_from_slice(b"FACS");
    put32(&mut t, 4, 64);
    t[32] = 2; // version
    t
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut t = table(b"XSDT", 36 + 8 * entries.len(), 1);
    for (i, e) in entries.iter().enumerate() {
        put64(&mut t, 36 + 8 * i, *e);
    }
    seal(t)
}

/// The RSDP (revision 2, 36 bytes, both checksums).
fn rsdp() -> Vec<u8> {
    let mut r = vec![0u8; 36];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(OEM_ID);
    r[15] = 2;
    put32(&mut r, 20, 36);
    put64(&mut r, 24, XSDT_ADDR);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// Writes the tables into guest memory; returns the RSDP's address.
pub fn write_tables(mem: &mut impl GuestMemory) -> Result<GuestPhysAddr, OutOfRange> {
    mem.write(GuestPhysAddr(DSDT_ADDR), &dsdt())?;
    mem.write(GuestPhysAddr(FACS_ADDR), &facs())?;
    mem.write(GuestPhysAddr(FADT_ADDR), &fadt())?;
    mem.write(GuestPhysAddr(XSDT_ADDR), &xsdt(&[FADT_ADDR]))?;
    mem.write(GuestPhysAddr(RSDP_ADDR), &rsdp())?;
    Ok(GuestPhysAddr(RSDP_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory::GuestRam;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn read(mem: &GuestRam, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        mem.read(GuestPhysAddr(at), &mut b).unwrap();
        b
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn the_tables_chain_from_the_rsdp_with_valid_checksums() {
        let mut mem = GuestRam::new(1 << 20);
        assert_eq!(write_tables(&mut mem).unwrap(), GuestPhysAddr(0xe0000));
        let rsdp = read(&mem, RSDP_ADDR, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!((sum(&rsdp[..20]), sum(&rsdp), rsdp[15]), (0, 0, 2));
        let xsdt_at = u64_at(&rsdp, 24);
        let hdr = read(&mem, xsdt_at, 36);
        let xsdt = read(&mem, xsdt_at, u32_at(&hdr, 4) as usize);
        assert_eq!((&xsdt[0..4], sum(&xsdt), xsdt.len()), (&b"XSDT"[..], 0, 44));
        let fadt = read(&mem, u64_at(&xsdt, 36), 276);
        assert_eq!((&fadt[0..4], sum(&fadt), fadt[8]), (&b"FACP"[..], 0, 6));
        assert_eq!(u32_at(&fadt, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(u32_at(&fadt, 76), 0x608, "PM_TMR_BLK");
        assert_eq!((fadt[116], u64_at(&fadt, 120), fadt[128]), (1, 0xcf9, 6), "reset register");
        let facs = read(&mem, u64_at(&fadt, 132), 64);
        assert_eq!(&facs[0..4], b"FACS");
        let dsdt_at = u64_at(&fadt, 140);
        assert_eq!(dsdt_at, u32_at(&fadt, 40) as u64);
        let dsdt = read(&mem, dsdt_at, u32_at(&read(&mem, dsdt_at, 8), 4) as usize);
        assert_eq!((&dsdt[0..4], sum(&dsdt)), (&b"DSDT"[..], 0));
        // The host's own \_S5 scanner (dcui) reads the same sleep type back.
        let s5 = S5_SLP_TYP as u8;
        assert_eq!(crate::hw::acpi::s5_sleep_types(&dsdt[36..]), Some((s5, s5)));
    }

    #[test]
    fn tables_need_the_bios_area() {
        let mut mem = GuestRam::new(0xe0000);
        assert!(write_tables(&mut mem).is_err());
    }
}
