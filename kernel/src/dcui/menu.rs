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
//! host, kernel, configuration and management agent logs, see [`crate::dcui::logs`]) and View
//! Support Information (scrollable), Reset System Configuration (F11 confirms), and the F12
//! Shut Down / Restart screen. IPv6 Configuration offers disabled, automatic (link-local and router
//! advertisements) and static, and lists the addresses in use. Esc always
//! goes back; after the configured DCUI idle time-out without a key the menu logs out and returns to
//! the idle screen.

use crate::dcui::keyboard::Layout;
use crate::dcui::keys::Key;
use crate::dcui::logs::LogKind;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use ember_net::mgmt::Check;
use ember_storage::hostconfig::{MAX_SEARCH_SUFFIXES, MAX_TIMEOUT_MINUTES};
use ember_storage::kickstart::KEYBOARD_LAYOUTS;
use ember_storage::netconfig::{
    netmask_to_prefix, parse_ipv4, parse_ipv6, parse_ipv6_cidr, validate_hostname, validate_vlan,
    ConfigError, Ipv4Mode, Ipv6Mode, ManagementConfig,
};
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget, Wrap};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Customize,
    Power,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confirm {
    RestartNetwork,
    RestoreNetwork,
    RestartAgents,
    Reset,
}

/// The Troubleshooting Options items.
const TROUBLESHOOTING_ITEMS: &[&str] = &[
    "Local Shell",
    "SSH",
    "Modify Shell and SSH timeouts",
    "Modify DCUI idle timeout",
    "Restart Management Agents",
];

/// Management network settings being edited (applied only when the operator says so).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Draft {
    network: ManagementConfig,
    dns_search: Vec<String>,
    changed: bool,
}

/// The management network forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Vlan,
    Ipv4,
    Ipv6,
    Dns,
    Suffixes,
}

impl Form {
    fn labels(self) -> &'static [&'static str] {
        match self {
            Form::Vlan => &["VLAN ID (1-4094, empty for none):"],
            Form::Ipv4 => &["IPv4 Address:", "Subnet Mask:", "Default Gateway:"],
            Form::Ipv6 => &["Static address (address/prefix):", "Default Gateway:"],
            Form::Dns => &["Primary DNS Server:", "Alternate DNS Server:", "Hostname:"],
            Form::Suffixes => &["Suffixes (space or comma separated):"],
        }
    }

    /// The choices a form starts with (IPv4: DHCP, static; IPv6: disabled, automatic, static); the
    /// fields are typed into only with the last one chosen.
    fn modes(self) -> u8 {
        match self {
            Form::Ipv4 => 2,
            Form::Ipv6 => 3,
            _ => 1,
        }
    }

    /// Whether the fields take input with `mode` chosen.
    fn editable(self, mode: u8) -> bool {
        mode + 1 == self.modes()
    }

    fn title(self) -> &'static str {
        match self {
            Form::Vlan => "VLAN (optional)",
            Form::Ipv4 => "IPv4 Configuration",
            Form::Ipv6 => "IPv6 Configuration",
            Form::Dns => "DNS Configuration",
            Form::Suffixes => "Custom DNS Suffixes",
        }
    }
}

const NETWORK_ITEMS: &[&str] = &[
    "Network Adapters",
    "VLAN (optional)",
    "IPv4 Configuration",
    "IPv6 Configuration",
    "DNS Configuration",
    "Custom DNS Suffixes",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Screen {
    Idle,
    /// Test Management Network's results (the checks live in the management network).
    TestNet,
    Network {
        selected: usize,
        draft: Box<Draft>,
    },
    Adapters {
        selected: usize,
        draft: Box<Draft>,
    },
    /// A form: its fields' text, the field being typed in, and which of its modes is chosen (see
    /// [`Form::modes`]).
    NetForm {
        form: Form,
        fields: Vec<String>,
        field: usize,
        mode: u8,
        draft: Box<Draft>,
    },
    ApplyPrompt {
        draft: Box<Draft>,
    },
    Login {
        after: After,
        password: String,
        checking: bool,
    },
    Main,
    Password {
        fields: [String; 2],
        field: usize,
    },
    Keyboard {
        selected: usize,
    },
    Troubleshooting {
        selected: usize,
    },
    /// The time-out forms (minutes): shell/SSH availability and idle, or the DCUI's.
    Timeouts {
        dcui: bool,
        fields: Vec<String>,
        field: usize,
    },
    Confirm(Confirm),
    /// View System Logs: which log.
    LogChoice {
        selected: usize,
    },
    Logs {
        kind: LogKind,
        scroll: usize,
    },
    Support {
        scroll: usize,
    },
    Power,
}

/// The System Customization items of this build, in order.
const ITEMS: &[&str] = &[
    "Configure Password",
    "Configure Management Network",
    "Restart Management Network",
    "Test Management Network",
    "Network Restore Options",
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

    /// Logs out once no key came for `idle_minutes` (the configured DCUI time-out; 0: never);
    /// returns true when the screen changed.
    pub fn tick(&mut self, now: u64, idle_minutes: u32) -> bool {
        let idle_ms = idle_minutes as u64 * 60_000;
        let timed_out = idle_ms > 0 && now.saturating_sub(self.last_key) >= idle_ms;
        if !self.is_idle() && !self.awaiting_login() && timed_out {
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
            Screen::Logs { kind, .. } => view.logs.iter().filter(|l| kind.includes(l)).count(),
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
                _ => edit(password, key, MAX_INPUT),
            },
            Screen::Main => match key {
                Key::Esc => self.go(Screen::Idle),
                Key::Up => self.selected = self.selected.saturating_sub(1),
                Key::Down => self.selected = (self.selected + 1).min(ITEMS.len() - 1),
                Key::Enter => {
                    let next = match ITEMS[self.selected] {
                        "Configure Password" => Screen::Password { fields: Default::default(), field: 0 },
                        "Configure Management Network" => Screen::Network {
                            selected: 0,
                            draft: Box::new(Draft {
                                network: view.network.clone(),
                                dns_search: view.dns_search.to_vec(),
                                changed: false,
                            }),
                        },
                        "Restart Management Network" => Screen::Confirm(Confirm::RestartNetwork),
                        "Network Restore Options" => Screen::Confirm(Confirm::RestoreNetwork),
                        "Test Management Network" => {
                            self.go(Screen::TestNet);
                            return Some(Action::TestNetwork);
                        }
                        "Configure Keyboard" => Screen::Keyboard {
                            selected: KEYBOARD_LAYOUTS.iter().position(|k| *k == view.keyboard).unwrap_or(0),
                        },
                        "Troubleshooting Options" => Screen::Troubleshooting { selected: 0 },
                        "View System Logs" => Screen::LogChoice { selected: 0 },
                        "View Support Information" => Screen::Support { scroll: 0 },
                        _ => Screen::Confirm(Confirm::Reset),
                    };
                    self.go(next);
                }
                _ => {}
            },
            Screen::Network { selected, draft } => match key {
                Key::Esc if draft.changed => {
                    let draft = draft.clone();
                    self.go(Screen::ApplyPrompt { draft });
                }
                Key::Esc => self.go(Screen::Main),
                Key::Up => *selected = selected.saturating_sub(1),
                Key::Down => *selected = (*selected + 1).min(NETWORK_ITEMS.len() - 1),
                Key::Enter => {
                    let (selected, draft) = (*selected, draft.clone());
                    let next = match selected {
                        0 => Screen::Adapters {
                            selected: view.nics.iter().position(|n| n.0 == draft.network.uplink).unwrap_or(0),
                            draft,
                        },
                        n => {
                            let form = [Form::Vlan, Form::Ipv4, Form::Ipv6, Form::Dns, Form::Suffixes][n - 1];
                            let (fields, mode) = form_fields(form, &draft);
                            Screen::NetForm { form, fields, field: 0, mode, draft }
                        }
                    };
                    self.go(next);
                }
                _ => {}
            },
            Screen::Adapters { selected, draft } => match key {
                Key::Esc | Key::Enter => {
                    let draft = draft.clone();
                    self.go(Screen::Network { selected: 0, draft });
                }
                Key::Up => *selected = selected.saturating_sub(1),
                Key::Down => *selected = (*selected + 1).min(view.nics.len().saturating_sub(1)),
                Key::Space => {
                    // The management network has one uplink: Space makes this NIC the one.
                    if let Some(n) = view.nics.get(*selected) {
                        if draft.network.uplink != n.0 {
                            draft.network.uplink = n.0.clone();
                            draft.changed = true;
                        }
                    }
                }
                _ => {}
            },
            Screen::NetForm { form, fields, field, mode, draft } => match key {
                Key::Esc => {
                    let draft = draft.clone();
                    self.go(Screen::Network { selected: 0, draft });
                }
                Key::Tab | Key::Down => *field = (*field + 1) % fields.len(),
                Key::Up => *field = (*field + fields.len() - 1) % fields.len(),
                // Space picks the next mode, unless it is typed into a field.
                Key::Space if form.modes() > 1 && (fields[*field].is_empty() || !form.editable(*mode)) => {
                    *mode = (*mode + 1) % form.modes()
                }
                Key::Enter => match apply_form(*form, fields, *mode, draft) {
                    Ok(()) => {
                        let draft = draft.clone();
                        self.go(Screen::Network { selected: 0, draft });
                    }
                    Err(e) => self.message = Some(format!("{}: {}", e.field, e.problem)),
                },
                _ if !form.editable(*mode) => {}
                _ => edit(&mut fields[*field], key, 253),
            },
            Screen::ApplyPrompt { draft } => match key {
                Key::Char('y') | Key::Char('Y') => {
                    let (network, dns_search) = (draft.network.clone(), draft.dns_search.clone());
                    self.go(Screen::Main);
                    self.message =
                        Some(String::from("Management network settings applied; the network restarted."));
                    return Some(Action::ApplyNetwork { network, dns_search });
                }
                Key::Char('n') | Key::Char('N') => {
                    self.go(Screen::Main);
                    self.message = Some(String::from("Changes discarded."));
                }
                Key::Esc => {
                    let draft = draft.clone();
                    self.go(Screen::Network { selected: 0, draft });
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
                _ => edit(&mut fields[*field], key, MAX_INPUT),
            },
            Screen::Keyboard { selected } => match key {
                Key::Esc => self.go(Screen::Main),
                Key::Up => *selected = selected.saturating_sub(1),
                Key::Down => *selected = (*selected + 1).min(KEYBOARD_LAYOUTS.len() - 1),
                Key::Enter | Key::Space => {
                    let layout = KEYBOARD_LAYOUTS[*selected].to_string();
                    self.go(Screen::Main);
                    self.message = Some(if Layout::for_name(&layout).1 {
                        format!("Keyboard layout set to {layout}.")
                    } else {
                        format!("Layout set to {layout}; no keymap for it yet, keys type as US Default.")
                    });
                    return Some(Action::SetKeyboard(layout));
                }
                _ => {}
            },
            Screen::Troubleshooting { selected } => match key {
                Key::Esc => self.go(Screen::Main),
                Key::Up => *selected = selected.saturating_sub(1),
                Key::Down => *selected = (*selected + 1).min(TROUBLESHOOTING_ITEMS.len() - 1),
                Key::Enter | Key::Space => match *selected {
                    0 => return Some(Action::SetShell(!view.shell)),
                    1 => return Some(Action::SetSsh(!view.ssh)),
                    2 => self.go(Screen::Timeouts {
                        dcui: false,
                        fields: vec![view.shell_timeout.to_string(), view.shell_idle_timeout.to_string()],
                        field: 0,
                    }),
                    3 => self.go(Screen::Timeouts {
                        dcui: true,
                        fields: vec![view.dcui_timeout.to_string()],
                        field: 0,
                    }),
                    _ => self.go(Screen::Confirm(Confirm::RestartAgents)),
                },
                _ => {}
            },
            Screen::Timeouts { dcui, fields, field } => match key {
                Key::Esc => {
                    let selected = if *dcui { 3 } else { 2 };
                    self.go(Screen::Troubleshooting { selected })
                }
                Key::Tab | Key::Down | Key::Up => *field = (*field + 1) % fields.len(),
                Key::Enter => {
                    let labels = timeout_labels(*dcui);
                    let mut minutes = Vec::new();
                    for (label, text) in labels.iter().zip(fields.iter()) {
                        match text.trim().parse::<u32>() {
                            Ok(m) if m <= MAX_TIMEOUT_MINUTES => minutes.push(m),
                            _ => {
                                self.message = Some(format!(
                                    "{}: whole minutes from 0 (never) to {MAX_TIMEOUT_MINUTES}",
                                    label.trim_end_matches(':')
                                ));
                                return None;
                            }
                        }
                    }
                    let (action, selected, what) = if *dcui {
                        (Action::SetDcuiTimeout(minutes[0]), 3, "DCUI idle timeout")
                    } else {
                        let action = Action::SetShellTimeouts { availability: minutes[0], idle: minutes[1] };
                        (action, 2, "Shell and SSH timeouts")
                    };
                    self.go(Screen::Troubleshooting { selected });
                    self.message = Some(format!("{what} set."));
                    return Some(action);
                }
                _ => {
                    // Digits only.
                    if !matches!(key, Key::Char(c) if !c.is_ascii_digit()) {
                        edit(&mut fields[*field], key, 4);
                    }
                }
            },
            Screen::Confirm(Confirm::RestartAgents) if key == Key::Esc => {
                self.go(Screen::Troubleshooting { selected: 4 })
            }
            Screen::Confirm(what) => match key {
                Key::Esc => self.go(Screen::Main),
                Key::F(11) => {
                    let (action, message) = match what {
                        Confirm::RestartNetwork => {
                            (Action::RestartManagementNetwork, Some("Management network restarted."))
                        }
                        // The default management network (DHCP on vmnic0, no VLAN, DNS from DHCP, no
                        // suffixes); the host name is kept so the host keeps its identity.
                        Confirm::RestoreNetwork => (
                            Action::ApplyNetwork {
                                network: ManagementConfig {
                                    hostname: view.network.hostname.clone(),
                                    ..ManagementConfig::default()
                                },
                                dns_search: Vec::new(),
                            },
                            Some("Network settings restored to the defaults; the network restarted."),
                        ),
                        Confirm::RestartAgents => {
                            (Action::RestartAgents, Some("Management agents restarted."))
                        }
                        Confirm::Reset => (Action::ResetConfiguration, None),
                    };
                    let agents = *what == Confirm::RestartAgents;
                    self.go(if agents { Screen::Troubleshooting { selected: 4 } } else { Screen::Main });
                    self.message = message.map(String::from);
                    return Some(action);
                }
                _ => {}
            },
            Screen::LogChoice { selected } => match key {
                Key::Esc => self.go(Screen::Main),
                Key::Up => *selected = selected.saturating_sub(1),
                Key::Down => *selected = (*selected + 1).min(LogKind::ALL.len() - 1),
                Key::Enter | Key::Char('1'..='4') => {
                    let i = match key {
                        Key::Char(c) => (c as u8 - b'1') as usize,
                        _ => *selected,
                    };
                    let kind = LogKind::ALL[i];
                    // Opens at the newest line.
                    let lines = view.logs.iter().filter(|l| kind.includes(l)).count();
                    self.go(Screen::Logs { kind, scroll: lines.saturating_sub(1) });
                }
                _ => {}
            },
            Screen::Logs { kind, .. } if key == Key::Esc => {
                let selected = LogKind::ALL.iter().position(|k| k == kind).unwrap_or(0);
                self.go(Screen::LogChoice { selected });
            }
            Screen::Logs { scroll, .. } | Screen::Support { scroll } => match key {
                Key::Esc => self.go(Screen::Main),
                Key::Up => *scroll = scroll.saturating_sub(1),
                Key::Down => *scroll = (*scroll + 1).min(scroll_len.saturating_sub(1)),
                Key::PageUp => *scroll = scroll.saturating_sub(10),
                Key::PageDown => *scroll = (*scroll + 10).min(scroll_len.saturating_sub(1)),
                _ => {}
            },
            Screen::TestNet => match key {
                Key::Esc => self.go(Screen::Main),
                Key::Enter => return Some(Action::TestNetwork),
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
            Screen::Network { selected, draft } => {
                for (i, item) in NETWORK_ITEMS.iter().enumerate() {
                    let style = if i == *selected { highlight } else { yellow };
                    lines.push(Line::from(Span::styled(format!(" {item:<30} "), style)));
                }
                lines.push(Line::from(""));
                let n = &draft.network;
                lines.push(Line::from(format!(
                    "Uplink: {}   VLAN: {}",
                    n.uplink,
                    n.vlan.map_or(String::from("none"), |v| v.to_string())
                )));
                lines.push(Line::from(match n.ipv4 {
                    Ipv4Mode::Dhcp => String::from("IPv4: DHCP"),
                    Ipv4Mode::Static { address, prefix, gateway } => format!(
                        "IPv4: static {address}/{prefix}{}",
                        gateway.map(|g| format!(", gateway {g}")).unwrap_or_default()
                    ),
                }));
                lines.push(Line::from(match n.ipv6 {
                    Ipv6Mode::Disabled => String::from("IPv6: disabled"),
                    Ipv6Mode::Auto => String::from("IPv6: automatic"),
                    Ipv6Mode::Static { address, prefix, gateway } => format!(
                        "IPv6: static {address}/{prefix}{}",
                        gateway.map(|g| format!(", gateway {g}")).unwrap_or_default()
                    ),
                }));
                let dns: Vec<String> = n.dns.iter().map(|d| d.to_string()).collect();
                lines.push(Line::from(format!(
                    "DNS: {}   Hostname: {}",
                    if dns.is_empty() { String::from("(from DHCP)") } else { dns.join(", ") },
                    n.hostname
                )));
                if !draft.dns_search.is_empty() {
                    lines.push(Line::from(format!("DNS suffixes: {}", draft.dns_search.join(" "))));
                }
            }
            Screen::Adapters { selected, draft } => {
                lines.push(Line::from("The management network's uplink (Space selects):"));
                lines.push(Line::from(""));
                for (i, (name, mac, link)) in view.nics.iter().enumerate() {
                    let mark = if *name == draft.network.uplink { "[X]" } else { "[ ]" };
                    let style = if i == *selected { highlight } else { yellow };
                    let state = if *link { "Connected" } else { "Disconnected" };
                    lines.push(Line::from(Span::styled(
                        format!(" {mark} {name:<8} {mac}  {state:<12} "),
                        style,
                    )));
                }
            }
            Screen::NetForm { form, fields, field, mode, .. } => {
                let choices: &[&str] = match form {
                    Form::Ipv4 => &[
                        "Use dynamic IPv4 address and network configuration",
                        "Set static IPv4 address and network configuration:",
                    ],
                    Form::Ipv6 => &[
                        "Disable IPv6",
                        "Use automatic configuration (link-local, router advertisements)",
                        "Set static IPv6 address and network configuration:",
                    ],
                    _ => &[],
                };
                for (i, c) in choices.iter().enumerate() {
                    lines.push(Line::from(format!("({}) {c}", if i == *mode as usize { "o" } else { " " })));
                }
                if !choices.is_empty() {
                    lines.push(Line::from(""));
                }
                let editable = form.editable(*mode);
                // IPv6 addresses are long: narrower labels, wider fields.
                let (label_width, value_width) = if *form == Form::Ipv6 { (34, 39) } else { (38, 24) };
                for (i, label) in form.labels().iter().enumerate() {
                    let value = if editable { fields[i].as_str() } else { "" };
                    let style = if i == *field && editable { highlight } else { yellow };
                    lines.push(Line::from(vec![
                        Span::raw(format!("{label:<label_width$}")),
                        Span::styled(format!("[ {value:<value_width$} ]"), style),
                    ]));
                }
                if *form == Form::Ipv6 && !view.ipv6_addresses.is_empty() {
                    lines.push(Line::from(""));
                    lines.push(Line::from("Addresses now:"));
                    for a in view.ipv6_addresses {
                        lines.push(Line::from(format!("  {a}")));
                    }
                }
            }
            Screen::ApplyPrompt { .. } => {
                lines.push(Line::from("Apply changes and restart management network? (Y/N)"));
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
                let never = |m: u32| if m == 0 { String::from("never") } else { format!("{m} min") };
                let values = [
                    state(view.shell).to_string(),
                    state(view.ssh).to_string(),
                    format!("{} / {}", never(view.shell_timeout), never(view.shell_idle_timeout)),
                    never(view.dcui_timeout),
                    String::new(),
                ];
                for (i, (label, value)) in TROUBLESHOOTING_ITEMS.iter().zip(values).enumerate() {
                    let style = if i == *selected { highlight } else { yellow };
                    lines.push(Line::from(Span::styled(format!(" {label:<30} {value:<18} "), style)));
                }
                lines.push(Line::from(""));
                lines.push(Line::from(
                    "Shell, SSH and their timeouts are stored (the availability timeout turns both off \
                     again); this version has no shell or SSH service yet.",
                ));
            }
            Screen::Timeouts { dcui, fields, field } => {
                lines.push(Line::from(if *dcui {
                    "Without a key for this long the console logs out."
                } else {
                    "Availability: shell and SSH are turned off this long after being enabled. \
                     Idle: sessions without input are ended."
                }));
                lines.push(Line::from(""));
                for (i, label) in timeout_labels(*dcui).iter().enumerate() {
                    let style = if i == *field { highlight } else { yellow };
                    lines.push(Line::from(vec![
                        Span::raw(format!("{label:<46}")),
                        Span::styled(format!("[ {:<6} ]", fields[i]), style),
                    ]));
                }
            }
            Screen::Confirm(what) => {
                let text = match what {
                    Confirm::RestartNetwork => "Restart the management network? Connections to the host are dropped.",
                    Confirm::RestartAgents => "Restart the management agents? API connections to the host are dropped; the configuration is kept.",
                    Confirm::RestoreNetwork => "Restore Network Settings: the management network returns to the defaults (DHCP on vmnic0, no VLAN, DNS from DHCP, no DNS suffixes; the host name is kept) and restarts.",
                    Confirm::Reset => "Reset the system configuration? All settings, including the root password, return to the factory defaults and the host reboots into a first boot.",
                };
                lines.push(Line::from(text));
            }
            Screen::LogChoice { selected } => {
                for (i, kind) in LogKind::ALL.iter().enumerate() {
                    let style = if i == *selected { highlight } else { yellow };
                    lines.push(Line::from(Span::styled(format!(" {}) {:<52} ", i + 1, kind.title()), style)));
                }
            }
            Screen::Logs { kind, scroll } => {
                let shown: Vec<&String> = view.logs.iter().filter(|l| kind.includes(l)).collect();
                let rows = inner.height.saturating_sub(3) as usize;
                let end = (*scroll + 1).min(shown.len());
                let start = end.saturating_sub(rows);
                lines.push(Line::from(Span::styled(kind.title(), highlight)));
                for l in &shown[start..end] {
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
            Screen::TestNet => {
                for c in view.tests {
                    let result = match c.ok {
                        None => "...",
                        Some(true) => "OK.",
                        Some(false) => "FAILED.",
                    };
                    lines.push(Line::from(format!("{:<60}{result}", c.label)));
                }
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
            Screen::Network { .. } => {
                ("Configure Management Network", "<Up/Down> Select  <Enter> Change  <Esc> Exit")
            }
            Screen::Adapters { .. } => ("Network Adapters", "<Space> Select  <Enter> OK  <Esc> Back"),
            Screen::NetForm { form: Form::Ipv4, .. } => {
                ("IPv4 Configuration", "<Space> DHCP/Static  <Tab> Next Field  <Enter> OK  <Esc> Cancel")
            }
            Screen::NetForm { form, .. } => (form.title(), "<Tab> Next Field  <Enter> OK  <Esc> Cancel"),
            Screen::ApplyPrompt { .. } => {
                ("Configure Management Network: Confirm", "<Y> Yes  <N> No  <Esc> Back")
            }
            Screen::Keyboard { .. } => ("Configure Keyboard", "<Up/Down> Select  <Enter> OK  <Esc> Cancel"),
            Screen::Troubleshooting { .. } => {
                ("Troubleshooting Options", "<Up/Down> Select  <Enter> Change  <Esc> Back")
            }
            Screen::Timeouts { dcui: false, .. } => {
                ("Modify Shell and SSH timeouts", "<Tab> Next Field  <Enter> OK  <Esc> Cancel")
            }
            Screen::Timeouts { dcui: true, .. } => ("Modify DCUI idle timeout", "<Enter> OK  <Esc> Cancel"),
            Screen::Confirm(Confirm::RestartAgents) => {
                ("Restart Management Agents", "<F11> Restart  <Esc> Cancel")
            }
            Screen::Confirm(Confirm::RestartNetwork) => {
                ("Restart Management Network", "<F11> Restart  <Esc> Cancel")
            }
            Screen::Confirm(Confirm::RestoreNetwork) => {
                ("Network Restore Options", "<F11> Restore  <Esc> Cancel")
            }
            Screen::Confirm(Confirm::Reset) => ("Reset System Configuration", "<F11> Reset  <Esc> Cancel"),
            Screen::LogChoice { .. } => ("View System Logs", "<1-4> or <Enter> View  <Esc> Back"),
            Screen::Logs { .. } => ("View System Logs", "<Up/Down/PgUp/PgDn> Scroll  <Esc> Back"),
            Screen::Support { .. } => ("View Support Information", "<Up/Down> Scroll  <Esc> Back"),
            Screen::TestNet => ("Test Management Network", "<Enter> Test Again  <Esc> Back"),
            Screen::Power => ("Shut Down/Restart", "<F2> Shut Down  <F11> Restart  <Esc> Cancel"),
        }
    }
}

/// The text a form starts with, from the draft; for IPv4 also whether DHCP is chosen.
fn form_fields(form: Form, d: &Draft) -> (Vec<String>, u8) {
    let ip = |a: Option<Ipv4Addr>| a.map(|a| a.to_string()).unwrap_or_default();
    match form {
        Form::Vlan => (vec![d.network.vlan.map(|v| v.to_string()).unwrap_or_default()], 0),
        Form::Ipv4 => match d.network.ipv4 {
            Ipv4Mode::Dhcp => (vec![String::new(), String::new(), String::new()], 0),
            Ipv4Mode::Static { address, prefix, gateway } => {
                let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0));
                (vec![address.to_string(), mask.to_string(), ip(gateway)], 1)
            }
        },
        Form::Ipv6 => match d.network.ipv6 {
            Ipv6Mode::Disabled => (vec![String::new(), String::new()], 0),
            Ipv6Mode::Auto => (vec![String::new(), String::new()], 1),
            Ipv6Mode::Static { address, prefix, gateway } => {
                (vec![format!("{address}/{prefix}"), gateway.map(|g| g.to_string()).unwrap_or_default()], 2)
            }
        },
        Form::Dns => (
            vec![
                ip(d.network.dns.first().copied()),
                ip(d.network.dns.get(1).copied()),
                d.network.hostname.clone(),
            ],
            0,
        ),
        Form::Suffixes => (vec![d.dns_search.join(" ")], 0),
    }
}

/// Validates a form as a whole and puts it into the draft; on error the draft is unchanged.
fn apply_form(form: Form, fields: &[String], mode: u8, draft: &mut Draft) -> Result<(), ConfigError> {
    let mut network = draft.network.clone();
    let mut search = draft.dns_search.clone();
    let text = |i: usize| fields[i].trim();
    match form {
        Form::Vlan => {
            network.vlan = match text(0) {
                "" => None,
                t => Some(validate_vlan(
                    "VLAN ID",
                    t.parse::<u32>().map_err(|_| ConfigError {
                        field: "VLAN ID".into(),
                        problem: format!("`{t}` is not a number"),
                    })?,
                )?),
            }
        }
        Form::Ipv4 if mode == 0 => network.ipv4 = Ipv4Mode::Dhcp,
        Form::Ipv4 => {
            let address = parse_ipv4("IPv4 Address", text(0))?;
            let prefix = netmask_to_prefix("Subnet Mask", parse_ipv4("Subnet Mask", text(1))?)?;
            let gateway = match text(2) {
                "" => None,
                g => Some(parse_ipv4("Default Gateway", g)?),
            };
            network.ipv4 = Ipv4Mode::Static { address, prefix, gateway };
        }
        Form::Ipv6 => {
            network.ipv6 = match mode {
                0 => Ipv6Mode::Disabled,
                1 => Ipv6Mode::Auto,
                _ => {
                    let (address, prefix) = parse_ipv6_cidr("Static address", text(0))?;
                    let gateway = match text(1) {
                        "" => None,
                        g => Some(parse_ipv6("Default Gateway", g)?),
                    };
                    Ipv6Mode::Static { address, prefix, gateway }
                }
            }
        }
        Form::Dns => {
            network.dns = Vec::new();
            for (i, label) in [(0, "Primary DNS Server"), (1, "Alternate DNS Server")] {
                if !text(i).is_empty() {
                    network.dns.push(parse_ipv4(label, text(i))?);
                }
            }
            validate_hostname("Hostname", text(2))?;
            network.hostname = text(2).to_string();
        }
        Form::Suffixes => {
            search = text(0).split([' ', ',']).filter(|s| !s.is_empty()).map(String::from).collect();
            if search.len() > MAX_SEARCH_SUFFIXES {
                return Err(ConfigError {
                    field: "Suffixes".into(),
                    problem: format!("at most {MAX_SEARCH_SUFFIXES}"),
                });
            }
            for s in &search {
                validate_hostname("Suffixes", s)?;
            }
        }
    }
    // The whole configuration must still hold (for example the gateway inside the new subnet).
    network.validate().map_err(|e| ConfigError {
        field: match e.field.as_str() {
            "address" | "prefix" => "IPv4 Address".into(),
            "gateway" | "ipv6.gateway" => "Default Gateway".into(),
            "ipv6.address" | "ipv6.prefix" => "Static address".into(),
            "dns" => "DNS Server".into(),
            other => other.into(),
        },
        problem: e.problem,
    })?;
    if network != draft.network || search != draft.dns_search {
        draft.network = network;
        draft.dns_search = search;
        draft.changed = true;
    }
    Ok(())
}

fn timeout_labels(dcui: bool) -> &'static [&'static str] {
    if dcui {
        &["DCUI idle timeout (minutes, 0 = never):"]
    } else {
        &["Availability timeout (minutes, 0 = never):", "Idle timeout (minutes, 0 = never):"]
    }
}

/// Typing into a field: printable characters are added (up to `max`), Backspace removes.
fn edit(field: &mut String, key: Key, max: usize) {
    match key {
        Key::Char(c) if field.len() < max => field.push(c),
        Key::Space if field.len() < max => field.push(' '),
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
            m.selected = i;
            m.key(Key::Enter, &v, 5);
            assert!(screen(&m, &v).lines().next().unwrap().contains(t), "{t}: {}", screen(&m, &v));
            m.key(Key::Esc, &v, 5);
            assert!(screen(&m, &v).contains("System Customization"), "Esc from {t}");
        }
        m.selected = 2;
        m.key(Key::Enter, &v, 5);
        assert_eq!(m.key(Key::Enter, &v, 5), None, "only F11 confirms");
        assert_eq!(m.key(Key::F(11), &v, 5), Some(Action::RestartManagementNetwork));
        m.selected = 9;
        m.key(Key::Enter, &v, 5);
        assert_eq!(m.key(Key::F(11), &v, 5), Some(Action::ResetConfiguration));
        m.selected = 4;
        m.key(Key::Enter, &v, 5);
        let restored = m.key(Key::F(11), &v, 5);
        let expected =
            ManagementConfig { hostname: v.network.hostname.clone(), ..ManagementConfig::default() };
        assert_eq!(restored, Some(Action::ApplyNetwork { network: expected, dns_search: Vec::new() }));
        m.selected = 5;
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains("(o) German"));
        m.key(Key::Down, &v, 5);
        assert_eq!(m.key(Key::Enter, &v, 5), Some(Action::SetKeyboard("Greek".into())));
        assert!(
            m.message.as_deref().unwrap_or_default().contains("keys type as US Default"),
            "{:?}",
            m.message
        );
        m.selected = 6;
        m.key(Key::Enter, &v, 5);
        assert!(screen(&m, &v).contains(" SSH                            Enabled"), "{}", screen(&m, &v));
        assert_eq!(m.key(Key::Enter, &v, 5), Some(Action::SetShell(true)));
        m.key(Key::Down, &v, 5);
        assert_eq!(m.key(Key::Space, &v, 5), Some(Action::SetSsh(false)));
        m.key(Key::Esc, &v, 5);
        m.selected = 7;
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
        m.selected = 3;
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
        m.selected = 6;
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
        m.selected = 1;
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
