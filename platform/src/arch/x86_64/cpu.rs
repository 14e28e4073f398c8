//! CPU identification, model-specific registers, control registers, and deliberate faults for the
//! test-only `ember.selftest` boot option.

use alloc::string::String;
use core::arch::x86_64::{__cpuid_count, _rdtsc, CpuidResult};

/// CPUID leaf `leaf`, subleaf `sub`.
pub fn cpuid(leaf: u32, sub: u32) -> CpuidResult {
    // CPUID exists on every x86_64 CPU and has no side effects.
    __cpuid_count(leaf, sub)
}

/// Highest extended CPUID leaf.
fn max_extended_leaf() -> u32 {
    cpuid(0x8000_0000, 0).eax
}

/// The processor brand string (CPUID 0x80000002..4).
pub fn brand_string() -> Option<String> {
    if max_extended_leaf() < 0x8000_0004 {
        return None;
    }
    let mut regs = [0u32; 12];
    for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        let r = cpuid(leaf, 0);
        regs[i * 4..i * 4 + 4].copy_from_slice(&[r.eax, r.ebx, r.ecx, r.edx]);
    }
    ember_hw::cpu::brand_string(&regs)
}

/// True if the CPU supports x2APIC mode (CPUID.1:ECX bit 21).
pub fn has_x2apic() -> bool {
    cpuid(1, 0).ecx & (1 << 21) != 0
}

/// Initial APIC ID from CPUID (leaf 1 EBX 31:24; leaf 0xB for x2APIC IDs).
pub fn initial_apic_id() -> u32 {
    if cpuid(0, 0).eax >= 0xb {
        let r = cpuid(0xb, 0);
        if r.ebx != 0 {
            return r.edx;
        }
    }
    cpuid(1, 0).ebx >> 24
}

/// Whether the CPU has RDRAND (CPUID.1:ECX.30), the only strong random source Ember uses.
pub fn has_rdrand() -> bool {
    cpuid(1, 0).ecx & (1 << 30) != 0
}

/// 64 random bits: RDRAND when the CPU has it (retried as Intel's DRNG guide advises), mixed with
/// the TSC; without RDRAND only TSC jitter, which is weak - callers use it for salts and TCP/DHCP ids,
/// not for long-term keys.
pub fn random_u64() -> u64 {
    let mut v = rdtsc().rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15;
    if has_rdrand() {
        for _ in 0..10 {
            let mut r: u64;
            let ok: u8;
            // SAFETY: RDRAND exists (CPUID.1:ECX.30) and only writes the output register and CF.
            unsafe {
                core::arch::asm!("rdrand {r}", "setc {ok}", r = out(reg) r, ok = out(reg_byte) ok, options(nomem, nostack));
            }
            if ok == 1 {
                v ^= r;
                break;
            }
        }
    }
    // splitmix64 finaliser so TSC-only values are spread over all bits.
    v = (v ^ (v >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    v = (v ^ (v >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    v ^ (v >> 31) ^ rdtsc()
}

/// Time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear in ring 0 anyway.
    unsafe { _rdtsc() }
}

/// Reads an MSR.
///
/// # Safety
/// The MSR must exist on this CPU (a missing MSR raises #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    // SAFETY: the caller guarantees the MSR exists.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).read() }
}

/// Writes an MSR.
///
/// # Safety
/// The MSR must exist and the value must not break memory safety (for example by moving the APIC
/// base over RAM in use).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the MSR exists and the value is sound.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).write(value) }
}

/// CR2: the faulting linear address of the last page fault.
/// Whether the CPU offers IBPB (indirect branch prediction barrier: CPUID 8000_0008h EBX bit 12 on
/// AMD, 7h EDX bit 26 on Intel).
pub fn has_ibpb() -> bool {
    (cpuid(0x8000_0000, 0).eax >= 0x8000_0008 && cpuid(0x8000_0008, 0).ebx & (1 << 12) != 0)
        || (cpuid(0, 0).eax >= 7 && cpuid(7, 0).edx & (1 << 26) != 0)
}

/// An indirect branch prediction barrier: branch predictions trained before it (by another VM)
/// do not steer indirect branches after it. Does nothing on CPUs without IBPB.
pub fn ibpb() {
    const MSR_PRED_CMD: u32 = 0x49;
    static HAS: spin::Once<bool> = spin::Once::new();
    if *HAS.call_once(has_ibpb) {
        // SAFETY: PRED_CMD exists when CPUID reports IBPB (checked); writing bit 0 only issues
        // the barrier.
        unsafe { wrmsr(MSR_PRED_CMD, 1) }
    }
}

/// DR0-DR3 of the calling CPU.
pub fn debug_addresses() -> [u64; 4] {
    let (a, b, c, d): (u64, u64, u64, u64);
    // SAFETY: reading the debug address registers at CPL 0 has no side effect.
    unsafe {
        core::arch::asm!("mov {}, dr0", "mov {}, dr1", "mov {}, dr2", "mov {}, dr3",
            out(reg) a, out(reg) b, out(reg) c, out(reg) d, options(nomem, nostack, preserves_flags));
    }
    [a, b, c, d]
}

/// Sets DR0-DR3 of the calling CPU. They only take effect where DR7 enables them: the host's DR7
/// enables none, a guest's (in its VMCB) is the guest's own choice.
pub fn set_debug_addresses(v: &[u64; 4]) {
    // SAFETY: writing the debug address registers at CPL 0 changes no state the host relies on
    // (the host never enables breakpoints in DR7); any 64-bit value is accepted.
    unsafe {
        core::arch::asm!("mov dr0, {}", "mov dr1, {}", "mov dr2, {}", "mov dr3, {}",
            in(reg) v[0], in(reg) v[1], in(reg) v[2], in(reg) v[3], options(nomem, nostack, preserves_flags));
    }
}

pub fn cr2() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}

/// CR3: the current page-table root.
pub fn cr3() -> u64 {
    x86_64::registers::control::Cr3::read_raw().0.start_address().as_u64()
}

/// Waits a little for something to happen: halts until the next interrupt (enabling interrupts
/// atomically, so no wake-up is lost) when the periodic tick runs; without a tick nothing would wake
/// the CPU, so it only pauses briefly and the caller polls again.
pub fn wait_for_interrupt() {
    if super::timer::ticking() {
        x86_64::instructions::interrupts::enable_and_hlt();
    } else {
        for _ in 0..1000 {
            core::hint::spin_loop();
        }
    }
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Reads an address that is never mapped: above the identity map (#PF).
pub fn provoke_page_fault() {
    const UNMAPPED: u64 = 0x0000_7fde_ad00_0000;
    // SAFETY: deliberately faults; the page-fault handler reports and stops the machine, so the read
    // never completes.
    let v = unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) };
    core::hint::black_box(v);
}

/// Divides by zero (#DE).
pub fn provoke_divide_error() {
    // SAFETY: deliberately raises #DE, which stops the machine with a report.
    unsafe {
        core::arch::asm!("xor edx, edx", "xor eax, eax", "xor ecx, ecx", "div ecx", out("eax") _, out("ecx") _, out("edx") _)
    }
}

/// Executes UD2 (#UD).
pub fn provoke_invalid_opcode() {
    // SAFETY: deliberately raises #UD, which stops the machine with a report.
    unsafe { core::arch::asm!("ud2") }
}

/// Loads a selector beyond the GDT limit into DS (#GP with the selector as error code).
pub fn provoke_general_protection() {
    // SAFETY: deliberately raises #GP, which stops the machine with a report.
    unsafe { core::arch::asm!("mov ax, 0xfff8", "mov ds, ax", out("ax") _) }
}
