//! System Customization: the menu behind F2 (after the root login), listing the items of this build;
//! Enter opens one, Esc logs out.

use super::confirm::Confirm;
use super::keyboard::Keyboard;
use super::network::{Draft, Network};
use super::password::Password;
use super::support::Support;
use super::system_logs::LogChoice;
use super::test_network::TestNetwork;
use super::troubleshooting::Troubleshooting;
use super::{draw, up_down, Context, Screen, Step};
use crate::menu::{Action, View};
use alloc::vec::Vec;
use ember_hw::keys::Key;
use ratatui::layout::Rect;
use ratatui::text::Line;

/// The System Customization items of this build, in order.
pub(crate) const ITEMS: &[&str] = &[
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

pub(crate) struct Customization {
    selected: usize,
}

impl Customization {
    pub fn new() -> Customization {
        Customization { selected: 0 }
    }
}

/// What Enter on `item` does.
fn open(item: &str, view: &View<'_>) -> Step {
    match item {
        "Configure Password" => Step::open(Password::new()),
        "Configure Management Network" => Step::open(Network::new(Draft::from_view(view))),
        "Restart Management Network" => Step::open(Confirm::RestartNetwork),
        "Network Restore Options" => Step::open(Confirm::RestoreNetwork),
        "Test Management Network" => Step::open(TestNetwork).with(Action::TestNetwork),
        "Configure Keyboard" => Step::open(Keyboard::new(view)),
        "Troubleshooting Options" => Step::open(Troubleshooting::new(0)),
        "View System Logs" => Step::open(LogChoice::new()),
        "View Support Information" => Step::open(Support::new()),
        _ => Step::open(Confirm::Reset),
    }
}

impl Screen for Customization {
    fn title(&self) -> &'static str {
        "System Customization"
    }

    fn keys(&self) -> &'static str {
        "<Up/Down> Select  <Enter> Open  <Esc> Log Out"
    }

    fn key(&mut self, key: Key, cx: &Context<'_>) -> Step {
        match key {
            Key::Esc => Step::idle(),
            Key::Enter => ITEMS.get(self.selected).map_or_else(Step::stay, |item| open(item, cx.view)),
            _ => {
                up_down(&mut self.selected, key, ITEMS.len());
                Step::stay()
            }
        }
    }

    fn body<'a>(&'a self, _view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        draw::menu(ITEMS, self.selected)
    }
}
