//! The DCUI menu behind F2 and F12 (REFERENCE.md 1): a state machine fed with [`Key`]s, producing
//! [`Action`]s for the kernel to carry out, and drawn with `ratatui` into a cell buffer that the
//! console backends (serial ANSI, framebuffer) put on screen. Host-tested; no hardware here.
//!
//! Built in this version: root login (slow checks done by the caller; three failures in a row lock
//! the prompt for [`LOCKOUT_MS`]), System Customization with Configure Password (confirmation and the
//! password rules), Configure Management Network (uplink NIC, VLAN, IPv4 DHCP or static, IPv6, DNS
//! servers and host name, custom DNS suffixes; each form validated as a whole, the field at fault
//! named; Esc asks "Apply changes and restart management network? (Y/N)"), Restart Management Network (F11
//! confirms), Configure Keyboard, Troubleshooting Options (local shell and SSH flags, their
//! availability and idle time-outs, the DCUI idle time-out - all stored; the shell and SSH
//! themselves do not exist yet - and Restart Management Agents, F11 confirms), Network Restore
//! Options (F11: the default management network, host name kept), Test Management Network (the
//! gateway and DNS servers pinged, the host name resolved, each OK or FAILED), View System Logs (the
//! host, kernel, configuration and management agent logs, see [`crate::logs`]) and View
//! Support Information (scrollable), Reset System Configuration (F11 confirms), and the F12
//! Shut Down / Restart screen. IPv6 Configuration offers disabled, automatic (link-local and router
//! advertisements) and static, and lists the addresses in use. Esc always
//! goes back; after the configured DCUI idle time-out without a key the menu logs out and returns to
//! the idle screen.
//!
//! Each screen is a module of `crate::screens`; [`Menu`] shows one at a time, keeps the screens it
//! came from for Esc, the message line and the login lock, and draws the frame around the screen.

use crate::screens::login::{After, Login};
use crate::screens::{draw, Context, Screen, Step, To};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::any::Any;
use ember_hw::keys::Key;
use ember_net::mgmt::Check;
use ember_storage::netconfig::ManagementConfig;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;

/// Failed logins in a row before the prompt is locked.
pub const MAX_FAILURES: u32 = 3;
/// How long the prompt stays locked.
pub const LOCKOUT_MS: u64 = 30_000;

/// What the menu asks the kernel to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Check this root password; answer with [`Menu::login_result`].
    CheckLogin(String),
    /// Store this new root password (rules already checked).
    SetPassword(String),
    RestartManagementNetwork,
    /// Start Test Management Network (results come back through [`View::tests`]).
    TestNetwork,
    /// Store these management network settings and DNS search suffixes, then restart the network.
    ApplyNetwork {
        network: ManagementConfig,
        dns_search: Vec<String>,
    },
    SetKeyboard(String),
    SetShell(bool),
    SetSsh(bool),
    /// Store the shell/SSH availability and idle time-outs (minutes, 0 = never).
    SetShellTimeouts {
        availability: u32,
        idle: u32,
    },
    /// Store the DCUI idle time-out (minutes, 0 = never).
    SetDcuiTimeout(u32),
    /// Restart the management agents (the API service): its connections are dropped.
    RestartAgents,
    /// Factory defaults, then reboot into a first boot.
    ResetConfiguration,
    Shutdown,
    Restart,
    /// Something worth the log (failed logins, changes).
    Log(String),
}

impl Action {
    /// Whether carrying the action out changes the stored configuration (it then waits while
    /// another change is being saved, and builds on it).
    pub fn changes_config(&self) -> bool {
        matches!(
            self,
            Action::SetPassword(_)
                | Action::ApplyNetwork { .. }
                | Action::SetKeyboard(_)
                | Action::SetShell(_)
                | Action::SetSsh(_)
                | Action::SetShellTimeouts { .. }
                | Action::SetDcuiTimeout(_)
        )
    }
}

/// What the menu shows besides its own state.
pub struct View<'a> {
    pub hostname: &'a str,
    /// The stored management network settings and DNS search suffixes.
    pub network: &'a ManagementConfig,
    pub dns_search: &'a [String],
    /// The host's NICs: name, MAC address, link up.
    pub nics: &'a [(String, String, bool)],
    /// The checks of the last Test Management Network.
    pub tests: &'a [Check],
    /// The management interface's IPv6 addresses now (`address/prefix`).
    pub ipv6_addresses: &'a [String],
    pub keyboard: &'a str,
    pub shell: bool,
    pub ssh: bool,
    /// Shell/SSH availability and idle time-outs, DCUI idle time-out (minutes, 0 = never).
    pub shell_timeout: u32,
    pub shell_idle_timeout: u32,
    pub dcui_timeout: u32,
    /// Label and value pairs for View Support Information.
    pub support: &'a [(String, String)],
    /// The in-memory log, oldest first.
    pub logs: &'a [String],
}

pub struct Menu {
    /// The screen shown; `None`: the idle screen (which the consoles draw themselves).
    screen: Option<Box<dyn Screen>>,
    /// The screens it was opened from, the one Esc goes back to last.
    stack: Vec<Box<dyn Screen>>,
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
        Menu { screen: None, stack: Vec::new(), message: None, failures: 0, locked_until: 0, last_key: 0 }
    }

    /// Whether the idle screen is showing (the menu draws nothing then).
    pub fn is_idle(&self) -> bool {
        self.screen.is_none()
    }

    /// Whether a login check is outstanding.
    pub fn awaiting_login(&self) -> bool {
        let screen: Option<&dyn Any> = self.screen.as_deref().map(|s| s as &dyn Any);
        screen.and_then(|s| s.downcast_ref::<Login>()).is_some_and(Login::checking)
    }

    /// The login prompt, if it is showing.
    fn login(&mut self) -> Option<&mut Login> {
        let screen: &mut dyn Any = self.screen.as_deref_mut()?;
        screen.downcast_mut::<Login>()
    }

    /// Shows `screen` alone (nothing to go back to), without a message.
    fn show(&mut self, screen: Option<Box<dyn Screen>>) {
        self.screen = screen;
        self.stack.clear();
        self.message = None;
    }

    /// Shows a one-line message on the current screen.
    pub fn notify(&mut self, message: String) {
        self.message = Some(message);
    }

    /// Logs out once no key came for `idle_minutes` (the configured DCUI time-out; 0: never);
    /// returns true when the screen changed.
    pub fn tick(&mut self, now: u64, idle_minutes: u32) -> bool {
        let idle_ms = idle_minutes as u64 * 60_000;
        let timed_out = idle_ms > 0 && now.saturating_sub(self.last_key) >= idle_ms;
        if !self.is_idle() && !self.awaiting_login() && timed_out {
            self.show(None);
            return true;
        }
        false
    }

    /// The result of [`Action::CheckLogin`].
    pub fn login_result(&mut self, ok: bool, now: u64) -> Option<Action> {
        let login = self.login()?;
        let next = if ok { Some(login.signed_in()) } else { None };
        login.retry();
        self.last_key = now;
        if next.is_some() {
            self.failures = 0;
            self.show(next);
            return Some(Action::Log(String::from("DCUI: root logged in")));
        }
        self.failures += 1;
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
        let Some(screen) = self.screen.as_mut() else {
            // The idle screen: F2 (System Customization) and F12 (Shut Down/Restart) ask for root.
            let after = match key {
                Key::F(2) => After::Customize,
                Key::F(12) => After::Power,
                _ => return None,
            };
            self.show(Some(Box::new(Login::new(after))));
            return None;
        };
        let cx = Context { view, now, locked_until: self.locked_until };
        let step = screen.key(key, &cx);
        self.follow(step)
    }

    /// Goes where a key led; returns its action.
    fn follow(&mut self, step: Step) -> Option<Action> {
        match step.to {
            To::Stay => {}
            To::Open(screen) => {
                self.stack.extend(self.screen.replace(screen));
                self.message = None;
            }
            To::Replace(screen) => {
                self.screen = Some(screen);
                self.message = None;
            }
            To::Back => {
                self.screen = self.stack.pop();
                self.message = None;
            }
            To::Idle => self.show(None),
        }
        if step.message.is_some() {
            self.message = step.message;
        }
        step.action
    }

    /// Draws the current screen (nothing for the idle screen, which the consoles draw themselves).
    pub fn render(&self, view: &View<'_>, area: Rect, buf: &mut Buffer) {
        let Some(screen) = self.screen.as_deref() else { return };
        let inner = draw::frame(area, buf, screen.title());
        let lines = screen.body(view, inner);
        draw::contents(inner, buf, lines, self.message.as_deref(), screen.keys());
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
    use crate::screens::customization::ITEMS;
    use core::net::Ipv4Addr;
    use ember_storage::netconfig::{Ipv4Mode, Ipv6Mode};

    /// What the menu is shown in the tests; `view()` lends it out.
    struct Fixture {
        support: Vec<(String, String)>,
        logs: Vec<String>,
        net: ManagementConfig,
        nics: Vec<(String, String, bool)>,
        keyboard: &'static str,
        ssh: bool,
        tests: Vec<Check>,
        ipv6: Vec<String>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                support: alloc::vec![("Serial Number".into(), "S123".into())],
                logs: ["ember: DCUI: root password changed", "ember: DHCP lease 10.0.2.15/24 from 10.0.2.2"]
                    .into_iter()
                    .map(String::from)
                    .chain((0..50).map(|i| format!("log line {i}")))
                    .collect(),
                net: ManagementConfig::default(),
                nics: alloc::vec![
                    ("vmnic0".into(), "52:54:00:00:00:10".into(), true),
                    ("vmnic1".into(), "52:54:00:00:00:11".into(), false),
                ],
                keyboard: "US Default",
                ssh: false,
                tests: alloc::vec![
                    Check { label: "Pinging default gateway (10.0.2.2).".into(), ok: Some(true) },
                    Check { label: "Resolving hostname (esx1).".into(), ok: Some(false) },
                ],
                ipv6: alloc::vec!["fe80::5054:ff:fe00:10/64".into()],
            }
        }

        fn view(&self) -> View<'_> {
            View {
                hostname: "esx1",
                keyboard: self.keyboard,
                shell: false,
                ssh: self.ssh,
                shell_timeout: 0,
                shell_idle_timeout: 15,
                dcui_timeout: 10,
                support: &self.support,
                logs: &self.logs,
                network: &self.net,
                dns_search: &[],
                nics: &self.nics,
                tests: &self.tests,
                ipv6_addresses: &self.ipv6,
            }
        }
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

    /// Selects System Customization's `item` (the menu showing it).
    fn select(m: &mut Menu, v: &View<'_>, item: usize) {
        for _ in 0..ITEMS.len() {
            m.key(Key::Up, v, 5);
        }
        for _ in 0..item {
            m.key(Key::Down, v, 5);
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
    fn menu_is_send_sync_and_unwind_safe() {
        fn check<T: Send + Sync + Unpin + core::panic::UnwindSafe + core::panic::RefUnwindSafe>() {}
        check::<Menu>();
    }

    #[test]
    fn login_then_customization_and_logout() {
        let f = Fixture::new();
        let v = f.view();
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
        assert!(!m.tick(3 + 10 * 60_000 - 1, 10));
        assert!(m.tick(3 + 10 * 60_000, 10));
        assert!(m.is_idle());
    }

    #[test]
    fn three_failures_lock_the_prompt() {
        let f = Fixture::new();
        let v = f.view();
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
        let f = Fixture::new();
        let v = f.view();
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
        let f = Fixture { keyboard: "German", ssh: true, ..Fixture::new() };
        let v = f.view();
        let mut m = logged_in(&v);
        // Each item opens the screen of its name (Test Management Network starts its checks).
        for (i, t) in ITEMS.iter().enumerate() {
            select(&mut m, &v, i);
            m.key(Key::Enter, &v, 5);
            assert!(screen(&m, &v).lines().next().unwrap().contains(t), "{t}: {}", screen(&m, &v));
            m.key(Key::Esc, &v, 5);
            assert!(screen(&m, &v).contains("System Customization"), "Esc from {t}");
        }
        select(&mut m, &v, 2);
        m.key(Key::Enter, &v, 5);
        assert_eq!(m.key(Key::Enter, &v, 5), None, "only F11 confirms");
        assert_eq!(m.key(Key::F(11), &v, 5), Some(Action::RestartManagementNetwork));
        select(&mut m, &v, 9);
        m.key(Key::Enter, &v, 5);
        assert_eq!(m.key(Key::F(11), &v, 5), Some(Action::ResetConfiguration));
        select(&mut m, &v, 4);
        m.key(Key::Enter, &v, 5);
        let restored = m.key(Key::F(11), &v, 5);
        let expected =
            ManagementConfig { hostname: v.network.hostname.clone(), ..ManagementConfig::default() };
        assert_eq!(restored, Some(Action::ApplyNetwork { network: expected, dns_search: Vec::new() }));
        select(&mut m, &v, 5);
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains("(o) German"));
        m.key(Key::Down, &v, 5);
        assert_eq!(m.key(Key::Enter, &v, 5), Some(Action::SetKeyboard("Greek".into())));
        assert!(
            m.message.as_deref().unwrap_or_default().contains("keys type as US Default"),
            "{:?}",
            m.message
        );
        select(&mut m, &v, 6);
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains(" SSH                            Enabled"), "{}", screen(&m, &v));
        assert_eq!(m.key(Key::Enter, &v, 5), Some(Action::SetShell(true)));
        m.key(Key::Down, &v, 5);
        assert_eq!(m.key(Key::Space, &v, 5), Some(Action::SetSsh(false)));
        m.key(Key::Esc, &v, 5);
        select(&mut m, &v, 7);
        m.key(Key::Enter, &v, 5);
        let s = screen(&m, &v);
        assert!(s.contains("1) Host log") && s.contains("4) Management agent log"), "{s}");
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains("log line 49"));
        for _ in 0..3 {
            m.key(Key::PageUp, &v, 5);
        }
        let s = screen(&m, &v);
        assert!(s.contains("log line 19") && !s.contains("log line 49"), "{s}");
        // Esc goes back to the choice; 3 is the configuration log, 4 the management agent's.
        m.key(Key::Esc, &v, 5);
        m.key(Key::Char('3'), &v, 5);
        let s = screen(&m, &v);
        assert!(s.contains("root password changed") && !s.contains("log line") && !s.contains("DHCP"), "{s}");
        m.key(Key::Esc, &v, 5);
        m.key(Key::Char('4'), &v, 5);
        let s = screen(&m, &v);
        assert!(s.contains("DHCP lease") && !s.contains("log line") && !s.contains("password"), "{s}");
        m.key(Key::Esc, &v, 5);
        m.key(Key::Esc, &v, 5);
        select(&mut m, &v, 3);
        assert_eq!(m.key(Key::Enter, &v, 5), Some(Action::TestNetwork));
        let s = screen(&m, &v);
        assert!(s.contains("Pinging default gateway (10.0.2.2).") && s.contains("OK."), "{s}");
        assert!(s.contains("Resolving hostname (esx1).") && s.contains("FAILED."), "{s}");
        assert_eq!(m.key(Key::Enter, &v, 5), Some(Action::TestNetwork), "Enter tests again");
    }

    #[test]
    fn troubleshooting_timeouts_and_management_agents() {
        let f = Fixture::new();
        let v = f.view();
        let mut m = logged_in(&v);
        select(&mut m, &v, 6);
        m.key(Key::Enter, &v, 5);
        let s = screen(&m, &v);
        assert!(s.contains("Modify Shell and SSH timeouts  never / 15 min"), "{s}");
        assert!(s.contains("Modify DCUI idle timeout       10 min"), "{s}");
        // Shell and SSH time-outs: the form starts with the stored values; letters are not typed;
        // out of range is refused with the field named; then stored.
        m.key(Key::Down, &v, 5);
        m.key(Key::Down, &v, 5);
        m.key(Key::Enter, &v, 5);
        let s = screen(&m, &v);
        assert!(s.contains("Modify Shell and SSH timeouts") && s.contains("[ 0 "), "{s}");
        m.key(Key::Backspace, &v, 5);
        assert_eq!(
            typed_keys(
                &mut m,
                &v,
                &[Key::Char('9'), Key::Char('x'), Key::Char('9'), Key::Char('9'), Key::Char('9')]
            ),
            None
        );
        assert_eq!(m.key(Key::Enter, &v, 5), None);
        assert!(
            screen(&m, &v).contains("Availability timeout (minutes, 0 = never): whole minutes from 0"),
            "{}",
            screen(&m, &v)
        );
        m.key(Key::Backspace, &v, 5);
        m.key(Key::Tab, &v, 5);
        m.key(Key::Backspace, &v, 5);
        m.key(Key::Backspace, &v, 5);
        m.key(Key::Char('5'), &v, 5);
        assert_eq!(m.key(Key::Enter, &v, 5), Some(Action::SetShellTimeouts { availability: 999, idle: 5 }));
        assert!(screen(&m, &v).contains("Shell and SSH timeouts set."));
        // The DCUI time-out; Esc from a form goes back to Troubleshooting Options.
        m.key(Key::Down, &v, 5);
        m.key(Key::Enter, &v, 5);
        m.key(Key::Esc, &v, 5);
        assert!(screen(&m, &v).lines().next().unwrap().contains("Troubleshooting Options"));
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains("[ 10 "));
        assert_eq!(
            typed_keys(&mut m, &v, &[Key::Backspace, Key::Backspace, Key::Char('0'), Key::Enter]),
            Some(Action::SetDcuiTimeout(0))
        );
        // Restart Management Agents needs F11; Esc cancels back to the list.
        m.key(Key::Down, &v, 5);
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains("Restart the management agents?"));
        assert_eq!(m.key(Key::Enter, &v, 5), None);
        m.key(Key::Esc, &v, 5);
        assert!(screen(&m, &v).lines().next().unwrap().contains("Troubleshooting Options"));
        m.key(Key::Enter, &v, 5);
        assert_eq!(m.key(Key::F(11), &v, 5), Some(Action::RestartAgents));
        assert!(screen(&m, &v).contains("Management agents restarted."));
        // A DCUI time-out of 0 never logs out.
        assert!(!m.tick(1 << 40, 0));
        assert!(m.tick(5 + 60_000, 1));
    }

    fn typed_keys(m: &mut Menu, v: &View<'_>, keys: &[Key]) -> Option<Action> {
        let mut last = None;
        for k in keys {
            last = m.key(*k, v, 5);
        }
        last
    }

    #[test]
    fn configure_management_network_static_vlan_dns_and_uplink() {
        let f = Fixture::new();
        let v = f.view();
        let mut m = logged_in(&v);
        select(&mut m, &v, 1);
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains("IPv4: DHCP"));
        // Esc without changes goes straight back.
        m.key(Key::Esc, &v, 5);
        assert!(screen(&m, &v).contains("System Customization"));
        m.key(Key::Enter, &v, 5);
        // IPv4: Space chooses static, then the fields; a gateway outside the subnet is refused.
        typed_keys(&mut m, &v, &[Key::Down, Key::Down, Key::Enter, Key::Space]);
        typed(&mut m, &v, "10.0.2.20");
        m.key(Key::Tab, &v, 5);
        typed(&mut m, &v, "255.255.255.0");
        m.key(Key::Tab, &v, 5);
        typed(&mut m, &v, "10.9.9.9");
        assert_eq!(m.key(Key::Enter, &v, 5), None);
        assert!(
            screen(&m, &v).contains("Default Gateway: 10.9.9.9 is not in the interface's subnet"),
            "{}",
            screen(&m, &v)
        );
        for _ in 0.."10.9.9.9".len() {
            m.key(Key::Backspace, &v, 5);
        }
        typed(&mut m, &v, "10.0.2.2");
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains("IPv4: static 10.0.2.20/24, gateway 10.0.2.2"), "{}", screen(&m, &v));
        // VLAN: a bad id is named, a good one taken.
        typed_keys(&mut m, &v, &[Key::Down, Key::Enter]);
        typed(&mut m, &v, "5000");
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains("VLAN ID: 5000 is not a VLAN id"), "{}", screen(&m, &v));
        m.key(Key::Backspace, &v, 5);
        m.key(Key::Backspace, &v, 5);
        m.key(Key::Backspace, &v, 5);
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains("VLAN: 5"));
        // IPv6: Space goes disabled -> automatic -> static; a link-local static address is refused
        // with its field named; the addresses in use are listed.
        typed_keys(&mut m, &v, &[Key::Down, Key::Down, Key::Down, Key::Enter]);
        let s = screen(&m, &v);
        assert!(s.contains("(o) Disable IPv6") && s.contains("fe80::5054:ff:fe00:10/64"), "{s}");
        typed_keys(&mut m, &v, &[Key::Space, Key::Char('x')]);
        assert!(screen(&m, &v).contains("(o) Use automatic configuration"), "{}", screen(&m, &v));
        m.key(Key::Space, &v, 5);
        typed(&mut m, &v, "fe80::20/64");
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains("Static address: fe80::20 is not a global"), "{}", screen(&m, &v));
        for _ in 0.."fe80::20/64".len() {
            m.key(Key::Backspace, &v, 5);
        }
        typed(&mut m, &v, "2001:db8::20/64");
        m.key(Key::Tab, &v, 5);
        typed(&mut m, &v, "fe80::1");
        m.key(Key::Enter, &v, 5);
        assert!(
            screen(&m, &v).contains("IPv6: static 2001:db8::20/64, gateway fe80::1"),
            "{}",
            screen(&m, &v)
        );
        // DNS and host name.
        typed_keys(&mut m, &v, &[Key::Down, Key::Down, Key::Down, Key::Down, Key::Enter]);
        typed(&mut m, &v, "10.0.2.3");
        typed_keys(&mut m, &v, &[Key::Tab, Key::Tab]);
        for _ in 0.."ember".len() {
            m.key(Key::Backspace, &v, 5);
        }
        typed(&mut m, &v, "esx-dcui");
        m.key(Key::Enter, &v, 5);
        // Suffixes; then the uplink.
        typed_keys(&mut m, &v, &[Key::Down, Key::Down, Key::Down, Key::Down, Key::Down, Key::Enter]);
        typed(&mut m, &v, "lab.example,corp.example");
        m.key(Key::Enter, &v, 5);
        typed_keys(&mut m, &v, &[Key::Enter, Key::Down, Key::Space, Key::Enter]);
        let s = screen(&m, &v);
        assert!(
            s.contains("Uplink: vmnic1")
                && s.contains("Hostname: esx-dcui")
                && s.contains("lab.example corp.example"),
            "{s}"
        );
        // Esc asks; N discards, Y applies.
        m.key(Key::Esc, &v, 5);
        assert!(screen(&m, &v).contains("Apply changes and restart management network? (Y/N)"));
        let a = m.key(Key::Char('y'), &v, 5).unwrap();
        let Action::ApplyNetwork { network, dns_search } = a else { panic!("{a:?}") };
        assert_eq!(network.uplink, "vmnic1");
        assert_eq!(network.vlan, Some(5));
        assert_eq!(network.hostname, "esx-dcui");
        assert_eq!(network.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(
            network.ipv4,
            Ipv4Mode::Static {
                address: Ipv4Addr::new(10, 0, 2, 20),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2))
            }
        );
        assert_eq!(dns_search, ["lab.example", "corp.example"]);
        assert_eq!(
            network.ipv6,
            Ipv6Mode::Static {
                address: "2001:db8::20".parse().unwrap(),
                prefix: 64,
                gateway: Some("fe80::1".parse().unwrap())
            }
        );
        m.key(Key::Enter, &v, 5);
        typed_keys(&mut m, &v, &[Key::Down, Key::Enter]);
        typed(&mut m, &v, "7");
        typed_keys(&mut m, &v, &[Key::Enter, Key::Esc]);
        assert_eq!(m.key(Key::Char('n'), &v, 5), None);
        assert!(screen(&m, &v).contains("Changes discarded."));
    }

    #[test]
    fn tiny_screens_and_noise_do_not_panic() {
        let f = Fixture::new();
        let v = f.view();
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
