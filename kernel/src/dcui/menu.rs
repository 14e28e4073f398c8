//! The DCUI menu behind F2 and F12 (REFERENCE.md 1): a state machine fed with [`Key`]s, producing
//! [`Action`]s for the kernel to carry out, and drawn with `ratatui` into a cell buffer that the
//! console backends (serial ANSI, framebuffer) put on screen. Host-tested; no hardware here.
//!
//! Built in this version: root login (slow checks done by the caller; three failures in a row lock
//! the prompt for [`LOCKOUT_MS`]), System Customization with Configure Password (confirmation and the
//! password rules), Restart Management Network (F11 confirms), Configure Keyboard, Troubleshooting
//! Options (local shell and SSH flags, stored; the shell and SSH themselves do not exist yet), View
//! System Logs and View Support Information (scrollable), Reset System Configuration (F11 confirms),
//! and the F12 Shut Down / Restart screen. Configure Management Network, Test Management Network and
//! Network Restore Options are not built yet and are not listed. Esc always goes back; after
//! [`IDLE_TIMEOUT_MS`] without a key the menu logs out and returns to the idle screen.

use crate::dcui::keys::Key;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use ember_storage::kickstart::KEYBOARD_LAYOUTS;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget, Wrap};

/// Without a key for this long the menu logs out (ESXi's DCUI idle time-out is configurable; this
/// build uses a fixed 10 minutes).
pub const IDLE_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// Failed logins in a row before the prompt is locked.
pub const MAX_FAILURES: u32 = 3;
/// How long the prompt stays locked.
pub const LOCKOUT_MS: u64 = 30_000;
/// Longest password typed.
const MAX_INPUT: usize = 128;

/// What the menu asks the kernel to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Check this root password; answer with [`Menu::login_result`].
    CheckLogin(String),
    /// Store this new root password (rules already checked).
    SetPassword(String),
    RestartManagementNetwork,
    SetKeyboard(String),
    SetShell(bool),
    SetSsh(bool),
    /// Factory defaults, then reboot into a first boot.
    ResetConfiguration,
    Shutdown,
    Restart,
    /// Something worth the log (failed logins, changes).
    Log(String),
}

/// What the menu shows besides its own state.
pub struct View<'a> {
    pub hostname: &'a str,
    pub keyboard: &'a str,
    pub shell: bool,
    pub ssh: bool,
    /// Label and value pairs for View Support Information.
    pub support: &'a [(String, String)],
    /// The in-memory log, oldest first.
    pub logs: &'a [String],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Customize,
    Power,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confirm {
    RestartNetwork,
    Reset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Screen {
    Idle,
    Login { after: After, password: String, checking: bool },
    Main,
    Password { fields: [String; 2], field: usize },
    Keyboard { selected: usize },
    Troubleshooting { selected: usize },
    Confirm(Confirm),
    Logs { scroll: usize },
    Support { scroll: usize },
    Power,
}

/// The System Customization items of this build, in order.
const ITEMS: &[&str] = &[
    "Configure Password",
    "Restart Management Network",
    "Configure Keyboard",
    "Troubleshooting Options",
    "View System Logs",
    "View Support Information",
    "Reset System Configuration",
];

pub struct Menu {
    screen: Screen,
    selected: usize,
    /// A one-line message on the current screen (errors, results).
    message: Option<String>,
    failures: u32,
    locked_until: u64,
    last_key: u64,
}

impl Default for Menu {
    fn default() -> Self {
        Self::new()
    }
}

impl Menu {
    pub fn new() -> Menu {
        Menu { screen: Screen::Idle, selected: 0, message: None, failures: 0, locked_until: 0, last_key: 0 }
    }

    /// Whether the idle screen is showing (the menu draws nothing then).
    pub fn is_idle(&self) -> bool {
        self.screen == Screen::Idle
    }

    /// Whether a login check is outstanding.
    pub fn awaiting_login(&self) -> bool {
        matches!(self.screen, Screen::Login { checking: true, .. })
    }

    fn go(&mut self, s: Screen) {
        self.screen = s;
        self.message = None;
    }

    /// Shows a one-line message on the current screen.
    pub fn notify(&mut self, message: String) {
        self.message = Some(message);
    }

    /// Logs out after the idle time-out; returns true when the screen changed.
    pub fn tick(&mut self, now: u64) -> bool {
        if !self.is_idle() && !self.awaiting_login() && now.saturating_sub(self.last_key) >= IDLE_TIMEOUT_MS {
            self.go(Screen::Idle);
            return true;
        }
        false
    }

    /// The result of [`Action::CheckLogin`].
    pub fn login_result(&mut self, ok: bool, now: u64) -> Option<Action> {
        let Screen::Login { after, .. } = self.screen else { return None };
        self.last_key = now;
        if ok {
            self.failures = 0;
            self.selected = 0;
            self.go(if after == After::Power { Screen::Power } else { Screen::Main });
            return Some(Action::Log(String::from("DCUI: root logged in")));
        }
        self.failures += 1;
        self.screen = Screen::Login { after, password: String::new(), checking: false };
        let mut log = format!("DCUI: failed root login ({} in a row)", self.failures);
        if self.failures >= MAX_FAILURES {
            self.locked_until = now + LOCKOUT_MS;
            self.message = Some(format!("Login incorrect. Locked for {} seconds.", LOCKOUT_MS / 1000));
            log.push_str("; prompt locked for 30 s");
        } else {
            self.message = Some(String::from("Login incorrect."));
        }
        Some(Action::Log(log))
    }

    /// Handles one key at time `now`; returns what the kernel must do, if anything.
    pub fn key(&mut self, key: Key, view: &View<'_>, now: u64) -> Option<Action> {
        self.last_key = now;
        if key == Key::Redraw {
            return None;
        }
        let scroll_len = match self.screen {
            Screen::Logs { .. } => view.logs.len(),
            Screen::Support { .. } => view.support.len(),
            _ => 0,
        };
        match &mut self.screen {
            Screen::Idle => match key {
                Key::F(2) => self.go(Screen::Login {
                    after: After::Customize,
                    password: String::new(),
                    checking: false,
                }),
                Key::F(12) => {
                    self.go(Screen::Login { after: After::Power, password: String::new(), checking: false })
                }
                _ => {}
            },
            Screen::Login { checking: true, .. } => {}
            Screen::Login { password, checking, .. } => match key {
                Key::Esc => self.go(Screen::Idle),
                _ if now < self.locked_until => {
                    self.message = Some(format!(
                        "Login locked after {MAX_FAILURES} failures; try again in {} s.",
                        (self.locked_until - now).div_ceil(1000)
                    ));
                }
                Key::Enter => {
                    *checking = true;
                    let pw = core::mem::take(password);
                    self.message = Some(String::from("Checking..."));
                    return Some(Action::CheckLogin(pw));
                }
                _ => edit(password, key),
            },
            Screen::Main => match key {
                Key::Esc => self.go(Screen::Idle),
                Key::Up => self.selected = self.selected.saturating_sub(1),
                Key::Down => self.selected = (self.selected + 1).min(ITEMS.len() - 1),
                Key::Enter => {
                    let next = match ITEMS[self.selected] {
                        "Configure Password" => Screen::Password { fields: Default::default(), field: 0 },
                        "Restart Management Network" => Screen::Confirm(Confirm::RestartNetwork),
                        "Configure Keyboard" => Screen::Keyboard {
                            selected: KEYBOARD_LAYOUTS.iter().position(|k| *k == view.keyboard).unwrap_or(0),
                        },
                        "Troubleshooting Options" => Screen::Troubleshooting { selected: 0 },
                        "View System Logs" => Screen::Logs { scroll: view.logs.len().saturating_sub(1) },
                        "View Support Information" => Screen::Support { scroll: 0 },
                        _ => Screen::Confirm(Confirm::Reset),
                    };
                    self.go(next);
                }
                _ => {}
            },
            Screen::Password { fields, field } => match key {
                Key::Esc => self.go(Screen::Main),
                Key::Tab | Key::Down | Key::Up => *field = 1 - *field,
                Key::Enter if *field == 0 => *field = 1,
                Key::Enter => {
                    let (new, confirm) = (fields[0].clone(), fields[1].clone());
                    if new != confirm {
                        *fields = Default::default();
                        *field = 0;
                        self.message = Some(String::from("The passwords do not match."));
                    } else if let Err(e) = ember_net::auth::check_password_rules(&new) {
                        *fields = Default::default();
                        *field = 0;
                        self.message = Some(format!("{e}"));
                    } else {
                        self.go(Screen::Main);
                        self.message = Some(String::from("Password changed."));
                        return Some(Action::SetPassword(new));
                    }
                }
                _ => edit(&mut fields[*field], key),
            },
            Screen::Keyboard { selected } => match key {
                Key::Esc => self.go(Screen::Main),
                Key::Up => *selected = selected.saturating_sub(1),
                Key::Down => *selected = (*selected + 1).min(KEYBOARD_LAYOUTS.len() - 1),
                Key::Enter | Key::Space => {
                    let layout = KEYBOARD_LAYOUTS[*selected].to_string();
                    self.go(Screen::Main);
                    self.message = Some(format!("Keyboard layout set to {layout}."));
                    return Some(Action::SetKeyboard(layout));
                }
                _ => {}
            },
            Screen::Troubleshooting { selected } => match key {
                Key::Esc => self.go(Screen::Main),
                Key::Up | Key::Down => *selected = 1 - *selected,
                Key::Enter | Key::Space => {
                    return Some(if *selected == 0 {
                        Action::SetShell(!view.shell)
                    } else {
                        Action::SetSsh(!view.ssh)
                    });
                }
                _ => {}
            },
            Screen::Confirm(what) => match key {
                Key::Esc => self.go(Screen::Main),
                Key::F(11) => {
                    let action = match what {
                        Confirm::RestartNetwork => Action::RestartManagementNetwork,
                        Confirm::Reset => Action::ResetConfiguration,
                    };
                    self.go(Screen::Main);
                    if action == Action::RestartManagementNetwork {
                        self.message = Some(String::from("Management network restarted."));
                    }
                    return Some(action);
                }
                _ => {}
            },
            Screen::Logs { scroll } | Screen::Support { scroll } => match key {
                Key::Esc => self.go(Screen::Main),
                Key::Up => *scroll = scroll.saturating_sub(1),
                Key::Down => *scroll = (*scroll + 1).min(scroll_len.saturating_sub(1)),
                Key::PageUp => *scroll = scroll.saturating_sub(10),
                Key::PageDown => *scroll = (*scroll + 10).min(scroll_len.saturating_sub(1)),
                _ => {}
            },
            Screen::Power => match key {
                Key::Esc => self.go(Screen::Idle),
                Key::F(2) => return Some(Action::Shutdown),
                Key::F(11) => return Some(Action::Restart),
                _ => {}
            },
        }
        None
    }

    /// Draws the current screen (nothing for the idle screen, which the consoles draw themselves).
    pub fn render(&self, view: &View<'_>, area: Rect, buf: &mut Buffer) {
        if self.is_idle() {
            return;
        }
        let grey = Style::default().fg(Color::Black).bg(Color::Gray);
        let yellow = Style::default().fg(Color::Black).bg(Color::Yellow);
        let highlight = Style::default().fg(Color::White).bg(Color::Black).add_modifier(Modifier::BOLD);
        Clear.render(area, buf);
        buf.set_style(area, yellow);
        let (title, keys) = self.title_and_keys();
        let outer = Block::default().borders(Borders::ALL).title(Span::styled(title, grey)).style(yellow);
        let inner = outer.inner(area);
        outer.render(area, buf);
        let mut lines: Vec<Line<'_>> = Vec::new();
        match &self.screen {
            Screen::Idle => {}
            Screen::Login { password, .. } => {
                lines.push(Line::from(format!("Authentication Required on {}", view.hostname)));
                lines.push(Line::from(""));
                lines.push(Line::from("Login Name:  [ root ]"));
                lines
                    .push(Line::from(format!("Password:    [ {:<20} ]", "*".repeat(password.len().min(20)))));
            }
            Screen::Main => {
                for (i, item) in ITEMS.iter().enumerate() {
                    let style = if i == self.selected { highlight } else { yellow };
                    lines.push(Line::from(Span::styled(format!(" {item:<30} "), style)));
                }
            }
            Screen::Password { fields, field } => {
                lines.push(Line::from("Enter a new root password (7 to 128 printable characters)."));
                lines.push(Line::from(""));
                for (i, label) in ["New Password:     ", "Confirm Password: "].iter().enumerate() {
                    let stars = "*".repeat(fields[i].len().min(20));
                    let style = if i == *field { highlight } else { yellow };
                    lines.push(Line::from(vec![
                        Span::raw(*label),
                        Span::styled(format!("[ {stars:<20} ]"), style),
                    ]));
                }
            }
            Screen::Keyboard { selected } => {
                let first = selected.saturating_sub(inner.height.saturating_sub(4) as usize / 2);
                for (i, k) in KEYBOARD_LAYOUTS
                    .iter()
                    .enumerate()
                    .skip(first)
                    .take(inner.height.saturating_sub(3) as usize)
                {
                    let mark = if *k == view.keyboard { "(o)" } else { "( )" };
                    let style = if i == *selected { highlight } else { yellow };
                    lines.push(Line::from(Span::styled(format!(" {mark} {k:<20} "), style)));
                }
            }
            Screen::Troubleshooting { selected } => {
                let state = |on: bool| if on { "Enabled" } else { "Disabled" };
                for (i, (label, on)) in [("Local Shell", view.shell), ("SSH", view.ssh)].iter().enumerate() {
                    let style = if i == *selected { highlight } else { yellow };
                    lines.push(Line::from(Span::styled(format!(" {label:<14} {:<10} ", state(*on)), style)));
                }
                lines.push(Line::from(""));
                lines
                    .push(Line::from("The setting is stored; this version has no shell or SSH service yet."));
            }
            Screen::Confirm(what) => {
                let text = match what {
                    Confirm::RestartNetwork => "Restart the management network? Connections to the host are dropped.",
                    Confirm::Reset => "Reset the system configuration? All settings, including the root password, return to the factory defaults and the host reboots into a first boot.",
                };
                lines.push(Line::from(text));
            }
            Screen::Logs { scroll } => {
                let rows = inner.height.saturating_sub(2) as usize;
                let end = (*scroll + 1).min(view.logs.len());
                let start = end.saturating_sub(rows);
                for l in &view.logs[start..end] {
                    lines.push(Line::from(l.as_str()));
                }
            }
            Screen::Support { scroll } => {
                for (k, v) in view.support.iter().skip(*scroll) {
                    lines.push(Line::from(format!("{k:<20} {v}")));
                }
            }
            Screen::Power => {
                lines.push(Line::from(format!("Shut down or restart {}.", view.hostname)));
            }
        }
        lines.push(Line::from(""));
        if let Some(m) = &self.message {
            lines.push(Line::from(Span::styled(m.as_str(), highlight)));
        }
        let body = Rect { height: inner.height.saturating_sub(1), ..inner };
        Paragraph::new(lines).wrap(Wrap { trim: false }).style(yellow).render(body, buf);
        let bar = Rect { y: inner.y + inner.height.saturating_sub(1), height: inner.height.min(1), ..inner };
        Paragraph::new(keys).style(grey).render(bar, buf);
    }

    fn title_and_keys(&self) -> (&'static str, &'static str) {
        match self.screen {
            Screen::Idle => ("", ""),
            Screen::Login { .. } => ("Authentication Required", "<Enter> OK  <Esc> Cancel"),
            Screen::Main => ("System Customization", "<Up/Down> Select  <Enter> Open  <Esc> Log Out"),
            Screen::Password { .. } => ("Configure Password", "<Tab> Next Field  <Enter> OK  <Esc> Cancel"),
            Screen::Keyboard { .. } => ("Configure Keyboard", "<Up/Down> Select  <Enter> OK  <Esc> Cancel"),
            Screen::Troubleshooting { .. } => {
                ("Troubleshooting Options", "<Up/Down> Select  <Enter> Toggle  <Esc> Back")
            }
            Screen::Confirm(Confirm::RestartNetwork) => {
                ("Restart Management Network", "<F11> Restart  <Esc> Cancel")
            }
            Screen::Confirm(Confirm::Reset) => ("Reset System Configuration", "<F11> Reset  <Esc> Cancel"),
            Screen::Logs { .. } => ("View System Logs", "<Up/Down/PgUp/PgDn> Scroll  <Esc> Back"),
            Screen::Support { .. } => ("View Support Information", "<Up/Down> Scroll  <Esc> Back"),
            Screen::Power => ("Shut Down/Restart", "<F2> Shut Down  <F11> Restart  <Esc> Cancel"),
        }
    }
}

/// Typing into a password field: printable characters are added, Backspace removes.
fn edit(field: &mut String, key: Key) {
    match key {
        Key::Char(c) if field.len() < MAX_INPUT => field.push(c),
        Key::Space if field.len() < MAX_INPUT => field.push(' '),
        Key::Backspace => {
            field.pop();
        }
        _ => {}
    }
}

/// The buffer as plain text rows (for tests and the framebuffer's text check).
pub fn buffer_text(buf: &Buffer) -> Vec<String> {
    let area = buf.area;
    (area.y..area.y + area.height)
        .map(|y| (area.x..area.x + area.width).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> (Vec<(String, String)>, Vec<String>) {
        (
            alloc::vec![("Serial Number".into(), "S123".into())],
            (0..50).map(|i| format!("log line {i}")).collect(),
        )
    }

    fn screen(m: &Menu, v: &View<'_>) -> String {
        let area = Rect::new(0, 0, 80, 24);
        let mut buf = Buffer::empty(area);
        m.render(v, area, &mut buf);
        buffer_text(&buf).join("\n")
    }

    fn typed(m: &mut Menu, v: &View<'_>, s: &str) {
        for c in s.chars() {
            assert_eq!(m.key(if c == ' ' { Key::Space } else { Key::Char(c) }, v, 1), None);
        }
    }

    fn logged_in(v: &View<'_>) -> Menu {
        let mut m = Menu::new();
        m.key(Key::F(2), v, 1);
        typed(&mut m, v, "pw-ok");
        assert_eq!(m.key(Key::Enter, v, 2), Some(Action::CheckLogin("pw-ok".into())));
        assert!(m.awaiting_login());
        m.login_result(true, 3);
        m
    }

    #[test]
    fn login_then_customization_and_logout() {
        let (support, logs) = view();
        let v = View {
            hostname: "esx1",
            keyboard: "US Default",
            shell: false,
            ssh: false,
            support: &support,
            logs: &logs,
        };
        let mut m = Menu::new();
        assert!(m.is_idle());
        assert_eq!(m.key(Key::Char('x'), &v, 0), None);
        m.key(Key::F(2), &v, 1);
        assert!(screen(&m, &v).contains("Authentication Required on esx1"));
        typed(&mut m, &v, "bad");
        assert!(screen(&m, &v).contains("[ ***"));
        assert_eq!(m.key(Key::Enter, &v, 2), Some(Action::CheckLogin("bad".into())));
        assert!(
            matches!(m.login_result(false, 3), Some(Action::Log(l)) if l.contains("failed root login (1 in a row)"))
        );
        assert!(screen(&m, &v).contains("Login incorrect."));
        let m = logged_in(&v);
        let s = screen(&m, &v);
        assert!(
            s.contains("System Customization")
                && s.contains("Configure Password")
                && s.contains("Reset System Configuration"),
            "{s}"
        );
        let mut m = m;
        assert_eq!(m.key(Key::Esc, &v, 10), None);
        assert!(m.is_idle());
        // The idle time-out logs out.
        let mut m = logged_in(&v);
        assert!(!m.tick(3 + IDLE_TIMEOUT_MS - 1));
        assert!(m.tick(3 + IDLE_TIMEOUT_MS));
        assert!(m.is_idle());
    }

    #[test]
    fn three_failures_lock_the_prompt() {
        let (support, logs) = view();
        let v = View {
            hostname: "h",
            keyboard: "US Default",
            shell: false,
            ssh: false,
            support: &support,
            logs: &logs,
        };
        let mut m = Menu::new();
        m.key(Key::F(12), &v, 0);
        for i in 0..3 {
            assert!(matches!(m.key(Key::Enter, &v, i), Some(Action::CheckLogin(_))));
            m.login_result(false, 100);
        }
        assert!(screen(&m, &v).contains("Locked for 30 seconds"));
        assert_eq!(m.key(Key::Enter, &v, 5_000), None, "locked");
        assert!(screen(&m, &v).contains("try again in 26 s"));
        assert!(matches!(m.key(Key::Enter, &v, 100 + LOCKOUT_MS), Some(Action::CheckLogin(_))));
        m.login_result(true, 100 + LOCKOUT_MS);
        assert!(screen(&m, &v).contains("<F2> Shut Down  <F11> Restart  <Esc> Cancel"));
        assert_eq!(m.key(Key::F(2), &v, 0), Some(Action::Shutdown));
        assert_eq!(m.key(Key::F(11), &v, 0), Some(Action::Restart));
    }

    #[test]
    fn password_needs_confirmation_and_the_rules() {
        let (support, logs) = view();
        let v = View {
            hostname: "h",
            keyboard: "US Default",
            shell: false,
            ssh: false,
            support: &support,
            logs: &logs,
        };
        let mut m = logged_in(&v);
        m.key(Key::Enter, &v, 5); // Configure Password
        typed(&mut m, &v, "new-pass-1");
        m.key(Key::Tab, &v, 5);
        typed(&mut m, &v, "new-pass-2");
        assert_eq!(m.key(Key::Enter, &v, 5), None);
        assert!(screen(&m, &v).contains("The passwords do not match."));
        typed(&mut m, &v, "short");
        m.key(Key::Enter, &v, 5);
        typed(&mut m, &v, "short");
        assert_eq!(m.key(Key::Enter, &v, 5), None);
        assert!(screen(&m, &v).contains("at least 7 characters"));
        typed(&mut m, &v, "a good one");
        m.key(Key::Enter, &v, 5);
        typed(&mut m, &v, "a good one");
        assert_eq!(m.key(Key::Enter, &v, 5), Some(Action::SetPassword("a good one".into())));
        assert!(screen(&m, &v).contains("Password changed."));
    }

    #[test]
    fn every_item_opens_and_esc_goes_back() {
        let (support, logs) = view();
        let v = View {
            hostname: "h",
            keyboard: "German",
            shell: false,
            ssh: true,
            support: &support,
            logs: &logs,
        };
        let mut m = logged_in(&v);
        let titles = [
            "Configure Password",
            "Restart Management Network",
            "Configure Keyboard",
            "Troubleshooting Options",
            "View System Logs",
            "View Support Information",
            "Reset System Configuration",
        ];
        for (i, t) in titles.iter().enumerate() {
            m.selected = i;
            m.key(Key::Enter, &v, 5);
            assert!(screen(&m, &v).lines().next().unwrap().contains(t), "{t}: {}", screen(&m, &v));
            m.key(Key::Esc, &v, 5);
            assert!(screen(&m, &v).contains("System Customization"), "Esc from {t}");
        }
        m.selected = 1;
        m.key(Key::Enter, &v, 5);
        assert_eq!(m.key(Key::Enter, &v, 5), None, "only F11 confirms");
        assert_eq!(m.key(Key::F(11), &v, 5), Some(Action::RestartManagementNetwork));
        m.selected = 6;
        m.key(Key::Enter, &v, 5);
        assert_eq!(m.key(Key::F(11), &v, 5), Some(Action::ResetConfiguration));
        m.selected = 2;
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains("(o) German"));
        m.key(Key::Down, &v, 5);
        assert_eq!(m.key(Key::Enter, &v, 5), Some(Action::SetKeyboard("Greek".into())));
        m.selected = 3;
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains("SSH            Enabled"));
        assert_eq!(m.key(Key::Enter, &v, 5), Some(Action::SetShell(true)));
        m.key(Key::Down, &v, 5);
        assert_eq!(m.key(Key::Space, &v, 5), Some(Action::SetSsh(false)));
        m.key(Key::Esc, &v, 5);
        m.selected = 4;
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains("log line 49"));
        for _ in 0..3 {
            m.key(Key::PageUp, &v, 5);
        }
        let s = screen(&m, &v);
        assert!(s.contains("log line 19") && !s.contains("log line 49"), "{s}");
    }

    #[test]
    fn tiny_screens_and_noise_do_not_panic() {
        let (support, logs) = view();
        let v = View {
            hostname: "h",
            keyboard: "US Default",
            shell: false,
            ssh: false,
            support: &support,
            logs: &logs,
        };
        let mut m = logged_in(&v);
        let keys = [
            Key::Up,
            Key::Down,
            Key::Enter,
            Key::Esc,
            Key::F(11),
            Key::PageDown,
            Key::Char('a'),
            Key::Tab,
            Key::F(2),
            Key::Backspace,
            Key::Space,
        ];
        let mut x = 7u32;
        for t in 0..5000u64 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let k = keys[(x >> 16) as usize % keys.len()];
            if let Some(Action::CheckLogin(_)) = m.key(k, &v, t) {
                m.login_result(x & 1 == 0, t);
            }
            for (w, h) in [(80, 24), (20, 5), (1, 1), (0, 0)] {
                let area = Rect::new(0, 0, w, h);
                let mut buf = Buffer::empty(area);
                m.render(&v, area, &mut buf);
            }
        }
    }
}
