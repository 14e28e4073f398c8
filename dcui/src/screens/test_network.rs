//! Test Management Network: the results of the checks the kernel runs (the gateway and DNS servers
//! pinged, the host name resolved), each OK or FAILED; Enter tests again.

use super::{Context, Screen, Step};
use crate::menu::{Action, View};
use alloc::format;
use alloc::vec::Vec;
use ember_hw::keys::Key;
use ratatui::layout::Rect;
use ratatui::text::Line;

pub(crate) struct TestNetwork;

impl Screen for TestNetwork {
    fn title(&self) -> &'static str {
        "Test Management Network"
    }

    fn keys(&self) -> &'static str {
        "<Enter> Test Again  <Esc> Back"
    }

    fn key(&mut self, key: Key, _cx: &Context<'_>) -> Step {
        match key {
            Key::Esc => Step::back(),
            Key::Enter => Step::act(Action::TestNetwork),
            _ => Step::stay(),
        }
    }

    fn body<'a>(&'a self, view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        let result = |ok: Option<bool>| match ok {
            None => "...",
            Some(true) => "OK.",
            Some(false) => "FAILED.",
        };
        view.tests.iter().map(|c| Line::from(format!("{:<60}{}", c.label, result(c.ok)))).collect()
    }
}
