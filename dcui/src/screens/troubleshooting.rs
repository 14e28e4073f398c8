//! Troubleshooting Options: the local shell and SSH flags, their time-outs, the DCUI idle time-out
//! (all stored; the shell and SSH themselves do not exist yet) and Restart Management Agents.

use super::confirm::Confirm;
use super::timeouts::Timeouts;
use super::{draw, up_down, Context, Screen, Step};
use crate::menu::{Action, View};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ember_hw::keys::Key;
use ratatui::layout::Rect;
use ratatui::text::Line;

/// The Troubleshooting Options items.
const TROUBLESHOOTING_ITEMS: &[&str] = &[
    "Local Shell",
    "SSH",
    "Modify Shell and SSH timeouts",
    "Modify DCUI idle timeout",
    "Restart Management Agents",
];

pub(crate) struct Troubleshooting {
    selected: usize,
}

impl Troubleshooting {
    pub fn new(selected: usize) -> Troubleshooting {
        Troubleshooting { selected }
    }

    /// Enter or Space: the flags flip, the others open.
    fn open(&self, view: &View<'_>) -> Step {
        match self.selected {
            0 => Step::act(Action::SetShell(!view.shell)),
            1 => Step::act(Action::SetSsh(!view.ssh)),
            2 => Step::open(Timeouts::shell(view)),
            3 => Step::open(Timeouts::dcui(view)),
            _ => Step::open(Confirm::RestartAgents),
        }
    }
}

impl Screen for Troubleshooting {
    fn title(&self) -> &'static str {
        "Troubleshooting Options"
    }

    fn keys(&self) -> &'static str {
        "<Up/Down> Select  <Enter> Change  <Esc> Back"
    }

    fn key(&mut self, key: Key, cx: &Context<'_>) -> Step {
        match key {
            Key::Esc => Step::back(),
            Key::Enter | Key::Space => self.open(cx.view),
            _ => {
                up_down(&mut self.selected, key, TROUBLESHOOTING_ITEMS.len());
                Step::stay()
            }
        }
    }

    fn body<'a>(&'a self, view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        let state = |on: bool| if on { "Enabled" } else { "Disabled" };
        let never = |m: u32| if m == 0 { String::from("never") } else { format!("{m} min") };
        let values = [
            state(view.shell).to_string(),
            state(view.ssh).to_string(),
            format!("{} / {}", never(view.shell_timeout), never(view.shell_idle_timeout)),
            never(view.dcui_timeout),
            String::new(),
        ];
        let mut lines: Vec<Line<'a>> = TROUBLESHOOTING_ITEMS
            .iter()
            .zip(values)
            .enumerate()
            .map(|(i, (label, value))| draw::item(format!(" {label:<30} {value:<18} "), i == self.selected))
            .collect();
        lines.push(Line::from(""));
        lines.push(Line::from(
            "Shell, SSH and their timeouts are stored (the availability timeout turns both off \
             again); this version has no shell or SSH service yet.",
        ));
        lines
    }
}
