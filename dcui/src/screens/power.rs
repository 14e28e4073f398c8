//! Shut Down/Restart: the F12 screen (after the root login); F2 shuts the host down, F11 restarts it.

use super::{Context, Screen, Step};
use crate::menu::{Action, View};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use ember_hw::keys::Key;
use ratatui::layout::Rect;
use ratatui::text::Line;

pub(crate) struct Power;

impl Screen for Power {
    fn title(&self) -> &'static str {
        "Shut Down/Restart"
    }

    fn keys(&self) -> &'static str {
        "<F2> Shut Down  <F11> Restart  <Esc> Cancel"
    }

    fn key(&mut self, key: Key, _cx: &Context<'_>) -> Step {
        match key {
            Key::Esc => Step::idle(),
            Key::F(2) => Step::act(Action::Shutdown),
            Key::F(11) => Step::act(Action::Restart),
            _ => Step::stay(),
        }
    }

    fn body<'a>(&'a self, view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        vec![Line::from(format!("Shut down or restart {}.", view.hostname))]
    }
}
