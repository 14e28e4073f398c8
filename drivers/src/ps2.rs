//! The PS/2 keyboard behind an i8042 controller (ports 0x60/0x64), polled.
//!
//! The firmware has set the controller up; Ember keeps its set-up but turns the controller's
//! interrupts off (the keyboard is polled with the rest of the management loop), makes sure scan
//! code translation is on (set 1 bytes, what [`Ps2Keyboard`] decodes), and turns the mouse port off
//! so its bytes cannot be mistaken for keys. A machine without a controller (the status port reads
//! 0xff, or the controller does not answer) has no PS/2 keyboard; nothing else changes.

use ember_hw::keyboard::{Keys, Layout, Ps2Keyboard};
use ember_platform::arch::x86_64::port::{inb, outb};
use ember_platform::arch::x86_64::timer;

const DATA: u16 = 0x60;
const STATUS: u16 = 0x64;
const COMMAND: u16 = 0x64;
/// Status: output buffer full (a byte to read), input buffer full (busy), byte is from the mouse.
const OUTPUT_FULL: u8 = 1 << 0;
const INPUT_FULL: u8 = 1 << 1;
const FROM_MOUSE: u8 = 1 << 5;
// Controller commands.
const READ_CONFIG: u8 = 0x20;
const WRITE_CONFIG: u8 = 0x60;
const DISABLE_MOUSE: u8 = 0xa7;
const ENABLE_KEYBOARD: u8 = 0xae;
// Configuration byte bits.
const CONFIG_KEYBOARD_IRQ: u8 = 1 << 0;
const CONFIG_MOUSE_IRQ: u8 = 1 << 1;
const CONFIG_KEYBOARD_CLOCK_OFF: u8 = 1 << 4;
const CONFIG_TRANSLATE: u8 = 1 << 6;
/// Keyboard command: enable scanning.
const KEYBOARD_ENABLE: u8 = 0xf4;

/// How long one controller handshake may take.
const TIMEOUT_MS: u64 = 50;

pub struct Ps2 {
    pub decoder: Ps2Keyboard,
}

fn wait(what: u8, set: bool) -> bool {
    let end = timer::now_ms() + TIMEOUT_MS;
    loop {
        if (inb(STATUS) & what != 0) == set {
            return true;
        }
        if timer::now_ms() > end {
            return false;
        }
        core::hint::spin_loop();
    }
}

fn command(c: u8) -> bool {
    wait(INPUT_FULL, false) && {
        outb(COMMAND, c);
        true
    }
}

fn write_data(b: u8) -> bool {
    wait(INPUT_FULL, false) && {
        outb(DATA, b);
        true
    }
}

fn read_data() -> Option<u8> {
    wait(OUTPUT_FULL, true).then(|| inb(DATA))
}

impl Ps2 {
    /// Takes the PS/2 keyboard, if the machine has an i8042.
    pub fn probe() -> Option<Ps2> {
        if inb(STATUS) == 0xff {
            return None;
        }
        // Drop whatever the firmware left unread.
        for _ in 0..32 {
            if inb(STATUS) & OUTPUT_FULL == 0 {
                break;
            }
            inb(DATA);
        }
        if !command(DISABLE_MOUSE) || !command(READ_CONFIG) {
            kprintln!("ember: PS/2: the i8042 does not take commands; no PS/2 keyboard");
            return None;
        }
        let Some(config) = read_data() else {
            kprintln!("ember: PS/2: the i8042 does not answer; no PS/2 keyboard");
            return None;
        };
        let new = (config & !(CONFIG_KEYBOARD_IRQ | CONFIG_MOUSE_IRQ | CONFIG_KEYBOARD_CLOCK_OFF))
            | CONFIG_TRANSLATE;
        if !(command(WRITE_CONFIG) && write_data(new) && command(ENABLE_KEYBOARD)) {
            kprintln!("ember: PS/2: the i8042 did not take its configuration; no PS/2 keyboard");
            return None;
        }
        // Scanning is normally on already; the keyboard's acknowledgement (0xfa) is dropped by the
        // decoder. No keyboard plugged in is no error: one may be plugged in later.
        write_data(KEYBOARD_ENABLE);
        kprintln!("ember: PS/2 keyboard controller (i8042) ready");
        Some(Ps2 { decoder: Ps2Keyboard::new(Layout::Us) })
    }

    /// Decodes every keyboard byte waiting; mouse bytes are dropped.
    pub fn poll(&mut self, mut key: impl FnMut(Keys)) {
        for _ in 0..64 {
            let status = inb(STATUS);
            if status & OUTPUT_FULL == 0 {
                return;
            }
            let b = inb(DATA);
            if status & FROM_MOUSE == 0 {
                key(self.decoder.feed(b));
            }
        }
    }
}
