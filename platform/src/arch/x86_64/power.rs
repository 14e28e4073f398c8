//! Reset and stop. Reboot uses the ACPI FADT reset register (ACPI 6.5 4.8.3.6), then the 0xCF9 reset
//! control register, then the keyboard controller, then a triple fault.

use super::{cpu, port};
use crate::firmware::acpi::{PowerOff, ResetRegister};

/// PM1 control: SLP_EN (ACPI 6.5 4.8.3.2.1).
const SLP_EN: u16 = 1 << 13;

/// Powers the machine off through ACPI S5 (SLP_TYP into PM1a/PM1b control with SLP_EN); without S5
/// information, or if the machine is still running, halts every CPU this one can (it). Never returns.
pub fn shutdown(off: Option<&PowerOff>) -> ! {
    kprintln!("ember: shutting down");
    x86_64::instructions::interrupts::disable();
    if let Some(p) = off {
        port::outw(p.pm1a, ((p.slp_typ_a as u16) << 10) | SLP_EN);
        if let Some(b) = p.pm1b {
            port::outw(b, ((p.slp_typ_b as u16) << 10) | SLP_EN);
        }
        super::timer::delay_us(1_000_000);
        kprintln!("ember: ERROR: the machine did not power off; halted (it is safe to switch it off)");
    } else {
        kprintln!("ember: halted (no ACPI power-off); it is safe to switch the machine off");
    }
    cpu::halt_forever()
}

/// Resets the machine. Never returns.
pub fn reboot(reset: Option<&ResetRegister>) -> ! {
    kprintln!("ember: restarting the system");
    x86_64::instructions::interrupts::disable();
    if let Some(r) = reset {
        match *r {
            ResetRegister::Io { port: p, value } => port::outb(p, value),
            ResetRegister::Memory { address, value } => {
                // SAFETY: the FADT names this MMIO byte as the reset register; writing the reset value is
                // its documented use and the address is identity mapped (below 4 GiB on every platform
                // that uses it, checked when the FADT was read).
                unsafe { core::ptr::write_volatile(address as *mut u8, value) }
            }
        }
        super::timer::delay_us(100_000);
    }
    port::outb(0xcf9, 0x02);
    port::outb(0xcf9, 0x06);
    super::timer::delay_us(100_000);
    for _ in 0..10_000 {
        if port::inb(0x64) & 0x02 == 0 {
            break;
        }
    }
    port::outb(0x64, 0xfe);
    super::timer::delay_us(100_000);
    // Last resort: an empty IDT turns the next exception into a triple fault.
    let empty = x86_64::structures::DescriptorTablePointer { limit: 0, base: x86_64::VirtAddr::new(0) };
    // SAFETY: deliberately makes every interrupt fatal so the breakpoint below resets the CPU.
    unsafe {
        x86_64::instructions::tables::lidt(&empty);
        core::arch::asm!("int3");
    }
    cpu::halt_forever()
}

/// QEMU's isa-debug-exit device port (the appliance writes it only when `ember.debugexit` is set).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Ends a QEMU run with exit status `(code << 1) | 1`. On real hardware the port is unused.
pub fn debug_exit(code: u32) {
    port::outl(DEBUG_EXIT_PORT, code);
}
