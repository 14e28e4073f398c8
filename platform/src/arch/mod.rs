//! Platform layer (layer 4): the only code that touches hardware directly.
pub mod x86_64;
