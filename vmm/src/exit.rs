//! Vendor-neutral VM exits and their handling (Cloud Hypervisor's `VmExit` pattern): the SVM
//! backend (and later VMX) translates its exit codes into a [`VmExit`]; [`handle_exit`] does the
//! work once for both - port I/O through the VM's port bus ([`PortBus`]), HLT, and ending the VM with a reason
//! for what a guest must not do (a triple fault) or what is not emulated.
//!
//! Also here: the decoding of SVM's IOIO exit information (AMD APM vol. 2, 15.10.2), which is pure
//! bit layout and so host-testable.

use super::bus::VmBus;
use super::cpuid::Leaf;
use super::decode::{self, Access, Source};
use super::memory::GuestMemory;
use super::msr::{MsrAccess, Saved, VcpuMsrs};
use super::paging::{self, PagingState};
use super::pvclock::{GuestClock, MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK_NEW};
use alloc::format;
use alloc::string::String;

/// Why the guest stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// IN or OUT of `size` bytes (1, 2, 4); `next_rip` is the instruction after it.
    Io { port: u16, size: u8, input: bool, next_rip: u64 },
    /// HLT (RIP still points at it).
    Hlt,
    /// CPUID (leaf in EAX, subleaf in ECX); `next_rip` is the instruction after it.
    Cpuid { next_rip: u64 },
    /// RDMSR (`write` false) or WRMSR of the MSR in ECX (value in EDX:EAX).
    Msr { write: bool, next_rip: u64 },
    /// PAUSE (RIP still points at it): the guest spins, waiting for another CPU.
    Pause,
    /// A host interrupt arrived while the guest ran: resume it.
    HostInterrupt,
    /// The guest can take an interrupt now (the window the loop asked for opened).
    InterruptWindow,
    /// The guest triple-faulted.
    Shutdown,
    /// An instruction the VM does not offer (SVM's own, MONITOR/MWAIT): #UD, as on a CPU without
    /// it.
    Undefined { what: &'static str },
    /// An exception the host intercepts only to keep its CPU (#DB and #AC: a guest can make their
    /// delivery fault again forever, which would never exit): delivered to the guest as it was.
    Exception { vector: u8, error_code: Option<u32> },
    /// An instruction that must not reach the hardware but that the guest may use, done as a
    /// no-op (INVD would throw away the host's dirty cache lines, WBINVD flushes every cache of
    /// the host CPU); `next_rip` is the instruction after it.
    Skipped { what: &'static str, next_rip: u64 },
    /// An instruction the VM refuses with #GP(0) (RDPMC: the host's performance counters).
    Refused { what: &'static str },
    /// VMMCALL (VMCALL on Intel): a hypercall of the KVM ABI, its number in RAX. None is offered;
    /// the answer is KVM's for an unknown one, so a guest that sees the KVM signature and tries
    /// one (Linux's `ptp_kvm` does, without a feature bit) carries on. `next_rip` is after it.
    Hypercall { next_rip: u64 },
    /// A guest access to a guest-physical address nothing is mapped at.
    NestedPageFault { gpa: u64, write: bool },
    /// The CPU refused the guest state.
    InvalidState,
    /// Anything else, with the vendor's exit code and a name for the log.
    Other { code: u64, what: String },
}

/// What the vCPU loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    Resume,
    /// The guest halted: wait for an interrupt for it (or, with none possible, stop).
    Halted,
    /// The guest spins waiting for another vCPU: it may give way to other work.
    Spinning,
    /// End this VM; the reason goes to the log and the API.
    Stop(String),
}

/// General-purpose register numbers (the ModRM/REX numbering).
pub mod gpr {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
}

/// The registers an exit handler reads and writes.
pub trait VcpuRegs {
    /// General-purpose register `index` (0 = RAX ... 15 = R15).
    fn gpr(&self, index: usize) -> u64;
    fn set_gpr(&mut self, index: usize, v: u64);
    fn rip(&self) -> u64;
    /// Moves RIP on: the instruction at the old RIP is done (emulated or skipped), so an interrupt
    /// shadow it was in (after STI or MOV SS) ends with it.
    fn set_rip(&mut self, v: u64);

    /// An MSR the backend keeps (VMCB/VMCS state).
    fn saved_msr(&self, which: Saved) -> u64;
    fn set_saved_msr(&mut self, which: Saved, v: u64);
    /// Delivers exception `vector` (with `error_code`) to the guest on its next entry.
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>);
    /// The guest's paging registers (to fetch the instruction behind an MMIO access).
    fn paging(&self) -> PagingState;
    /// What the guest's TSC adds to the host's (the TSC offset).
    fn tsc_offset(&self) -> u64;

    fn rax(&self) -> u64 {
        self.gpr(gpr::RAX)
    }
    fn set_rax(&mut self, v: u64) {
        self.set_gpr(gpr::RAX, v)
    }
}

/// Implements [`VcpuRegs`] for a test vCPU with the fields `regs: [u64; 16]` and `rip: u64`: it
/// keeps no MSRs, runs without paging and ignores injected exceptions.
#[cfg(test)]
macro_rules! plain_test_regs {
    ($t:ty) => {
        impl $crate::exit::VcpuRegs for $t {
            fn gpr(&self, i: usize) -> u64 {
                self.regs[i]
            }
            fn set_gpr(&mut self, i: usize, v: u64) {
                self.regs[i] = v
            }
            fn rip(&self) -> u64 {
                self.rip
            }
            fn set_rip(&mut self, v: u64) {
                self.rip = v
            }
            fn saved_msr(&self, _: $crate::msr::Saved) -> u64 {
                0
            }
            fn set_saved_msr(&mut self, _: $crate::msr::Saved, _: u64) {}
            fn inject_exception(&mut self, _: u8, _: Option<u32>) {}
            fn paging(&self) -> $crate::paging::PagingState {
                $crate::paging::PagingState { cr0: 0, cr3: 0, cr4: 0, efer: 0 }
            }
            fn tsc_offset(&self) -> u64 {
                0
            }
        }
    };
}
#[cfg(test)]
pub(crate) use plain_test_regs;

/// KVM's "no such hypercall" (RAX gets its negation).
pub const KVM_ENOSYS: u64 = 1000;

/// #GP, general protection (error code 0 for MSR faults).
pub const GP_VECTOR: u8 = 13;
/// #UD, invalid opcode.
pub const UD_VECTOR: u8 = 6;

/// The VM's facts an exit handler needs beyond registers: its I/O bus, its CPUID answers, the
/// vCPU's MSRs, its memory and its clock.
pub struct ExitContext<'a, C: Fn(u32, u32) -> Leaf> {
    /// The vCPU's ports and MMIO space (guest-physical ranges without RAM behind them).
    pub bus: &'a mut dyn VmBus,
    /// The guest's CPUID (see [`super::cpuid::guest_cpuid`]).
    pub cpuid: C,
    pub msrs: &'a mut VcpuMsrs,
    /// The VM's RAM (instruction fetches for MMIO emulation, the paravirtual clock's structures).
    pub mem: &'a mut dyn GuestMemory,
    /// What the paravirtual clock tells the guest.
    pub clock: GuestClock,
}

/// Whether a WRMSR of `msr` makes the hypervisor write guest memory (the paravirtual clock's
/// structures), so it is handled with the VM's memory at hand ([`handle_exit`]).
fn writes_guest_clock(msr: u32, msrs: &VcpuMsrs) -> bool {
    msr == MSR_KVM_WALL_CLOCK_NEW
        || msr == MSR_KVM_SYSTEM_TIME_NEW
        || (msr == MSR_TSC && msrs.clock.enabled())
}

/// The time-stamp counter's MSR.
const MSR_TSC: u32 = 0x10;
/// IA32_APIC_BASE.
const MSR_APIC_BASE: u32 = 0x1b;
/// The x2APIC's registers.
const X2APIC_MSRS: core::ops::RangeInclusive<u32> = 0x800..=0x8ff;
/// IA32_TSC_DEADLINE: the local APIC timer's deadline in TSC-deadline mode (in the VM's devices).
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;

/// The host time (ns, the clock the devices run on) at which a vCPU whose TSC is the host's plus
/// `tsc_offset` reads `tsc`.
fn tsc_to_host_ns(tsc: u64, tsc_offset: u64, clock: &GuestClock) -> u64 {
    let (mul, shift) = crate::pvclock::time_scale(clock.tsc_hz);
    crate::pvclock::scale_delta(tsc.wrapping_sub(tsc_offset), mul, shift)
}

/// RAX after an IN of `size` bytes: 8- and 16-bit inputs keep the other bits, 32-bit ones clear
/// bits 32-63 (as any 32-bit register write does).
pub fn merge_input(rax: u64, size: u8, value: u32) -> u64 {
    match size {
        1 => (rax & !0xff) | (value as u64 & 0xff),
        2 => (rax & !0xffff) | (value as u64 & 0xffff),
        _ => value as u64,
    }
}

/// Handles an exit that concerns only the vCPU itself - CPUID, MSRs, HLT, PAUSE, exceptions and the
/// instructions refused or skipped - without the VM's devices (so without the VM-wide device lock);
/// `None` for the others (port and MMIO accesses, interrupts and windows, the ends of a VM), which
/// [`handle_exit`] handles.
pub fn handle_local_exit(
    exit: &VmExit,
    regs: &mut impl VcpuRegs,
    cpuid: &impl Fn(u32, u32) -> Leaf,
    msrs: &mut VcpuMsrs,
) -> Option<ExitAction> {
    Some(match exit {
        VmExit::Hlt => {
            // HLT is one byte; the guest continues after it once woken.
            regs.set_rip(regs.rip().wrapping_add(1));
            ExitAction::Halted
        }
        VmExit::Cpuid { next_rip } => {
            let l = cpuid(regs.rax() as u32, regs.gpr(gpr::RCX) as u32);
            for (r, v) in [(gpr::RAX, l.eax), (gpr::RBX, l.ebx), (gpr::RCX, l.ecx), (gpr::RDX, l.edx)] {
                regs.set_gpr(r, v as u64);
            }
            regs.set_rip(*next_rip);
            ExitAction::Resume
        }
        VmExit::Msr { write, next_rip } => {
            let msr = regs.gpr(gpr::RCX) as u32;
            // The APIC's registers (the timer's deadline, x2APIC mode, the mode itself) are the
            // VM's devices'.
            if msr == MSR_TSC_DEADLINE
                || X2APIC_MSRS.contains(&msr)
                || (*write && (msr == MSR_APIC_BASE || writes_guest_clock(msr, msrs)))
            {
                return None;
            }
            msr_exit(regs, msrs, *write, *next_rip)
        }
        VmExit::Pause => {
            // PAUSE is F3 90.
            regs.set_rip(regs.rip().wrapping_add(2));
            ExitAction::Spinning
        }
        VmExit::Undefined { .. } => {
            // RIP stays at the instruction, as for any fault.
            regs.inject_exception(UD_VECTOR, None);
            ExitAction::Resume
        }
        VmExit::Exception { vector, error_code } => {
            regs.inject_exception(*vector, *error_code);
            ExitAction::Resume
        }
        VmExit::Skipped { next_rip, .. } => {
            regs.set_rip(*next_rip);
            ExitAction::Resume
        }
        VmExit::Refused { .. } => {
            regs.inject_exception(GP_VECTOR, Some(0));
            ExitAction::Resume
        }
        VmExit::Hypercall { next_rip } => {
            regs.set_rax(KVM_ENOSYS.wrapping_neg());
            regs.set_rip(*next_rip);
            ExitAction::Resume
        }
        _ => return None,
    })
}

/// RDMSR or WRMSR (the register in ECX, the value in EDX:EAX), as [`VcpuMsrs`] decides.
fn msr_exit(regs: &mut impl VcpuRegs, msrs: &mut VcpuMsrs, write: bool, next_rip: u64) -> ExitAction {
    let msr = regs.gpr(gpr::RCX) as u32;
    let value = (regs.gpr(gpr::RDX) << 32) | (regs.rax() & 0xffff_ffff);
    let access = if write { msrs.write(msr, value) } else { msrs.read(msr) };
    match (access, write) {
        (MsrAccess::Fault, _) => {
            // As on hardware without the register: #GP(0), RIP stays at the instruction.
            regs.inject_exception(GP_VECTOR, Some(0));
            return ExitAction::Resume;
        }
        (MsrAccess::Saved(which), true) => regs.set_saved_msr(which, value),
        (MsrAccess::Saved(which), false) => {
            let v = regs.saved_msr(which);
            regs.set_rax(v & 0xffff_ffff);
            regs.set_gpr(gpr::RDX, v >> 32);
        }
        (MsrAccess::Done(_), true) => {}
        (MsrAccess::Done(v), false) => {
            regs.set_rax(v & 0xffff_ffff);
            regs.set_gpr(gpr::RDX, v >> 32);
        }
    }
    regs.set_rip(next_rip);
    ExitAction::Resume
}

/// RDMSR or WRMSR of a register of the VM's local APIC: `access` takes the value written
/// (`Some`) or reads (`None`), and answers `None` for a #GP; a read's value goes to EDX:EAX; RIP
/// moves past the instruction unless it faulted.
fn apic_msr(
    regs: &mut impl VcpuRegs,
    write: bool,
    next_rip: u64,
    access: impl FnOnce(Option<u64>) -> Option<u64>,
) -> ExitAction {
    let value = (regs.gpr(gpr::RDX) << 32) | (regs.rax() & 0xffff_ffff);
    match access(write.then_some(value)) {
        None => {
            regs.inject_exception(GP_VECTOR, Some(0));
            return ExitAction::Resume;
        }
        Some(v) if !write => {
            regs.set_rax(v & 0xffff_ffff);
            regs.set_gpr(gpr::RDX, v >> 32);
        }
        Some(_) => {}
    }
    regs.set_rip(next_rip);
    ExitAction::Resume
}

/// Handles one exit.
pub fn handle_exit<C: Fn(u32, u32) -> Leaf>(
    exit: &VmExit,
    regs: &mut impl VcpuRegs,
    vm: &mut ExitContext<'_, C>,
) -> ExitAction {
    if let Some(action) = handle_local_exit(exit, regs, &vm.cpuid, vm.msrs) {
        return action;
    }
    let bus = &mut *vm.bus;
    match exit {
        // The local APIC timer's deadline.
        VmExit::Msr { write, next_rip } if regs.gpr(gpr::RCX) as u32 == MSR_TSC_DEADLINE => {
            let (offset, clock) = (regs.tsc_offset(), vm.clock);
            apic_msr(regs, *write, *next_rip, |value| match value {
                Some(v) => bus.set_tsc_deadline(v, tsc_to_host_ns(v, offset, &clock)).then_some(0),
                None => bus.tsc_deadline(),
            })
        }
        // The x2APIC's registers, in x2APIC mode only.
        VmExit::Msr { write, next_rip } if X2APIC_MSRS.contains(&(regs.gpr(gpr::RCX) as u32)) => {
            let msr = regs.gpr(gpr::RCX) as u32;
            let x2apic = vm.msrs.x2apic();
            apic_msr(regs, *write, *next_rip, |value| match value {
                _ if !x2apic => None,
                Some(v) => bus.x2apic_write(msr, v).then_some(0),
                None => bus.x2apic_read(msr),
            })
        }
        // IA32_APIC_BASE: entering or leaving x2APIC mode reaches the APIC.
        VmExit::Msr { write: true, next_rip } if regs.gpr(gpr::RCX) as u32 == MSR_APIC_BASE => {
            let before = vm.msrs.x2apic();
            let action = msr_exit(regs, vm.msrs, true, *next_rip);
            if vm.msrs.x2apic() != before {
                bus.set_x2apic(vm.msrs.x2apic());
            }
            action
        }
        // A write to the paravirtual clock's MSRs (or to the TSC under it): the structures are
        // (re)written in guest memory.
        VmExit::Msr { write: true, next_rip } => {
            let msr = regs.gpr(gpr::RCX) as u32;
            let action = msr_exit(regs, vm.msrs, true, *next_rip);
            if msr == MSR_KVM_WALL_CLOCK_NEW {
                vm.msrs.clock.publish_wall_clock(&vm.clock, vm.mem);
            } else {
                vm.msrs.clock.publish(&vm.clock, regs.tsc_offset(), vm.mem);
            }
            action
        }
        VmExit::Io { port, size, input, next_rip } => {
            if *input {
                let v = bus.read(*port, *size);
                regs.set_rax(merge_input(regs.rax(), *size, v));
            } else {
                bus.write(*port, *size, regs.rax() as u32);
            }
            regs.set_rip(*next_rip);
            ExitAction::Resume
        }
        VmExit::Hlt
        | VmExit::Cpuid { .. }
        | VmExit::Msr { .. }
        | VmExit::Pause
        | VmExit::Undefined { .. }
        | VmExit::Exception { .. }
        | VmExit::Skipped { .. }
        | VmExit::Refused { .. }
        | VmExit::Hypercall { .. } => ExitAction::Resume, // handled above
        VmExit::HostInterrupt | VmExit::InterruptWindow => ExitAction::Resume,
        VmExit::Shutdown => ExitAction::Stop(format!("triple fault at guest RIP {:#x}", regs.rip())),
        VmExit::NestedPageFault { gpa, write } if !vm.bus.mmio_claims(*gpa, 1) => ExitAction::Stop(format!(
            "{} of guest-physical {gpa:#x} (nothing is mapped there) at RIP {:#x}",
            if *write { "write" } else { "read" },
            regs.rip()
        )),
        VmExit::NestedPageFault { gpa, .. } => match emulate_mmio(*gpa, regs, vm) {
            Ok(()) => ExitAction::Resume,
            Err(why) => ExitAction::Stop(format!("MMIO access to {gpa:#x} at RIP {:#x}: {why}", regs.rip())),
        },
        VmExit::InvalidState => ExitAction::Stop(String::from("the CPU refused the vCPU state")),
        VmExit::Other { code, what } => {
            ExitAction::Stop(format!("unhandled exit {code:#x} ({what}) at guest RIP {:#x}", regs.rip()))
        }
    }
}

/// Performs the MMIO access of the instruction at RIP (fetched through the guest's page tables,
/// decoded) on the MMIO bus, and moves RIP past it.
fn emulate_mmio<C: Fn(u32, u32) -> Leaf>(
    gpa: u64,
    regs: &mut impl VcpuRegs,
    vm: &mut ExitContext<'_, C>,
) -> Result<(), String> {
    let (bytes, n) =
        paging::fetch_instruction(vm.mem, &regs.paging(), regs.rip()).map_err(|e| format!("{e}"))?;
    let ins = decode::decode_mmio(bytes.get(..n).unwrap_or_default()).map_err(|e| format!("{e}"))?;
    match ins.access {
        Access::Read { size, dest, extend } => {
            let mut buf = [0u8; 8];
            let Some(part) = buf.get_mut(..size as usize) else {
                return Err(format!("a {size}-byte access"));
            };
            if !vm.bus.mmio_read(gpa, part) {
                return Err(String::from("the access runs past the device"));
            }
            let i = dest.index as usize;
            regs.set_gpr(i, decode::loaded_into(regs.gpr(i), dest, size, extend, u64::from_le_bytes(buf)));
        }
        Access::Write { size, value } => {
            let v = match value {
                Source::Register(r) => decode::operand_of(regs.gpr(r.index as usize), r),
                Source::Immediate(i) => i,
            };
            let bytes = v.to_le_bytes();
            let Some(bytes) = bytes.get(..size as usize) else { return Err(format!("a {size}-byte access")) };
            if !vm.bus.mmio_write(gpa, bytes) {
                return Err(String::from("the access runs past the device"));
            }
        }
    }
    regs.set_rip(regs.rip().wrapping_add(ins.len as u64));
    Ok(())
}

/// An SVM IOIO exit from EXITINFO1 and EXITINFO2 (the next RIP, given for IOIO exits even without
/// the next-RIP save feature).
pub fn svm_io_exit(info1: u64, info2: u64) -> VmExit {
    let input = info1 & 1 != 0;
    if info1 & (1 << 2) != 0 {
        return VmExit::Other { code: 0x7b, what: String::from("string I/O (INS/OUTS) is not emulated") };
    }
    let size = match (info1 >> 4) & 0x7 {
        1 => 1,
        2 => 2,
        4 => 4,
        other => {
            return VmExit::Other { code: 0x7b, what: format!("I/O exit with operand size bits {other:#b}") }
        }
    };
    VmExit::Io { port: (info1 >> 16) as u16, size, input, next_rip: info2 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Buses, MmioDevice, PortDevice};
    use crate::memory::GuestRam;
    use crate::GuestPhysAddr;
    use alloc::boxed::Box;
    use alloc::rc::Rc;
    use alloc::vec::Vec;
    use core::cell::RefCell;

    #[derive(Default)]
    struct Regs {
        rax: u64,
        rip: u64,
        others: [u64; 16],
        efer: u64,
        tsc_offset: u64,
        injected: Vec<(u8, Option<u32>)>,
    }
    impl VcpuRegs for Regs {
        fn tsc_offset(&self) -> u64 {
            self.tsc_offset
        }
        fn gpr(&self, i: usize) -> u64 {
            if i == 0 {
                self.rax
            } else {
                self.others[i]
            }
        }
        fn set_gpr(&mut self, i: usize, v: u64) {
            if i == 0 {
                self.rax = v
            } else {
                self.others[i] = v
            }
        }
        fn saved_msr(&self, which: Saved) -> u64 {
            match which {
                Saved::Efer => self.efer,
                // The host's TSC reads 0 in these tests.
                Saved::Tsc => self.tsc_offset,
                _ => panic!("{which:?}"),
            }
        }
        fn set_saved_msr(&mut self, which: Saved, v: u64) {
            match which {
                Saved::Efer => self.efer = v,
                Saved::Tsc => self.tsc_offset = v,
                _ => panic!("{which:?}"),
            }
        }
        fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
            self.injected.push((vector, error_code));
        }
        fn paging(&self) -> PagingState {
            // Paging off: RIP is the guest-physical address of the instruction.
            PagingState { cr0: 1, cr3: 0, cr4: 0, efer: 0 }
        }
        fn rip(&self) -> u64 {
            self.rip
        }
        fn set_rip(&mut self, v: u64) {
            self.rip = v;
        }
    }

    struct Port(Rc<RefCell<Vec<u32>>>);
    impl PortDevice for Port {
        fn read(&mut self, _: u16, _: u8) -> u32 {
            0x1234_5678
        }
        fn write(&mut self, _: u16, _: u8, v: u32) {
            self.0.borrow_mut().push(v);
        }
    }

    fn no_cpuid(_: u32, _: u32) -> Leaf {
        Leaf::default()
    }

    /// A VM's buses, MSRs and RAM for the exit handler.
    struct World {
        bus: Buses,
        msrs: VcpuMsrs,
        ram: GuestRam,
    }

    const CLOCK: GuestClock =
        GuestClock { tsc_hz: 2_000_000_000, wall_base: 1_700_000_000, invariant_tsc: true };

    impl World {
        fn new() -> Self {
            World { bus: Buses::default(), msrs: VcpuMsrs::new(0), ram: GuestRam::new(0x1_0000) }
        }

        fn ctx(&mut self) -> ExitContext<'_, fn(u32, u32) -> Leaf> {
            ExitContext {
                bus: &mut self.bus,
                cpuid: no_cpuid,
                msrs: &mut self.msrs,
                mem: &mut self.ram,
                clock: CLOCK,
            }
        }
    }

    #[test]
    fn cpuid_exits_answer_from_the_policy() {
        let mut w = World::new();
        let answer = |leaf: u32, sub: u32| Leaf { eax: leaf, ebx: sub, ecx: 0x1234, edx: 0xffff_ffff };
        let mut vm =
            ExitContext { bus: &mut w.bus, cpuid: answer, msrs: &mut w.msrs, mem: &mut w.ram, clock: CLOCK };
        let mut r = Regs { rax: 0xdead_0000_4000_0000, rip: 0x3000, ..Regs::default() };
        r.others[gpr::RCX] = 7;
        r.others[gpr::RBX] = u64::MAX;
        assert_eq!(handle_exit(&VmExit::Cpuid { next_rip: 0x3002 }, &mut r, &mut vm), ExitAction::Resume);
        assert_eq!(
            (r.rax, r.others[gpr::RBX], r.others[gpr::RCX], r.others[gpr::RDX]),
            (0x4000_0000, 7, 0x1234, 0xffff_ffff)
        );
        assert_eq!(r.rip, 0x3002);
    }

    /// An MMIO register file: 0x30 reads as 0x14, writes are recorded.
    type Writes = alloc::sync::Arc<spin::Mutex<Vec<(u64, Vec<u8>)>>>;
    struct Regs32(Writes);
    impl MmioDevice for Regs32 {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(0);
            if offset == 0x30 {
                data[0] = 0x14;
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.lock().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn mmio_accesses_are_decoded_and_emulated() {
        let writes = Writes::default();
        let mut w = World::new();
        w.bus.mmio.add(0xfee0_0000, 0x1000, Box::new(Regs32(writes.clone()))).unwrap();
        // mov eax, [rdi+0x30]; mov dword [rdi+0x80], ecx; mov byte [rdi+0xb0], 0x7f; add [rdi], eax
        w.ram
            .write(
                GuestPhysAddr(0x2000),
                &[0x8b, 0x47, 0x30, 0x89, 0x8f, 0x80, 0, 0, 0, 0xc6, 0x87, 0xb0, 0, 0, 0, 0x7f, 0x01, 0x07],
            )
            .unwrap();
        let mut vm = w.ctx();
        let mut r = Regs { rax: u64::MAX, rip: 0x2000, ..Regs::default() };
        r.others[1] = 0xdead_beef_1234_5678; // rcx
        let npf = |gpa| VmExit::NestedPageFault { gpa, write: false };
        assert_eq!(handle_exit(&npf(0xfee0_0030), &mut r, &mut vm), ExitAction::Resume);
        assert_eq!((r.rax, r.rip), (0x14, 0x2003), "a 32-bit load clears the upper half");
        assert_eq!(handle_exit(&npf(0xfee0_0080), &mut r, &mut vm), ExitAction::Resume);
        assert_eq!(handle_exit(&npf(0xfee0_00b0), &mut r, &mut vm), ExitAction::Resume);
        assert_eq!(r.rip, 0x2010);
        assert_eq!(*writes.lock(), [(0x80, alloc::vec![0x78, 0x56, 0x34, 0x12]), (0xb0, alloc::vec![0x7f])]);
        // Arithmetic on MMIO is not emulated: the VM ends with what and where.
        match handle_exit(&npf(0xfee0_0000), &mut r, &mut vm) {
            ExitAction::Stop(why) => assert!(
                why.contains("arithmetic") && why.contains("0xfee00000") && why.contains("0x2010"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        // Outside any device: unmapped.
        match handle_exit(&npf(0xfec0_0000), &mut r, &mut vm) {
            ExitAction::Stop(why) => assert!(why.contains("nothing is mapped"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn msr_exits() {
        let mut w = World::new();
        let mut vm = w.ctx();
        let mut r = Regs { rip: 0x4000, ..Regs::default() };
        // rdmsr APIC_BASE: EDX:EAX, RIP past the instruction.
        r.others[gpr::RCX] = 0x1b;
        r.others[gpr::RDX] = u64::MAX;
        handle_exit(&VmExit::Msr { write: false, next_rip: 0x4002 }, &mut r, &mut vm);
        assert_eq!((r.rax, r.others[gpr::RDX], r.rip), (0xfee0_0900, 0, 0x4002));
        // wrmsr EFER goes to the backend's copy.
        r.others[gpr::RCX] = 0xc000_0080;
        r.rax = 0xd01;
        r.others[gpr::RDX] = 0;
        handle_exit(&VmExit::Msr { write: true, next_rip: 0x4004 }, &mut r, &mut vm);
        assert_eq!((r.efer, r.rip), (0xd01, 0x4004));
        r.rax = 0;
        handle_exit(&VmExit::Msr { write: false, next_rip: 0x4006 }, &mut r, &mut vm);
        assert_eq!(r.rax, 0xd01);
        // An unknown MSR: #GP(0) injected, RIP unchanged (the fault is on the instruction).
        r.others[gpr::RCX] = 0x1a0;
        assert_eq!(
            handle_exit(&VmExit::Msr { write: false, next_rip: 0x4008 }, &mut r, &mut vm),
            ExitAction::Resume
        );
        assert_eq!((r.injected.clone(), r.rip), (alloc::vec![(GP_VECTOR, Some(0))], 0x4006));
    }

    #[test]
    fn x2apic_registers_are_the_vms_devices_and_fault_outside_x2apic_mode() {
        let mut w = World::new();
        let mut r = Regs { rip: 0x4000, ..Regs::default() };
        let local = |w: &mut World, r: &mut Regs, msr: u32, write: bool| {
            r.others[gpr::RCX] = msr.into();
            handle_local_exit(&VmExit::Msr { write, next_rip: 0x4002 }, r, &no_cpuid, &mut w.msrs)
        };
        assert_eq!(local(&mut w, &mut r, 0x802, false), None, "x2APIC registers: with the board");
        assert_eq!(local(&mut w, &mut r, 0x8ff, true), None);
        r.rax = 0xfee0_0d00;
        assert_eq!(local(&mut w, &mut r, 0x1b, true), None, "APIC_BASE writes: with the board");
        assert!(local(&mut w, &mut r, 0x1b, false).is_some(), "reads are the vCPU's own");
        // xAPIC mode: #GP.
        r.rip = 0x4000;
        r.others[gpr::RCX] = 0x802;
        handle_exit(&VmExit::Msr { write: false, next_rip: 0x4002 }, &mut r, &mut w.ctx());
        assert_eq!((r.injected.clone(), r.rip), (alloc::vec![(GP_VECTOR, Some(0))], 0x4000));
        // Into x2APIC mode through APIC_BASE.
        r.injected.clear();
        r.others[gpr::RCX] = 0x1b;
        r.rax = 0xfee0_0d00;
        r.others[gpr::RDX] = 0;
        handle_exit(&VmExit::Msr { write: true, next_rip: 0x4002 }, &mut r, &mut w.ctx());
        assert!(r.injected.is_empty() && w.msrs.x2apic());
        assert_eq!(r.rip, 0x4002);
    }

    #[test]
    fn the_paravirtual_clock_is_written_where_the_guest_asks_and_only_inside_its_ram() {
        let mut w = World::new();
        let mut r = Regs { rip: 0x4000, ..Regs::default() };
        let wrmsr = |w: &mut World, r: &mut Regs, msr: u32, value: u64| {
            r.others[gpr::RCX] = msr.into();
            r.rax = value & 0xffff_ffff;
            r.others[gpr::RDX] = value >> 32;
            let next = r.rip + 2;
            // Not handled without the VM's memory.
            if msr != 0x10 || w.msrs.clock.enabled() {
                assert_eq!(
                    handle_local_exit(
                        &VmExit::Msr { write: true, next_rip: next },
                        r,
                        &no_cpuid,
                        &mut w.msrs
                    ),
                    None
                );
            }
            assert_eq!(
                handle_exit(&VmExit::Msr { write: true, next_rip: next }, r, &mut w.ctx()),
                ExitAction::Resume
            );
            assert_eq!(r.rip, next);
        };
        let read_info = |w: &World, at: u64| {
            let mut b = [0u8; crate::pvclock::TIME_INFO_LEN];
            w.ram.read(GuestPhysAddr(at), &mut b).unwrap();
            b
        };
        // Enabled at 0x2000: the structure is there, version even.
        wrmsr(&mut w, &mut r, MSR_KVM_SYSTEM_TIME_NEW, 0x2001);
        let b = read_info(&w, 0x2000);
        assert_eq!(&b[4..], &CLOCK.time_info(0)[4..]);
        assert_eq!(u32::from_le_bytes(b[..4].try_into().unwrap()) % 2, 0);
        // The guest moves its TSC: the structure follows.
        wrmsr(&mut w, &mut r, 0x10, 5_000);
        assert_eq!(&read_info(&w, 0x2000)[4..], &CLOCK.time_info(5_000)[4..]);
        // The wall clock.
        wrmsr(&mut w, &mut r, MSR_KVM_WALL_CLOCK_NEW, 0x3000);
        let mut wall = [0u8; crate::pvclock::WALL_CLOCK_LEN];
        w.ram.read(GuestPhysAddr(0x3000), &mut wall).unwrap();
        assert_eq!(wall, CLOCK.wall_clock(2));
        // Outside RAM (64 KiB here), straddling its end, at the top of the address space: nothing
        // written, no fault; reading the MSR gives back what was written.
        let mut all = alloc::vec![0u8; 0x1_0000];
        w.ram.read(GuestPhysAddr(0), &mut all).unwrap();
        for at in [0x1_0000u64, 0x1_0000 - 16, 0xffff_ffff_ffff_f000] {
            wrmsr(&mut w, &mut r, MSR_KVM_SYSTEM_TIME_NEW, at | 1);
            wrmsr(&mut w, &mut r, MSR_KVM_WALL_CLOCK_NEW, at + 8);
        }
        let mut after = alloc::vec![0u8; 0x1_0000];
        w.ram.read(GuestPhysAddr(0), &mut after).unwrap();
        assert!(after == all, "nothing written");
        assert!(r.injected.is_empty());
        r.others[gpr::RCX] = MSR_KVM_SYSTEM_TIME_NEW.into();
        handle_exit(&VmExit::Msr { write: false, next_rip: r.rip + 2 }, &mut r, &mut w.ctx());
        assert_eq!((r.others[gpr::RDX] << 32) | r.rax, 0xffff_ffff_ffff_f001);
    }

    #[test]
    fn the_tsc_deadline_goes_to_the_local_apic_or_faults_without_one() {
        // The guest TSC is the host's plus the offset; 2 GHz: 2 ticks a nanosecond.
        assert_eq!(tsc_to_host_ns(4_000_000_100, 100, &CLOCK), 2_000_000_000);
        let mut w = World::new();
        let mut r = Regs { rip: 0x4000, ..Regs::default() };
        r.others[gpr::RCX] = MSR_TSC_DEADLINE.into();
        let exit = VmExit::Msr { write: true, next_rip: 0x4002 };
        assert_eq!(handle_local_exit(&exit, &mut r, &no_cpuid, &mut w.msrs), None, "in the VM's devices");
        // These buses have no local APIC: #GP, as on a CPU without the register.
        assert_eq!(handle_exit(&exit, &mut r, &mut w.ctx()), ExitAction::Resume);
        assert_eq!((r.injected.clone(), r.rip), (alloc::vec![(GP_VECTOR, Some(0))], 0x4000));
    }

    #[test]
    fn io_exits_go_through_the_bus() {
        let written = Rc::new(RefCell::new(Vec::new()));
        let mut w = World::new();
        w.bus.io.add(0x3f8, 8, Box::new(Port(written.clone()))).unwrap();
        let mut r = Regs { rax: 0xffff_ffff_ffff_ff4b, rip: 0x1000, ..Regs::default() };
        let mut vm = w.ctx();
        // out dx, al (port 0x3f8, 8-bit), next instruction at 0x1001.
        let out = svm_io_exit(0x03f8_0010, 0x1001);
        assert_eq!(out, VmExit::Io { port: 0x3f8, size: 1, input: false, next_rip: 0x1001 });
        assert_eq!(handle_exit(&out, &mut r, &mut vm), ExitAction::Resume);
        assert_eq!((written.borrow().clone(), r.rip), (alloc::vec![0x4b], 0x1001));
        // in ax, dx: the low 16 bits replaced.
        let inw = svm_io_exit(0x03f8_0021, 0x1003);
        handle_exit(&inw, &mut r, &mut vm);
        assert_eq!((r.rax, r.rip), (0xffff_ffff_ffff_5678, 0x1003));
        // in eax from an empty port: all ones, upper half cleared.
        handle_exit(&svm_io_exit(0x0080_0041, 0x1005), &mut r, &mut vm);
        assert_eq!(r.rax, 0xffff_ffff);
        assert_eq!(merge_input(0xaaaa_aaaa_aaaa_aaaa, 1, 0x1ff), 0xaaaa_aaaa_aaaa_aaff);
    }

    #[test]
    fn what_ends_a_vm_is_said() {
        let mut w = World::new();
        let mut vm = w.ctx();
        let mut r = Regs { rax: 0, rip: 0x2000, ..Regs::default() };
        assert_eq!(handle_exit(&VmExit::Hlt, &mut r, &mut vm), ExitAction::Halted);
        assert_eq!(r.rip, 0x2001);
        assert_eq!(handle_exit(&VmExit::HostInterrupt, &mut r, &mut vm), ExitAction::Resume);
        // CLGI and friends fault in the guest; the VM goes on.
        assert_eq!(handle_exit(&VmExit::Undefined { what: "CLGI" }, &mut r, &mut vm), ExitAction::Resume);
        assert_eq!((r.injected.last().copied(), r.rip), (Some((UD_VECTOR, None)), 0x2001));
        // A hypercall gets KVM's "unknown hypercall" and the guest goes on after it.
        let (rip, injected) = (r.rip, r.injected.len());
        r.rax = 9; // KVM_HC_CLOCK_PAIRING
        let call = VmExit::Hypercall { next_rip: rip + 3 };
        assert_eq!(handle_exit(&call, &mut r, &mut vm), ExitAction::Resume);
        assert_eq!((r.rax as i64, r.rip, r.injected.len()), (-1000, rip + 3, injected));
        r.rip = 0x2001;
        // Intercepted #DB/#AC go back to the guest; INVD/WBINVD do nothing; RDPMC is #GP(0).
        let ac = VmExit::Exception { vector: 17, error_code: Some(0) };
        assert_eq!(handle_exit(&ac, &mut r, &mut vm), ExitAction::Resume);
        assert_eq!((r.injected.last().copied(), r.rip), (Some((17, Some(0))), 0x2001));
        let wbinvd = VmExit::Skipped { what: "WBINVD", next_rip: 0x2003 };
        assert_eq!(handle_exit(&wbinvd, &mut r, &mut vm), ExitAction::Resume);
        assert_eq!(r.rip, 0x2003);
        assert_eq!(handle_exit(&VmExit::Refused { what: "RDPMC" }, &mut r, &mut vm), ExitAction::Resume);
        assert_eq!((r.injected.last().copied(), r.rip), (Some((GP_VECTOR, Some(0))), 0x2003));
        r.rip = 0x2001;
        let stop =
            |e: VmExit, r: &mut Regs, bus: &mut ExitContext<'_, fn(u32, u32) -> Leaf>| match handle_exit(
                &e, r, bus,
            ) {
                ExitAction::Stop(why) => why,
                other => panic!("{other:?}"),
            };
        assert_eq!(stop(VmExit::Shutdown, &mut r, &mut vm), "triple fault at guest RIP 0x2001");
        assert!(stop(VmExit::NestedPageFault { gpa: 0xfee0_0000, write: true }, &mut r, &mut vm)
            .starts_with("write of guest-physical 0xfee00000"));
        assert!(stop(svm_io_exit(0x03f8_0014, 0), &mut r, &mut vm).contains("string I/O"));
        assert!(stop(svm_io_exit(0x03f8_0000, 0), &mut r, &mut vm).contains("operand size"));
        assert!(stop(VmExit::InvalidState, &mut r, &mut vm).contains("refused"));
    }
}
