//! The management network settings. The model lives in `ember-storage` (it is part of the stored host
//! configuration and of kickstart files); this module re-exports it for the network stack.
pub use ember_storage::netconfig::*;
