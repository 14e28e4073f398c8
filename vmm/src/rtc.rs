//! The CMOS real-time clock (MC146818A, as on every PC): index port 0x70 (bit 7 masks NMI), data
//! port 0x71. Time registers come from a wall clock the caller passes in (seconds since 1970, UTC),
//! in BCD or binary and 24- or 12-hour form as register B says; a guest that sets the clock (SET
//! in register B, the time registers, SET cleared) gets an offset that later reads keep. The other
//! 114 bytes are ordinary CMOS RAM. Updates are instantaneous, so UIP (register A bit 7) never
//! reads as set; the periodic, alarm and update interrupts are not generated.

/// Seconds since 1970-01-01 00:00:00 UTC.
pub type UnixTime = i64;

const SECONDS: usize = 0x00;
const MINUTES: usize = 0x02;
const HOURS: usize = 0x04;
const WEEKDAY: usize = 0x06;
const DAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const CENTURY: usize = 0x32;
const B_SET: u8 = 1 << 7;
const B_BINARY: u8 = 1 << 2;
const B_24H: u8 = 1 << 1;

#[derive(Debug, Clone)]
pub struct Rtc {
    index: u8,
    pub nmi_masked: bool,
    ram: [u8; 128],
    /// Guest time minus wall-clock time, from the guest setting the clock.
    offset: i64,
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

// The calendar arithmetic below works on day counts far inside i64 (the guest's CMOS registers
// give years below 25,600); saturating operations keep it total all the same.

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = doe.saturating_sub(doe / 1460).saturating_add(doe / 36_524).saturating_sub(doe / 146_096) / 365;
    let doy = doe.saturating_sub(yoe.saturating_mul(365).saturating_add(yoe / 4).saturating_sub(yoe / 100));
    let mp = doy.saturating_mul(5).saturating_add(2) / 153;
    let day = doy.saturating_sub(mp.saturating_mul(153).saturating_add(2) / 5).saturating_add(1) as u32;
    let month = if mp < 10 { mp.saturating_add(3) } else { mp.saturating_sub(9) } as u32;
    let year = yoe.saturating_add(era.saturating_mul(400)).saturating_add(if month <= 2 { 1 } else { 0 });
    (year, month, day)
}

/// The day count since 1970-01-01 of a date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year.saturating_sub(1) } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let shifted = if m > 2 { m.saturating_sub(3) } else { m.saturating_add(9) };
    let doy =
        (shifted.saturating_mul(153).saturating_add(2) / 5).saturating_add(i64::from(day)).saturating_sub(1);
    let doe = yoe.saturating_mul(365).saturating_add(yoe / 4).saturating_sub(yoe / 100).saturating_add(doy);
    era.saturating_mul(146_097).saturating_add(doe).saturating_sub(719_468)
}

/// Seconds since 1970 for a calendar date and time (UTC), if it is a valid one.
pub fn unix_time(year: i64, month: i64, day: i64, hour: i64, minute: i64, second: i64) -> Option<UnixTime> {
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..61).contains(&second);
    valid.then(|| {
        days_from_civil(year, month as u32, day as u32).saturating_mul(86_400).saturating_add(
            hour.saturating_mul(3600).saturating_add(minute.saturating_mul(60)).saturating_add(second),
        )
    })
}

fn to_bcd(v: u32) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

fn from_bcd(v: u8) -> u32 {
    u32::from(v >> 4).wrapping_mul(10).wrapping_add(u32::from(v & 0x0f))
}

impl Rtc {
    /// CMOS register `i` (the index is 7 bits: always inside the 128 bytes).
    fn reg(&self, i: usize) -> u8 {
        self.ram.get(i).copied().unwrap_or(0)
    }

    fn set_reg(&mut self, i: usize, v: u8) {
        if let Some(r) = self.ram.get_mut(i) {
            *r = v;
        }
    }

    pub fn new() -> Rtc {
        let mut ram = [0u8; 128];
        ram[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
        ram[REG_B] = B_24H; // BCD, 24-hour
        ram[REG_D] = 0x80; // RAM and time valid
        Rtc { index: 0, nmi_masked: false, ram, offset: 0 }
    }

    fn encode(&self, v: u32) -> u8 {
        if self.ram[REG_B] & B_BINARY != 0 {
            v as u8
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.ram[REG_B] & B_BINARY != 0 {
            v as u32
        } else {
            from_bcd(v)
        }
    }

    /// The time registers for wall-clock time `now`.
    fn time_register(&self, reg: usize, now: UnixTime) -> u8 {
        let t = now.saturating_add(self.offset);
        let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400) as u32);
        let (year, month, day) = civil_from_days(days);
        match reg {
            SECONDS => self.encode(secs % 60),
            MINUTES => self.encode(secs / 60 % 60),
            HOURS => {
                let h = secs / 3600;
                if self.ram[REG_B] & B_24H != 0 {
                    self.encode(h)
                } else {
                    let h12 = if h % 12 == 0 { 12 } else { h % 12 };
                    self.encode(h12) | if h >= 12 { 0x80 } else { 0 }
                }
            }
            // 1 = Sunday; 1970-01-01 was a Thursday.
            WEEKDAY => self.encode((days.saturating_add(4).rem_euclid(7) as u32).wrapping_add(1)),
            DAY => self.encode(day),
            MONTH => self.encode(month),
            YEAR => self.encode(year.rem_euclid(100) as u32),
            _ => self.encode(year.div_euclid(100).clamp(0, 99) as u32),
        }
    }

    /// The time the guest wrote into the time registers (while SET was on).
    fn written_time(&self) -> Option<UnixTime> {
        let r = |i: usize| self.decode(self.reg(i));
        let hour_byte = self.reg(HOURS);
        let hour = if self.reg(REG_B) & B_24H != 0 {
            r(HOURS)
        } else {
            let pm = hour_byte & 0x80 != 0;
            let h = self.decode(hour_byte & 0x7f) % 12;
            h.wrapping_add(if pm { 12 } else { 0 })
        };
        let (month, day) = (r(MONTH), r(DAY));
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || r(MINUTES) > 59
            || r(SECONDS) > 59
        {
            return None;
        }
        // Each register decodes to at most 255 (binary mode): no overflow.
        let year = i64::from(r(CENTURY)).saturating_mul(100).saturating_add(i64::from(r(YEAR)));
        let days = days_from_civil(year, month, day);
        let secs = i64::from(hour)
            .saturating_mul(3600)
            .saturating_add(i64::from(r(MINUTES)).saturating_mul(60))
            .saturating_add(i64::from(r(SECONDS)));
        Some(days.saturating_mul(86_400).saturating_add(secs))
    }

    /// A read of port offset `port` (0: index, 1: data) at wall-clock time `now`.
    pub fn read(&mut self, port: u16, now: UnixTime) -> u8 {
        if port == 0 {
            return 0xff; // the index register is write-only
        }
        let reg = self.index as usize;
        let setting = self.reg(REG_B) & B_SET != 0;
        match reg {
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY if !setting => {
                self.time_register(reg, now)
            }
            REG_A => self.reg(REG_A) & 0x7f,
            REG_C => self.ram.get_mut(REG_C).map_or(0, core::mem::take),
            _ => self.reg(reg),
        }
    }

    /// A write of `value` to port offset `port` at wall-clock time `now`.
    pub fn write(&mut self, port: u16, value: u8, now: UnixTime) {
        if port == 0 {
            self.index = value & 0x7f;
            self.nmi_masked = value & 0x80 != 0;
            return;
        }
        let reg = self.index as usize;
        match reg {
            REG_B => {
                let was_setting = self.reg(REG_B) & B_SET != 0;
                if value & B_SET != 0 && !was_setting {
                    // Freeze: the time registers hold the current time for the guest to change.
                    for r in [SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY] {
                        let v = self.time_register(r, now);
                        self.set_reg(r, v);
                    }
                }
                self.set_reg(REG_B, value);
                if was_setting && value & B_SET == 0 {
                    if let Some(t) = self.written_time() {
                        self.offset = t.saturating_sub(now);
                    }
                }
            }
            REG_C | REG_D => {} // read-only
            REG_A => self.set_reg(REG_A, value & 0x7f),
            _ => self.set_reg(reg, value),
        }
    }
}

/// The RTC on a VM's port bus (0x70-0x71), reading wall-clock time from `clock`.
pub struct RtcPort<F: FnMut() -> UnixTime> {
    pub rtc: Rtc,
    pub clock: F,
}

impl<F: FnMut() -> UnixTime> super::bus::PortDevice for RtcPort<F> {
    fn read(&mut self, offset: u16, _size: u8) -> u32 {
        let now = (self.clock)();
        self.rtc.read(offset, now) as u32
    }
    fn write(&mut self, offset: u16, _size: u8, value: u32) {
        let now = (self.clock)();
        self.rtc.write(offset, value as u8, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_to_unix_time() {
        assert_eq!(unix_time(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(unix_time(2026, 12, 6, 3, 22, 44), Some(1_796_527_364));
        assert_eq!(unix_time(2026, 13, 1, 0, 0, 0), None);
        assert_eq!(unix_time(2026, 1, 1, 24, 0, 0), None);
    }

    /// 2026-12-01 11:08:58 UTC, a Tuesday.
    const NOW: UnixTime = 1_796_123_338;

    fn reg(r: &mut Rtc, i: u8, now: UnixTime) -> u8 {
        r.write(0, i, now);
        r.read(1, now)
    }

    #[test]
    fn calendar_arithmetic() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(NOW / 86_400), (2026, 12, 1));
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        for d in [-800_000i64, -1, 0, 59, 10_957, 20_788, 2_932_896] {
            let (y, m, day) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, day), d);
        }
    }

    #[test]
    fn reads_the_time_in_bcd_24_hour_by_default() {
        let mut r = Rtc::new();
        let got: [u8; 8] = [0, 2, 4, 6, 7, 8, 9, 0x32].map(|i| reg(&mut r, i, NOW));
        assert_eq!(got, [0x58, 0x08, 0x11, 0x03, 0x01, 0x12, 0x26, 0x20]);
        assert_eq!(reg(&mut r, 0x0a, NOW) & 0x80, 0, "never in an update");
        assert_eq!(reg(&mut r, 0x0d, NOW), 0x80, "valid");
        // Binary and 12-hour: 23:00 is 11 PM.
        reg(&mut r, 0x0b, NOW);
        r.write(1, B_BINARY, NOW);
        let late = NOW - 11 * 3600 - 8 * 60 + 23 * 3600;
        assert_eq!(reg(&mut r, 4, late), 0x80 | 11);
        assert_eq!(reg(&mut r, 0, NOW), 58);
        // The index port's bit 7 masks NMI; the index itself is write-only.
        r.write(0, 0x80 | 0x0e, NOW);
        assert!(r.nmi_masked);
        assert_eq!(r.read(0, NOW), 0xff);
    }

    #[test]
    fn the_guest_sets_the_clock_and_cmos_ram_keeps_bytes() {
        let mut r = Rtc::new();
        // SET, write 2030-06-15 08:30:00 (BCD), clear SET.
        r.write(0, 0x0b, NOW);
        r.write(1, B_SET | B_24H, NOW);
        for (i, v) in [(0x09, 0x30), (0x08, 0x06), (0x07, 0x15), (0x04, 0x08), (0x02, 0x30), (0x00, 0x00)] {
            r.write(0, i, NOW);
            r.write(1, v, NOW);
        }
        r.write(0, 0x0b, NOW);
        r.write(1, B_24H, NOW);
        // 90 seconds later the clock says 08:31:30.
        let later = NOW + 90;
        assert_eq!([4, 2, 0, 7, 8, 9].map(|i| reg(&mut r, i, later)), [0x08, 0x31, 0x30, 0x15, 0x06, 0x30]);
        // CMOS RAM.
        r.write(0, 0x40, NOW);
        r.write(1, 0xa5, NOW);
        assert_eq!(reg(&mut r, 0x40, NOW), 0xa5);
        // Register C clears on read; D is read-only.
        r.write(0, 0x0d, NOW);
        r.write(1, 0, NOW);
        assert_eq!(reg(&mut r, 0x0d, NOW), 0x80);
        // Any port sequence is safe.
        let mut x = 0x1234_5678u32;
        for _ in 0..50_000 {
            crate::xorshift32(&mut x);
            if x & 1 == 0 {
                r.write((x >> 1) as u16 & 1, (x >> 8) as u8, NOW + (x >> 16) as i64);
            } else {
                r.read((x >> 1) as u16 & 1, NOW + (x >> 16) as i64);
            }
        }
    }
}
