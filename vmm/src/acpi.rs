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

/// The length of the standard table header (signature, length, revision, checksum, OEM IDs,
/// creator).
const HEADER_LEN: usize = 36;
/// The DSDT and the MADT must end here.
const TABLES_END: u64 = 0xf_0000;
/// The most virtio-mmio devices the DSDT names (`VR00` to `VRFF`, each `_UID` a byte).
pub const MAX_VIRTIO_DEVICES: usize = 256;

/// Why the tables were not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcpiError {
    /// The tables do not fit in the guest's RAM or the BIOS area.
    OutOfRange(OutOfRange),
    /// More virtio devices than the DSDT can name ([`MAX_VIRTIO_DEVICES`]).
    TooManyDevices(usize),
    /// An AML object longer than its encoding can state; the text says which.
    TooLong(&'static str),
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AcpiError::OutOfRange(e) => write!(f, "{e}"),
            AcpiError::TooManyDevices(n) => {
                write!(f, "{n} virtio devices, the DSDT describes at most {MAX_VIRTIO_DEVICES}")
            }
            AcpiError::TooLong(what) => write!(f, "{what} is too long to encode in AML"),
        }
    }
}

impl From<OutOfRange> for AcpiError {
    fn from(e: OutOfRange) -> Self {
        AcpiError::OutOfRange(e)
    }
}

/// The value of the checksum field that makes the sum of `bytes` (and itself) zero.
fn checksum<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> u8 {
    0u8.wrapping_sub(bytes.into_iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The standard 36-byte header of a table of `len` bytes, its checksum field zero.
fn header(signature: &[u8; 4], len: u32, revision: u8) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(signature);
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8] = revision;
    h[10..16].copy_from_slice(OEM_ID);
    h[16..24].copy_from_slice(OEM_TABLE_ID);
    h[24..28].copy_from_slice(&1u32.to_le_bytes()); // OEM revision
    h[28..32].copy_from_slice(b"EMBR"); // creator ID
    h[32..36].copy_from_slice(&1u32.to_le_bytes()); // creator revision
    h
}

/// A table: the header, then `body`, the checksum filled in. Table lengths are 32-bit; a body
/// that does not fit saturates the length field, but no such table reaches a guest: every
/// table here is a few KiB, and [`write_tables`] refuses what does not fit the 64 KiB BIOS area.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len().saturating_add(HEADER_LEN)).unwrap_or(u32::MAX);
    let mut h = header(signature, len, revision);
    h[9] = checksum(h.iter().chain(body));
    let mut t = Vec::with_capacity(HEADER_LEN.saturating_add(body.len()));
    t.extend_from_slice(&h);
    t.extend_from_slice(body);
    t
}

/// AML PkgLength (ACPI 6.5 20.2.4) for a package whose contents after the PkgLength are `len`
/// bytes: the encoded length counts itself. One byte up to 63 in all; otherwise a lead byte
/// (the count of following bytes in bits 7-6, the low nibble in bits 3-0) and 1-3 more bytes,
/// up to 2^28 - 1. `None` past that.
fn pkg_length(len: usize) -> Option<Vec<u8>> {
    if let Some(total) = len.checked_add(1).and_then(|t| u8::try_from(t).ok()).filter(|t| *t < 0x40) {
        return Some(vec![total]);
    }
    // (following bytes, PkgLength bytes in all, the largest total the form holds)
    for (following, own, max) in [(1u8, 2usize, 0xfffusize), (2, 3, 0xf_ffff), (3, 4, 0xfff_ffff)] {
        let total = len.checked_add(own)?;
        if total <= max {
            let [low, ..] = total.to_le_bytes();
            let mut v = vec![(following << 6) | (low & 0x0f)];
            v.extend((total >> 4).to_le_bytes().iter().take(usize::from(following)));
            return Some(v);
        }
    }
    None
}

/// `op PkgLength body`; `None` when the body is too long for a PkgLength.
fn package(op: &[u8], body: &[u8]) -> Option<Vec<u8>> {
    let mut v = op.to_vec();
    v.extend(pkg_length(body.len())?);
    v.extend_from_slice(body);
    Some(v)
}

/// A virtio-mmio device the guest finds in the DSDT (Linux's `LNRO0005` ACPI binding): its MMIO
/// window and its ISA interrupt line, level-triggered, active-high and shareable: the line is high
/// while the device's interrupt status is not zero, so work that arrives while the guest's
/// handler runs (a NIC's next frame) asks again at its EOI instead of being lost as an edge that
/// never came, and two devices can share a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    pub base: u32,
    pub len: u32,
    pub irq: u8,
}

/// `Device (VRnn) { Name (_HID, "LNRO0005") Name (_UID, n) Name (_CRS, ResourceTemplate () {
/// Memory32Fixed (ReadWrite, base, len) Interrupt (ResourceConsumer, Level, ActiveHigh, Shared)
/// { irq } }) }`.
fn virtio_device_aml(n: u8, d: &VirtioMmioDevice) -> Result<Vec<u8>, AcpiError> {
    let mut crs = vec![0x86, 0x09, 0x00, 0x01]; // Memory32Fixed, read/write
    crs.extend_from_slice(&d.base.to_le_bytes());
    crs.extend_from_slice(&d.len.to_le_bytes());
    crs.extend_from_slice(&[0x89, 0x06, 0x00, 0x09, 0x01]); // Extended Interrupt: consumer, level, shared
    crs.extend_from_slice(&u32::from(d.irq).to_le_bytes());
    crs.extend_from_slice(&[0x79, 0x00]); // End Tag
    let crs_len = u8::try_from(crs.len()).map_err(|_| AcpiError::TooLong("a device's _CRS buffer"))?;
    let mut buffer_body = vec![0x0a, crs_len]; // BufferSize (BytePrefix)
    buffer_body.extend(crs);
    let mut body = alloc::format!("VR{n:02X}").into_bytes();
    body.extend_from_slice(&[0x08, b'_', b'H', b'I', b'D', 0x0d]);
    body.extend_from_slice(b"LNRO0005\0");
    body.extend_from_slice(&[0x08, b'_', b'U', b'I', b'D', 0x0a, n]);
    body.extend_from_slice(&[0x08, b'_', b'C', b'R', b'S']);
    body.extend(package(&[0x11], &buffer_body).ok_or(AcpiError::TooLong("a device's _CRS buffer"))?);
    package(&[0x5b, 0x82], &body).ok_or(AcpiError::TooLong("a virtio device"))
}

/// The DSDT: `Name (_S5, Package (4) { 5, 5, 0, 0 })` and, in `\_SB`, the virtio-mmio devices
/// (at most [`MAX_VIRTIO_DEVICES`]).
fn dsdt(virtio: &[VirtioMmioDevice]) -> Result<Vec<u8>, AcpiError> {
    if virtio.len() > MAX_VIRTIO_DEVICES {
        return Err(AcpiError::TooManyDevices(virtio.len()));
    }
    // A 3-bit field.
    let s5 = S5_SLP_TYP as u8;
    // NameOp "_S5_" PackageOp PkgLength(8) NumElements(4) BytePrefix 5 BytePrefix 5 Zero Zero
    let mut aml = vec![0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, s5, 0x0a, s5, 0x00, 0x00];
    if !virtio.is_empty() {
        let mut scope = vec![b'\\', b'_', b'S', b'B', b'_'];
        // Device n is VRnn with _UID n: the count was checked, so every device has its number.
        for (d, n) in virtio.iter().zip(0..=u8::MAX) {
            scope.extend(virtio_device_aml(n, d)?);
        }
        aml.extend(package(&[0x10], &scope).ok_or(AcpiError::TooLong("the \\_SB scope"))?);
    }
    Ok(sdt(b"DSDT", 2, &aml))
}

/// The FADT (revision 6, 276 bytes; ACPI 6.5 table 5.9).
fn fadt() -> [u8; 276] {
    const LEN: usize = 276;
    let mut t = [0u8; LEN];
    t[..HEADER_LEN].copy_from_slice(&header(b"FACP", LEN as u32, 6));
    t[131] = 5; // FADT minor version (6.5)
    t[36..40].copy_from_slice(&(FACS_ADDR as u32).to_le_bytes()); // FIRMWARE_CTRL
    t[40..44].copy_from_slice(&(DSDT_ADDR as u32).to_le_bytes()); // DSDT
    t[46..48].copy_from_slice(&9u16.to_le_bytes()); // SCI_INT: IRQ 9
    t[56..60].copy_from_slice(&u32::from(PM1_EVT_PORT).to_le_bytes()); // PM1a_EVT_BLK
    t[64..68].copy_from_slice(&u32::from(PM1_CNT_PORT).to_le_bytes()); // PM1a_CNT_BLK
    t[76..80].copy_from_slice(&u32::from(PM_TMR_PORT).to_le_bytes()); // PM_TMR_BLK
    t[88] = 4; // PM1_EVT_LEN
    t[89] = 2; // PM1_CNT_LEN
    t[91] = 4; // PM_TMR_LEN
               // IAPC_BOOT_ARCH: no 8042, no VGA, no MSI limits (bit 1 clear, bit 2 set = VGA not present).
    t[109..111].copy_from_slice(&(1u16 << 2).to_le_bytes());
    // Flags: WBINVD, PROC_C1, the fixed-feature power button (PWR_BUTTON clear), no sleep
    // button, RESET_REG_SUP.
    t[112..116].copy_from_slice(&(1u32 | (1 << 2) | (1 << 5) | (1 << 10)).to_le_bytes());
    // RESET_REG: system I/O, 8 bits, byte access, port 0xcf9.
    t[116] = 1;
    t[117] = 8;
    t[119] = 1;
    t[120..128].copy_from_slice(&u64::from(RESET_PORT).to_le_bytes());
    t[128] = RESET_VALUE;
    t[132..140].copy_from_slice(&FACS_ADDR.to_le_bytes()); // X_FIRMWARE_CTRL
    t[140..148].copy_from_slice(&DSDT_ADDR.to_le_bytes()); // X_DSDT
    t[9] = checksum(&t);
    t
}

/// The FACS (64 bytes, no checksum).
fn facs() -> [u8; 64] {
    let mut t = [0u8; 64];
    t[0..4].copy_from_slice(b"FACS");
    t[4..8].copy_from_slice(&64u32.to_le_bytes());
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
    sdt(b"APIC", 5, &body)
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    sdt(b"XSDT", 1, &body)
}

/// The RSDP (revision 2, 36 bytes, both checksums).
fn rsdp() -> [u8; 36] {
    let mut r = [0u8; 36];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(OEM_ID);
    r[15] = 2;
    r[20..24].copy_from_slice(&36u32.to_le_bytes());
    r[24..32].copy_from_slice(&XSDT_ADDR.to_le_bytes());
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// Writes the tables (for `cpus` vCPUs, listing `virtio` devices) into guest memory; returns the
/// RSDP's address. The MADT follows the DSDT (16-byte aligned); both must end below 0xf0000.
pub fn write_tables(
    mem: &mut (impl GuestMemory + ?Sized),
    cpus: u8,
    virtio: &[VirtioMmioDevice],
) -> Result<GuestPhysAddr, AcpiError> {
    let dsdt = dsdt(virtio)?;
    let madt = madt(cpus);
    let len = |t: &[u8]| u64::try_from(t.len()).unwrap_or(u64::MAX);
    let madt_addr = DSDT_ADDR.checked_add(len(&dsdt)).and_then(|end| end.checked_next_multiple_of(16));
    let end = madt_addr.and_then(|a| a.checked_add(len(&madt)));
    let Some(madt_addr) = madt_addr.filter(|_| end.is_some_and(|e| e <= TABLES_END)) else {
        let span = end.map_or(u64::MAX, |e| e.saturating_sub(DSDT_ADDR));
        return Err(AcpiError::OutOfRange(OutOfRange { addr: GuestPhysAddr(DSDT_ADDR), len: span }));
    };
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

    /// The DSDT for devices that fit.
    fn dsdt(virtio: &[VirtioMmioDevice]) -> Vec<u8> {
        super::dsdt(virtio).unwrap()
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
        assert_eq!(&aml[mem + 12..mem + 17], &[0x89, 0x06, 0x00, 0x09, 0x01]);
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

    /// A PkgLength's value and its own size in bytes.
    fn decode_pkg_length(b: &[u8]) -> (usize, usize) {
        let follow = (b[0] >> 6) as usize;
        if follow == 0 {
            return ((b[0] & 0x3f) as usize, 1);
        }
        assert_eq!(b[0] & 0x30, 0, "bits 5-4 of a multi-byte PkgLength's lead byte are reserved");
        let mut len = (b[0] & 0x0f) as usize;
        for (k, x) in b[1..=follow].iter().enumerate() {
            len |= (*x as usize) << (4 + 8 * k);
        }
        (len, follow + 1)
    }

    #[test]
    fn pkg_lengths_take_the_form_their_length_needs() {
        for (len, size) in [(0, 1), (62, 1), (63, 2), (4093, 2), (4094, 3), (0xf_fffc, 3), (0xf_fffd, 4)] {
            let enc = pkg_length(len).unwrap();
            assert_eq!(enc.len(), size, "{len}");
            assert_eq!(decode_pkg_length(&enc), (len + size, size), "{len}");
        }
        assert_eq!(pkg_length(0xfff_fffb).map(|e| e.len()), Some(4));
        assert_eq!(pkg_length(0xfff_fffc), None);
        assert_eq!(pkg_length(usize::MAX), None);
    }

    #[test]
    fn a_dsdt_of_many_virtio_devices_has_a_three_byte_scope_length() {
        // 68 devices make the \_SB scope longer than a two-byte PkgLength holds (4095): it used to
        // be truncated into a wrong length.
        for n in [67, 68, 100, MAX_VIRTIO_DEVICES] {
            let devs: Vec<VirtioMmioDevice> = (0..n)
                .map(|i| VirtioMmioDevice { base: 0xd000_0000 + i as u32 * 0x1000, len: 0x1000, irq: 5 })
                .collect();
            let d = dsdt(&devs);
            assert_eq!((sum(&d), u32_at(&d, 4) as usize), (0, d.len()));
            // After \_S5 (14 bytes): ScopeOp, its PkgLength covering the rest, \_SB_.
            let aml = &d[36..];
            assert_eq!(aml[14], 0x10);
            let (len, size) = decode_pkg_length(&aml[15..]);
            assert_eq!((size, len), (if n < 68 { 2 } else { 3 }, aml.len() - 15), "{n} devices");
            assert_eq!(&aml[15 + size..20 + size], b"\\_SB_");
            assert_eq!(aml.windows(8).filter(|w| w == b"LNRO0005").count(), n);
            // Every device has its own name.
            for i in 0..n {
                let name = alloc::format!("VR{i:02X}");
                assert_eq!(aml.windows(4).filter(|w| *w == name.as_bytes()).count(), 1, "{name}");
            }
            assert_eq!(ember_hw::acpi::s5_sleep_types(aml), Some((5, 5)));
            let mut m = GuestRam::new(1 << 20);
            assert!(write_tables(&mut m, 255, &devs).is_ok(), "{n} devices fit the BIOS area");
        }
    }

    #[test]
    fn more_virtio_devices_than_the_dsdt_can_name_are_refused() {
        // Device 256 would have been VR00 (again) with _UID 0.
        let devs = vec![VirtioMmioDevice { base: 0xd000_0000, len: 0x1000, irq: 5 }; MAX_VIRTIO_DEVICES + 1];
        let mut m = GuestRam::new(1 << 20);
        let e = write_tables(&mut m, 1, &devs).unwrap_err();
        assert_eq!(e, AcpiError::TooManyDevices(257));
        assert!(e.to_string().contains("at most 256"), "{e}");
        assert_eq!(read(&m, RSDP_ADDR, 8), [0; 8], "nothing written");
    }
}
