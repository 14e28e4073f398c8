//! The hypervisor as the appliance runs it: the VM runtime (`ember_vmm::runtime`: run queue, VM
//! lifecycle, the CPUs' work loop) on this machine (`ember_platform::arch::x86_64::hypervisor`:
//! SVM, the clock, kicks, guest RAM) and the VMs of the inventory.
//!
//! - The management plane (bootstrap CPU) holds a [`Hypervisor`]: the VMs of the inventory
//!   (`HostConfig::vms`; `ember_net::vmstore`), served to the API as a `VmService`.
//! - Every application processor with SVM runs [`ap_worker`]: a runtime worker for good.
//!
//! A VM reads its kernel and initrd from its datastore when it starts, and its disks are files
//! there: the virtio block devices (`ember_vmm::virtio_blk`, on virtio-mmio) queue their requests
//! (`ember_vmm::blkio`) and the management CPU executes them ([`Hypervisor`]'s `serve_disks`,
//! called by the management loop), then wakes the vCPUs.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write;
use ember_hw::mm::frames::FrameAllocator;
use ember_net::hostnet::{self, HostNetwork};
use ember_net::vms::{VmAction, VmError, VmReport, VmService, VmState, VmSummary};
use ember_net::vmstore::{self, OpenDisk, StoredVm};
use ember_net::vswitch::{PortId, PortSettings};
use ember_platform::arch::x86_64::hypervisor::{self, HostPlatform};
use ember_platform::arch::x86_64::svm::SvmCpu;
use ember_platform::arch::x86_64::{apic, cpu, timer};
use ember_platform::console;
use ember_storage::disks::{HostDisks, MountId};
use ember_storage::vmdef::DsPath;
use ember_vmm::blkio::{self, IoQueue};
use ember_vmm::runtime::{BootFile, Platform, Runtime, Vm};
use ember_vmm::virtio_blk::Backing;
use ember_vmm::virtio_net::NetPort;
use spin::Once;

/// The runtime, made before the application processors start (they become its workers).
static RUNTIME: Once<Runtime<HostPlatform>> = Once::new();

/// The runtime (made on first use, with the wall clock `create` was given).
fn runtime() -> &'static Runtime<HostPlatform> {
    RUNTIME.call_once(|| Runtime::new(HostPlatform::new(), None))
}

/// Makes the runtime; `wall_clock`: the time of day now (s since 1970), for the guests' clocks.
pub fn create(wall_clock: Option<i64>) {
    RUNTIME.call_once(|| Runtime::new(HostPlatform::new(), wall_clock));
}

/// Hands the frame allocator to the hypervisor (guest RAM comes from it from now on) and says
/// whether VMs can run: `virtualization` is the SVM check's result (ASIDs) or why there is none.
pub fn init(frames: FrameAllocator, virtualization: &Result<u32, String>) {
    hypervisor::give_ram_frames(frames);
    let rt = runtime();
    match virtualization {
        Ok(asids) => {
            rt.platform().backend().set_asids(*asids);
            rt.set_unavailable(None);
        }
        Err(why) => rt.set_unavailable(Some(why.clone())),
    }
}

/// Arms `ember.selftest=vm-panic`.
pub fn inject_vm_panic() {
    runtime().inject_vm_panic();
}

/// The console's vCPU panic hook: if CPU `id` was running a vCPU, that VM fails (see
/// `Runtime::cpu_panicked`), the log says so, and the answer is true: only this CPU stops.
/// Allocates nothing.
pub fn on_vcpu_cpu_panic(id: u32, what: &str) -> bool {
    let Some(vm) = RUNTIME.get().and_then(|rt| rt.cpu_panicked(id, what)) else { return false };
    let name = vm.def.name.as_str();
    let mut line = console::FixedText::new();
    let _ = write!(
        line,
        "ember: ERROR: CPU {id} stopped while running VM {name}: {what}; VM {name} failed, the host and the other VMs go on"
    );
    console::print_line_bounded(line.as_str());
    true
}

/// The work loop of an application processor with SVM: a runtime worker for good.
pub fn ap_worker(cpu: SvmCpu) -> ! {
    x86_64::instructions::interrupts::disable();
    match runtime().worker(apic::current_id(), cpu) {
        Some(w) => w.run(),
        None => {
            kprintln!(
                "ember: more than {} CPUs: CPU {} runs no vCPUs",
                ember_vmm::runtime::MAX_WORKERS,
                apic::current_id()
            );
            cpu::halt_forever()
        }
    }
}

enum Entry {
    /// A VM on a datastore: its definition, its disks (held), and its last run.
    Stored { vm: StoredVm, disks: Vec<OpenDisk>, run: Option<Arc<Vm>> },
    /// A VM directory or inventory entry whose definition or files cannot be used.
    Invalid {
        name: String,
        reason: String,
        /// The inventory entry, for one on a datastore.
        path: Option<DsPath>,
    },
}

/// A datastore-backed disk of a VM's run, served by the management CPU.
struct ServedDisk {
    vm: String,
    /// The run whose disk it is (set once the run is made).
    run: Option<Arc<Vm>>,
    queue: Arc<IoQueue>,
    disk: OpenDisk,
    label: String,
    /// When an error was last logged, and how many were not logged since.
    logged_ms: Option<u64>,
    unlogged: u64,
}

/// A run made ready to start: the VM, its disks' queues and its NICs' ports.
type Prepared = (Arc<Vm>, Vec<ServedDisk>, Vec<ServedNic>);

/// A NIC of a VM's run, on the virtual switch while the run lasts.
struct ServedNic {
    run: Arc<Vm>,
    port: Arc<NetPort>,
    portgroup: String,
    settings: PortSettings,
    plug: Plug,
    label: String,
}

/// Where a VM NIC is on the switch.
#[derive(Clone, Copy)]
enum Plug {
    /// Not plugged in yet (at the next `serve_network`).
    Waiting,
    On(PortId),
    /// Refused by the switch (its MAC in use): its link stays down for this run.
    Refused,
}

/// Errors of one disk are logged at most once in this many ms (a guest writing to a full
/// datastore must not flood the console).
const ERROR_LOG_MS: u64 = 5_000;
/// How often the datastores VM disks wrote to are committed without a guest flush.
const COMMIT_MS: u64 = 1_000;

/// Requests executed per disk per call of `serve_disks`, at most.
const SERVE_REQUESTS: usize = 16;
/// Largest kernel or initrd read from a datastore.
const MAX_BOOT_FILE: usize = 512 << 20;

/// The VMs of this host, as the management plane sees them.
pub struct Hypervisor {
    vms: Vec<Entry>,
    served: Vec<ServedDisk>,
    nics: Vec<ServedNic>,
    /// Datastores whose VM disks were written since their last commit, and when (s since 1970)
    /// the last periodic commit was made.
    written: Vec<MountId>,
    last_commit_ms: u64,
    /// The time of day at the last `poll` (s since 1970).
    last_unix: u64,
    /// VMs asked to shut down (ACPI power button) and when they are powered off if still running.
    stopping: Vec<(Arc<Vm>, u64)>,
    /// VMs still to start at boot, the time between two starts, and when the next one starts.
    autostart: alloc::collections::VecDeque<String>,
    autostart_delay_ms: u64,
    next_autostart_ms: u64,
    autostarting: bool,
}

/// How long a guest has to shut down after its ACPI power button is pressed.
pub const SHUTDOWN_TIMEOUT_MS: u64 = 120_000;

impl Hypervisor {
    /// No VMs yet (see [`Hypervisor::register_inventory`]).
    pub fn new() -> Hypervisor {
        Hypervisor {
            vms: Vec::new(),
            served: Vec::new(),
            nics: Vec::new(),
            written: Vec::new(),
            last_commit_ms: 0,
            last_unix: 0,
            stopping: Vec::new(),
            autostart: alloc::collections::VecDeque::new(),
            autostart_delay_ms: 0,
            next_autostart_ms: 0,
            autostarting: false,
        }
    }

    /// Adds the VMs of the inventory (definitions on datastores); one that cannot be used is
    /// listed as invalid, with the reason, and stays in the inventory.
    pub fn register_inventory(&mut self, disks: &mut HostDisks, inventory: &[String]) {
        for entry in inventory {
            let r = DsPath::parse(entry)
                .map_err(|e| format!("inventory entry {entry}: {e}"))
                .and_then(|path| {
                    vmstore::load(disks, &path).map(|def| StoredVm { path, def }).map_err(|e| e.to_string())
                })
                .and_then(|vm| self.add(disks, vm).map_err(|e| e.to_string()));
            if let Err(reason) = r {
                kprintln!("ember: ERROR: VM {entry}: {reason}");
                let path = DsPath::parse(entry).ok();
                let name = path
                    .as_ref()
                    .and_then(|p| p.path.rsplit('/').next().map(|f| f.trim_end_matches(".json").to_string()))
                    .unwrap_or_else(|| entry.clone());
                self.vms.push(Entry::Invalid { name, reason, path });
            }
        }
    }

    /// A stored VM's files for a run: its kernel and initrd read, a queue per disk; its console
    /// log carries on from `earlier`, its last run.
    fn prepare(
        disks: &mut HostDisks,
        vm: &StoredVm,
        open: &[OpenDisk],
        earlier: Option<&Vm>,
    ) -> Result<Prepared, VmError> {
        let folder = vm.path.parent();
        // Read into frames of their own (the kernel's heap is small), kept for the run.
        let file = |disks: &mut HostDisks, field: &str, f: &str| -> Result<BootFile, VmError> {
            let p = folder.resolve(f).map_err(|e| VmError::Conflict(format!("{field}: {e}")))?;
            let b = vmstore::read_file_into(disks, &p, MAX_BOOT_FILE, hypervisor::host_buffer)
                .map_err(|e| VmError::Conflict(format!("{field}: {e}")))?;
            Ok(Box::new(b))
        };
        let kernel = file(disks, "kernel", &vm.def.kernel)?;
        let initrd = match &vm.def.initrd {
            Some(i) => Some(file(disks, "initrd", i)?),
            None => None,
        };
        let name = &vm.def.name;
        let mut served = Vec::new();
        let mut backings = Vec::new();
        // The VM's disks share one budget of bytes in flight (`blkio::VM_IN_FLIGHT_BYTES`).
        let budget = Arc::new(core::sync::atomic::AtomicUsize::new(0));
        for (i, d) in open.iter().enumerate() {
            // A request wakes the management CPU if it waits for an interrupt.
            let queue = Arc::new(IoQueue::with_notify(d.size, kick_management(), budget.clone()));
            backings.push((Backing::Queue(queue.clone()), d.readonly));
            served.push(ServedDisk {
                vm: name.clone(),
                run: None,
                queue,
                disk: d.clone(),
                label: format!("VM {name}: disk {i} ({})", d.path),
                logged_ms: None,
                unlogged: 0,
            });
        }
        // Its NICs: a port each, whose sends wake the management CPU, on its port group.
        let mut ports = Vec::new();
        for (i, nic) in vm.def.nics.iter().enumerate() {
            let settings = hostnet::vm_portgroup(&nic.portgroup)
                .map_err(|e| VmError::Conflict(format!("nics[{i}].portgroup: {e}")))?;
            let mac = vm.def.nic_mac(i).unwrap_or_default();
            let port = Arc::new(NetPort::new(mac, hostnet::DEFAULT_MTU, Some(kick_management())));
            port.set_link(nic.connected);
            ports.push((port, nic.portgroup.clone(), settings));
        }
        let mut run = Vm::new(vm.def.clone(), kernel, initrd, backings)
            .with_nics(ports.iter().map(|(p, ..)| p.clone()).collect());
        if let Some(e) = earlier {
            run = run.continuing_console_of(e);
        }
        let run = Arc::new(run);
        for s in &mut served {
            s.run = Some(run.clone());
        }
        let nics = ports
            .into_iter()
            .enumerate()
            .map(|(i, (port, portgroup, settings))| ServedNic {
                run: run.clone(),
                label: format!("{name} nic{i}"),
                port,
                portgroup,
                settings,
                plug: Plug::Waiting,
            })
            .collect();
        Ok((run, served, nics))
    }

    /// Executes what is left in VM `name`'s disk queues, then drops them (before its next run).
    fn finish_disks(&mut self, disks: &mut HostDisks, name: &str) {
        for _ in 0..1000 {
            if !self.served.iter().any(|s| s.vm == name && s.queue.pending() > 0) {
                break;
            }
            let unix = self.last_unix;
            self.poll(disks, timer::now_ms(), unix);
        }
        self.served.retain(|s| {
            if s.vm == name {
                s.queue.discard();
            }
            s.vm != name
        });
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.vms.iter().position(|e| entry_name(e) == name)
    }

    fn find(&self, name: &str) -> Option<&Entry> {
        self.vms.get(self.position(name)?)
    }

    /// The VM's runtime object (a stored VM's last run).
    fn vm(&self, name: &str) -> Option<&Arc<Vm>> {
        match self.find(name)? {
            Entry::Stored { run: Some(v), .. } => Some(v),
            Entry::Stored { run: None, .. } | Entry::Invalid { .. } => None,
        }
    }

    /// Starts the VMs that start at boot (`ember_net::vms::autostart_order`: the configuration's
    /// `autostart` list, then the VMs whose definition says so), the first now and each next one
    /// `delay_s` seconds after the one before (carried on by `poll`).
    pub fn autostart(&mut self, disks: &mut HostDisks, listed: &[String], delay_s: u32, now_ms: u64) {
        let vms: Vec<(String, bool)> = self
            .vms
            .iter()
            .map(|e| match e {
                Entry::Stored { vm, .. } => (vm.def.name.clone(), vm.def.autostart),
                Entry::Invalid { name, .. } => (name.clone(), false),
            })
            .collect();
        self.autostart = ember_net::vms::autostart_order(listed, &vms).into();
        self.autostart_delay_ms = u64::from(delay_s).saturating_mul(1000);
        self.next_autostart_ms = now_ms;
        if !self.autostart.is_empty() && delay_s > 0 {
            kprintln!("ember: autostart: {} VM(s), {delay_s} s apart", self.autostart.len());
        }
        self.autostart_due(disks, now_ms);
    }

    /// Starts the next VM of the autostart order when it is due.
    fn autostart_due(&mut self, disks: &mut HostDisks, now_ms: u64) {
        // A start serves the VM's old disk queues (`finish_disks`, which polls): not again here.
        if core::mem::replace(&mut self.autostarting, true) {
            return;
        }
        while now_ms >= self.next_autostart_ms {
            let Some(n) = self.autostart.pop_front() else { break };
            // One started by hand meanwhile is left alone.
            let stopped = self.vm(&n).is_none_or(|v| !v.failed() && runtime().state(v) == VmState::Stopped);
            if !stopped {
                continue;
            }
            match self.act(disks, &n, VmAction::Start, now_ms) {
                Ok(()) => kprintln!("ember: VM {n}: started (autostart)"),
                Err(e) => {
                    kprintln!("ember: ERROR: VM {n}: autostart failed: {e}");
                    continue;
                }
            }
            self.next_autostart_ms = now_ms.saturating_add(self.autostart_delay_ms);
        }
        self.autostarting = false;
    }
}

fn entry_name(e: &Entry) -> &str {
    match e {
        Entry::Stored { vm, .. } => &vm.def.name,
        Entry::Invalid { name, .. } => name,
    }
}

/// Interrupts the calling CPU - the management CPU, which prepares every run - from a vCPU's CPU:
/// how a VM's disk queue or NIC port says it has work while the management CPU may be halted.
fn kick_management() -> blkio::Notify {
    let bsp = apic::current_id();
    Box::new(move || runtime().platform().kick(bsp))
}

/// What the API shows of VM `def` whose runtime object is `run` (none: never started).
fn summary(def: &ember_storage::vmdef::VmDefinition, run: Option<&Arc<Vm>>, now_ms: u64) -> VmSummary {
    let report = run.map(|v| runtime().report(v)).unwrap_or_default();
    VmSummary {
        name: def.name.clone(),
        vcpus: def.vcpus,
        memory_mib: def.memory_mib,
        autostart: def.autostart,
        console_port: def.console_port,
        // While it runs, whether each NIC is connected now; else whether it is at power on.
        nics: def
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let live = run.filter(|_| report.state != VmState::Stopped).and_then(|r| r.nics().get(i));
                (
                    n.portgroup.clone(),
                    def.nic_mac(i).unwrap_or_default(),
                    live.map_or(n.connected, |p| p.link_up()),
                )
            })
            .collect(),
        uptime_ms: report.started_ms.map(|s| now_ms.saturating_sub(s)),
        run: report,
    }
}

impl VmService for Hypervisor {
    fn list(&self, now_ms: u64) -> Vec<VmSummary> {
        self.vms
            .iter()
            .map(|e| match e {
                Entry::Stored { vm, run, .. } => summary(&vm.def, run.as_ref(), now_ms),
                Entry::Invalid { name, reason, .. } => VmSummary {
                    name: name.clone(),
                    vcpus: 0,
                    memory_mib: 0,
                    autostart: false,
                    console_port: None,
                    nics: Vec::new(),
                    uptime_ms: None,
                    run: VmReport {
                        state: VmState::Invalid,
                        exit_reason: Some(reason.clone()),
                        ..VmReport::default()
                    },
                },
            })
            .collect()
    }

    fn set_nic_connected(&mut self, name: &str, index: usize, connected: bool) -> Result<(), VmError> {
        let rt = runtime();
        let run = self.vm(name).filter(|v| !v.failed() && rt.state(v) != VmState::Stopped);
        let Some(run) = run else { return Err(VmError::Conflict(format!("VM {name} is not running"))) };
        let port = run.nics().get(index).ok_or(VmError::NotFound)?;
        let refused = self.nics.iter().any(|n| Arc::ptr_eq(&n.port, port) && matches!(n.plug, Plug::Refused));
        if refused && connected {
            return Err(VmError::Conflict(format!(
                "VM {name}: nic{index} is not on the switch (its MAC address is in use by another port)"
            )));
        }
        port.set_link(connected);
        // Its vCPU 0 shows the guest the change (a configuration interrupt) at once.
        rt.wake_for_io(run);
        kprintln!("ember: VM {name}: nic{index} {}", if connected { "connected" } else { "disconnected" });
        Ok(())
    }

    fn serve_network(&mut self, net: &mut HostNetwork, now_ms: u64) -> bool {
        let rt = runtime();
        // (The management service pumped the uplinks just before; what the VMs send into the
        // switch for them goes out at the end.)
        net.set_time(now_ms);
        let mut busy = false;
        self.nics.retain_mut(|n| {
            if n.run.failed() || rt.state(&n.run) == VmState::Stopped {
                if let Plug::On(p) = n.plug {
                    net.detach(p);
                }
                // What waited gives its bytes back to the host's budget.
                n.port.clear();
                return false;
            }
            if let Plug::Waiting = n.plug {
                n.plug = match net.attach_vm(&n.label, &n.portgroup, n.port.mac(), n.settings) {
                    Ok(p) => Plug::On(p),
                    Err(e) => {
                        // Not plugged in: the guest sees its link down.
                        kprintln!("ember: ERROR: VM {e}; NIC disconnected");
                        n.port.set_link(false);
                        Plug::Refused
                    }
                };
            }
            let Plug::On(port) = n.plug else { return true };
            let (moved, delivered) = net.move_vm_frames(port, &n.port);
            if delivered {
                rt.wake_for_io(&n.run);
            }
            busy |= moved;
            true
        });
        busy | net.pump(now_ms)
    }

    fn console(&self, name: &str) -> Option<Vec<u8>> {
        self.find(name)?;
        Some(self.vm(name).map(|v| runtime().console(v)).unwrap_or_default())
    }

    fn console_since(&self, name: &str, from: u64, max: usize) -> (Vec<u8>, u64) {
        match self.vm(name) {
            Some(v) => runtime().console_since(v, from, max),
            None => (Vec::new(), from),
        }
    }

    fn console_input(&mut self, name: &str, bytes: &[u8]) -> usize {
        self.vm(name).map_or(0, |v| runtime().console_input(v, bytes))
    }

    fn act(
        &mut self,
        disks: &mut HostDisks,
        name: &str,
        action: VmAction,
        now_ms: u64,
    ) -> Result<(), VmError> {
        let rt = runtime();
        let k = self.position(name).ok_or(VmError::NotFound)?;
        let vm = match self.vms.get(k) {
            Some(Entry::Invalid { reason, .. }) => {
                return Err(VmError::Conflict(format!("VM {name} cannot run: {reason}")))
            }
            Some(Entry::Stored { vm, disks: open, run }) => {
                let new_run = run.as_ref().is_none_or(|v| !v.failed() && rt.state(v) == VmState::Stopped);
                match run {
                    // A stopped VM on a datastore starts as a new run: its files read again.
                    _ if action == VmAction::Start && new_run => {
                        let (vm, open, earlier) = (vm.clone(), open.clone(), run.clone());
                        // Two running NICs with one address would each get the other's frames.
                        for i in 0..vm.def.nics.len() {
                            let mac = vm.def.nic_mac(i).unwrap_or_default();
                            let running =
                                |n: &&ServedNic| !n.run.failed() && rt.state(&n.run) != VmState::Stopped;
                            if let Some(other) =
                                self.nics.iter().filter(running).find(|n| n.port.mac() == mac)
                            {
                                return Err(VmError::Conflict(format!(
                                    "nics[{i}]: MAC address {} is in use by {}",
                                    ember_storage::vmdef::mac_text(&mac),
                                    other.label
                                )));
                            }
                        }
                        self.finish_disks(disks, name);
                        let (run, served, nics) = Self::prepare(disks, &vm, &open, earlier.as_deref())?;
                        rt.start(&run, now_ms)?;
                        if let Some(Entry::Stored { run: r, .. }) = self.vms.get_mut(k) {
                            *r = Some(run);
                        }
                        self.served.extend(served);
                        self.nics.extend(nics);
                        return Ok(());
                    }
                    Some(v) => v.clone(),
                    None => return Err(VmError::Conflict(format!("VM {name} is stopped"))),
                }
            }
            None => return Err(VmError::NotFound),
        };
        match action {
            VmAction::Start => rt.start(&vm, now_ms),
            VmAction::Reset => rt.request(&vm, true),
            VmAction::Stop => {
                // The guest is asked to shut down; `poll` powers it off if it has not within the
                // time-out.
                rt.press_power_button(&vm)?;
                let deadline = now_ms.saturating_add(SHUTDOWN_TIMEOUT_MS);
                self.stopping.retain(|(v, _)| !Arc::ptr_eq(v, &vm));
                self.stopping.push((vm.clone(), deadline));
                kprintln!(
                    "ember: VM {name}: ACPI power button pressed (shut down within {} s, or powered off)",
                    SHUTDOWN_TIMEOUT_MS / 1000
                );
                Ok(())
            }
            VmAction::PowerOff => {
                rt.request_stop(&vm, "powered off through the API")?;
                // The run ends at its CPUs' next look (a kick brings them there at once).
                for _ in 0..2000 {
                    if vm.failed() || rt.state(&vm) == VmState::Stopped {
                        break;
                    }
                    timer::delay_us(500);
                }
                Ok(())
            }
        }
    }

    fn cancel_autostart(&mut self) {
        if !self.autostart.is_empty() {
            kprintln!(
                "ember: autostart: {} VM(s) not started (the host is shutting down)",
                self.autostart.len()
            );
            self.autostart.clear();
        }
    }

    fn add(&mut self, disks: &mut HostDisks, vm: StoredVm) -> Result<(), VmError> {
        let name = vm.def.name.clone();
        if self.position(&name).is_some() {
            return Err(VmError::Conflict(format!("a VM named {name} exists already")));
        }
        let open = vmstore::open_disks(disks, &vm).map_err(|e| VmError::Conflict(e.to_string()))?;
        kprintln!("ember: VM {name}: registered ({})", vm.path);
        self.vms.push(Entry::Stored { vm, disks: open, run: None });
        Ok(())
    }

    fn remove(&mut self, disks: &mut HostDisks, name: &str) -> Result<StoredVm, VmError> {
        let k = self.position(name).ok_or(VmError::NotFound)?;
        let rt = runtime();
        match self.vms.get(k) {
            Some(Entry::Stored { run: Some(v), .. }) if v.failed() => {
                return Err(VmError::Conflict(format!(
                    "VM {name} failed; it can be changed or removed after the host restarts"
                )))
            }
            Some(Entry::Stored { run: Some(v), .. }) if rt.state(v) != VmState::Stopped => {
                return Err(VmError::Conflict(format!(
                    "VM {name} is {}; stop it first",
                    rt.state(v).as_str()
                )))
            }
            _ => {}
        }
        self.finish_disks(disks, name);
        disks.release_held(&vmstore::holder(name));
        match self.vms.remove(k) {
            Entry::Stored { vm, .. } => Ok(vm),
            Entry::Invalid { path: Some(path), name: n, .. } => {
                // Its definition could not be read: what is known of it.
                let def = ember_storage::vmdef::VmDefinition {
                    name: n,
                    vcpus: 1,
                    memory_mib: 16,
                    kernel: String::new(),
                    initrd: None,
                    cmdline: String::new(),
                    disks: Vec::new(),
                    nics: Vec::new(),
                    autostart: false,
                    console_port: None,
                };
                Ok(StoredVm { path, def })
            }
            other => {
                self.vms.insert(k, other);
                Err(VmError::Conflict(format!("VM {name} is not in the inventory of a datastore")))
            }
        }
    }

    fn poll(&mut self, disks: &mut HostDisks, now_ms: u64, now: u64) -> bool {
        if !self.autostart.is_empty() {
            self.autostart_due(disks, now_ms);
        }
        // Guests that did not shut down in time are powered off.
        let rt = runtime();
        self.stopping.retain(|(vm, deadline)| {
            if vm.failed() || rt.state(vm) == VmState::Stopped {
                return false;
            }
            if now_ms < *deadline {
                return true;
            }
            let why = format!(
                "did not shut down within {} s of its ACPI power button; powered off",
                SHUTDOWN_TIMEOUT_MS / 1000
            );
            kprintln!("ember: VM {}: {why}", vm.def.name);
            let _ = rt.request_stop(vm, &why);
            false
        });
        self.last_unix = now;
        let mut done = false;
        // The disks of runs that ended give back what they held (completions nobody will take).
        self.served.retain(|s| {
            let ended = s.run.as_ref().is_some_and(|v| v.failed() || rt.state(v) == VmState::Stopped);
            if ended && s.queue.pending() == 0 {
                s.queue.discard();
                return false;
            }
            true
        });
        for s in &mut self.served {
            if s.queue.pending() == 0 {
                continue;
            }
            let (q, inode, label) = (&s.queue, s.disk.inode, s.label.as_str());
            let r = disks.with_mount(s.disk.mount, |ds, dev| {
                Ok(blkio::serve(q, ds, dev, inode, now, SERVE_REQUESTS, label))
            });
            let served = match r {
                Some(Ok(Ok(served))) => served,
                _ => {
                    // The datastore is gone: every request fails.
                    let mut failed = blkio::Served::default();
                    while let Some(reqs) = q.take_requests(SERVE_REQUESTS).filter(|r| !r.is_empty()) {
                        for r in reqs {
                            q.complete(blkio::IoDone { tag: r.tag, ok: false, data: Vec::new() });
                            failed.completed += 1;
                        }
                    }
                    failed.errors.push(format!("{label}: the datastore is not mounted"));
                    failed
                }
            };
            if let Some(e) = served.errors.first() {
                let n = served.errors.len() as u64;
                if s.logged_ms.is_none_or(|t| now_ms.saturating_sub(t) >= ERROR_LOG_MS) {
                    let more = s.unlogged.saturating_add(n).saturating_sub(1);
                    let also =
                        if more > 0 { format!(" (and {more} more I/O errors)") } else { String::new() };
                    kprintln!("ember: ERROR: {e}{also}");
                    s.logged_ms = Some(now_ms);
                    s.unlogged = 0;
                } else {
                    s.unlogged = s.unlogged.saturating_add(n);
                }
            }
            if served.completed > 0 && !self.written.contains(&s.disk.mount) {
                self.written.push(s.disk.mount);
            }
            if served.completed > 0 {
                // Its vCPU 0 completes them (even halted, waiting for the interrupt).
                if let Some(run) = &s.run {
                    rt.wake_for_io(run);
                }
                done = true;
            }
        }
        // Blocks a guest's writes allocated become part of the committed datastore at its next
        // flush, or within a second, whichever comes first (a power cut loses at most the last
        // second of writes the guest did not flush).
        if now_ms.saturating_sub(self.last_commit_ms) >= COMMIT_MS && !self.written.is_empty() {
            self.last_commit_ms = now_ms;
            for mount in core::mem::take(&mut self.written) {
                let r =
                    disks.with_mount(mount, |ds, dev| if ds.is_dirty() { ds.commit(dev) } else { Ok(()) });
                if let Some(Ok(Err(e))) = r {
                    kprintln!("ember: ERROR: committing the datastore of VM disks failed: {e}");
                }
            }
        }
        done
    }
}
