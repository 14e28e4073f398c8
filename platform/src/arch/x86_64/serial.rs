//! 16550 UART driver for the serial console.

use super::port::{inb, outb};

/// A 16550-compatible UART at an I/O base.
pub struct SerialPort {
    base: u16,
    present: bool,
}

const DATA: u16 = 0;
const IER: u16 = 1;
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const SCRATCH: u16 = 7;

impl SerialPort {
    /// Initialises the UART at `base` for 115200 8N1 with FIFOs, and checks that one is there.
    pub fn new(base: u16) -> Self {
        outb(base + IER, 0x00); // no interrupts
        outb(base + LCR, 0x80); // DLAB
        outb(base + DATA, 0x01); // divisor 1 = 115200
        outb(base + IER, 0x00);
        outb(base + LCR, 0x03); // 8N1
        outb(base + FCR, 0xC7); // FIFO on, cleared, 14-byte threshold
        outb(base + MCR, 0x03); // DTR, RTS
        outb(base + SCRATCH, 0x5a);
        let present = inb(base + SCRATCH) == 0x5a && inb(base + LSR) != 0xff;
        SerialPort { base, present }
    }

    /// Sends one byte (bounded wait: a missing or stuck UART cannot hang the kernel).
    pub fn write_byte(&mut self, b: u8) {
        if !self.present {
            return;
        }
        for _ in 0..100_000 {
            if inb(self.base + LSR) & 0x20 != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        outb(self.base + DATA, b);
    }

    /// Receives one byte if one is waiting.
    pub fn read_byte(&mut self) -> Option<u8> {
        if self.present && inb(self.base + LSR) & 0x01 != 0 {
            Some(inb(self.base + DATA))
        } else {
            None
        }
    }
}

impl core::fmt::Write for SerialPort {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
        Ok(())
    }
}
