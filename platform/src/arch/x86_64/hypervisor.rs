//! The VM runtime's hardware (`ember_vmm::runtime`): [`SvmBackend`], AMD SVM as the runtime's
//! `Backend`, and [`HostPlatform`], the clock, timer, kicks and guest RAM of this machine as its
//! `Platform`.

use super::guest_ram::GuestRamRegion;
use super::svm::{self, Frames, GuestFpu, SvmCpu, SvmVcpu};
use super::{apic, cpu, idt, timer};
use alloc::string::String;
use core::sync::atomic::{AtomicU32, Ordering};
use ember_hw::mm::frames::FrameAllocator;
use ember_vmm::cpuid::Leaf;
use ember_vmm::linux::LinuxEntry;
use ember_vmm::memory::{GuestMemory, OutOfRange};
use ember_vmm::npt::Npt;
use ember_vmm::runtime::{Backend, Platform, RAM_ALIGN};
use ember_vmm::{GuestPhysAddr, HostPhysAddr};
use spin::Mutex;

/// AMD SVM with nested paging.
pub struct SvmBackend {
    /// ASIDs the CPU offers (CPUID 0x8000000A EBX), once checked.
    asids: AtomicU32,
}

impl SvmBackend {
    /// Records the number of ASIDs the CPU offers (from the SVM check).
    pub fn set_asids(&self, asids: u32) {
        self.asids.store(asids, Ordering::Relaxed);
    }
}

impl Backend for SvmBackend {
    type Cpu = SvmCpu;
    type Vcpu = SvmVcpu;
    type Format = Npt;
    type Frames = Frames;

    fn enable_cpu(&self) -> Result<SvmCpu, String> {
        svm::enable()
    }
    fn create_vcpu(&self, tag: u32, tables: HostPhysAddr) -> Result<SvmVcpu, String> {
        SvmVcpu::new(tag, tables)
    }
    fn enter_linux(&self, vcpu: &mut SvmVcpu, e: &LinuxEntry) {
        vcpu.enter_long_mode(e.rip, 0, e.rsi, e.cr3, e.gdt_base, e.gdt_limit);
    }
    fn bind(&self, vcpu: &mut SvmVcpu, cpu: &SvmCpu) {
        vcpu.bind(cpu);
    }
    fn unbind(&self, vcpu: &mut SvmVcpu) {
        vcpu.unbind();
    }
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> Leaf {
        svm::host_cpuid(leaf, subleaf)
    }
    fn vcpu_bytes(&self) -> u64 {
        // VMCB, I/O and MSR permission maps, FPU state.
        (4 + 12 + 8) * 1024 + GuestFpu::bytes()
    }
    fn table_bytes(&self, frames: &Frames) -> u64 {
        frames.bytes()
    }
    fn tag_limit(&self) -> u32 {
        self.asids.load(Ordering::Relaxed).max(2)
    }
}

/// The frames guest RAM comes from (the frame allocator, once boot-time set-up handed it over).
static RAM_FRAMES: Mutex<Option<FrameAllocator>> = Mutex::new(None);

/// Hands the frame allocator over: guest RAM comes from it from now on.
pub fn give_ram_frames(frames: FrameAllocator) {
    *RAM_FRAMES.lock() = Some(frames);
}

/// A VM's RAM for one run, given back to the frame allocator when dropped.
pub struct HostRam(Option<GuestRamRegion>);

impl HostRam {
    fn region(&self) -> Option<&GuestRamRegion> {
        self.0.as_ref()
    }
}

impl Drop for HostRam {
    fn drop(&mut self) {
        if let (Some(f), Some(ram)) = (RAM_FRAMES.lock().as_mut(), self.0.take()) {
            ram.release(f);
        }
    }
}

/// Host memory from the frame allocator for bytes a VM keeps for its run (its kernel and initrd
/// read from a datastore), outside the kernel's small heap; given back when dropped.
pub struct HostBuffer {
    region: Option<GuestRamRegion>,
    len: usize,
}

/// `len` bytes (zeroed) from the frame allocator, or `None` when it has no such run.
pub fn host_buffer(len: usize) -> Option<HostBuffer> {
    let pages = (len as u64).div_ceil(4096).max(1);
    let mut frames = RAM_FRAMES.try_lock()?;
    let mut region = GuestRamRegion::allocate(frames.as_mut()?, pages * 4096, 4096)?;
    region.zero();
    Some(HostBuffer { region: Some(region), len })
}

impl core::ops::Deref for HostBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.region {
            // SAFETY: the region is identity-mapped RAM owned by this value alone
            // (`GuestRamRegion::allocate`'s invariant), at least `len` bytes long, and lives as long
            // as the borrow of `self`.
            Some(r) => unsafe { core::slice::from_raw_parts(r.base() as *const u8, self.len) },
            None => &[],
        }
    }
}

impl core::ops::DerefMut for HostBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &self.region {
            // SAFETY: as in `deref`; `&mut self` makes this the only reference.
            Some(r) => unsafe { core::slice::from_raw_parts_mut(r.base() as *mut u8, self.len) },
            None => &mut [],
        }
    }
}

// SAFETY: the buffer is plain memory owned by this value; shared references only read it.
unsafe impl Sync for HostBuffer {}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        if let (Some(f), Some(r)) = (RAM_FRAMES.lock().as_mut(), self.region.take()) {
            r.release(f);
        }
    }
}

impl GuestMemory for HostRam {
    fn size(&self) -> u64 {
        self.region().map_or(0, |r| r.size())
    }
    fn read(&self, addr: GuestPhysAddr, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let gone = OutOfRange { addr, len: buf.len() as u64 };
        self.region().ok_or(gone)?.read(addr, buf)
    }
    fn write(&mut self, addr: GuestPhysAddr, data: &[u8]) -> Result<(), OutOfRange> {
        let gone = OutOfRange { addr, len: data.len() as u64 };
        self.0.as_mut().ok_or(gone)?.write(addr, data)
    }
    fn zero(&mut self) {
        if let Some(r) = self.0.as_mut() {
            r.zero();
        }
    }
}

/// This machine, for the VM runtime.
pub struct HostPlatform {
    svm: SvmBackend,
}

impl HostPlatform {
    pub const fn new() -> Self {
        HostPlatform { svm: SvmBackend { asids: AtomicU32::new(0) } }
    }
}

impl Default for HostPlatform {
    fn default() -> Self {
        Self::new()
    }
}

impl Platform for HostPlatform {
    type Backend = SvmBackend;
    type Ram = HostRam;

    fn backend(&self) -> &SvmBackend {
        &self.svm
    }
    fn now_ns(&self) -> u64 {
        timer::now_ns()
    }
    fn tsc_hz(&self) -> u64 {
        // 0 when calibration failed: guests are then not offered a clock of a made-up rate.
        timer::tsc_hz()
    }
    fn arm_timer_ns(&self, ns: u64) {
        timer::arm_oneshot_ns(ns);
    }
    fn wait_for_interrupt(&self) {
        // Interrupts are off here: STI;HLT wakes on the timer or a kick without a lost wake-up.
        x86_64::instructions::interrupts::enable_and_hlt();
        x86_64::instructions::interrupts::disable();
    }
    fn kick(&self, cpu: u32) {
        apic::send_ipi(cpu, idt::KICK_VECTOR as u32 | (1 << 14));
    }
    fn switch_vm(&self) {
        cpu::ibpb();
    }
    fn allocate_ram(&self, bytes: u64) -> Option<(HostRam, HostPhysAddr)> {
        // Never waits long on the lock: a CPU that stopped may hold it (the caller reports it).
        let mut frames = None;
        for _ in 0..1_000_000 {
            if let Some(f) = RAM_FRAMES.try_lock() {
                frames = Some(f);
                break;
            }
            core::hint::spin_loop();
        }
        let ram = GuestRamRegion::allocate(frames?.as_mut()?, bytes, RAM_ALIGN)?;
        let base = HostPhysAddr(ram.base());
        Some((HostRam(Some(ram)), base))
    }
    fn log(&self, line: &str) {
        kprintln!("{line}");
    }
}
