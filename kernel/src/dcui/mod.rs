//! The Direct Console User Interface (REFERENCE.md 1). This build has the idle screen; the menu behind
//! F2/F12 is a later piece of work.
pub mod idle;
