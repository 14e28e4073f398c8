//! Choosing timer calibration results: several measurement windows are taken against a reference
//! clock (PIT or HPET); the result is accepted only if the samples agree and are physically plausible.
//! A reference that is absent or gated off (some platforms turn the 8254 off) gives absurd samples,
//! which must never be used to program a timer.

/// Plausible TSC frequencies (100 MHz ..= 10 GHz).
pub const TSC_RANGE: core::ops::RangeInclusive<u64> = 100_000_000..=10_000_000_000;
/// Plausible LAPIC timer input frequencies (1 MHz ..= 10 GHz).
pub const LAPIC_RANGE: core::ops::RangeInclusive<u64> = 1_000_000..=10_000_000_000;

/// Given (TSC Hz, LAPIC Hz) samples, returns the median pair if it is plausible and a majority of the
/// samples lie within 10% of it. (A window stretched by a late poll, for example when an emulator's
/// thread is descheduled, is outvoted rather than averaged in.)
pub fn pick(samples: &[(u64, u64)]) -> Option<(u64, u64)> {
    if samples.is_empty() {
        return None;
    }
    let median = |f: fn(&(u64, u64)) -> u64| {
        let mut v: alloc::vec::Vec<u64> = samples.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let (tsc, lapic) = (median(|s| s.0), median(|s| s.1));
    let close = |x: u64, m: u64| x.abs_diff(m) <= m / 10;
    let agreeing = samples.iter().filter(|&&(t, l)| close(t, tsc) && close(l, lapic)).count();
    let ok = TSC_RANGE.contains(&tsc) && LAPIC_RANGE.contains(&lapic) && agreeing * 2 > samples.len();
    ok.then_some((tsc, lapic))
}

/// Reference ticks for a window of `ms` milliseconds of an HPET whose period is `period_fs`
/// femtoseconds (HPET 1.0a 2.3.4: the period is at most 100 ns). `None` for an invalid period.
pub fn hpet_ticks(period_fs: u64, ms: u64) -> Option<u64> {
    if period_fs == 0 || period_fs > 100_000_000 {
        return None;
    }
    Some(ms * 1_000_000_000_000 / period_fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreeing_samples_give_the_median() {
        assert_eq!(
            pick(&[
                (2_400_000_000, 1_000_000_000),
                (2_450_000_000, 990_000_000),
                (2_440_000_000, 1_010_000_000)
            ]),
            Some((2_440_000_000, 1_000_000_000))
        );
    }

    #[test]
    fn absent_or_gated_reference_is_refused() {
        // What a machine without a PIT measured: the window ended at once.
        assert_eq!(pick(&[(0, 0), (0, 0), (0, 0)]), None);
        assert_eq!(pick(&[(2_400_000_000, 0); 3]), None);
        assert_eq!(pick(&[]), None);
        // No majority: every sample differs.
        let spread =
            [(1_000_000_000, 1_000_000_000), (2_000_000_000, 2_000_000_000), (4_000_000_000, 4_000_000_000)];
        assert_eq!(pick(&spread), None);
    }

    #[test]
    fn a_stretched_window_is_outvoted() {
        let good = (2_400_000_000, 1_000_000_000);
        let stretched = (3_600_000_000, 1_500_000_000);
        assert_eq!(pick(&[good, stretched, good, good, stretched]), Some(good));
        assert_eq!(
            pick(&[good, stretched, stretched, good, stretched]),
            Some(stretched),
            "the majority wins"
        );
    }

    #[test]
    fn hpet_window() {
        // QEMU's HPET: 10 ns period (100 MHz).
        assert_eq!(hpet_ticks(10_000_000, 20), Some(2_000_000));
        assert_eq!(hpet_ticks(0, 20), None);
        assert_eq!(hpet_ticks(200_000_000, 20), None);
    }
}
