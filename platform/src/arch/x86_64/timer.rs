//! Time: the TSC frequency and the LAPIC timer rate, calibrated against the HPET main counter or, where
//! there is no HPET, the 8254 PIT (channel 2, whose output is readable through port 0x61 without
//! interrupts); then a periodic LAPIC tick. Results are used only if the samples agree
//! and are plausible (`ember_hw::time::pick`); otherwise no tick is started.

use super::{apic, cpu, idt, port};
use core::sync::atomic::{AtomicU64, Ordering};

const PIT_HZ: u64 = 1_193_182;
const CALIBRATION_MS: u64 = 20;
/// Tick rate of the periodic LAPIC timer.
pub const TICK_HZ: u64 = 100;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static LAPIC_HZ: AtomicU64 = AtomicU64::new(0);

/// True once the periodic tick runs (interrupts will wake a halted CPU).
pub fn ticking() -> bool {
    LAPIC_HZ.load(Ordering::Relaxed) != 0
}

/// Calibrated TSC frequency (0 before calibration).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// TSC rate assumed when calibration found no reference clock (the clock then runs approximately).
const FALLBACK_TSC_HZ: u64 = 1_000_000_000;

/// The TSC rate the clocks below count with: the calibrated one, or the fallback.
pub fn clock_hz() -> u64 {
    match tsc_hz() {
        0 => FALLBACK_TSC_HZ,
        hz => hz,
    }
}

/// Milliseconds since the TSC started counting (monotonic on one CPU; used by the management plane,
/// which runs on the bootstrap CPU only).
pub fn now_ms() -> u64 {
    (cpu::rdtsc() as u128 * 1000 / clock_hz() as u128) as u64
}

/// Nanoseconds since the TSC started counting (the TSCs of all CPUs run in step on the machines
/// Ember supports: invariant TSC, started together at reset).
pub fn now_ns() -> u64 {
    (cpu::rdtsc() as u128 * 1_000_000_000 / clock_hz() as u128) as u64
}

/// Arms this CPU's LAPIC timer to interrupt once, `ns` from now (at least 10 us); the periodic
/// tick of the bootstrap CPU must not be disturbed, so only application processors use this.
pub fn arm_oneshot_ns(ns: u64) {
    let hz = LAPIC_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        return;
    }
    let ticks = (ns.max(10_000) as u128 * (hz / 16) as u128 / 1_000_000_000).clamp(1, u32::MAX as u128);
    apic::set_timer(0x3, idt::TIMER_VECTOR as u32, ticks as u32); // divide by 16, one-shot
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

/// Runs PIT channel 2 for `ms` milliseconds in one-shot mode; returns (TSC Hz, LAPIC Hz) assuming the
/// window lasted exactly `ms`. Returns `None` if the PIT never signals (no PIT on this machine).
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
    while port::inb(0x61) & 0x20 == 0 {
        if window_overrun(tsc0, ms) {
            return None;
        }
    }
    let tsc1 = cpu::rdtsc();
    let lapic1 = apic::timer_current();
    let per_second = |delta: u64| delta * 1000 / ms;
    Some((per_second(tsc1.wrapping_sub(tsc0)), per_second(lapic0.wrapping_sub(lapic1) as u64 * 16)))
}

/// True once a window of `ms` milliseconds has certainly overrun: more TSC cycles have passed than even
/// the fastest plausible TSC counts in twice that time (so a dead reference cannot hang the boot).
fn window_overrun(tsc0: u64, ms: u64) -> bool {
    let max_cycles = ember_hw::time::TSC_RANGE.end() / 1000 * ms * 2;
    cpu::rdtsc().wrapping_sub(tsc0) > max_cycles
}

/// Runs a window of at least `ms` milliseconds on the HPET main counter at `base`; returns
/// (TSC Hz, LAPIC Hz) from the counter's actual elapsed ticks, so a window stretched by a late poll is
/// still measured right. `None` if the HPET is unusable.
fn hpet_window(base: u64, ms: u64) -> Option<(u64, u64)> {
    if base == 0 || base + 0x100 > super::paging::mapped_limit() {
        return None;
    }
    let reg = |off: u64| base + off;
    // SAFETY: the HPET register block (1 KiB at `base`, from the ACPI HPET table) is identity mapped
    // (checked above); these are 64-bit reads of its capability and counter registers and a write of
    // the enable bit in its configuration register, which only starts the main counter.
    let read = |off: u64| unsafe { core::ptr::read_volatile(reg(off) as *const u64) };
    let period_fs = read(0x00) >> 32;
    let ticks = ember_hw::time::hpet_ticks(period_fs, ms)?;
    let conf = read(0x10);
    if conf & 1 == 0 {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(reg(0x10) as *mut u64, conf | 1) };
    }
    apic::set_timer(0x3, 1 << 16, u32::MAX); // divide by 16, masked, one-shot
    let h0 = read(0xf0);
    let tsc0 = cpu::rdtsc();
    let lapic0 = apic::timer_current();
    while read(0xf0).wrapping_sub(h0) < ticks {
        if window_overrun(tsc0, ms) {
            return None;
        }
    }
    let tsc1 = cpu::rdtsc();
    let lapic1 = apic::timer_current();
    let elapsed_fs = (read(0xf0).wrapping_sub(h0) as u128) * period_fs as u128;
    let per_second = |delta: u64| (delta as u128 * 1_000_000_000_000_000 / elapsed_fs.max(1)) as u64;
    Some((per_second(tsc1.wrapping_sub(tsc0)), per_second(lapic0.wrapping_sub(lapic1) as u64 * 16)))
}

/// Five windows against one reference, as (TSC Hz, LAPIC Hz) samples.
fn samples(window: impl Fn() -> Option<(u64, u64)>) -> Option<[(u64, u64); 5]> {
    let mut out = [(0, 0); 5];
    for s in out.iter_mut() {
        *s = window()?;
    }
    Some(out)
}

/// Calibrates the TSC and LAPIC timer (against the HPET at `hpet` when there is one: its counter can be
/// read, so late polls do not matter; else against the PIT) and starts the periodic tick. With no usable
/// reference, logs a warning and leaves the tick off.
pub fn calibrate_and_start(hpet: Option<u64>) {
    // Up to three rounds of five windows: on a loaded host (or one with long SMIs) a round's
    // windows can disagree; a reference that never signals ends the attempt at once.
    let pick = |window: &dyn Fn() -> Option<(u64, u64)>| {
        for _ in 0..3 {
            match samples(window).map(|s| ember_hw::time::pick(&s)) {
                None => return None,
                Some(Some(r)) => return Some(r),
                Some(None) => {}
            }
        }
        None
    };
    let from_hpet = hpet.and_then(|base| pick(&|| hpet_window(base, CALIBRATION_MS)));
    let (source, result) = match from_hpet {
        Some(r) => ("HPET", Some(r)),
        None => {
            if hpet.is_some() {
                kprintln!("ember: the HPET gives no usable calibration; trying the 8254 PIT");
            }
            ("PIT", pick(&|| pit_window(CALIBRATION_MS)))
        }
    };
    let Some((tsc, lapic)) = result else {
        kprintln!(
            "ember: WARNING: no usable timer reference (PIT, HPET); timer calibration skipped, no tick"
        );
        return;
    };
    TSC_HZ.store(tsc, Ordering::Relaxed);
    LAPIC_HZ.store(lapic, Ordering::Relaxed);
    let initial = (lapic / 16 / TICK_HZ).clamp(1, u32::MAX as u64) as u32;
    apic::set_timer(0x3, (1 << 17) | idt::TIMER_VECTOR as u32, initial); // periodic
    kprintln!(
        "ember: TSC {} MHz, LAPIC timer {} MHz (calibrated against the {source}); tick {} Hz",
        tsc / 1_000_000,
        lapic / 1_000_000,
        TICK_HZ
    );
    verify_tick();
}

/// Checks that the tick really interrupts: counts ticks over 100 ms (measured with the TSC) with
/// interrupts enabled. A LAPIC timer that does not fire is reported, and the idle loop then polls.
fn verify_tick() {
    let before = idt::TICKS.load(Ordering::Relaxed);
    x86_64::instructions::interrupts::enable();
    delay_us(100_000);
    x86_64::instructions::interrupts::disable();
    let ticks = idt::TICKS.load(Ordering::Relaxed) - before;
    if ticks == 0 {
        LAPIC_HZ.store(0, Ordering::Relaxed);
        kprintln!("ember: WARNING: the LAPIC timer does not interrupt; running without a tick");
    } else {
        kprintln!("ember: timer tick verified: {ticks} interrupts in 100 ms");
    }
}
