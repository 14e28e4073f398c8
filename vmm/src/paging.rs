//! Walking the guest's own page tables (AMD64 APM vol. 2, 5.3 "Long-Mode Page Translation", 5.2
//! "Legacy-Mode"): turning the guest-virtual address of an instruction into the guest-physical
//! address it is fetched from, so the hypervisor can read the instruction behind an exit.
//!
//! Handled: paging off (virtual = physical), 32-bit paging with 4 MiB pages (CR4.PSE), PAE paging,
//! and 4-level long-mode paging with 2 MiB and 1 GiB pages. Every table read goes through
//! [`GuestMemory`], so a guest whose tables point outside its RAM gets an error, never a host access.

use super::memory::GuestMemory;
use super::GuestPhysAddr;

/// The guest's paging state (from its CR0, CR3, CR4 and EFER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagingState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1 << 0;
const LARGE: u64 = 1 << 7;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// Why a translation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// The guest's tables do not map the address (the guest would take a #PF).
    NotPresent,
    /// A table or entry lies outside the guest's RAM.
    TableOutsideRam(GuestPhysAddr),
    /// A non-canonical address in long mode.
    NonCanonical,
}

impl core::fmt::Display for WalkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WalkError::NotPresent => write!(f, "the guest's page tables do not map the address"),
            WalkError::TableOutsideRam(a) => write!(f, "a guest page table at {a} is outside guest RAM"),
            WalkError::NonCanonical => write!(f, "a non-canonical guest address"),
        }
    }
}

fn entry(mem: &(impl GuestMemory + ?Sized), addr: u64, wide: bool) -> Result<u64, WalkError> {
    let at = GuestPhysAddr(addr);
    if wide {
        mem.read_u64(at).map_err(|_| WalkError::TableOutsideRam(at))
    } else {
        let mut b = [0u8; 4];
        mem.read(at, &mut b).map_err(|_| WalkError::TableOutsideRam(at))?;
        Ok(u32::from_le_bytes(b) as u64)
    }
}

/// The guest-physical address of guest-virtual `va`.
pub fn translate(
    mem: &(impl GuestMemory + ?Sized),
    p: &PagingState,
    va: u64,
) -> Result<GuestPhysAddr, WalkError> {
    if p.cr0 & CR0_PG == 0 {
        return Ok(GuestPhysAddr(va));
    }
    if p.efer & EFER_LMA != 0 {
        // Bits 63:47 must all equal bit 47.
        let top = va >> 47;
        if top != 0 && top != 0x1_ffff {
            return Err(WalkError::NonCanonical);
        }
        // Table addresses are masked to 52 bits and indexes to 9: the sums below cannot wrap.
        let mut table = p.cr3 & ADDRESS;
        for level in (0..4u32).rev() {
            let shift = level.wrapping_mul(9).wrapping_add(12);
            let index = (va >> shift) & 0x1ff;
            let e = entry(mem, table.wrapping_add(index.wrapping_mul(8)), true)?;
            if e & PRESENT == 0 {
                return Err(WalkError::NotPresent);
            }
            if level == 0 || ((level == 1 || level == 2) && e & LARGE != 0) {
                let offset = (1u64 << shift).wrapping_sub(1);
                return Ok(GuestPhysAddr((e & ADDRESS & !offset) | (va & offset)));
            }
            table = e & ADDRESS;
        }
        Err(WalkError::NotPresent) // not reached: level 0 returns
    } else if p.cr4 & CR4_PAE != 0 {
        let va = va & 0xffff_ffff;
        let pdpte = entry(mem, (p.cr3 & 0xffff_ffe0).wrapping_add((va >> 30).wrapping_mul(8)), true)?;
        if pdpte & PRESENT == 0 {
            return Err(WalkError::NotPresent);
        }
        let pde = entry(mem, (pdpte & ADDRESS).wrapping_add(((va >> 21) & 0x1ff).wrapping_mul(8)), true)?;
        if pde & PRESENT == 0 {
            return Err(WalkError::NotPresent);
        }
        if pde & LARGE != 0 {
            return Ok(GuestPhysAddr((pde & ADDRESS & !0x1f_ffff) | (va & 0x1f_ffff)));
        }
        let pte = entry(mem, (pde & ADDRESS).wrapping_add(((va >> 12) & 0x1ff).wrapping_mul(8)), true)?;
        if pte & PRESENT == 0 {
            return Err(WalkError::NotPresent);
        }
        Ok(GuestPhysAddr((pte & ADDRESS) | (va & 0xfff)))
    } else {
        let va = va & 0xffff_ffff;
        let pde = entry(mem, (p.cr3 & 0xffff_f000).wrapping_add((va >> 22).wrapping_mul(4)), false)?;
        if pde & PRESENT == 0 {
            return Err(WalkError::NotPresent);
        }
        if pde & LARGE != 0 && p.cr4 & CR4_PSE != 0 {
            // 4 MiB page: bits 31:22 from the entry, 39:32 from its bits 20:13 (PSE-36).
            let high = ((pde >> 13) & 0xff) << 32;
            return Ok(GuestPhysAddr(high | (pde & 0xffc0_0000) | (va & 0x3f_ffff)));
        }
        let pte = entry(mem, (pde & 0xffff_f000).wrapping_add(((va >> 12) & 0x3ff).wrapping_mul(4)), false)?;
        if pte & PRESENT == 0 {
            return Err(WalkError::NotPresent);
        }
        Ok(GuestPhysAddr((pte & 0xffff_f000) | (va & 0xfff)))
    }
}

/// Reads up to 15 instruction bytes at guest-virtual `rip` (fewer when the next page is not mapped
/// or not RAM); each page is translated on its own, so an instruction may cross a page boundary.
pub fn fetch_instruction(
    mem: &(impl GuestMemory + ?Sized),
    p: &PagingState,
    rip: u64,
) -> Result<([u8; 15], usize), WalkError> {
    let mut out = [0u8; 15];
    let mut got = 0;
    while got < out.len() {
        let va = rip.wrapping_add(got as u64);
        let gpa = match translate(mem, p, va) {
            Ok(g) => g,
            Err(e) if got == 0 => return Err(e),
            Err(_) => break,
        };
        let in_page = 0x1000u64.wrapping_sub(va & 0xfff) as usize;
        let n = in_page.min(out.len().saturating_sub(got));
        let read = out.get_mut(got..got.saturating_add(n)).map(|buf| mem.read(gpa, buf));
        if !matches!(read, Some(Ok(()))) {
            if got == 0 {
                return Err(WalkError::TableOutsideRam(gpa));
            }
            break;
        }
        got = got.saturating_add(n);
    }
    Ok((out, got))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    const LONG: PagingState =
        PagingState { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE, efer: EFER_LMA | (1 << 8) };

    /// Long-mode tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD), 0x4000 (PT):
    /// VA 0xffff_8000_0000_0000 + n*4K -> 0x10000 + n*4K for the first two pages; VA 0x4000_0000
    /// is a 1 GiB page at 0; VA 0x20_0000 a 2 MiB page at 0x20_0000 (identity).
    fn long_mode_ram() -> GuestRam {
        let mut m = GuestRam::new(4 << 20);
        let w = |m: &mut GuestRam, a: u64, v: u64| m.write_u64(GuestPhysAddr(a), v).unwrap();
        w(&mut m, 0x1000 + 8 * 256, 0x2000 | 3); // PML4[256]: the higher half
        w(&mut m, 0x1000, 0x5000 | 3); // PML4[0]
        w(&mut m, 0x2000, 0x3000 | 3); // PDPT[0] (higher half) -> PD
        w(&mut m, 0x3000, 0x4000 | 3); // PD[0] -> PT
        w(&mut m, 0x4000, 0x10000 | 3); // PT[0]
        w(&mut m, 0x4008, 0x11000 | 3); // PT[1]
        w(&mut m, 0x5000 + 8, LARGE | 3); // PDPT[1] (low half): 1 GiB page at 0
        w(&mut m, 0x5000, 0x6000 | 3); // PDPT[0] -> PD at 0x6000
        w(&mut m, 0x6000 + 8, 0x20_0000 | LARGE | 3); // PD[1]: 2 MiB page
        m
    }

    #[test]
    fn long_mode_walks() {
        let m = long_mode_ram();
        let t = |va| translate(&m, &LONG, va);
        assert_eq!(t(0xffff_8000_0000_0123), Ok(GuestPhysAddr(0x10123)));
        assert_eq!(t(0xffff_8000_0000_1fff), Ok(GuestPhysAddr(0x11fff)));
        assert_eq!(t(0xffff_8000_0000_2000), Err(WalkError::NotPresent));
        assert_eq!(t(0x4000_1234), Ok(GuestPhysAddr(0x1234)), "1 GiB page");
        assert_eq!(t(0x2a_bcde), Ok(GuestPhysAddr(0x2a_bcde)), "2 MiB page");
        assert_eq!(t(0x0000_8000_0000_0000), Err(WalkError::NonCanonical));
        // Paging off: identity.
        let off = PagingState { cr0: 1, cr3: 0, cr4: 0, efer: 0 };
        assert_eq!(translate(&m, &off, 0xfff0), Ok(GuestPhysAddr(0xfff0)));
        // Tables outside RAM are an error, not an access.
        let bad = PagingState { cr3: 0x1000_0000, ..LONG };
        assert_eq!(translate(&m, &bad, 0), Err(WalkError::TableOutsideRam(GuestPhysAddr(0x1000_0000))));
    }

    #[test]
    fn legacy_and_pae_walks() {
        let mut m = GuestRam::new(1 << 20);
        // 32-bit paging: PD at 0x1000; PDE[0] -> PT at 0x2000 with PTE[5] -> 0x7000; PDE[1] a
        // 4 MiB page at 0x80_0000 (translated only: it lies beyond this RAM).
        m.write(GuestPhysAddr(0x1000), &(0x2000u32 | 3).to_le_bytes()).unwrap();
        m.write(GuestPhysAddr(0x1004), &(0x80_0000u32 | 0x83).to_le_bytes()).unwrap();
        m.write(GuestPhysAddr(0x2000 + 4 * 5), &(0x7000u32 | 3).to_le_bytes()).unwrap();
        let legacy = PagingState { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PSE, efer: 0 };
        assert_eq!(translate(&m, &legacy, 0x5abc), Ok(GuestPhysAddr(0x7abc)));
        assert_eq!(translate(&m, &legacy, 0x40_1234), Ok(GuestPhysAddr(0x80_1234)));
        assert_eq!(translate(&m, &legacy, 0x6000), Err(WalkError::NotPresent));
        // PAE: PDPT at 0x3000, PDPTE[0] -> PD 0x4000, PDE[0] 2 MiB page at 0x20_0000.
        m.write_u64(GuestPhysAddr(0x3000), 0x4000 | 1).unwrap();
        m.write_u64(GuestPhysAddr(0x4000), 0x20_0000 | LARGE | 3).unwrap();
        let pae = PagingState { cr0: CR0_PG | 1, cr3: 0x3000, cr4: CR4_PAE, efer: 0 };
        assert_eq!(translate(&m, &pae, 0x1_2345), Ok(GuestPhysAddr(0x21_2345)));
        assert_eq!(translate(&m, &pae, 0x4000_0000), Err(WalkError::NotPresent));
    }

    #[test]
    fn instruction_fetch_crosses_pages_and_stops_at_holes() {
        let mut m = long_mode_ram();
        m.write(GuestPhysAddr(0x10ffa), &[1, 2, 3, 4, 5, 6]).unwrap();
        m.write(GuestPhysAddr(0x11000), &[7, 8, 9, 10, 11, 12, 13, 14, 15]).unwrap();
        let (b, n) = fetch_instruction(&m, &LONG, 0xffff_8000_0000_0ffa).unwrap();
        assert_eq!((n, b), (15, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]));
        // The page after 0x...1000 is not mapped: the bytes up to the hole.
        let (_, n) = fetch_instruction(&m, &LONG, 0xffff_8000_0000_1ffd).unwrap();
        assert_eq!(n, 3);
        assert_eq!(fetch_instruction(&m, &LONG, 0xffff_8000_0000_3000).unwrap_err(), WalkError::NotPresent);
        // Garbage page tables: errors, never a panic.
        let mut g = GuestRam::new(64 * 1024);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..(64 * 1024 / 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            g.write_u64(GuestPhysAddr(8 * i), x).unwrap();
        }
        for va in [0u64, 0xffff_ffff_ffff_f000, 0x1234_5678, 0x7fff_ffff_ffff] {
            for p in [LONG, PagingState { efer: 0, ..LONG }, PagingState { efer: 0, cr4: CR4_PSE, ..LONG }] {
                let _ = fetch_instruction(&g, &p, va);
            }
        }
    }
}
