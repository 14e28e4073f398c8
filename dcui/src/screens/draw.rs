//! Drawing the menu's screens: the frame every screen is shown in (title, body, message line, key
//! bar) and the lines the screens are made of (list items, form fields).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget, Wrap};

/// The title and the key bar.
pub(crate) const GREY: Style = Style::new().fg(Color::Black).bg(Color::Gray);
/// The screen.
pub(crate) const YELLOW: Style = Style::new().fg(Color::Black).bg(Color::Yellow);
/// The item or field selected, and the message line.
pub(crate) const HIGHLIGHT: Style =
    Style::new().fg(Color::White).bg(Color::Black).add_modifier(Modifier::BOLD);

/// Clears `area` and draws the frame titled `title`; returns the area inside it.
pub(crate) fn frame(area: Rect, buf: &mut Buffer, title: &str) -> Rect {
    Clear.render(area, buf);
    buf.set_style(area, YELLOW);
    let outer = Block::default().borders(Borders::ALL).title(Span::styled(title, GREY)).style(YELLOW);
    let inner = outer.inner(area);
    outer.render(area, buf);
    inner
}

/// Fills the area inside the frame: the screen's `lines`, a blank line, the message if any, and the
/// key bar on the last row.
pub(crate) fn contents<'a>(
    inner: Rect,
    buf: &mut Buffer,
    mut lines: Vec<Line<'a>>,
    message: Option<&'a str>,
    keys: &str,
) {
    lines.push(Line::from(""));
    if let Some(m) = message {
        lines.push(Line::from(Span::styled(m, HIGHLIGHT)));
    }
    let body = Rect { height: inner.height.saturating_sub(1), ..inner };
    Paragraph::new(lines).wrap(Wrap { trim: false }).style(YELLOW).render(body, buf);
    let bar = Rect { y: inner.y + inner.height.saturating_sub(1), height: inner.height.min(1), ..inner };
    Paragraph::new(keys).style(GREY).render(bar, buf);
}

/// The style of a list item or field: highlighted when selected.
pub(crate) fn style(selected: bool) -> Style {
    if selected {
        HIGHLIGHT
    } else {
        YELLOW
    }
}

/// One list item, highlighted when selected.
pub(crate) fn item<'a>(text: String, selected: bool) -> Line<'a> {
    Line::from(Span::styled(text, style(selected)))
}

/// A menu of `items` (30 columns wide), `selected` highlighted.
pub(crate) fn menu<'a>(items: &[&str], selected: usize) -> Vec<Line<'a>> {
    items.iter().enumerate().map(|(i, text)| item(format!(" {text:<30} "), i == selected)).collect()
}

/// A form field: its label padded to `label_width`, then `[ value ]` with the value padded to
/// `value_width`, highlighted when selected.
pub(crate) fn field<'a>(
    label: &str,
    label_width: usize,
    value: &str,
    value_width: usize,
    selected: bool,
) -> Line<'a> {
    Line::from(vec![
        Span::raw(format!("{label:<label_width$}")),
        Span::styled(format!("[ {value:<value_width$} ]"), style(selected)),
    ])
}

/// A password as typed: one star a character, at most 20.
pub(crate) fn stars(password: &str) -> String {
    "*".repeat(password.len().min(20))
}
