//! The interrupt descriptor table and the interrupt entry path.
//!
//! `build.rs` generates 256 entry stubs, 16 bytes apart, each pushing a dummy error code where the CPU
//! pushes none, then the vector number. `ember_isr_common` saves the general registers into a
//! [`TrapFrame`] and calls [`ember_interrupt_dispatch`].

use super::{apic, cpu, gdt};
use crate::console;
use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};
use ember_hw::exception::{write_report, ReportContext, TrapFrame};
use spin::Once;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

core::arch::global_asm!(include_str!(concat!(env!("OUT_DIR"), "/isr_stubs.s")));
core::arch::global_asm!(
    ".global ember_isr_common",
    "ember_isr_common:",
    "push rax",
    "push rbx",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push rbp",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov rdi, rsp",
    "mov rbp, rsp",
    "and rsp, -16",
    "cld",
    "call ember_interrupt_dispatch",
    "mov rsp, rbp",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rbp",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "pop rbx",
    "pop rax",
    "add rsp, 16",
    "iretq",
);

extern "C" {
    static ember_isr_stubs: u8;
}

/// Vector of the LAPIC timer.
pub const TIMER_VECTOR: u8 = 0x20;
/// Vector of the IPI that wakes an application processor for new work (a VM to run or stop).
pub const KICK_VECTOR: u8 = 0x21;
/// Vector of the LAPIC spurious interrupt.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// Timer interrupts taken on the bootstrap CPU since the timer started.
pub static TICKS: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: Once<&'static Idt> = Once::new();

/// Builds the IDT (once) and loads it on the calling CPU.
pub fn init() {
    let idt = IDT.call_once(|| {
        // Only the address of the symbol (defined by the generated asm) is taken.
        let base = core::ptr::addr_of!(ember_isr_stubs) as u64;
        let mut table = Box::new(Idt([Gate::default(); 256]));
        for (v, gate) in table.0.iter_mut().enumerate() {
            let addr = base + 16 * v as u64;
            gate.offset_low = addr as u16;
            gate.offset_mid = (addr >> 16) as u16;
            gate.offset_high = (addr >> 32) as u32;
            gate.selector = gdt::KERNEL_CS;
            gate.attributes = 0x8e; // present, DPL 0, 64-bit interrupt gate
            gate.ist = match v {
                8 => gdt::DOUBLE_FAULT_IST as u8,
                2 | 18 => gdt::NMI_IST as u8,
                _ => 0,
            };
        }
        Box::leak(table)
    });
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::new(*idt as *const Idt as u64),
    };
    // SAFETY: the table lives forever and every gate points at a generated stub in kernel code using
    // the kernel code selector.
    unsafe { lidt(&ptr) }
}

/// Called by `ember_isr_common` with the saved registers.
#[no_mangle]
extern "sysv64" fn ember_interrupt_dispatch(frame: &mut TrapFrame) {
    match frame.vector {
        0..=31 => fatal_exception(frame),
        v if v == TIMER_VECTOR as u64 => {
            TICKS.fetch_add(1, Ordering::Relaxed);
            apic::eoi();
        }
        v if v == KICK_VECTOR as u64 => apic::eoi(),
        v if v == SPURIOUS_VECTOR as u64 => {}
        v => {
            kprintln!("ember: unexpected interrupt vector {v:#x}");
            apic::eoi();
        }
    }
}

fn fatal_exception(frame: &TrapFrame) -> ! {
    let mut words = [0u64; 16];
    let readable = frame.rsp.is_multiple_of(8)
        && frame.rsp >= 0x1000
        && frame.rsp.checked_add(128).is_some_and(|end| end <= super::paging::mapped_limit());
    let stack: &[u64] = if readable {
        for (i, w) in words.iter_mut().enumerate() {
            // SAFETY: the 128 bytes at RSP are inside the identity map (checked above), so the reads
            // cannot fault; they are plain loads of stack memory.
            *w = unsafe { core::ptr::read_volatile((frame.rsp as *const u64).add(i)) };
        }
        &words
    } else {
        &[]
    };
    let mut report = console::FixedText::new();
    let ctx = ReportContext { cpu: apic::current_id(), cr2: cpu::cr2(), cr3: cpu::cr3(), stack };
    let _ = write_report(&mut report, frame, &ctx);
    console::emergency_report(report.as_str(), "System halted.");
    console::stop(console::ExitStatus::Exception)
}
