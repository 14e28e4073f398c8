//! Keys from a serial terminal: bytes in, [`Key`]s out (REFERENCE.md 1). Function keys arrive as
//! escape sequences, in the xterm/VT220 forms (`ESC O Q`, `ESC [ 1 2 ~`) and the VT100+ forms
//! (`ESC 2`, `ESC !`, `ESC @`); arrows and Page Up/Down as `ESC [ A` ... and `ESC [ 5 ~`.
//!
//! A lone Esc is told from the start of a sequence by time: an ESC with nothing after it for
//! [`ESC_TIMEOUT_MS`] is the Esc key. Unknown or overlong sequences are dropped whole, so line noise
//! never turns into keys the menu acts on beyond what its bytes spell.

/// How long an ESC waits for the rest of a sequence.
pub const ESC_TIMEOUT_MS: u64 = 100;
/// Longest escape sequence kept (longer ones are noise).
const MAX_SEQUENCE: usize = 8;

/// A key the DCUI understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Enter,
    Esc,
    Space,
    Backspace,
    Tab,
    /// Function key 1-12.
    F(u8),
    /// A printable character (ASCII 0x21-0x7e).
    Char(char),
    /// Ctrl-L: redraw.
    Redraw,
}

/// Turns serial bytes into keys.
#[derive(Debug, Default)]
pub struct KeyDecoder {
    seq: [u8; MAX_SEQUENCE],
    len: usize,
    /// When the pending ESC arrived.
    esc_at: Option<u64>,
    /// Inside an overlong sequence: drop until its final byte.
    discarding: bool,
    /// The previous byte was CR (a CR LF pair is one Enter).
    after_cr: bool,
}

/// xterm/VT220 `ESC [ n ~` numbers.
fn tilde_key(n: u32) -> Option<Key> {
    Some(match n {
        5 => Key::PageUp,
        6 => Key::PageDown,
        11..=15 => Key::F((n - 10) as u8),
        17..=21 => Key::F((n - 11) as u8),
        23 | 24 => Key::F((n - 12) as u8),
        _ => return None,
    })
}

impl KeyDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one byte received at `now_ms`; returns up to two keys (a timed-out Esc and this byte's).
    pub fn feed(&mut self, b: u8, now_ms: u64) -> [Option<Key>; 2] {
        let flushed = self.tick(now_ms);
        [flushed, self.byte(b, now_ms)]
    }

    /// Whether an escape sequence is waiting for more bytes (the caller must keep calling `tick`).
    pub fn pending(&self) -> bool {
        self.esc_at.is_some()
    }

    /// A pending lone ESC becomes the Esc key once no sequence followed it in time.
    pub fn tick(&mut self, now_ms: u64) -> Option<Key> {
        match self.esc_at {
            Some(t) if self.len == 1 && now_ms.saturating_sub(t) >= ESC_TIMEOUT_MS => {
                self.reset();
                Some(Key::Esc)
            }
            // An incomplete sequence that stalled is noise.
            Some(t) if now_ms.saturating_sub(t) >= ESC_TIMEOUT_MS * 10 => {
                self.reset();
                None
            }
            _ => None,
        }
    }

    fn reset(&mut self) {
        self.len = 0;
        self.esc_at = None;
        self.discarding = false;
    }

    fn byte(&mut self, b: u8, now_ms: u64) -> Option<Key> {
        let after_cr = core::mem::replace(&mut self.after_cr, false);
        if self.discarding {
            // Final bytes of CSI sequences are 0x40-0x7e.
            if (0x40..=0x7e).contains(&b) {
                self.reset();
            }
            return None;
        }
        if self.len == 0 {
            return match b {
                0x1b => {
                    self.seq[0] = b;
                    self.len = 1;
                    self.esc_at = Some(now_ms);
                    None
                }
                b'\r' => {
                    self.after_cr = true;
                    Some(Key::Enter)
                }
                b'\n' if after_cr => None,
                b'\n' => Some(Key::Enter),
                b' ' => Some(Key::Space),
                b'\t' => Some(Key::Tab),
                0x08 | 0x7f => Some(Key::Backspace),
                0x0c => Some(Key::Redraw),
                0x21..=0x7e => Some(Key::Char(b as char)),
                _ => None,
            };
        }
        if b == 0x1b {
            // A new sequence starts: a lone ESC before it was the Esc key; a partial one was noise.
            let lone = self.len == 1;
            self.reset();
            self.seq[0] = b;
            self.len = 1;
            self.esc_at = Some(now_ms);
            return lone.then_some(Key::Esc);
        }
        if self.len >= MAX_SEQUENCE {
            self.discarding = true;
            self.len = 0;
            return None;
        }
        self.seq[self.len] = b;
        self.len += 1;
        let key = self.sequence();
        match key {
            Ok(Some(k)) => {
                self.reset();
                Some(k)
            }
            Ok(None) => None, // incomplete
            Err(()) => {
                self.reset();
                None
            }
        }
    }

    /// The key the sequence so far spells: `Ok(None)` while incomplete, `Err` when it is unknown.
    fn sequence(&self) -> Result<Option<Key>, ()> {
        let s = &self.seq[1..self.len];
        match s {
            // VT100+ function keys: ESC 1..9, ESC 0 = F10, ESC ! = F11, ESC @ = F12.
            [b @ b'1'..=b'9'] => Ok(Some(Key::F(b - b'0'))),
            [b'0'] => Ok(Some(Key::F(10))),
            [b'!'] => Ok(Some(Key::F(11))),
            [b'@'] => Ok(Some(Key::F(12))),
            [b'O'] | [b'['] => Ok(None),
            // SS3: F1-F4 and application-mode arrows.
            [b'O', c] => match c {
                b'P'..=b'S' => Ok(Some(Key::F(c - b'P' + 1))),
                b'A' => Ok(Some(Key::Up)),
                b'B' => Ok(Some(Key::Down)),
                b'C' => Ok(Some(Key::Right)),
                b'D' => Ok(Some(Key::Left)),
                _ => Err(()),
            },
            [b'[', rest @ ..] => {
                let (last, params) = rest.split_last().expect("non-empty");
                match last {
                    b'0'..=b'9' | b';' => Ok(None),
                    b'A' if params.is_empty() => Ok(Some(Key::Up)),
                    b'B' if params.is_empty() => Ok(Some(Key::Down)),
                    b'C' if params.is_empty() => Ok(Some(Key::Right)),
                    b'D' if params.is_empty() => Ok(Some(Key::Left)),
                    // Linux console: ESC [ [ A .. E are F1-F5.
                    b'A'..=b'E' if params == b"[" => Ok(Some(Key::F(last - b'A' + 1))),
                    b'[' if params.is_empty() => Ok(None),
                    b'~' => {
                        // Modifiers (`;2`) are ignored.
                        let number = params.split(|&c| c == b';').next().unwrap_or(&[]);
                        let n = core::str::from_utf8(number).ok().and_then(|t| t.parse::<u32>().ok());
                        n.and_then(tilde_key).map(Some).ok_or(())
                    }
                    _ => Err(()),
                }
            }
            _ => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn keys(bytes: &[u8]) -> Vec<Key> {
        let mut d = KeyDecoder::new();
        let mut out = Vec::new();
        for (i, &b) in bytes.iter().enumerate() {
            out.extend(d.feed(b, i as u64).into_iter().flatten());
        }
        out.extend(d.tick(10_000));
        out
    }

    #[test]
    fn function_keys_in_both_terminal_forms() {
        assert_eq!(keys(b"\x1bOQ"), [Key::F(2)]);
        assert_eq!(keys(b"\x1b[12~"), [Key::F(2)]);
        assert_eq!(keys(b"\x1b[23~"), [Key::F(11)]);
        assert_eq!(keys(b"\x1b[24~"), [Key::F(12)]);
        assert_eq!(keys(b"\x1b2"), [Key::F(2)]);
        assert_eq!(keys(b"\x1b!"), [Key::F(11)]);
        assert_eq!(keys(b"\x1b@"), [Key::F(12)]);
        assert_eq!(keys(b"\x1b[[B"), [Key::F(2)]);
        assert_eq!(keys(b"\x1b[24;2~"), [Key::F(12)]);
        assert_eq!(keys(b"\x1bOP\x1b[15~\x1b[17~\x1b[21~"), [Key::F(1), Key::F(5), Key::F(6), Key::F(10)]);
    }

    #[test]
    fn arrows_paging_and_plain_keys() {
        assert_eq!(keys(b"\x1b[A\x1b[B\x1bOC\x1b[D"), [Key::Up, Key::Down, Key::Right, Key::Left]);
        assert_eq!(keys(b"\x1b[5~\x1b[6~"), [Key::PageUp, Key::PageDown]);
        assert_eq!(
            keys(b"a \r\n\r\x7f\x08\t\x0c"),
            [
                Key::Char('a'),
                Key::Space,
                Key::Enter,
                Key::Enter,
                Key::Backspace,
                Key::Backspace,
                Key::Tab,
                Key::Redraw
            ]
        );
        assert_eq!(keys(b"\n\n"), [Key::Enter, Key::Enter]);
    }

    #[test]
    fn a_lone_esc_is_told_by_time() {
        let mut d = KeyDecoder::new();
        assert_eq!(d.feed(0x1b, 0), [None, None]);
        assert_eq!(d.tick(50), None);
        assert_eq!(d.tick(100), Some(Key::Esc));
        // ESC then a key well after it: Esc, then the key.
        assert_eq!(d.feed(0x1b, 200), [None, None]);
        assert_eq!(d.feed(b'x', 400), [Some(Key::Esc), Some(Key::Char('x'))]);
    }

    #[test]
    fn noise_never_panics_and_unknown_sequences_vanish() {
        assert_eq!(keys(b"\x1b[99~z"), [Key::Char('z')]);
        assert_eq!(keys(b"\x1bOZq"), [Key::Char('q')]);
        assert_eq!(keys(b"\x1b[1;2;3;4;5;6;7;8;9Xk"), [Key::Char('k')]);
        assert_eq!(keys(b"\x1b\x1b[A"), [Key::Esc, Key::Up]);
        assert_eq!(keys(b"\x1b[1\x1b[B"), [Key::Down], "a broken sequence is dropped");
        let mut d = KeyDecoder::new();
        let mut x: u32 = 1;
        for t in 0..100_000u64 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let _ = d.feed(x as u8, t / 7);
        }
        let _ = d.tick(u64::MAX);
    }
}
