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

/// AML PkgLength (ACPI 6.5 20.2.4) for a package whose contents after the PkgLength are `len`
/// bytes: the encoded length counts itself.
fn pkg_length(len: usize) -> Vec<u8> {
    if len + 1 < 0x40 {
        vec![(len + 1) as u8]
    } else {
        let total = len + 2; // two-byte form, up to 4095
        vec![0x40 | (total & 0x0f) as u8, (total >> 4) as u8]
    }
}

/// `op PkgLength body`.
fn package(op: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = op.to_vec();
    v.extend(pkg_length(body.len()));
    v.extend_from_slice(body);
    v
}

/// A virtio-mmio device the guest finds in the DSDT (Linux's `LNRO0005` ACPI binding): its MMIO
/// window and its (edge-triggered, active-high) ISA interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    pub base: u32,
    pub len: u32,
    pub irq: u8,
}

/// `Device (VRnn) { Name (_HID, "LNRO0005") Name (_UID, n) Name (_CRS, ResourceTemplate () {
/// Memory32Fixed (ReadWrite, base, len) Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive)
/// { irq } }) }`.
fn virtio_device_aml(n: usize, d: &VirtioMmioDevice) -> Vec<u8> {
    let mut crs = vec![0x86, 0x09, 0x00, 0x01]; // Memory32Fixed, read/write
    crs.extend_from_slice(&d.base.to_le_bytes());
    crs.extend_from_slice(&d.len.to_le_bytes());
    crs.extend_from_slice(&[0x89, 0x06, 0x00, 0x03, 0x01]); // Extended Interrupt: consumer, edge
    crs.extend_from_slice(&(d.irq as u32).to_le_bytes());
    crs.extend_from_slice(&[0x79, 0x00]); // End Tag
    let mut buffer_body = vec![0x0a, crs.len() as u8]; // BufferSize (BytePrefix)
    buffer_body.extend(crs);
    let mut body = alloc::format!("VR{:02X}", n & 0xff).into_bytes();
    body.extend_from_slice(&[0x08, b'_', b'H', b'I', b'D', 0x0d]);
    body.extend_from_slice(b"LNRO0005\0");
    body.extend_from_slice(&[0x08, b'_', b'U', b'I', b'D', 0x0a, n as u8]);
    body.extend_from_slice(&[0x08, b'_', b'C', b'R', b'S']);
    body.extend(package(&[0x11], &buffer_body));
    package(&[0x5b, 0x82], &body)
}

/// The DSDT: `Name (_S5, Package (4) { 5, 5, 0, 0 })` and, in `\_SB`, the virtio-mmio devices.
fn dsdt(virtio: &[VirtioMmioDevice]) -> Vec<u8> {
    let s5 = S5_SLP_TYP as u8;
    // NameOp "_S5_" PackageOp PkgLength(8) NumElements(4) BytePrefix 5 BytePrefix 5 Zero Zero
    let mut aml = vec![0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, s5, 0x0a, s5, 0x00, 0x00];
    if !virtio.is_empty() {
        let mut scope = vec![b'\\', b'_', b'S', b'B', b'_'];
        for (i, d) in virtio.iter().enumerate() {
            scope.extend(virtio_device_aml(i, d));
        }
        aml.extend(package(&[0x10], &scope));
    }
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

/// Where the local APICs and the I/O APIC sit in a VM's physical address space.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;

/// The MADT (ACPI 6.5 5.2.12) for `cpus` vCPUs with APIC IDs 0..cpus: one local APIC each, the
/// I/O APIC (ID `cpus`, GSI 0-23), IRQ 0 on GSI 2 and the SCI (IRQ 9) level-triggered active-high
/// as interrupt source overrides, LINT1 as NMI on every processor, and PC-AT-compatible 8259As.
pub fn madt(cpus: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
    for i in 0..cpus {
        body.extend_from_slice(&[0, 8, i, i, 1, 0, 0, 0]); // Processor Local APIC, enabled
    }
    body.extend_from_slice(&[1, 12, cpus, 0]);
    body.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    for (irq, gsi, flags) in [(0u8, 2u32, 0u16), (9, 9, 0x000d)] {
        body.extend_from_slice(&[2, 10, 0, irq]);
        body.extend_from_slice(&gsi.to_le_bytes());
        body.extend_from_slice(&flags.to_le_bytes());
    }
    body.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]); // Local APIC NMI: all processors, LINT1
    let mut t = table(b"APIC", 36 + body.len(), 5);
    t[36..].copy_from_slice(&body);
    seal(t)
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

/// Writes the tables (for `cpus` vCPUs, listing `virtio` devices) into guest memory; returns the
/// RSDP's address. The MADT follows the DSDT.
pub fn write_tables(
    mem: &mut (impl GuestMemory + ?Sized),
    cpus: u8,
    virtio: &[VirtioMmioDevice],
) -> Result<GuestPhysAddr, OutOfRange> {
    let dsdt = dsdt(virtio);
    let madt = madt(cpus);
    let madt_addr = (DSDT_ADDR + dsdt.len() as u64 + 15) & !15;
    if madt_addr + madt.len() as u64 > 0xf_0000 {
        return Err(OutOfRange {
            addr: GuestPhysAddr(DSDT_ADDR),
            len: madt_addr + madt.len() as u64 - DSDT_ADDR,
        });
    }
    mem.write(GuestPhysAddr(DSDT_ADDR), &dsdt)?;
    mem.write(GuestPhysAddr(madt_addr), &madt)?;
    mem.write(GuestPhysAddr(FACS_ADDR), &facs())?;
    mem.write(GuestPhysAddr(FADT_ADDR), &fadt())?;
    mem.write(GuestPhysAddr(XSDT_ADDR), &xsdt(&[FADT_ADDR, madt_addr]))?;
    mem.write(GuestPhysAddr(RSDP_ADDR), &rsdp())?;
    Ok(GuestPhysAddr(RSDP_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

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
        assert_eq!(write_tables(&mut mem, 2, &[]).unwrap(), GuestPhysAddr(0xe0000));
        let rsdp = read(&mem, RSDP_ADDR, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!((sum(&rsdp[..20]), sum(&rsdp), rsdp[15]), (0, 0, 2));
        let xsdt_at = u64_at(&rsdp, 24);
        let hdr = read(&mem, xsdt_at, 36);
        let xsdt = read(&mem, xsdt_at, u32_at(&hdr, 4) as usize);
        assert_eq!((&xsdt[0..4], sum(&xsdt), xsdt.len()), (&b"XSDT"[..], 0, 52));
        let madt_at = u64_at(&xsdt, 44);
        let madt = read(&mem, madt_at, u32_at(&read(&mem, madt_at, 8), 4) as usize);
        assert_eq!((&madt[0..4], sum(&madt)), (&b"APIC"[..], 0));
        assert_eq!(madt, super::madt(2));
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
        assert_eq!(ember_hw::acpi::s5_sleep_types(&dsdt[36..]), Some((s5, s5)));
    }

    #[test]
    fn tables_need_the_bios_area() {
        let mut mem = GuestRam::new(0xe0000);
        assert!(write_tables(&mut mem, 2, &[]).is_err());
    }

    #[test]
    fn the_madt_lists_the_cpus_the_io_apic_and_the_overrides() {
        let t = madt(4);
        assert_eq!((&t[0..4], sum(&t), u32_at(&t, 4) as usize), (&b"APIC"[..], 0, t.len()));
        assert_eq!((u32_at(&t, 36), u32_at(&t, 40)), (0xfee0_0000, 1));
        let mut at = 44;
        let mut seen = Vec::new();
        while at < t.len() {
            let (kind, len) = (t[at], t[at + 1] as usize);
            assert!(len >= 2 && at + len <= t.len(), "entry at {at} runs past the table");
            seen.push((kind, t[at..at + len].to_vec()));
            at += len;
        }
        let lapics: Vec<_> = seen.iter().filter(|(k, _)| *k == 0).map(|(_, e)| (e[2], e[3], e[4])).collect();
        assert_eq!(lapics, [(0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1)]);
        let io = &seen.iter().find(|(k, _)| *k == 1).unwrap().1;
        assert_eq!((io[2], u32_at(io, 4), u32_at(io, 8)), (4, 0xfec0_0000, 0));
        let isos: Vec<_> = seen
            .iter()
            .filter(|(k, _)| *k == 2)
            .map(|(_, e)| (e[3], u32_at(e, 4), u16::from_le_bytes([e[8], e[9]])))
            .collect();
        assert_eq!(isos, [(0, 2, 0), (9, 9, 0x000d)]);
        assert!(seen.iter().any(|(k, e)| *k == 4 && e[2] == 0xff && e[5] == 1), "LINT1 is NMI");
    }

    #[test]
    fn virtio_devices_are_described_in_the_dsdt() {
        let devs = [
            VirtioMmioDevice { base: 0xd000_0000, len: 0x1000, irq: 5 },
            VirtioMmioDevice { base: 0xd000_1000, len: 0x1000, irq: 10 },
        ];
        let d = dsdt(&devs);
        assert_eq!(sum(&d), 0);
        assert_eq!(u32_at(&d, 4) as usize, d.len());
        let aml = &d[36..];
        // The scope: ScopeOp, a two-byte PkgLength covering the rest, \_SB_.
        let scope = aml.windows(5).position(|w| w == b"\\_SB_").unwrap() - 3;
        assert_eq!(aml[scope], 0x10);
        let (b0, b1) = (aml[scope + 1] as usize, aml[scope + 2] as usize);
        assert_eq!(b0 >> 6, 1, "two-byte PkgLength");
        assert_eq!((b0 & 0x0f) | (b1 << 4), aml.len() - scope - 1);
        assert_eq!(aml.windows(8).filter(|w| w == b"LNRO0005").count(), 2);
        // The resources of the second device: Memory32Fixed at 0xd0001000 and IRQ 10.
        let mem = aml.windows(4).rposition(|w| w == [0x86, 0x09, 0x00, 0x01]).unwrap();
        assert_eq!(u32_at(aml, mem + 4), 0xd000_1000);
        assert_eq!(u32_at(aml, mem + 8), 0x1000);
        assert_eq!(&aml[mem + 12..mem + 17], &[0x89, 0x06, 0x00, 0x03, 0x01]);
        assert_eq!(u32_at(aml, mem + 17), 10);
        assert_eq!(&aml[mem + 21..mem + 23], &[0x79, 0x00]);
        // Device PkgLength: one byte when the device body is short.
        let dev = aml.windows(2).position(|w| w == [0x5b, 0x82]).unwrap();
        assert_eq!(&aml[dev + 3..dev + 7], b"VR00");
        // Still found by the host's \_S5 scan.
        assert_eq!(ember_hw::acpi::s5_sleep_types(aml), Some((5, 5)));
        // Eight devices still fit below the BIOS area's end.
        let eight: Vec<VirtioMmioDevice> = (0..8)
            .map(|i| VirtioMmioDevice { base: 0xd000_0000 + i * 0x1000, len: 0x1000, irq: 5 })
            .collect();
        let mut m = GuestRam::new(1 << 20);
        assert!(write_tables(&mut m, 64, &eight).is_ok());
    }
}
