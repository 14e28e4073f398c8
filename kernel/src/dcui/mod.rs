//! The Direct Console User Interface (REFERENCE.md 1): the idle screen, the key decoders for serial
//! terminals and local (PS/2, USB) keyboards, and the System Customization / Shut Down menu behind
//! F2 and F12 (see [`menu`] for what this build has).
pub mod idle;
pub mod keyboard;
pub mod keys;
pub mod logs;
pub mod menu;
