//! Running VMs: the run queue, the VM lifecycle and the work loop of the CPUs that run vCPUs,
//! vendor-neutral and host-tested. The appliance plugs in the hardware through two traits:
//! [`Backend`] (hardware virtualization: AMD SVM now, Intel VMX later - a vCPU with its nested page
//! tables, binding it to a CPU, its entry state) and [`Platform`] (the clock, the one-shot timer,
//! waiting for an interrupt, kicking a CPU, guest RAM, the log).
//!
//! - [`Runtime::start`] takes the VM's RAM from the platform, sets up its devices ([`Board`]:
//!   chipset, I/O APIC, a local APIC per vCPU, virtio disks), the nested page tables and a vCPU per
//!   virtual CPU, and queues one job per vCPU.
//! - Each CPU that runs vCPUs is a [`Worker`]: it takes a queued job (the first with work due: not
//!   halted, an interrupt or STARTUP IPI for it, its timer expired) and runs it with the generic
//!   vCPU loop ([`vcpu::run`]) for a time slice of [`SLICE_NS`], then puts it back, so any number of
//!   vCPUs share the CPUs. A halted vCPU, or one spinning on PAUSE (SMP guests only), gives way at
//!   once to a job with work due. The timer brings a CPU back when its guest's next timer is due or
//!   its slice ends; a kick when another vCPU sent it an interrupt, or there is new work or a stop.
//!   Kicks are targeted: they go to the CPUs running the vCPUs concerned, and to the idle CPUs only
//!   when one of those vCPUs waits in the queue.
//! - vCPU 0 zeroes the RAM and loads the ACPI tables (with a MADT listing the vCPUs) and the kernel
//!   in its first slice; the others wait for the guest's INIT/STARTUP IPIs and start in real mode at
//!   the guest's trampoline, as on a PC.
//! - A run ends when the guest powers off, faults (triple fault, an access nothing answers) or is
//!   stopped: the first vCPU to end it gives the reason, the others stop at their next look, and the
//!   last one gives the RAM back and sets the VM's status. A guest reset ends the run the same way
//!   and starts a new one from the kernel.
//! - A CPU that panics while running a vCPU ([`Runtime::cpu_panicked`]) fails only that VM: the VM
//!   cannot run again before the host restarts, the other VMs and the management plane go on.

use crate::acpi;
use crate::board::Board;
use crate::bus::MmioBus;
use crate::cpuid::{guest_cpuid, Leaf, VcpuIdentity};
use crate::linux::{self, LinuxEntry};
use crate::machine::Machine;
use crate::memory::{GuestMemory, SplitRam, HIGH_RAM_START};
use crate::msr::VcpuMsrs;
use crate::npt::{EntryFormat, NestedPageTables, TableFrames};
use crate::pvclock::GuestClock;
use crate::serial::{ConsoleLog, CONSOLE_LOG_BYTES};
use crate::vcpu::{self, Host, LoopState, RunEnd, RunStats, Vcpu, VmParts};
use crate::virtio_blk::{self, Backing, VirtioBlk};
use crate::virtio_net::{NetPort, VirtioNet};
use crate::{GuestPhysAddr, HostPhysAddr};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use ember_storage::vmdef::VmDefinition;
use spin::{Mutex, MutexGuard};

/// A vCPU's time slice when other work waits for the CPU.
pub const SLICE_NS: u64 = 10_000_000;
/// Longest a CPU sleeps without looking at its work (stops come with a kick; this is a backstop).
const MAX_SLEEP_NS: u64 = 50_000_000;
/// Console input waiting for a guest, at most (the TCP client is held back beyond).
pub const CONSOLE_INPUT_BYTES: usize = 4096;
/// Guest RAM is taken in 2 MiB-aligned runs (so nested paging uses 2 MiB pages).
pub const RAM_ALIGN: u64 = 2 << 20;
/// CPUs that run vCPUs, at most (more are left idle).
pub const MAX_WORKERS: usize = 256;
/// Where a VM's virtio-mmio devices sit (one 4 KiB window each, above the RAM limit: the disks,
/// then the NICs) and the ISA interrupt lines they take in turn (9 is the ACPI SCI, 4 COM1, 0-2
/// and 8 are taken on every PC); past eight devices lines are shared (virtio-mmio's interrupts are
/// level-triggered and shareable).
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
const VIRTIO_IRQS: [u8; 8] = [5, 10, 11, 12, 15, 14, 3, 7];
/// How long the management plane waits for a lock a CPU running vCPUs holds (that CPU may have
/// stopped holding it).
const LOCK_WAIT_NS: u64 = 50_000_000;

/// A kernel or initrd in host memory the VM owns (given back when the VM is dropped).
pub type BootFile = Box<dyn core::ops::Deref<Target = [u8]> + Send + Sync>;

/// An in-memory disk image (a VM's disks are normally [`Backing::Queue`]: files on a datastore).
pub type Image = Vec<u8>;

/// A hardware-virtualization backend: AMD SVM (in the platform crate), Intel VMX later.
pub trait Backend: Send + Sync {
    /// One physical CPU with virtualization enabled (SVM: EFER.SVME and the host save area; VMX:
    /// VMXON). Made on each CPU that runs vCPUs, by the platform; it never leaves that CPU.
    type Cpu;
    /// A vCPU: the guest state (VMCB, VMCS) with its intercept maps and FPU state.
    type Vcpu: Vcpu + Send;
    /// The nested page tables' entry format (AMD NPT, Intel EPT).
    type Format: EntryFormat + Send;
    /// Frames for nested page tables.
    type Frames: TableFrames + Default + Send;

    /// Virtualization on the calling CPU (once per CPU).
    fn enable_cpu(&self) -> Result<Self::Cpu, String>;
    /// A vCPU of the VM whose nested page tables start at `tables`, tagged with `tag` (SVM ASID,
    /// VMX VPID).
    fn create_vcpu(&self, tag: u32, tables: HostPhysAddr) -> Result<Self::Vcpu, String>;
    /// Puts the vCPU in the Linux 64-bit boot protocol's entry state.
    fn enter_linux(&self, vcpu: &mut Self::Vcpu, entry: &LinuxEntry);
    /// Makes the vCPU run on the calling CPU (its FPU state and debug registers loaded there).
    fn bind(&self, vcpu: &mut Self::Vcpu, cpu: &Self::Cpu);
    /// The vCPU leaves the calling CPU (its state saved for the next `bind`).
    fn unbind(&self, vcpu: &mut Self::Vcpu);
    /// The host CPU's CPUID, which the guest's answers are cut from.
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> Leaf;
    /// Host bytes a vCPU takes (guest state, intercept maps, FPU state), for the VM's overhead.
    fn vcpu_bytes(&self) -> u64;
    /// Host bytes the nested page tables in `frames` take.
    fn table_bytes(&self, frames: &Self::Frames) -> u64;
    /// vCPU tags available (tags `2..limit` are handed out in turn; 0 is the host's, 1 the boot
    /// probe's).
    fn tag_limit(&self) -> u32;
}

/// What the runtime needs from the platform beyond the backend.
pub trait Platform: Send + Sync {
    type Backend: Backend;
    /// One run's guest RAM (given back to the host when dropped).
    type Ram: GuestMemory + Send + 'static;

    fn backend(&self) -> &Self::Backend;
    /// A monotonic clock, ns: the host's TSC (0 when it started counting) at [`Platform::tsc_hz`].
    fn now_ns(&self) -> u64;
    /// The host's TSC frequency (what the guests' paravirtual clock is scaled by); 0 when it is
    /// not known (no paravirtual clock is offered then).
    fn tsc_hz(&self) -> u64;
    /// The calling CPU's one-shot timer interrupts it in `ns` nanoseconds.
    fn arm_timer_ns(&self, ns: u64);
    /// Waits for an interrupt (a kick or the timer) on the calling CPU. Interrupts are off around
    /// the call; the wait enables them and halts atomically, so a kick sent after the caller last
    /// looked at its work is not lost.
    fn wait_for_interrupt(&self);
    /// Interrupts the CPU with APIC ID `cpu` (it looks at its work).
    fn kick(&self, cpu: u32);
    /// The calling CPU switches from one VM's vCPUs to another's (IBPB: no branch predictions
    /// cross VMs).
    fn switch_vm(&self);
    /// `bytes` of guest RAM, aligned to [`RAM_ALIGN`], and its host-physical address.
    fn allocate_ram(&self, bytes: u64) -> Option<(Self::Ram, HostPhysAddr)>;
    /// A line for the host log.
    fn log(&self, line: &str);
}

/// A VM's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmState {
    /// Defined, not running (never started, or stopped: see the exit reason).
    #[default]
    Stopped,
    /// Being set up (memory, kernel) or waiting for a CPU.
    Starting,
    Running,
    /// The definition or its files cannot be used; the exit reason says why.
    Invalid,
    /// The CPU running one of its vCPUs stopped (a fault in the hypervisor's own code for this
    /// VM); the exit reason says what happened. It cannot be started again before the host
    /// restarts (its memory and devices stay with the stopped CPU).
    Failed,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Invalid => "invalid",
            VmState::Failed => "failed",
        }
    }
}

/// Why a lifecycle request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmError {
    NotFound,
    /// Not possible in this state; the text says why.
    Conflict(String),
    /// The host cannot do it (no virtualization, no memory); the text says why.
    Unavailable(String),
}

impl core::fmt::Display for VmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VmError::NotFound => write!(f, "no such VM"),
            VmError::Conflict(w) | VmError::Unavailable(w) => write!(f, "{w}"),
        }
    }
}

/// A VM as the runtime knows it: its definition, its files in host memory, its console, its state.
pub struct Vm {
    pub def: VmDefinition,
    kernel: BootFile,
    initrd: Option<BootFile>,
    /// The disks (images in host memory, or queues to files on datastores) and whether each is
    /// read-only.
    disks: Vec<(Backing<Image>, bool)>,
    /// The NICs' ports, in the order of the definition.
    nics: Vec<Arc<NetPort>>,
    console: Arc<Mutex<ConsoleLog>>,
    /// Bytes for the guest's COM1 receiver (from the TCP console), waiting for room in its FIFO.
    input: Mutex<VecDeque<u8>>,
    status: Mutex<Status>,
    stop: AtomicBool,
    /// Why the host stops it (the log and report say so; default "stopped through the API").
    stop_reason: Mutex<Option<String>>,
    reset: AtomicBool,
    /// The host pressed its power button ([`Runtime::press_power_button`]); its machine takes it.
    power_button: Arc<AtomicBool>,
    /// The host completed disk requests of its devices ([`Runtime::wake_for_io`]): vCPU 0, even
    /// halted, services the devices (which complete them and raise their interrupts).
    io_wake: AtomicBool,
    exits: AtomicU64,
    /// Exits by kind ([`vcpu::EXIT_KINDS`]).
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

/// What the management plane shows of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmReport {
    pub state: VmState,
    /// When it started (the caller's clock, ms), while it runs.
    pub started_ms: Option<u64>,
    /// Why it last stopped (or failed).
    pub exit_reason: Option<String>,
    pub exits: u64,
    /// The exits by kind, in the order of [`vcpu::EXIT_KINDS`].
    pub exit_counts: Vec<(&'static str, u64)>,
    pub interrupts: u64,
    pub resets: u64,
    /// Host memory the hypervisor holds for the VM beyond its RAM, bytes.
    pub overhead_bytes: u64,
}

impl Vm {
    /// The same VM writing its console output into the log of `earlier` (a VM's runs are new
    /// `Vm`s; its console log carries on across them).
    pub fn continuing_console_of(mut self, earlier: &Vm) -> Vm {
        self.console = earlier.console.clone();
        self
    }

    /// A stopped VM: `kernel` and `initrd` stay in host memory, `disks` are its virtio disks (and
    /// whether each is read-only), in the order of the definition.
    pub fn new(
        def: VmDefinition,
        kernel: BootFile,
        initrd: Option<BootFile>,
        disks: Vec<(Backing<Image>, bool)>,
    ) -> Vm {
        Vm {
            def,
            kernel,
            initrd,
            disks,
            nics: Vec::new(),
            console: Arc::new(Mutex::new(ConsoleLog::default())),
            input: Mutex::new(VecDeque::new()),
            status: Mutex::new(Status { state: VmState::Stopped, started_ms: None, exit_reason: None }),
            stop: AtomicBool::new(false),
            stop_reason: Mutex::new(None),
            reset: AtomicBool::new(false),
            power_button: Arc::new(AtomicBool::new(false)),
            io_wake: AtomicBool::new(false),
            exits: AtomicU64::new(0),
            exit_counts: Default::default(),
            interrupts: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            overhead: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            failed_on: AtomicUsize::new(0),
        }
    }

    /// The same VM with virtio NICs plugged into `ports`.
    pub fn with_nics(mut self, ports: Vec<Arc<NetPort>>) -> Vm {
        self.nics = ports;
        self
    }

    /// Its NICs' ports.
    pub fn nics(&self) -> &[Arc<NetPort>] {
        &self.nics
    }

    /// Whether a CPU stopped while running it ([`Runtime::cpu_panicked`]).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The virtio-mmio devices as its DSDT describes them (guests find them through ACPI).
    fn virtio_devices(&self) -> Vec<acpi::VirtioMmioDevice> {
        (0..self.disks.len().saturating_add(self.nics.len()))
            .map(|i| acpi::VirtioMmioDevice {
                base: mmio_base(i) as u32,
                len: virtio_blk::MMIO_LEN as u32,
                irq: virtio_irq(i),
            })
            .collect()
    }

    /// Zeroes the RAM and loads the firmware tables and kernel; returns the vCPU's entry state.
    fn load(&self, ram: &mut dyn GuestMemory) -> Result<LinuxEntry, String> {
        ram.zero();
        acpi::write_tables(ram, self.def.vcpus as u8, &self.virtio_devices())
            .map_err(|e| format!("ACPI tables: {e}"))?;
        let image =
            linux::BzImage::parse(&self.kernel).map_err(|e| format!("kernel {}: {e}", self.def.kernel))?;
        linux::load(ram, &image, self.initrd.as_deref().map(|i| &**i), &self.def.cmdline)
            .map_err(|e| format!("kernel {}: {e}", self.def.kernel))
    }

    /// The devices in its MMIO space: a virtio block device per disk, then a virtio network
    /// device per NIC.
    fn mmio_devices(&self) -> Result<MmioBus, String> {
        let mut bus = MmioBus::new();
        for (i, (disk, readonly)) in self.disks.iter().enumerate() {
            bus.add(
                mmio_base(i),
                virtio_blk::MMIO_LEN,
                Box::new(VirtioBlk::with_backing(disk.clone(), *readonly, virtio_irq(i))),
            )?;
        }
        for (k, port) in self.nics.iter().enumerate() {
            let i = self.disks.len().saturating_add(k);
            bus.add(
                mmio_base(i),
                virtio_blk::MMIO_LEN,
                Box::new(VirtioNet::new(port.clone(), virtio_irq(i))),
            )?;
        }
        Ok(bus)
    }
}

/// The interrupt line of virtio device `i`.
fn virtio_irq(i: usize) -> u8 {
    VIRTIO_IRQS.get(i.checked_rem(VIRTIO_IRQS.len()).unwrap_or(0)).copied().unwrap_or(5)
}

/// The MMIO window of virtio device `i`.
fn mmio_base(i: usize) -> u64 {
    VIRTIO_MMIO_BASE.saturating_add(0x1000u64.saturating_mul(i as u64))
}

/// A fixed buffer for a panic message (the heap may be what failed).
struct FailureText {
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
            n = n.saturating_sub(1);
        }
        if let (Some(dst), Some(src)) = (self.buf.get_mut(..n), text.as_bytes().get(..n)) {
            dst.copy_from_slice(src);
            self.len = n;
        }
    }

    fn as_str(&self) -> &str {
        self.buf.get(..self.len).and_then(|b| core::str::from_utf8(b).ok()).unwrap_or("")
    }
}

/// What one CPU that runs vCPUs is doing, for targeted kicks: a guest's IPIs interrupt only the CPU
/// running the vCPU they are for (or, when that vCPU waits in the queue, the CPUs that have nothing
/// to do).
struct WorkerSlot {
    apic_id: AtomicU32,
    /// The VM (`Arc::as_ptr` of its [`Vm`]) whose vCPU runs here, 0 for none.
    vm: AtomicUsize,
    vcpu: AtomicUsize,
    /// The CPU waits for work: no job, or its vCPU halted.
    idle: AtomicBool,
    /// The VM whose vCPU runs here (for the panic handler: which VM failed).
    current: Mutex<Option<Arc<Vm>>>,
    /// The CPU stopped (a panic while it ran a vCPU): it runs nothing any more.
    dead: AtomicBool,
    /// What stopped it (written by the panic handler, which must not allocate).
    failure: Mutex<FailureText>,
}

impl WorkerSlot {
    fn new() -> Self {
        WorkerSlot {
            apic_id: AtomicU32::new(0),
            vm: AtomicUsize::new(0),
            vcpu: AtomicUsize::new(0),
            idle: AtomicBool::new(true),
            current: Mutex::new(None),
            dead: AtomicBool::new(false),
            failure: Mutex::new(FailureText::new()),
        }
    }
}

/// How a run ends, once one of its vCPUs (or the management plane) decided it.
enum Ending {
    /// The guest or the API reset the VM: a new run starts from its kernel.
    Reset,
    /// The VM stops; the reason goes to the log and the API.
    Stop(String),
}

/// One run of a VM, from its start (or a reset) to its end: what its vCPUs share.
struct Run<B: Backend> {
    vm: Arc<Vm>,
    board: Mutex<Board>,
    /// The nested page tables every vCPU of the run uses (kept until the run is dropped).
    _paging: Mutex<(NestedPageTables<B::Format>, B::Frames)>,
    /// The tag of each vCPU (a reset's new run takes the same).
    tags: Vec<u32>,
    ending: Mutex<Option<Ending>>,
    /// `ending` is set.
    ended: AtomicBool,
    /// vCPU jobs not finished yet.
    live: AtomicUsize,
    /// vCPUs (bit `i`: vCPU `i`) that received an interrupt or a start-up IPI since they last looked.
    wakes: AtomicU64,
    /// The kernel is in RAM (loaded by vCPU 0 in its first slice).
    loaded: AtomicBool,
}

/// One vCPU of a run, queued for (or running on) a worker.
struct Job<B: Backend> {
    run: Arc<Run<B>>,
    index: usize,
    vcpu: B::Vcpu,
    msrs: VcpuMsrs,
    stats: RunStats,
    state: LoopState,
}

fn bit(i: usize) -> u64 {
    1u64.checked_shl(i as u32).unwrap_or(0)
}

impl<B: Backend> Job<B> {
    /// Whether the job has work now: it is not halted, or something arrived for it, or its timer
    /// fired, or its run is ending.
    fn due(&self, now: u64) -> bool {
        let run = &self.run;
        !self.state.halted
            || run.wakes.load(Ordering::Acquire) & bit(self.index) != 0
            || self.state.next_timer.is_some_and(|t| t <= now)
            || run.ended.load(Ordering::Acquire)
            || run.vm.stop.load(Ordering::Acquire)
            || run.vm.reset.load(Ordering::Acquire)
            || run.vm.power_button.load(Ordering::Acquire)
            || (self.index == 0 && run.vm.io_wake.load(Ordering::Acquire))
    }
}

type Queue<P> = Mutex<VecDeque<Box<Job<<P as Platform>::Backend>>>>;

/// The runtime: the run queue, the CPUs that run vCPUs, the vCPU tags.
pub struct Runtime<P: Platform> {
    platform: P,
    queue: Queue<P>,
    slots: Vec<WorkerSlot>,
    workers: AtomicUsize,
    /// Wall-clock time (s since 1970) at clock 0, for the guests' CMOS clocks.
    wall_base: i64,
    /// What the guests' paravirtual clock is made of.
    clock: GuestClock,
    /// Why no VM can run on this host, if none can.
    unavailable: Mutex<Option<String>>,
    /// The next vCPU tag to hand out.
    next_tag: Mutex<u32>,
    /// `ember.selftest=vm-panic`: panic in the first VM with a disk, 15 s after it starts.
    inject_panic: AtomicBool,
}

/// Whether the host's TSC is invariant (CPUID 0x80000007 EDX bit 8).
fn invariant_tsc(backend: &impl Backend) -> bool {
    backend.host_cpuid(0x8000_0000, 0).eax >= 0x8000_0007
        && backend.host_cpuid(0x8000_0007, 0).edx & (1 << 8) != 0
}

impl<P: Platform> Runtime<P> {
    /// The runtime on `platform`; `wall_clock`: the time of day (s since 1970) now. No VM starts
    /// before [`Runtime::set_unavailable`] says whether VMs can run here.
    pub fn new(platform: P, wall_clock: Option<i64>) -> Self {
        let now_s = platform.now_ns() / 1_000_000_000;
        let wall = wall_clock.unwrap_or(0).max(0);
        let clock = GuestClock {
            tsc_hz: platform.tsc_hz(),
            wall_base: wall.saturating_sub(now_s as i64),
            invariant_tsc: invariant_tsc(platform.backend()),
        };
        Runtime {
            platform,
            queue: Mutex::new(VecDeque::new()),
            slots: (0..MAX_WORKERS).map(|_| WorkerSlot::new()).collect(),
            workers: AtomicUsize::new(0),
            wall_base: wall.saturating_sub(now_s as i64),
            clock,
            unavailable: Mutex::new(Some(String::from("the hardware virtualization check has not run yet"))),
            next_tag: Mutex::new(2),
            inject_panic: AtomicBool::new(false),
        }
    }

    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Why VMs cannot run on this host (no hardware virtualization), or `None`: they can.
    pub fn set_unavailable(&self, why: Option<String>) {
        *self.unavailable.lock() = why;
    }

    /// Arms `ember.selftest=vm-panic`.
    pub fn inject_vm_panic(&self) {
        self.inject_panic.store(true, Ordering::Release);
    }

    fn workers(&self) -> &[WorkerSlot] {
        let n = self.workers.load(Ordering::Acquire).min(MAX_WORKERS);
        self.slots.get(..n).unwrap_or(&[])
    }

    /// Locks `m` if that is possible within [`LOCK_WAIT_NS`]: the management plane never waits
    /// without bound on a lock a CPU running vCPUs holds (that CPU may have stopped holding it).
    fn lock_bounded<'m, T>(&self, m: &'m Mutex<T>) -> Option<MutexGuard<'m, T>> {
        let deadline = self.platform.now_ns().saturating_add(LOCK_WAIT_NS);
        loop {
            if let Some(g) = m.try_lock() {
                return Some(g);
            }
            if self.platform.now_ns() > deadline {
                return None;
            }
            core::hint::spin_loop();
        }
    }

    fn kick_cpu(&self, slot: &WorkerSlot) {
        self.platform.kick(slot.apic_id.load(Ordering::Relaxed));
    }

    /// Wakes the workers that wait for work (new work was queued).
    fn kick_idle(&self) {
        for w in self.workers().iter().filter(|w| w.idle.load(Ordering::Acquire)) {
            self.kick_cpu(w);
        }
    }

    /// Wakes every worker (a pass of the disk write-back completed flushes).
    pub fn kick_workers(&self) {
        for w in self.workers() {
            self.kick_cpu(w);
        }
    }

    /// Something arrived for vCPUs `mask` of VM `vm` (an interrupt, a stop): the CPUs running them
    /// are kicked, and if any of them waits in the queue, the idle CPUs too.
    fn kick_vcpus(&self, vm: &Vm, mask: u64) {
        let id = vm as *const Vm as usize;
        let mut running = 0u64;
        for w in self.workers() {
            let v = w.vcpu.load(Ordering::Acquire);
            if w.vm.load(Ordering::Acquire) == id && mask & bit(v) != 0 {
                running |= bit(v);
                self.kick_cpu(w);
            }
        }
        if mask & !running != 0 {
            self.kick_idle();
        }
    }

    /// Why a failed VM failed (the panic of the CPU that ran it).
    fn failure_of(&self, vm: &Vm) -> String {
        let what = vm
            .failed_on
            .load(Ordering::Acquire)
            .checked_sub(1)
            .and_then(|i| self.slots.get(i))
            .and_then(|slot| self.lock_bounded(&slot.failure).map(|f| String::from(f.as_str())));
        match what {
            Some(what) => format!("the CPU running it stopped: {what}"),
            None => String::from("the CPU running it does not answer"),
        }
    }

    /// Why a failed VM cannot run.
    fn failed_text(&self, vm: &Vm) -> String {
        format!(
            "VM {} failed ({}); it can run again after the host restarts",
            vm.def.name,
            self.failure_of(vm)
        )
    }

    /// The panic handler's question: is CPU `id` running a vCPU? If so, that VM is marked failed
    /// with `what` (its vCPUs elsewhere stop at their next look, the management plane reports it)
    /// and returned: the caller stops only this CPU. Allocates nothing and takes no lock it could
    /// wait on.
    pub fn cpu_panicked(&self, id: u32, what: &str) -> Option<Arc<Vm>> {
        let (index, slot) =
            self.workers().iter().enumerate().find(|(_, w)| w.apic_id.load(Ordering::Relaxed) == id)?;
        if slot.vm.load(Ordering::Acquire) == 0 {
            return None;
        }
        let vm = slot.current.try_lock()?.clone()?;
        slot.dead.store(true, Ordering::Release);
        if let Some(mut f) = slot.failure.try_lock() {
            f.set(what);
        }
        vm.failed_on.store(index.saturating_add(1), Ordering::Release);
        vm.failed.store(true, Ordering::Release);
        Some(vm)
    }

    /// Sets a run of `vm` up: its RAM, devices, nested page tables and a job per vCPU (vCPU `i`
    /// tagged with `tags[i]`). Called by the management plane for a start and by a worker after a
    /// reset.
    fn build_run(&self, vm: &Arc<Vm>, tags: Vec<u32>) -> Result<Vec<Job<P::Backend>>, String> {
        let backend = self.platform.backend();
        // The kernel's header is checked now (a bad image is refused at once); zeroing the RAM and
        // loading the kernel happen in vCPU 0's first slice, on a worker.
        linux::BzImage::parse(&vm.kernel).map_err(|e| format!("kernel {}: {e}", vm.def.kernel))?;
        let bytes = u64::from(vm.def.memory_mib).saturating_mul(1 << 20);
        let (ram, base) = self.platform.allocate_ram(bytes).ok_or_else(|| {
            format!("not enough free host memory for {} MiB of guest RAM", vm.def.memory_mib)
        })?;
        let mmio = vm.mmio_devices()?;
        let mut frames = <P::Backend as Backend>::Frames::default();
        let mut tables = NestedPageTables::<<P::Backend as Backend>::Format>::new(&mut frames)
            .map_err(|e| e.to_string())?;
        // RAM below the MMIO window from 0, the rest from 4 GiB (`SplitRam`): one host run.
        let low = bytes.min(linux::MMIO_START);
        tables.map(&mut frames, GuestPhysAddr(0), base, low, true).map_err(|e| e.to_string())?;
        if bytes > low {
            let above = HostPhysAddr(base.0.saturating_add(low));
            tables
                .map(&mut frames, GuestPhysAddr(HIGH_RAM_START), above, bytes.saturating_sub(low), true)
                .map_err(|e| e.to_string())?;
        }
        let vcpus =
            tags.iter().map(|t| backend.create_vcpu(*t, tables.root())).collect::<Result<Vec<_>, _>>()?;
        let n = vcpus.len() as u64;
        // Per vCPU: guest state, the job, its local APIC; per VM: nested page tables, the console
        // log, the run with its devices.
        let per_vcpu = backend
            .vcpu_bytes()
            .saturating_add(core::mem::size_of::<Job<P::Backend>>() as u64)
            .saturating_add(core::mem::size_of::<crate::lapic::Lapic>() as u64);
        let overhead = n
            .saturating_mul(per_vcpu)
            .saturating_add(backend.table_bytes(&frames))
            .saturating_add(CONSOLE_LOG_BYTES as u64)
            .saturating_add(core::mem::size_of::<Run<P::Backend>>() as u64);
        vm.overhead.store(overhead, Ordering::Relaxed);
        let mut machine = Machine::new(self.wall_base, vm.console.clone());
        vm.power_button.store(false, Ordering::Release);
        machine.power_button = vm.power_button.clone();
        let run = Arc::new(Run {
            vm: vm.clone(),
            board: Mutex::new(Board::new(machine, vcpus.len(), mmio, Box::new(SplitRam::new(ram, low)))),
            _paging: Mutex::new((tables, frames)),
            tags,
            ending: Mutex::new(None),
            ended: AtomicBool::new(false),
            live: AtomicUsize::new(vcpus.len()),
            wakes: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
        });
        Ok(vcpus
            .into_iter()
            .enumerate()
            .map(|(index, vcpu)| Job {
                run: run.clone(),
                index,
                vcpu,
                msrs: VcpuMsrs::new(index as u32),
                stats: RunStats::default(),
                // Application processors wait for their STARTUP IPI.
                state: LoopState { halted: index > 0, next_timer: None },
            })
            .collect())
    }

    /// The next vCPU tags for a VM with `n` vCPUs (every slice flushes a vCPU's TLB entries, so
    /// tags are reused in turn).
    fn take_tags(&self, n: u32) -> Vec<u32> {
        let limit = self.platform.backend().tag_limit().max(3);
        let mut next = self.next_tag.lock();
        (0..n)
            .map(|_| {
                let t = *next;
                *next = if t.saturating_add(1) >= limit { 2 } else { t.saturating_add(1) };
                t
            })
            .collect()
    }

    /// Starts `vm` (stopped) at `now_ms` (the caller's clock): sets its run up and queues its vCPUs.
    pub fn start(&self, vm: &Arc<Vm>, now_ms: u64) -> Result<(), VmError> {
        let unavailable = self.lock_bounded(&self.unavailable).map(|u| u.clone());
        match unavailable {
            Some(None) => {}
            Some(Some(why)) => {
                return Err(VmError::Unavailable(format!("virtual machines cannot run on this host: {why}")))
            }
            None => return Err(VmError::Unavailable(String::from("the hypervisor does not answer"))),
        }
        if self.workers().iter().all(|w| w.dead.load(Ordering::Acquire)) {
            return Err(VmError::Unavailable(String::from(
                "no CPU is free to run virtual machines (the bootstrap CPU runs the management plane; VMs need a second CPU with hardware virtualization)",
            )));
        }
        if vm.failed() {
            return Err(VmError::Conflict(self.failed_text(vm)));
        }
        let busy = || VmError::Unavailable(format!("VM {} does not answer", vm.def.name));
        {
            let st = self.lock_bounded(&vm.status).ok_or_else(busy)?;
            if st.state != VmState::Stopped {
                return Err(VmError::Conflict(format!(
                    "VM {} is already {}",
                    vm.def.name,
                    st.state.as_str()
                )));
            }
        }
        let jobs = self.build_run(vm, self.take_tags(vm.def.vcpus)).map_err(VmError::Unavailable)?;
        vm.stop.store(false, Ordering::Release);
        vm.reset.store(false, Ordering::Release);
        if let Some(mut r) = self.lock_bounded(&vm.stop_reason) {
            *r = None;
        }
        for c in [&vm.exits, &vm.interrupts, &vm.resets].into_iter().chain(&vm.exit_counts) {
            c.store(0, Ordering::Relaxed);
        }
        *self.lock_bounded(&vm.status).ok_or_else(busy)? =
            Status { state: VmState::Starting, started_ms: Some(now_ms), exit_reason: None };
        self.platform.log(&format!(
            "ember: VM {}: starting ({} vCPUs, {} MiB, kernel {} bytes, command line \"{}\")",
            vm.def.name,
            vm.def.vcpus,
            vm.def.memory_mib,
            vm.kernel.len(),
            vm.def.cmdline
        ));
        match self.lock_bounded(&self.queue) {
            Some(mut q) => q.extend(jobs.into_iter().map(Box::new)),
            None => {
                if let Some(mut st) = self.lock_bounded(&vm.status) {
                    st.state = VmState::Stopped;
                }
                return Err(VmError::Unavailable(String::from("the CPUs that run VMs do not answer")));
            }
        }
        self.kick_idle();
        Ok(())
    }

    /// Asks the running `vm` to stop (`reset`: to start again from its kernel). The run ends at its
    /// CPUs' next look (a kick brings them there at once); [`Runtime::report`] says when.
    pub fn request(&self, vm: &Vm, reset: bool) -> Result<(), VmError> {
        if vm.failed() {
            return Err(VmError::Conflict(self.failed_text(vm)));
        }
        let state = self.lock_bounded(&vm.status).map_or(VmState::Running, |s| s.state);
        if state == VmState::Stopped {
            return Err(VmError::Conflict(format!("VM {} is not running", vm.def.name)));
        }
        let flag = if reset { &vm.reset } else { &vm.stop };
        flag.store(true, Ordering::Release);
        self.kick_vcpus(vm, u64::MAX);
        Ok(())
    }

    /// Stops the running `vm` (as [`Runtime::request`]) saying `reason` in its report.
    pub fn request_stop(&self, vm: &Vm, reason: &str) -> Result<(), VmError> {
        if let Some(mut r) = self.lock_bounded(&vm.stop_reason) {
            *r = Some(String::from(reason));
        }
        self.request(vm, false)
    }

    /// Presses the running `vm`'s ACPI power button: a guest that handles it shuts down and powers
    /// off (its run ends "the guest powered off"); one that does not goes on.
    pub fn press_power_button(&self, vm: &Vm) -> Result<(), VmError> {
        if vm.failed() {
            return Err(VmError::Conflict(self.failed_text(vm)));
        }
        let state = self.lock_bounded(&vm.status).map_or(VmState::Running, |s| s.state);
        if state == VmState::Stopped {
            return Err(VmError::Conflict(format!("VM {} is not running", vm.def.name)));
        }
        vm.power_button.store(true, Ordering::Release);
        self.kick_vcpus(vm, u64::MAX);
        Ok(())
    }

    /// The host completed requests of `vm`'s disks: its vCPU 0 services its devices at once, even
    /// when halted (its guest waits for the interrupt).
    pub fn wake_for_io(&self, vm: &Vm) {
        vm.io_wake.store(true, Ordering::Release);
        self.kick_vcpus(vm, 1);
    }

    /// The VM's state alone (no counters, nothing allocated: the management loop asks it of every
    /// running VM's disks and NICs on each pass). A VM whose CPU stopped is failed.
    pub fn state(&self, vm: &Vm) -> VmState {
        let st = if vm.failed() { None } else { self.lock_bounded(&vm.status) };
        st.map_or(VmState::Failed, |s| s.state)
    }

    /// The VM's state and counters.
    pub fn report(&self, vm: &Vm) -> VmReport {
        // A VM whose CPU stopped (perhaps holding its locks) is reported failed.
        let st = if vm.failed() { None } else { self.lock_bounded(&vm.status) };
        let (state, started_ms, exit_reason) = match st.as_deref() {
            Some(st) => (st.state, st.started_ms, st.exit_reason.clone()),
            None => (VmState::Failed, None, Some(self.failure_of(vm))),
        };
        VmReport {
            state,
            started_ms,
            exit_reason,
            exits: vm.exits.load(Ordering::Relaxed),
            exit_counts: vcpu::EXIT_KINDS
                .iter()
                .zip(&vm.exit_counts)
                .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
                .collect(),
            interrupts: vm.interrupts.load(Ordering::Relaxed),
            resets: vm.resets.load(Ordering::Relaxed),
            overhead_bytes: vm.overhead.load(Ordering::Relaxed),
        }
    }

    /// The VM's serial console, all that is kept.
    pub fn console(&self, vm: &Vm) -> Vec<u8> {
        if vm.failed() {
            return Vec::new();
        }
        self.lock_bounded(&vm.console).map(|c| c.contents()).unwrap_or_default()
    }

    /// The console's output after position `from`, at most `max` bytes, and the position after it.
    pub fn console_since(&self, vm: &Vm, from: u64, max: usize) -> (Vec<u8>, u64) {
        if vm.failed() {
            return (Vec::new(), from);
        }
        self.lock_bounded(&vm.console).map_or((Vec::new(), from), |c| c.since(from, max))
    }

    /// Input for the VM's COM1 receiver; returns how many bytes were taken (the rest waits).
    pub fn console_input(&self, vm: &Vm, bytes: &[u8]) -> usize {
        if vm.failed() {
            return 0;
        }
        let Some(mut input) = self.lock_bounded(&vm.input) else { return 0 };
        let n = bytes.len().min(CONSOLE_INPUT_BYTES.saturating_sub(input.len()));
        input.extend(bytes.iter().take(n));
        drop(input);
        if n > 0 {
            self.kick_vcpus(vm, 1);
        }
        n
    }

    /// The calling CPU (APIC ID `id`, virtualization enabled as `cpu`) becomes a worker; `None`
    /// when there are [`MAX_WORKERS`] already.
    pub fn worker(&self, id: u32, cpu: <P::Backend as Backend>::Cpu) -> Option<Worker<'_, P>> {
        let index = self.workers.load(Ordering::Acquire);
        let slot = self.slots.get(index)?;
        slot.apic_id.store(id, Ordering::Relaxed);
        self.workers.fetch_add(1, Ordering::AcqRel);
        Some(Worker { rt: self, slot, cpu, last_vm: 0 })
    }

    /// Whether a queued job has work now.
    fn others_due(&self, now: u64) -> bool {
        self.queue.lock().iter().any(|j| j.due(now))
    }

    /// The earliest timer of the queued jobs.
    fn queued_deadline(&self) -> Option<u64> {
        self.queue.lock().iter().filter_map(|j| j.state.next_timer).min()
    }

    /// The next job to run: the first that has work now, else the first.
    fn next_job(&self) -> Option<Box<Job<P::Backend>>> {
        let now = self.platform.now_ns();
        let mut q = self.queue.lock();
        // The vCPUs of a failed VM never run again (dropped outside the lock).
        let failed = if q.iter().any(|j| j.run.vm.failed()) {
            let (gone, keep): (VecDeque<_>, VecDeque<_>) =
                core::mem::take(&mut *q).into_iter().partition(|j| j.run.vm.failed());
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

    /// A VM's devices, locked, unless the VM failed (a CPU that stopped may hold the lock for good).
    fn board_of<'b>(vm: &Vm, board: &'b Mutex<Board>) -> Option<MutexGuard<'b, Board>> {
        loop {
            if let Some(b) = board.try_lock() {
                return Some(b);
            }
            if vm.failed() {
                return None;
            }
            core::hint::spin_loop();
        }
    }

    /// Records how `run` ends, unless a vCPU already did; tells the others.
    fn end_run(&self, run: &Run<P::Backend>, ending: Ending) {
        let mut e = run.ending.lock();
        if e.is_none() {
            *e = Some(ending);
            run.ended.store(true, Ordering::Release);
        }
        drop(e);
        self.kick_vcpus(&run.vm, u64::MAX);
    }

    /// A vCPU is done with its run; the last one ends the run: a reset starts a new run from the
    /// kernel, anything else stops the VM.
    fn finish_job(&self, job: Box<Job<P::Backend>>) {
        let run = job.run.clone();
        drop(job);
        if run.live.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let ending = run.ending.lock().take().unwrap_or(Ending::Stop(String::from("all vCPUs ended")));
        let vm = run.vm.clone();
        let tags = run.tags.clone();
        // The last reference: RAM, devices and nested page tables go back now.
        drop(run);
        let reason = match ending {
            Ending::Stop(reason) => reason,
            Ending::Reset => {
                vm.resets.fetch_add(1, Ordering::Relaxed);
                vm.reset.store(false, Ordering::Release);
                let name = &vm.def.name;
                self.platform.log(&format!(
                    "ember: VM {name}: reset (by the guest or the API); starting it again from its kernel"
                ));
                match self.build_run(&vm, tags) {
                    Ok(jobs) => {
                        self.queue.lock().extend(jobs.into_iter().map(Box::new));
                        self.kick_idle();
                        return;
                    }
                    Err(e) => format!("restarting after a reset failed: {e}"),
                }
            }
        };
        // The VM's count already holds every vCPU's exits (added at the end of each slice).
        self.platform.log(&format!(
            "ember: VM {} stopped: {reason} ({} exits)",
            vm.def.name,
            vm.exits.load(Ordering::Relaxed)
        ));
        let mut st = vm.status.lock();
        st.state = VmState::Stopped;
        st.started_ms = None;
        st.exit_reason = Some(reason);
    }

    /// `ember.selftest=vm-panic`: a fault in the hypervisor's code while it holds the VM's locks.
    #[allow(clippy::panic)]
    fn maybe_inject_panic(&self, run: &Run<P::Backend>) {
        let vm = &run.vm;
        let due = |s: u64| self.platform.now_ns() / 1_000_000 >= s.saturating_add(15_000);
        if self.inject_panic.load(Ordering::Acquire)
            && !vm.disks.is_empty()
            && vm.status.lock().started_ms.is_some_and(due)
            && self.inject_panic.swap(false, Ordering::AcqRel)
        {
            let _board = run.board.lock();
            let _console = vm.console.lock();
            let fault = || -> ! {
                panic!("ember.selftest=vm-panic: a fault in the hypervisor's code for VM {}", vm.def.name)
            };
            // With the first disk's lock held, too.
            match vm.disks.first() {
                Some((Backing::Queue(q), _)) => q.while_locked(fault),
                Some((Backing::Image(i), _)) => {
                    let _disk = i.lock();
                    fault()
                }
                None => fault(),
            }
        }
    }

    /// Runs `job` for one slice on the calling CPU; gives it back if it is to go on.
    fn run_slice(
        &self,
        mut job: Box<Job<P::Backend>>,
        cpu: &<P::Backend as Backend>::Cpu,
        slot: &WorkerSlot,
    ) -> Option<Box<Job<P::Backend>>> {
        let backend = self.platform.backend();
        let run = job.run.clone();
        let vm = &run.vm;
        backend.bind(&mut job.vcpu, cpu);
        run.wakes.fetch_and(!bit(job.index), Ordering::AcqRel);
        self.maybe_inject_panic(&run);
        if job.index == 0 && !run.loaded.load(Ordering::Acquire) {
            let Some(mut board) = Self::board_of(vm, &run.board) else {
                backend.unbind(&mut job.vcpu);
                self.finish_job(job);
                return None;
            };
            let loaded = vm.load(&mut *board.mem);
            drop(board);
            match loaded {
                Ok(entry) => {
                    backend.enter_linux(&mut job.vcpu, &entry);
                    run.loaded.store(true, Ordering::Release);
                }
                Err(e) => self.end_run(&run, Ending::Stop(format!("loading the guest failed: {e}"))),
            }
        }
        // A vCPU of an SMP guest spinning on PAUSE gives way to the vCPU it waits for (re-armed
        // each slice).
        job.vcpu.set_pause_exits(vm.def.vcpus > 1);
        let host = WorkerHost {
            rt: self,
            run: &run,
            slice_end: self.platform.now_ns().saturating_add(SLICE_NS),
            slot,
            index: job.index,
        };
        let clock = self.clock;
        let identity = VcpuIdentity {
            apic_id: job.index as u8,
            vcpus: vm.def.vcpus as u8,
            lapic: true,
            pv_clock: clock.tsc_hz != 0,
        };
        let j = &mut *job;
        let mut parts = VmParts {
            board: &run.board,
            cpu: j.index,
            vcpus: vm.def.vcpus as usize,
            msrs: &mut j.msrs,
            cpuid: |leaf, sub| guest_cpuid(leaf, sub, identity, |l, s| backend.host_cpuid(l, s)),
            clock,
        };
        let before = j.stats;
        let end = vcpu::run(&mut j.vcpu, &mut parts, &host, &mut j.stats, &mut j.state);
        // Its FPU/SSE/AVX registers stay with it (another vCPU may run here next).
        backend.unbind(&mut j.vcpu);
        vm.exits.fetch_add(j.stats.exits.wrapping_sub(before.exits), Ordering::Relaxed);
        for ((c, now), then) in vm.exit_counts.iter().zip(j.stats.by_kind).zip(before.by_kind) {
            c.fetch_add(now.wrapping_sub(then), Ordering::Relaxed);
        }
        vm.interrupts.fetch_add(j.stats.interrupts.wrapping_sub(before.interrupts), Ordering::Relaxed);
        let notices =
            Self::board_of(vm, &run.board).map(|mut b| core::mem::take(&mut b.notices)).unwrap_or_default();
        for (base, what) in notices {
            let disk = base.saturating_sub(VIRTIO_MMIO_BASE) / 0x1000;
            let file = vm.def.disks.get(disk as usize).map_or("?", |d| d.file.as_str());
            self.platform.log(&format!(
                "ember: VM {}: virtio disk {disk} ({file}): {what}; the device stops until the guest resets it",
                vm.def.name
            ));
        }
        let who = if vm.def.vcpus > 1 { format!(" on vCPU {}", job.index) } else { String::new() };
        match end {
            RunEnd::Preempted => return Some(job),
            RunEnd::Reset => self.end_run(&run, Ending::Reset),
            RunEnd::PowerOff => self.end_run(&run, Ending::Stop(String::from("the guest powered off"))),
            RunEnd::Fault(why) => self.end_run(&run, Ending::Stop(format!("guest fault{who}: {why}"))),
            RunEnd::Stopped if vm.stop.load(Ordering::Acquire) => {
                let reason = self.lock_bounded(&vm.stop_reason).and_then(|mut r| r.take());
                self.end_run(
                    &run,
                    Ending::Stop(reason.unwrap_or_else(|| String::from("stopped through the API"))),
                )
            }
            RunEnd::Stopped => {} // the run ends for a reason another vCPU gave
        }
        self.finish_job(job);
        None
    }
}

/// A CPU that runs vCPUs ([`Runtime::worker`]).
pub struct Worker<'r, P: Platform> {
    rt: &'r Runtime<P>,
    slot: &'r WorkerSlot,
    cpu: <P::Backend as Backend>::Cpu,
    /// The VM whose vCPU ran here last: switching to another VM's calls [`Platform::switch_vm`].
    last_vm: usize,
}

impl<P: Platform> Worker<'_, P> {
    /// Runs the next queued vCPU for a slice; false when the queue was empty.
    pub fn step(&mut self) -> bool {
        let rt = self.rt;
        let slot = self.slot;
        slot.idle.store(false, Ordering::Release);
        let Some(job) = rt.next_job() else {
            slot.idle.store(true, Ordering::Release);
            return false;
        };
        {
            let mut st = job.run.vm.status.lock();
            if st.state == VmState::Starting {
                st.state = VmState::Running;
            }
        }
        let vm = Arc::as_ptr(&job.run.vm) as usize;
        if self.last_vm != vm && self.last_vm != 0 {
            rt.platform.switch_vm();
        }
        self.last_vm = vm;
        slot.vcpu.store(job.index, Ordering::Release);
        *slot.current.lock() = Some(job.run.vm.clone());
        slot.vm.store(vm, Ordering::Release);
        let back = rt.run_slice(job, &self.cpu, slot);
        slot.vm.store(0, Ordering::Release);
        *slot.current.lock() = None;
        if let Some(j) = back {
            rt.queue.lock().push_back(j);
        }
        true
    }

    /// Waits for work when there is none (a job queued since the last look kicked this CPU, and
    /// the kick is not lost: see [`Platform::wait_for_interrupt`]).
    pub fn wait(&self) {
        self.slot.idle.store(true, Ordering::Release);
        if self.rt.queue.lock().is_empty() {
            self.rt.platform.wait_for_interrupt();
        }
    }

    /// The work loop: runs queued vCPUs for good; sleeps when there are none.
    pub fn run(mut self) -> ! {
        loop {
            if !self.step() {
                self.wait();
            }
        }
    }
}

/// The host side of the vCPU loop on a worker.
struct WorkerHost<'a, P: Platform> {
    rt: &'a Runtime<P>,
    run: &'a Run<P::Backend>,
    slice_end: u64,
    slot: &'a WorkerSlot,
    /// The vCPU's index in its VM.
    index: usize,
}

impl<P: Platform> Host for WorkerHost<'_, P> {
    fn now_ns(&self) -> u64 {
        self.rt.platform.now_ns()
    }
    fn interrupted(&self, idle: bool) -> Option<RunEnd> {
        let vm = &self.run.vm;
        // A CPU that ran one of its vCPUs stopped (perhaps holding its locks): this one stops too.
        if vm.stop.load(Ordering::Acquire) || vm.failed() {
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
        let now = self.now_ns();
        let over = (idle && self.rt.others_due(now)) || now >= self.slice_end;
        over.then_some(RunEnd::Preempted)
    }
    fn before_entry(&self, next_timer: Option<u64>) {
        let now = self.now_ns();
        let until = next_timer.unwrap_or(u64::MAX).min(self.slice_end);
        self.rt.platform.arm_timer_ns(until.saturating_sub(now));
    }
    fn idle(&self, deadline: Option<u64>) {
        let now = self.now_ns();
        let mut until = deadline.unwrap_or(u64::MAX).min(now.saturating_add(MAX_SLEEP_NS));
        until = until.min(self.slice_end.max(now.saturating_add(1_000_000)));
        if let Some(q) = self.rt.queued_deadline() {
            until = until.min(q);
        }
        if until <= now {
            return;
        }
        self.rt.platform.arm_timer_ns(until.saturating_sub(now));
        self.slot.idle.store(true, Ordering::Release);
        // New work queued after `others_due` looked kicks this CPU, as it is idle now; so does an
        // interrupt for this vCPU (the kick stays pending until the wait).
        if !self.rt.others_due(now) {
            self.rt.platform.wait_for_interrupt();
        }
        self.slot.idle.store(false, Ordering::Release);
    }
    fn console_input(&self, machine: &mut Machine) {
        let mut input = self.run.vm.input.lock();
        if input.is_empty() {
            return;
        }
        let (a, _) = input.as_slices();
        let taken = machine.console_input(a).min(a.len());
        input.drain(..taken);
    }
    fn wake(&self, vcpus: u64) {
        self.run.wakes.fetch_or(vcpus, Ordering::AcqRel);
        self.rt.kick_vcpus(&self.run.vm, vcpus);
    }
    fn quiet(&self, next_timer: Option<u64>) -> bool {
        let now = self.now_ns();
        let me = bit(self.index);
        // Read first: the shared word is written only when this vCPU's bit is set.
        let woken = self.run.wakes.load(Ordering::Acquire) & me != 0
            && self.run.wakes.fetch_and(!me, Ordering::AcqRel) & me != 0;
        let io = self.index == 0
            && self.run.vm.io_wake.load(Ordering::Acquire)
            && self.run.vm.io_wake.swap(false, Ordering::AcqRel);
        next_timer.is_none_or(|t| now < t)
            && !woken
            && !io
            && self.run.vm.input.try_lock().is_some_and(|i| i.is_empty())
            && !self.run.ended.load(Ordering::Acquire)
    }
    fn lock_board<'b>(&self, board: &'b Mutex<Board>) -> Option<MutexGuard<'b, Board>> {
        Runtime::<P>::board_of(&self.run.vm, board)
    }
}

#[cfg(test)]
mod tests {
    //! The runtime on a scripted backend: vCPUs whose guests follow a [`Program`], a fake clock
    //! that each exit advances by [`EXIT_NS`], workers stepped in turn on one thread.
    use super::*;
    use crate::exit::VmExit;
    use crate::machine::{PM1_CNT_PORT, S5_SLP_TYP};
    use crate::memory::GuestRam;
    use crate::npt::tests::FakeFrames;
    use crate::npt::Npt;
    use alloc::vec;

    /// Guest time one exit takes.
    const EXIT_NS: u64 = 1_000_000;

    /// What a scripted guest does, exit after exit.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Program {
        /// CPUID for ever: never halts, never exits on its own.
        Spin,
        /// HLT whenever it runs (interrupts enabled, nothing ever wakes it).
        Halt,
        /// `n` CPUIDs, then pulses the reset line (8042 command 0xfe); spins in the new run.
        ResetAfter(u32),
        /// `n` CPUIDs, then ACPI S5.
        PowerOffAfter(u32),
        /// `n` CPUIDs, then a triple fault.
        FaultAfter(u32),
    }

    #[derive(Default)]
    struct Shared {
        now: AtomicU64,
        /// Programs for the next vCPUs made, in order (Spin when empty).
        programs: Mutex<VecDeque<Program>>,
        kicks: Mutex<Vec<u32>>,
        switches: AtomicUsize,
        ram_live: AtomicUsize,
        ram_made: AtomicUsize,
        timer: AtomicU64,
        waits: AtomicUsize,
        bound: AtomicUsize,
    }

    struct ScriptVcpu {
        shared: Arc<Shared>,
        program: Program,
        done: u32,
        regs: [u64; 16],
        rip: u64,
        entered: bool,
    }

    crate::exit::plain_test_regs!(ScriptVcpu);

    impl Vcpu for ScriptVcpu {
        fn run(&mut self) -> VmExit {
            assert!(self.entered, "vCPU 0 runs only after the kernel was loaded");
            self.shared.now.fetch_add(EXIT_NS, Ordering::Relaxed);
            self.done += 1;
            let cpuid = VmExit::Cpuid { next_rip: self.rip + 2 };
            match self.program {
                Program::Spin => cpuid,
                Program::Halt => VmExit::Hlt,
                Program::ResetAfter(n) if self.done > n => {
                    self.regs[0] = 0xfe;
                    VmExit::Io { port: 0x64, size: 1, input: false, next_rip: self.rip + 1 }
                }
                Program::PowerOffAfter(n) if self.done > n => {
                    self.regs[0] = (u64::from(S5_SLP_TYP) << 10) | (1 << 13);
                    VmExit::Io { port: PM1_CNT_PORT, size: 2, input: false, next_rip: self.rip + 1 }
                }
                Program::FaultAfter(n) if self.done > n => VmExit::Shutdown,
                _ => cpuid,
            }
        }
        fn can_take_interrupt(&self) -> bool {
            true
        }
        fn can_take_nmi(&self) -> bool {
            true
        }
        fn inject_interrupt(&mut self, _: u8) {}
        fn inject_nmi(&mut self) {}
        fn request_interrupt_window(&mut self) {}
        fn interrupts_enabled(&self) -> bool {
            true
        }
        fn set_pause_exits(&mut self, _: bool) {}
        fn start_at(&mut self, vector: u8) {
            self.rip = u64::from(vector) << 12;
            self.entered = true;
        }
    }

    struct ScriptBackend(Arc<Shared>);

    impl Backend for ScriptBackend {
        type Cpu = u32;
        type Vcpu = ScriptVcpu;
        type Format = Npt;
        type Frames = FakeFrames;
        fn enable_cpu(&self) -> Result<u32, String> {
            Ok(0)
        }
        fn create_vcpu(&self, _: u32, _: HostPhysAddr) -> Result<ScriptVcpu, String> {
            let program = self.0.programs.lock().pop_front().unwrap_or(Program::Spin);
            Ok(ScriptVcpu { shared: self.0.clone(), program, done: 0, regs: [0; 16], rip: 0, entered: false })
        }
        fn enter_linux(&self, vcpu: &mut ScriptVcpu, entry: &LinuxEntry) {
            vcpu.rip = entry.rip;
            vcpu.entered = true;
        }
        fn bind(&self, _: &mut ScriptVcpu, _: &u32) {
            self.0.bound.fetch_add(1, Ordering::Relaxed);
        }
        fn unbind(&self, _: &mut ScriptVcpu) {
            self.0.bound.fetch_sub(1, Ordering::Relaxed);
        }
        fn host_cpuid(&self, _: u32, _: u32) -> Leaf {
            Leaf { eax: 0x10, ebx: 0, ecx: 0, edx: 0 }
        }
        fn vcpu_bytes(&self) -> u64 {
            4096
        }
        fn table_bytes(&self, frames: &FakeFrames) -> u64 {
            frames.tables.len() as u64 * 4096
        }
        fn tag_limit(&self) -> u32 {
            4
        }
    }

    /// Guest RAM that counts itself.
    struct CountedRam(GuestRam, Arc<Shared>);

    impl Drop for CountedRam {
        fn drop(&mut self) {
            self.1.ram_live.fetch_sub(1, Ordering::Relaxed);
        }
    }

    impl GuestMemory for CountedRam {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read(&self, a: GuestPhysAddr, b: &mut [u8]) -> Result<(), crate::memory::OutOfRange> {
            self.0.read(a, b)
        }
        fn write(&mut self, a: GuestPhysAddr, d: &[u8]) -> Result<(), crate::memory::OutOfRange> {
            self.0.write(a, d)
        }
        fn zero(&mut self) {
            self.0.zero()
        }
    }

    struct FakePlatform {
        backend: ScriptBackend,
        shared: Arc<Shared>,
        /// Host RAM left for guests, bytes.
        free: AtomicU64,
    }

    impl Platform for FakePlatform {
        type Backend = ScriptBackend;
        type Ram = CountedRam;
        fn backend(&self) -> &ScriptBackend {
            &self.backend
        }
        fn now_ns(&self) -> u64 {
            self.shared.now.load(Ordering::Relaxed)
        }
        fn tsc_hz(&self) -> u64 {
            1_000_000_000
        }
        fn arm_timer_ns(&self, ns: u64) {
            self.shared.timer.store(self.now_ns().saturating_add(ns), Ordering::Relaxed);
        }
        fn wait_for_interrupt(&self) {
            // Nothing else runs on this thread: the wait ends with the timer.
            self.shared.waits.fetch_add(1, Ordering::Relaxed);
            let t = self.shared.timer.load(Ordering::Relaxed);
            self.shared.now.fetch_max(t, Ordering::Relaxed);
        }
        fn kick(&self, cpu: u32) {
            self.shared.kicks.lock().push(cpu);
        }
        fn switch_vm(&self) {
            self.shared.switches.fetch_add(1, Ordering::Relaxed);
        }
        fn allocate_ram(&self, bytes: u64) -> Option<(CountedRam, HostPhysAddr)> {
            let left = self.free.load(Ordering::Relaxed);
            let rest = left.checked_sub(bytes)?;
            self.free.store(rest, Ordering::Relaxed);
            let n = self.shared.ram_made.fetch_add(1, Ordering::Relaxed) as u64;
            self.shared.ram_live.fetch_add(1, Ordering::Relaxed);
            let ram = CountedRam(GuestRam::new(bytes as usize), self.shared.clone());
            Some((ram, HostPhysAddr(0x1_0000_0000 * (n + 1))))
        }
        fn log(&self, _: &str) {}
    }

    fn runtime() -> (Runtime<FakePlatform>, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        let p = FakePlatform {
            backend: ScriptBackend(shared.clone()),
            shared: shared.clone(),
            free: AtomicU64::new(1 << 30),
        };
        let rt = Runtime::new(p, Some(1_700_000_000));
        rt.set_unavailable(None);
        (rt, shared)
    }

    fn kernel() -> &'static [u8] {
        crate::linux::tests::image().leak()
    }

    fn vm(name: &str, vcpus: u32) -> Arc<Vm> {
        let def = VmDefinition {
            name: name.into(),
            vcpus,
            memory_mib: 16,
            kernel: "vmlinuz".into(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            disks: Vec::new(),
            nics: Vec::new(),
            autostart: false,
            console_port: None,
        };
        Arc::new(Vm::new(def, Box::new(kernel()), None, Vec::new()))
    }

    fn start(rt: &Runtime<FakePlatform>, shared: &Shared, vm: &Arc<Vm>, program: Program) {
        shared.programs.lock().push_back(program);
        rt.start(vm, 0).unwrap();
    }

    #[test]
    fn vcpus_that_never_halt_share_one_cpu_in_equal_time_slices() {
        let (rt, shared) = runtime();
        let mut w = rt.worker(7, 0).unwrap();
        let vms: Vec<_> = ["a", "b", "c"].iter().map(|n| vm(n, 1)).collect();
        for v in &vms {
            start(&rt, &shared, v, Program::Spin);
        }
        for _ in 0..30 {
            assert!(w.step());
        }
        // 30 slices of 10 ms, one exit per ms: each VM had 10 slices.
        let exits: Vec<u64> = vms.iter().map(|v| rt.report(v).exits).collect();
        assert!(exits.iter().all(|e| (95..=105).contains(e)), "{exits:?}");
        assert!(vms.iter().all(|v| rt.report(v).state == VmState::Running));
        // Every slice switched VMs on the CPU (no predictions cross VMs).
        assert_eq!(shared.switches.load(Ordering::Relaxed), 29);
        assert_eq!(shared.bound.load(Ordering::Relaxed), 0, "every vCPU leaves the CPU after its slice");
    }

    #[test]
    fn more_vcpus_than_cpus_all_run() {
        let (rt, shared) = runtime();
        let mut ws = [rt.worker(1, 0).unwrap(), rt.worker(2, 0).unwrap()];
        let vms: Vec<_> = (0..5).map(|i| vm(&format!("vm{i}"), 1)).collect();
        for v in &vms {
            start(&rt, &shared, v, Program::Spin);
        }
        for round in 0..25 {
            assert!(ws[round % 2].step());
        }
        let exits: Vec<u64> = vms.iter().map(|v| rt.report(v).exits).collect();
        assert!(exits.iter().all(|e| (45..=55).contains(e)), "each VM had 5 slices: {exits:?}");
    }

    #[test]
    fn a_halted_vcpu_gives_way_to_one_with_work() {
        let (rt, shared) = runtime();
        let mut w = rt.worker(1, 0).unwrap();
        let (idle, busy) = (vm("idle", 1), vm("busy", 1));
        start(&rt, &shared, &idle, Program::Halt);
        start(&rt, &shared, &busy, Program::Spin);
        for _ in 0..20 {
            w.step();
        }
        let (i, b) = (rt.report(&idle).exits, rt.report(&busy).exits);
        // The halted guest exits once per turn and gives the CPU up at once.
        assert!(i <= 11 && b >= 95, "idle {i}, busy {b}");
        // Alone, a halted vCPU sleeps (the CPU waits for its timer) instead of spinning.
        rt.request(&busy, false).unwrap();
        w.step();
        assert_eq!(rt.report(&busy).state, VmState::Stopped);
        let waits = shared.waits.load(Ordering::Relaxed);
        w.step();
        assert!(shared.waits.load(Ordering::Relaxed) > waits);
        assert_eq!(rt.report(&idle).state, VmState::Running);
    }

    #[test]
    fn stop_ends_the_run_and_gives_the_ram_back() {
        let (rt, shared) = runtime();
        let mut w = rt.worker(3, 0).unwrap();
        let v = vm("a", 1);
        start(&rt, &shared, &v, Program::Spin);
        assert_eq!(rt.report(&v).state, VmState::Starting);
        w.step();
        assert_eq!(rt.report(&v).state, VmState::Running);
        assert!(matches!(rt.start(&v, 0), Err(VmError::Conflict(m)) if m.contains("already running")));
        rt.request(&v, false).unwrap();
        w.step();
        let r = rt.report(&v);
        assert_eq!(r.state, VmState::Stopped);
        assert_eq!(r.exit_reason.as_deref(), Some("stopped through the API"));
        assert_eq!(shared.ram_live.load(Ordering::Relaxed), 0);
        assert!(!w.step(), "nothing left to run");
        assert!(matches!(rt.request(&v, false), Err(VmError::Conflict(m)) if m.contains("not running")));
        // It starts again, with fresh counters.
        start(&rt, &shared, &v, Program::Spin);
        assert_eq!(rt.report(&v).exits, 0);
        w.step();
        assert_eq!(rt.report(&v).state, VmState::Running);
    }

    #[test]
    fn a_reset_starts_a_new_run_from_the_kernel() {
        let (rt, shared) = runtime();
        let mut w = rt.worker(1, 0).unwrap();
        let v = vm("a", 1);
        start(&rt, &shared, &v, Program::ResetAfter(3));
        w.step();
        w.step();
        let r = rt.report(&v);
        assert_eq!((r.state, r.resets), (VmState::Running, 1));
        assert_eq!(shared.ram_made.load(Ordering::Relaxed), 2);
        assert_eq!(shared.ram_live.load(Ordering::Relaxed), 1, "the first run's RAM went back");
        // A reset through the management plane, too.
        rt.request(&v, true).unwrap();
        w.step();
        w.step();
        assert_eq!(rt.report(&v).resets, 2);
        assert_eq!(rt.report(&v).state, VmState::Running);
    }

    #[test]
    fn power_off_and_guest_faults_end_only_their_vm() {
        let (rt, shared) = runtime();
        let mut w = rt.worker(1, 0).unwrap();
        let (off, bad, good) = (vm("off", 1), vm("bad", 1), vm("good", 1));
        start(&rt, &shared, &off, Program::PowerOffAfter(2));
        start(&rt, &shared, &bad, Program::FaultAfter(2));
        start(&rt, &shared, &good, Program::Spin);
        for _ in 0..6 {
            w.step();
        }
        assert_eq!(rt.report(&off).exit_reason.as_deref(), Some("the guest powered off"));
        let r = rt.report(&bad);
        assert_eq!(r.state, VmState::Stopped);
        assert!(
            r.exit_reason.as_deref().is_some_and(|e| e.starts_with("guest fault: triple fault")),
            "{r:?}"
        );
        assert_eq!(rt.report(&good).state, VmState::Running);
        assert_eq!(shared.ram_live.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn kicks_go_to_the_cpu_running_the_vcpu_or_to_idle_cpus() {
        let (rt, shared) = runtime();
        let _w1 = rt.worker(11, 0).unwrap();
        let _w2 = rt.worker(12, 0).unwrap();
        let _w3 = rt.worker(13, 0).unwrap();
        let (a, b) = (vm("a", 1), vm("b", 1));
        start(&rt, &shared, &a, Program::Spin);
        start(&rt, &shared, &b, Program::Spin);
        // As if CPU 11 ran VM a's vCPU 0 and CPU 12 had work, CPU 13 none.
        let slots = rt.workers();
        slots[0].vm.store(Arc::as_ptr(&a) as usize, Ordering::Release);
        slots[0].vcpu.store(0, Ordering::Release);
        slots[0].idle.store(false, Ordering::Release);
        slots[1].idle.store(false, Ordering::Release);
        shared.kicks.lock().clear();
        assert_eq!(rt.console_input(&a, b"x"), 1);
        assert_eq!(*shared.kicks.lock(), vec![11], "only the CPU running the vCPU");
        shared.kicks.lock().clear();
        assert_eq!(rt.console_input(&b, b"y"), 1);
        assert_eq!(*shared.kicks.lock(), vec![13], "b waits in the queue: the idle CPUs look");
        // Console input is bounded; what does not fit is refused, not queued.
        let big = vec![b'z'; CONSOLE_INPUT_BYTES + 10];
        assert_eq!(rt.console_input(&a, &big), CONSOLE_INPUT_BYTES - 1);
    }

    #[test]
    fn a_cpu_that_panics_fails_only_the_vm_it_ran() {
        let (rt, shared) = runtime();
        let mut w1 = rt.worker(21, 0).unwrap();
        let _w2 = rt.worker(22, 0).unwrap();
        let (a, b) = (vm("a", 1), vm("b", 1));
        start(&rt, &shared, &a, Program::Spin);
        start(&rt, &shared, &b, Program::Spin);
        assert!(rt.cpu_panicked(21, "nothing runs there").is_none());
        // As if CPU 22 panicked while running VM a's vCPU.
        let slot = &rt.workers()[1];
        *slot.current.lock() = Some(a.clone());
        slot.vm.store(Arc::as_ptr(&a) as usize, Ordering::Release);
        let failed = rt.cpu_panicked(22, "index out of bounds").unwrap();
        assert_eq!(failed.def.name, "a");
        let r = rt.report(&a);
        assert_eq!(r.state, VmState::Failed);
        assert_eq!(r.exit_reason.as_deref(), Some("the CPU running it stopped: index out of bounds"));
        assert!(
            matches!(rt.start(&a, 0), Err(VmError::Conflict(m)) if m.contains("can run again after the host restarts"))
        );
        assert!(rt.console(&a).is_empty());
        // Its queued vCPU never runs again; VM b runs on.
        for _ in 0..4 {
            w1.step();
        }
        assert_eq!(rt.report(&a).exits, 0);
        assert!(rt.report(&b).exits >= 35);
    }

    #[test]
    fn starts_are_refused_with_the_reason() {
        let (rt, shared) = runtime();
        let v = vm("a", 1);
        // No worker yet: no CPU can run VMs.
        assert!(matches!(rt.start(&v, 0), Err(VmError::Unavailable(m)) if m.contains("no CPU is free")));
        let _w = rt.worker(1, 0).unwrap();
        rt.set_unavailable(Some("the CPU offers no hardware virtualization".into()));
        assert!(
            matches!(rt.start(&v, 0), Err(VmError::Unavailable(m)) if m.contains("no hardware virtualization"))
        );
        rt.set_unavailable(None);
        // Not enough host memory: refused, nothing queued, nothing held.
        rt.platform().free.store(8 << 20, Ordering::Relaxed);
        assert!(
            matches!(rt.start(&v, 0), Err(VmError::Unavailable(m)) if m.contains("not enough free host memory"))
        );
        assert_eq!(rt.report(&v).state, VmState::Stopped);
        // A kernel that is no bzImage is refused at once.
        let mut def = v.def.clone();
        def.name = "bad".into();
        let bad = Arc::new(Vm::new(def, Box::new(b"not a kernel".to_vec()), None, Vec::new()));
        assert!(matches!(rt.start(&bad, 0), Err(VmError::Unavailable(m)) if m.starts_with("kernel vmlinuz")));
        assert_eq!(shared.ram_live.load(Ordering::Relaxed), 0);
        // vCPU tags are handed out in turn, skipping the host's and the probe's.
        assert_eq!(rt.take_tags(5), vec![2, 3, 2, 3, 2]);
    }
}
