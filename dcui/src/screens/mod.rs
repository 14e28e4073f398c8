//! The screens of the DCUI menu (REFERENCE.md 1), one module each: every screen implements [`Screen`],
//! and [`crate::menu::Menu`] shows one at a time, keeps the ones it came from for Esc, and carries
//! out the [`Step`] each key leads to. Drawing helpers they share are in [`draw`].
//!
//! A new screen is a new module here: a type implementing [`Screen`], opened by a [`Step`] from the
//! screen it is reached from.

use crate::menu::{Action, View};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;
use core::panic::{RefUnwindSafe, UnwindSafe};
use ember_hw::keys::Key;
use ratatui::layout::Rect;
use ratatui::text::Line;

pub(crate) mod adapters;
pub(crate) mod apply_network;
pub(crate) mod confirm;
pub(crate) mod customization;
pub(crate) mod draw;
pub(crate) mod keyboard;
pub(crate) mod login;
pub(crate) mod network;
pub(crate) mod network_forms;
pub(crate) mod password;
pub(crate) mod power;
pub(crate) mod support;
pub(crate) mod system_logs;
pub(crate) mod test_network;
pub(crate) mod timeouts;
pub(crate) mod troubleshooting;

/// One screen of the menu: what a key does on it and what it shows inside the frame. (`Any` lets the
/// menu find the login prompt; the other bounds keep [`crate::menu::Menu`] `Send`, `Sync` and
/// unwind-safe.)
pub(crate) trait Screen: Any + Send + Sync + UnwindSafe + RefUnwindSafe {
    /// The title on the frame.
    fn title(&self) -> &'static str;
    /// The key bar at the bottom of the frame.
    fn keys(&self) -> &'static str;
    /// Handles one key (never [`Key::Redraw`]: the menu takes that).
    fn key(&mut self, key: Key, cx: &Context<'_>) -> Step;
    /// The lines inside the frame, `inner` (the menu adds the message line and the key bar).
    fn body<'a>(&'a self, view: &'a View<'a>, inner: Rect) -> Vec<Line<'a>>;
}

/// What a screen sees while it handles a key.
pub(crate) struct Context<'a> {
    /// The host as the kernel shows it (settings, NICs, logs, test results).
    pub view: &'a View<'a>,
    /// The time of the key (ms).
    pub now: u64,
    /// Until when the login prompt is locked (ms; in the past when it is not).
    pub locked_until: u64,
}

/// What a key leads to: which screen shows next, the message under it, what the kernel must do.
pub(crate) struct Step {
    pub to: To,
    /// The one-line message: set when given; otherwise kept on [`To::Stay`] and cleared on any move.
    pub message: Option<String>,
    pub action: Option<Action>,
}

/// Where the menu goes after a key.
pub(crate) enum To {
    /// Stays on this screen.
    Stay,
    /// Opens a screen over this one: Esc on it comes back here.
    Open(Box<dyn Screen>),
    /// Shows a screen in this one's place (Esc on it goes where Esc here went).
    Replace(Box<dyn Screen>),
    /// Back to the screen this one was opened from (the idle screen if none).
    Back,
    /// Logs out: the idle screen.
    Idle,
}

impl Step {
    fn to(to: To) -> Step {
        Step { to, message: None, action: None }
    }

    pub fn stay() -> Step {
        Step::to(To::Stay)
    }

    pub fn open(screen: impl Screen) -> Step {
        Step::to(To::Open(Box::new(screen)))
    }

    pub fn replace(screen: impl Screen) -> Step {
        Step::to(To::Replace(Box::new(screen)))
    }

    pub fn back() -> Step {
        Step::to(To::Back)
    }

    pub fn idle() -> Step {
        Step::to(To::Idle)
    }

    /// Stays, asking the kernel to do `action`.
    pub fn act(action: Action) -> Step {
        Step::stay().with(action)
    }

    /// Also asks the kernel to do `action`.
    pub fn with(self, action: Action) -> Step {
        Step { action: Some(action), ..self }
    }

    /// Also shows `message` (on the screen shown next).
    pub fn say(self, message: impl Into<String>) -> Step {
        Step { message: Some(message.into()), ..self }
    }
}

/// Longest password typed (login, Configure Password).
pub(crate) const MAX_PASSWORD: usize = 128;

/// Typing into a field: printable characters are added (up to `max`), Backspace removes.
pub(crate) fn edit(field: &mut String, key: Key, max: usize) {
    match key {
        Key::Char(c) if field.len() < max => field.push(c),
        Key::Space if field.len() < max => field.push(' '),
        Key::Backspace => {
            field.pop();
        }
        _ => {}
    }
}

/// Scrolling through `len` lines: Up/Down by one, PageUp/PageDown by ten; `scroll` is the line at
/// the bottom (logs) or the top (support information).
pub(crate) fn scroll(scroll: &mut usize, key: Key, len: usize) {
    match key {
        Key::PageUp => *scroll = scroll.saturating_sub(10),
        Key::PageDown => *scroll = (*scroll + 10).min(len.saturating_sub(1)),
        _ => up_down(scroll, key, len),
    }
}

/// Moving through a list of `len` items with Up and Down (other keys do nothing).
pub(crate) fn up_down(selected: &mut usize, key: Key, len: usize) {
    match key {
        Key::Up => *selected = selected.saturating_sub(1),
        Key::Down => *selected = (*selected + 1).min(len.saturating_sub(1)),
        _ => {}
    }
}
