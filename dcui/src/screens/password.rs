//! Configure Password: the new root password, typed twice; the password rules are checked before it
//! is stored ([`Action::SetPassword`]).

use super::{draw, edit, Context, Screen, Step, MAX_PASSWORD};
use crate::menu::{Action, View};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ember_hw::keys::Key;
use ratatui::layout::Rect;
use ratatui::text::Line;

pub(crate) struct Password {
    /// The new password and its confirmation.
    fields: [String; 2],
    field: usize,
}

impl Password {
    pub fn new() -> Password {
        Password { fields: Default::default(), field: 0 }
    }

    /// Enter on the confirmation: the password stored, or both fields again with the reason.
    fn submit(&mut self) -> Step {
        let [new, confirm] = &self.fields;
        let problem = if new != confirm {
            String::from("The passwords do not match.")
        } else if let Err(e) = ember_net::auth::check_password_rules(new) {
            format!("{e}")
        } else {
            return Step::back().say("Password changed.").with(Action::SetPassword(new.clone()));
        };
        *self = Password::new();
        Step::stay().say(problem)
    }
}

impl Screen for Password {
    fn title(&self) -> &'static str {
        "Configure Password"
    }

    fn keys(&self) -> &'static str {
        "<Tab> Next Field  <Enter> OK  <Esc> Cancel"
    }

    fn key(&mut self, key: Key, _cx: &Context<'_>) -> Step {
        match key {
            Key::Esc => return Step::back(),
            Key::Tab | Key::Down | Key::Up => self.field = 1 - self.field,
            Key::Enter if self.field == 0 => self.field = 1,
            Key::Enter => return self.submit(),
            _ => edit(&mut self.fields[self.field], key, MAX_PASSWORD),
        }
        Step::stay()
    }

    fn body<'a>(&'a self, _view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        let mut lines = Vec::from([
            Line::from("Enter a new root password (7 to 128 printable characters)."),
            Line::from(""),
        ]);
        for (i, label) in ["New Password:", "Confirm Password:"].iter().enumerate() {
            lines.push(draw::field(label, 18, &draw::stars(&self.fields[i]), 20, i == self.field));
        }
        lines
    }
}
