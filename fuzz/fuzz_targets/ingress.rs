//! Fuzz target for everything the management network takes from the wire.
//!
//! The first input byte picks the path:
//! - even: the rest is a sequence of frames (2-byte big-endian length, then the frame) delivered to a
//!   running management interface (static 10.0.0.1/24, VLAN 7 when the byte is 2 mod 4) through the
//!   fake NIC, polled with advancing time: VLAN classification, smoltcp's Ethernet/ARP/IPv4/ICMP/UDP/
//!   TCP/DHCP/DNS parsing and the HTTP server's connection handling; and the same frames into the
//!   virtual switch on its own from every kind of port (uplinks, vmk0, access and trunk VM ports)
//!   with policy, link and failover changes, checking that access ports never get tagged frames;
//! - odd: the rest is an HTTP request head and body, parsed and routed through the API (with and
//!   without valid credentials) of a host with a datastore (`datastore1`, holding `iso/a.bin`):
//!   uploads are streamed into it (begun, fed, finished or aborted) and downloads read to the end;
//!   when the byte is 5 mod 8 the rest is also read as an answer to
//!   the kickstart download (with the connection open and closed) and as a URL; when it is 3 mod 8
//!   the rest is also what a TLS server sends an `https://` download (in pieces of 1 to 256 bytes,
//!   the session processing after each); when it is 7 mod 8 the rest is what a client sends the
//!   API's HTTPS server (in the same pieces).
//! Any panic, overflow or out-of-bounds access is a finding.
#![no_main]

#[path = "common/overlay.rs"]
mod overlay;

use ember_net::api::Reply;
use ember_net::api::{self, ApiState, HostFacts};
use ember_net::auth::{PasswordHash, MIN_ITERATIONS};
use ember_net::config::{Ipv4Mode, Ipv6Mode, ManagementConfig};
use ember_net::datastores;
use ember_net::fetch::{self, Progress};
use ember_net::host::{HostState, Persistence};
use ember_net::hostnet::HostNetwork;
use ember_net::http::{parse_request, parse_request_with, Parsed};
use ember_net::mgmt::{ManagedNic, ManagementNetwork};
use ember_net::nic::{FakeNic, Nic};
use ember_storage::block::{BlockDevice, IoError, MemDisk};
use ember_storage::disks::HostDisks;
use ember_storage::hostconfig::HostConfig;
use ember_storage::persist::Disk;
use libfuzzer_sys::fuzz_target;
use overlay::Overlay;
use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::rc::Rc;

fn state(vlan: Option<u16>) -> HostState {
    let mut host = HostConfig::defaults(PasswordHash::new("fuzz-pass", [1; 16], MIN_ITERATIONS).encode());
    host.network = ManagementConfig {
        ipv4: Ipv4Mode::Static { address: Ipv4Addr::new(10, 0, 0, 1), prefix: 24, gateway: None },
        vlan,
        // IPv6 on, so neighbour discovery, router advertisements and SLAAC see the frames too.
        ipv6: Ipv6Mode::Auto,
        ..ManagementConfig::default()
    };
    // One HTTPS key and certificate for the whole run (making one per input would dominate).
    host.tls = Some(identity().stored.clone());
    HostState::new(host, Persistence::None("fuzzing".into()), [2; 32], 3).expect("valid hash")
}

/// A 64 MiB disk with `datastore1` (holding `iso/a.bin`), made once; each input sees it through
/// an overlay that keeps its own writes.
fn datastore_disk() -> &'static MemDisk {
    static DISK: std::sync::OnceLock<MemDisk> = std::sync::OnceLock::new();
    DISK.get_or_init(|| {
        let disk = Shared(Rc::new(RefCell::new(MemDisk::new(512, 64 * 2048))));
        let mut disks = HostDisks::scan(
            vec![Disk::new("vda".into(), "virtio-blk", Box::new(disk.clone()))],
            None,
            1,
            &mut Vec::new(),
        );
        disks.create("datastore1", "vda", false).expect("a datastore");
        disks
            .with("datastore1", |ds, dev| {
                ds.mkdir_all("iso", 1)?;
                let id = ds.create("iso/a.bin", 1)?;
                ds.write(dev, id, 0, &[7u8; 100_000], 1)?;
                ds.commit(dev)
            })
            .expect("mounted")
            .expect("written");
        let made = disk.0.borrow().clone();
        made
    })
}

/// One in-memory disk behind several handles (to take it back from [`HostDisks`]).
#[derive(Clone)]
struct Shared(Rc<RefCell<MemDisk>>);

impl BlockDevice for Shared {
    fn block_size(&self) -> u32 {
        512
    }
    fn num_blocks(&self) -> u64 {
        self.0.borrow().num_blocks()
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.0.borrow_mut().read_blocks(lba, buf)
    }
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.0.borrow_mut().write_blocks(lba, buf)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }
}

fn identity() -> &'static ember_net::tls::server::ServerIdentity {
    static ID: std::sync::OnceLock<ember_net::tls::server::ServerIdentity> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        ember_net::tls::crypto::seed([9; 32]);
        ember_net::tls::server::self_signed("fuzz.example", Some(1_800_000_000)).expect("a certificate")
    })
}

/// Feeds `input` to `take` in pieces of 1 to 256 bytes until it is used up, `take` fails
/// (`None`) or takes nothing.
fn in_pieces(mut input: &[u8], mut take: impl FnMut(&[u8]) -> Option<usize>) {
    let mut piece = 1;
    while !input.is_empty() {
        match take(&input[..piece.min(input.len())]) {
            Some(n) if n > 0 => input = &input[n.min(input.len())..],
            _ => return,
        }
        piece = piece % 256 + 7;
    }
}

/// The virtual switch on its own, fed the same frames from every kind of port: each frame's first
/// byte picks the port (an active and a standby uplink, vmk0 on VLAN 7, VMs on VLAN 0, VLAN 10 and
/// the trunk) and now and then changes a port's policy, link or the failover order; what the ports'
/// owners take is checked: an access port never gets a tagged frame, nothing is larger than the
/// MTU allows.
fn switch_fuzz(frames: &[u8]) {
    use ember_net::vswitch::{PortKind, PortSettings, Security, Shaping, Switch, VLAN_TRUNK};
    let mut sw = Switch::new("vSwitch0", 1500);
    let mac = |n: u8| [0x02, 0x45, 0x4d, 0, 0, n];
    let up0 = sw.add_port(PortKind::Uplink, "vmnic0", mac(1), PortSettings::untagged(), 0);
    let up1 = sw.add_port(PortKind::Uplink, "vmnic1", mac(2), PortSettings::untagged(), 0);
    sw.set_failover_order(&[up0], &[up1]);
    let with_vlan = |vlan| PortSettings { vlan, ..PortSettings::untagged() };
    let vmk = sw.add_port(PortKind::Vmkernel, "vmk0", mac(3), with_vlan(7), 0);
    let a = sw.add_port(PortKind::Vm, "a", mac(4), with_vlan(0), 0);
    let b = sw.add_port(PortKind::Vm, "b", mac(5), with_vlan(10), 0);
    let t = sw.add_port(PortKind::Vm, "t", mac(6), with_vlan(VLAN_TRUNK), 0);
    let ports = [up0, up1, vmk, a, b, t];
    let mut now = 0u64;
    let mut rest = frames;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let take = len.min(rest.len() - 2);
        let (sel, frame) = (rest[2], &rest[3.min(2 + take)..2 + take]);
        rest = &rest[2 + take..];
        now += u64::from(sel) * 997;
        let port = ports[usize::from(sel) % ports.len()];
        match sel >> 5 {
            1 => sw.set_link(port, sel & 8 != 0),
            2 => {
                let security = Security {
                    promiscuous: sel & 1 != 0,
                    mac_changes: sel & 2 != 0,
                    forged_transmits: sel & 4 != 0,
                };
                let shaping = (sel & 8 != 0).then_some(Shaping {
                    average_kbps: u64::from(frame.first().copied().unwrap_or(1)) * 1000,
                    peak_kbps: u64::from(frame.get(1).copied().unwrap_or(0)) * 1000,
                    burst_kib: u64::from(frame.get(2).copied().unwrap_or(0)),
                });
                let vlan = if port == t {
                    VLAN_TRUNK
                } else if port == b {
                    10
                } else {
                    0
                };
                sw.apply_settings(port, PortSettings { vlan, security, shaping }, now);
                sw.set_guest_filter(
                    port,
                    frame.get(..6).and_then(|m| m.try_into().ok()).unwrap_or(mac(4)),
                    sel & 16 != 0,
                );
            }
            3 => sw.set_failover_order(&[up1], &[up0]),
            _ => drop(sw.ingress(port, frame, now)),
        }
        for p in ports {
            while let Some(f) = sw.take(p) {
                let tagged = f.get(12..14) == Some(&[0x81, 0x00]);
                assert!(!tagged || p == up0 || p == up1 || p == t, "a tagged frame reached an access port");
                assert!(f.len() <= 1500 + 14 + 4, "larger than the MTU allows: {}", f.len());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 8 == 5 {
        for closed in [false, true] {
            if let Progress::Body(b) = fetch::parse_response(rest, closed) {
                assert!(b.len() <= rest.len());
            }
        }
        if let Ok(text) = std::str::from_utf8(rest) {
            let _ = fetch::HttpUrl::parse(text).map(|u| u.request("fuzz"));
        }
    }
    if mode % 8 == 3 {
        ember_net::tls::crypto::seed([9; 32]);
        let trust = ember_net::tls::Trust::BuiltIn;
        let config = ember_net::tls::client_config(&trust, 1_800_000_000).expect("TLS configuration");
        let mut session = ember_net::tls::TlsSession::new(
            config,
            &trust,
            "ks.example.test",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            4096,
        )
        .expect("a valid server name");
        in_pieces(rest, |piece| {
            session.process().ok()?;
            let n = session.received(piece);
            let out = session.to_send().len();
            session.sent(out);
            assert!(session.plaintext().len() <= 4096);
            Some(n)
        });
    }
    if mode % 8 == 7 {
        let mut session =
            ember_net::tls::server::TlsServerSession::new(identity().config.clone()).expect("a session");
        in_pieces(rest, |piece| {
            session.process().ok()?;
            let n = session.received(piece);
            let out = session.to_send().len();
            session.sent(out);
            let got = session.take_plaintext(usize::MAX);
            session.write(&got);
            Some(n)
        });
    }
    if mode % 2 == 1 {
        let (mut api_state, mut host) = (ApiState::new(HostFacts::default()), state(None));
        let disk = Disk::new("vda".into(), "virtio-blk", Box::new(Overlay::new(datastore_disk())));
        host.disks = HostDisks::scan(vec![disk], None, 2, &mut Vec::new());
        match parse_request_with(rest, datastores::is_upload) {
            Parsed::Complete(mut req, used) => {
                assert!(used <= rest.len());
                let _ = api::handle(&mut api_state, &mut host, &req, 1_000);
                req.authorization = Some(b"Basic cm9vdDpmdXp6LXBhc3M=".to_vec());
                if let Reply::Download(_, mut d) = api::handle(&mut api_state, &mut host, &req, 2_000) {
                    while !d.done() && d.next(&mut host.disks).is_ok() {}
                }
            }
            Parsed::Streamed(mut req, head, len) => {
                assert!(head <= rest.len());
                let _ =
                    datastores::begin_upload(&mut host, &req, len, 1_000).map(|u| u.abort(&mut host.disks));
                req.authorization = Some(b"Basic cm9vdDpmdXp6LXBhc3M=".to_vec());
                if let Ok(mut u) = datastores::begin_upload(&mut host, &req, len, 2_000) {
                    let body = &rest[head..];
                    match u.feed(&mut host.disks, body) {
                        Ok(n) => {
                            assert!(n <= body.len());
                            if u.done() {
                                let _ = u.finish(&mut host.disks);
                            } else {
                                u.abort(&mut host.disks);
                            }
                        }
                        Err(_) => {}
                    }
                }
            }
            _ => {}
        }
        let _ = parse_request(rest);
        return;
    }
    switch_fuzz(rest);
    let vlan = (mode % 4 == 2).then_some(7);
    let (server_nic, wire) = FakeNic::pair([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 2]);
    let mut nics = HostNetwork::new(vec![ManagedNic {
        name: "vmnic0".into(),
        driver: "fake",
        nic: Box::new(server_nic),
    }]);
    let mut host = state(vlan);
    let mut net = ManagementNetwork::new(&mut nics, ApiState::new(HostFacts::default()), &mut host, 99, 0);
    let mut rest = rest;
    let mut now = 0;
    while rest.len() >= 2 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let take = len.min(rest.len() - 2);
        wire.clone().transmit(&rest[2..2 + take]);
        rest = &rest[2 + take..];
        now += 50;
        net.poll(&mut host, &mut nics, now);
    }
    // Let every timer (SYN, request, idle, closing) run out.
    for step in 1..=8 {
        net.poll(&mut host, &mut nics, now + step * 10_000);
    }
    let _ = wire.drain_sent();
});
