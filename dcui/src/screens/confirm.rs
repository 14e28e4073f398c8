//! The screens that F11 confirms: Restart Management Network, Network Restore Options (the default
//! management network, host name kept), Restart Management Agents (under Troubleshooting Options)
//! and Reset System Configuration. Esc goes back without doing anything.

use super::{Context, Screen, Step};
use crate::menu::{Action, View};
use alloc::vec;
use alloc::vec::Vec;
use ember_hw::keys::Key;
use ember_storage::netconfig::ManagementConfig;
use ratatui::layout::Rect;
use ratatui::text::Line;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirm {
    RestartNetwork,
    RestoreNetwork,
    RestartAgents,
    Reset,
}

impl Confirm {
    /// What F11 asks the kernel to do, and the message shown then.
    fn confirmed(self, view: &View<'_>) -> (Action, Option<&'static str>) {
        match self {
            Confirm::RestartNetwork => {
                (Action::RestartManagementNetwork, Some("Management network restarted."))
            }
            // The default management network (DHCP on vmnic0, no VLAN, DNS from DHCP, no suffixes);
            // the host name is kept so the host keeps its identity.
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
            Confirm::RestartAgents => (Action::RestartAgents, Some("Management agents restarted.")),
            Confirm::Reset => (Action::ResetConfiguration, None),
        }
    }
}

impl Screen for Confirm {
    fn title(&self) -> &'static str {
        match self {
            Confirm::RestartNetwork => "Restart Management Network",
            Confirm::RestoreNetwork => "Network Restore Options",
            Confirm::RestartAgents => "Restart Management Agents",
            Confirm::Reset => "Reset System Configuration",
        }
    }

    fn keys(&self) -> &'static str {
        match self {
            Confirm::RestartNetwork | Confirm::RestartAgents => "<F11> Restart  <Esc> Cancel",
            Confirm::RestoreNetwork => "<F11> Restore  <Esc> Cancel",
            Confirm::Reset => "<F11> Reset  <Esc> Cancel",
        }
    }

    fn key(&mut self, key: Key, cx: &Context<'_>) -> Step {
        match key {
            Key::Esc => Step::back(),
            Key::F(11) => {
                let (action, message) = self.confirmed(cx.view);
                let step = Step::back().with(action);
                match message {
                    Some(m) => step.say(m),
                    None => step,
                }
            }
            _ => Step::stay(),
        }
    }

    fn body<'a>(&'a self, _view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        let text = match self {
            Confirm::RestartNetwork => "Restart the management network? Connections to the host are dropped.",
            Confirm::RestartAgents => "Restart the management agents? API connections to the host are dropped; the configuration is kept.",
            Confirm::RestoreNetwork => "Restore Network Settings: the management network returns to the defaults (DHCP on vmnic0, no VLAN, DNS from DHCP, no DNS suffixes; the host name is kept) and restarts.",
            Confirm::Reset => "Reset the system configuration? All settings, including the root password, return to the factory defaults and the host reboots into a first boot.",
        };
        vec![Line::from(text)]
    }
}
