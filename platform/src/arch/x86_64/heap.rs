//! The kernel heap: `linked_list_allocator` over a region reserved during the UEFI phase.

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Hands `[start, start + size)` to the heap. Called once, first thing in the UEFI phase.
pub fn init(start: u64, size: usize) {
    // SAFETY: the region was just allocated from UEFI as LOADER_DATA for the heap alone; it is never
    // handed out again (the frame allocator skips LOADER_DATA) and `init` runs once, before any
    // allocation.
    unsafe { HEAP.lock().init(start as *mut u8, size) }
}
