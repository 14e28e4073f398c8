//! The vCPU loop, written once for every vendor (Cloud Hypervisor's `trait Vcpu { fn run() }`):
//! a backend ([`Vcpu`]: SVM now, VMX later) runs the guest until its next exit and injects
//! interrupts; this loop delivers the chipset's interrupts when the guest can take them (asking
//! the backend for an interrupt window otherwise), hands every exit to [`handle_exit`], sleeps
//! while the guest halts until its next timer interrupt, and ends on a reset or power-off the guest
//! asks for, a fault it causes, or a stop the management plane asks for.

use super::board::{Board, CpuState, Event};
use super::cpuid::Leaf;
use super::exit::{handle_exit, handle_local_exit, ExitAction, ExitContext, VcpuRegs, VmExit};
use super::machine::{Machine, MachineRequest};
use super::msr::VcpuMsrs;
use super::pvclock::GuestClock;
use super::pveoi::PvEoi;
use alloc::format;
use alloc::string::String;
use spin::Mutex;

/// What a vendor backend does for the loop.
pub trait Vcpu: VcpuRegs {
    /// Runs the guest until its next exit.
    fn run(&mut self) -> VmExit;
    /// Whether an external interrupt can be delivered on the next entry: RFLAGS.IF set, no
    /// interrupt shadow (STI, MOV SS) and no event already being injected.
    fn can_take_interrupt(&self) -> bool;
    /// Whether an NMI can be delivered on the next entry (no event already being injected).
    fn can_take_nmi(&self) -> bool;
    /// Delivers external interrupt `vector` on the next entry.
    fn inject_interrupt(&mut self, vector: u8);
    /// Delivers an NMI on the next entry.
    fn inject_nmi(&mut self);
    /// Asks for an exit as soon as the guest can take an interrupt.
    fn request_interrupt_window(&mut self);
    /// RFLAGS.IF.
    fn interrupts_enabled(&self) -> bool;
    /// Whether PAUSE exits (a spinning guest gives way to the vCPU it waits for).
    fn set_pause_exits(&mut self, on: bool);
    /// The state after INIT and a STARTUP IPI with `vector`: real mode at `vector << 12`, every
    /// other register at its reset value.
    fn start_at(&mut self, vector: u8);
}

/// What the loop needs from the host.
pub trait Host {
    /// A monotonic clock, ns.
    fn now_ns(&self) -> u64;
    /// Whether the run must end now: the management plane asked for a stop or reset, or the vCPU's
    /// time slice is over and other work waits for the CPU (`idle`: the guest halted or spins in
    /// a PAUSE loop, so it gives way to any other work that is due).
    fn interrupted(&self, idle: bool) -> Option<RunEnd>;
    /// Called before each entry: the guest's next timer interrupt is due at `next_timer` (ns), so
    /// the host must get control back by then even if the guest does not exit.
    fn before_entry(&self, next_timer: Option<u64>);
    /// Waits a little while the guest halts (until `deadline` ns at most, or an event).
    fn idle(&self, deadline: Option<u64>);
    /// Bytes waiting for the guest's console (taken as far as the UART's FIFO has room).
    fn console_input(&self, machine: &mut Machine);
    /// Other vCPUs of the VM (bit `i`: vCPU `i`) received an interrupt or a start-up IPI: they
    /// must look at it soon (run them, or kick the CPUs they run on).
    fn wake(&self, vcpus: u64);
    /// Whether the vCPU may enter again without looking at the VM's devices: nothing arrived for it
    /// since it last looked (an interrupt or start-up IPI from another vCPU, console input, a kick
    /// for device work) and its next timer (`next_timer`, ns) is not due. Only asked after an exit
    /// that concerned the vCPU alone ([`handle_local_exit`]); `false` (the default) always looks.
    fn quiet(&self, _next_timer: Option<u64>) -> bool {
        false
    }
    /// The VM's devices, locked; `None` if the VM failed meanwhile (a CPU that ran it stopped,
    /// perhaps holding the lock): the loop ends at once instead of waiting for ever.
    fn lock_board<'b>(&self, board: &'b Mutex<Board>) -> Option<spin::MutexGuard<'b, Board>> {
        Some(board.lock())
    }
}

/// Why a VM's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest reset the machine (it starts again from its kernel).
    Reset,
    /// The management plane stopped it (or another vCPU ended the VM).
    Stopped,
    /// Not an end: the time slice is over; the run continues later.
    Preempted,
    /// The guest did something that ends it (triple fault, an access nothing answers, a halt
    /// with interrupts disabled); the text says what and where.
    Fault(String),
}

/// The VM a vCPU runs in, as the loop sees it.
pub struct VmParts<'a, C: Fn(u32, u32) -> Leaf> {
    /// The devices and memory every vCPU of the VM shares.
    pub board: &'a Mutex<Board>,
    /// This vCPU's index (and APIC ID).
    pub cpu: usize,
    /// vCPUs in the VM.
    pub vcpus: usize,
    pub msrs: &'a mut VcpuMsrs,
    /// The guest's CPUID answers.
    pub cpuid: C,
    /// What the paravirtual clock tells the guest.
    pub clock: GuestClock,
}

/// Where a vCPU's loop stands between time slices.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoopState {
    /// Halted, or waiting for its STARTUP IPI: it runs again only for an interrupt.
    pub halted: bool,
    /// When its next timer (the chipset's or its local APIC's) fires, ns.
    pub next_timer: Option<u64>,
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
pub const EXIT_KINDS: [&str; 9] =
    ["io", "mmio", "msr", "cpuid", "hlt", "host_interrupt", "interrupt_window", "pause", "other"];

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
        VmExit::Pause => 7,
        _ => 8,
    }
}

/// Delivers what is pending for the vCPU if it can take it now, else asks for a window.
fn deliver_interrupts(vcpu: &mut impl Vcpu, board: &mut Board, cpu: usize, stats: &mut RunStats) {
    if board.apics.nmi_pending(cpu) && vcpu.can_take_nmi() {
        board.apics.take_nmi(cpu);
        vcpu.inject_nmi();
        stats.interrupts = stats.interrupts.wrapping_add(1);
    }
    if !board.pending(cpu) {
        return;
    }
    if !vcpu.can_take_interrupt() {
        vcpu.request_interrupt_window();
        return;
    }
    match board.acknowledge(cpu) {
        Some(Event::Interrupt(v)) => vcpu.inject_interrupt(v),
        Some(Event::Nmi) => vcpu.inject_nmi(),
        None => return,
    }
    stats.interrupts = stats.interrupts.wrapping_add(1);
}

/// What the loop does before each entry and on each wake-up while halted: brings the timers up
/// to date, hands the chipset console input, starts the vCPU if a STARTUP IPI came, wakes it if
/// it halted and an interrupt came, and delivers what it can take. Returns the other vCPUs that
/// received something meanwhile, and whether something is still pending for this one (an
/// interrupt or NMI waiting for the guest to let it in).
fn look_around(
    vcpu: &mut impl Vcpu,
    vm: &mut VmParts<'_, impl Fn(u32, u32) -> Leaf>,
    host: &impl Host,
    state: &mut LoopState,
    stats: &mut RunStats,
) -> Option<(u64, bool)> {
    let cpu = vm.cpu;
    let mut b = host.lock_board(vm.board)?;
    if vm.msrs.pv_eoi.ended(&mut *b.mem) {
        b.end_of_interrupt(cpu);
    }
    if b.apics.take_init(cpu) {
        vm.msrs.pv_eoi = PvEoi::default();
    }
    state.next_timer = b.update(cpu, host.now_ns());
    host.console_input(&mut b.machine);
    b.route();
    match b.apics.state(cpu) {
        CpuState::WaitForSipi => state.halted = true,
        CpuState::Startup(vector) => {
            vcpu.start_at(vector);
            b.apics.set_running(cpu);
            state.halted = false;
        }
        CpuState::Running => {
            // A halt ends with an NMI, or with an interrupt the guest lets in (RFLAGS.IF).
            let nmi = b.apics.nmi_pending(cpu);
            if state.halted && (nmi || (vcpu.interrupts_enabled() && b.pending(cpu))) {
                state.halted = false;
            }
        }
    }
    if !state.halted {
        deliver_interrupts(vcpu, &mut b, cpu, stats);
        let possible = b.pv_eoi_possible(cpu);
        vm.msrs.pv_eoi.offer(possible, &mut *b.mem);
    }
    let owed = b.apics.nmi_pending(cpu) || b.pending(cpu);
    Some((b.apics.take_wakes() & !(1 << cpu), owed))
}

/// Runs the vCPU until its time slice is over or the VM's run ends.
pub fn run<C: Fn(u32, u32) -> Leaf>(
    vcpu: &mut impl Vcpu,
    vm: &mut VmParts<'_, C>,
    host: &impl Host,
    stats: &mut RunStats,
    state: &mut LoopState,
) -> RunEnd {
    let cpu = vm.cpu;
    // The last exit concerned only this vCPU: unless something arrived, or something the last look
    // found could not be delivered yet (it is retried on every exit, as the window it waits for may
    // not come as an exit of its own), it enters again without taking the VM's device lock.
    let mut local = false;
    let mut owed = false;
    loop {
        // Looking first: a vCPU woken by an interrupt or a STARTUP IPI is no longer idle.
        if !(local && !owed && host.quiet(state.next_timer)) {
            let Some((wakes, o)) = look_around(vcpu, vm, host, state, stats) else { return RunEnd::Stopped };
            owed = o;
            if wakes != 0 {
                host.wake(wakes);
            }
        }
        local = false;
        if let Some(end) = host.interrupted(state.halted) {
            return end;
        }
        if state.halted {
            // Sleep until an interrupt for the guest may be pending.
            host.idle(state.next_timer);
            continue;
        }
        host.before_entry(state.next_timer);
        let exit = vcpu.run();
        stats.exits = stats.exits.wrapping_add(1);
        if let Some(n) = stats.by_kind.get_mut(exit_kind(&exit)) {
            *n = n.wrapping_add(1);
        }
        let action = match handle_local_exit(&exit, vcpu, &vm.cpuid, vm.msrs) {
            Some(action) => {
                local = true;
                action
            }
            None => {
                let (action, request, wakes) = {
                    let Some(mut b) = host.lock_board(vm.board) else { return RunEnd::Stopped };
                    b.machine.set_time(host.now_ns());
                    if vm.msrs.pv_eoi.ended(&mut *b.mem) {
                        b.end_of_interrupt(cpu);
                    }
                    let action = {
                        let (mut bus, mem) = b.view(cpu);
                        let mut cx = ExitContext {
                            bus: &mut bus,
                            cpuid: &vm.cpuid,
                            msrs: &mut *vm.msrs,
                            mem,
                            clock: vm.clock,
                        };
                        handle_exit(&exit, vcpu, &mut cx)
                    };
                    // Device work (virtio queues) and the devices' interrupt lines.
                    b.service_devices();
                    (action, b.machine.request(), b.apics.take_wakes() & !(1 << cpu))
                };
                if wakes != 0 {
                    host.wake(wakes);
                }
                match request {
                    Some(MachineRequest::PowerOff) => return RunEnd::PowerOff,
                    Some(MachineRequest::Reset) => return RunEnd::Reset,
                    None => {}
                }
                action
            }
        };
        match action {
            ExitAction::Resume => {}
            ExitAction::Spinning => {
                // A PAUSE loop waits for another vCPU: let due work have the CPU. With none due
                // the vCPU spins on without PAUSE exits until its next slice.
                if let Some(end) = host.interrupted(true) {
                    return end;
                }
                vcpu.set_pause_exits(false);
            }
            ExitAction::Stop(why) => return RunEnd::Fault(why),
            ExitAction::Halted => {
                // With interrupts disabled only an NMI (or INIT) wakes a vCPU: that is how a
                // guest parks its other CPUs at shutdown; a lone vCPU can never wake up.
                if vm.vcpus == 1 && !vcpu.interrupts_enabled() {
                    return RunEnd::Fault(format!(
                        "the guest halted with interrupts disabled at RIP {:#x} (it can never wake up)",
                        vcpu.rip().wrapping_sub(1)
                    ));
                }
                state.halted = true;
                // A halted vCPU looks for what wakes it.
                local = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{MmioBus, MmioSpace};
    use crate::ioapic::Delivery;
    use crate::memory::GuestRam;
    use crate::serial::ConsoleLog;
    use crate::GuestPhysAddr;
    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use core::cell::Cell;

    const TEST_CLOCK: GuestClock = GuestClock { tsc_hz: 1_000_000_000, wall_base: 0, invariant_tsc: false };

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

    crate::exit::plain_test_regs!(Scripted);

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
        fn can_take_nmi(&self) -> bool {
            true
        }
        fn inject_interrupt(&mut self, vector: u8) {
            self.injected.push(vector)
        }
        fn inject_nmi(&mut self) {
            self.injected.push(2)
        }
        fn start_at(&mut self, vector: u8) {
            self.rip = (vector as u64) << 12;
        }
        fn set_pause_exits(&mut self, _: bool) {}
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
        fn wake(&self, _: u64) {}
    }

    fn out(port: u16, value: u64) -> (VmExit, u64) {
        (VmExit::Io { port, size: 1, input: false, next_rip: 0 }, value)
    }

    /// vCPU 0 of a 1-vCPU VM on `board`, with no CPUID answers.
    fn one_vcpu<'a>(board: &'a Mutex<Board>, msrs: &'a mut VcpuMsrs) -> VmParts<'a, fn(u32, u32) -> Leaf> {
        VmParts { board, cpu: 0, vcpus: 1, msrs, cpuid: |_, _| Leaf::default(), clock: TEST_CLOCK }
    }

    /// A VM of `vcpus` vCPUs with 4 KiB of RAM and no MMIO devices.
    fn board(vcpus: usize) -> Mutex<Board> {
        let machine = Machine::new(0, Arc::new(spin::Mutex::new(ConsoleLog::default())));
        Mutex::new(Board::new(machine, vcpus, MmioBus::new(), alloc::boxed::Box::new(GuestRam::new(4096))))
    }

    fn run_script(exits: Vec<(VmExit, u64)>, if_flag: bool) -> (RunEnd, Scripted, RunStats) {
        let board = board(1);
        let mut msrs = VcpuMsrs::new(0);
        let mut v = Scripted { exits, regs: [0; 16], rip: 0, if_flag, injected: Vec::new(), windows: 0 };
        let host = FakeHost { now: Cell::new(0), stop_after: 1_000_000_000 };
        let mut stats = RunStats::default();
        let mut parts = VmParts {
            board: &board,
            cpu: 0,
            vcpus: board.lock().apics.count(),
            msrs: &mut msrs,
            cpuid: |_, _| Leaf::default(),
            clock: TEST_CLOCK,
        };
        let end = run(&mut v, &mut parts, &host, &mut stats, &mut LoopState::default());
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
        assert_eq!((stats.exits, stats.by_kind[0], stats.by_kind[4], stats.by_kind[8]), (10, 8, 1, 1));
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

    /// A guest that ends its interrupts through the paravirtual EOI flag at 0x800 (as Linux's
    /// `kvm_guest_apic_eoi_write` does: clear the bit if set, else write the APIC's register -
    /// which this one never does); the device raises vector 0x41 again once the guest ended it.
    struct PvEoiGuest<'a> {
        inner: FakeHost,
        board: &'a Mutex<Board>,
        ended_by_flag: Cell<u32>,
    }
    impl Host for PvEoiGuest<'_> {
        fn now_ns(&self) -> u64 {
            self.inner.now_ns()
        }
        fn interrupted(&self, idle: bool) -> Option<RunEnd> {
            self.inner.interrupted(idle)
        }
        fn before_entry(&self, _: Option<u64>) {
            let mut b = self.board.lock();
            let mut flag = [0u8];
            b.mem.read(GuestPhysAddr(0x800), &mut flag).unwrap();
            if flag[0] & 1 != 0 {
                b.mem.write(GuestPhysAddr(0x800), &[flag[0] & !1]).unwrap();
                self.ended_by_flag.set(self.ended_by_flag.get() + 1);
                let d = Delivery { vector: 0x41, mode: 0, logical: false, dest: 0, level_triggered: false };
                b.apics.from_ioapic(d);
            }
        }
        fn idle(&self, _: Option<u64>) {}
        fn console_input(&self, _: &mut Machine) {}
        fn wake(&self, _: u64) {}
    }

    fn run_pv_eoi_guest(enabled: bool) -> (Vec<u8>, u32) {
        let board = board(1);
        {
            let mut b = board.lock();
            let (mut bus, _) = b.view(0);
            assert!(bus.mmio_write(crate::board::LAPIC_BASE + 0xf0, &0x1ffu32.to_le_bytes()));
            b.apics.from_ioapic(Delivery {
                vector: 0x41,
                mode: 0,
                logical: false,
                dest: 0,
                level_triggered: false,
            });
        }
        let mut msrs = VcpuMsrs::new(0);
        if enabled {
            assert_eq!(
                msrs.write(crate::pveoi::MSR_KVM_PV_EOI_EN, 0x801),
                crate::msr::MsrAccess::Done(0x801)
            );
        }
        let exits = (0..6).map(|_| out(0x80, 0)).collect();
        let mut v =
            Scripted { exits, regs: [0; 16], rip: 0, if_flag: true, injected: Vec::new(), windows: 0 };
        let host = PvEoiGuest {
            inner: FakeHost { now: Cell::new(0), stop_after: 1_000_000_000 },
            board: &board,
            ended_by_flag: Cell::new(0),
        };
        let mut parts = one_vcpu(&board, &mut msrs);
        run(&mut v, &mut parts, &host, &mut RunStats::default(), &mut LoopState::default());
        (v.injected, host.ended_by_flag.get())
    }

    #[test]
    fn a_guest_ends_its_interrupts_through_the_paravirtual_eoi_flag() {
        let (injected, by_flag) = run_pv_eoi_guest(true);
        assert!(injected.len() >= 5 && injected.iter().all(|&v| v == 0x41), "{injected:x?}");
        assert_eq!(by_flag as usize, injected.len(), "each one ended through the flag");
        // Without it the interrupt stays in service (this guest never writes the register): the
        // next one is held back.
        assert_eq!(run_pv_eoi_guest(false), (alloc::vec![0x41], 0));
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

    fn scripted(exits: Vec<(VmExit, u64)>, if_flag: bool) -> Scripted {
        Scripted { exits, regs: [0; 16], rip: 0, if_flag, injected: Vec::new(), windows: 0 }
    }

    #[test]
    fn an_application_processor_runs_only_after_its_startup_ipi() {
        let board = board(2);
        let mut msrs = VcpuMsrs::new(1);
        let mut state = LoopState { halted: true, next_timer: None };
        // Before any IPI: it waits (no entry at all) until the host stops it.
        let mut v = scripted(alloc::vec![(VmExit::Hlt, 0)], true);
        let host = FakeHost { now: Cell::new(0), stop_after: 50_000_000 };
        let mut stats = RunStats::default();
        let mut parts = VmParts {
            board: &board,
            cpu: 1,
            vcpus: board.lock().apics.count(),
            msrs: &mut msrs,
            cpuid: |_, _| Leaf::default(),
            clock: TEST_CLOCK,
        };
        assert_eq!(run(&mut v, &mut parts, &host, &mut stats, &mut state), RunEnd::Stopped);
        assert_eq!((stats.exits, v.exits.len()), (0, 1), "never entered");
        // vCPU 0 sends INIT and STARTUP 0x9a to APIC ID 1 (its APIC enabled first, as Linux does).
        {
            let mut b = board.lock();
            let (mut bus, _) = b.view(0);
            for (reg, value) in [(0xf0u64, 0x1ffu32), (0x310, 1 << 24), (0x300, 0xc500), (0x300, 0x069a)] {
                assert!(crate::bus::MmioSpace::mmio_write(&mut bus, 0xfee0_0000 + reg, &value.to_le_bytes()));
            }
        }
        let host = FakeHost { now: Cell::new(0), stop_after: 50_000_000 };
        let end = run(&mut v, &mut parts, &host, &mut stats, &mut state);
        // It started at 0x9a000, halted (with IF set: it waits for an interrupt), and stopped.
        assert_eq!((end, v.rip, stats.exits), (RunEnd::Stopped, 0x9a001, 1));
        assert!(state.halted);
    }

    #[test]
    fn in_an_smp_guest_a_halt_with_interrupts_off_parks_the_vcpu() {
        // How Linux parks its other CPUs at shutdown: CLI; HLT. The VM goes on (it is not a fault).
        let board = board(2);
        let mut msrs = VcpuMsrs::new(0);
        let mut v = scripted(alloc::vec![(VmExit::Hlt, 0)], false);
        let host = FakeHost { now: Cell::new(0), stop_after: 50_000_000 };
        let mut parts = VmParts {
            board: &board,
            cpu: 0,
            vcpus: board.lock().apics.count(),
            msrs: &mut msrs,
            cpuid: |_, _| Leaf::default(),
            clock: TEST_CLOCK,
        };
        let mut state = LoopState::default();
        assert_eq!(run(&mut v, &mut parts, &host, &mut RunStats::default(), &mut state), RunEnd::Stopped);
        assert!(state.halted);
    }

    /// A host that counts how often the loop locks the devices; it reports quiet (nothing arrived)
    /// unless `busy`.
    struct CountingHost {
        inner: FakeHost,
        busy: bool,
        locks: Cell<u32>,
    }
    impl Host for CountingHost {
        fn now_ns(&self) -> u64 {
            self.inner.now_ns()
        }
        fn interrupted(&self, idle: bool) -> Option<RunEnd> {
            self.inner.interrupted(idle)
        }
        fn before_entry(&self, _: Option<u64>) {}
        fn idle(&self, _: Option<u64>) {}
        fn console_input(&self, _: &mut Machine) {}
        fn wake(&self, _: u64) {}
        fn quiet(&self, _: Option<u64>) -> bool {
            !self.busy
        }
        fn lock_board<'b>(&self, board: &'b Mutex<Board>) -> Option<spin::MutexGuard<'b, Board>> {
            self.locks.set(self.locks.get() + 1);
            Some(board.lock())
        }
    }

    #[test]
    fn cpuid_and_msr_exits_do_not_take_the_device_lock() {
        let run_with = |busy: bool| {
            let board = board(1);
            let mut msrs = VcpuMsrs::new(0);
            let mut exits = Vec::new();
            for _ in 0..10 {
                exits.push((VmExit::Cpuid { next_rip: 0 }, 0));
                exits.push((VmExit::Msr { write: false, next_rip: 0 }, 0));
            }
            // Past the script: a triple fault, which the devices' side handles.
            let mut v =
                Scripted { exits, regs: [0; 16], rip: 0, if_flag: true, injected: Vec::new(), windows: 0 };
            let host = CountingHost {
                inner: FakeHost { now: Cell::new(0), stop_after: 100_000_000 },
                busy,
                locks: Cell::new(0),
            };
            let mut parts = one_vcpu(&board, &mut msrs);
            let end = run(&mut v, &mut parts, &host, &mut RunStats::default(), &mut LoopState::default());
            assert!(matches!(end, RunEnd::Fault(_)), "{end:?}");
            host.locks.get()
        };
        // Quiet: the first look, the 20 CPUID and MSR exits without the lock, the triple fault.
        assert_eq!(run_with(false), 2);
        // Something arrived after each: the loop looks every time.
        assert_eq!(run_with(true), 22);
    }
}
