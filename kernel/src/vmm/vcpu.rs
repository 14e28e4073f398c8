//! The vCPU loop, written once for every vendor (Cloud Hypervisor's `trait Vcpu { fn run() }`):
//! a backend ([`Vcpu`]: SVM now, VMX later) runs the guest until its next exit and injects
//! interrupts; this loop delivers the chipset's interrupts when the guest can take them (asking
//! the backend for an interrupt window otherwise), hands every exit to [`handle_exit`], sleeps
//! while the guest halts until its next timer interrupt, and ends on a reset or power-off the guest
//! asks for, a fault it causes, or a stop the management plane asks for.

use super::bus::MmioBus;
use super::cpuid::Leaf;
use super::exit::{handle_exit, ExitAction, ExitContext, VcpuRegs, VmExit};
use super::machine::{Machine, MachineRequest};
use super::memory::GuestMemory;
use super::msr::VcpuMsrs;
use alloc::format;
use alloc::string::String;

/// What a vendor backend does for the loop.
pub trait Vcpu: VcpuRegs {
    /// Runs the guest until its next exit.
    fn run(&mut self) -> VmExit;
    /// Whether an external interrupt can be delivered on the next entry: RFLAGS.IF set, no
    /// interrupt shadow (STI, MOV SS) and no event already being injected.
    fn can_take_interrupt(&self) -> bool;
    /// Delivers external interrupt `vector` on the next entry.
    fn inject_interrupt(&mut self, vector: u8);
    /// Asks for an exit as soon as the guest can take an interrupt.
    fn request_interrupt_window(&mut self);
    /// RFLAGS.IF.
    fn interrupts_enabled(&self) -> bool;
}

/// What the loop needs from the host.
pub trait Host {
    /// A monotonic clock, ns.
    fn now_ns(&self) -> u64;
    /// Whether the run must end now: the management plane asked for a stop or reset, or the vCPU's
    /// time slice is over and other work waits for the CPU (`halted`: the guest is idle).
    fn interrupted(&self, halted: bool) -> Option<RunEnd>;
    /// Called before each entry: the guest's next timer interrupt is due at `next_timer` (ns), so
    /// the host must get control back by then even if the guest does not exit.
    fn before_entry(&self, next_timer: Option<u64>);
    /// Waits a little while the guest halts (until `deadline` ns at most, or an event).
    fn idle(&self, deadline: Option<u64>);
    /// Bytes waiting for the guest's console (taken as far as the UART's FIFO has room).
    fn console_input(&self, machine: &mut Machine);
}

/// Why a VM's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest reset the machine (it starts again from its kernel).
    Reset,
    /// The management plane stopped it.
    Stopped,
    /// Not an end: the time slice is over; the run continues later.
    Preempted,
    /// The guest did something that ends it (triple fault, an access nothing answers, a halt
    /// with interrupts disabled); the text says what and where.
    Fault(String),
}

/// The VM a vCPU runs in, as the loop sees it.
pub struct VmParts<'a, C: Fn(u32, u32) -> Leaf> {
    pub machine: &'a mut Machine,
    pub mmio: &'a mut MmioBus,
    pub mem: &'a mut dyn GuestMemory,
    pub msrs: &'a mut VcpuMsrs,
    /// The guest's CPUID answers.
    pub cpuid: C,
}

/// Exit and interrupt counts of one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    pub exits: u64,
    pub interrupts: u64,
    /// Exits by kind, in the order of [`EXIT_KINDS`].
    pub by_kind: [u64; EXIT_KINDS.len()],
}

/// The kinds of exit counted apart.
pub const EXIT_KINDS: [&str; 8] =
    ["io", "mmio", "msr", "cpuid", "hlt", "host_interrupt", "interrupt_window", "other"];

/// The index of `exit`'s kind in [`EXIT_KINDS`].
pub fn exit_kind(exit: &VmExit) -> usize {
    match exit {
        VmExit::Io { .. } => 0,
        VmExit::NestedPageFault { .. } => 1,
        VmExit::Msr { .. } => 2,
        VmExit::Cpuid { .. } => 3,
        VmExit::Hlt => 4,
        VmExit::HostInterrupt => 5,
        VmExit::InterruptWindow => 6,
        _ => 7,
    }
}

/// Delivers a pending chipset interrupt if the guest can take it now, else asks for a window.
fn deliver_interrupts(vcpu: &mut impl Vcpu, machine: &mut Machine, stats: &mut RunStats) {
    if !machine.pic.interrupt_pending() {
        return;
    }
    if vcpu.can_take_interrupt() {
        let vector = machine.pic.acknowledge();
        vcpu.inject_interrupt(vector);
        stats.interrupts += 1;
    } else {
        vcpu.request_interrupt_window();
    }
}

/// What the loop does before each entry and on each wake-up while halted: ends the run if the
/// host says so, else brings the chipset's clock and timers up to date and hands it console
/// input; returns when the guest's timer fires next.
fn look_around(machine: &mut Machine, host: &impl Host, halted: bool) -> Result<Option<u64>, RunEnd> {
    if let Some(end) = host.interrupted(halted) {
        return Err(end);
    }
    machine.set_time(host.now_ns());
    let next = machine.update_timers();
    host.console_input(machine);
    Ok(next)
}

/// Runs the vCPU until the VM's run ends.
pub fn run<C: Fn(u32, u32) -> Leaf>(
    vcpu: &mut impl Vcpu,
    vm: &mut VmParts<'_, C>,
    host: &impl Host,
    stats: &mut RunStats,
) -> RunEnd {
    loop {
        let next_timer = match look_around(vm.machine, host, false) {
            Ok(next) => next,
            Err(end) => return end,
        };
        deliver_interrupts(vcpu, vm.machine, stats);
        host.before_entry(next_timer);
        let exit = vcpu.run();
        stats.exits += 1;
        stats.by_kind[exit_kind(&exit)] += 1;
        vm.machine.set_time(host.now_ns());
        let action = {
            let mut cx = ExitContext {
                bus: &mut *vm.machine,
                cpuid: &vm.cpuid,
                msrs: &mut *vm.msrs,
                mmio: &mut *vm.mmio,
                mem: &*vm.mem,
            };
            handle_exit(&exit, vcpu, &mut cx)
        };
        // Device work (virtio queues) and the devices' interrupt lines.
        let pic = &mut vm.machine.pic;
        vm.mmio.service(&mut *vm.mem, |line, level| pic.set_irq(line, level));
        match vm.machine.request() {
            Some(MachineRequest::PowerOff) => return RunEnd::PowerOff,
            Some(MachineRequest::Reset) => return RunEnd::Reset,
            None => {}
        }
        match action {
            ExitAction::Resume => {}
            ExitAction::Stop(why) => return RunEnd::Fault(why),
            ExitAction::Halted => {
                if !vcpu.interrupts_enabled() {
                    return RunEnd::Fault(format!(
                        "the guest halted with interrupts disabled at RIP {:#x} (it can never wake up)",
                        vcpu.rip().wrapping_sub(1)
                    ));
                }
                // Sleep until an interrupt for the guest is pending.
                loop {
                    let next = match look_around(vm.machine, host, true) {
                        Ok(next) => next,
                        Err(end) => return end,
                    };
                    if vm.machine.pic.interrupt_pending() {
                        break;
                    }
                    host.idle(next);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory::GuestRam;
    use crate::vmm::msr::Saved;
    use crate::vmm::paging::PagingState;
    use crate::vmm::serial::ConsoleLog;
    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use core::cell::Cell;

    /// A scripted vCPU: each `run` returns the next exit with RAX set to its value; injected
    /// vectors are recorded; past the script the guest triple-faults.
    struct Scripted {
        exits: Vec<(VmExit, u64)>,
        regs: [u64; 16],
        rip: u64,
        if_flag: bool,
        injected: Vec<u8>,
        windows: u32,
    }

    impl VcpuRegs for Scripted {
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
        fn saved_msr(&self, _: Saved) -> u64 {
            0
        }
        fn set_saved_msr(&mut self, _: Saved, _: u64) {}
        fn inject_exception(&mut self, _: u8, _: Option<u32>) {}
        fn paging(&self) -> PagingState {
            PagingState { cr0: 0, cr3: 0, cr4: 0, efer: 0 }
        }
    }

    impl Vcpu for Scripted {
        fn run(&mut self) -> VmExit {
            if self.exits.is_empty() {
                return VmExit::Shutdown;
            }
            let (e, rax) = self.exits.remove(0);
            self.regs[0] = rax;
            e
        }
        fn can_take_interrupt(&self) -> bool {
            self.if_flag
        }
        fn inject_interrupt(&mut self, vector: u8) {
            self.injected.push(vector)
        }
        fn request_interrupt_window(&mut self) {
            self.windows += 1;
            self.if_flag = true; // the guest opens it at once
        }
        fn interrupts_enabled(&self) -> bool {
            self.if_flag
        }
    }

    /// A clock that advances 1 ms per look; a stop is asked for after `stop_after` ns.
    struct FakeHost {
        now: Cell<u64>,
        stop_after: u64,
    }
    impl Host for FakeHost {
        fn now_ns(&self) -> u64 {
            self.now.set(self.now.get() + 1_000_000);
            self.now.get()
        }
        fn interrupted(&self, _: bool) -> Option<RunEnd> {
            (self.now.get() > self.stop_after).then_some(RunEnd::Stopped)
        }
        fn before_entry(&self, _: Option<u64>) {}
        fn idle(&self, _: Option<u64>) {}
        fn console_input(&self, _: &mut Machine) {}
    }

    fn out(port: u16, value: u64) -> (VmExit, u64) {
        (VmExit::Io { port, size: 1, input: false, next_rip: 0 }, value)
    }

    fn run_script(exits: Vec<(VmExit, u64)>, if_flag: bool) -> (RunEnd, Scripted, RunStats) {
        let mut machine = Machine::new(0, Arc::new(spin::Mutex::new(ConsoleLog::default())));
        let mut mmio = MmioBus::new();
        let mut mem = GuestRam::new(4096);
        let mut msrs = VcpuMsrs::new(0);
        let mut v = Scripted { exits, regs: [0; 16], rip: 0, if_flag, injected: Vec::new(), windows: 0 };
        let host = FakeHost { now: Cell::new(0), stop_after: 1_000_000_000 };
        let mut stats = RunStats::default();
        let mut parts = VmParts {
            machine: &mut machine,
            mmio: &mut mmio,
            mem: &mut mem,
            msrs: &mut msrs,
            cpuid: |_, _| Leaf::default(),
        };
        let end = run(&mut v, &mut parts, &host, &mut stats);
        (end, v, stats)
    }

    /// Linux's PIC set-up (vectors 0x30, IRQ 0 unmasked) and a one-shot PIT interrupt 5 ms after
    /// the last OUT (the clock moves 1 ms per look), as OUTs.
    fn linux_timer_setup() -> Vec<(VmExit, u64)> {
        [
            (0x20, 0x11),
            (0x21, 0x30),
            (0x21, 0x04),
            (0x21, 0x01),
            (0x21, 0xfe),
            (0x43, 0x30),
            (0x40, 0x4d),
            (0x40, 0x17),
        ]
        .iter()
        .map(|&(p, v)| out(p, v))
        .collect()
    }

    #[test]
    fn a_halted_guest_wakes_for_its_timer_interrupt() {
        let mut exits = linux_timer_setup();
        exits.push((VmExit::Hlt, 0));
        let (end, v, stats) = run_script(exits, true);
        assert!(matches!(end, RunEnd::Fault(ref w) if w.contains("triple fault")), "{end:?}");
        assert_eq!(v.injected, [0x30], "IRQ 0 delivered after the HLT");
        assert_eq!(stats.interrupts, 1);
        // 8 OUTs, the HLT and the final triple fault, each counted by kind.
        assert_eq!((stats.exits, stats.by_kind[0], stats.by_kind[4], stats.by_kind[7]), (10, 8, 1, 1));
    }

    #[test]
    fn interrupts_wait_for_a_window_and_halts_without_if_end_the_vm() {
        let mut exits = linux_timer_setup();
        exits.extend((0..5).map(|_| out(0x80, 0)));
        let (_, v, _) = run_script(exits, false);
        assert!(v.windows >= 1, "an interrupt window was asked for");
        assert_eq!(v.injected.first(), Some(&0x30));
        let (end, _, _) = run_script(alloc::vec![(VmExit::Hlt, 0)], false);
        assert!(matches!(end, RunEnd::Fault(ref w) if w.contains("interrupts disabled")), "{end:?}");
    }

    #[test]
    fn reset_and_power_off_end_the_run() {
        let (end, _, _) = run_script(alloc::vec![out(0x64, 0xfe)], true);
        assert_eq!(end, RunEnd::Reset);
        let pm1 = VmExit::Io { port: 0x604, size: 2, input: false, next_rip: 0 };
        let (end, _, _) = run_script(alloc::vec![(pm1, (5 << 10) | (1 << 13))], true);
        assert_eq!(end, RunEnd::PowerOff);
        // A stop request ends a halted guest's wait (no timer programmed: it would sleep forever).
        let (end, _, _) = run_script(alloc::vec![(VmExit::Hlt, 0)], true);
        assert_eq!(end, RunEnd::Stopped);
    }
}
