//! Loading an unmodified Linux bzImage the way Firecracker does: the 64-bit boot protocol (Linux
//! `Documentation/arch/x86/boot.rst`, "64-bit Boot Protocol"; protocol 2.12 or later). The setup
//! header is checked, the protected-mode kernel is copied to its `code32_start`, a zero page
//! (`struct boot_params`) gets the header, an e820 map, the command line and the initrd, and the
//! guest gets identity-mapped page tables and a GDT, so a vCPU can start in 64-bit mode at the
//! kernel's 64-bit entry (`code32_start + 0x200`) with RSI pointing at the zero page.
//!
//! Guest-physical layout: GDT at 0x500, zero page at 0x7000, page tables at 0x9000-0xefff (the
//! first 4 GiB with 2 MiB pages), command line at 0x20000, the kernel at `code32_start`
//! (0x100000), the initrd at the top of RAM below `initrd_addr_max`. RAM is one range from 0;
//! 0xa0000-0xfffff is reserved (legacy VGA and BIOS area) and RAM ends below the 3 GiB MMIO window.

use super::memory::GuestMemory;
use super::GuestPhysAddr;
use alloc::format;
use alloc::string::String;

/// Setup header fields (boot.rst, "The Real-Mode Kernel Header"), as offsets in the image and in
/// the zero page.
mod field {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const JUMP_END: usize = 0x201;
    /// The short jump at 0x200 lands at 0x202 plus its offset byte ([`JUMP_END`]): the end of
    /// the setup header.
    pub const JUMP_BASE: usize = 0x202;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const INIT_SIZE: usize = 0x260;
    /// Zero page (`struct boot_params`, zero-page.rst).
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const E820_TABLE: usize = 0x2d0;
}

const HDRS: u32 = 0x5372_6448; // "HdrS"
const LOADED_HIGH: u8 = 1 << 0;
const CAN_USE_HEAP: u8 = 1 << 7;
const XLF_KERNEL_64: u16 = 1 << 0;
/// The first protocol with `xloadflags` (and so a declared 64-bit entry).
const MIN_VERSION: u16 = 0x020c;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

pub const GDT: GuestPhysAddr = GuestPhysAddr(0x500);
pub const ZERO_PAGE: GuestPhysAddr = GuestPhysAddr(0x7000);
pub const PML4: GuestPhysAddr = GuestPhysAddr(0x9000);
pub const CMDLINE: GuestPhysAddr = GuestPhysAddr(0x2_0000);
const CMDLINE_MAX: u64 = 0x1_0000;
/// Legacy VGA and BIOS area: not RAM in the e820 map.
const LEGACY_START: u64 = 0x9_fc00;
const HIGH_RAM: u64 = 0x10_0000;
/// Guest RAM must end here: above is the MMIO window (device models, LAPIC, I/O APIC).
pub const MMIO_START: u64 = 0xc000_0000;
/// Selectors of the boot GDT (boot.rst: `__BOOT_CS` 0x10, `__BOOT_DS` 0x18).
pub const CODE_SELECTOR: u16 = 0x10;
pub const DATA_SELECTOR: u16 = 0x18;

/// What was wrong with the image or the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// Not a bzImage this loader can start; the text says which field.
    BadImage(String),
    /// The command line is too long or has a NUL byte.
    BadCmdline(String),
    /// Kernel, initrd and tables do not fit the guest's RAM.
    TooBig(String),
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::BadImage(w) => write!(f, "kernel image: {w}"),
            LoadError::BadCmdline(w) => write!(f, "command line: {w}"),
            LoadError::TooBig(w) => write!(f, "guest memory: {w}"),
        }
    }
}

/// A checked bzImage.
#[derive(Debug, Clone, Copy)]
pub struct BzImage<'a> {
    /// The setup header, from 0x1f1 to its declared end.
    header: &'a [u8],
    /// The protected-mode kernel: what follows the setup code (the first
    /// `(setup_sects + 1) * 512` bytes).
    kernel: &'a [u8],
    pub version: u16,
    pub code32_start: u32,
    pub init_size: u32,
    pub cmdline_size: u32,
    pub initrd_addr_max: u32,
}

/// The `N` bytes at `at`, if `b` has them.
fn bytes_at<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..)?.first_chunk().copied()
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    bytes_at(b, at).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    bytes_at(b, at).map(u32::from_le_bytes)
}

/// A length as a guest-physical quantity (`usize` is at most 64 bits; saturating otherwise, which
/// only makes the length too big for any check it is put to).
fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl<'a> BzImage<'a> {
    pub fn parse(image: &'a [u8]) -> Result<Self, LoadError> {
        let bad = |w: String| Err(LoadError::BadImage(w));
        let short = || LoadError::BadImage(format!("{} bytes is too short for a setup header", image.len()));
        if image.len() < 1024 {
            return Err(short());
        }
        // Every field is in the first KiB, which is there.
        let u8_field = |at: usize| image.get(at).copied().ok_or_else(short);
        let u16_field = |at: usize| u16_at(image, at).ok_or_else(short);
        let u32_field = |at: usize| u32_at(image, at).ok_or_else(short);
        if u16_field(field::BOOT_FLAG)? != 0xaa55 || u32_field(field::HEADER)? != HDRS {
            return bad(String::from("no Linux setup header (boot flag 0xaa55 and \"HdrS\" missing)"));
        }
        let version = u16_field(field::VERSION)?;
        if version < MIN_VERSION {
            return bad(format!(
                "boot protocol {}.{:02} is older than 2.12 (no 64-bit entry declared)",
                version >> 8,
                version & 0xff
            ));
        }
        if u16_field(field::XLOADFLAGS)? & XLF_KERNEL_64 == 0 {
            return bad(String::from("xloadflags: not a 64-bit kernel (XLF_KERNEL_64 unset)"));
        }
        if u8_field(field::LOADFLAGS)? & LOADED_HIGH == 0 {
            return bad(String::from("loadflags: a zImage (LOADED_HIGH unset), not a bzImage"));
        }
        let sects = match u8_field(field::SETUP_SECTS)? {
            0 => 4,
            n => usize::from(n),
        };
        let setup_len = sects.checked_add(1).and_then(|s| s.checked_mul(512));
        let (setup, kernel) = match setup_len.and_then(|l| image.split_at_checked(l)) {
            Some((setup, kernel)) if !kernel.is_empty() => (setup, kernel),
            _ => return bad(format!("setup_sects {sects}: the setup code runs past the end of the image")),
        };
        // At most 0x202 + 0xff: never saturates.
        let header_end = field::JUMP_BASE.saturating_add(usize::from(u8_field(field::JUMP_END)?));
        let header = setup.get(field::SETUP_SECTS..header_end);
        let Some(header) = header.filter(|_| header_end >= field::INIT_SIZE + 4) else {
            return bad(format!("the setup header length ({header_end:#x}) is implausible"));
        };
        let code32_start = u32_field(field::CODE32_START)?;
        if u64::from(code32_start) < HIGH_RAM {
            return bad(format!("code32_start {code32_start:#x} is below 1 MiB"));
        }
        Ok(BzImage {
            header,
            kernel,
            version,
            code32_start,
            init_size: u32_field(field::INIT_SIZE)?,
            cmdline_size: u32_field(field::CMDLINE_SIZE)?,
            initrd_addr_max: u32_field(field::INITRD_ADDR_MAX)?,
        })
    }

    /// The protected-mode kernel (what follows the setup code).
    pub fn kernel(&self) -> &'a [u8] {
        self.kernel
    }

    /// The setup header bytes, from 0x1f1 to its declared end.
    fn header(&self) -> &'a [u8] {
        self.header
    }
}

/// Where and how a vCPU enters the loaded kernel (64-bit mode, paging on, interrupts off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxEntry {
    pub rip: u64,
    /// RSI: the zero page.
    pub rsi: u64,
    pub cr3: u64,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    /// Where the initrd went (address, size), if there is one.
    pub initrd: Option<(u64, u64)>,
}

fn oom(e: super::memory::OutOfRange) -> LoadError {
    LoadError::TooBig(format!("{e}"))
}

/// Copies `bytes` into the zero page at `at`. Every offset is a zero-page field and the longest
/// copy, the image's setup header, ends by 0x301; one that did not fit is refused, not truncated.
fn put(zp: &mut [u8; 4096], at: usize, bytes: &[u8]) -> Result<(), LoadError> {
    let field = zp.get_mut(at..).and_then(|z| z.get_mut(..bytes.len()));
    let Some(field) = field else {
        return Err(LoadError::BadImage(format!("{} bytes at {at:#x} run past the zero page", bytes.len())));
    };
    field.copy_from_slice(bytes);
    Ok(())
}

/// Loads `image` with `initrd` and `cmdline` into `mem` (zeroed RAM); returns the entry state.
pub fn load(
    mem: &mut (impl GuestMemory + ?Sized),
    image: &BzImage<'_>,
    initrd: Option<&[u8]>,
    cmdline: &str,
) -> Result<LinuxEntry, LoadError> {
    let ram = mem.size();
    if ram > MMIO_START {
        return Err(LoadError::TooBig(format!(
            "{} MiB of RAM: at most {} MiB below the MMIO window",
            ram >> 20,
            MMIO_START >> 20
        )));
    }
    // The command line: NUL-terminated, within the kernel's limit and the area reserved for it.
    let limit = u64::from(image.cmdline_size).min(CMDLINE_MAX - 1);
    if len64(cmdline.len()) > limit {
        return Err(LoadError::BadCmdline(format!(
            "{} bytes, the kernel takes at most {limit}",
            cmdline.len()
        )));
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(LoadError::BadCmdline(String::from("contains a NUL byte")));
    }
    // The kernel needs init_size bytes from its load address (decompression happens in place).
    let load = u64::from(image.code32_start);
    let kernel = image.kernel();
    let kernel_size = u64::from(image.init_size).max(len64(kernel.len()));
    let kernel_end = load.checked_add(kernel_size);
    let Some(kernel_end) = kernel_end.filter(|end| *end <= ram) else {
        let needs = kernel_end.map_or_else(
            || format!("{kernel_size:#x} bytes from {load:#x}"),
            |end| format!("{load:#x}..{end:#x}"),
        );
        return Err(LoadError::TooBig(format!("the kernel needs {needs}, RAM ends at {ram:#x}")));
    };
    // The initrd: page aligned at the top of RAM, below initrd_addr_max, above the kernel.
    let initrd_at = match initrd {
        None => None,
        Some(rd) => {
            // initrd_addr_max is the last byte the initrd may use; the sum is at most 2^32.
            let top = ram.min(u64::from(image.initrd_addr_max).saturating_add(1));
            let at = top.checked_sub(len64(rd.len())).map(|a| a & !0xfff);
            match at {
                Some(at) if at >= kernel_end => Some((at, rd)),
                _ => {
                    return Err(LoadError::TooBig(format!(
                    "an initrd of {} bytes does not fit between the kernel ({kernel_end:#x}) and {top:#x}",
                    rd.len()
                )))
                }
            }
        }
    };
    // The 64-bit entry point, 0x200 into the kernel (below 4 GiB + 0x200: never overflows).
    let rip = load.checked_add(0x200).ok_or_else(|| {
        LoadError::BadImage(format!("code32_start {load:#x}: no room for the 64-bit entry"))
    })?;
    // What the zero page says of the initrd: 32-bit fields, which hold anything below the MMIO
    // window (RAM ends there, and the initrd is in RAM).
    let (rd_at, rd_len) = initrd_at.map_or((0, 0), |(a, rd)| (a, len64(rd.len())));
    let (Ok(rd_at32), Ok(rd_len32)) = (u32::try_from(rd_at), u32::try_from(rd_len)) else {
        return Err(LoadError::TooBig(format!(
            "an initrd of {rd_len} bytes at {rd_at:#x} is beyond the boot protocol's 4 GiB"
        )));
    };
    // RAM above 1 MiB: there is some, as the kernel is loaded there.
    let high_ram = ram
        .checked_sub(HIGH_RAM)
        .ok_or_else(|| LoadError::TooBig(format!("RAM ends at {ram:#x}, below 1 MiB")))?;

    mem.write(GuestPhysAddr(load), kernel).map_err(oom)?;
    if let Some((at, rd)) = initrd_at {
        mem.write(GuestPhysAddr(at), rd).map_err(oom)?;
    }
    let mut line = alloc::vec::Vec::from(cmdline.as_bytes());
    line.push(0);
    mem.write(CMDLINE, &line).map_err(oom)?;

    // The zero page: the image's setup header, then what the boot loader fills in.
    let mut zp = [0u8; 4096];
    put(&mut zp, field::SETUP_SECTS, image.header())?;
    zp[field::TYPE_OF_LOADER] = 0xff; // a boot loader without an assigned id
    zp[field::LOADFLAGS] |= CAN_USE_HEAP;
    put(&mut zp, field::HEAP_END_PTR, &0xfe00u16.to_le_bytes())?;
    put(&mut zp, field::CMD_LINE_PTR, &CMDLINE_PTR.to_le_bytes())?;
    put(&mut zp, field::RAMDISK_IMAGE, &rd_at32.to_le_bytes())?;
    put(&mut zp, field::RAMDISK_SIZE, &rd_len32.to_le_bytes())?;
    // RAM past the MMIO window, from 4 GiB (`super::memory::SplitRam`), when there is any.
    let above = mem.high();
    let e820_all = [
        (0, LEGACY_START, E820_RAM),
        (LEGACY_START, HIGH_RAM - LEGACY_START, E820_RESERVED),
        (HIGH_RAM, high_ram, E820_RAM),
        (super::memory::HIGH_RAM_START, above, E820_RAM),
    ];
    let e820 = e820_all.get(..if above > 0 { 4 } else { 3 }).unwrap_or_default();
    // Where the VM's ACPI tables start (`super::acpi`; Linux 5.0 and later read it from here).
    put(&mut zp, field::ACPI_RSDP_ADDR, &super::acpi::RSDP_ADDR.to_le_bytes())?;
    zp[field::E820_ENTRIES] = e820.len() as u8;
    // Each entry: address, size (64 bits each) and type (32 bits).
    let table: alloc::vec::Vec<u8> = e820
        .iter()
        .flat_map(|(addr, size, kind)| {
            addr.to_le_bytes().into_iter().chain(size.to_le_bytes()).chain(kind.to_le_bytes())
        })
        .collect();
    put(&mut zp, field::E820_TABLE, &table)?;
    mem.write(ZERO_PAGE, &zp).map_err(oom)?;

    let (cr3, gdt_base, gdt_limit) = write_long_mode_tables(mem)?;
    Ok(LinuxEntry {
        rip,
        rsi: ZERO_PAGE.0,
        cr3,
        gdt_base,
        gdt_limit,
        initrd: initrd_at.map(|(a, rd)| (a, len64(rd.len()))),
    })
}

/// The command line's address as the zero page's 32-bit `cmd_line_ptr`.
const CMDLINE_PTR: u32 = CMDLINE.0 as u32;
/// The boot GDT: null, null, 64-bit code at [`CODE_SELECTOR`], data at [`DATA_SELECTOR`].
const BOOT_GDT: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
const GDT_LIMIT: u16 = (BOOT_GDT.len() * 8 - 1) as u16;
/// The page directory pointer table and the four page directories after the PML4.
const PDPT: GuestPhysAddr = GuestPhysAddr(0xa000);
const PDS: [GuestPhysAddr; 4] =
    [GuestPhysAddr(0xb000), GuestPhysAddr(0xc000), GuestPhysAddr(0xd000), GuestPhysAddr(0xe000)];

/// Writes what a vCPU needs to run in 64-bit mode: the GDT (null, null, 64-bit code at
/// [`CODE_SELECTOR`], data at [`DATA_SELECTOR`]) at [`GDT`], and page tables at [`PML4`]
/// identity-mapping the first 4 GiB with 2 MiB pages. Returns (CR3, GDT base, GDT limit).
pub fn write_long_mode_tables(mem: &mut (impl GuestMemory + ?Sized)) -> Result<(u64, u64, u16), LoadError> {
    let gdt: alloc::vec::Vec<u8> = BOOT_GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write(GDT, &gdt).map_err(oom)?;
    // PML4 -> one PDPT -> four PDs of 2 MiB pages.
    const PRESENT_WRITABLE: u64 = 0x3;
    const LARGE: u64 = 0x80;
    mem.write_u64(PML4, PDPT.0 | PRESENT_WRITABLE).map_err(oom)?;
    let pdpt: alloc::vec::Vec<u8> =
        PDS.iter().flat_map(|pd| (pd.0 | PRESENT_WRITABLE).to_le_bytes()).collect();
    mem.write(PDPT, &pdpt).map_err(oom)?;
    for (g, pd) in (0..4u64).zip(PDS) {
        let entries: alloc::vec::Vec<u8> = (0..512u64)
            .flat_map(|i| ((g << 30) | (i << 21) | PRESENT_WRITABLE | LARGE).to_le_bytes())
            .collect();
        mem.write(pd, &entries).map_err(oom)?;
    }
    Ok((PML4.0, GDT.0, GDT_LIMIT))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use alloc::vec;
    use alloc::vec::Vec;

    /// A bzImage as the boot protocol describes one (protocol 2.15, 64-bit, relocatable), with
    /// `setup_sects` 27 and a recognisable protected-mode kernel.
    pub(crate) fn image() -> Vec<u8> {
        let mut b = vec![0u8; 28 * 512 + 8192];
        b[field::SETUP_SECTS] = 27;
        b[field::BOOT_FLAG..field::BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        b[field::JUMP_END] = 0x6a; // header ends at 0x26c
        b[field::HEADER..field::HEADER + 4].copy_from_slice(b"HdrS");
        b[field::VERSION..field::VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        b[field::LOADFLAGS] = LOADED_HIGH;
        b[field::CODE32_START..field::CODE32_START + 4].copy_from_slice(&0x10_0000u32.to_le_bytes());
        b[field::INITRD_ADDR_MAX..field::INITRD_ADDR_MAX + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        b[field::XLOADFLAGS..field::XLOADFLAGS + 2].copy_from_slice(&0x7fu16.to_le_bytes());
        b[field::CMDLINE_SIZE..field::CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
        b[field::INIT_SIZE..field::INIT_SIZE + 4].copy_from_slice(&0x40_0000u32.to_le_bytes());
        for (i, x) in b[28 * 512..].iter_mut().enumerate() {
            *x = (i % 251) as u8;
        }
        b
    }

    fn zp_u32(m: &dyn GuestMemory, at: usize) -> u32 {
        let mut b = [0u8; 4];
        m.read(GuestPhysAddr(ZERO_PAGE.0 + at as u64), &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    #[test]
    fn loads_kernel_initrd_cmdline_zero_page_and_tables() {
        let img = image();
        let bz = BzImage::parse(&img).unwrap();
        assert_eq!((bz.version, bz.kernel().len()), (0x020f, 8192));
        let mut m = GuestRam::new(64 << 20);
        let initrd = vec![0x5a; 10_000];
        let e = load(&mut m, &bz, Some(&initrd), "console=ttyS0 panic=-1").unwrap();
        assert_eq!((e.rip, e.rsi, e.cr3, e.gdt_base, e.gdt_limit), (0x10_0200, 0x7000, 0x9000, 0x500, 31));
        // The kernel at code32_start, the initrd page aligned at the top of RAM.
        let mut k = vec![0u8; 8192];
        m.read(GuestPhysAddr(0x10_0000), &mut k).unwrap();
        assert_eq!(k, bz.kernel());
        let (rd_at, rd_len) = e.initrd.unwrap();
        assert_eq!((rd_at % 4096, rd_len, rd_at + rd_len <= 64 << 20), (0, 10_000, true));
        assert!(rd_at + 4096 + rd_len > 64 << 20, "as high as it goes");
        assert_eq!(
            (zp_u32(&m, field::RAMDISK_IMAGE) as u64, zp_u32(&m, field::RAMDISK_SIZE)),
            (rd_at, 10_000)
        );
        // The command line, NUL-terminated, where cmd_line_ptr says.
        assert_eq!(zp_u32(&m, field::CMD_LINE_PTR), 0x2_0000);
        let mut line = [0u8; 24];
        m.read(CMDLINE, &mut line).unwrap();
        assert_eq!(&line, b"console=ttyS0 panic=-1\0\0");
        // The header is copied, the loader fields set.
        assert_eq!(zp_u32(&m, field::HEADER), HDRS);
        assert_eq!(
            zp_u32(&m, field::TYPE_OF_LOADER) & 0xffff,
            0xff | ((LOADED_HIGH | CAN_USE_HEAP) as u32) << 8
        );
        // e820: low RAM, the legacy hole, RAM from 1 MiB to the end.
        assert_eq!(zp_u32(&m, field::E820_ENTRIES) & 0xff, 3);
        let entry = |i: usize| {
            let at = ZERO_PAGE.0 + (field::E820_TABLE + 20 * i) as u64;
            let (a, s) = (m.read_u64(GuestPhysAddr(at)).unwrap(), m.read_u64(GuestPhysAddr(at + 8)).unwrap());
            let mut t = [0u8; 4];
            m.read(GuestPhysAddr(at + 16), &mut t).unwrap();
            (a, s, u32::from_le_bytes(t))
        };
        assert_eq!(entry(0), (0, 0x9_fc00, E820_RAM));
        assert_eq!(entry(1), (0x9_fc00, 0x6_0400, E820_RESERVED));
        assert_eq!(entry(2), (0x10_0000, (64 << 20) - 0x10_0000, E820_RAM));
        // The identity map: 2 MiB pages, address = frame.
        let pd3 = m.read_u64(GuestPhysAddr(0xa000 + 3 * 8)).unwrap() & !0xfff;
        assert_eq!(m.read_u64(GuestPhysAddr(pd3 + 8 * 511)).unwrap(), 0xffe0_0000 | 0x83);
        assert_eq!(m.read_u64(GuestPhysAddr(0x500 + 16)).unwrap(), 0x00af_9b00_0000_ffff);
    }

    /// RAM past the MMIO window: the e820 map has it from 4 GiB; the initrd stays in low RAM.
    #[test]
    fn ram_above_4_gib_is_in_the_e820_map() {
        let img = image();
        let bz = BzImage::parse(&img).unwrap();
        let mut m = crate::memory::SplitRam::new(GuestRam::new(72 << 20), 64 << 20);
        let e = load(&mut m, &bz, Some(&[1u8; 5000]), "").unwrap();
        assert!(e.initrd.unwrap().0 < 64 << 20);
        assert_eq!(zp_u32(&m, field::E820_ENTRIES) & 0xff, 4);
        let at = ZERO_PAGE.0 + (field::E820_TABLE + 20 * 3) as u64;
        let (a, s) = (m.read_u64(GuestPhysAddr(at)).unwrap(), m.read_u64(GuestPhysAddr(at + 8)).unwrap());
        assert_eq!((a, s), (1 << 32, 8 << 20));
    }

    #[test]
    fn each_bad_field_is_named() {
        type Corruption<'a> = (&'a dyn Fn(&mut Vec<u8>), &'a str);
        let cases: &[Corruption] = &[
            (&|b| b[field::BOOT_FLAG] = 0, "no Linux setup header"),
            (&|b| b[field::HEADER] = b'X', "no Linux setup header"),
            (
                &|b| b[field::VERSION..field::VERSION + 2].copy_from_slice(&0x020bu16.to_le_bytes()),
                "boot protocol 2.11",
            ),
            (&|b| b[field::XLOADFLAGS] = 0, "XLF_KERNEL_64"),
            (&|b| b[field::LOADFLAGS] = 0, "zImage"),
            (&|b| b[field::SETUP_SECTS] = 255, "runs past the end"),
            (&|b| b[field::JUMP_END] = 0x10, "setup header length"),
            (&|b| b[field::CODE32_START + 2] = 0, "below 1 MiB"),
            (&|b| b.truncate(600), "too short"),
        ];
        for (corrupt, want) in cases {
            let mut b = image();
            corrupt(&mut b);
            let e = BzImage::parse(&b).unwrap_err();
            assert!(e.to_string().contains(want), "{e} lacks {want}");
        }
        // Every truncation is an error or a smaller kernel, never a panic.
        let b = image();
        for n in 0..b.len() {
            let _ = BzImage::parse(&b[..n]);
        }
    }

    #[test]
    fn requests_that_do_not_fit_are_refused() {
        let img = image();
        let bz = BzImage::parse(&img).unwrap();
        let long = "x".repeat(2048);
        let mut m = GuestRam::new(64 << 20);
        assert!(matches!(load(&mut m, &bz, None, &long), Err(LoadError::BadCmdline(_))));
        assert!(matches!(load(&mut m, &bz, None, "a\0b"), Err(LoadError::BadCmdline(_))));
        // init_size (4 MiB from 1 MiB) does not fit in 4 MiB of RAM.
        let mut small = GuestRam::new(4 << 20);
        assert!(
            matches!(load(&mut small, &bz, None, ""), Err(LoadError::TooBig(w)) if w.contains("kernel needs"))
        );
        // An initrd that would overlap the kernel.
        let big = vec![0u8; 62 << 20];
        assert!(
            matches!(load(&mut m, &bz, Some(&big), ""), Err(LoadError::TooBig(w)) if w.contains("initrd"))
        );
        // Nothing was written by the refused loads.
        let mut k = [0u8; 16];
        m.read(GuestPhysAddr(0x10_0000), &mut k).unwrap();
        assert_eq!(k, [0; 16]);
    }
}
