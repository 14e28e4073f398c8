//! Ember's management network (layers 1-3, no `unsafe`, host-tested).
//!
//! - [`nic`]: the `Nic` trait drivers implement, the smoltcp device adapter with 802.1Q tagging, and
//!   an in-memory fake NIC.
//! - [`config`]: the management network settings, their validation, and the boot-option syntax.
//! - [`auth`]: the root password as a salted slow hash, HTTP Basic checking.
//! - [`http`]: HTTP/1.1 request framing with limits, response writing.
//! - [`api`]: the JSON management API over an [`api::ApiState`].
//! - [`vms`], [`datastores`]: the API's VM, disk and datastore resources.
//! - [`fetch`]: the HTTP client formats and retry policy for a first boot's kickstart.
//! - [`tls`]: TLS 1.3 for `https://` kickstarts (rustls over the polled sockets, RustCrypto).
//! - [`firstboot`]: a validated kickstart turned into the host configuration a first boot stores.
//! - [`vswitch`]: the standard virtual switch's forwarding engine (ports, VLANs, security policy,
//!   shaping, uplink failover).
//! - [`hostnet`]: the host's NICs and `vSwitch0`, with the management interface `vmk0` as a port.
//! - [`mgmt`]: the management interface service - smoltcp interface, DHCP/static, DNS, the HTTP
//!   server's connection pool - driven by `poll(now)` from the kernel's management loop.
//!
//! Invariants: nothing here panics on input from the network; every input from outside is bounded
//! (frame size, request head and body size, connection count, time in each connection state).
//!
//! Dependencies: `smoltcp` (TCP/IP, DHCP, DNS), `httparse` (request heads), `serde_json` (JSON in
//! no_std + alloc), `base64` (HTTP Basic), `pbkdf2`/`hmac`/`sha2` (RustCrypto password hashing), `sha-crypt` (RustCrypto; SHA-512 crypt hashes from
//! kickstart `rootpw --iscrypted`), `rustls`/`rustls-webpki`/`webpki-roots` and RustCrypto's
//! `aes-gcm`/`p256`/`p384`/`rsa`/`rand_chacha` (HTTPS kickstarts, see [`tls`]).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod api;
pub mod auth;
pub mod config;
pub mod console;
pub mod datastores;
pub mod fetch;
pub mod firstboot;
pub mod host;
pub mod hostnet;
pub mod http;
pub mod mgmt;
pub mod nic;
pub mod tls;
pub mod vms;
pub mod vmstore;
pub mod vswitch;
