//! The consoles: the serial port and the framebuffer both show the log, the idle screen and any fatal
//! report. Output goes through one lock; the fatal paths take the consoles over without it.

pub mod fb;

use crate::arch::x86_64::{cpu, power, serial::SerialPort};
use crate::boot::FramebufferInfo;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};
use fb::{Framebuffer, TextConsole};
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier};
use spin::Mutex;

/// Log colours on the framebuffer.
const LOG_FG: u32 = 0xc0c0c0;
const LOG_BG: u32 = 0x000000;
/// DCUI colours: the classic grey and yellow bands.
const TOP_BG: u32 = 0xb0b0b0;
const TOP_FG: u32 = 0x000000;
const BOTTOM_BG: u32 = 0xf0c800;
const BOTTOM_FG: u32 = 0x000000;
/// Fatal report colours (a purple screen, as ESXi administrators know it).
const FATAL_BG: u32 = 0x5a1e78;
const FATAL_FG: u32 = 0xffffff;

/// Serial screen size assumed for the idle screen (the VT100 minimum).
const SERIAL_COLS: usize = 80;
const SERIAL_ROWS: usize = 24;

/// Bytes of console output kept in memory (View System Logs).
const LOG_BYTES: usize = 64 * 1024;

struct Consoles {
    serial: Option<SerialPort>,
    screen: Option<TextConsole>,
    /// Everything printed, as a ring (no allocation: printing must work whatever state the heap is in).
    log: [u8; LOG_BYTES],
    /// Bytes ever written to `log`.
    logged: usize,
    /// The DCUI menu owns the screens: log lines go only to the ring.
    menu: bool,
}

static CONSOLES: Mutex<Consoles> =
    Mutex::new(Consoles { serial: None, screen: None, log: [0; LOG_BYTES], logged: 0, menu: false });
static DEBUG_EXIT: AtomicBool = AtomicBool::new(false);

/// Installs the serial console.
pub fn init_serial(port: SerialPort) {
    CONSOLES.lock().serial = Some(port);
}

/// Installs the framebuffer console (after ExitBootServices: the firmware no longer draws).
pub fn init_framebuffer(info: FramebufferInfo) {
    CONSOLES.lock().screen = Some(TextConsole::new(Framebuffer::new(info), LOG_FG, LOG_BG));
}

/// Whether fatal stops also end QEMU through isa-debug-exit (`ember.debugexit`).
pub fn set_debug_exit(on: bool) {
    DEBUG_EXIT.store(on, Ordering::Relaxed);
}

struct Both<'a>(&'a mut Consoles);

impl Write for Both<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            self.0.log[self.0.logged % LOG_BYTES] = b;
            self.0.logged += 1;
        }
        if self.0.menu {
            return Ok(());
        }
        if let Some(p) = self.0.serial.as_mut() {
            let _ = p.write_str(s);
        }
        if let Some(c) = self.0.screen.as_mut() {
            c.write(s);
        }
        Ok(())
    }
}

/// Prints to every console (used by `kprint!`/`kprintln!`).
pub fn print(args: core::fmt::Arguments<'_>) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut c = CONSOLES.lock();
        let _ = Both(&mut c).write_fmt(args);
    });
}

/// Prints `text` and a line end to every console if their lock can be had within about 100 ms
/// (a CPU that stops while the host goes on must not wait for ever on a lock it may hold itself).
pub fn print_line_bounded(text: &str) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        for _ in 0..100_000 {
            if let Some(mut c) = CONSOLES.try_lock() {
                let _ = writeln!(Both(&mut c), "{text}");
                return;
            }
            crate::arch::x86_64::timer::delay_us(1);
        }
    });
}

/// A byte typed on the serial console, if any.
pub fn read_serial_byte() -> Option<u8> {
    x86_64::instructions::interrupts::without_interrupts(|| CONSOLES.lock().serial.as_mut()?.read_byte())
}

/// The log lines kept in memory, oldest first (a line cut by the ring's wrap is dropped).
pub fn log_lines() -> Vec<String> {
    let (bytes, wrapped) = x86_64::instructions::interrupts::without_interrupts(|| {
        let c = CONSOLES.lock();
        let start = c.logged.saturating_sub(LOG_BYTES);
        ((start..c.logged).map(|i| c.log[i % LOG_BYTES]).collect::<Vec<u8>>(), start > 0)
    });
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    if wrapped && !lines.is_empty() {
        lines.remove(0);
    }
    lines
}

/// Draws a DCUI menu screen on both consoles (each at its own size) and keeps the log off them
/// until the idle screen is shown again.
pub fn show_menu(draw: impl Fn(Rect, &mut Buffer)) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut c = CONSOLES.lock();
        c.menu = true;
        if let Some(p) = c.serial.as_mut() {
            let area = Rect::new(0, 0, SERIAL_COLS as u16, SERIAL_ROWS as u16);
            let mut buf = Buffer::empty(area);
            draw(area, &mut buf);
            draw_serial_buffer(p, &buf);
        }
        if let Some(s) = c.screen.as_mut() {
            let (cols, rows) = s.fb.text_size();
            let area = Rect::new(0, 0, cols.min(250) as u16, rows.min(100) as u16);
            let mut buf = Buffer::empty(area);
            draw(area, &mut buf);
            for y in 0..area.height {
                for x in 0..area.width {
                    let cell = &buf[(x, y)];
                    let ch = cell.symbol().chars().next().unwrap_or(' ');
                    s.fb.glyph(x as usize, y as usize, ch, rgb(cell.fg, BOTTOM_FG), rgb(cell.bg, BOTTOM_BG));
                }
            }
        }
    });
}

/// A ratatui colour on the framebuffer (`default` for `Reset`).
fn rgb(c: Color, default: u32) -> u32 {
    match c {
        Color::Black => 0x000000,
        Color::Gray => TOP_BG,
        Color::Yellow => BOTTOM_BG,
        Color::White => 0xffffff,
        Color::DarkGray => 0x606060,
        Color::Red => 0xc00000,
        Color::Green => 0x00a000,
        Color::Rgb(r, g, b) => (r as u32) << 16 | (g as u32) << 8 | b as u32,
        _ => default,
    }
}

/// ANSI SGR colour number (30-37/90-97 for foreground; background adds 10).
fn ansi(c: Color, background: bool) -> u8 {
    let n = match c {
        Color::Black => 30,
        Color::Red => 31,
        Color::Green => 32,
        Color::Yellow => 33,
        Color::Blue => 34,
        Color::Magenta => 35,
        Color::Cyan => 36,
        Color::Gray => 37,
        Color::DarkGray => 90,
        Color::White => 97,
        _ => 39,
    };
    if background {
        n + 10
    } else {
        n
    }
}

fn draw_serial_buffer(p: &mut SerialPort, buf: &Buffer) {
    let area = buf.area;
    let _ = write!(p, "\x1b[0m\x1b[2J");
    for y in 0..area.height {
        let _ = write!(p, "\x1b[{};1H", y + 1);
        let mut current = None;
        for x in 0..area.width {
            let cell = &buf[(x, y)];
            let bold = cell.modifier.contains(Modifier::BOLD);
            let style = (cell.fg, cell.bg, bold);
            if current != Some(style) {
                let _ = write!(
                    p,
                    "\x1b[0;{}{};{}m",
                    if bold { "1;" } else { "" },
                    ansi(cell.fg, false),
                    ansi(cell.bg, true)
                );
                current = Some(style);
            }
            let _ = p.write_str(cell.symbol());
        }
    }
    let _ = write!(p, "\x1b[0m\x1b[{SERIAL_ROWS};1H");
}

/// One line of a two-band screen (the DCUI idle screen), placed by the caller's layout.
pub struct BandedLine {
    pub row: usize,
    pub col: usize,
    /// In the top (grey) band rather than the bottom (yellow) one.
    pub top: bool,
    pub text: String,
}

/// A two-band screen for a console of `cols` x `rows` cells: the first row of the bottom band, and
/// the lines.
pub type BandedLayout<'a> = &'a dyn Fn(usize, usize) -> (usize, Vec<BandedLine>);

/// Draws the DCUI idle screen on both consoles; the log shows on them again.
pub fn show_idle_screen(layout: BandedLayout<'_>) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut c = CONSOLES.lock();
        c.menu = false;
        if let Some(p) = c.serial.as_mut() {
            draw_serial_idle(p, layout);
        }
        if let Some(s) = c.screen.as_mut() {
            draw_fb_idle(s, layout);
        }
    });
}

fn draw_serial_idle(p: &mut SerialPort, layout: BandedLayout<'_>) {
    const TOP: &str = "\x1b[0;30;47m";
    const BOTTOM: &str = "\x1b[0;30;43m";
    let (split, lines) = layout(SERIAL_COLS, SERIAL_ROWS);
    let _ = write!(p, "\x1b[0m\x1b[2J");
    for row in 0..SERIAL_ROWS {
        let colour = if row < split { TOP } else { BOTTOM };
        let _ = write!(p, "\x1b[{};1H{colour}{:width$}", row + 1, "", width = SERIAL_COLS);
    }
    for l in &lines {
        let colour = if l.top { TOP } else { BOTTOM };
        let _ = write!(p, "\x1b[{};{}H{colour}{}", l.row + 1, l.col + 1, l.text);
    }
    let _ = write!(p, "\x1b[0m\x1b[{SERIAL_ROWS};1H");
}

fn draw_fb_idle(s: &mut TextConsole, layout: BandedLayout<'_>) {
    let (cols, rows) = s.fb.text_size();
    let (cw, ch) = s.fb.cell_size();
    let (split, lines) = layout(cols, rows);
    s.fb.fill(0, 0, cols * cw, split * ch, TOP_BG);
    s.fb.fill(0, split * ch, cols * cw, (rows - split) * ch, BOTTOM_BG);
    for l in &lines {
        let (fg, bg) = if l.top { (TOP_FG, TOP_BG) } else { (BOTTOM_FG, BOTTOM_BG) };
        for (i, c) in l.text.chars().enumerate() {
            s.fb.glyph(l.col + i, l.row, c, fg, bg);
        }
    }
}

/// A fixed-size text buffer, so fatal reports need no heap (the heap may be what failed).
pub struct FixedText {
    buf: [u8; 4096],
    len: usize,
}

impl FixedText {
    pub const fn new() -> Self {
        FixedText { buf: [0; 4096], len: 0 }
    }
    pub fn as_str(&self) -> &str {
        // Truncation may split a UTF-8 sequence; keep the valid prefix.
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl Default for FixedText {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for FixedText {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Shows a fatal report on every console, taking them over even if another CPU (or the interrupted
/// code) holds the console lock.
pub fn emergency_report(text: &str, footer: &str) {
    x86_64::instructions::interrupts::disable();
    if CONSOLES.is_locked() {
        // SAFETY: the machine is stopping; this CPU runs with interrupts off and is the only one that
        // will ever print again. A writer interrupted mid-line at worst leaves a torn line.
        unsafe { CONSOLES.force_unlock() };
    }
    let mut c = CONSOLES.lock();
    if let Some(p) = c.serial.as_mut() {
        let _ = write!(p, "\x1b[0m\n{text}{footer}\n");
    }
    if let Some(s) = c.screen.as_mut() {
        s.fg = FATAL_FG;
        s.bg = FATAL_BG;
        s.clear();
        s.write(text);
        s.write(footer);
    }
}

/// Why the appliance stopped (the isa-debug-exit code; QEMU exits with `code * 2 + 1`).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum ExitStatus {
    Exception = 0x10,
    Panic = 0x11,
}

/// Stops this CPU for good, ending QEMU first when `ember.debugexit` is set.
pub fn stop(status: ExitStatus) -> ! {
    if DEBUG_EXIT.load(Ordering::Relaxed) {
        power::debug_exit(status as u32);
    }
    cpu::halt_forever()
}

/// Asked first when a CPU panics, with the CPU's APIC ID and the message: returns true when the panic
/// only ends the VM whose vCPU this CPU was running (the hook has logged it), so the CPU just stops
/// and the host carries on ([`set_vcpu_panic_hook`]).
static VCPU_PANIC: spin::Once<fn(u32, &str) -> bool> = spin::Once::new();

/// Installs the hypervisor's panic hook (once; later calls are ignored).
pub fn set_vcpu_panic_hook(hook: fn(u32, &str) -> bool) {
    VCPU_PANIC.call_once(|| hook);
}

/// CPUs (by APIC ID, modulo 256) inside the panic handler: a panic while handling one is fatal.
static IN_PANIC: [AtomicBool; 256] = [const { AtomicBool::new(false) }; 256];

#[cfg(target_os = "uefi")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let id = crate::arch::x86_64::apic::current_id();
    let mut t = FixedText::new();
    let first = !IN_PANIC[(id & 0xff) as usize].swap(true, Ordering::AcqRel);
    // A panic in the hypervisor's code for one VM, on a CPU running its vCPU: that VM is marked
    // failed and this CPU stops; the management CPU, the DCUI, the API and the other VMs carry on.
    if first {
        let _ = write!(t, "{info}");
        if VCPU_PANIC.get().is_some_and(|hook| hook(id, t.as_str())) {
            cpu::halt_forever();
        }
        t = FixedText::new();
    }
    let _ = writeln!(t, "*** PANIC on CPU {id}: {info}");
    emergency_report(t.as_str(), "System halted.");
    stop(ExitStatus::Panic)
}
