//! Network Adapters (under Configure Management Network): the host's NICs; Space makes one the
//! management network's uplink.

use super::network::{Draft, Network};
use super::{draw, up_down, Context, Screen, Step};
use crate::menu::View;
use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;
use ember_hw::keys::Key;
use ratatui::layout::Rect;
use ratatui::text::Line;

pub(crate) struct Adapters {
    selected: usize,
    draft: Box<Draft>,
}

impl Adapters {
    /// The NICs, the draft's uplink selected.
    pub fn new(draft: Box<Draft>, view: &View<'_>) -> Adapters {
        let selected = view.nics.iter().position(|n| n.0 == draft.network.uplink).unwrap_or(0);
        Adapters { selected, draft }
    }
}

impl Screen for Adapters {
    fn title(&self) -> &'static str {
        "Network Adapters"
    }

    fn keys(&self) -> &'static str {
        "<Space> Select  <Enter> OK  <Esc> Back"
    }

    fn key(&mut self, key: Key, cx: &Context<'_>) -> Step {
        match key {
            Key::Esc | Key::Enter => return Step::replace(Network::new(self.draft.clone())),
            // The management network has one uplink: Space makes this NIC the one.
            Key::Space => {
                if let Some(n) = cx.view.nics.get(self.selected) {
                    if self.draft.network.uplink != n.0 {
                        self.draft.network.uplink = n.0.clone();
                        self.draft.changed = true;
                    }
                }
            }
            _ => up_down(&mut self.selected, key, cx.view.nics.len()),
        }
        Step::stay()
    }

    fn body<'a>(&'a self, view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        let mut lines =
            Vec::from([Line::from("The management network's uplink (Space selects):"), Line::from("")]);
        for (i, (name, mac, link)) in view.nics.iter().enumerate() {
            let mark = if *name == self.draft.network.uplink { "[X]" } else { "[ ]" };
            let state = if *link { "Connected" } else { "Disconnected" };
            lines.push(draw::item(format!(" {mark} {name:<8} {mac}  {state:<12} "), i == self.selected));
        }
        lines
    }
}
