//! The guest's clock without exits: the KVM paravirtual clock ABI ("kvm-clock", documented in
//! Linux's `Documentation/virt/kvm/x86/msr.rst` and `cpuid.rst`), which stock Linux kernels use by
//! themselves, as do FreeBSD (13 and later) and other KVM-aware guests.
//!
//! What Ember offers:
//! - CPUID leaf 0x40000000 answers the signature `KVMKVMKVM\0\0\0` (EAX: 0x40000001, the highest
//!   KVM leaf); leaf 0x40000001 EAX has `KVM_FEATURE_CLOCKSOURCE2` (bit 3) and
//!   `KVM_FEATURE_CLOCKSOURCE_STABLE_BIT` (bit 24), with `KVM_FEATURE_PV_EOI` (bit 6, see
//!   [`crate::pveoi`]) and nothing else (no async page faults, steal time, ...). Ember's own signature `EmberEmberHV` is at leaf 0x40000100.
//! - MSR 0x4b564d00 (`MSR_KVM_WALL_CLOCK_NEW`): the guest writes the guest-physical address of a
//!   12-byte `pvclock_wall_clock` (version, seconds, nanoseconds); Ember writes there the time of
//!   day at which the system time below was zero.
//! - MSR 0x4b564d01 (`MSR_KVM_SYSTEM_TIME_NEW`): the guest writes the address of its vCPU's 32-byte
//!   `pvclock_vcpu_time_info` with bit 0 set to enable it; Ember fills it in (and again whenever the
//!   vCPU's TSC is written). Reading both MSRs returns what was written.
//!
//! The time the structure describes is the host's monotonic clock: nanoseconds since the host's TSC
//! started counting, from the guest's TSC: `ns = ((tsc - tsc_timestamp) << tsc_shift) *
//! tsc_to_system_mul >> 32` (a negative shift shifts right), with `tsc_timestamp` the guest's TSC at
//! host time 0 and `system_time` 0. Every vCPU of a VM with the same TSC offset gets the same
//! numbers, so the clock agrees between vCPUs; `PVCLOCK_TSC_STABLE_BIT` says so when the host's TSC
//! is invariant (CPUID 0x80000007 EDX bit 8) and the vCPU's TSC was not moved. A guest that points a
//! structure outside its RAM gets nothing written (and no fault, as with KVM).
//!
//! The older MSRs 0x11 and 0x12 (`KVM_FEATURE_CLOCKSOURCE`) are not offered and fault.

use crate::memory::GuestMemory;
use crate::GuestPhysAddr;
use core::sync::atomic::{compiler_fence, Ordering};

pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// The KVM leaves' base and the highest one offered.
pub const KVM_CPUID_BASE: u32 = 0x4000_0000;
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// `KVMKVMKVM\0\0\0` in EBX, ECX, EDX.
pub const KVM_SIGNATURE: [u32; 3] =
    [u32::from_le_bytes(*b"KVMK"), u32::from_le_bytes(*b"VMKV"), u32::from_le_bytes(*b"M\0\0\0")];
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
pub const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 1 << 24;
/// `pvclock_vcpu_time_info.flags`: the clock agrees between vCPUs.
pub const PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// Bytes of `pvclock_vcpu_time_info` and `pvclock_wall_clock`.
pub const TIME_INFO_LEN: usize = 32;
pub const WALL_CLOCK_LEN: usize = 12;

/// What a VM's clock is made from (the same for all its vCPUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestClock {
    /// The host's TSC frequency.
    pub tsc_hz: u64,
    /// The time of day (seconds since 1970) at host time 0.
    pub wall_base: i64,
    /// The host's TSC is invariant (runs at one rate in every power state, in step on every CPU).
    pub invariant_tsc: bool,
}

/// `(tsc_to_system_mul, tsc_shift)` for a TSC of `tsc_hz`: `((ticks << shift) * mul) >> 32`
/// nanoseconds, with `mul` in `[2^31, 2^32)` for the best precision (an error below 2^-31, well
/// under a millisecond a day).
pub fn time_scale(tsc_hz: u64) -> (u32, i8) {
    let hz = u128::from(tsc_hz.max(1));
    // mul = 10^9 * 2^32 / (hz * 2^shift); every intermediate stays far below 2^128 (hz < 2^64,
    // |shift| <= 31).
    let mul = |shift: i32| -> u128 {
        let ns = 1_000_000_000u128;
        let (num, den) = if shift >= 0 {
            (ns.wrapping_shl(32), hz.wrapping_shl(shift.unsigned_abs()))
        } else {
            (ns.wrapping_shl(32u32.saturating_add(shift.unsigned_abs())), hz)
        };
        num.checked_div(den).unwrap_or(0)
    };
    let mut shift: i32 = 0;
    while mul(shift) >= 1 << 32 && shift < 31 {
        shift = shift.saturating_add(1);
    }
    while mul(shift) < 1 << 31 && shift > -31 {
        shift = shift.saturating_sub(1);
    }
    (u32::try_from(mul(shift)).unwrap_or(u32::MAX), shift as i8)
}

/// Nanoseconds for `ticks` TSC ticks, as the guest computes them.
pub fn scale_delta(ticks: u64, mul: u32, shift: i8) -> u64 {
    let t = if shift >= 0 {
        ticks.wrapping_shl(shift.unsigned_abs().into())
    } else {
        ticks.wrapping_shr(shift.unsigned_abs().into())
    };
    (u128::from(t).wrapping_mul(u128::from(mul)) >> 32) as u64
}

impl GuestClock {
    /// The body of a vCPU's `pvclock_vcpu_time_info` (bytes 4..32; the version is written apart) for
    /// a vCPU whose TSC is the host's plus `tsc_offset`.
    pub fn time_info(&self, tsc_offset: u64) -> [u8; TIME_INFO_LEN] {
        let (mul, shift) = time_scale(self.tsc_hz);
        let stable = self.invariant_tsc && tsc_offset == 0;
        let flags = if stable { PVCLOCK_TSC_STABLE_BIT } else { 0 };
        // version, pad, tsc_timestamp (the guest's TSC at host TSC 0), system_time (0 then),
        // tsc_to_system_mul, tsc_shift, flags, pad.
        let fields = [0u8; 8]
            .into_iter()
            .chain(tsc_offset.to_le_bytes())
            .chain(0u64.to_le_bytes())
            .chain(mul.to_le_bytes())
            .chain([shift as u8, flags, 0, 0]);
        let mut b = [0u8; TIME_INFO_LEN];
        b.iter_mut().zip(fields).for_each(|(d, s)| *d = s);
        b
    }

    /// `pvclock_wall_clock` with `version`: the time of day at system time 0.
    pub fn wall_clock(&self, version: u32) -> [u8; WALL_CLOCK_LEN] {
        let secs = u32::try_from(self.wall_base.max(0)).unwrap_or(u32::MAX);
        let fields = version.to_le_bytes().into_iter().chain(secs.to_le_bytes()).chain(0u32.to_le_bytes());
        let mut b = [0u8; WALL_CLOCK_LEN];
        b.iter_mut().zip(fields).for_each(|(d, s)| *d = s);
        b
    }
}

/// A vCPU's paravirtual clock registers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClockMsrs {
    /// MSR_KVM_SYSTEM_TIME_NEW as written (bit 0: enabled).
    pub system_time: u64,
    /// MSR_KVM_WALL_CLOCK_NEW as written.
    pub wall_clock: u64,
    /// The version last written to the time structure (even).
    version: u32,
}

impl ClockMsrs {
    /// Whether the guest enabled its time structure.
    pub fn enabled(&self) -> bool {
        self.system_time & 1 != 0
    }

    /// Writes the vCPU's time structure where the guest asked (if enabled): the version made odd
    /// first, the body, then the version even again, as the ABI's readers expect. Outside RAM:
    /// nothing is written. Returns whether it was written.
    pub fn publish(&mut self, clock: &GuestClock, tsc_offset: u64, mem: &mut dyn GuestMemory) -> bool {
        // Not offered without a known TSC rate: a guest that turns it on anyway gets nothing.
        if !self.enabled() || clock.tsc_hz == 0 {
            return false;
        }
        let at = self.system_time & !1;
        if !fits(mem, at, TIME_INFO_LEN) {
            return false;
        }
        let body = clock.time_info(tsc_offset);
        let odd = self.version.wrapping_add(1);
        self.version = self.version.wrapping_add(2);
        let ok = mem.write(GuestPhysAddr(at), &odd.to_le_bytes()).is_ok();
        compiler_fence(Ordering::SeqCst);
        let ok =
            ok && mem.write(GuestPhysAddr(at.saturating_add(4)), body.get(4..).unwrap_or_default()).is_ok();
        compiler_fence(Ordering::SeqCst);
        ok && mem.write(GuestPhysAddr(at), &self.version.to_le_bytes()).is_ok()
    }

    /// Writes the wall clock where the guest asked (MSR_KVM_WALL_CLOCK_NEW); outside RAM nothing is
    /// written. Returns whether it was written.
    pub fn publish_wall_clock(&mut self, clock: &GuestClock, mem: &mut dyn GuestMemory) -> bool {
        let at = self.wall_clock;
        clock.tsc_hz != 0
            && fits(mem, at, WALL_CLOCK_LEN)
            && mem.write(GuestPhysAddr(at), &clock.wall_clock(2)).is_ok()
    }
}

/// Whether `len` bytes at guest-physical `at` lie in RAM.
fn fits(mem: &dyn GuestMemory, at: u64, len: usize) -> bool {
    mem.contains(at, len as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    /// What a guest computes from its time structure at guest TSC `tsc`.
    fn guest_ns(b: &[u8], tsc: u64) -> u64 {
        let word = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let mul = u32::from_le_bytes(b[24..28].try_into().unwrap());
        word(16) + scale_delta(tsc.wrapping_sub(word(8)), mul, b[28] as i8)
    }

    #[test]
    fn the_scale_converts_ticks_to_nanoseconds_within_a_millisecond_a_day() {
        for hz in [
            1_000_000u64,
            999_999_999,
            1_000_000_000,
            2_594_123_456,
            3_999_999_999,
            5_000_000_000,
            17_000_000_000,
        ] {
            let (mul, shift) = time_scale(hz);
            assert!(mul >= 1 << 31, "{hz}: full precision ({mul:#x}, {shift})");
            for secs in [1u64, 3600, 86_400, 30 * 86_400] {
                let ticks = hz * secs;
                let ns = scale_delta(ticks, mul, shift);
                let want = secs * 1_000_000_000;
                let err = ns.abs_diff(want);
                assert!(err <= secs * 1_000_000 / 86_400 + 1, "{hz} Hz, {secs} s: {ns} ns ({err} off)");
            }
        }
        assert_eq!(time_scale(2_000_000_000), (1 << 31, 0));
        assert_eq!(time_scale(500_000_000), (1 << 31, 2));
    }

    #[test]
    fn the_structure_gives_the_hosts_clock_the_same_on_every_vcpu() {
        let c = GuestClock { tsc_hz: 2_594_000_000, wall_base: 1_765_000_000, invariant_tsc: true };
        let b = c.time_info(0);
        assert_eq!(b[29], PVCLOCK_TSC_STABLE_BIT);
        // Host time 0 at TSC 0; 1.5 hours later.
        let tsc = 2_594_000_000u64 * 5400;
        let ns = guest_ns(&b, tsc);
        assert!(ns.abs_diff(5_400_000_000_000) < 100_000, "{ns}");
        // A vCPU whose TSC was moved sees the same time from its own TSC, but not "stable".
        let moved = c.time_info(1_000_000);
        assert_eq!(guest_ns(&moved, tsc + 1_000_000), ns);
        assert_eq!(moved[29], 0);
        let unstable = GuestClock { invariant_tsc: false, ..c };
        assert_eq!(unstable.time_info(0)[29], 0);
        let w = c.wall_clock(2);
        assert_eq!(u32::from_le_bytes(w[4..8].try_into().unwrap()), 1_765_000_000);
        assert_eq!(u32::from_le_bytes(w[0..4].try_into().unwrap()), 2);
    }

    #[test]
    fn a_structure_is_written_only_inside_ram_with_an_even_version() {
        let c = GuestClock { tsc_hz: 1_000_000_000, wall_base: 100, invariant_tsc: false };
        let mut ram = GuestRam::new(0x2000);
        let mut m = ClockMsrs { system_time: 0x1000, ..ClockMsrs::default() };
        assert!(!m.publish(&c, 0, &mut ram), "not enabled");
        m.system_time = 0x1001;
        let unknown_rate = GuestClock { tsc_hz: 0, ..c };
        assert!(!m.publish(&unknown_rate, 0, &mut ram), "not offered");
        assert!(m.publish(&c, 0, &mut ram));
        let mut b = [0u8; TIME_INFO_LEN];
        ram.read(GuestPhysAddr(0x1000), &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 2, "even version");
        assert_eq!(&b[4..], &c.time_info(0)[4..]);
        assert!(m.publish(&c, 0, &mut ram));
        ram.read(GuestPhysAddr(0x1000), &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 4);
        // At the end of RAM, past it, and where the address wraps: nothing written.
        let snapshot = |ram: &GuestRam| {
            let mut all = alloc::vec![0u8; 0x2000];
            ram.read(GuestPhysAddr(0), &mut all).unwrap();
            all
        };
        for at in [0x2000 - TIME_INFO_LEN as u64 + 2, 0x2000, !1] {
            let before = snapshot(&ram);
            m.system_time = at | 1;
            assert!(!m.publish(&c, 0, &mut ram), "{at:#x}");
            assert_eq!(snapshot(&ram), before);
        }
        m.wall_clock = 0x10;
        assert!(m.publish_wall_clock(&c, &mut ram));
        let mut w = [0u8; WALL_CLOCK_LEN];
        ram.read(GuestPhysAddr(0x10), &mut w).unwrap();
        assert_eq!(w, c.wall_clock(2));
        m.wall_clock = 0x2000 - 11;
        assert!(!m.publish_wall_clock(&c, &mut ram));
    }
}
