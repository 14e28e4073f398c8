//! The guest's console: a 16550A UART model (PC16550D data sheet), addressed by register offset
//! 0-7 from its base port (COM1 0x3f8 in Ember's VMs).
//!
//! Transmitted bytes go straight to a [`SerialOutput`] (the VM's console buffer); received bytes wait
//! in a 16-byte FIFO like the real chip's, and input beyond it is refused (the caller keeps it).
//! The interrupt output is a level on an [`IrqLine`], gated by MCR OUT2 as on PCs; the model raises
//! it for received data (IER bit 0) and an empty transmitter (IER bit 1), with the IIR priorities
//! of the data sheet. Loopback (MCR bit 4) sends written bytes back to the receiver. Every register
//! value a guest writes is accepted; nothing a guest does can fail here.

use alloc::collections::VecDeque;

/// Where transmitted bytes go.
pub trait SerialOutput {
    fn write_byte(&mut self, b: u8);
}

/// An interrupt request line (to the interrupt controller model).
pub trait IrqLine {
    fn set_level(&mut self, high: bool);
}

/// Receive FIFO depth.
pub const FIFO_LEN: usize = 16;

const IER_RX: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const IIR_NONE: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_RX: u8 = 0x04;
const IIR_FIFO: u8 = 0xc0;
const LCR_DLAB: u8 = 1 << 7;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;
const LSR_DR: u8 = 1 << 0;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;
/// Modem status with a terminal attached: DCD, DSR, CTS.
const MSR_CONNECTED: u8 = 0xb0;

#[derive(Debug, Clone)]
pub struct Serial {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo_enabled: bool,
    rx: VecDeque<u8>,
    /// The transmitter-empty interrupt is pending (cleared by reading IIR or writing THR).
    thre_pending: bool,
}

impl Default for Serial {
    fn default() -> Self {
        Self::new()
    }
}

impl Serial {
    /// The state after reset (115200 baud divisor 1, 8N1 left to the guest).
    pub fn new() -> Serial {
        Serial {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll: 1,
            dlm: 0,
            fifo_enabled: false,
            rx: VecDeque::with_capacity(FIFO_LEN),
            thre_pending: false,
        }
    }

    fn iir(&self) -> u8 {
        let fifo = if self.fifo_enabled { IIR_FIFO } else { 0 };
        if self.ier & IER_RX != 0 && !self.rx.is_empty() {
            IIR_RX | fifo
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            IIR_THRE | fifo
        } else {
            IIR_NONE | fifo
        }
    }

    fn update_irq(&self, irq: &mut impl IrqLine) {
        irq.set_level(self.iir() & IIR_NONE == 0 && self.mcr & MCR_OUT2 != 0);
    }

    fn receive(&mut self, b: u8) -> bool {
        if self.rx.len() >= FIFO_LEN {
            return false;
        }
        self.rx.push_back(b);
        true
    }

    /// Bytes from the outside (the console's input); returns how many fit the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8], irq: &mut impl IrqLine) -> usize {
        let taken = bytes.iter().take_while(|&&b| self.receive(b)).count();
        self.update_irq(irq);
        taken
    }

    /// A guest read of register `offset` (0-7; others read as 0xff, like an empty bus).
    pub fn read(&mut self, offset: u16, irq: &mut impl IrqLine) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        let v = match offset {
            0 if dlab => self.dll,
            0 => self.rx.pop_front().unwrap_or(0),
            1 if dlab => self.dlm,
            1 => self.ier,
            2 => {
                let iir = self.iir();
                if iir & 0x0f == IIR_THRE {
                    self.thre_pending = false;
                }
                iir
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let dr = if self.rx.is_empty() { 0 } else { LSR_DR };
                dr | LSR_THRE | LSR_TEMT
            }
            6 if self.mcr & MCR_LOOP != 0 => {
                // Loopback: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD.
                let m = self.mcr;
                ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
            }
            6 => MSR_CONNECTED,
            7 => self.scr,
            _ => 0xff,
        };
        self.update_irq(irq);
        v
    }

    /// A guest write of `value` to register `offset` (0-7; others are ignored).
    pub fn write(&mut self, offset: u16, value: u8, out: &mut impl SerialOutput, irq: &mut impl IrqLine) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll = value,
            0 => {
                if self.mcr & MCR_LOOP != 0 {
                    self.receive(value);
                } else {
                    out.write_byte(value);
                }
                // Sent at once: the holding register is empty again.
                self.thre_pending = true;
            }
            1 if dlab => self.dlm = value,
            1 => {
                // Enabling the THRE interrupt with the transmitter empty raises it.
                if value & IER_THRE != 0 && self.ier & IER_THRE == 0 {
                    self.thre_pending = true;
                }
                self.ier = value & 0x0f;
            }
            2 => {
                self.fifo_enabled = value & 0x01 != 0;
                if value & 0x02 != 0 {
                    self.rx.clear();
                }
            }
            3 => self.lcr = value,
            4 => self.mcr = value & 0x1f,
            7 => self.scr = value,
            _ => {}
        }
        self.update_irq(irq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[derive(Default)]
    struct Sink(Vec<u8>);
    impl SerialOutput for Sink {
        fn write_byte(&mut self, b: u8) {
            self.0.push(b);
        }
    }

    #[derive(Default)]
    struct Line(bool);
    impl IrqLine for Line {
        fn set_level(&mut self, high: bool) {
            self.0 = high;
        }
    }

    #[test]
    fn output_status_and_divisor() {
        let (mut s, mut out, mut irq) = (Serial::new(), Sink::default(), Line::default());
        for b in b"hi\n" {
            s.write(0, *b, &mut out, &mut irq);
        }
        assert_eq!(out.0, b"hi\n");
        assert_eq!(s.read(5, &mut irq), LSR_THRE | LSR_TEMT, "transmitter empty, no data");
        // DLAB switches offsets 0 and 1 to the divisor latch.
        s.write(3, 0x83, &mut out, &mut irq);
        s.write(0, 0x0c, &mut out, &mut irq);
        s.write(1, 0x00, &mut out, &mut irq);
        assert_eq!((s.read(0, &mut irq), s.read(1, &mut irq)), (0x0c, 0));
        s.write(3, 0x03, &mut out, &mut irq);
        assert_eq!(out.0, b"hi\n", "divisor writes are not output");
        s.write(7, 0x5a, &mut out, &mut irq);
        assert_eq!((s.read(7, &mut irq), s.read(3, &mut irq), s.read(9, &mut irq)), (0x5a, 0x03, 0xff));
        assert_eq!(s.read(6, &mut irq), MSR_CONNECTED);
    }

    #[test]
    fn receive_fifo_and_interrupts() {
        let (mut s, mut out, mut irq) = (Serial::new(), Sink::default(), Line::default());
        s.write(4, MCR_OUT2, &mut out, &mut irq);
        assert_eq!(s.read(2, &mut irq), IIR_NONE);
        // Input with the receive interrupt off: data ready, no interrupt.
        assert_eq!(s.enqueue_input(b"ab", &mut irq), 2);
        assert!(!irq.0);
        assert_eq!(s.read(5, &mut irq) & LSR_DR, LSR_DR);
        s.write(1, IER_RX, &mut out, &mut irq);
        assert!(irq.0);
        assert_eq!(s.read(2, &mut irq), IIR_RX);
        assert_eq!(s.read(0, &mut irq), b'a');
        assert_eq!(s.read(0, &mut irq), b'b');
        assert!(!irq.0, "drained: the line drops");
        assert_eq!(s.read(0, &mut irq), 0, "an empty FIFO reads 0");
        // The FIFO holds 16 bytes; the rest is refused for the caller to keep.
        assert_eq!(s.enqueue_input(&[b'x'; 20], &mut irq), FIFO_LEN);
        s.write(2, 0x03, &mut out, &mut irq); // enable and clear the FIFOs
        assert_eq!(s.read(5, &mut irq) & LSR_DR, 0);
        // Transmitter empty: raised when enabled and after each byte, cleared by reading IIR.
        s.write(1, IER_RX | IER_THRE, &mut out, &mut irq);
        assert!(irq.0);
        assert_eq!(s.read(2, &mut irq), IIR_THRE | IIR_FIFO);
        assert!(!irq.0);
        assert_eq!(s.read(2, &mut irq), IIR_NONE | IIR_FIFO);
        s.write(0, b'!', &mut out, &mut irq);
        assert!(irq.0);
        // Received data outranks the empty transmitter.
        s.enqueue_input(b"z", &mut irq);
        assert_eq!(s.read(2, &mut irq) & 0x0f, IIR_RX);
        // OUT2 gates the line.
        s.write(4, 0, &mut out, &mut irq);
        assert!(!irq.0);
    }

    #[test]
    fn loopback_returns_what_is_written() {
        let (mut s, mut out, mut irq) = (Serial::new(), Sink::default(), Line::default());
        s.write(4, MCR_LOOP | 0x0b, &mut out, &mut irq);
        s.write(0, 0x42, &mut out, &mut irq);
        assert!(out.0.is_empty());
        assert_eq!(s.read(0, &mut irq), 0x42);
        // DTR, RTS, OUT2 looped to DSR, CTS, DCD.
        assert_eq!(s.read(6, &mut irq), 0x20 | 0x10 | 0x80);
    }

    #[test]
    fn any_register_access_sequence_is_safe() {
        let (mut s, mut out, mut irq) = (Serial::new(), Sink::default(), Line::default());
        let mut x = 0x9e37_79b9u32;
        for _ in 0..100_000 {
            crate::xorshift32(&mut x);
            let offset = (x >> 8) as u16 % 10;
            if x & 1 == 0 {
                s.write(offset, (x >> 16) as u8, &mut out, &mut irq);
            } else {
                s.read(offset, &mut irq);
            }
            if x.is_multiple_of(7) {
                s.enqueue_input(&[x as u8; 3], &mut irq);
            }
            assert!(s.rx.len() <= FIFO_LEN);
        }
    }
}

/// The last [`CONSOLE_LOG_BYTES`] a VM wrote to its console (what `GET .../console` will show).
pub const CONSOLE_LOG_BYTES: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct ConsoleLog {
    bytes: VecDeque<u8>,
    /// Everything ever written, counted.
    pub total: u64,
}

impl ConsoleLog {
    /// The kept output, oldest first.
    pub fn contents(&self) -> alloc::vec::Vec<u8> {
        self.bytes.iter().copied().collect()
    }

    /// The output after the first `from` bytes ever written, as far as it is still kept (at most
    /// `max` bytes), and the position after it: a reader that keeps the position streams the
    /// console; one that falls more than the log behind loses the oldest part.
    pub fn since(&self, from: u64, max: usize) -> (alloc::vec::Vec<u8>, u64) {
        let oldest = self.total.saturating_sub(self.bytes.len() as u64);
        let start = from.clamp(oldest, self.total);
        let skip = start.saturating_sub(oldest) as usize;
        let out: alloc::vec::Vec<u8> = self.bytes.iter().skip(skip).take(max).copied().collect();
        let next = start.saturating_add(out.len() as u64);
        (out, next)
    }
}

impl SerialOutput for ConsoleLog {
    fn write_byte(&mut self, b: u8) {
        if self.bytes.len() == CONSOLE_LOG_BYTES {
            self.bytes.pop_front();
        }
        self.bytes.push_back(b);
        self.total = self.total.wrapping_add(1);
    }
}

/// A COM port on a VM's I/O bus: the UART model writing into a shared console log. Its interrupt
/// output is not connected yet (there is no interrupt controller model yet): guests poll it.
pub struct ComPort {
    pub uart: Serial,
    pub log: alloc::rc::Rc<core::cell::RefCell<ConsoleLog>>,
}

struct Unconnected;
impl IrqLine for Unconnected {
    fn set_level(&mut self, _: bool) {}
}

impl super::bus::PortDevice for ComPort {
    fn read(&mut self, offset: u16, _size: u8) -> u32 {
        self.uart.read(offset, &mut Unconnected) as u32
    }
    fn write(&mut self, offset: u16, _size: u8, value: u32) {
        self.uart.write(offset, value as u8, &mut *self.log.borrow_mut(), &mut Unconnected);
    }
}

#[cfg(test)]
mod console_tests {
    use super::*;
    use crate::bus::IoBus;
    use alloc::boxed::Box;
    use alloc::rc::Rc;
    use core::cell::RefCell;

    #[test]
    fn a_com_port_on_the_bus_fills_the_console_log() {
        let log = Rc::new(RefCell::new(ConsoleLog::default()));
        let mut bus = IoBus::new();
        bus.add(0x3f8, 8, Box::new(ComPort { uart: Serial::new(), log: log.clone() })).unwrap();
        for b in b"Linux" {
            bus.write(0x3f8, 1, *b as u32);
        }
        assert_eq!(bus.read(0x3fd, 1) & 0x60, 0x60, "transmitter empty");
        assert_eq!(log.borrow().contents(), b"Linux");
        // The log keeps the last 64 KiB.
        for i in 0..CONSOLE_LOG_BYTES + 10 {
            log.borrow_mut().write_byte(i as u8);
        }
        let l = log.borrow();
        assert_eq!((l.contents().len(), l.total), (CONSOLE_LOG_BYTES, CONSOLE_LOG_BYTES as u64 + 15));
        assert_eq!(l.contents()[0], 10);
        // Streaming by position: what is new, at most `max`, and the oldest kept when behind.
        let (b, next) = l.since(l.total - 3, 2);
        assert_eq!((b.len(), next), (2, l.total - 1));
        let (b, next) = l.since(next, 100);
        assert_eq!((b.len(), next), (1, l.total));
        assert_eq!(l.since(l.total, 10).0.len(), 0);
        let (b, _) = l.since(0, 4);
        assert_eq!(b, [10, 11, 12, 13], "a reader far behind starts at the oldest kept byte");
    }
}
