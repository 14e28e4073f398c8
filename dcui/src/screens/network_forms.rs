//! The forms under Configure Management Network: VLAN (optional), IPv4 Configuration, IPv6
//! Configuration, DNS Configuration and Custom DNS Suffixes. Each form is validated as a whole when
//! Enter is pressed, the field at fault named; only then does the draft change.

use super::network::{Draft, Network};
use super::{draw, edit, Context, Screen, Step};
use crate::menu::View;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use ember_hw::keys::Key;
use ember_storage::hostconfig::MAX_SEARCH_SUFFIXES;
use ember_storage::netconfig::{
    netmask_to_prefix, parse_ipv4, parse_ipv6, parse_ipv6_cidr, validate_hostname, validate_vlan,
    ConfigError, Ipv4Mode, Ipv6Mode, ManagementConfig,
};
use ratatui::layout::Rect;
use ratatui::text::Line;

/// Longest text typed into a field (a host name).
const MAX_FIELD: usize = 253;

/// The management network forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
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
    fn choices(self) -> &'static [&'static str] {
        match self {
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
        }
    }

    /// How many modes the form has (1 when it offers no choices).
    fn modes(self) -> u8 {
        self.choices().len().max(1) as u8
    }

    /// Whether the fields take input with `mode` chosen.
    fn editable(self, mode: u8) -> bool {
        mode + 1 == self.modes()
    }

    /// The widths of the labels and of the fields (IPv6 addresses are long: narrower labels, wider
    /// fields).
    fn widths(self) -> (usize, usize) {
        if self == Form::Ipv6 {
            (34, 39)
        } else {
            (38, 24)
        }
    }
}

/// One form: its fields' text, the field being typed in, which of its modes is chosen (see
/// [`Form::choices`]), and the draft it changes.
pub(crate) struct NetForm {
    form: Form,
    fields: Vec<String>,
    field: usize,
    mode: u8,
    draft: Box<Draft>,
}

impl NetForm {
    /// The form filled in from the draft.
    pub fn new(form: Form, draft: Box<Draft>) -> NetForm {
        let (fields, mode) = form_fields(form, &draft);
        NetForm { form, fields, field: 0, mode, draft }
    }

    /// Enter: the draft changed and back to the list, or the field at fault named.
    fn submit(&mut self) -> Step {
        match apply_form(self.form, &self.fields, self.mode, &mut self.draft) {
            Ok(()) => Step::replace(Network::new(self.draft.clone())),
            Err(e) => Step::stay().say(format!("{}: {}", e.field, e.problem)),
        }
    }
}

impl Screen for NetForm {
    fn title(&self) -> &'static str {
        match self.form {
            Form::Vlan => "VLAN (optional)",
            Form::Ipv4 => "IPv4 Configuration",
            Form::Ipv6 => "IPv6 Configuration",
            Form::Dns => "DNS Configuration",
            Form::Suffixes => "Custom DNS Suffixes",
        }
    }

    fn keys(&self) -> &'static str {
        match self.form {
            Form::Ipv4 => "<Space> DHCP/Static  <Tab> Next Field  <Enter> OK  <Esc> Cancel",
            _ => "<Tab> Next Field  <Enter> OK  <Esc> Cancel",
        }
    }

    fn key(&mut self, key: Key, _cx: &Context<'_>) -> Step {
        let (form, count) = (self.form, self.fields.len());
        let typing = form.editable(self.mode);
        match key {
            Key::Esc => return Step::replace(Network::new(self.draft.clone())),
            Key::Tab | Key::Down => self.field = (self.field + 1) % count,
            Key::Up => self.field = (self.field + count - 1) % count,
            // Space picks the next mode, unless it is typed into a field.
            Key::Space if form.modes() > 1 && (self.fields[self.field].is_empty() || !typing) => {
                self.mode = (self.mode + 1) % form.modes()
            }
            Key::Enter => return self.submit(),
            _ if !typing => {}
            _ => edit(&mut self.fields[self.field], key, MAX_FIELD),
        }
        Step::stay()
    }

    fn body<'a>(&'a self, view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        let mut lines = Vec::new();
        let choices = self.form.choices();
        for (i, c) in choices.iter().enumerate() {
            lines.push(Line::from(format!("({}) {c}", if i == self.mode as usize { "o" } else { " " })));
        }
        if !choices.is_empty() {
            lines.push(Line::from(""));
        }
        let editable = self.form.editable(self.mode);
        let (label_width, value_width) = self.form.widths();
        for (i, label) in self.form.labels().iter().enumerate() {
            let value = if editable { self.fields[i].as_str() } else { "" };
            lines.push(draw::field(label, label_width, value, value_width, i == self.field && editable));
        }
        if self.form == Form::Ipv6 && !view.ipv6_addresses.is_empty() {
            lines.push(Line::from(""));
            lines.push(Line::from("Addresses now:"));
            lines.extend(view.ipv6_addresses.iter().map(|a| Line::from(format!("  {a}"))));
        }
        lines
    }
}

/// The text a form starts with, from the draft, and the mode chosen.
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
    let text = |i: usize| fields.get(i).map_or("", |f| f.trim());
    match form {
        Form::Vlan => network.vlan = vlan(text(0))?,
        Form::Ipv4 => network.ipv4 = ipv4(mode, text)?,
        Form::Ipv6 => network.ipv6 = ipv6(mode, text)?,
        Form::Dns => dns(&mut network, text)?,
        Form::Suffixes => search = suffixes(text(0))?,
    }
    validate(&network)?;
    if network != draft.network || search != draft.dns_search {
        draft.network = network;
        draft.dns_search = search;
        draft.changed = true;
    }
    Ok(())
}

/// The VLAN form: an id, or none.
fn vlan(text: &str) -> Result<Option<u16>, ConfigError> {
    if text.is_empty() {
        return Ok(None);
    }
    let id = text
        .parse::<u32>()
        .map_err(|_| ConfigError { field: "VLAN ID".into(), problem: format!("`{text}` is not a number") })?;
    Ok(Some(validate_vlan("VLAN ID", id)?))
}

/// The IPv4 form: DHCP, or the static address, mask and gateway.
fn ipv4<'a>(mode: u8, text: impl Fn(usize) -> &'a str) -> Result<Ipv4Mode, ConfigError> {
    if mode == 0 {
        return Ok(Ipv4Mode::Dhcp);
    }
    let address = parse_ipv4("IPv4 Address", text(0))?;
    let prefix = netmask_to_prefix("Subnet Mask", parse_ipv4("Subnet Mask", text(1))?)?;
    let gateway = match text(2) {
        "" => None,
        g => Some(parse_ipv4("Default Gateway", g)?),
    };
    Ok(Ipv4Mode::Static { address, prefix, gateway })
}

/// The IPv6 form: disabled, automatic, or the static address and gateway.
fn ipv6<'a>(mode: u8, text: impl Fn(usize) -> &'a str) -> Result<Ipv6Mode, ConfigError> {
    match mode {
        0 => Ok(Ipv6Mode::Disabled),
        1 => Ok(Ipv6Mode::Auto),
        _ => {
            let (address, prefix) = parse_ipv6_cidr("Static address", text(0))?;
            let gateway = match text(1) {
                "" => None,
                g => Some(parse_ipv6("Default Gateway", g)?),
            };
            Ok(Ipv6Mode::Static { address, prefix, gateway })
        }
    }
}

/// The DNS form: up to two servers and the host name.
fn dns<'a>(network: &mut ManagementConfig, text: impl Fn(usize) -> &'a str) -> Result<(), ConfigError> {
    network.dns = Vec::new();
    for (i, label) in [(0, "Primary DNS Server"), (1, "Alternate DNS Server")] {
        if !text(i).is_empty() {
            network.dns.push(parse_ipv4(label, text(i))?);
        }
    }
    validate_hostname("Hostname", text(2))?;
    network.hostname = text(2).to_string();
    Ok(())
}

/// The Custom DNS Suffixes form: names separated by spaces or commas.
fn suffixes(text: &str) -> Result<Vec<String>, ConfigError> {
    let search: Vec<String> = text.split([' ', ',']).filter(|s| !s.is_empty()).map(String::from).collect();
    if search.len() > MAX_SEARCH_SUFFIXES {
        return Err(ConfigError {
            field: "Suffixes".into(),
            problem: format!("at most {MAX_SEARCH_SUFFIXES}"),
        });
    }
    for s in &search {
        validate_hostname("Suffixes", s)?;
    }
    Ok(search)
}

/// The whole configuration must still hold (for example the gateway inside the new subnet); the
/// field at fault is named as the forms name it.
fn validate(network: &ManagementConfig) -> Result<(), ConfigError> {
    network.validate().map_err(|e| ConfigError {
        field: match e.field.as_str() {
            "address" | "prefix" => "IPv4 Address".into(),
            "gateway" | "ipv6.gateway" => "Default Gateway".into(),
            "ipv6.address" | "ipv6.prefix" => "Static address".into(),
            "dns" => "DNS Server".into(),
            other => other.into(),
        },
        problem: e.problem,
    })
}
