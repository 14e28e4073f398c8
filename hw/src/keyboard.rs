//! Local keyboards: PS/2 scan codes and USB HID boot-protocol reports, through a keyboard layout, to
//! the DCUI's [`Key`]s.
//!
//! Both keyboards are reduced to the same physical key codes - USB HID usages (HID Usage Tables,
//! page 0x07 "Keyboard/Keypad"): the PS/2 decoder maps scan code set 1 (what the i8042 hands over
//! with translation on, the firmware's setting) to usages, the USB decoder takes them from the boot
//! report. One [`KeyState`] then tracks modifiers, Caps Lock, Num Lock and dead keys and asks the
//! [`Layout`] which character a key makes.
//!
//! Layouts with a keymap: US Default and German (QWERTZ, with AltGr and the dead keys `^`, `´`, `` ` ``).
//! Every other layout name the configuration accepts (the kickstart list) types as US Default; the
//! DCUI says so when one is chosen ([`Layout::for_name`]). The DCUI takes printable ASCII only:
//! keys that make other characters (German umlauts, `ß`, `§`, `°`, accented letters from dead keys)
//! are dropped, so a password typed locally can always be typed again on a serial terminal.

use crate::keys::Key;

/// A keyboard layout with a keymap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Us,
    German,
}

impl Layout {
    /// The keymap for a configured layout name, and whether the name has a keymap of its own
    /// (`false`: it types as US Default).
    pub fn for_name(name: &str) -> (Layout, bool) {
        match name {
            "US Default" => (Layout::Us, true),
            "German" => (Layout::German, true),
            _ => (Layout::Us, false),
        }
    }

    /// What key `usage` makes at shift level `level` (0 plain, 1 Shift, 2 AltGr).
    fn symbol(self, usage: u8, level: usize) -> Sym {
        let row = match self {
            Layout::Us => US.iter().find(|r| r.0 == usage),
            Layout::German => GERMAN.iter().find(|r| r.0 == usage).or_else(|| {
                // The letters German shares with US, except Y and Z which trade places.
                US.iter().find(|r| r.0 == usage && (LETTER_A..=LETTER_Z).contains(&usage))
            }),
        };
        row.map(|r| r.1[level]).unwrap_or(Sym::None)
    }
}

/// What a key makes at one shift level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sym {
    None,
    Ch(char),
    /// A dead key: it changes the next key (`^` then `e` is `ê`); alone (then Space) it is this char.
    Dead(char),
}

use Sym::{Ch, Dead, None as No};

const LETTER_A: u8 = 0x04;
const LETTER_Z: u8 = 0x1d;

/// (usage, [plain, Shift, AltGr]).
type Row = (u8, [Sym; 3]);

const fn letter(usage: u8, c: char) -> Row {
    (usage, [Ch(c), Ch(c.to_ascii_uppercase()), No])
}

const US: &[Row] = &[
    letter(0x04, 'a'),
    letter(0x05, 'b'),
    letter(0x06, 'c'),
    letter(0x07, 'd'),
    letter(0x08, 'e'),
    letter(0x09, 'f'),
    letter(0x0a, 'g'),
    letter(0x0b, 'h'),
    letter(0x0c, 'i'),
    letter(0x0d, 'j'),
    letter(0x0e, 'k'),
    letter(0x0f, 'l'),
    letter(0x10, 'm'),
    letter(0x11, 'n'),
    letter(0x12, 'o'),
    letter(0x13, 'p'),
    letter(0x14, 'q'),
    letter(0x15, 'r'),
    letter(0x16, 's'),
    letter(0x17, 't'),
    letter(0x18, 'u'),
    letter(0x19, 'v'),
    letter(0x1a, 'w'),
    letter(0x1b, 'x'),
    letter(0x1c, 'y'),
    letter(0x1d, 'z'),
    (0x1e, [Ch('1'), Ch('!'), No]),
    (0x1f, [Ch('2'), Ch('@'), No]),
    (0x20, [Ch('3'), Ch('#'), No]),
    (0x21, [Ch('4'), Ch('$'), No]),
    (0x22, [Ch('5'), Ch('%'), No]),
    (0x23, [Ch('6'), Ch('^'), No]),
    (0x24, [Ch('7'), Ch('&'), No]),
    (0x25, [Ch('8'), Ch('*'), No]),
    (0x26, [Ch('9'), Ch('('), No]),
    (0x27, [Ch('0'), Ch(')'), No]),
    (0x2d, [Ch('-'), Ch('_'), No]),
    (0x2e, [Ch('='), Ch('+'), No]),
    (0x2f, [Ch('['), Ch('{'), No]),
    (0x30, [Ch(']'), Ch('}'), No]),
    (0x31, [Ch('\\'), Ch('|'), No]),
    (0x32, [Ch('\\'), Ch('|'), No]),
    (0x33, [Ch(';'), Ch(':'), No]),
    (0x34, [Ch('\''), Ch('"'), No]),
    (0x35, [Ch('`'), Ch('~'), No]),
    (0x36, [Ch(','), Ch('<'), No]),
    (0x37, [Ch('.'), Ch('>'), No]),
    (0x38, [Ch('/'), Ch('?'), No]),
    (0x64, [Ch('\\'), Ch('|'), No]),
];

/// German (T1, the common German PC layout): the keys that differ from US.
const GERMAN: &[Row] = &[
    (0x08, [Ch('e'), Ch('E'), Ch('€')]),
    (0x10, [Ch('m'), Ch('M'), Ch('µ')]),
    (0x14, [Ch('q'), Ch('Q'), Ch('@')]),
    letter(0x1c, 'z'),
    letter(0x1d, 'y'),
    (0x1e, [Ch('1'), Ch('!'), No]),
    (0x1f, [Ch('2'), Ch('"'), Ch('²')]),
    (0x20, [Ch('3'), Ch('§'), Ch('³')]),
    (0x21, [Ch('4'), Ch('$'), No]),
    (0x22, [Ch('5'), Ch('%'), No]),
    (0x23, [Ch('6'), Ch('&'), No]),
    (0x24, [Ch('7'), Ch('/'), Ch('{')]),
    (0x25, [Ch('8'), Ch('('), Ch('[')]),
    (0x26, [Ch('9'), Ch(')'), Ch(']')]),
    (0x27, [Ch('0'), Ch('='), Ch('}')]),
    (0x2d, [Ch('ß'), Ch('?'), Ch('\\')]),
    (0x2e, [Dead('´'), Dead('`'), No]),
    (0x2f, [Ch('ü'), Ch('Ü'), No]),
    (0x30, [Ch('+'), Ch('*'), Ch('~')]),
    (0x31, [Ch('#'), Ch('\''), No]),
    (0x32, [Ch('#'), Ch('\''), No]),
    (0x33, [Ch('ö'), Ch('Ö'), No]),
    (0x34, [Ch('ä'), Ch('Ä'), No]),
    (0x35, [Dead('^'), Ch('°'), No]),
    (0x36, [Ch(','), Ch(';'), No]),
    (0x37, [Ch('.'), Ch(':'), No]),
    (0x38, [Ch('-'), Ch('_'), No]),
    (0x64, [Ch('<'), Ch('>'), Ch('|')]),
];

// Usages of the keys that are not characters.
const ENTER: u8 = 0x28;
const ESCAPE: u8 = 0x29;
const BACKSPACE: u8 = 0x2a;
const TAB: u8 = 0x2b;
const SPACE: u8 = 0x2c;
const CAPS_LOCK: u8 = 0x39;
const F1: u8 = 0x3a;
const F12: u8 = 0x45;
const PAGE_UP: u8 = 0x4b;
const PAGE_DOWN: u8 = 0x4e;
const RIGHT: u8 = 0x4f;
const LEFT: u8 = 0x50;
const DOWN: u8 = 0x51;
const UP: u8 = 0x52;
const NUM_LOCK: u8 = 0x53;
const KP_SLASH: u8 = 0x54;
const KP_ENTER: u8 = 0x58;
const KP_1: u8 = 0x59;
const KP_DOT: u8 = 0x63;
/// Left Control; the eight modifiers are 0xe0-0xe7 in the order of the boot report's modifier bits.
const LEFT_CTRL: u8 = 0xe0;

/// Modifier bits, as in byte 0 of a HID boot keyboard report.
pub mod modifier {
    pub const LEFT_CTRL: u8 = 1 << 0;
    pub const LEFT_SHIFT: u8 = 1 << 1;
    pub const LEFT_ALT: u8 = 1 << 2;
    pub const RIGHT_CTRL: u8 = 1 << 4;
    pub const RIGHT_SHIFT: u8 = 1 << 5;
    pub const RIGHT_ALT: u8 = 1 << 6;
}

/// Up to two keys from one key event (a dead key's own character, then the key after it).
pub type Keys = [Option<Key>; 2];

/// Modifiers, lock keys and a pending dead key, and the layout they are read with.
#[derive(Debug, Clone)]
pub struct KeyState {
    layout: Layout,
    /// Held modifiers, as boot-report bits.
    modifiers: u8,
    caps_lock: bool,
    num_lock: bool,
    dead: Option<char>,
}

impl KeyState {
    pub fn new(layout: Layout) -> Self {
        // Firmware leaves Num Lock on at boot on most servers; the keypad then types digits.
        KeyState { layout, modifiers: 0, caps_lock: false, num_lock: true, dead: None }
    }

    pub fn set_layout(&mut self, layout: Layout) {
        self.layout = layout;
        self.dead = None;
    }

    /// Sets the held modifiers (a boot report carries them whole).
    fn set_modifiers(&mut self, bits: u8) {
        self.modifiers = bits;
    }

    /// A modifier key pressed or released (PS/2 sends them one by one).
    fn modifier(&mut self, usage: u8, down: bool) {
        let bit = 1 << (usage - LEFT_CTRL);
        if down {
            self.modifiers |= bit;
        } else {
            self.modifiers &= !bit;
        }
    }

    fn held(&self, bits: u8) -> bool {
        self.modifiers & bits != 0
    }

    /// The keys a press of `usage` makes.
    pub fn press(&mut self, usage: u8) -> Keys {
        use modifier::*;
        let ctrl = self.held(LEFT_CTRL | RIGHT_CTRL);
        // AltGr is the right Alt key, or Ctrl+Alt as on Windows.
        let altgr = self.held(RIGHT_ALT) || (ctrl && self.held(LEFT_ALT));
        let special = match usage {
            ENTER | KP_ENTER => Some(Key::Enter),
            ESCAPE => Some(Key::Esc),
            BACKSPACE => Some(Key::Backspace),
            TAB => Some(Key::Tab),
            SPACE => Some(Key::Space),
            F1..=F12 => Some(Key::F(usage - F1 + 1)),
            PAGE_UP => Some(Key::PageUp),
            PAGE_DOWN => Some(Key::PageDown),
            RIGHT => Some(Key::Right),
            LEFT => Some(Key::Left),
            DOWN => Some(Key::Down),
            UP => Some(Key::Up),
            CAPS_LOCK => {
                self.caps_lock = !self.caps_lock;
                return [None, None];
            }
            NUM_LOCK => {
                self.num_lock = !self.num_lock;
                return [None, None];
            }
            KP_SLASH..=KP_DOT => return [self.keypad(usage), None],
            _ => None,
        };
        if let Some(k) = special {
            // Space after a dead key types the dead key's own character (nothing when that is not
            // ASCII); any other key ends the dead key unused.
            return match self.dead.take() {
                Some(d) if usage == SPACE => [ascii(d), None],
                _ => [Some(k), None],
            };
        }
        if ctrl && !altgr {
            // Ctrl-L redraws (as on the serial console); other control keys mean nothing here.
            return [(self.layout.symbol(usage, 0) == Ch('l')).then_some(Key::Redraw), None];
        }
        let shift = self.held(LEFT_SHIFT | RIGHT_SHIFT);
        let level = if altgr { 2 } else { shift as usize };
        let sym = match self.layout.symbol(usage, level) {
            Ch(c) if self.caps_lock && level < 2 && c.is_ascii_alphabetic() => {
                // Caps Lock inverts Shift for letters.
                self.layout.symbol(usage, 1 - level)
            }
            s => s,
        };
        match sym {
            No => [None, None],
            Dead(d) => match self.dead.take() {
                // The same dead key twice types it.
                Some(p) if p == d => [ascii(d), None],
                Some(p) => {
                    self.dead = Some(d);
                    [ascii(p), None]
                }
                None => {
                    self.dead = Some(d);
                    [None, None]
                }
            },
            Ch(c) => match self.dead.take() {
                // A dead key then a letter it accents makes an accented letter: not ASCII, dropped.
                Some(_) if "aeiouyAEIOUY".contains(c) => [None, None],
                Some(p) => [ascii(p), ascii(c)],
                None => [ascii(c), None],
            },
        }
    }

    /// The keypad: digits with Num Lock on, else the navigation keys printed on them.
    fn keypad(&mut self, usage: u8) -> Option<Key> {
        self.dead = None;
        let n = usage.wrapping_sub(KP_1);
        if usage == KP_DOT {
            return self.num_lock.then_some(Key::Char('.'));
        }
        if n < 10 {
            if self.num_lock {
                let digit = if n == 9 { b'0' } else { b'1' + n };
                return Some(Key::Char(digit as char));
            }
            return match n + 1 {
                2 => Some(Key::Down),
                3 => Some(Key::PageDown),
                4 => Some(Key::Left),
                6 => Some(Key::Right),
                8 => Some(Key::Up),
                9 => Some(Key::PageUp),
                _ => None,
            };
        }
        Some(Key::Char(match usage {
            KP_SLASH => '/',
            0x55 => '*',
            0x56 => '-',
            _ => '+',
        }))
    }
}

/// The key for a character the DCUI accepts (printable ASCII).
fn ascii(c: char) -> Option<Key> {
    c.is_ascii_graphic().then_some(Key::Char(c))
}

/// Scan code set 1 (as translated by the i8042) to usages: index = make code.
const SET1: [u8; 0x59] = [
    0, ESCAPE, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2d, 0x2e, BACKSPACE,
    TAB, // 0x00
    0x14, 0x1a, 0x08, 0x15, 0x17, 0x1c, 0x18, 0x0c, 0x12, 0x13, 0x2f, 0x30, ENTER, 0xe0, 0x04,
    0x16, // 0x10
    0x07, 0x09, 0x0a, 0x0b, 0x0d, 0x0e, 0x0f, 0x33, 0x34, 0x35, 0xe1, 0x31, 0x1d, 0x1b, 0x06,
    0x19, // 0x20
    0x05, 0x11, 0x10, 0x36, 0x37, 0x38, 0xe5, 0x55, 0xe2, SPACE, CAPS_LOCK, 0x3a, 0x3b, 0x3c, 0x3d,
    0x3e, // 0x30
    0x3f, 0x40, 0x41, 0x42, 0x43, NUM_LOCK, 0x47, 0x5f, 0x60, 0x61, 0x56, 0x5c, 0x5d, 0x5e, 0x57,
    0x59, // 0x40
    0x5a, 0x5b, 0x62, KP_DOT, 0, 0, 0x64, 0x44, 0x45, // 0x50
];

/// `E0`-prefixed set 1 make codes to usages.
fn set1_extended(code: u8) -> u8 {
    match code {
        0x1c => KP_ENTER,
        0x1d => 0xe4,
        0x35 => KP_SLASH,
        0x38 => 0xe6,
        0x47 => 0x4a,
        0x48 => UP,
        0x49 => PAGE_UP,
        0x4b => LEFT,
        0x4d => RIGHT,
        0x4f => 0x4d,
        0x50 => DOWN,
        0x51 => PAGE_DOWN,
        0x52 => 0x49,
        0x53 => 0x4c,
        0x5b => 0xe3,
        0x5c => 0xe7,
        0x5d => 0x65,
        // 0x2a/0x36 are the fake shifts around Print Screen; the rest are multimedia keys.
        _ => 0,
    }
}

/// A PS/2 keyboard's byte stream (scan code set 1) to keys.
#[derive(Debug, Clone)]
pub struct Ps2Keyboard {
    pub state: KeyState,
    extended: bool,
    /// Bytes of the Pause sequence (`E1 1D 45 E1 9D C5`) still to skip.
    skip: u8,
}

impl Ps2Keyboard {
    pub fn new(layout: Layout) -> Self {
        Ps2Keyboard { state: KeyState::new(layout), extended: false, skip: 0 }
    }

    /// One byte from the keyboard.
    pub fn feed(&mut self, b: u8) -> Keys {
        if self.skip > 0 {
            self.skip -= 1;
            return [None, None];
        }
        match b {
            0xe0 => {
                self.extended = true;
                return [None, None];
            }
            0xe1 => {
                self.skip = 5;
                self.extended = false;
                return [None, None];
            }
            // Acknowledge, resend request, echo and error bytes are not keys.
            0x00 | 0xee | 0xfa | 0xfc | 0xfd | 0xfe | 0xff => {
                self.extended = false;
                return [None, None];
            }
            _ => {}
        }
        let (code, down) = (b & 0x7f, b & 0x80 == 0);
        let usage = if core::mem::take(&mut self.extended) {
            set1_extended(code)
        } else {
            SET1.get(code as usize).copied().unwrap_or(0)
        };
        match usage {
            0 => [None, None],
            0xe0..=0xe7 => {
                self.state.modifier(usage, down);
                [None, None]
            }
            _ if down => self.state.press(usage),
            _ => [None, None],
        }
    }
}

/// Typematic repeat for USB keyboards (PS/2 keyboards repeat by themselves): delay, then period.
pub const REPEAT_DELAY_MS: u64 = 500;
pub const REPEAT_PERIOD_MS: u64 = 33;

/// A USB keyboard's boot-protocol reports (HID 1.11 appendix B.1) to keys.
#[derive(Debug, Clone)]
pub struct HidKeyboard {
    pub state: KeyState,
    /// The keys held in the last report.
    held: [u8; 6],
    /// The key that repeats while held, and when it next does.
    repeat: Option<(u8, u64)>,
}

/// Usage 0x01 in every key slot: too many keys held (the report says nothing else).
const ROLLOVER: u8 = 0x01;

impl HidKeyboard {
    pub fn new(layout: Layout) -> Self {
        HidKeyboard { state: KeyState::new(layout), held: [0; 6], repeat: None }
    }

    /// One input report received at `now_ms`: the keys newly pressed in it, in report order.
    pub fn report(&mut self, report: &[u8], now_ms: u64) -> alloc::vec::Vec<Key> {
        let mut out = alloc::vec::Vec::new();
        if report.len() < 8 || report[2..8].contains(&ROLLOVER) {
            return out;
        }
        self.state.set_modifiers(report[0]);
        let mut keys = [0u8; 6];
        keys.copy_from_slice(&report[2..8]);
        for &u in keys.iter().filter(|&&u| u > 3 && u < 0xe0) {
            if !self.held.contains(&u) {
                out.extend(self.state.press(u).into_iter().flatten());
                self.repeat = repeats(u).then_some((u, now_ms + REPEAT_DELAY_MS));
            }
        }
        if self.repeat.is_some_and(|(u, _)| !keys.contains(&u)) {
            self.repeat = None;
        }
        self.held = keys;
        out
    }

    /// A held key's repeat, when it is due.
    pub fn tick(&mut self, now_ms: u64) -> Keys {
        match self.repeat {
            Some((u, at)) if now_ms >= at => {
                self.repeat = Some((u, now_ms + REPEAT_PERIOD_MS));
                self.state.press(u)
            }
            _ => [None, None],
        }
    }
}

/// Lock keys do not repeat.
fn repeats(usage: u8) -> bool {
    !matches!(usage, CAPS_LOCK | NUM_LOCK | 0x47)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;

    /// Types `codes` (set 1 bytes) and collects the characters and keys.
    fn ps2(layout: Layout, codes: &[u8]) -> Vec<Key> {
        let mut k = Ps2Keyboard::new(layout);
        codes.iter().flat_map(|&b| k.feed(b)).flatten().collect()
    }

    fn text(keys: &[Key]) -> String {
        keys.iter()
            .map(|k| match k {
                Key::Char(c) => *c,
                Key::Space => ' ',
                _ => '?',
            })
            .collect()
    }

    /// Make then break of each code, with Left Shift held around those marked `true`.
    fn strokes(keys: &[(u8, bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(code, shift) in keys {
            if shift {
                out.push(0x2a);
            }
            out.extend([code, code | 0x80]);
            if shift {
                out.push(0xaa);
            }
        }
        out
    }

    #[test]
    fn ps2_us_letters_digits_and_shift() {
        // "Ember-1!" : E(shift) m b e r - 1 !(shift 1)
        let codes = strokes(&[
            (0x12, true),
            (0x32, false),
            (0x30, false),
            (0x12, false),
            (0x13, false),
            (0x0c, false),
            (0x02, false),
            (0x02, true),
        ]);
        assert_eq!(text(&ps2(Layout::Us, &codes)), "Ember-1!");
    }

    #[test]
    fn ps2_german_swaps_y_and_z_and_moves_symbols() {
        // The keys printed Y, Z, -, shift-7, shift-0 on a US board.
        let codes = strokes(&[(0x15, false), (0x2c, false), (0x35, false), (0x08, true), (0x0b, true)]);
        assert_eq!(text(&ps2(Layout::German, &codes)), "zy-/=");
        assert_eq!(text(&ps2(Layout::Us, &codes)), "yz/&)");
    }

    #[test]
    fn ps2_german_altgr_makes_the_third_level() {
        // AltGr (E0 38) + Q, + 8, + ß key, + the ISO key left of Y.
        let mut codes = alloc::vec![0xe0, 0x38];
        codes.extend([0x10, 0x90, 0x09, 0x89, 0x0c, 0x8c, 0x56, 0xd6]);
        codes.extend([0xe0, 0xb8]);
        codes.extend([0x10, 0x90]);
        assert_eq!(text(&ps2(Layout::German, &codes)), "@[\\|q");
        // Ctrl+Alt works as AltGr too.
        assert_eq!(text(&ps2(Layout::German, &[0x1d, 0x38, 0x10, 0x90, 0xb8, 0x9d])), "@");
    }

    #[test]
    fn ps2_german_dead_keys_and_non_ascii() {
        // ^ then Space is '^'; ^ ^ is '^'; ^ then e is ê (not ASCII: dropped); ^ then x is "^x";
        // umlauts and ß are dropped.
        let space = [0x39, 0xb9];
        let hat = [0x29, 0xa9];
        let mut codes = Vec::new();
        codes.extend(hat);
        codes.extend(space);
        codes.extend(hat);
        codes.extend(hat);
        codes.extend(hat);
        codes.extend([0x12, 0x92]);
        codes.extend(hat);
        codes.extend([0x2d, 0xad]);
        codes.extend([0x27, 0xa7, 0x28, 0xa8, 0x0c, 0x8c, 0x1a, 0x9a]);
        assert_eq!(text(&ps2(Layout::German, &codes)), "^^^x");
        // Shift + the acute key is the dead grave: then Space makes '`'.
        let mut grave = strokes(&[(0x0d, true)]);
        grave.extend(space);
        assert_eq!(text(&ps2(Layout::German, &grave)), "`");
    }

    #[test]
    fn ps2_navigation_function_keys_and_keypad() {
        let keys = ps2(
            Layout::Us,
            &[
                0xe0, 0x48, 0xe0, 0xc8, // Up
                0xe0, 0x50, 0xe0, 0xd0, // Down
                0xe0, 0x49, 0xe0, 0x51, // PgUp, PgDn
                0x3c, 0x57, 0x58, // F2, F11, F12
                0x01, 0x1c, 0x0e, 0x0f, 0x39, // Esc, Enter, Backspace, Tab, Space
                0xe0, 0x1c, // keypad Enter
                0x48, 0x52, // keypad 8, 0 (Num Lock on)
                0x45, 0xc5, 0x48, 0x50, 0x4d, // Num Lock off: keypad 8, 2, 6
            ],
        );
        assert_eq!(
            keys,
            [
                Key::Up,
                Key::Down,
                Key::PageUp,
                Key::PageDown,
                Key::F(2),
                Key::F(11),
                Key::F(12),
                Key::Esc,
                Key::Enter,
                Key::Backspace,
                Key::Tab,
                Key::Space,
                Key::Enter,
                Key::Char('8'),
                Key::Char('0'),
                Key::Up,
                Key::Down,
                Key::Right,
            ]
        );
    }

    #[test]
    fn ps2_caps_lock_ctrl_l_pause_and_noise() {
        // Caps Lock: a -> A, shift-a -> a, digits unchanged.
        let mut codes = alloc::vec![0x3a, 0xba];
        codes.extend(strokes(&[(0x1e, false), (0x1e, true), (0x02, false)]));
        assert_eq!(text(&ps2(Layout::Us, &codes)), "Aa1");
        // Ctrl-L is Redraw; Ctrl-A is nothing.
        assert_eq!(ps2(Layout::Us, &[0x1d, 0x26, 0xa6, 0x1e, 0x9d]), [Key::Redraw]);
        // Pause, ACKs, BAT, Print Screen's fake shifts and unknown codes: no keys, and the next key works.
        let noise =
            [0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5, 0xfa, 0xfe, 0x00, 0xff, 0xe0, 0x2a, 0xe0, 0x37, 0x7f];
        let mut codes = noise.to_vec();
        codes.extend([0x1e, 0x9e]);
        assert_eq!(text(&ps2(Layout::Us, &codes)), "a");
    }

    #[test]
    fn ps2_never_panics_on_any_byte_stream() {
        let mut k = Ps2Keyboard::new(Layout::German);
        let mut x = 0x1234_5678u32;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let _ = k.feed(x as u8);
        }
    }

    fn report(mods: u8, keys: &[u8]) -> [u8; 8] {
        let mut r = [0u8; 8];
        r[0] = mods;
        r[2..2 + keys.len()].copy_from_slice(keys);
        r
    }

    #[test]
    fn hid_reports_give_newly_pressed_keys() {
        let mut k = HidKeyboard::new(Layout::Us);
        assert_eq!(k.report(&report(0, &[0x0b]), 0), [Key::Char('h')]);
        // Still held plus a new one: only the new one.
        assert_eq!(k.report(&report(0, &[0x0b, 0x0c]), 10), [Key::Char('i')]);
        assert_eq!(k.report(&report(0, &[]), 20), []);
        assert_eq!(k.report(&report(modifier::LEFT_SHIFT, &[0x1e]), 30), [Key::Char('!')]);
        assert_eq!(k.report(&report(0, &[0x3b, 0x52]), 40), [Key::F(2), Key::Up]);
        // Roll-over error reports change nothing; short reports are ignored.
        assert_eq!(k.report(&report(0, &[1, 1, 1, 1, 1, 1]), 50), []);
        assert_eq!(k.report(&report(0, &[0x3b, 0x52, 0x51]), 60), [Key::Down]);
        assert_eq!(k.report(&[0, 0, 0x04], 70), []);
    }

    #[test]
    fn hid_german_altgr_and_right_shift() {
        let mut k = HidKeyboard::new(Layout::German);
        assert_eq!(k.report(&report(modifier::RIGHT_ALT, &[0x14]), 0), [Key::Char('@')]);
        assert_eq!(k.report(&report(modifier::RIGHT_SHIFT, &[0x24]), 1), [Key::Char('/')]);
        assert_eq!(k.report(&report(0, &[0x1c]), 2), [Key::Char('z')]);
        k.state.set_layout(Layout::Us);
        assert_eq!(k.report(&report(0, &[]), 3), []);
        assert_eq!(k.report(&report(0, &[0x1c]), 4), [Key::Char('y')]);
    }

    #[test]
    fn hid_held_key_repeats_until_released() {
        let mut k = HidKeyboard::new(Layout::Us);
        assert_eq!(k.report(&report(0, &[0x51]), 1000), [Key::Down]);
        assert_eq!(k.tick(1000 + REPEAT_DELAY_MS - 1), [None, None]);
        assert_eq!(k.tick(1000 + REPEAT_DELAY_MS), [Some(Key::Down), None]);
        assert_eq!(k.tick(1000 + REPEAT_DELAY_MS + 1), [None, None]);
        assert_eq!(k.tick(1000 + REPEAT_DELAY_MS + REPEAT_PERIOD_MS), [Some(Key::Down), None]);
        assert_eq!(k.report(&report(0, &[]), 2000), []);
        assert_eq!(k.tick(5000), [None, None]);
        // Caps Lock toggles once however long it is held.
        assert_eq!(k.report(&report(0, &[CAPS_LOCK]), 6000), []);
        assert_eq!(k.tick(9000), [None, None]);
        assert_eq!(k.report(&report(0, &[0x04]), 9001), [Key::Char('A')]);
    }

    #[test]
    fn layout_names() {
        assert_eq!(Layout::for_name("US Default"), (Layout::Us, true));
        assert_eq!(Layout::for_name("German"), (Layout::German, true));
        assert_eq!(Layout::for_name("French"), (Layout::Us, false));
    }
}
