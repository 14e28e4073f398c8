//! The Direct Console User Interface (REFERENCE.md 1): the idle screen, the System Customization /
//! Shut Down menu behind F2 and F12 (see [`menu`] for what this build has) and the log views. Keys
//! arrive decoded (`ember_hw::keys`, `ember_hw::keyboard`); the platform's consoles draw what this
//! crate lays out. No `unsafe`; runs under `cargo test`.
//!
//! Every menu screen is a module of `screens` implementing one `Screen` trait: it handles its keys
//! and returns a `Step` (stay, open another screen, go back, log out, with a message or an [`menu::Action`]
//! for the kernel), and lists the lines drawn inside the frame. [`menu::Menu`] is the dispatcher: it
//! keeps the screen shown and those Esc goes back to, and draws the frame, message line and key bar
//! shared by all (`screens::draw`).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod idle;
pub mod logs;
pub mod menu;
mod screens;

/// The one line the serial console prints when the kernel has booted (whole-system tests wait for it).
pub fn boot_line(version: &str, cpus: usize, usable_bytes: u64) -> alloc::string::String {
    alloc::format!("Ember {version} booted: {cpus} CPUs, {} MiB memory", usable_bytes / (1024 * 1024))
}

#[cfg(test)]
mod tests {
    #[test]
    fn boot_line_format() {
        assert_eq!(
            super::boot_line("1.2.3", 4, 512 * 1024 * 1024 - 1),
            "Ember 1.2.3 booted: 4 CPUs, 511 MiB memory"
        );
    }
}
