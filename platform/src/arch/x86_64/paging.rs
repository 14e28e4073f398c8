//! The kernel's own page tables: an identity map of physical memory with 2 MiB pages.
//!
//! Caching follows the firmware's MTRRs (MMIO ranges are uncacheable there), so every page uses the
//! default write-back PAT entry. All table frames sit below 4 GiB because application processors load
//! CR3 while still in 32-bit mode.

use core::sync::atomic::{AtomicU64, Ordering};
use ember_hw::mm::frames::FrameAllocator;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const TWO_MIB: u64 = 2 << 20;
const ONE_GIB: u64 = 1 << 30;
const FOUR_GIB: u64 = 4 << 30;

static MAPPED_LIMIT: AtomicU64 = AtomicU64::new(0);

/// End of the identity-mapped range (0 before the kernel's tables are active).
pub fn mapped_limit() -> u64 {
    MAPPED_LIMIT.load(Ordering::Relaxed)
}

fn zeroed_table(frames: &mut FrameAllocator) -> u64 {
    let frame = frames.alloc_below(FOUR_GIB).expect("out of memory below 4 GiB for page tables");
    // SAFETY: the frame is free RAM just taken from the allocator, identity mapped by the firmware's
    // and our tables alike; nothing else refers to it.
    unsafe { core::ptr::write_bytes(frame as *mut u8, 0, 4096) };
    frame
}

fn table(phys: u64) -> &'static mut [u64; 512] {
    // SAFETY: `phys` is a page-table frame owned by this module, identity mapped, 4 KiB aligned; the
    // returned reference is used only briefly by this module on the bootstrap CPU (building the identity
    // map, then mapping device windows while drivers bind), never by two callers at once.
    unsafe { &mut *(phys as *mut [u64; 512]) }
}

/// The page-directory entry (2 MiB page) for `addr`, creating the PDPT and PD on the way.
fn pd_entry(frames: &mut FrameAllocator, pml4: u64, addr: u64) -> &'static mut u64 {
    const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
    let l4 = ((addr >> 39) & 511) as usize;
    let l3 = ((addr >> 30) & 511) as usize;
    let l2 = ((addr >> 21) & 511) as usize;
    if table(pml4)[l4] == 0 {
        table(pml4)[l4] = zeroed_table(frames) | PRESENT | WRITABLE;
    }
    let pdpt = table(pml4)[l4] & ADDRESS;
    if table(pdpt)[l3] == 0 {
        table(pdpt)[l3] = zeroed_table(frames) | PRESENT | WRITABLE;
    }
    let pd = table(pdpt)[l3] & ADDRESS;
    &mut table(pd)[l2]
}

/// Builds an identity map of `[0, limit)` (rounded up to 1 GiB), loads it and returns the PML4 address.
pub fn install_identity_map(frames: &mut FrameAllocator, limit: u64) -> u64 {
    let limit = limit.next_multiple_of(ONE_GIB);
    let pml4 = zeroed_table(frames);
    let mut addr = 0u64;
    while addr < limit {
        *pd_entry(frames, pml4, addr) = addr | PRESENT | WRITABLE | HUGE;
        addr += TWO_MIB;
    }
    // SAFETY: the new tables identity map all RAM (including this code, the stack, the heap and the
    // firmware tables) and the MMIO we use, exactly as the firmware's map did, so every live pointer
    // stays valid across the switch.
    unsafe {
        core::arch::asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags));
    }
    MAPPED_LIMIT.store(limit, Ordering::Relaxed);
    pml4
}

/// Identity maps the device window `[phys, phys + len)` uncached (PCD|PWT, 2 MiB granularity), adding
/// tables where the range lies above the boot-time identity map. Entries already present are switched
/// to uncached and flushed from the TLB.
pub fn map_mmio(frames: &mut FrameAllocator, phys: u64, len: u64) {
    let pml4 = super::cpu::cr3();
    let start = phys & !(TWO_MIB - 1);
    let end = phys.saturating_add(len).next_multiple_of(TWO_MIB);
    let mut addr = start;
    while addr < end {
        *pd_entry(frames, pml4, addr) = addr | PRESENT | WRITABLE | HUGE | CACHE_DISABLE | WRITE_THROUGH;
        x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(addr));
        addr += TWO_MIB;
    }
}
