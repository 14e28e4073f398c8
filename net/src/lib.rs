//! Ember networking (layer 1 and 3): the smoltcp-based management interface, DHCP/static/VLAN, the
//! HTTP management API, the virtual switch and the iSCSI initiator will live here.
//!
//! Status: **empty**. Nothing in this crate is implemented yet; the management network is its own
//! issue. The crate exists so the workspace has the layout ARCHITECTURE.md describes.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
