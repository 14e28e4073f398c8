//! View Support Information: the host's label and value pairs (serial number, versions, ...),
//! scrollable.

use super::{scroll, Context, Screen, Step};
use crate::menu::View;
use alloc::format;
use alloc::vec::Vec;
use ember_hw::keys::Key;
use ratatui::layout::Rect;
use ratatui::text::Line;

/// `scroll` is the pair at the top of the screen.
pub(crate) struct Support {
    scroll: usize,
}

impl Support {
    pub fn new() -> Support {
        Support { scroll: 0 }
    }
}

impl Screen for Support {
    fn title(&self) -> &'static str {
        "View Support Information"
    }

    fn keys(&self) -> &'static str {
        "<Up/Down> Scroll  <Esc> Back"
    }

    fn key(&mut self, key: Key, cx: &Context<'_>) -> Step {
        if key == Key::Esc {
            return Step::back();
        }
        scroll(&mut self.scroll, key, cx.view.support.len());
        Step::stay()
    }

    fn body<'a>(&'a self, view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        view.support.iter().skip(self.scroll).map(|(k, v)| Line::from(format!("{k:<20} {v}"))).collect()
    }
}
