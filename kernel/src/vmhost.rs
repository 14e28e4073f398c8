//! Running VMs: the hypervisor's runtime (wiring of `ember_kernel::vmm` onto the platform).
//!
//! - The management plane (bootstrap CPU) holds a [`Hypervisor`]: the VMs found on the boot media,
//!   served to the API as a `VmService`. Starting a VM takes its RAM from the frame allocator,
//!   zeroes it, writes the ACPI tables and loads its kernel (`vmm::linux`), sets up the nested
//!   page tables and the vCPU, and queues the run.
//! - Application processors run [`ap_worker`]: each takes a queued run and executes it with the
//!   generic vCPU loop (`vmm::vcpu::run`) for a time slice of [`SLICE_NS`], then puts it back at
//!   the end of the queue if other runs wait, so more VMs than CPUs share them. The LAPIC timer
//!   brings a CPU back when the guest's next timer interrupt is due or its slice ends; a kick IPI
//!   when there is new work or a stop.
//! - A run ends when the guest powers off, faults (triple fault, an access nothing answers) or is
//!   stopped through the API: its RAM goes back to the frame allocator and the VM's status says
//!   why, in the log and the API. A guest reset (reboot) reloads its kernel into the same RAM.
//!
//! Disks are virtio block devices on virtio-mmio (`vmm::virtio_blk`), backed by the images the
//! UEFI phase read into memory: guest writes last until the host restarts (they are not written
//! back to the boot media).
//!
//! Not yet: more than one vCPU per VM (starting a VM defined with `vcpus` > 1 is refused with that
//! reason),
//! local APIC / I/O APIC models (guests use the 8259A PICs), console input.

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
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use ember_kernel::mm::frames::FrameAllocator;
use ember_kernel::vmm::bus::MmioBus;
use ember_kernel::vmm::cpuid::{guest_cpuid, VcpuIdentity};
use ember_kernel::vmm::machine::Machine;
use ember_kernel::vmm::memory::GuestMemory;
use ember_kernel::vmm::msr::VcpuMsrs;
use ember_kernel::vmm::npt::NestedPageTables;
use ember_kernel::vmm::serial::{ConsoleLog, CONSOLE_LOG_BYTES};
use ember_kernel::vmm::vcpu::{self, Host, RunEnd, RunStats, VmParts};
use ember_kernel::vmm::virtio_blk::{self, SharedDisk, VirtioBlk};
use ember_kernel::vmm::{acpi, linux, GuestPhysAddr, HostPhysAddr};
use ember_net::vms::{VmAction, VmError, VmService, VmState, VmSummary};
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

/// The frame allocator, after boot-time set-up handed it over.
static FRAMES: Mutex<Option<FrameAllocator>> = Mutex::new(None);
/// Runs waiting for a CPU.
static QUEUE: Mutex<VecDeque<Box<VmRun>>> = Mutex::new(VecDeque::new());
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

/// Wakes every application processor (new work, or a stop).
fn kick() {
    // Fixed delivery to all CPUs but the sender (destination shorthand 11b).
    apic::send_ipi(0, idt::KICK_VECTOR as u32 | (3 << 18));
}

/// What a VM's run and the management plane share.
pub struct VmShared {
    pub def: VmDefinition,
    kernel: &'static [u8],
    initrd: Option<&'static [u8]>,
    /// The disk images (in host memory for the life of the host) and whether each is read-only.
    disks: Vec<(SharedDisk<&'static mut [u8]>, bool)>,
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
}

struct Status {
    state: VmState,
    started_ms: Option<u64>,
    exit_reason: Option<String>,
}

/// One VM running (or queued to run) on the application processors.
struct VmRun {
    shared: Arc<VmShared>,
    vcpu: SvmVcpu,
    machine: Machine,
    mmio: MmioBus,
    msrs: VcpuMsrs,
    /// Always `Some` until the run is dropped (then the memory goes back).
    ram: Option<GuestRamRegion>,
    _npt: NestedPageTables,
    _npt_frames: Frames,
    stats: RunStats,
    /// Whether the kernel is in RAM and the vCPU at its entry (done in the first slice, again
    /// after a reset).
    loaded: bool,
}

impl Drop for VmRun {
    fn drop(&mut self) {
        if let (Some(f), Some(ram)) = (FRAMES.lock().as_mut(), self.ram.take()) {
            ram.release(f);
        }
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
fn load_guest(ram: &mut GuestRamRegion, vm: &VmShared) -> Result<linux::LinuxEntry, String> {
    ram.zero();
    acpi::write_tables(ram, &virtio_devices(vm)).map_err(|e| format!("ACPI tables: {e}"))?;
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

/// Sets a VM up to run (on the calling, bootstrap CPU).
fn build_run(shared: &Arc<VmShared>, asid: u32) -> Result<Box<VmRun>, String> {
    let bytes = shared.def.memory_mib as u64 * (1 << 20);
    let ram = FRAMES.lock().as_mut().and_then(|f| GuestRamRegion::allocate(f, bytes, RAM_ALIGN)).ok_or_else(
        || format!("not enough free host memory for {} MiB of guest RAM", shared.def.memory_mib),
    )?;
    let base = ram.base();
    let free = |ram: GuestRamRegion| {
        if let Some(f) = FRAMES.lock().as_mut() {
            ram.release(f);
        }
    };
    // The kernel's header is checked now (a bad image is refused at once); zeroing the RAM and
    // loading the kernel happen in the run's first slice, on an application processor.
    if let Err(e) = linux::BzImage::parse(shared.kernel) {
        free(ram);
        return Err(format!("kernel {}: {e}", shared.def.kernel));
    }
    let mmio = match mmio_devices(shared) {
        Ok(m) => m,
        Err(e) => {
            free(ram);
            return Err(e);
        }
    };
    let mut npt_frames = Frames::default();
    let setup = (|| -> Result<(NestedPageTables, SvmVcpu), String> {
        let mut npt = NestedPageTables::new(&mut npt_frames).map_err(|e| e.to_string())?;
        npt.map(&mut npt_frames, GuestPhysAddr(0), HostPhysAddr(base), bytes, true)
            .map_err(|e| e.to_string())?;
        let vcpu = SvmVcpu::new(asid, npt.root())?;
        Ok((npt, vcpu))
    })();
    let (npt, vcpu) = match setup {
        Ok(s) => s,
        Err(e) => {
            free(ram);
            return Err(e);
        }
    };
    // VMCB, I/O and MSR permission maps, nested page tables, the console log.
    let overhead = (4 + 12 + 8) * 1024
        + npt_frames.bytes()
        + CONSOLE_LOG_BYTES as u64
        + core::mem::size_of::<VmRun>() as u64;
    shared.overhead.store(overhead, Ordering::Relaxed);
    let wall = WALL_BASE.load(Ordering::Relaxed) as i64;
    Ok(Box::new(VmRun {
        shared: shared.clone(),
        vcpu,
        machine: Machine::new(wall, shared.console.clone()),
        mmio,
        msrs: VcpuMsrs::new(0),
        ram: Some(ram),
        _npt: npt,
        _npt_frames: npt_frames,
        stats: RunStats::default(),
        loaded: false,
    }))
}

/// The host side of the vCPU loop on an application processor.
struct ApHost<'a> {
    shared: &'a VmShared,
    slice_end: u64,
}

fn others_waiting() -> bool {
    !QUEUE.lock().is_empty()
}

impl Host for ApHost<'_> {
    fn now_ns(&self) -> u64 {
        timer::now_ns()
    }
    fn interrupted(&self, halted: bool) -> Option<RunEnd> {
        if self.shared.stop.load(Ordering::Acquire) {
            return Some(RunEnd::Stopped);
        }
        if self.shared.reset.swap(false, Ordering::AcqRel) {
            return Some(RunEnd::Reset);
        }
        // A halted guest gives way to waiting runs at once; a running one at the end of its slice
        // (also when nothing waits, so its counters reach the API).
        let over = (halted && others_waiting()) || timer::now_ns() >= self.slice_end;
        over.then_some(RunEnd::Preempted)
    }
    fn before_entry(&self, next_timer: Option<u64>) {
        let now = timer::now_ns();
        let until = next_timer.unwrap_or(u64::MAX).min(self.slice_end);
        timer::arm_oneshot_ns(until.saturating_sub(now));
    }
    fn idle(&self, deadline: Option<u64>) {
        let now = timer::now_ns();
        let until =
            deadline.unwrap_or(u64::MAX).min(now + MAX_SLEEP_NS).min(self.slice_end.max(now + 1_000_000));
        if until <= now {
            return;
        }
        timer::arm_oneshot_ns(until - now);
        // Interrupts are off here: STI;HLT wakes on the timer or a kick without a lost wake-up.
        x86_64::instructions::interrupts::enable_and_hlt();
        x86_64::instructions::interrupts::disable();
    }
    fn console_input(&self, machine: &mut Machine) {
        let mut input = self.shared.input.lock();
        if input.is_empty() {
            return;
        }
        let (a, _) = input.as_slices();
        let taken = machine.console_input(a);
        input.drain(..taken);
    }
}

/// Runs `run` for one slice on this CPU; gives it back if it is to go on.
fn run_slice(mut run: Box<VmRun>, cpu: &SvmCpu) -> Option<Box<VmRun>> {
    run.vcpu.bind(cpu);
    let shared = run.shared.clone();
    if !run.loaded {
        let r = &mut *run;
        match load_guest(r.ram.as_mut().expect("a run's RAM"), &shared) {
            Ok(entry) => {
                enter(&mut r.vcpu, &entry);
                r.loaded = true;
            }
            Err(e) => {
                run.vcpu.unbind();
                finish(run, format!("loading the guest failed: {e}"));
                return None;
            }
        }
    }
    let host = ApHost { shared: &shared, slice_end: timer::now_ns() + SLICE_NS };
    let identity = VcpuIdentity { apic_id: 0, vcpus: 1, lapic: false };
    let end = {
        let r = &mut *run;
        let mut parts = VmParts {
            machine: &mut r.machine,
            mmio: &mut r.mmio,
            mem: r.ram.as_mut().expect("a run's RAM") as &mut dyn GuestMemory,
            msrs: &mut r.msrs,
            cpuid: |leaf, sub| guest_cpuid(leaf, sub, identity, svm::host_cpuid),
        };
        let before = r.stats;
        let end = vcpu::run(&mut r.vcpu, &mut parts, &host, &mut r.stats);
        // Its FPU/SSE/AVX registers stay with it (another VM's vCPU may run here next).
        r.vcpu.unbind();
        shared.exits.fetch_add(r.stats.exits - before.exits, Ordering::Relaxed);
        for (i, c) in shared.exit_counts.iter().enumerate() {
            c.fetch_add(r.stats.by_kind[i] - before.by_kind[i], Ordering::Relaxed);
        }
        shared.interrupts.fetch_add(r.stats.interrupts - before.interrupts, Ordering::Relaxed);
        end
    };
    let name = &shared.def.name;
    let reason = match end {
        RunEnd::Preempted => return Some(run),
        RunEnd::Reset => {
            shared.resets.fetch_add(1, Ordering::Relaxed);
            kprintln!("ember: VM {name}: reset (by the guest or the API); starting it again from its kernel");
            // A fresh chipset, devices and FPU state; the kernel is loaded again in the next slice.
            let r = &mut *run;
            r.machine = Machine::new(WALL_BASE.load(Ordering::Relaxed) as i64, shared.console.clone());
            r.msrs = VcpuMsrs::new(0);
            r.loaded = false;
            match mmio_devices(&shared).and_then(|m| r.vcpu.reset_fpu().map(|()| m)) {
                Ok(m) => {
                    r.mmio = m;
                    return Some(run);
                }
                Err(e) => format!("restarting after a reset failed: {e}"),
            }
        }
        RunEnd::PowerOff => String::from("the guest powered off"),
        RunEnd::Stopped => String::from("stopped through the API"),
        RunEnd::Fault(why) => format!("guest fault: {why}"),
    };
    finish(run, reason);
    None
}

/// Ends a run: the VM is stopped with `reason` (log and API) and its memory goes back.
fn finish(run: Box<VmRun>, reason: String) {
    let shared = run.shared.clone();
    kprintln!("ember: VM {} stopped: {reason} ({} exits)", shared.def.name, run.stats.exits);
    drop(run);
    let mut st = shared.status.lock();
    st.state = VmState::Stopped;
    st.started_ms = None;
    st.exit_reason = Some(reason);
}

/// The work loop of an application processor with SVM: runs queued VMs; sleeps when there are none.
pub fn ap_worker(cpu: SvmCpu) -> ! {
    WORKERS.fetch_add(1, Ordering::AcqRel);
    x86_64::instructions::interrupts::disable();
    loop {
        let next = QUEUE.lock().pop_front();
        match next {
            Some(run) => {
                {
                    let mut st = run.shared.status.lock();
                    if st.state == VmState::Starting {
                        st.state = VmState::Running;
                    }
                }
                if let Some(r) = run_slice(run, &cpu) {
                    QUEUE.lock().push_back(r);
                }
            }
            None => {
                x86_64::instructions::interrupts::enable_and_hlt();
                x86_64::instructions::interrupts::disable();
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
}

impl Hypervisor {
    /// The VMs found on the boot media; `virtualization`: the SVM check's result (ASIDs) or why
    /// there is none.
    pub fn new(images: Vec<VmImage>, virtualization: Result<u32, String>) -> Hypervisor {
        let vms = images
            .into_iter()
            .map(|i| match i.loaded {
                Ok(l) => Entry::Vm(Arc::new(VmShared {
                    disks: l
                        .disks
                        .into_iter()
                        .zip(&l.definition.disks)
                        .map(|(image, d)| (Arc::new(Mutex::new(image)), d.readonly))
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
        Hypervisor { vms, unavailable, next_asid: 2, asids }
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
        if WORKERS.load(Ordering::Acquire) == 0 {
            return Err(VmError::Unavailable(String::from(
                "no CPU is free to run virtual machines (the bootstrap CPU runs the management plane; VMs need a second CPU with SVM)",
            )));
        }
        {
            let st = vm.status.lock();
            if st.state != VmState::Stopped {
                return Err(VmError::Conflict(format!(
                    "VM {} is already {}",
                    vm.def.name,
                    st.state.as_str()
                )));
            }
        }
        // ASID 1 is the boot probe's; VMs take 2.. in turn (every slice flushes its TLB entries).
        let asid = self.next_asid;
        self.next_asid = if self.next_asid + 1 >= self.asids { 2 } else { self.next_asid + 1 };
        if vm.def.vcpus > 1 {
            // Refused rather than run with fewer vCPUs than the definition says.
            return Err(VmError::Unavailable(format!(
                "VM {} is defined with {} vCPUs; this version runs VMs with 1 vCPU only (no SMP guests yet)",
                vm.def.name, vm.def.vcpus
            )));
        }
        let run = build_run(&vm, asid).map_err(VmError::Unavailable)?;
        vm.stop.store(false, Ordering::Release);
        vm.reset.store(false, Ordering::Release);
        for c in [&vm.exits, &vm.interrupts, &vm.resets].into_iter().chain(&vm.exit_counts) {
            c.store(0, Ordering::Relaxed);
        }
        *vm.status.lock() = Status { state: VmState::Starting, started_ms: Some(now_ms), exit_reason: None };
        kprintln!(
            "ember: VM {}: starting ({} MiB, kernel {} bytes, command line \"{}\")",
            vm.def.name,
            vm.def.memory_mib,
            vm.kernel.len(),
            vm.def.cmdline
        );
        QUEUE.lock().push_back(run);
        kick();
        Ok(())
    }
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
                    let st = v.status.lock();
                    VmSummary {
                        name: v.def.name.clone(),
                        state: st.state,
                        vcpus: v.def.vcpus,
                        memory_mib: v.def.memory_mib,
                        autostart: v.def.autostart,
                        console_port: v.def.console_port,
                        uptime_ms: st.started_ms.map(|s| now_ms.saturating_sub(s)),
                        exit_reason: st.exit_reason.clone(),
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
            Entry::Vm(v) => Some(v.console.lock().contents()),
            Entry::Invalid { .. } => Some(Vec::new()),
        }
    }

    fn console_since(&self, name: &str, from: u64, max: usize) -> (Vec<u8>, u64) {
        match self.find(name) {
            Some(Entry::Vm(v)) => v.console.lock().since(from, max),
            _ => (Vec::new(), from),
        }
    }

    fn console_input(&mut self, name: &str, bytes: &[u8]) -> usize {
        let Some(Entry::Vm(v)) = self.find(name) else { return 0 };
        let mut input = v.input.lock();
        let n = bytes.len().min(CONSOLE_INPUT_BYTES.saturating_sub(input.len()));
        input.extend(&bytes[..n]);
        drop(input);
        if n > 0 {
            kick();
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
                let state = vm.status.lock().state;
                if state == VmState::Stopped {
                    return Err(VmError::Conflict(format!("VM {name} is not running")));
                }
                let flag = if action == VmAction::Stop { &vm.stop } else { &vm.reset };
                flag.store(true, Ordering::Release);
                kick();
                if action == VmAction::Stop {
                    // The run ends at its CPU's next look (a kick brings it there at once).
                    for _ in 0..2000 {
                        if vm.status.lock().state == VmState::Stopped {
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
