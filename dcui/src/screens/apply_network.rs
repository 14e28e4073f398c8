//! Configure Management Network: Confirm - "Apply changes and restart management network? (Y/N)",
//! asked when Configure Management Network is left with changes.

use super::network::{Draft, Network};
use super::{Context, Screen, Step};
use crate::menu::{Action, View};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use ember_hw::keys::Key;
use ratatui::layout::Rect;
use ratatui::text::Line;

pub(crate) struct ApplyNetwork {
    draft: Box<Draft>,
}

impl ApplyNetwork {
    pub fn new(draft: Box<Draft>) -> ApplyNetwork {
        ApplyNetwork { draft }
    }
}

impl Screen for ApplyNetwork {
    fn title(&self) -> &'static str {
        "Configure Management Network: Confirm"
    }

    fn keys(&self) -> &'static str {
        "<Y> Yes  <N> No  <Esc> Back"
    }

    fn key(&mut self, key: Key, _cx: &Context<'_>) -> Step {
        match key {
            Key::Char('y') | Key::Char('Y') => {
                let (network, dns_search) = (self.draft.network.clone(), self.draft.dns_search.clone());
                Step::back()
                    .say("Management network settings applied; the network restarted.")
                    .with(Action::ApplyNetwork { network, dns_search })
            }
            Key::Char('n') | Key::Char('N') => Step::back().say("Changes discarded."),
            Key::Esc => Step::replace(Network::new(self.draft.clone())),
            _ => Step::stay(),
        }
    }

    fn body<'a>(&'a self, _view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        vec![Line::from("Apply changes and restart management network? (Y/N)")]
    }
}
