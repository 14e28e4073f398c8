//! Authentication Required: the root login in front of System Customization (F2) and Shut Down /
//! Restart (F12). The password is checked by the kernel ([`Action::CheckLogin`]); the menu counts
//! the failures and locks the prompt.

use super::customization::Customization;
use super::draw;
use super::power::Power;
use super::{edit, Context, Screen, Step, MAX_PASSWORD};
use crate::menu::{Action, View, MAX_FAILURES};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use ember_hw::keys::Key;
use ratatui::layout::Rect;
use ratatui::text::Line;

/// Where a good password leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// F2: System Customization.
    Customize,
    /// F12: Shut Down/Restart.
    Power,
}

pub(crate) struct Login {
    after: After,
    password: String,
    /// The password went to the kernel; keys wait for its answer.
    checking: bool,
}

impl Login {
    pub fn new(after: After) -> Login {
        Login { after, password: String::new(), checking: false }
    }

    /// Whether the kernel is checking the password typed.
    pub fn checking(&self) -> bool {
        self.checking
    }

    /// The password was wrong: the prompt again, empty.
    pub fn retry(&mut self) {
        self.password.clear();
        self.checking = false;
    }

    /// The screen a good password opens.
    pub fn signed_in(&self) -> Box<dyn Screen> {
        match self.after {
            After::Customize => Box::new(Customization::new()),
            After::Power => Box::new(Power),
        }
    }
}

impl Screen for Login {
    fn title(&self) -> &'static str {
        "Authentication Required"
    }

    fn keys(&self) -> &'static str {
        "<Enter> OK  <Esc> Cancel"
    }

    fn key(&mut self, key: Key, cx: &Context<'_>) -> Step {
        if self.checking {
            return Step::stay();
        }
        match key {
            Key::Esc => Step::idle(),
            _ if cx.now < cx.locked_until => Step::stay().say(format!(
                "Login locked after {MAX_FAILURES} failures; try again in {} s.",
                (cx.locked_until - cx.now).div_ceil(1000)
            )),
            Key::Enter => {
                self.checking = true;
                let password = core::mem::take(&mut self.password);
                Step::act(Action::CheckLogin(password)).say("Checking...")
            }
            _ => {
                edit(&mut self.password, key, MAX_PASSWORD);
                Step::stay()
            }
        }
    }

    fn body<'a>(&'a self, view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        vec![
            Line::from(format!("Authentication Required on {}", view.hostname)),
            Line::from(""),
            Line::from("Login Name:  [ root ]"),
            Line::from(format!("Password:    [ {:<20} ]", draw::stars(&self.password))),
        ]
    }
}
