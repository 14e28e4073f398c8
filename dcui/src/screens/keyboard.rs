//! Configure Keyboard: the layout of the local keyboards, chosen from the kickstart's list.

use super::{draw, up_down, Context, Screen, Step};
use crate::menu::{Action, View};
use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;
use ember_hw::keyboard::Layout;
use ember_hw::keys::Key;
use ember_storage::kickstart::KEYBOARD_LAYOUTS;
use ratatui::layout::Rect;
use ratatui::text::Line;

pub(crate) struct Keyboard {
    selected: usize,
}

impl Keyboard {
    /// The list, the layout in use selected.
    pub fn new(view: &View<'_>) -> Keyboard {
        Keyboard { selected: KEYBOARD_LAYOUTS.iter().position(|k| *k == view.keyboard).unwrap_or(0) }
    }

    /// Enter: the layout selected stored.
    fn choose(&self) -> Step {
        let Some(layout) = KEYBOARD_LAYOUTS.get(self.selected) else { return Step::stay() };
        let message = if Layout::for_name(layout).1 {
            format!("Keyboard layout set to {layout}.")
        } else {
            format!("Layout set to {layout}; no keymap for it yet, keys type as US Default.")
        };
        Step::back().say(message).with(Action::SetKeyboard(layout.to_string()))
    }
}

impl Screen for Keyboard {
    fn title(&self) -> &'static str {
        "Configure Keyboard"
    }

    fn keys(&self) -> &'static str {
        "<Up/Down> Select  <Enter> OK  <Esc> Cancel"
    }

    fn key(&mut self, key: Key, _cx: &Context<'_>) -> Step {
        match key {
            Key::Esc => Step::back(),
            Key::Enter | Key::Space => self.choose(),
            _ => {
                up_down(&mut self.selected, key, KEYBOARD_LAYOUTS.len());
                Step::stay()
            }
        }
    }

    /// As many layouts as fit, the one selected in the middle.
    fn body<'a>(&'a self, view: &'a View<'a>, inner: Rect) -> Vec<Line<'a>> {
        let first = self.selected.saturating_sub(inner.height.saturating_sub(4) as usize / 2);
        let rows = inner.height.saturating_sub(3) as usize;
        let shown = KEYBOARD_LAYOUTS.iter().enumerate().skip(first).take(rows);
        shown
            .map(|(i, k)| {
                let mark = if *k == view.keyboard { "(o)" } else { "( )" };
                draw::item(format!(" {mark} {k:<20} "), i == self.selected)
            })
            .collect()
    }
}
