//! View System Logs: the choice of log (host, kernel, configuration, management agent; see
//! [`crate::logs`]) and the log itself, opened at its newest line and scrolled back from there.

use super::{draw, scroll, up_down, Context, Screen, Step};
use crate::logs::LogKind;
use crate::menu::View;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ember_hw::keys::Key;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};

/// The choice of log.
pub(crate) struct LogChoice {
    selected: usize,
}

impl LogChoice {
    pub fn new() -> LogChoice {
        LogChoice { selected: 0 }
    }

    /// Opens the `i`th log (selecting it here, for when Esc comes back).
    fn open(&mut self, i: usize, view: &View<'_>) -> Step {
        let Some(kind) = LogKind::ALL.get(i) else { return Step::stay() };
        self.selected = i;
        Step::open(Log::new(*kind, view))
    }
}

impl Screen for LogChoice {
    fn title(&self) -> &'static str {
        "View System Logs"
    }

    fn keys(&self) -> &'static str {
        "<1-4> or <Enter> View  <Esc> Back"
    }

    fn key(&mut self, key: Key, cx: &Context<'_>) -> Step {
        match key {
            Key::Esc => Step::back(),
            Key::Enter => self.open(self.selected, cx.view),
            Key::Char(c @ '1'..='4') => self.open((c as u8 - b'1') as usize, cx.view),
            _ => {
                up_down(&mut self.selected, key, LogKind::ALL.len());
                Step::stay()
            }
        }
    }

    fn body<'a>(&'a self, _view: &'a View<'a>, _inner: Rect) -> Vec<Line<'a>> {
        let titles = LogKind::ALL.iter().enumerate();
        titles
            .map(|(i, kind)| draw::item(format!(" {}) {:<52} ", i + 1, kind.title()), i == self.selected))
            .collect()
    }
}

/// One log; `scroll` is the line at the bottom of the screen.
pub(crate) struct Log {
    kind: LogKind,
    scroll: usize,
}

impl Log {
    /// The log at its newest line.
    fn new(kind: LogKind, view: &View<'_>) -> Log {
        Log { kind, scroll: lines(kind, view).count().saturating_sub(1) }
    }
}

/// The lines of the log `kind`.
fn lines<'a>(kind: LogKind, view: &'a View<'a>) -> impl Iterator<Item = &'a String> {
    view.logs.iter().filter(move |l| kind.includes(l))
}

impl Screen for Log {
    fn title(&self) -> &'static str {
        "View System Logs"
    }

    fn keys(&self) -> &'static str {
        "<Up/Down/PgUp/PgDn> Scroll  <Esc> Back"
    }

    fn key(&mut self, key: Key, cx: &Context<'_>) -> Step {
        if key == Key::Esc {
            return Step::back();
        }
        scroll(&mut self.scroll, key, lines(self.kind, cx.view).count());
        Step::stay()
    }

    /// The title, then as many lines as fit ending at `scroll`.
    fn body<'a>(&'a self, view: &'a View<'a>, inner: Rect) -> Vec<Line<'a>> {
        let shown: Vec<&String> = lines(self.kind, view).collect();
        let rows = inner.height.saturating_sub(3) as usize;
        let end = (self.scroll + 1).min(shown.len());
        let start = end.saturating_sub(rows);
        let mut lines = Vec::from([Line::from(Span::styled(self.kind.title(), draw::HIGHLIGHT))]);
        lines.extend(shown[start..end].iter().map(|l| Line::from(l.as_str())));
        lines
    }
}
