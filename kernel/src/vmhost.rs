//! Running VMs: the hypervisor's runtime (wiring of `ember_kernel::vmm` onto the platform).
//!
//! - The management plane (bootstrap CPU) holds a [`Hypervisor`]: the VMs found on the boot media,
//!   served to the API as a `VmService`. Starting a VM takes its RAM from the frame allocator, sets
//!   up its devices (`vmm::board`: chipset, I/O APIC, a local APIC per vCPU, virtio), the nested
//!   page tables and a VMCB per vCPU, and queues one job per vCPU.
//! - Application processors run [`ap_worker`]: each takes a queued vCPU job (the first with work
//!   due: not halted, an interrupt or STARTUP IPI for it, its timer expired) and runs it with the
//!   generic vCPU loop (`vmm::vcpu::run`) for a time slice of [`SLICE_NS`], then puts it back, so
//!   any number of vCPUs share the CPUs. A halted vCPU, or one spinning on PAUSE (SMP guests only),
//!   gives way at once to a job with work due. The LAPIC timer brings a CPU back when its guest's
//!   next timer is due or its slice ends; a kick IPI when another vCPU sent it an interrupt, or
//!   there is new work or a stop.
//! - vCPU 0 zeroes the RAM and loads the ACPI tables (with a MADT listing the vCPUs) and the kernel
//!   in its first slice; the others wait for the guest's INIT/STARTUP IPIs and start in real mode
//!   at the guest's trampoline, as on a PC.
//! - A run ends when the guest powers off, faults (triple fault, an access nothing answers) or is
//!   stopped through the API: the first vCPU to end it gives the reason, the others stop at their
//!   next look, and the last one gives the RAM back and sets the VM's status (log and API). A
//!   guest reset (reboot) ends the run the same way and starts a new one from the kernel.
//!
//! Disks are virtio block devices on virtio-mmio (`vmm::virtio_blk`), backed by the images the
//! UEFI phase read into memory as write-back caches of their files on the ESP (`vmm::disk`): the
//! management CPU ([`DiskWriter`]) writes changed chunks to the file's clusters on the boot media
//! every second (`vmm::writeback::WRITEBACK_MS`) and whenever a guest flushes (the flush completes after the device's own
//! flush). A disk whose file cannot be located on the boot media keeps its writes in memory only
//! (said in the log at boot).

use crate::arch::x86_64::guest_ram::GuestRamRegion;
use crate::arch::x86_64::svm::{self, Frames, SvmCpu, SvmVcpu};
use crate::arch::x86_64::{apic, idt, timer};
use crate::boot::vms::VmImage;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use ember_kernel::mm::frames::FrameAllocator;
use ember_kernel::vmm::board::Board;
use ember_kernel::vmm::bus::MmioBus;
use ember_kernel::vmm::cpuid::{guest_cpuid, VcpuIdentity};
use ember_kernel::vmm::disk::WritebackImage;
use ember_kernel::vmm::machine::Machine;
use ember_kernel::vmm::memory::GuestMemory;
use ember_kernel::vmm::msr::VcpuMsrs;
use ember_kernel::vmm::npt::NestedPageTables;
use ember_kernel::vmm::serial::{ConsoleLog, CONSOLE_LOG_BYTES};
use ember_kernel::vmm::vcpu::{self, Host, LoopState, RunEnd, RunStats, Vcpu, VmParts};
use ember_kernel::vmm::virtio_blk::{self, SharedDisk, VirtioBlk};
use ember_kernel::vmm::writeback::{BackedDisk, Writeback};
use ember_kernel::vmm::{acpi, linux, GuestPhysAddr, HostPhysAddr};
use ember_net::vms::{VmAction, VmError, VmService, VmState, VmSummary};
use ember_storage::block::BlockDevice;
use ember_storage::fatfile::FileExtents;
use ember_storage::vmdef::VmDefinition;
use spin::Mutex;

/// A vCPU's time slice when other runs wait for the CPU.
pub const SLICE_NS: u64 = 10_000_000;
/// Longest a CPU sleeps without looking at its work (stops come with a kick; this is a backstop).
const MAX_SLEEP_NS: u64 = 50_000_000;
/// Console input waiting for a guest, at most (the TCP client is held back beyond).
const CONSOLE_INPUT_BYTES: usize = 4096;
/// Guest RAM is taken in 2 MiB-aligned runs (so nested paging uses 2 MiB pages).
const RAM_ALIGN: u64 = 2 << 20;

/// A VM disk's image: a write-back cache of its file on the boot media.
type Image = WritebackImage<&'static mut [u8]>;

/// The frame allocator, after boot-time set-up handed it over.
static FRAMES: Mutex<Option<FrameAllocator>> = Mutex::new(None);
/// vCPUs waiting for a CPU.
static QUEUE: Mutex<VecDeque<Box<Job>>> = Mutex::new(VecDeque::new());
/// Application processors that run vCPUs.
static WORKERS: AtomicUsize = AtomicUsize::new(0);
/// Wall-clock time (s since 1970) at TSC 0, for the guests' CMOS clocks.
static WALL_BASE: AtomicU64 = AtomicU64::new(0);

/// Hands the frame allocator to the hypervisor (guest RAM comes from it from now on) and sets the
/// wall clock guests see.
pub fn init(frames: FrameAllocator, wall_clock: Option<i64>) {
    *FRAMES.lock() = Some(frames);
    let now_s = timer::now_ns() / 1_000_000_000;
    let wall = wall_clock.unwrap_or(0).max(0) as u64;
    WALL_BASE.store(wall.saturating_sub(now_s), Ordering::Relaxed);
}

/// Application processors that run vCPUs, at most (more are left idle).
const MAX_WORKERS: usize = 256;

/// What one application processor is doing, for targeted kicks: the management CPU is never
/// kicked, and a guest's IPIs interrupt only the CPU running the vCPU they are for (or, when that
/// vCPU waits in the queue, the CPUs that have nothing to do).
struct WorkerSlot {
    apic_id: AtomicU32,
    /// The VM (`Arc::as_ptr` of its `VmShared`) whose vCPU runs here, 0 for none.
    vm: AtomicUsize,
    vcpu: AtomicUsize,
    /// The CPU waits for work: no job, or its vCPU halted.
    idle: AtomicBool,
    /// The VM whose vCPU runs here (for the panic handler: which VM failed).
    current: Mutex<Option<Arc<VmShared>>>,
    /// The CPU stopped (a panic while it ran a vCPU): it runs nothing any more.
    dead: AtomicBool,
    /// What stopped it (written by the panic handler, which must not allocate).
    failure: Mutex<FailureText>,
}

/// A fixed buffer for a panic message (the heap may be what failed).
pub struct FailureText {
    buf: [u8; 480],
    len: usize,
}

impl FailureText {
    const fn new() -> Self {
        FailureText { buf: [0; 480], len: 0 }
    }

    /// Keeps as much of `text` as fits, cut at a character boundary.
    fn set(&mut self, text: &str) {
        let mut n = text.len().min(self.buf.len());
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        self.len = n;
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE_SLOT: WorkerSlot = WorkerSlot {
    apic_id: AtomicU32::new(0),
    vm: AtomicUsize::new(0),
    vcpu: AtomicUsize::new(0),
    idle: AtomicBool::new(true),
    current: Mutex::new(None),
    dead: AtomicBool::new(false),
    failure: Mutex::new(FailureText::new()),
};

/// Locks `m` if that is possible within about 50 ms: the management CPU never waits without bound
/// on a lock a CPU running vCPUs holds (that CPU may have stopped holding it).
fn lock_bounded<T>(m: &Mutex<T>) -> Option<spin::MutexGuard<'_, T>> {
    let deadline = timer::now_ns().saturating_add(50_000_000);
    loop {
        if let Some(g) = m.try_lock() {
            return Some(g);
        }
        if timer::now_ns() > deadline {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// `ember.selftest=vm-panic` (test only): panic in the first VM with a disk, 15 s after it starts.
static INJECT_VM_PANIC: AtomicBool = AtomicBool::new(false);

/// Arms `ember.selftest=vm-panic`.
pub fn inject_vm_panic() {
    INJECT_VM_PANIC.store(true, Ordering::Release);
}

/// The panic handler's question: is the calling CPU running a vCPU? If so, that VM is marked
/// failed with `what` (its vCPUs elsewhere stop at their next look, the management plane reports
/// it) and returned: the caller stops only this CPU. Allocates nothing.
pub fn on_vcpu_cpu_panic(what: &str) -> Option<Arc<VmShared>> {
    let id = apic::current_id();
    let (index, slot) =
        workers().iter().enumerate().find(|(_, w)| w.apic_id.load(Ordering::Relaxed) == id)?;
    if slot.vm.load(Ordering::Acquire) == 0 {
        return None;
    }
    let vm = slot.current.try_lock()?.clone()?;
    slot.dead.store(true, Ordering::Release);
    if let Some(mut f) = slot.failure.try_lock() {
        f.set(what);
    }
    vm.failed_on.store(index + 1, Ordering::Release);
    vm.failed.store(true, Ordering::Release);
    Some(vm)
}

/// Why a failed VM failed (the panic of the CPU that ran it).
fn failure_of(vm: &VmShared) -> String {
    let what = vm
        .failed_on
        .load(Ordering::Acquire)
        .checked_sub(1)
        .and_then(|i| SLOTS.get(i))
        .and_then(|slot| lock_bounded(&slot.failure).map(|f| String::from(f.as_str())));
    match what {
        Some(what) => format!("the CPU running it stopped: {what}"),
        None => String::from("the CPU running it does not answer"),
    }
}
static SLOTS: [WorkerSlot; MAX_WORKERS] = [FREE_SLOT; MAX_WORKERS];

fn kick_cpu(slot: &WorkerSlot) {
    apic::send_ipi(slot.apic_id.load(Ordering::Relaxed), idt::KICK_VECTOR as u32 | (1 << 14));
}

fn workers() -> &'static [WorkerSlot] {
    &SLOTS[..WORKERS.load(Ordering::Acquire).min(MAX_WORKERS)]
}

/// Wakes the application processors that wait for work (new work was queued).
fn kick_idle() {
    for w in workers().iter().filter(|w| w.idle.load(Ordering::Acquire)) {
        kick_cpu(w);
    }
}

/// Wakes every application processor (a pass of the disk write-back completed flushes).
fn kick_workers() {
    workers().iter().for_each(kick_cpu);
}

/// Something arrived for vCPUs `mask` of VM `vm` (an interrupt, a stop): the CPUs running them are
/// kicked, and if any of them waits in the queue, the idle CPUs too.
fn kick_vcpus(vm: &VmShared, mask: u64) {
    let id = vm as *const VmShared as usize;
    let mut running = 0u64;
    for w in workers() {
        let v = w.vcpu.load(Ordering::Acquire);
        if w.vm.load(Ordering::Acquire) == id && v < 64 && mask & (1 << v) != 0 {
            running |= 1 << v;
            kick_cpu(w);
        }
    }
    if mask & !running != 0 {
        kick_idle();
    }
}

/// What a VM's run and the management plane share.
pub struct VmShared {
    pub def: VmDefinition,
    kernel: &'static [u8],
    initrd: Option<&'static [u8]>,
    /// The disk images (in host memory for the life of the host) and whether each is read-only.
    disks: Vec<(SharedDisk<Image>, bool)>,
    console: Arc<Mutex<ConsoleLog>>,
    /// Bytes for the guest's COM1 receiver (from the TCP console), waiting for room in its FIFO.
    input: Mutex<VecDeque<u8>>,
    status: Mutex<Status>,
    stop: AtomicBool,
    reset: AtomicBool,
    exits: AtomicU64,
    /// Exits by kind (`vcpu::EXIT_KINDS`).
    exit_counts: [AtomicU64; vcpu::EXIT_KINDS.len()],
    interrupts: AtomicU64,
    resets: AtomicU64,
    overhead: AtomicU64,
    /// A CPU stopped while running one of its vCPUs: the VM cannot run again (its devices and
    /// memory stay with that CPU) before the host restarts; `failed_on` is that CPU's worker slot
    /// plus one (its failure text says what happened).
    failed: AtomicBool,
    failed_on: AtomicUsize,
}

struct Status {
    state: VmState,
    started_ms: Option<u64>,
    exit_reason: Option<String>,
}

/// A VM's RAM for one run, given back to the frame allocator when the run's last vCPU is done.
struct OwnedRam(Option<GuestRamRegion>);

impl OwnedRam {
    fn region(&self) -> &GuestRamRegion {
        self.0.as_ref().expect("RAM is held until dropped")
    }
    fn region_mut(&mut self) -> &mut GuestRamRegion {
        self.0.as_mut().expect("RAM is held until dropped")
    }
}

impl Drop for OwnedRam {
    fn drop(&mut self) {
        if let (Some(f), Some(ram)) = (FRAMES.lock().as_mut(), self.0.take()) {
            ram.release(f);
        }
    }
}

impl GuestMemory for OwnedRam {
    fn size(&self) -> u64 {
        self.region().size()
    }
    fn read(&self, addr: GuestPhysAddr, buf: &mut [u8]) -> Result<(), ember_kernel::vmm::memory::OutOfRange> {
        self.region().read(addr, buf)
    }
    fn write(
        &mut self,
        addr: GuestPhysAddr,
        data: &[u8],
    ) -> Result<(), ember_kernel::vmm::memory::OutOfRange> {
        self.region_mut().write(addr, data)
    }
    fn zero(&mut self) {
        self.region_mut().zero()
    }
}

/// How a run ends, once one of its vCPUs (or the API) decided it.
enum Ending {
    /// The guest or the API reset the VM: a new run starts from its kernel.
    Reset,
    /// The VM stops; the reason goes to the log and the API.
    Stop(String),
}

/// One run of a VM, from its start (or a reset) to its end: what its vCPUs share.
struct Run {
    vm: Arc<VmShared>,
    board: Mutex<Board>,
    /// The nested page tables every vCPU of the run uses (kept until the run is dropped).
    _paging: Mutex<(NestedPageTables, Frames)>,
    /// The ASID of each vCPU (a reset's new run takes the same).
    asids: Vec<u32>,
    ending: Mutex<Option<Ending>>,
    /// `ending` is set.
    ended: AtomicBool,
    /// vCPU jobs not finished yet.
    live: AtomicUsize,
    /// vCPUs (bit `i`: vCPU `i`) that received an interrupt or a start-up IPI since they last ran.
    wakes: AtomicU64,
    /// The kernel is in RAM (loaded by vCPU 0 in its first slice).
    loaded: AtomicBool,
}

impl Run {
    /// Records how the run ends, unless a vCPU already did; tells the others.
    fn end(&self, ending: Ending) {
        let mut e = self.ending.lock();
        if e.is_none() {
            *e = Some(ending);
            self.ended.store(true, Ordering::Release);
        }
        drop(e);
        kick_vcpus(&self.vm, u64::MAX);
    }
}

/// One vCPU of a run, queued for (or running on) an application processor.
struct Job {
    run: Arc<Run>,
    cpu: usize,
    vcpu: SvmVcpu,
    msrs: VcpuMsrs,
    stats: RunStats,
    state: LoopState,
}

impl Job {
    /// Whether the job has work now: it is not halted, or something arrived for it, or its timer
    /// fired, or its run is ending.
    fn due(&self, now: u64) -> bool {
        let run = &self.run;
        !self.state.halted
            || run.wakes.load(Ordering::Acquire) & (1 << self.cpu) != 0
            || self.state.next_timer.is_some_and(|t| t <= now)
            || run.ended.load(Ordering::Acquire)
            || run.vm.stop.load(Ordering::Acquire)
            || run.vm.reset.load(Ordering::Acquire)
    }
}

/// Where a VM's virtio-mmio devices sit (one 4 KiB window each, above the RAM limit) and the ISA
/// interrupt line of each (9 is the ACPI SCI, 4 COM1, 0-2 and 8 are taken on every PC).
const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
const VIRTIO_IRQS: [u8; 8] = [5, 10, 11, 12, 15, 14, 3, 7];

/// The VM's virtio-mmio devices as its DSDT describes them (guests find them through ACPI).
fn virtio_devices(vm: &VmShared) -> Vec<acpi::VirtioMmioDevice> {
    (0..vm.disks.len())
        .zip(VIRTIO_IRQS)
        .map(|(i, irq)| acpi::VirtioMmioDevice {
            base: (VIRTIO_MMIO_BASE + 0x1000 * i as u64) as u32,
            len: virtio_blk::MMIO_LEN as u32,
            irq,
        })
        .collect()
}

/// Zeroes the VM's RAM and loads its firmware tables and kernel; returns the vCPU's entry state.
fn load_guest(ram: &mut dyn GuestMemory, vm: &VmShared) -> Result<linux::LinuxEntry, String> {
    ram.zero();
    acpi::write_tables(ram, vm.def.vcpus as u8, &virtio_devices(vm))
        .map_err(|e| format!("ACPI tables: {e}"))?;
    let image = linux::BzImage::parse(vm.kernel).map_err(|e| format!("kernel {}: {e}", vm.def.kernel))?;
    linux::load(ram, &image, vm.initrd, &vm.def.cmdline).map_err(|e| format!("kernel {}: {e}", vm.def.kernel))
}

/// The VM's devices in its MMIO space: a virtio block device per disk.
fn mmio_devices(vm: &VmShared) -> Result<MmioBus, String> {
    let mut bus = MmioBus::new();
    for (i, ((disk, readonly), irq)) in vm.disks.iter().zip(VIRTIO_IRQS).enumerate() {
        let base = VIRTIO_MMIO_BASE + 0x1000 * i as u64;
        bus.add(base, virtio_blk::MMIO_LEN, Box::new(VirtioBlk::new(disk.clone(), *readonly, irq)))?;
    }
    Ok(bus)
}

fn enter(vcpu: &mut SvmVcpu, entry: &linux::LinuxEntry) {
    vcpu.enter_long_mode(entry.rip, 0, entry.rsi, entry.cr3, entry.gdt_base, entry.gdt_limit);
}

/// Sets a run of the VM up: its RAM, devices, nested page tables and a job per vCPU (vCPU `i`
/// tagged with `asids[i]`). Called on the bootstrap CPU for a start and on an application
/// processor after a reset.
fn build_run(vm: &Arc<VmShared>, asids: Vec<u32>) -> Result<Vec<Job>, String> {
    // The kernel's header is checked now (a bad image is refused at once); zeroing the RAM and
    // loading the kernel happen in vCPU 0's first slice, on an application processor.
    linux::BzImage::parse(vm.kernel).map_err(|e| format!("kernel {}: {e}", vm.def.kernel))?;
    let bytes = vm.def.memory_mib as u64 * (1 << 20);
    let ram = lock_bounded(&FRAMES)
        .as_mut()
        .and_then(|f| f.as_mut())
        .and_then(|f| GuestRamRegion::allocate(f, bytes, RAM_ALIGN))
        .ok_or_else(|| format!("not enough free host memory for {} MiB of guest RAM", vm.def.memory_mib))?;
    let base = ram.base();
    let ram = OwnedRam(Some(ram)); // given back on any error below
    let mmio = mmio_devices(vm)?;
    let mut npt_frames = Frames::default();
    let mut npt = NestedPageTables::new(&mut npt_frames).map_err(|e| e.to_string())?;
    npt.map(&mut npt_frames, GuestPhysAddr(0), HostPhysAddr(base), bytes, true).map_err(|e| e.to_string())?;
    let vcpus = asids.iter().map(|a| SvmVcpu::new(*a, npt.root())).collect::<Result<Vec<_>, _>>()?;
    let n = vcpus.len();
    // Per vCPU: VMCB, I/O and MSR permission maps, FPU state, the job; per VM: nested page
    // tables, the console log, the run with its devices and local APICs.
    let per_vcpu = (4 + 12 + 8) * 1024 + svm::GuestFpu::bytes() + core::mem::size_of::<Job>() as u64;
    let overhead = n as u64 * per_vcpu
        + npt_frames.bytes()
        + CONSOLE_LOG_BYTES as u64
        + core::mem::size_of::<Run>() as u64
        + n as u64 * core::mem::size_of::<ember_kernel::vmm::lapic::Lapic>() as u64;
    vm.overhead.store(overhead, Ordering::Relaxed);
    let machine = Machine::new(WALL_BASE.load(Ordering::Relaxed) as i64, vm.console.clone());
    let run = Arc::new(Run {
        vm: vm.clone(),
        board: Mutex::new(Board::new(machine, n, mmio, Box::new(ram))),
        _paging: Mutex::new((npt, npt_frames)),
        asids,
        ending: Mutex::new(None),
        ended: AtomicBool::new(false),
        live: AtomicUsize::new(n),
        wakes: AtomicU64::new(0),
        loaded: AtomicBool::new(false),
    });
    Ok(vcpus
        .into_iter()
        .enumerate()
        .map(|(cpu, vcpu)| Job {
            run: run.clone(),
            cpu,
            vcpu,
            msrs: VcpuMsrs::new(cpu as u32),
            stats: RunStats::default(),
            // Application processors wait for their STARTUP IPI.
            state: LoopState { halted: cpu > 0, next_timer: None },
        })
        .collect())
}

/// The host side of the vCPU loop on an application processor.
struct ApHost<'a> {
    run: &'a Run,
    slice_end: u64,
    slot: &'a WorkerSlot,
}

/// Whether a queued job has work now.
fn others_due(now: u64) -> bool {
    QUEUE.lock().iter().any(|j| j.due(now))
}

/// The earliest timer of the queued jobs.
fn queued_deadline() -> Option<u64> {
    QUEUE.lock().iter().filter_map(|j| j.state.next_timer).min()
}

impl Host for ApHost<'_> {
    fn now_ns(&self) -> u64 {
        timer::now_ns()
    }
    fn interrupted(&self, idle: bool) -> Option<RunEnd> {
        let vm = &self.run.vm;
        if vm.stop.load(Ordering::Acquire) {
            return Some(RunEnd::Stopped);
        }
        if vm.reset.swap(false, Ordering::AcqRel) {
            return Some(RunEnd::Reset);
        }
        if self.run.ended.load(Ordering::Acquire) {
            return Some(RunEnd::Stopped); // another vCPU ended the run
        }
        // An idle vCPU gives way to due work at once; a running one at the end of its slice
        // (also when nothing waits, so its counters reach the API).
        let now = timer::now_ns();
        let over = (idle && others_due(now)) || now >= self.slice_end;
        over.then_some(RunEnd::Preempted)
    }
    fn before_entry(&self, next_timer: Option<u64>) {
        let now = timer::now_ns();
        let until = next_timer.unwrap_or(u64::MAX).min(self.slice_end);
        timer::arm_oneshot_ns(until.saturating_sub(now));
    }
    fn idle(&self, deadline: Option<u64>) {
        let now = timer::now_ns();
        let mut until = deadline.unwrap_or(u64::MAX).min(now + MAX_SLEEP_NS);
        until = until.min(self.slice_end.max(now + 1_000_000));
        if let Some(q) = queued_deadline() {
            until = until.min(q);
        }
        if until <= now {
            return;
        }
        timer::arm_oneshot_ns(until - now);
        self.slot.idle.store(true, Ordering::Release);
        // New work queued after `others_due` looked kicks this CPU, as it is idle now.
        if !others_due(now) {
            // Interrupts are off here: STI;HLT wakes on the timer or a kick without a lost wake-up.
            x86_64::instructions::interrupts::enable_and_hlt();
            x86_64::instructions::interrupts::disable();
        }
        self.slot.idle.store(false, Ordering::Release);
    }
    fn console_input(&self, machine: &mut Machine) {
        let mut input = self.run.vm.input.lock();
        if input.is_empty() {
            return;
        }
        let (a, _) = input.as_slices();
        let taken = machine.console_input(a);
        input.drain(..taken);
    }
    fn wake(&self, vcpus: u64) {
        self.run.wakes.fetch_or(vcpus, Ordering::AcqRel);
        kick_vcpus(&self.run.vm, vcpus);
    }
    fn lock_board<'b>(&self, board: &'b Mutex<Board>) -> Option<spin::MutexGuard<'b, Board>> {
        board_of(&self.run.vm, board)
    }
}

/// A VM's devices, locked, unless the VM failed (a CPU that stopped may hold the lock for good).
fn board_of<'b>(vm: &VmShared, board: &'b Mutex<Board>) -> Option<spin::MutexGuard<'b, Board>> {
    loop {
        if let Some(b) = board.try_lock() {
            return Some(b);
        }
        if vm.failed.load(Ordering::Acquire) {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// Runs `job` for one slice on this CPU; gives it back if it is to go on.
fn run_slice(mut job: Box<Job>, cpu: &SvmCpu, slot: &WorkerSlot) -> Option<Box<Job>> {
    let run = job.run.clone();
    let vm = &run.vm;
    job.vcpu.bind(cpu);
    run.wakes.fetch_and(!(1u64 << job.cpu), Ordering::AcqRel);
    if INJECT_VM_PANIC.load(Ordering::Acquire)
        && !vm.disks.is_empty()
        && vm.status.lock().started_ms.is_some_and(|s| timer::now_ms() >= s + 15_000)
        && INJECT_VM_PANIC.swap(false, Ordering::AcqRel)
    {
        let _board = run.board.lock();
        let _disk = vm.disks.first().map(|(d, _)| d.lock());
        let _console = vm.console.lock();
        panic!("ember.selftest=vm-panic: a fault in the hypervisor's code for VM {}", vm.def.name);
    }
    if job.cpu == 0 && !run.loaded.load(Ordering::Acquire) {
        let Some(mut board) = board_of(vm, &run.board) else {
            finish_job(job);
            return None;
        };
        let loaded = load_guest(&mut *board.mem, vm);
        drop(board);
        match loaded {
            Ok(entry) => {
                enter(&mut job.vcpu, &entry);
                run.loaded.store(true, Ordering::Release);
            }
            Err(e) => run.end(Ending::Stop(format!("loading the guest failed: {e}"))),
        }
    }
    // A vCPU of an SMP guest spinning on PAUSE gives way to the vCPU it waits for (re-armed
    // each slice).
    job.vcpu.set_pause_exits(vm.def.vcpus > 1);
    let host = ApHost { run: &run, slice_end: timer::now_ns() + SLICE_NS, slot };
    let identity = VcpuIdentity { apic_id: job.cpu as u8, vcpus: vm.def.vcpus as u8, lapic: true };
    let j = &mut *job;
    let mut parts = VmParts {
        board: &run.board,
        cpu: j.cpu,
        msrs: &mut j.msrs,
        cpuid: |leaf, sub| guest_cpuid(leaf, sub, identity, svm::host_cpuid),
    };
    let before = j.stats;
    let end = vcpu::run(&mut j.vcpu, &mut parts, &host, &mut j.stats, &mut j.state);
    // Its FPU/SSE/AVX registers stay with it (another vCPU may run here next).
    j.vcpu.unbind();
    vm.exits.fetch_add(j.stats.exits - before.exits, Ordering::Relaxed);
    for (i, c) in vm.exit_counts.iter().enumerate() {
        c.fetch_add(j.stats.by_kind[i] - before.by_kind[i], Ordering::Relaxed);
    }
    vm.interrupts.fetch_add(j.stats.interrupts - before.interrupts, Ordering::Relaxed);
    let notices = board_of(vm, &run.board).map(|mut b| core::mem::take(&mut b.notices)).unwrap_or_default();
    for (base, what) in notices {
        let disk = base.saturating_sub(VIRTIO_MMIO_BASE) / 0x1000;
        let file = vm.def.disks.get(disk as usize).map_or("?", |d| d.file.as_str());
        kprintln!(
            "ember: VM {}: virtio disk {disk} ({file}): {what}; the device stops until the guest resets it",
            vm.def.name
        );
    }
    let who = if vm.def.vcpus > 1 { format!(" on vCPU {}", job.cpu) } else { String::new() };
    match end {
        RunEnd::Preempted => return Some(job),
        RunEnd::Reset => run.end(Ending::Reset),
        RunEnd::PowerOff => run.end(Ending::Stop(String::from("the guest powered off"))),
        RunEnd::Fault(why) => run.end(Ending::Stop(format!("guest fault{who}: {why}"))),
        RunEnd::Stopped if vm.stop.load(Ordering::Acquire) => {
            run.end(Ending::Stop(String::from("stopped through the API")))
        }
        RunEnd::Stopped => {} // the run ends for a reason another vCPU gave
    }
    finish_job(job);
    None
}

/// A vCPU is done with its run; the last one ends the run: a reset starts a new run from the
/// kernel, anything else stops the VM.
fn finish_job(job: Box<Job>) {
    let run = job.run.clone();
    drop(job);
    if run.live.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    let ending = run.ending.lock().take().unwrap_or(Ending::Stop(String::from("all vCPUs ended")));
    let vm = run.vm.clone();
    let asids = run.asids.clone();
    // The last reference: RAM, devices and nested page tables go back now.
    drop(run);
    let reason = match ending {
        Ending::Stop(reason) => reason,
        Ending::Reset => {
            vm.resets.fetch_add(1, Ordering::Relaxed);
            let name = &vm.def.name;
            kprintln!("ember: VM {name}: reset (by the guest or the API); starting it again from its kernel");
            match build_run(&vm, asids) {
                Ok(jobs) => {
                    QUEUE.lock().extend(jobs.into_iter().map(Box::new));
                    kick_idle();
                    return;
                }
                Err(e) => format!("restarting after a reset failed: {e}"),
            }
        }
    };
    // The VM's count already holds every vCPU's exits (added at the end of each slice).
    kprintln!("ember: VM {} stopped: {reason} ({} exits)", vm.def.name, vm.exits.load(Ordering::Relaxed));
    let mut st = vm.status.lock();
    st.state = VmState::Stopped;
    st.started_ms = None;
    st.exit_reason = Some(reason);
}

/// The next job to run: the first that has work now, else the first.
fn next_job() -> Option<Box<Job>> {
    let now = timer::now_ns();
    let mut q = QUEUE.lock();
    // The vCPUs of a failed VM never run again (dropped outside the lock).
    let failed = if q.iter().any(|j| j.run.vm.failed.load(Ordering::Acquire)) {
        let (gone, keep): (VecDeque<Box<Job>>, VecDeque<Box<Job>>) =
            core::mem::take(&mut *q).into_iter().partition(|j| j.run.vm.failed.load(Ordering::Acquire));
        *q = keep;
        gone
    } else {
        VecDeque::new()
    };
    let i = q.iter().position(|j| j.due(now)).unwrap_or(0);
    let job = q.remove(i);
    drop(q);
    drop(failed);
    job
}

/// The work loop of an application processor with SVM: runs queued vCPUs; sleeps when there are
/// none.
pub fn ap_worker(cpu: SvmCpu) -> ! {
    x86_64::instructions::interrupts::disable();
    let index = WORKERS.load(Ordering::Acquire);
    let Some(slot) = SLOTS.get(index) else {
        kprintln!("ember: more than {MAX_WORKERS} CPUs: CPU {} runs no vCPUs", apic::current_id());
        crate::arch::x86_64::cpu::halt_forever();
    };
    slot.apic_id.store(apic::current_id(), Ordering::Relaxed);
    WORKERS.fetch_add(1, Ordering::AcqRel);
    // The VM whose vCPU ran here last: switching to another VM's issues IBPB first.
    let mut last_vm = 0usize;
    loop {
        slot.idle.store(false, Ordering::Release);
        match next_job() {
            Some(job) => {
                {
                    let mut st = job.run.vm.status.lock();
                    if st.state == VmState::Starting {
                        st.state = VmState::Running;
                    }
                }
                let vm = Arc::as_ptr(&job.run.vm) as usize;
                if last_vm != vm && last_vm != 0 {
                    crate::arch::x86_64::cpu::ibpb();
                }
                last_vm = vm;
                slot.vcpu.store(job.cpu, Ordering::Release);
                *slot.current.lock() = Some(job.run.vm.clone());
                slot.vm.store(vm, Ordering::Release);
                let back = run_slice(job, &cpu, slot);
                slot.vm.store(0, Ordering::Release);
                *slot.current.lock() = None;
                if let Some(j) = back {
                    QUEUE.lock().push_back(j);
                }
            }
            None => {
                slot.idle.store(true, Ordering::Release);
                // A job queued between the look and the halt kicked this CPU: the kick is taken
                // by STI;HLT, so it is not lost.
                if QUEUE.lock().is_empty() {
                    x86_64::instructions::interrupts::enable_and_hlt();
                    x86_64::instructions::interrupts::disable();
                }
            }
        }
    }
}

enum Entry {
    Vm(Arc<VmShared>),
    /// A VM directory whose definition or files cannot be used.
    Invalid {
        name: String,
        reason: String,
    },
}

/// The VMs of this host, as the management plane sees them.
pub struct Hypervisor {
    vms: Vec<Entry>,
    /// Why no VM can run on this host, if none can.
    unavailable: Option<String>,
    next_asid: u32,
    asids: u32,
    writer: Option<DiskWriter>,
}

/// Writes the VMs' changed disk chunks back to the boot media, on the management CPU (which owns
/// the boot media's driver), in bounded steps (`vmm::writeback`).
pub struct DiskWriter(Writeback<&'static mut [u8]>);

impl DiskWriter {
    /// Starts and carries on the write-back passes (see [`Writeback::poll`]); logs failures and
    /// kicks the vCPUs when passes ended (their guests' flushes complete).
    pub fn poll(&mut self, dev: &mut dyn BlockDevice, now_ms: u64, all: bool) {
        let r = self.0.poll(dev, now_ms, all);
        for e in &r.errors {
            kprintln!("ember: ERROR: {e}");
        }
        if r.ended {
            kick_workers();
        }
    }
}

impl Hypervisor {
    /// The VMs found on the boot media; `virtualization`: the SVM check's result (ASIDs) or why
    /// there is none; `locate`: where a file of the ESP (`ember/vms/...`) lies on the boot media,
    /// for writing VM disks back (`Err`: why they stay in memory).
    pub fn new(
        images: Vec<VmImage>,
        virtualization: Result<u32, String>,
        locate: &mut dyn FnMut(&str) -> Result<FileExtents, String>,
    ) -> Hypervisor {
        let mut backed = Vec::new();
        let vms = images
            .into_iter()
            .map(|i| match i.loaded {
                Ok(l) => Entry::Vm(Arc::new(VmShared {
                    disks: l
                        .disks
                        .into_iter()
                        .zip(&l.definition.disks)
                        .map(|(image, d)| {
                            let name = &l.definition.name;
                            let path = format!("{}/{}", i.dir, d.file);
                            let place = if d.readonly { Err(String::from("read-only")) } else { locate(&path) };
                            let place = place.and_then(|p| {
                                if p.size == image.len() as u64 {
                                    Ok(p)
                                } else {
                                    Err(format!("the file holds {} bytes, the image {}", p.size, image.len()))
                                }
                            });
                            let disk = Arc::new(Mutex::new(WritebackImage::new(image, place.is_ok())));
                            match place {
                                Ok(extents) => {
                                    kprintln!(
                                        "ember: VM {name}: disk {}: written back to /{path} on the boot media",
                                        d.file
                                    );
                                    backed.push(BackedDisk::new(
                                        format!("VM {name}: disk {}", d.file),
                                        disk.clone(),
                                        extents,
                                    ));
                                }
                                Err(why) if !d.readonly => kprintln!(
                                    "ember: WARNING: VM {name}: disk {}: writes are kept in memory only (lost when the host restarts): {why}",
                                    d.file
                                ),
                                Err(_) => {}
                            }
                            (disk, d.readonly)
                        })
                        .collect(),
                    def: l.definition,
                    kernel: l.kernel,
                    initrd: l.initrd,
                    console: Arc::new(Mutex::new(ConsoleLog::default())),
                    input: Mutex::new(VecDeque::new()),
                    status: Mutex::new(Status {
                        state: VmState::Stopped,
                        started_ms: None,
                        exit_reason: None,
                    }),
                    stop: AtomicBool::new(false),
                    reset: AtomicBool::new(false),
                    exits: AtomicU64::new(0),
                    exit_counts: Default::default(),
                    interrupts: AtomicU64::new(0),
                    resets: AtomicU64::new(0),
                    overhead: AtomicU64::new(0),
                    failed: AtomicBool::new(false),
                    failed_on: AtomicUsize::new(0),
                })),
                Err(reason) => {
                    Entry::Invalid { name: i.dir.rsplit('/').next().unwrap_or(&i.dir).to_string(), reason }
                }
            })
            .collect();
        let (unavailable, asids) = match virtualization {
            Ok(a) => (None, a.max(2)),
            Err(why) => (Some(why), 2),
        };
        Hypervisor { vms, unavailable, next_asid: 2, asids, writer: Some(DiskWriter(Writeback::new(backed))) }
    }

    /// The write-back of the VMs' disks, for the management loop (once).
    pub fn take_disk_writer(&mut self) -> Option<DiskWriter> {
        self.writer.take()
    }

    fn find(&self, name: &str) -> Option<&Entry> {
        self.vms.iter().find(|e| match e {
            Entry::Vm(v) => v.def.name == name,
            Entry::Invalid { name: n, .. } => n == name,
        })
    }

    /// Starts every VM marked `autostart`, in order.
    pub fn autostart(&mut self, now_ms: u64) {
        let names: Vec<String> = self
            .vms
            .iter()
            .filter_map(|e| match e {
                Entry::Vm(v) if v.def.autostart => Some(v.def.name.clone()),
                _ => None,
            })
            .collect();
        for n in names {
            match self.act(&n, VmAction::Start, now_ms) {
                Ok(()) => kprintln!("ember: VM {n}: started (autostart)"),
                Err(e) => kprintln!("ember: ERROR: VM {n}: autostart failed: {}", error_text(&e)),
            }
        }
    }

    fn start(&mut self, vm: Arc<VmShared>, now_ms: u64) -> Result<(), VmError> {
        if let Some(why) = &self.unavailable {
            return Err(VmError::Unavailable(format!("virtual machines cannot run on this host: {why}")));
        }
        if workers().iter().all(|w| w.dead.load(Ordering::Acquire)) {
            return Err(VmError::Unavailable(String::from(
                "no CPU is free to run virtual machines (the bootstrap CPU runs the management plane; VMs need a second CPU with SVM)",
            )));
        }
        if vm.failed.load(Ordering::Acquire) {
            return Err(VmError::Conflict(failed_text(&vm)));
        }
        {
            let st = lock_bounded(&vm.status)
                .ok_or_else(|| VmError::Unavailable(format!("VM {} does not answer", vm.def.name)))?;
            if st.state != VmState::Stopped {
                return Err(VmError::Conflict(format!(
                    "VM {} is already {}",
                    vm.def.name,
                    st.state.as_str()
                )));
            }
        }
        // ASID 1 is the boot probe's; vCPUs take 2.. in turn (every slice flushes its TLB entries).
        let asids = (0..vm.def.vcpus)
            .map(|_| {
                let a = self.next_asid;
                self.next_asid = if self.next_asid + 1 >= self.asids { 2 } else { self.next_asid + 1 };
                a
            })
            .collect();
        let jobs = build_run(&vm, asids).map_err(VmError::Unavailable)?;
        vm.stop.store(false, Ordering::Release);
        vm.reset.store(false, Ordering::Release);
        for c in [&vm.exits, &vm.interrupts, &vm.resets].into_iter().chain(&vm.exit_counts) {
            c.store(0, Ordering::Relaxed);
        }
        let Some(mut st) = lock_bounded(&vm.status) else {
            return Err(VmError::Unavailable(format!("VM {} does not answer", vm.def.name)));
        };
        *st = Status { state: VmState::Starting, started_ms: Some(now_ms), exit_reason: None };
        drop(st);
        kprintln!(
            "ember: VM {}: starting ({} vCPUs, {} MiB, kernel {} bytes, command line \"{}\")",
            vm.def.name,
            vm.def.vcpus,
            vm.def.memory_mib,
            vm.kernel.len(),
            vm.def.cmdline
        );
        match lock_bounded(&QUEUE) {
            Some(mut q) => q.extend(jobs.into_iter().map(Box::new)),
            None => {
                if let Some(mut st) = lock_bounded(&vm.status) {
                    st.state = VmState::Stopped;
                }
                return Err(VmError::Unavailable(String::from("the CPUs that run VMs do not answer")));
            }
        }
        kick_idle();
        Ok(())
    }
}

/// Why a failed VM cannot run.
fn failed_text(vm: &VmShared) -> String {
    format!("VM {} failed ({}); it can run again after the host restarts", vm.def.name, failure_of(vm))
}

fn error_text(e: &VmError) -> String {
    match e {
        VmError::NotFound => String::from("no such VM"),
        VmError::Conflict(w) | VmError::Unavailable(w) => w.clone(),
    }
}

impl VmService for Hypervisor {
    fn list(&self, now_ms: u64) -> Vec<VmSummary> {
        self.vms
            .iter()
            .map(|e| match e {
                Entry::Vm(v) => {
                    // A VM whose CPU stopped (perhaps holding its locks) is reported failed.
                    let failed = v.failed.load(Ordering::Acquire);
                    let st = if failed { None } else { lock_bounded(&v.status) };
                    let (state, started_ms, exit_reason) = match st.as_deref() {
                        Some(st) => (st.state, st.started_ms, st.exit_reason.clone()),
                        None => (VmState::Failed, None, Some(failure_of(v))),
                    };
                    VmSummary {
                        name: v.def.name.clone(),
                        state,
                        vcpus: v.def.vcpus,
                        memory_mib: v.def.memory_mib,
                        autostart: v.def.autostart,
                        console_port: v.def.console_port,
                        uptime_ms: started_ms.map(|s| now_ms.saturating_sub(s)),
                        exit_reason,
                        exits: v.exits.load(Ordering::Relaxed),
                        exit_counts: vcpu::EXIT_KINDS
                            .iter()
                            .zip(&v.exit_counts)
                            .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
                            .collect(),
                        interrupts: v.interrupts.load(Ordering::Relaxed),
                        resets: v.resets.load(Ordering::Relaxed),
                        overhead_bytes: v.overhead.load(Ordering::Relaxed),
                    }
                }
                Entry::Invalid { name, reason } => VmSummary {
                    name: name.clone(),
                    state: VmState::Invalid,
                    vcpus: 0,
                    memory_mib: 0,
                    autostart: false,
                    console_port: None,
                    uptime_ms: None,
                    exit_reason: Some(reason.clone()),
                    exits: 0,
                    exit_counts: Vec::new(),
                    interrupts: 0,
                    resets: 0,
                    overhead_bytes: 0,
                },
            })
            .collect()
    }

    fn console(&self, name: &str) -> Option<Vec<u8>> {
        match self.find(name)? {
            Entry::Vm(v) if v.failed.load(Ordering::Acquire) => Some(Vec::new()),
            Entry::Vm(v) => Some(lock_bounded(&v.console).map(|c| c.contents()).unwrap_or_default()),
            Entry::Invalid { .. } => Some(Vec::new()),
        }
    }

    fn console_since(&self, name: &str, from: u64, max: usize) -> (Vec<u8>, u64) {
        match self.find(name) {
            Some(Entry::Vm(v)) if !v.failed.load(Ordering::Acquire) => {
                lock_bounded(&v.console).map_or((Vec::new(), from), |c| c.since(from, max))
            }
            _ => (Vec::new(), from),
        }
    }

    fn console_input(&mut self, name: &str, bytes: &[u8]) -> usize {
        let Some(Entry::Vm(v)) = self.find(name) else { return 0 };
        if v.failed.load(Ordering::Acquire) {
            return 0;
        }
        let Some(mut input) = lock_bounded(&v.input) else { return 0 };
        let n = bytes.len().min(CONSOLE_INPUT_BYTES.saturating_sub(input.len()));
        input.extend(&bytes[..n]);
        drop(input);
        if n > 0 {
            kick_vcpus(v, 1);
        }
        n
    }

    fn act(&mut self, name: &str, action: VmAction, now_ms: u64) -> Result<(), VmError> {
        let vm = match self.find(name).ok_or(VmError::NotFound)? {
            Entry::Vm(v) => v.clone(),
            Entry::Invalid { reason, .. } => {
                return Err(VmError::Conflict(format!("VM {name} cannot run: {reason}")))
            }
        };
        match action {
            VmAction::Start => self.start(vm, now_ms),
            VmAction::Stop | VmAction::Reset => {
                if vm.failed.load(Ordering::Acquire) {
                    return Err(VmError::Conflict(failed_text(&vm)));
                }
                let state = lock_bounded(&vm.status).map_or(VmState::Running, |s| s.state);
                if state == VmState::Stopped {
                    return Err(VmError::Conflict(format!("VM {name} is not running")));
                }
                let flag = if action == VmAction::Stop { &vm.stop } else { &vm.reset };
                flag.store(true, Ordering::Release);
                kick_vcpus(&vm, u64::MAX);
                if action == VmAction::Stop {
                    // The run ends at its CPU's next look (a kick brings it there at once).
                    for _ in 0..2000 {
                        if lock_bounded(&vm.status).is_none_or(|s| s.state == VmState::Stopped)
                            || vm.failed.load(Ordering::Acquire)
                        {
                            break;
                        }
                        timer::delay_us(500);
                    }
                }
                Ok(())
            }
        }
    }
}
