//! Starting the application processors (Intel SDM vol. 3A 9.4.4 "MP initialization example";
//! AMD APM vol. 2 15.27.8): INIT, then up to two STARTUP IPIs pointing at a real-mode trampoline that
//! climbs to long mode on the kernel's page tables and calls [`ap_entry`].
//!
//! Trampoline page layout (offsets from its start; the bootstrap CPU patches the data):
//! ```text
//! 0x00 jmp to code              0x28 GDTR (limit u16, base u32)
//! 0x08 CR3 (below 4 GiB)        0x30 far pointer to 32-bit code (offset u32, selector u16)
//! 0x10 stack top                0x38 far pointer to 64-bit code (offset u32, selector u16)
//! 0x18 entry point              0x40 GDT: null, code32, data, code64
//! 0x20 argument (CPU index)     0x60 code
//! ```

use super::{apic, cpu, gdt, idt, timer};
use crate::firmware::acpi::CpuEntry;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use ember_hw::mm::frames::FrameAllocator;

core::arch::global_asm!(
    ".section .text",
    ".balign 16",
    ".global ember_ap_trampoline",
    ".global ember_ap_pm32",
    ".global ember_ap_lm64",
    ".global ember_ap_trampoline_end",
    ".code16",
    "ember_ap_trampoline:",
    "    jmp ember_ap_code16",
    ".balign 8",
    "    .quad 0",  // 0x08 cr3
    "    .quad 0",  // 0x10 stack
    "    .quad 0",  // 0x18 entry
    "    .quad 0",  // 0x20 argument
    "    .word 31", // 0x28 gdtr limit
    "    .long 0",  // gdtr base
    "    .word 0",
    "    .long 0", // 0x30 far32 offset
    "    .word 0x08",
    "    .word 0",
    "    .long 0", // 0x38 far64 offset
    "    .word 0x18",
    "    .word 0",
    "    .quad 0",                  // 0x40 gdt: null
    "    .quad 0x00CF9A000000FFFF", // 0x08 code32
    "    .quad 0x00CF92000000FFFF", // 0x10 data
    "    .quad 0x00AF9A000000FFFF", // 0x18 code64
    "ember_ap_code16:",
    "    cli",
    "    cld",
    "    movw %cs, %ax",
    "    movw %ax, %ds",
    "    xorl %ebx, %ebx",
    "    movw %cs, %bx",
    "    shll $4, %ebx",
    "    lgdtl 0x28",
    "    movl %cr0, %eax",
    "    orl $1, %eax",
    "    movl %eax, %cr0",
    "    ljmpl *0x30",
    ".code32",
    "ember_ap_pm32:",
    "    movw $0x10, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    movl %cr4, %eax",
    "    orl $0x20, %eax", // PAE
    "    movl %eax, %cr4",
    "    movl 0x08(%ebx), %eax",
    "    movl %eax, %cr3",
    "    movl $0xC0000080, %ecx", // EFER
    "    rdmsr",
    "    orl $0x100, %eax", // LME
    "    wrmsr",
    "    movl %cr0, %eax",
    "    andl $0x9FFFFFFF, %eax", // clear CD and NW (set by INIT): run with caches on
    "    orl $0x80000001, %eax",  // PG | PE
    "    movl %eax, %cr0",
    "    ljmpl *0x38(%ebx)",
    ".code64",
    "ember_ap_lm64:",
    "    movw $0x10, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    movq 0x10(%rbx), %rsp",
    "    movq 0x20(%rbx), %rdi",
    "    movq 0x18(%rbx), %rax",
    "    xorl %ebp, %ebp",
    "    callq *%rax",
    "1:  hlt",
    "    jmp 1b",
    "ember_ap_trampoline_end:",
    options(att_syntax)
);

extern "C" {
    static ember_ap_trampoline: u8;
    static ember_ap_pm32: u8;
    static ember_ap_lm64: u8;
    static ember_ap_trampoline_end: u8;
}

const AP_STACK_PAGES: u64 = 16;
/// CPUs running kernel code, the bootstrap CPU included.
static ONLINE: AtomicUsize = AtomicUsize::new(1);
/// The index of the last AP that reached Rust code (0 = none yet).
static CHECKED_IN: AtomicU64 = AtomicU64::new(0);

/// What an application processor with SVM runs for good ([`start_aps`]'s `worker`).
static WORKER: spin::Once<fn(super::svm::SvmCpu) -> !> = spin::Once::new();

/// Number of CPUs running.
pub fn online_cpus() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// First Rust code an application processor runs, on its own stack.
extern "sysv64" fn ap_entry(index: u64) -> ! {
    gdt::init_this_cpu();
    idt::init();
    apic::enable_this_cpu();
    // SVM on this CPU too, so vCPUs can run here; the state lives as long as the CPU (this function
    // never returns).
    let svm = super::svm::enable().ok().inspect(|_| {
        super::svm::CPUS_READY.fetch_add(1, Ordering::AcqRel);
    });
    ONLINE.fetch_add(1, Ordering::AcqRel);
    CHECKED_IN.store(index, Ordering::Release);
    match svm {
        // This CPU runs vCPUs from now on.
        Some(svm) => match WORKER.get() {
            Some(worker) => worker(svm),
            None => cpu::halt_forever(),
        },
        // Nothing to run without SVM. Sleep with interrupts off.
        None => cpu::halt_forever(),
    }
}

fn symbol_offset(sym: *const u8, base: *const u8) -> u64 {
    sym as u64 - base as u64
}

/// Starts every enabled CPU in `cpus` other than the caller, one at a time. Each one that can run
/// guests (SVM enabled) continues in `worker`; the others halt.
pub fn start_aps(
    cpus: &[CpuEntry],
    page: u64,
    pml4: u64,
    frames: &mut FrameAllocator,
    worker: fn(super::svm::SvmCpu) -> !,
) {
    WORKER.call_once(|| worker);
    let bsp = apic::current_id();
    // Only the addresses of the assembler labels are taken.
    let (start, pm32, lm64, end) = (
        core::ptr::addr_of!(ember_ap_trampoline),
        core::ptr::addr_of!(ember_ap_pm32),
        core::ptr::addr_of!(ember_ap_lm64),
        core::ptr::addr_of!(ember_ap_trampoline_end),
    );
    let len = symbol_offset(end, start) as usize;
    assert!(len <= 4096 && page < 0x10_0000 && page.is_multiple_of(4096) && pml4 < (1 << 32));
    // SAFETY: `page` is a LOADER_DATA page below 1 MiB reserved for this trampoline; the source is the
    // trampoline's code bytes; the two do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(start, page as *mut u8, len) };
    let put32 = |off: u64, v: u32| {
        // SAFETY: `off` is inside the trampoline page's data area (layout in the module docs).
        unsafe { core::ptr::write_volatile((page + off) as *mut u32, v) }
    };
    let put64 = |off: u64, v: u64| {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile((page + off) as *mut u64, v) }
    };
    put64(0x08, pml4);
    put64(0x18, ap_entry as *const () as u64);
    put32(0x2a, (page + 0x40) as u32);
    put32(0x30, (page + symbol_offset(pm32, start)) as u32);
    put32(0x38, (page + symbol_offset(lm64, start)) as u32);

    let listed = cpus.iter().filter(|c| c.enabled).count().max(1);
    let mut index = 0u64;
    for c in cpus.iter().filter(|c| c.enabled && c.apic_id != bsp) {
        index += 1;
        let Some(stack) = frames.alloc_contiguous(AP_STACK_PAGES, 4096, u64::MAX) else {
            kprintln!("ember: no memory for the stack of CPU with APIC ID {}", c.apic_id);
            break;
        };
        put64(0x10, stack + AP_STACK_PAGES * 4096);
        put64(0x20, index);
        core::sync::atomic::fence(Ordering::SeqCst);
        if !start_one(c.apic_id, page, index) {
            // A CPU that wakes up late would read the trampoline; patching it for the next CPU could
            // then give two CPUs one stack. Stop here instead.
            kprintln!(
                "ember: WARNING: CPU with APIC ID {} did not start; not starting the remaining CPUs",
                c.apic_id
            );
            break;
        }
    }
    kprintln!("ember: {} of {listed} CPUs listed in the MADT are running", online_cpus());
}

/// INIT-SIPI-SIPI for one CPU; waits (generously: emulators are slow) for it to check in.
fn start_one(apic_id: u32, page: u64, index: u64) -> bool {
    let vector = (page >> 12) as u32;
    apic::send_ipi(apic_id, 0x0000_4500); // INIT, level assert
    timer::delay_us(10_000);
    let checked_in = || CHECKED_IN.load(Ordering::Acquire) == index;
    for _ in 0..2 {
        apic::send_ipi(apic_id, 0x0000_4600 | vector); // STARTUP
        timer::delay_us(200);
        if checked_in() {
            return true;
        }
    }
    for _ in 0..5_000 {
        if checked_in() {
            return true;
        }
        timer::delay_us(1000);
    }
    false
}
