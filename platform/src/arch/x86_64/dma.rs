//! Memory that devices read and write (DMA), plus the `virtio-drivers` HAL.
//!
//! RAM is identity mapped and cache-coherent with PCIe on x86_64, so a DMA buffer is zeroed, page-
//! aligned heap memory whose physical address is its virtual address. Devices may write it at any time,
//! so the CPU side only touches it through volatile copies at checked offsets - never as a Rust
//! reference.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

const PAGE: usize = 4096;

/// A zeroed, page-aligned buffer shared with a device.
pub struct DmaBuffer {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is plain memory owned by this value; moving it to another CPU is harmless.
unsafe impl Send for DmaBuffer {}

impl DmaBuffer {
    /// Allocates `len` bytes (rounded up to whole pages). `None` when the heap is exhausted.
    pub fn new(len: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len.max(1).next_multiple_of(PAGE), PAGE).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(DmaBuffer { ptr, layout })
    }

    /// Address for the device.
    pub fn phys(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether the buffer has no bytes (never: it is at least one page).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len()),
            "DMA access at {offset:#x}+{len} outside the {:#x}-byte buffer",
            self.len()
        );
    }

    /// Copies bytes out of the buffer.
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        self.check(offset, out.len());
        fence(Ordering::Acquire);
        // SAFETY: the range is inside the allocation (checked); the device may be writing other parts
        // of the buffer, which a byte copy into our own memory tolerates.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), out.len()) }
    }

    /// Copies bytes into the buffer.
    pub fn write(&self, offset: usize, data: &[u8]) {
        self.check(offset, data.len());
        // SAFETY: as in `read`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len()) }
        fence(Ordering::Release);
    }

    /// Reads one byte with a volatile load (device-written status fields).
    pub fn read_u8(&self, offset: usize) -> u8 {
        self.check(offset, 1);
        // SAFETY: inside the allocation (checked).
        let v = unsafe { core::ptr::read_volatile(self.ptr.as_ptr().add(offset)) };
        fence(Ordering::Acquire);
        v
    }

    /// Reads a little-endian u16 with volatile loads.
    pub fn read_u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.read_u8(offset), self.read_u8(offset + 1)])
    }

    /// Reads an aligned little-endian u32 with one volatile load, so that a dword the device writes
    /// while it is read is seen whole, old or new (a completion's phase bit and command identifier
    /// share one; read as bytes they can mix an old identifier with a new phase bit).
    pub fn read_u32(&self, offset: usize) -> u32 {
        self.check(offset, 4);
        assert!(offset.is_multiple_of(4), "unaligned DMA dword read at {offset:#x}");
        // SAFETY: inside the allocation (checked) and 4-byte aligned (the buffer is page-aligned and
        // `offset` a multiple of 4), so the load is one naturally aligned access.
        let v = unsafe { core::ptr::read_volatile(self.ptr.as_ptr().add(offset).cast::<u32>()) };
        fence(Ordering::Acquire);
        u32::from_le(v)
    }

    /// Writes one byte with a volatile store.
    pub fn write_u8(&self, offset: usize, v: u8) {
        self.check(offset, 1);
        fence(Ordering::Release);
        // SAFETY: inside the allocation (checked).
        unsafe { core::ptr::write_volatile(self.ptr.as_ptr().add(offset), v) }
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. Drivers drop buffers only after the device has
        // been reset or the ring entries pointing at them have been reclaimed.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The `virtio-drivers` hardware abstraction: identity-mapped heap memory for queues and buffers.
pub struct EmberHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned memory that stays allocated until `dma_dealloc`, at
// an address valid for both CPU and device (identity map); `mmio_phys_to_virt` is the identity for
// BARs the PCIe code mapped before creating the transport; `share` returns the physical address of the
// buffer, which is its virtual address.
unsafe impl Hal for EmberHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = Layout::from_size_align(pages.max(1) * PAGE, PAGE).expect("DMA layout");
        // SAFETY: non-zero size.
        let ptr =
            NonNull::new(unsafe { alloc_zeroed(layout) }).expect("out of heap memory for virtio queues");
        (ptr.as_ptr() as PhysAddr, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let layout = Layout::from_size_align(pages.max(1) * PAGE, PAGE).expect("DMA layout");
        // SAFETY: the caller passes back what `dma_alloc` returned for this many pages.
        unsafe { dealloc(vaddr.as_ptr(), layout) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("MMIO at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
