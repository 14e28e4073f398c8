//! Time: the TSC frequency and the LAPIC timer rate, both calibrated against the 8254 PIT (channel 2,
//! whose output is readable through port 0x61 without interrupts), then a periodic LAPIC tick.

use super::{apic, cpu, idt, port};
use core::sync::atomic::{AtomicU64, Ordering};

const PIT_HZ: u64 = 1_193_182;
const CALIBRATION_MS: u64 = 20;
/// Tick rate of the periodic LAPIC timer.
pub const TICK_HZ: u64 = 100;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static LAPIC_HZ: AtomicU64 = AtomicU64::new(0);

/// Calibrated TSC frequency (0 before calibration).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Busy-waits `us` microseconds (needs the calibrated TSC; before that, a rough fixed spin).
pub fn delay_us(us: u64) {
    let hz = tsc_hz();
    if hz == 0 {
        for _ in 0..us * 1000 {
            core::hint::spin_loop();
        }
        return;
    }
    let end = cpu::rdtsc() + hz / 1_000_000 * us;
    while cpu::rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Runs PIT channel 2 for `ms` milliseconds in one-shot mode; returns the (TSC, LAPIC count) deltas.
/// Returns `None` if the PIT never signals (no PIT on this machine).
fn pit_window(ms: u64) -> Option<(u64, u64)> {
    let count = PIT_HZ * ms / 1000;
    let gate = port::inb(0x61);
    port::outb(0x61, (gate & !0x02) | 0x01); // gate on, speaker off
    port::outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0
    port::outb(0x42, count as u8);
    port::outb(0x42, (count >> 8) as u8);
    // Restart the count by toggling the gate.
    let g = port::inb(0x61) & !0x01;
    port::outb(0x61, g);
    port::outb(0x61, g | 0x01);
    apic::set_timer(0x3, 1 << 16, u32::MAX); // divide by 16, masked, one-shot
    let tsc0 = cpu::rdtsc();
    let lapic0 = apic::timer_current();
    let mut spins = 0u64;
    while port::inb(0x61) & 0x20 == 0 {
        spins += 1;
        if spins > 200_000_000 {
            return None;
        }
    }
    let tsc1 = cpu::rdtsc();
    let lapic1 = apic::timer_current();
    Some((tsc1.wrapping_sub(tsc0), lapic0.wrapping_sub(lapic1) as u64 * 16))
}

/// Calibrates the TSC and LAPIC timer (median of three windows) and starts the periodic tick.
pub fn calibrate_and_start() {
    let mut tsc = [0u64; 3];
    let mut lapic = [0u64; 3];
    for i in 0..3 {
        match pit_window(CALIBRATION_MS) {
            Some((t, l)) => {
                tsc[i] = t * 1000 / CALIBRATION_MS;
                lapic[i] = l * 1000 / CALIBRATION_MS;
            }
            None => {
                kprintln!("ember: WARNING: the 8254 PIT does not count; timer calibration skipped");
                return;
            }
        }
    }
    tsc.sort_unstable();
    lapic.sort_unstable();
    TSC_HZ.store(tsc[1], Ordering::Relaxed);
    LAPIC_HZ.store(lapic[1], Ordering::Relaxed);
    let initial = (lapic[1] / 16 / TICK_HZ).clamp(1, u32::MAX as u64) as u32;
    apic::set_timer(0x3, (1 << 17) | idt::TIMER_VECTOR as u32, initial); // periodic
    kprintln!(
        "ember: TSC {} MHz, LAPIC timer {} MHz (calibrated against the PIT); tick {} Hz",
        tsc[1] / 1_000_000,
        lapic[1] / 1_000_000,
        TICK_HZ
    );
}
