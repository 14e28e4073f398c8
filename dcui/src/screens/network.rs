//! Configure Management Network: the list of the management network's settings (Network Adapters,
//! VLAN, IPv4, IPv6, DNS, custom DNS suffixes) over a summary of them. The settings are edited in a
//! [`Draft`] that the sub-screens hand on; Esc asks whether to apply it if anything changed.

use super::adapters::Adapters;
use super::apply_network::ApplyNetwork;
use super::network_forms::{Form, NetForm};
use super::{draw, up_down, Context, Screen, Step};
use crate::menu::View;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Display;
use ember_hw::keys::Key;
use ember_storage::netconfig::{Ipv4Mode, Ipv6Mode, ManagementConfig};
use ratatui::layout::Rect;
use ratatui::text::Line;

const NETWORK_ITEMS: &[&str] = &[
    "Network Adapters",
    "VLAN (optional)",
    "IPv4 Configuration",
    "IPv6 Configuration",
    "DNS Configuration",
    "Custom DNS Suffixes",
];

/// Management network settings being edited (applied only when the operator says so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Draft {
    pub network: ManagementConfig,
    pub dns_search: Vec<String>,
    pub changed: bool,
}

impl Draft {
    /// The settings stored now, unchanged.
    pub fn from_view(view: &View<'_>) -> Box<Draft> {
        Box::new(Draft {
            network: view.network.clone(),
            dns_search: view.dns_search.to_vec(),
            changed: false,
        })
    }
}

pub(crate) struct Network {
    selected: usize,
    draft: Box<Draft>,
}

impl Network {
    /// The list (first item selected) with `draft`'s settings.
    pub fn new(draft: Box<Draft>) -> Network {
        Network { selected: 0, draft }
    }

    /// Enter: the item's screen, editing the draft.
    fn open(&self, view: &View<'_>) -> Step {
        let draft = self.draft.clone();
        match self.selected {
            0 => Step::replace(Adapters::new(draft, view)),
            n => {
                let forms = [Form::Vlan, Form::Ipv4, Form::Ipv6, Form::Dns, Form::Suffixes];
                forms.get(n - 1).map_or_else(Step::stay, |form| Step::replace(NetForm::new(*form, draft)))
            }
        }
    }
}

impl Screen for Network {
    fn title(&self) -> &'static str {
        "Configure Management Network"
    }

    fn keys(&self) -> &'static str {
        "<Up/Down> Select  <Enter> Change  <Esc> Exit"
    }

    fn key(&mut self, key: Key, cx: &Context<'_>) -> Step {
        match key {
            Key::Esc if self.draft.changed => Step::replace(ApplyNetwork::new(self.draft.clone())),
            Key::Esc => Step::back(),
            Key::Enter => self.open(cx.view),
            _ => {
                up_down(&mut self.selected, key, NETWORK_ITEMS.len());
                Step::stay()
            }
        }
    }

    fn body<'a>(&'a self, _view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        let mut lines = draw::menu(NETWORK_ITEMS, self.selected);
        lines.push(Line::from(""));
        lines.extend(summary(&self.draft).into_iter().map(Line::from));
        lines
    }
}

/// The draft's settings, a line each.
fn summary(draft: &Draft) -> Vec<String> {
    let n = &draft.network;
    let mut lines = Vec::from([
        format!("Uplink: {}   VLAN: {}", n.uplink, n.vlan.map_or(String::from("none"), |v| v.to_string())),
        match n.ipv4 {
            Ipv4Mode::Dhcp => String::from("IPv4: DHCP"),
            Ipv4Mode::Static { address, prefix, gateway } => {
                format!("IPv4: static {address}/{prefix}{}", via(gateway))
            }
        },
        match n.ipv6 {
            Ipv6Mode::Disabled => String::from("IPv6: disabled"),
            Ipv6Mode::Auto => String::from("IPv6: automatic"),
            Ipv6Mode::Static { address, prefix, gateway } => {
                format!("IPv6: static {address}/{prefix}{}", via(gateway))
            }
        },
    ]);
    let dns: Vec<String> = n.dns.iter().map(|d| d.to_string()).collect();
    let dns = if dns.is_empty() { String::from("(from DHCP)") } else { dns.join(", ") };
    lines.push(format!("DNS: {dns}   Hostname: {}", n.hostname));
    if !draft.dns_search.is_empty() {
        lines.push(format!("DNS suffixes: {}", draft.dns_search.join(" ")));
    }
    lines
}

/// ", gateway X" when there is one.
fn via(gateway: Option<impl Display>) -> String {
    gateway.map(|g| format!(", gateway {g}")).unwrap_or_default()
}
