//! The 8254 programmable interval timer (Intel 8254 data sheet) on ports 0x40-0x43, and the speaker
//! gate and timer-2 output bits of port 0x61 that Linux uses to calibrate the TSC against it.
//!
//! Counters run at 1.193182 MHz from the time they are loaded (or, for counter 2, from the rising
//! edge of its gate); their value and output are computed from a monotonic clock the caller passes
//! in (nanoseconds), so nothing needs to tick. Modes 0 (interrupt on terminal count), 2 (rate
//! generator) and 3 (square wave) are modelled; the hardware-triggered modes 1 and 5 behave as
//! mode 0 and the strobe mode 4 as mode 0 with its output low, which is what software observes of
//! them without a gate pulse. BCD counting is not modelled (the count is binary). Counter 0's
//! output is IRQ 0: [`Pit::take_irq0`] reports its rising edges and [`Pit::next_irq0`] when the next
//! one is due, so a halted vCPU knows how long it may sleep.

/// Counter input clock, Hz.
pub const PIT_HZ: u64 = 1_193_182;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Low,
    High,
    LowHigh,
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    mode: u8,
    access: Access,
    /// The loaded count (0 means 65536).
    reload: u32,
    /// When counting started (ns); `None` until a count is loaded (or, counter 2, the gate is low).
    started: Option<u64>,
    latched: Option<u16>,
    /// Next read/write of a low-then-high access is the high byte.
    high_next_read: bool,
    high_next_write: bool,
    low_written: u8,
    /// Rising edges of the output already reported (counter 0's IRQ 0), since `started`.
    edges_taken: u64,
}

impl Counter {
    fn new() -> Self {
        Counter {
            mode: 0,
            access: Access::LowHigh,
            reload: 0x1_0000,
            started: None,
            latched: None,
            high_next_read: false,
            high_next_write: false,
            low_written: 0,
            edges_taken: 0,
        }
    }

    /// Starts (or stops) counting; the edge count restarts.
    fn start(&mut self, at: Option<u64>) {
        self.started = at;
        self.edges_taken = 0;
    }

    /// Rising edges of the output from the start of counting to `now`: one per period in modes 2
    /// and 3; one at terminal count in the one-shot modes - 0 and 1, and 4 and 5, whose strobe
    /// pulse ends there (Linux's one-shot clock event device uses mode 4).
    fn edges(&self, now: u64) -> u64 {
        let Some(e) = self.ticks(now) else { return 0 };
        let n = self.reload as u64;
        match self.mode {
            2 | 3 => e.checked_div(n).unwrap_or(0),
            _ => u64::from(e >= n),
        }
    }

    /// When (ns) the next rising edge after edge number `taken` comes, if one will.
    fn next_edge(&self) -> Option<u64> {
        let s = self.started?;
        let n = self.reload as u64;
        let tick = match self.mode {
            2 | 3 => self.edges_taken.saturating_add(1).saturating_mul(n),
            _ if self.edges_taken == 0 => n,
            _ => return None,
        };
        let ns = u128::from(tick).saturating_mul(1_000_000_000).div_ceil(u128::from(PIT_HZ));
        Some(s.saturating_add(u64::try_from(ns).unwrap_or(u64::MAX)))
    }

    fn ticks(&self, now: u64) -> Option<u64> {
        self.started.map(|s| {
            (u128::from(now.saturating_sub(s)).saturating_mul(u128::from(PIT_HZ)) / 1_000_000_000) as u64
        })
    }

    /// The count now.
    fn count(&self, now: u64) -> u16 {
        let n = self.reload as u64;
        let Some(e) = self.ticks(now) else { return self.reload as u16 };
        // The reload value is 1 to 0x10000 (0 is written as 0x10000): no division by zero, and
        // every remainder is below it.
        let rem = |m: u64| e.checked_rem(m).unwrap_or(0);
        let v = match self.mode {
            2 => n.saturating_sub(rem(n)),
            3 => {
                // Decrements by two, reloading every half period.
                let half = (n / 2).max(1);
                n.saturating_sub(rem(half).saturating_mul(2))
            }
            _ => n.wrapping_add(0x1_0000).wrapping_sub(rem(0x1_0000)) & 0xffff,
        };
        v as u16
    }

    /// The counter's output now.
    fn output(&self, now: u64) -> bool {
        let n = self.reload as u64;
        let Some(e) = self.ticks(now) else { return self.mode != 0 && self.mode != 4 };
        match self.mode {
            2 => e.checked_rem(n) != n.checked_sub(1),
            3 => e.checked_rem(n).unwrap_or(0) < n.div_ceil(2),
            4 => true,
            _ => e >= n,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pit {
    counters: [Counter; 3],
    /// Port 0x61 bit 0: counter 2's gate; bit 1: speaker data (kept, no sound).
    port_b: u8,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    pub fn new() -> Pit {
        Pit { counters: [Counter::new(); 3], port_b: 0 }
    }

    /// A read of port 0x40 + `offset` (0-2 the counters, 3 the control word: reads 0xff).
    pub fn read(&mut self, offset: u16, now: u64) -> u8 {
        let Some(c) = self.counters.get_mut(offset as usize) else { return 0xff };
        let value = match c.latched {
            Some(v) => v,
            None => c.count(now),
        };
        let (byte, done) = match c.access {
            Access::Low => (value as u8, true),
            Access::High => ((value >> 8) as u8, true),
            Access::LowHigh => {
                if c.high_next_read {
                    c.high_next_read = false;
                    ((value >> 8) as u8, true)
                } else {
                    c.high_next_read = true;
                    (value as u8, false)
                }
            }
        };
        if done {
            c.latched = None;
        }
        byte
    }

    /// A write of `value` to port 0x40 + `offset`.
    pub fn write(&mut self, offset: u16, value: u8, now: u64) {
        if offset == 3 {
            return self.control(value, now);
        }
        let Some(c) = self.counters.get_mut(offset as usize) else { return };
        let reload = match c.access {
            Access::Low => Some(value as u32),
            Access::High => Some((value as u32) << 8),
            Access::LowHigh => {
                if c.high_next_write {
                    c.high_next_write = false;
                    Some(c.low_written as u32 | (value as u32) << 8)
                } else {
                    c.high_next_write = true;
                    c.low_written = value;
                    None
                }
            }
        };
        if let Some(n) = reload {
            c.reload = if n == 0 { 0x1_0000 } else { n };
            // Counter 2 counts only while its gate is high.
            let gated_off = offset == 2 && self.port_b & 1 == 0;
            c.start(if gated_off { None } else { Some(now) });
        }
    }

    fn control(&mut self, value: u8, now: u64) {
        let channel = (value >> 6) as usize;
        if channel == 3 {
            // Read-back: bit 5 clear latches the counts of the counters in bits 1-3.
            for (i, c) in self.counters.iter_mut().enumerate() {
                if value & (2 << i) != 0 && value & (1 << 5) == 0 && c.latched.is_none() {
                    c.latched = Some(c.count(now));
                    c.high_next_read = false;
                }
            }
            return;
        }
        let Some(c) = self.counters.get_mut(channel) else { return };
        match (value >> 4) & 3 {
            0 => {
                if c.latched.is_none() {
                    c.latched = Some(c.count(now));
                    c.high_next_read = false;
                }
            }
            a => {
                c.access = match a {
                    1 => Access::Low,
                    2 => Access::High,
                    _ => Access::LowHigh,
                };
                c.mode = match (value >> 1) & 7 {
                    6 => 2,
                    7 => 3,
                    m => m,
                };
                c.start(None);
                c.latched = None;
                c.high_next_read = false;
                c.high_next_write = false;
            }
        }
    }

    /// Port 0x61: bit 0 gate 2, bit 1 speaker data, bit 5 counter 2's output (read only).
    pub fn read_port_b(&self, now: u64) -> u8 {
        let out2 = if self.counters[2].output(now) { 0x20 } else { 0 };
        (self.port_b & 0x03) | out2
    }

    pub fn write_port_b(&mut self, value: u8, now: u64) {
        let rising = value & 1 != 0 && self.port_b & 1 == 0;
        let falling = value & 1 == 0 && self.port_b & 1 != 0;
        self.port_b = value & 0x03;
        let c = &mut self.counters[2];
        if rising {
            c.start(Some(now));
        } else if falling && c.mode != 0 {
            c.start(None);
        }
    }

    /// Whether counter 0's output (IRQ 0) has risen since the last call; edges missed meanwhile are
    /// coalesced into one, as a busy interrupt controller would see them.
    pub fn take_irq0(&mut self, now: u64) -> bool {
        let c = &mut self.counters[0];
        let edges = c.edges(now);
        if edges > c.edges_taken {
            c.edges_taken = edges;
            true
        } else {
            false
        }
    }

    /// When (ns) counter 0's output rises next, if it will without new programming.
    pub fn next_irq0(&self) -> Option<u64> {
        self.counters[0].next_edge()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn count(p: &mut Pit, ch: u16, now: u64) -> u16 {
        p.write(3, (ch as u8) << 6, now); // latch
        let lo = p.read(ch, now) as u16;
        lo | (p.read(ch, now) as u16) << 8
    }

    #[test]
    fn rate_generator_counts_down_and_reloads() {
        let mut p = Pit::new();
        // Counter 0, low/high, mode 2, 1193 (1 ms).
        p.write(3, 0x34, 0);
        p.write(0, (1193u16 & 0xff) as u8, 0);
        p.write(0, (1193u16 >> 8) as u8, 0);
        assert_eq!(count(&mut p, 0, 0), 1193);
        let half = count(&mut p, 0, MS / 2);
        assert!((595..=598).contains(&half), "{half}");
        let again = count(&mut p, 0, 10 * MS + MS / 2);
        assert!((595..=599).contains(&again), "periodic: {again}");
        // A latched count holds until both bytes are read.
        p.write(3, 0x00, MS / 4);
        let lo = p.read(0, 3 * MS / 4);
        let hi = p.read(0, 3 * MS / 4);
        let latched = lo as u16 | (hi as u16) << 8;
        assert!((893..=896).contains(&latched), "{latched}");
    }

    #[test]
    fn counter_two_with_its_gate_and_output_on_port_61() {
        let mut p = Pit::new();
        // Linux's PIT calibration: gate on, speaker off; counter 2 mode 0 with 0xffff.
        p.write_port_b(0x01, 0);
        p.write(3, 0xb0, 0);
        p.write(2, 0xff, 0);
        p.write(2, 0xff, 0);
        assert_eq!(p.read_port_b(0) & 0x20, 0, "output low while counting");
        let c = count(&mut p, 2, 20 * MS);
        let expect = 0xffff - (20 * PIT_HZ / 1000) as u16;
        assert!(c.abs_diff(expect) <= 1, "{c} vs {expect}");
        // 65535 ticks are about 54.9 ms: then the output is high.
        assert_eq!(p.read_port_b(56 * MS) & 0x21, 0x21);
        // With the gate low a newly loaded count waits.
        p.write_port_b(0x00, 60 * MS);
        p.write(3, 0xb0, 60 * MS);
        p.write(2, 0x00, 60 * MS);
        p.write(2, 0x10, 60 * MS);
        assert_eq!(count(&mut p, 2, 70 * MS), 0x1000);
        p.write_port_b(0x01, 70 * MS);
        assert!(count(&mut p, 2, 71 * MS) < 0x1000);
    }

    #[test]
    fn counter_zero_interrupts_periodically_or_once() {
        let mut p = Pit::new();
        assert!(!p.take_irq0(0) && p.next_irq0().is_none(), "not programmed: no IRQ 0");
        // Linux's periodic tick at 250 Hz: mode 2, 4773 ticks.
        p.write(3, 0x34, 0);
        p.write(0, (4773u16 & 0xff) as u8, 0);
        p.write(0, (4773u16 >> 8) as u8, 0);
        let period = (4773 * 1_000_000_000u64).div_ceil(PIT_HZ);
        assert_eq!(p.next_irq0(), Some(period));
        assert!(!p.take_irq0(period - 1));
        assert!(p.take_irq0(period));
        assert!(!p.take_irq0(period + 1), "one edge, reported once");
        assert_eq!(p.next_irq0(), Some((2 * 4773 * 1_000_000_000u64).div_ceil(PIT_HZ)));
        assert!(p.take_irq0(10 * period), "missed edges coalesce");
        assert!(!p.take_irq0(10 * period));
        // One-shot (mode 0, as tickless Linux programs it): one edge at terminal count.
        p.write(3, 0x30, 20 * MS);
        p.write(0, 0xa9, 20 * MS);
        p.write(0, 0x04, 20 * MS); // 1193 ticks, 1 ms
        assert!(!p.take_irq0(20 * MS + MS / 2));
        assert!(p.next_irq0().is_some_and(|t| t.abs_diff(21 * MS) < 1000));
        assert!(p.take_irq0(21 * MS + 1000));
        assert!(!p.take_irq0(30 * MS));
        assert_eq!(p.next_irq0(), None, "no further edge until reprogrammed");
        // Linux's i8253 one-shot clock event: mode 4 (0x38), then the count.
        p.write(3, 0x38, 40 * MS);
        p.write(0, 0xa9, 40 * MS);
        p.write(0, 0x04, 40 * MS);
        assert!(!p.take_irq0(40 * MS + MS / 2));
        assert!(p.take_irq0(41 * MS + 1000), "the strobe ends the one-shot");
        assert!(!p.take_irq0(50 * MS));
    }

    #[test]
    fn access_modes_square_wave_and_read_back() {
        let mut p = Pit::new();
        // Counter 1, low byte only, mode 3 (square wave), count 100.
        p.write(3, 0x56, 0);
        p.write(1, 100, 0);
        assert_eq!(p.read(1, 0), 100);
        let c = p.read(1, 20_000); // 23 ticks: 100 - 2*23
        assert!((52..=56).contains(&c), "{c}");
        // Mode 6 is mode 2, 7 is 3.
        p.write(3, 0x3c, 0);
        p.write(0, 0, 0);
        p.write(0, 0, 0);
        assert_eq!(count(&mut p, 0, 0), 0, "0 is 65536: reads as 0");
        // Read-back latches counter 0's count at 1 ms; it is read at 5 ms.
        p.write(3, 0xd2, MS);
        let lo = p.read(0, 5 * MS);
        let hi = p.read(0, 5 * MS);
        let v = lo as u16 | (hi as u16) << 8;
        let want = (0x1_0000 - PIT_HZ / 1000) as u16;
        assert!(v.abs_diff(want) <= 1, "{v} vs {want}");
        assert_eq!(p.read(3, 0), 0xff);
        // Any sequence is safe.
        let mut x = 0xfeed_beefu32;
        for i in 0..100_000u64 {
            crate::xorshift32(&mut x);
            let port = (x >> 4) as u16 % 4;
            match x & 3 {
                0 => p.write(port, (x >> 8) as u8, i * 997),
                1 => drop(p.read(port, i * 997)),
                2 => p.write_port_b((x >> 8) as u8, i * 997),
                _ => drop(p.read_port_b(i * 997)),
            }
        }
    }
}
