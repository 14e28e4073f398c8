//! The hypervisor as the appliance runs it: the VM runtime (`ember_vmm::runtime`: run queue, VM
//! lifecycle, the CPUs' work loop) on this machine (`ember_platform::arch::x86_64::hypervisor`:
//! SVM, the clock, kicks, guest RAM), the VMs found on the boot media, and their disks' write-back.
//!
//! - The management plane (bootstrap CPU) holds a [`Hypervisor`]: the VMs on the boot media, served
//!   to the API as a `VmService`.
//! - Every application processor with SVM runs [`ap_worker`]: a runtime worker for good.
//!
//! Disks are virtio block devices on virtio-mmio (`ember_vmm::virtio_blk`), backed by the images the
//! UEFI phase read into memory as write-back caches of their files on the ESP
//! (`ember_vmm::disk`): the management CPU ([`DiskWriter`]) writes changed chunks to the file's
//! clusters on the boot media every second (`ember_vmm::writeback::WRITEBACK_MS`) and whenever a
//! guest flushes (the flush completes after the device's own flush). A disk whose file cannot be
//! located on the boot media keeps its writes in memory only (said in the log at boot).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write;
use ember_hw::mm::frames::FrameAllocator;
use ember_net::vms::{VmAction, VmError, VmReport, VmService, VmState, VmSummary};
use ember_platform::arch::x86_64::hypervisor::{self, HostPlatform};
use ember_platform::arch::x86_64::svm::SvmCpu;
use ember_platform::arch::x86_64::{apic, cpu, timer};
use ember_platform::boot::vms::VmImage;
use ember_platform::console;
use ember_storage::block::BlockDevice;
use ember_storage::fatfile::FileExtents;
use ember_vmm::disk::WritebackImage;
use ember_vmm::runtime::{Platform, Runtime, Vm};
use ember_vmm::writeback::{BackedDisk, Writeback};
use spin::{Mutex, Once};

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

/// A VM disk's image: a write-back cache of its file on the boot media.
type Image = WritebackImage<&'static mut [u8]>;

enum Entry {
    Vm(Arc<Vm>),
    /// A VM directory whose definition or files cannot be used.
    Invalid {
        name: String,
        reason: String,
    },
}

/// The VMs of this host, as the management plane sees them.
pub struct Hypervisor {
    vms: Vec<Entry>,
    writer: Option<DiskWriter>,
}

/// Writes the VMs' changed disk chunks back to the boot media, on the management CPU (which owns
/// the boot media's driver), in bounded steps (`ember_vmm::writeback`).
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
            runtime().kick_workers();
        }
    }
}

impl Hypervisor {
    /// The VMs found on the boot media; `locate`: where a file of the ESP (`ember/vms/...`) lies on
    /// the boot media, for writing VM disks back (`Err`: why they stay in memory).
    pub fn new(
        images: Vec<VmImage>,
        locate: &mut dyn FnMut(&str) -> Result<FileExtents, String>,
    ) -> Hypervisor {
        let mut backed = Vec::new();
        let vms = images
            .into_iter()
            .map(|i| match i.loaded {
                Ok(l) => {
                    let name = &l.definition.name;
                    let disks = l
                        .disks
                        .into_iter()
                        .zip(&l.definition.disks)
                        .map(|(image, d)| {
                            let path = format!("{}/{}", i.dir, d.file);
                            let place = if d.readonly { Err(String::from("read-only")) } else { locate(&path) };
                            let place = place.and_then(|p| {
                                if p.size == image.len() as u64 {
                                    Ok(p)
                                } else {
                                    Err(format!("the file holds {} bytes, the image {}", p.size, image.len()))
                                }
                            });
                            let disk: Arc<Mutex<Image>> =
                                Arc::new(Mutex::new(WritebackImage::new(image, place.is_ok())));
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
                        .collect();
                    Entry::Vm(Arc::new(Vm::new(l.definition, l.kernel, l.initrd, disks)))
                }
                Err(reason) => {
                    Entry::Invalid { name: i.dir.rsplit('/').next().unwrap_or(&i.dir).to_string(), reason }
                }
            })
            .collect();
        Hypervisor { vms, writer: Some(DiskWriter(Writeback::new(backed))) }
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

    fn vm(&self, name: &str) -> Option<&Arc<Vm>> {
        match self.find(name)? {
            Entry::Vm(v) => Some(v),
            Entry::Invalid { .. } => None,
        }
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
                Err(e) => kprintln!("ember: ERROR: VM {n}: autostart failed: {e}"),
            }
        }
    }
}

impl VmService for Hypervisor {
    fn list(&self, now_ms: u64) -> Vec<VmSummary> {
        self.vms
            .iter()
            .map(|e| match e {
                Entry::Vm(v) => {
                    let run = runtime().report(v);
                    VmSummary {
                        name: v.def.name.clone(),
                        vcpus: v.def.vcpus,
                        memory_mib: v.def.memory_mib,
                        autostart: v.def.autostart,
                        console_port: v.def.console_port,
                        uptime_ms: run.started_ms.map(|s| now_ms.saturating_sub(s)),
                        run,
                    }
                }
                Entry::Invalid { name, reason } => VmSummary {
                    name: name.clone(),
                    vcpus: 0,
                    memory_mib: 0,
                    autostart: false,
                    console_port: None,
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

    fn console(&self, name: &str) -> Option<Vec<u8>> {
        match self.find(name)? {
            Entry::Vm(v) => Some(runtime().console(v)),
            Entry::Invalid { .. } => Some(Vec::new()),
        }
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

    fn act(&mut self, name: &str, action: VmAction, now_ms: u64) -> Result<(), VmError> {
        let vm = match self.find(name).ok_or(VmError::NotFound)? {
            Entry::Vm(v) => v.clone(),
            Entry::Invalid { reason, .. } => {
                return Err(VmError::Conflict(format!("VM {name} cannot run: {reason}")))
            }
        };
        let rt = runtime();
        match action {
            VmAction::Start => rt.start(&vm, now_ms),
            VmAction::Reset => rt.request(&vm, true),
            VmAction::Stop => {
                rt.request(&vm, false)?;
                // The run ends at its CPUs' next look (a kick brings them there at once).
                for _ in 0..2000 {
                    if vm.failed() || rt.report(&vm).state == VmState::Stopped {
                        break;
                    }
                    timer::delay_us(500);
                }
                Ok(())
            }
        }
    }
}
