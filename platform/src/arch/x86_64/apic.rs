//! The local APIC, in x2APIC mode when the CPU has it, else xAPIC (MMIO).
//! Intel SDM vol. 3A chapter 11, AMD APM vol. 2 chapter 16.

use super::cpu::{self, rdmsr, wrmsr};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_GLOBAL_ENABLE: u64 = 1 << 11;
const APIC_X2_ENABLE: u64 = 1 << 10;

/// Register offsets (xAPIC MMIO offsets; x2APIC MSR = 0x800 + offset / 16).
pub const REG_ID: u32 = 0x20;
pub const REG_EOI: u32 = 0xb0;
pub const REG_SVR: u32 = 0xf0;
pub const REG_ICR_LOW: u32 = 0x300;
pub const REG_ICR_HIGH: u32 = 0x310;
pub const REG_LVT_TIMER: u32 = 0x320;
pub const REG_TIMER_INITIAL: u32 = 0x380;
pub const REG_TIMER_CURRENT: u32 = 0x390;
pub const REG_TIMER_DIVIDE: u32 = 0x3e0;

static X2APIC: AtomicBool = AtomicBool::new(false);
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0xfee0_0000);
static READY: AtomicBool = AtomicBool::new(false);

/// True when the APICs run in x2APIC mode.
pub fn is_x2apic() -> bool {
    X2APIC.load(Ordering::Relaxed)
}

fn read(reg: u32) -> u32 {
    if is_x2apic() {
        // SAFETY: x2APIC mode is enabled on this CPU (set before any access) and the MSR is a defined
        // APIC register.
        unsafe { rdmsr(0x800 + (reg >> 4)) as u32 }
    } else {
        // SAFETY: the xAPIC page is identity mapped (below 4 GiB) and `reg` is a register offset.
        unsafe { core::ptr::read_volatile((XAPIC_BASE.load(Ordering::Relaxed) + reg as u64) as *const u32) }
    }
}

fn write(reg: u32, value: u32) {
    if is_x2apic() {
        // SAFETY: as in `read`.
        unsafe { wrmsr(0x800 + (reg >> 4), value as u64) }
    } else {
        // SAFETY: as in `read`.
        unsafe {
            core::ptr::write_volatile((XAPIC_BASE.load(Ordering::Relaxed) + reg as u64) as *mut u32, value)
        }
    }
}

/// Enables the local APIC of the calling CPU in the mode chosen by the bootstrap CPU.
pub fn enable_this_cpu() {
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU; only the enable bits change, the base stays.
    unsafe {
        let base = rdmsr(IA32_APIC_BASE);
        let mut v = base | APIC_GLOBAL_ENABLE;
        if is_x2apic() {
            v |= APIC_X2_ENABLE;
        }
        wrmsr(IA32_APIC_BASE, v);
    }
    // Software enable with the spurious vector.
    write(REG_SVR, 0x100 | super::idt::SPURIOUS_VECTOR as u32);
}

/// Sets up the bootstrap CPU's APIC; `madt_address` is the xAPIC base the MADT reported.
pub fn init_bsp(madt_address: Option<u64>) {
    X2APIC.store(cpu::has_x2apic(), Ordering::Relaxed);
    // SAFETY: reading IA32_APIC_BASE has no side effects.
    let msr_base = unsafe { rdmsr(IA32_APIC_BASE) } & 0x000f_ffff_ffff_f000;
    XAPIC_BASE.store(madt_address.unwrap_or(msr_base), Ordering::Relaxed);
    // Mask the legacy 8259 PICs: all interrupts come through the APICs.
    super::port::outb(0x21, 0xff);
    super::port::outb(0xa1, 0xff);
    enable_this_cpu();
    READY.store(true, Ordering::Release);
    kprintln!("ember: local APIC {} in {} mode", current_id(), if is_x2apic() { "x2APIC" } else { "xAPIC" });
}

/// APIC ID of the calling CPU.
pub fn current_id() -> u32 {
    if !READY.load(Ordering::Acquire) {
        return cpu::initial_apic_id();
    }
    if is_x2apic() {
        read(REG_ID)
    } else {
        read(REG_ID) >> 24
    }
}

/// Signals end of interrupt.
pub fn eoi() {
    if READY.load(Ordering::Acquire) {
        write(REG_EOI, 0);
    }
}

/// Sends an inter-processor interrupt with the low ICR word `low` to APIC ID `dest`, waiting (bounded)
/// for delivery in xAPIC mode.
pub fn send_ipi(dest: u32, low: u32) {
    if is_x2apic() {
        // SAFETY: x2APIC ICR MSR (0x830) takes destination in bits 63:32 and the command in 31:0.
        unsafe { wrmsr(0x830, ((dest as u64) << 32) | low as u64) }
    } else {
        write(REG_ICR_HIGH, dest << 24);
        write(REG_ICR_LOW, low);
        for _ in 0..1_000_000 {
            if read(REG_ICR_LOW) & (1 << 12) == 0 {
                break;
            }
            core::hint::spin_loop();
        }
    }
}

/// Programs the timer: `divide` is the encoded divide configuration, `initial` the count, `lvt` the
/// LVT timer entry.
pub fn set_timer(divide: u32, lvt: u32, initial: u32) {
    write(REG_TIMER_DIVIDE, divide);
    write(REG_LVT_TIMER, lvt);
    write(REG_TIMER_INITIAL, initial);
}

/// Current count of the timer.
pub fn timer_current() -> u32 {
    read(REG_TIMER_CURRENT)
}
