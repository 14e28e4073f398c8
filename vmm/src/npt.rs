//! Nested page tables: the guest-physical to host-physical translation the CPU walks for every
//! guest memory access. One builder for both vendors' 4-level formats ([`EntryFormat`]):
//! - [`Npt`], AMD nested paging (AMD64 APM vol. 2, 15.25): the long-mode page-table format (5.3);
//!   nested walks are user accesses, so every level has U set.
//! - [`Ept`], Intel's extended page tables (Intel SDM vol. 3C, 29.3.2): read/write/execute bits,
//!   leaves with the write-back memory type.
//!
//! Only what is mapped here is reachable: a guest access anywhere else is a nested page fault the
//! hypervisor handles (MMIO emulation, or the end of the VM). RAM is mapped with 2 MiB pages where
//! the guest and host addresses and the length allow, else 4 KiB pages. A range that is already
//! mapped is refused, never silently remapped.
//!
//! The tables live in host frames handed out by a [`TableFrames`] (the platform's frame allocator
//! in the appliance, an in-memory fake in tests); the builder itself touches no hardware.

use super::{GuestPhysAddr, HostPhysAddr};
use core::marker::PhantomData;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
/// A 2 MiB page in a page directory entry (bit 7 in both formats).
const LARGE: u64 = 1 << 7;
const EPT_READ: u64 = 1 << 0;
const EPT_WRITE: u64 = 1 << 1;
const EPT_EXECUTE: u64 = 1 << 2;
/// EPT memory type write-back (bits 5:3 = 6) for guest RAM.
const EPT_WRITE_BACK: u64 = 6 << 3;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
const PAGE: u64 = 4096;
const LARGE_PAGE: u64 = 2 << 20;
/// Guest-physical addresses are 48 bits (4-level tables).
const GPA_LIMIT: u64 = 1 << 48;

/// The entry format of one vendor's nested page tables.
pub trait EntryFormat {
    /// An entry pointing at the next-level table at `table`.
    fn table(table: u64) -> u64;
    /// A leaf mapping the 4 KiB page (or, when `large`, the 2 MiB page) at `host`.
    fn leaf(host: u64, large: bool, writable: bool) -> u64;
    /// Whether the entry maps anything.
    fn present(e: u64) -> bool;
    /// Whether the entry allows writes.
    fn writable(e: u64) -> bool;
}

/// AMD nested paging: long-mode page-table entries, every level user-accessible.
#[derive(Debug, Clone, Copy, Default)]
pub struct Npt;

impl EntryFormat for Npt {
    fn table(table: u64) -> u64 {
        table | PRESENT | WRITABLE | USER
    }
    fn leaf(host: u64, large: bool, writable: bool) -> u64 {
        host | PRESENT | USER | if writable { WRITABLE } else { 0 } | if large { LARGE } else { 0 }
    }
    fn present(e: u64) -> bool {
        e & PRESENT != 0
    }
    fn writable(e: u64) -> bool {
        e & WRITABLE != 0
    }
}

/// Intel EPT: read/write/execute permissions; guest RAM is write-back (the guest's PAT applies).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ept;

impl EntryFormat for Ept {
    fn table(table: u64) -> u64 {
        table | EPT_READ | EPT_WRITE | EPT_EXECUTE
    }
    fn leaf(host: u64, large: bool, writable: bool) -> u64 {
        host | EPT_READ
            | EPT_EXECUTE
            | EPT_WRITE_BACK
            | if writable { EPT_WRITE } else { 0 }
            | if large { LARGE } else { 0 }
    }
    fn present(e: u64) -> bool {
        e & (EPT_READ | EPT_WRITE | EPT_EXECUTE) != 0
    }
    fn writable(e: u64) -> bool {
        e & EPT_WRITE != 0
    }
}

/// Zeroed 4 KiB page-table frames and access to their entries.
pub trait TableFrames {
    /// A new zeroed frame, or `None` when memory is exhausted.
    fn alloc(&mut self) -> Option<HostPhysAddr>;
    fn read_entry(&self, table: HostPhysAddr, index: usize) -> u64;
    fn write_entry(&mut self, table: HostPhysAddr, index: usize, value: u64);
}

/// Why a mapping was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NptError {
    /// An address or length is not 4 KiB aligned.
    Unaligned,
    /// The range runs past the 48-bit guest-physical space.
    OutOfRange,
    /// Part of the range is mapped already.
    Overlap(GuestPhysAddr),
    /// No frame for a table.
    OutOfMemory,
}

impl core::fmt::Display for NptError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NptError::Unaligned => write!(f, "nested paging: address or length not 4 KiB aligned"),
            NptError::OutOfRange => write!(f, "nested paging: range beyond the 48-bit guest-physical space"),
            NptError::Overlap(a) => write!(f, "nested paging: {a} is mapped already"),
            NptError::OutOfMemory => write!(f, "nested paging: out of memory for page tables"),
        }
    }
}

/// One VM's nested page tables in format `F` (AMD's by default).
#[derive(Debug)]
pub struct NestedPageTables<F: EntryFormat = Npt> {
    root: HostPhysAddr,
    format: PhantomData<F>,
}

/// The entry for `gpa` in a table of `level` (0 is the page table, 1 the page directory, 2 the
/// PDPT, 3 the PML4; there are no others): the 9 address bits from bit 12 + 9 * level.
fn index(gpa: u64, level: u32) -> usize {
    let shift = match level {
        0 => 12,
        1 => 21,
        2 => 30,
        _ => 39,
    };
    ((gpa >> shift) & 0x1ff) as usize
}

impl<F: EntryFormat> NestedPageTables<F> {
    pub fn new(frames: &mut impl TableFrames) -> Result<Self, NptError> {
        Ok(NestedPageTables { root: frames.alloc().ok_or(NptError::OutOfMemory)?, format: PhantomData })
    }

    /// The top table (the VMCB's nCR3, the EPT pointer's address).
    pub fn root(&self) -> HostPhysAddr {
        self.root
    }

    /// Maps guest-physical `gpa`..`gpa + len` to host-physical `hpa`.. On error nothing new is
    /// reachable beyond what was mapped before the failing page.
    pub fn map(
        &mut self,
        frames: &mut impl TableFrames,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: u64,
        writable: bool,
    ) -> Result<(), NptError> {
        if !gpa.0.is_multiple_of(PAGE) || !hpa.0.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
            return Err(NptError::Unaligned);
        }
        let end = gpa.0.checked_add(len).filter(|end| *end <= GPA_LIMIT);
        let (Some(end), Some(_)) = (end, hpa.0.checked_add(len)) else {
            return Err(NptError::OutOfRange);
        };
        // Check the whole range first, so a refused map changes nothing.
        for g in (gpa.0..end).step_by(PAGE as usize) {
            if self.translate(frames, GuestPhysAddr(g)).is_some() {
                return Err(NptError::Overlap(GuestPhysAddr(g)));
            }
        }
        // Page by page (2 MiB or 4 KiB): `g` and `h` stay within the ranges checked above.
        let (mut g, mut h) = (gpa.0, hpa.0);
        while let Some(left) = end.checked_sub(g).filter(|left| *left != 0) {
            let large = g.is_multiple_of(LARGE_PAGE) && h.is_multiple_of(LARGE_PAGE) && left >= LARGE_PAGE;
            // Walk down to the page directory (level 1) or the page table (level 0).
            let stop = if large { 1 } else { 0 };
            let mut table = self.root;
            for level in [3, 2, 1].into_iter().take_while(|level| *level > stop) {
                let i = index(g, level);
                let e = frames.read_entry(table, i);
                table = if F::present(e) && e & LARGE == 0 {
                    HostPhysAddr(e & ADDRESS)
                } else {
                    // A large page here would have been found by the overlap check.
                    let t = frames.alloc().ok_or(NptError::OutOfMemory)?;
                    frames.write_entry(table, i, F::table(t.0));
                    t
                };
            }
            frames.write_entry(table, index(g, stop), F::leaf(h, large, writable));
            let step = if large { LARGE_PAGE } else { PAGE };
            // `left` is a multiple of 4 KiB and at least `step`: neither sum overflows.
            let (Some(next_g), Some(next_h)) = (g.checked_add(step), h.checked_add(step)) else {
                return Err(NptError::OutOfRange);
            };
            (g, h) = (next_g, next_h);
        }
        Ok(())
    }

    /// Where `gpa` lands in host memory and whether the guest may write it; `None` when unmapped.
    pub fn translate(&self, frames: &impl TableFrames, gpa: GuestPhysAddr) -> Option<(HostPhysAddr, bool)> {
        if gpa.0 >= GPA_LIMIT {
            return None;
        }
        let mut table = self.root;
        let mut writable = true;
        for level in (0..4).rev() {
            let e = frames.read_entry(table, index(gpa.0, level));
            if !F::present(e) {
                return None;
            }
            writable &= F::writable(e);
            if level == 0 || (level == 1 && e & LARGE != 0) {
                // The offset in the page: the address bits below the page's size.
                let offset = if level == 0 { PAGE - 1 } else { LARGE_PAGE - 1 };
                return Some((HostPhysAddr((e & ADDRESS & !offset) | (gpa.0 & offset)), writable));
            }
            table = HostPhysAddr(e & ADDRESS);
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Table frames in a vector, at made-up host addresses from 0x1000_0000.
    #[derive(Default)]
    pub(crate) struct FakeFrames {
        pub tables: Vec<[u64; 512]>,
        pub limit: Option<usize>,
    }

    const BASE: u64 = 0x1000_0000;

    impl TableFrames for FakeFrames {
        fn alloc(&mut self) -> Option<HostPhysAddr> {
            if self.limit.is_some_and(|l| self.tables.len() >= l) {
                return None;
            }
            self.tables.push([0; 512]);
            Some(HostPhysAddr(BASE + (self.tables.len() as u64 - 1) * PAGE))
        }
        fn read_entry(&self, table: HostPhysAddr, index: usize) -> u64 {
            self.tables[((table.0 - BASE) / PAGE) as usize][index]
        }
        fn write_entry(&mut self, table: HostPhysAddr, index: usize, value: u64) {
            self.tables[((table.0 - BASE) / PAGE) as usize][index] = value;
        }
    }

    #[test]
    fn ram_is_mapped_with_large_pages_where_it_can() {
        let mut f = FakeFrames::default();
        let mut npt = NestedPageTables::<Npt>::new(&mut f).unwrap();
        // 6 MiB of RAM at host 0x4000_0000, and 12 KiB at an unaligned host address.
        npt.map(&mut f, GuestPhysAddr(0), HostPhysAddr(0x4000_0000), 6 << 20, true).unwrap();
        npt.map(&mut f, GuestPhysAddr(0x1_0000_0000), HostPhysAddr(0x5000_3000), 3 * PAGE, false).unwrap();
        // Root, one PDPT, one PD for the RAM; a PDPT entry and a PD and a PT for the small range.
        assert_eq!(f.tables.len(), 1 + 1 + 1 + 1 + 1);
        let t = |g: u64| npt.translate(&f, GuestPhysAddr(g));
        assert_eq!(t(0), Some((HostPhysAddr(0x4000_0000), true)));
        assert_eq!(t(0x3f_f123), Some((HostPhysAddr(0x403f_f123), true)));
        assert_eq!(t((6 << 20) - 1), Some((HostPhysAddr(0x4000_0000 + (6 << 20) - 1), true)));
        assert_eq!(t(6 << 20), None, "past the RAM");
        assert_eq!(t(0x1_0000_2fff), Some((HostPhysAddr(0x5000_5fff), false)));
        assert_eq!(t(0x1_0000_3000), None);
        assert_eq!(t(u64::MAX), None);
        // Every level of a nested walk has U set.
        let root = f.tables[0];
        assert!(root.iter().filter(|e| **e & PRESENT != 0).all(|e| e & USER != 0));
        // The RAM's PD holds three 2 MiB pages.
        let pd = f.tables[2];
        assert_eq!(pd.iter().filter(|e| **e & LARGE != 0).count(), 3);
    }

    #[test]
    fn bad_requests_change_nothing() {
        let mut f = FakeFrames::default();
        let mut npt = NestedPageTables::<Npt>::new(&mut f).unwrap();
        npt.map(&mut f, GuestPhysAddr(0x20_0000), HostPhysAddr(0x20_0000), 2 << 20, true).unwrap();
        let before = f.tables.clone();
        let map = |npt: &mut NestedPageTables, f: &mut FakeFrames, g: u64, h: u64, l: u64| {
            npt.map(f, GuestPhysAddr(g), HostPhysAddr(h), l, true)
        };
        assert_eq!(
            map(&mut npt, &mut f, 0x1f_f000, 0, 2 * PAGE),
            Err(NptError::Overlap(GuestPhysAddr(0x20_0000)))
        );
        assert_eq!(map(&mut npt, &mut f, 0x100, 0, PAGE), Err(NptError::Unaligned));
        assert_eq!(map(&mut npt, &mut f, 0, 0x10, PAGE), Err(NptError::Unaligned));
        assert_eq!(map(&mut npt, &mut f, 0, 0, 100), Err(NptError::Unaligned));
        assert_eq!(map(&mut npt, &mut f, GPA_LIMIT - PAGE, 0, 2 * PAGE), Err(NptError::OutOfRange));
        assert_eq!(f.tables, before);
        // Out of frames for the tables: an error, not a panic.
        let mut f = FakeFrames { limit: Some(2), ..FakeFrames::default() };
        let mut npt = NestedPageTables::<Npt>::new(&mut f).unwrap();
        assert_eq!(map(&mut npt, &mut f, 0, 0, PAGE), Err(NptError::OutOfMemory));
        assert_eq!(npt.translate(&f, GuestPhysAddr(0)), None);
    }

    #[test]
    fn ept_entries_have_permissions_and_the_write_back_type() {
        let mut f = FakeFrames::default();
        let mut ept = NestedPageTables::<Ept>::new(&mut f).unwrap();
        ept.map(&mut f, GuestPhysAddr(0), HostPhysAddr(0x4000_0000), 4 << 20, true).unwrap();
        ept.map(&mut f, GuestPhysAddr(0x1_0000_0000), HostPhysAddr(0x5000_3000), PAGE, false).unwrap();
        let t = |g: u64| ept.translate(&f, GuestPhysAddr(g));
        assert_eq!(t(0x12_3456), Some((HostPhysAddr(0x4012_3456), true)));
        assert_eq!(t(0x1_0000_0fff), Some((HostPhysAddr(0x5000_3fff), false)));
        assert_eq!(t(4 << 20), None);
        // Tables: read, write, execute; no memory type. The RAM's PD: two 2 MiB write-back leaves.
        assert_eq!(f.tables[0][0], (BASE + PAGE) | 7);
        let pd = f.tables[2];
        assert_eq!(pd[0], 0x4000_0000 | 7 | (6 << 3) | LARGE);
        assert_eq!(pd[1], 0x4020_0000 | 7 | (6 << 3) | LARGE);
        assert_eq!(pd[2], 0);
        // The read-only 4 KiB page: read and execute, write-back, not writable.
        let pt = f.tables.last().unwrap();
        assert_eq!(pt[0], 0x5000_3000 | EPT_READ | EPT_EXECUTE | (6 << 3));
    }
}
