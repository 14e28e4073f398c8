//! Port I/O. Ports are addressed by number; the functions are safe to call because Ember owns the
//! machine and only the platform modules use them on ports they own (serial, PIT, PIC, reset).

use x86_64::instructions::port::Port;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes have no memory-safety effect on Rust objects; callers are platform modules
    // writing to the device they own.
    unsafe { Port::<u8>::new(port).write(value) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`; a read from an absent port returns 0xff.
    unsafe { Port::<u8>::new(port).read() }
}

/// Writes a 16-bit value to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe { Port::<u16>::new(port).write(value) }
}

/// Writes a 32-bit value to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { Port::<u32>::new(port).write(value) }
}
