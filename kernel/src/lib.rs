//! The host-testable part of the Ember appliance (layers 1 and 3).
//!
//! The appliance binary (`src/main.rs`, built for `x86_64-unknown-uefi`) owns the platform layer - the
//! only place with `unsafe`. Everything in this library is plain logic over values the platform hands
//! in: firmware table decoders, the physical frame allocator, exception report formatting, the DCUI,
//! and the hypervisor's loaders and memory model (`vmm`). It runs under
//! `cargo test -p ember-kernel --lib` on the build host.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod dcui;
pub mod exception;
pub mod hw;
pub mod mm;
pub mod vmm;

/// The Ember version shown on the consoles and in the boot line.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The build id (short git commit of the tree the image was built from).
pub const BUILD_ID: &str = env!("EMBER_BUILD_ID");

/// The one line the serial console prints when the kernel has booted (whole-system tests wait for it).
pub fn boot_line(cpus: usize, usable_bytes: u64) -> alloc::string::String {
    alloc::format!("Ember {VERSION} booted: {cpus} CPUs, {} MiB memory", usable_bytes / (1024 * 1024))
}

#[cfg(test)]
mod tests {
    #[test]
    fn boot_line_format() {
        assert_eq!(
            super::boot_line(4, 512 * 1024 * 1024 - 1),
            alloc::format!("Ember {} booted: 4 CPUs, 511 MiB memory", super::VERSION)
        );
    }
}
