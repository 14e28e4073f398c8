//! Modify Shell and SSH timeouts and Modify DCUI idle timeout (under Troubleshooting Options): forms
//! of whole minutes, 0 for never.

use super::{draw, edit, Context, Screen, Step};
use crate::menu::{Action, View};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use ember_hw::keys::Key;
use ember_storage::hostconfig::MAX_TIMEOUT_MINUTES;
use ratatui::layout::Rect;
use ratatui::text::Line;

/// The time-out forms (minutes): shell/SSH availability and idle, or the DCUI's.
pub(crate) struct Timeouts {
    dcui: bool,
    fields: Vec<String>,
    field: usize,
}

impl Timeouts {
    /// Modify Shell and SSH timeouts, with the stored values.
    pub fn shell(view: &View<'_>) -> Timeouts {
        let fields = vec![view.shell_timeout.to_string(), view.shell_idle_timeout.to_string()];
        Timeouts { dcui: false, fields, field: 0 }
    }

    /// Modify DCUI idle timeout, with the stored value.
    pub fn dcui(view: &View<'_>) -> Timeouts {
        Timeouts { dcui: true, fields: vec![view.dcui_timeout.to_string()], field: 0 }
    }

    fn labels(&self) -> &'static [&'static str] {
        if self.dcui {
            &["DCUI idle timeout (minutes, 0 = never):"]
        } else {
            &["Availability timeout (minutes, 0 = never):", "Idle timeout (minutes, 0 = never):"]
        }
    }

    /// Enter: the time-outs stored, or the field out of range named.
    fn submit(&self) -> Step {
        let mut minutes = Vec::new();
        for (label, text) in self.labels().iter().zip(self.fields.iter()) {
            match text.trim().parse::<u32>() {
                Ok(m) if m <= MAX_TIMEOUT_MINUTES => minutes.push(m),
                _ => {
                    let label = label.trim_end_matches(':');
                    return Step::stay()
                        .say(format!("{label}: whole minutes from 0 (never) to {MAX_TIMEOUT_MINUTES}"));
                }
            }
        }
        let (action, what) = match (self.dcui, minutes.as_slice()) {
            (true, [m, ..]) => (Action::SetDcuiTimeout(*m), "DCUI idle timeout"),
            (false, [availability, idle, ..]) => {
                let action = Action::SetShellTimeouts { availability: *availability, idle: *idle };
                (action, "Shell and SSH timeouts")
            }
            _ => return Step::stay(),
        };
        Step::back().say(format!("{what} set.")).with(action)
    }
}

impl Screen for Timeouts {
    fn title(&self) -> &'static str {
        if self.dcui {
            "Modify DCUI idle timeout"
        } else {
            "Modify Shell and SSH timeouts"
        }
    }

    fn keys(&self) -> &'static str {
        if self.dcui {
            "<Enter> OK  <Esc> Cancel"
        } else {
            "<Tab> Next Field  <Enter> OK  <Esc> Cancel"
        }
    }

    fn key(&mut self, key: Key, _cx: &Context<'_>) -> Step {
        match key {
            Key::Esc => return Step::back(),
            Key::Tab | Key::Down | Key::Up => self.field = (self.field + 1) % self.fields.len(),
            Key::Enter => return self.submit(),
            // Digits only.
            Key::Char(c) if !c.is_ascii_digit() => {}
            _ => edit(&mut self.fields[self.field], key, 4),
        }
        Step::stay()
    }

    fn body<'a>(&'a self, _view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        let mut lines = vec![
            Line::from(if self.dcui {
                "Without a key for this long the console logs out."
            } else {
                "Availability: shell and SSH are turned off this long after being enabled. \
                 Idle: sessions without input are ended."
            }),
            Line::from(""),
        ];
        for (i, label) in self.labels().iter().enumerate() {
            lines.push(draw::field(label, 46, &self.fields[i], 6, i == self.field));
        }
        lines
    }
}
