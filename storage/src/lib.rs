//! Ember storage formats (layer 1: formats and state machines).
//!
//! Owns every on-disk format that both the appliance and the host tool `ember-image` must agree on:
//! - [`block`]: the [`block::BlockDevice`] interface (layer 2) and an in-memory fake for tests;
//! - [`gpt`]: reading and writing GUID partition tables (UEFI 2.10 section 5.3), with full validation;
//! - [`layout`]: the Ember boot media layout (ESP, boot banks A/B, config store) on top of GPT;
//! - [`fat32`]: writing the FAT32 ESP (8.3 names, no long-name entries);
//! - [`bootcfg`]: the `\EFI\ember\boot.cfg` file and the boot options it carries;
//! - [`config_store`]: the two-slot, power-cut-safe configuration store;
//! - [`datastore`]: the datastore file system (thin files in extents, copy-on-write metadata);
//! - [`disks`]: the host's disks and the datastores on them (scan, create, rename, remove);
//! - [`hostconfig`]: the host configuration model and its stored JSON form;
//! - [`firstboot`]: where a first boot's kickstart comes from (`ks=` sources, include paths);
//! - [`kickstart`]: the kickstart (`ks.cfg`) dialect, parsed and validated;
//! - [`netconfig`]: management network settings and their validation;
//! - [`scsi`]: USB Bulk-Only Transport wrappers and the SCSI commands sent through them;
//! - [`persist`]: finding the boot media among the disks and keeping the host configuration on it;
//! - [`vmdef`]: VM definitions (the JSON file describing a virtual machine).
//!
//! Invariants: no `unsafe`, no globals, no hardware access. Everything read from a disk or a file is
//! validated and turned into an error value naming what is wrong and where; nothing here panics on input.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod block;
pub mod bootcfg;
pub mod config_store;
pub mod datastore;
pub mod disks;
pub mod fat32;
pub mod firstboot;
pub mod gpt;
pub mod hostconfig;
pub mod kickstart;
pub mod layout;
pub mod netconfig;
pub mod persist;
pub mod script;
pub mod scsi;
pub mod vmdef;
