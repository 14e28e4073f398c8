//! The management interface service: one uplink NIC, a smoltcp interface with DHCPv4 or a static
//! address (optionally on an 802.1Q VLAN), a DNS resolver, and the HTTP server for the management API.
//!
//! The kernel's management loop calls [`ManagementNetwork::poll`] with the current time; all work is
//! bounded per call. Changing the configuration (API `PUT`) takes effect after the response has been
//! sent: the interface, its sockets and connections are torn down and rebuilt from the new settings.
//!
//! The API is served over HTTPS on port 443 ([`HTTPS_PORT`], the host's key and certificate from
//! [`ApiState::https`]); port 80 answers every request with a redirect to it and serves nothing
//! else, so credentials never cross the network in clear text. Connections come from a fixed pool
//! of listening TCP sockets ([`HTTP_CONNECTIONS`]); each connection is a small state machine with a
//! deadline in every state, so a silent, slow or half-open client only ever holds its own slot,
//! and only for a bounded time.

use crate::api::{self, ApiState, InterfaceState, InterfaceStatus, NicInfo, Reply};
use crate::config::{Ipv4Mode, Ipv6Mode, ManagementConfig};
use crate::datastores::{self, Download, Upload};
use crate::fetch::{self, FetchError, HttpUrl, Progress};
use crate::host::{HostState, Ticket};
use crate::hostnet::HostNetwork;
use crate::http::{parse_request_with, Parsed, Request, Response, MAX_BODY, MAX_HEAD};
use crate::nic::{Port, PortStats};
use crate::tls::{self, TlsSession, Trust};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, Ipv6Addr};
use ember_hw::nic::mac_string;
pub use ember_hw::nic::ManagedNic;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::dns::{self, GetQueryResultError, QueryHandle};
use smoltcp::socket::{dhcpv4, icmp, tcp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    DhcpOption, DnsQueryType, EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr,
    Ipv4Cidr, Ipv6Cidr,
};

/// ICMP echo identifier of Test Management Network's pings.
const PING_IDENT: u16 = 0x454d;
/// Test Management Network: echo requests sent this many times, one second apart...
const TEST_ROUNDS: u64 = 3;
/// ...and a check without an answer after this long has failed.
pub const TEST_TIMEOUT_MS: u64 = 4_000;

/// One check of Test Management Network (REFERENCE.md 1) and its outcome (`None` while it runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub label: String,
    pub ok: Option<bool>,
}

/// A running Test Management Network: pings of the gateway and DNS servers, the host name resolved.
struct NetTest {
    checks: Vec<Check>,
    /// The address each check pings (`None`: the name resolution).
    targets: Vec<Option<Ipv4Addr>>,
    query: Option<QueryHandle>,
    resolve_started: bool,
    started: u64,
    rounds: u64,
    restarts: u64,
}

/// DHCP option 12, Host Name (RFC 2132 3.14).
const DHCP_OPTION_HOST_NAME: u8 = 12;

/// Simultaneous HTTP connections (further SYNs are refused with RST until a slot frees up).
pub const HTTP_CONNECTIONS: usize = 32;
/// Of those, listening on port 80 (redirects only).
pub const REDIRECT_CONNECTIONS: usize = 8;
/// The API's port.
pub const HTTPS_PORT: u16 = 443;
/// HTTPS connections one client address may hold at once (of 24): the rest stay for others. Many
/// administrators may share one address (NAT), so this is not one.
pub const HTTPS_PER_SOURCE: usize = 16;
/// The port that only redirects to [`HTTPS_PORT`].
pub const HTTP_PORT: u16 = 80;
const TCP_RX_BUFFER: usize = 4096;
const TCP_TX_BUFFER: usize = 8192;
/// A half-open connection (SYN received, no ACK) is dropped after this long.
pub const SYN_TIMEOUT_MS: u64 = 3_000;
/// A request must be complete this long after its first byte (slow-header defence), else 408.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// An idle keep-alive connection is closed after this long.
pub const IDLE_TIMEOUT_MS: u64 = 30_000;
/// A response the client does not read is abandoned after this long without progress.
pub const WRITE_TIMEOUT_MS: u64 = 20_000;
/// A connection stuck in a closing state is aborted after this long.
pub const CLOSING_TIMEOUT_MS: u64 = 10_000;
/// Name resolution gives up after this long.
pub const RESOLVE_TIMEOUT_MS: u64 = 10_000;
/// Delay between accepting a configuration change and applying it (lets the response go out).
pub const APPLY_DELAY_MS: u64 = 500;
/// Listening sockets kept free by recycling TIME-WAIT ones.
const SPARE_LISTENERS: usize = 4;
const MAX_INBUF: usize = MAX_HEAD + MAX_BODY + 1024;

struct Resolving {
    query: QueryHandle,
    name: String,
    deadline: u64,
}

struct Conn {
    handle: SocketHandle,
    /// [`HTTPS_PORT`] (the API) or [`HTTP_PORT`] (redirects).
    port: u16,
    /// The TLS session of an HTTPS connection (made when the connection is established).
    tls: Option<Box<tls::server::TlsServerSession>>,
    last_state: tcp::State,
    state_since: u64,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    close_after: bool,
    request_started: Option<u64>,
    last_progress: u64,
    /// When the answer being sent last moved (received bytes do not count: a client that trickles
    /// bytes in but never reads still times out).
    last_sent: u64,
    resolving: Option<Resolving>,
    /// A request that may change the configuration, held while another change is being saved.
    waiting: Option<Request>,
    /// A change of this connection's being saved: the answer follows when it has ended.
    saving: Option<SavingReply>,
    /// An upload whose body is arriving, and whether the client asked to keep the connection.
    upload: Option<(Upload, bool)>,
    /// A file being sent: the next piece goes out once the previous one has.
    download: Option<Box<Download>>,
}

struct SavingReply {
    ticket: Ticket,
    then: api::AfterSave,
    /// The client asked to keep the connection.
    keep_alive: bool,
}

impl Conn {
    fn reset(&mut self, now: u64) {
        self.tls = None;
        self.inbuf.clear();
        self.out.clear();
        self.out_pos = 0;
        self.close_after = false;
        self.request_started = None;
        self.last_progress = now;
        self.last_sent = now;
        self.resolving = None;
        self.waiting = None;
        self.saving = None;
        // (An upload is never dropped here: its hidden file must be removed, which needs the
        // host; see `serve_http` and `ManagementNetwork::drop_stack`.)
        self.download = None;
    }
}

struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    dns: SocketHandle,
    /// Echo requests and replies of Test Management Network.
    icmp: SocketHandle,
    conns: Vec<Conn>,
    /// The VMs' TCP consoles (opened at the first poll, with the VMs the host has then).
    consoles: Vec<crate::console::ConsoleConn>,
    consoles_open: bool,
    stats: PortStats,
}

/// The management network service: the management interface (`vmk0`) on one of the host's NICs,
/// lent for each call, with the API, the VM consoles and first boot's kickstart download on it.
pub struct ManagementNetwork {
    stack: Option<Stack>,
    /// The API's own state (host facts, NICs as reported, live interface status, a pending change).
    pub api: ApiState,
    /// The management settings the interface runs with now (the configuration's `network`, once
    /// applied).
    running: ManagementConfig,
    log: Vec<String>,
    seed: u64,
    restarts: u64,
    apply_at: Option<u64>,
    had_lease: bool,
    last_link_check: u64,
    /// When the self-signed certificate's expiry was last looked at.
    last_renewal_check: u64,
    /// DHCP Host Name options, one per distinct host name used since boot. The DHCP socket lives in a
    /// `SocketSet<'static>`, so its options must be `'static`: each name is leaked once and reused,
    /// which bounds the memory by the number of distinct names an administrator sets.
    host_name_options: Vec<(String, &'static [DhcpOption<'static>])>,
    /// Uploads whose connections ended with the interface (restart): their hidden files are
    /// removed at the next poll, which has the host.
    abandoned: Vec<Upload>,
    /// A first boot's kickstart being fetched.
    download: Option<KickstartDownload>,
    /// Test Management Network, once started; `test_changed` when a result came in.
    test: Option<NetTest>,
    test_changed: bool,
    /// What the idle screen should say about the first boot, when it changes.
    notice: Option<Option<String>>,
}

/// What an `https://` kickstart download needs from the platform.
#[derive(Debug, Clone)]
pub struct KickstartTls {
    /// The CAs the server's certificate must chain to.
    pub trust: Trust,
    /// The wall clock (seconds since 1970) at `now` = 0 of the management loop's clock, when the
    /// firmware gave one: certificates are checked against it.
    pub boot_unix: Option<i64>,
}

/// A first boot's kickstart download: attempts with back-off until it succeeds or fails finally.
struct KickstartDownload {
    url: HttpUrl,
    tls: Option<KickstartTls>,
    display: String,
    failures: u32,
    attempts: u32,
    next_try: u64,
    /// When the current attempt started.
    attempt_started: u64,
    /// The API's change count when the download started: a change made meanwhile wins over it.
    generation: u64,
    attempt: Option<Attempt>,
}

/// One attempt, on the interface generation (`restarts`) it was started on.
struct Attempt {
    restarts: u64,
    step: Step,
}

enum Step {
    Resolving { query: QueryHandle, deadline: u64 },
    Connecting { socket: SocketHandle, deadline: u64 },
    Receiving { socket: SocketHandle, transport: Transport, deadline: u64 },
}

/// The request and answer of an established connection.
enum Transport {
    Plain { request: Vec<u8>, sent: usize, buf: Vec<u8> },
    Tls(Box<TlsSession>),
}

/// Receive buffer of the download's TCP socket (the answer is drained into memory as it arrives).
const DOWNLOAD_RX_BUFFER: usize = 16 * 1024;

fn instant(ms: u64) -> Instant {
    Instant::from_millis(ms as i64)
}

impl ManagementNetwork {
    /// Builds the service and starts the interface with `host`'s management settings (making or
    /// loading the host's HTTPS identity first). `seed` must be random per boot. The NICs stay the
    /// caller's (the appliance owns them and their switch): every call that needs them borrows
    /// the same `net`.
    pub fn new(
        net: &mut HostNetwork,
        mut api: ApiState,
        host: &mut HostState,
        seed: u64,
        now_ms: u64,
    ) -> Self {
        api.nics = net.nics.iter().map(NicInfo::of).collect();
        host.now_ms = now_ms;
        host.start_https();
        let mut m = ManagementNetwork {
            stack: None,
            api,
            running: host.config.network.clone(),
            log: Vec::new(),
            seed,
            restarts: 0,
            apply_at: None,
            had_lease: false,
            last_link_check: 0,
            last_renewal_check: now_ms,
            host_name_options: Vec::new(),
            abandoned: Vec::new(),
            download: None,
            notice: None,
            test: None,
            test_changed: false,
        };
        m.log.append(&mut host.notes);
        m.refresh_links(net);
        m.start(net, now_ms);
        m
    }

    /// Restart Management Agents (DCUI Troubleshooting Options): the API service starts afresh -
    /// every HTTP connection is reset and its listener reopened, remembered credentials are
    /// forgotten. The configuration, the interface and its address are kept.
    pub fn restart_agents(&mut self, host: &mut HostState, now: u64) {
        let mut dropped = 0;
        if let Some(stack) = self.stack.as_mut() {
            for c in stack.conns.iter_mut() {
                let s = stack.sockets.get_mut::<tcp::Socket>(c.handle);
                if s.state() != tcp::State::Listen {
                    dropped += 1;
                }
                s.abort();
                if let Some((u, _)) = c.upload.take() {
                    u.abort(&mut host.disks);
                }
                c.reset(now);
            }
            crate::console::reset(&mut stack.sockets, &mut stack.consoles);
        }
        host.root.forget();
        self.log.push(format!("management agents restarted: {dropped} API connections dropped"));
    }

    /// The host's VMs changed (`HostState::vms`): each VM's console port listens from the next
    /// poll on (and after every restart of the interface).
    pub fn vms_changed(&mut self) {
        if let Some(stack) = self.stack.as_mut() {
            crate::console::close(&mut stack.sockets, core::mem::take(&mut stack.consoles));
            stack.consoles_open = false;
        }
    }

    /// Takes the log lines produced since the last call.
    pub fn take_log(&mut self) -> Vec<String> {
        core::mem::take(&mut self.log)
    }

    /// Starts fetching a first boot's kickstart from `url` (`http://`, or `https://` with `tls`)
    /// as soon as the management interface has an address; the result is applied and stored
    /// through the API state.
    pub fn fetch_kickstart(
        &mut self,
        host: &HostState,
        url: &str,
        tls: Option<KickstartTls>,
    ) -> Result<(), String> {
        let parsed = HttpUrl::parse(url)?;
        if parsed.tls && tls.is_none() {
            return Err(format!("{url}: no TLS trust settings were given for an https:// URL"));
        }
        if let (true, Some(t)) = (parsed.tls, &tls) {
            self.log.push(format!(
                "first boot: {url}: the server certificate must chain to {}",
                t.trust.describe()
            ));
        }
        self.log.push(format!(
            "first boot: kickstart {url} will be fetched once the management network has an address"
        ));
        self.download = Some(KickstartDownload {
            url: parsed,
            tls,
            display: String::from(url),
            failures: 0,
            attempts: 0,
            next_try: 0,
            attempt_started: 0,
            generation: host.generation,
            attempt: None,
        });
        Ok(())
    }

    /// The idle screen's first-boot notice, when it has changed since the last call.
    pub fn take_notice(&mut self) -> Option<Option<String>> {
        self.notice.take()
    }

    /// Starts Test Management Network: pings the default gateway and the first two DNS servers and
    /// resolves the host name; results come in through [`Self::network_test`].
    pub fn start_network_test(&mut self, now: u64) {
        let status = &self.api.status;
        let mut checks = Vec::new();
        let mut targets = Vec::new();
        if let Some(gw) = status.gateway {
            checks.push(Check { label: format!("Pinging default gateway ({gw})."), ok: None });
            targets.push(Some(gw));
        }
        for (i, d) in status.dns.iter().take(2).enumerate() {
            let which = if i == 0 { "primary" } else { "alternate" };
            checks.push(Check { label: format!("Pinging {which} DNS server ({d})."), ok: None });
            targets.push(Some(*d));
        }
        let name = &self.running.hostname;
        checks.push(Check { label: format!("Resolving hostname ({name})."), ok: None });
        targets.push(None);
        if status.address.is_none() {
            for c in &mut checks {
                c.ok = Some(false);
            }
        }
        self.test = Some(NetTest {
            checks,
            targets,
            query: None,
            resolve_started: false,
            started: now,
            rounds: 0,
            restarts: self.restarts,
        });
        self.test_changed = true;
    }

    /// The checks of the last Test Management Network.
    pub fn network_test(&self) -> &[Check] {
        self.test.as_ref().map_or(&[], |t| &t.checks)
    }

    /// Whether a check's outcome came in since the last call.
    pub fn take_test_changed(&mut self) -> bool {
        core::mem::take(&mut self.test_changed)
    }

    /// Moves Test Management Network on: sends the pings, collects replies and the name lookup.
    fn poll_test(&mut self, now: u64) {
        let (Some(t), Some(stack)) = (self.test.as_mut(), self.stack.as_mut()) else { return };
        if t.checks.iter().all(|c| c.ok.is_some()) {
            return;
        }
        let before: Vec<Option<bool>> = t.checks.iter().map(|c| c.ok).collect();
        let finished = t.restarts != self.restarts || now >= t.started + TEST_TIMEOUT_MS;
        // The name lookup.
        let resolve = t.checks.len() - 1;
        if !t.resolve_started {
            t.resolve_started = true;
            let name = self.running.hostname.clone();
            let dns_socket = stack.sockets.get_mut::<dns::Socket>(stack.dns);
            match dns_socket.start_query(stack.iface.context(), &name, DnsQueryType::A) {
                Ok(q) => t.query = Some(q),
                Err(_) => t.checks[resolve].ok = Some(false),
            }
        }
        if let Some(q) = t.query {
            let dns_socket = stack.sockets.get_mut::<dns::Socket>(stack.dns);
            match dns_socket.get_query_result(q) {
                Ok(addrs) => t.checks[resolve].ok = Some(!addrs.is_empty()),
                Err(GetQueryResultError::Failed) => t.checks[resolve].ok = Some(false),
                Err(GetQueryResultError::Pending) if finished => {
                    dns_socket.cancel_query(q);
                    t.checks[resolve].ok = Some(false);
                }
                Err(GetQueryResultError::Pending) => {}
            }
            if t.checks[resolve].ok.is_some() {
                t.query = None;
            }
        }
        // Echo replies, then the next round of requests.
        let socket = stack.sockets.get_mut::<icmp::Socket>(stack.icmp);
        while let Ok((data, from)) = socket.recv() {
            let Ok(packet) = Icmpv4Packet::new_checked(data) else { continue };
            let Ok(Icmpv4Repr::EchoReply { ident, seq_no, .. }) =
                Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default())
            else {
                continue;
            };
            let i = (seq_no % 16) as usize;
            if ident == PING_IDENT && i < resolve && t.targets[i].map(IpAddress::Ipv4) == Some(from) {
                t.checks[i].ok.get_or_insert(true);
            }
        }
        if t.rounds < TEST_ROUNDS && now >= t.started + t.rounds * 1000 {
            for (i, target) in t.targets.iter().enumerate() {
                let (Some(ip), None) = (target, t.checks[i].ok) else { continue };
                let repr = Icmpv4Repr::EchoRequest {
                    ident: PING_IDENT,
                    seq_no: (t.rounds * 16) as u16 + i as u16,
                    data: b"ember-test",
                };
                let mut bytes = vec![0u8; repr.buffer_len()];
                repr.emit(&mut Icmpv4Packet::new_unchecked(&mut bytes[..]), &ChecksumCapabilities::default());
                let _ = socket.send_slice(&bytes, IpAddress::Ipv4(*ip));
            }
            t.rounds += 1;
        }
        if finished {
            for c in &mut t.checks {
                c.ok.get_or_insert(false);
            }
        }
        if t.checks.iter().map(|c| c.ok).ne(before) {
            self.test_changed = true;
        }
    }

    /// Whether a kickstart download is still going on.
    pub fn downloading(&self) -> bool {
        self.download.is_some()
    }

    /// Frame counters of the current uplink.
    pub fn stats(&self) -> PortStats {
        self.stack.as_ref().map(|s| s.stats).unwrap_or_default()
    }

    /// The address shown on the console: (host name, IPv4 address, whether by DHCP).
    pub fn console_address(&self) -> (String, Option<Ipv4Addr>, bool) {
        (
            self.running.hostname.clone(),
            self.api.status.address.map(|a| a.0),
            matches!(self.running.ipv4, Ipv4Mode::Dhcp),
        )
    }

    fn refresh_links(&mut self, net: &mut HostNetwork) {
        for (i, info) in self.api.nics.iter_mut().enumerate() {
            let up = net.link_up(i);
            if up != info.link && self.last_link_check != 0 {
                self.log.push(format!("{}: link {}", info.name, if up { "up" } else { "down" }));
            }
            info.link = up;
        }
    }

    fn start(&mut self, net: &mut HostNetwork, now: u64) {
        let cfg = self.running.clone();
        self.had_lease = false;
        let found = net.nics.iter().position(|n| n.name == cfg.uplink);
        let Some((uplink, mac)) = found.and_then(|i| Some((i, net.connect_management(i, cfg.vlan)?))) else {
            net.disconnect_management();
            self.log.push(format!(
                "management network: no NIC named {} ({} NICs present); management interface down",
                cfg.uplink,
                net.nics.len()
            ));
            self.api.status =
                InterfaceStatus { state: InterfaceState::NoUplink, ..InterfaceStatus::default() };
            self.drop_stack();
            return;
        };
        let mut stats = PortStats::default();
        let mut iface_cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        self.restarts += 1;
        iface_cfg.random_seed = self.seed ^ self.restarts.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        iface_cfg.slaac = cfg.ipv6 == Ipv6Mode::Auto;
        let mut iface = {
            let Some(mut vmk) = net.vmk() else { return };
            let mut port = Port { nic: &mut vmk, stats: &mut stats };
            Interface::new(iface_cfg, &mut port, instant(now))
        };
        if cfg.ipv6 != Ipv6Mode::Disabled {
            // The link-local address: fe80::/64 with the EUI-64 interface identifier (RFC 4291 2.5.6).
            let link_local = Ipv6Cidr::from_link_prefix(
                &Ipv6Cidr::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 64),
                HardwareAddress::Ethernet(EthernetAddress(mac)),
            );
            iface.update_ip_addrs(|a| {
                if let Some(l) = link_local {
                    let _ = a.push(IpCidr::Ipv6(l));
                }
                if let Ipv6Mode::Static { address, prefix, .. } = cfg.ipv6 {
                    let _ = a.push(IpCidr::Ipv6(Ipv6Cidr::new(address, prefix)));
                }
            });
            if let Ipv6Mode::Static { gateway: Some(gw), .. } = cfg.ipv6 {
                let _ = iface.routes_mut().add_default_ipv6_route(gw);
            }
        }
        let mut sockets = SocketSet::new(Vec::new());
        let mut status = InterfaceStatus::default();
        let dhcp = match cfg.ipv4 {
            Ipv4Mode::Dhcp => {
                let mut s = dhcpv4::Socket::new();
                let mut retry = dhcpv4::RetryConfig::default();
                // Retry renewals every 10 s at least, not only every 60 s, so a returning server is
                // found quickly; the lease timers themselves follow RFC 2131 (T1, T2, expiry).
                retry.min_renew_timeout = Duration::from_secs(10);
                s.set_retry_config(retry);
                s.set_outgoing_options(self.host_name_option(&cfg.hostname));
                Some(sockets.add(s))
            }
            Ipv4Mode::Static { address, prefix, gateway } => {
                iface.update_ip_addrs(|a| {
                    let _ = a.push(IpCidr::Ipv4(Ipv4Cidr::new(address, prefix)));
                });
                if let Some(gw) = gateway {
                    let _ = iface.routes_mut().add_default_ipv4_route(gw);
                }
                status = InterfaceStatus {
                    state: InterfaceState::Configured,
                    address: Some((address, prefix)),
                    gateway,
                    dns: cfg.dns.clone(),
                    ipv6: Vec::new(),
                };
                None
            }
        };
        let servers: Vec<IpAddress> = status.dns.iter().map(|d| IpAddress::Ipv4(*d)).collect();
        let dns = sockets.add(dns::Socket::new(&servers, vec![None, None, None, None]));
        let mut conns = Vec::with_capacity(HTTP_CONNECTIONS);
        for i in 0..HTTP_CONNECTIONS {
            let port = if i < REDIRECT_CONNECTIONS { HTTP_PORT } else { HTTPS_PORT };
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; TCP_RX_BUFFER]),
                tcp::SocketBuffer::new(vec![0; TCP_TX_BUFFER]),
            );
            s.set_nagle_enabled(false);
            s.set_timeout(Some(Duration::from_secs(60)));
            let _ = s.listen(port);
            conns.push(Conn {
                handle: sockets.add(s),
                port,
                tls: None,
                last_state: tcp::State::Listen,
                state_since: now,
                inbuf: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                close_after: false,
                request_started: None,
                last_progress: now,
                last_sent: now,
                resolving: None,
                waiting: None,
                saving: None,
                upload: None,
                download: None,
            });
        }
        let Some(n) = net.nics.get(uplink) else { return };
        let mode = match cfg.ipv4 {
            Ipv4Mode::Dhcp => String::from("DHCP"),
            Ipv4Mode::Static { address, prefix, gateway } => format!(
                "static {address}/{prefix}{}",
                gateway.map(|g| format!(" gateway {g}")).unwrap_or_default()
            ),
        };
        let v6 = match cfg.ipv6 {
            Ipv6Mode::Disabled => String::new(),
            Ipv6Mode::Auto => String::from(", IPv6 automatic (link-local, router advertisements)"),
            Ipv6Mode::Static { address, prefix, gateway } => format!(
                ", IPv6 static {address}/{prefix}{}",
                gateway.map(|g| format!(" gateway {g}")).unwrap_or_default()
            ),
        };
        self.log.push(format!(
            "management network: {} ({}, MAC {}), {}{v6}{}, host name {}",
            n.name,
            n.driver,
            mac_string(&mac),
            mode,
            cfg.vlan.map(|v| format!(", VLAN {v}")).unwrap_or_default(),
            cfg.hostname
        ));
        status.ipv6 = ipv6_cidrs(&iface).collect();
        self.api.status = status;
        let mut ping = icmp::Socket::new(
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 2048]),
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 2048]),
        );
        let _ = ping.bind(icmp::Endpoint::Ident(PING_IDENT));
        let icmp = sockets.add(ping);
        self.stack = Some(Stack {
            iface,
            sockets,
            dhcp,
            dns,
            icmp,
            conns,
            consoles: Vec::new(),
            consoles_open: false,
            stats,
        });
    }

    fn host_name_option(&mut self, name: &str) -> &'static [DhcpOption<'static>] {
        if let Some((_, o)) = self.host_name_options.iter().find(|(n, _)| n == name) {
            return o;
        }
        let data: &'static [u8] = Box::leak(name.as_bytes().to_vec().into_boxed_slice());
        let option: &'static [DhcpOption<'static>] =
            Box::leak(vec![DhcpOption { kind: DHCP_OPTION_HOST_NAME, data }].into_boxed_slice());
        self.host_name_options.push((String::from(name), option));
        option
    }

    /// Ends the interface and its connections (uploads are kept for removal at the next poll).
    fn drop_stack(&mut self) {
        if let Some(mut stack) = self.stack.take() {
            self.abandoned.extend(stack.conns.iter_mut().filter_map(|c| c.upload.take()).map(|(u, _)| u));
        }
    }

    /// Stops the interface and starts it again with the current configuration.
    pub fn restart(&mut self, net: &mut HostNetwork, now: u64) {
        self.log.push(String::from("management network: restarting"));
        self.drop_stack();
        self.start(net, now);
    }

    /// Replaces the configuration (already validated) and restarts the interface.
    pub fn reconfigure(&mut self, net: &mut HostNetwork, cfg: ManagementConfig, now: u64) {
        self.running = cfg;
        self.api.pending = None;
        self.apply_at = None;
        self.restart(net, now);
    }

    /// Does all pending network work. Returns true if anything happened (frames moved, requests
    /// served), so the caller can keep polling instead of sleeping.
    pub fn poll(&mut self, host: &mut HostState, net: &mut HostNetwork, now: u64) -> bool {
        host.now_ms = now;
        for u in self.abandoned.drain(..) {
            u.abort(&mut host.disks);
        }
        tls::server::set_clock(host.unix_now().unwrap_or(tls::server::JAN_2025.saturating_add(now / 1000)));
        if now.saturating_sub(self.last_renewal_check) >= 3_600_000 && !host.saving() {
            self.last_renewal_check = now;
            host.renew_https_if_due();
        }
        if !host.notes.is_empty() {
            self.log.append(&mut host.notes);
        }
        if now.saturating_sub(self.last_link_check) >= 1000 {
            self.refresh_links(net);
            self.api.switches = net.to_json();
            self.last_link_check = now.max(1);
        }
        // The configuration's management settings changed (through the API, the DCUI or a
        // kickstart): the interface restarts with them, a moment later, so that the answer to the
        // change gets out first.
        let wanted = (host.config.network != self.running).then_some(&host.config.network);
        if self.api.pending.as_ref() != wanted {
            self.api.pending = wanted.cloned();
        }
        if self.api.pending.is_some() && self.apply_at.is_none() {
            self.apply_at = Some(now + APPLY_DELAY_MS);
        }
        // Not while a change is being saved or waits for that: the restart would cut its client
        // off before the answer.
        let changes_in_flight = host.saving()
            || self
                .stack
                .as_ref()
                .is_some_and(|s| s.conns.iter().any(|c| c.waiting.is_some() || c.saving.is_some()));
        if let Some(at) = self.apply_at.filter(|_| !changes_in_flight) {
            if now >= at {
                if let Some(cfg) = self.api.pending.take() {
                    self.log.push(String::from("management network: applying the new settings"));
                    self.reconfigure(net, cfg, now);
                }
                self.apply_at = None;
            }
        }
        let configured_dns = self.running.dns.clone();
        let Some(stack) = self.stack.as_mut() else { return false };
        // VMs were added, changed or removed through the API: their console ports follow.
        if host.vms_changed {
            host.vms_changed = false;
            crate::console::close(&mut stack.sockets, core::mem::take(&mut stack.consoles));
            stack.consoles_open = false;
        }
        if !stack.consoles_open {
            stack.consoles = crate::console::open(&mut stack.sockets, &*host.vms, &mut self.log);
            stack.consoles_open = true;
        }
        // Frames from the uplink through the switch to vmk0, the stack's work, and what it sent
        // out through the switch again.
        let mut busy = net.pump(now);
        let Some(mut vmk) = net.vmk() else { return busy };
        let mut port = Port { nic: &mut vmk, stats: &mut stack.stats };
        let before = port.stats.rx_frames + port.stats.tx_frames;
        busy |= stack.iface.poll(instant(now), &mut port, &mut stack.sockets) != PollResult::None;
        if let Some(h) = stack.dhcp {
            handle_dhcp(stack, h, &mut self.api, &configured_dns, &mut self.had_lease, &mut self.log);
        }
        busy |= serve_http(stack, &mut self.api, host, &self.running, now);
        busy |= crate::console::serve(
            &mut stack.sockets,
            &mut stack.consoles,
            &mut *host.vms,
            &mut host.root,
            host.https.as_ref().map(|h| &h.config),
            now,
        );
        busy |= self.poll_download(host, now);
        self.poll_test(now);
        let Some(stack) = self.stack.as_mut() else { return busy };
        let Some(mut vmk) = net.vmk() else { return busy };
        let mut port = Port { nic: &mut vmk, stats: &mut stack.stats };
        busy |= stack.iface.poll(instant(now), &mut port, &mut stack.sockets) != PollResult::None;
        busy |= net.pump(now);
        // Router advertisements add and expire addresses: keep the status current (no allocation
        // unless it changed).
        if !ipv6_cidrs(&stack.iface).eq(self.api.status.ipv6.iter().copied()) {
            self.api.status.ipv6 = ipv6_cidrs(&stack.iface).collect();
            let shown: Vec<String> = self.api.status.ipv6.iter().map(|(a, p)| format!("{a}/{p}")).collect();
            self.log.push(format!("management network: IPv6 addresses now {}", shown.join(", ")));
        }
        busy || stack.stats.rx_frames + stack.stats.tx_frames != before
    }
}

/// The interface's IPv6 addresses and prefix lengths.
fn ipv6_cidrs(iface: &Interface) -> impl Iterator<Item = (Ipv6Addr, u8)> + '_ {
    iface.ip_addrs().iter().filter_map(|c| match c {
        IpCidr::Ipv6(c) => Some((c.address(), c.prefix_len())),
        _ => None,
    })
}

impl ManagementNetwork {
    /// Moves the kickstart download on: one step per call, never blocking.
    fn poll_download(&mut self, host: &mut HostState, now: u64) -> bool {
        let Some(d) = self.download.as_mut() else { return false };
        if host.generation != d.generation {
            self.log.push(format!(
                "first boot: kickstart {} abandoned: the configuration was changed through the API",
                d.display
            ));
            self.download = None;
            self.notice = Some(None);
            return false;
        }
        let Some(stack) = self.stack.as_mut() else { return false };
        // An attempt does not survive a restart of the interface (its sockets are gone).
        if d.attempt.as_ref().is_some_and(|a| a.restarts != self.restarts) {
            d.attempt = None;
        }
        if self.api.status.state != InterfaceState::Configured {
            if let Some(a) = d.attempt.take() {
                abandon(stack, a.step);
            }
            return false;
        }
        let step = match d.attempt.take() {
            Some(a) => a.step,
            None if now < d.next_try => return false,
            None => {
                d.attempts += 1;
                d.attempt_started = now;
                match start_attempt(stack, d, now) {
                    Ok(step) => step,
                    Err(e) => return self.download_failed(e, now),
                }
            }
        };
        match advance(stack, d, step, now) {
            Ok(Some(step)) => {
                d.attempt = Some(Attempt { restarts: self.restarts, step });
                false
            }
            Ok(None) => false,
            Err(Ok(body)) => self.download_done(host, body, now),
            Err(Err(e)) => self.download_failed(e, now),
        }
    }

    fn download_failed(&mut self, e: FetchError, now: u64) -> bool {
        let Some(d) = self.download.as_mut() else { return false };
        match e {
            FetchError::Retry(why) => {
                d.failures += 1;
                let wait = fetch::backoff_ms(d.failures);
                d.next_try = now + wait;
                self.log.push(format!(
                    "first boot: kickstart {}: attempt {} failed: {why}; next attempt in {wait} ms",
                    d.display, d.attempts
                ));
            }
            FetchError::Final(why) => {
                let display = d.display.clone();
                self.first_boot_failed(format!("kickstart {display}: {why}"));
            }
        }
        true
    }

    fn first_boot_failed(&mut self, what: String) {
        self.log.push(format!("ERROR: first boot: {what}"));
        self.log.push(String::from(
            "ERROR: first boot: nothing applied or stored; running on the built-in configuration",
        ));
        self.notice = Some(Some(format!(
            "First boot configuration failed: {what}. Nothing was applied; the host runs on the built-in configuration."
        )));
        self.download = None;
    }

    fn download_done(&mut self, host: &mut HostState, body: Vec<u8>, now: u64) -> bool {
        let Some(d) = self.download.take() else { return false };
        let text = match String::from_utf8(body) {
            Ok(t) => t,
            Err(_) => {
                self.first_boot_failed(format!("kickstart {}: the answer is not UTF-8 text", d.display));
                return true;
            }
        };
        self.log.push(format!(
            "first boot: kickstart {} fetched ({} bytes, attempt {}, {} ms)",
            d.display,
            text.len(),
            d.attempts,
            now.saturating_sub(d.attempt_started)
        ));
        match host.apply_kickstart(&d.display, &text, &self.api.nics) {
            Ok(notes) => {
                // A new management network follows from the configuration (see `poll`).
                for n in notes {
                    self.log.push(format!("first boot: kickstart {}: {n}", d.display));
                }
                let stored = host.store_json();
                self.log.push(format!(
                    "first boot: kickstart {} applied{}",
                    d.display,
                    match stored["sequence"].as_u64() {
                        Some(seq) => format!(" and stored (sequence {seq})"),
                        None => String::from(" (not stored: no configuration store)"),
                    }
                ));
                self.notice = Some(None);
            }
            Err(e) => self.first_boot_failed(format!("kickstart {}: {e}", d.display)),
        }
        true
    }
}

/// Starts an attempt: a name lookup, or straight to connecting for an address.
fn start_attempt(stack: &mut Stack, d: &KickstartDownload, now: u64) -> Result<Step, FetchError> {
    if let Ok(ip) = d.url.host.parse::<Ipv4Addr>() {
        return connect(stack, d, ip, now);
    }
    let dns_socket = stack.sockets.get_mut::<dns::Socket>(stack.dns);
    match dns_socket.start_query(stack.iface.context(), &d.url.host, DnsQueryType::A) {
        Ok(query) => Ok(Step::Resolving { query, deadline: now + RESOLVE_TIMEOUT_MS }),
        Err(e) => Err(FetchError::Retry(format!("cannot resolve {}: {e}", d.url.host))),
    }
}

fn connect(stack: &mut Stack, d: &KickstartDownload, ip: Ipv4Addr, now: u64) -> Result<Step, FetchError> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; DOWNLOAD_RX_BUFFER]),
        tcp::SocketBuffer::new(vec![0; 2048]),
    );
    s.set_timeout(Some(Duration::from_secs(30)));
    let local_port = 49152 + (d.attempts % 16000) as u16;
    s.connect(stack.iface.context(), (IpAddress::Ipv4(ip), d.url.port), local_port)
        .map_err(|e| FetchError::Retry(format!("cannot connect to {ip}:{}: {e}", d.url.port)))?;
    Ok(Step::Connecting { socket: stack.sockets.add(s), deadline: now + fetch::CONNECT_TIMEOUT_MS })
}

/// Drops an attempt's socket or query.
fn abandon(stack: &mut Stack, step: Step) {
    match step {
        Step::Resolving { query, .. } => stack.sockets.get_mut::<dns::Socket>(stack.dns).cancel_query(query),
        Step::Connecting { socket, .. } | Step::Receiving { socket, .. } => {
            stack.sockets.get_mut::<tcp::Socket>(socket).abort();
            stack.sockets.remove(socket);
        }
    }
}

/// One step of an attempt: `Ok(Some(step))` to continue, `Err(Ok(body))` when the kickstart has
/// arrived, `Err(Err(e))` when the attempt failed (its socket is gone then).
#[allow(clippy::type_complexity)]
fn advance(
    stack: &mut Stack,
    d: &KickstartDownload,
    step: Step,
    now: u64,
) -> Result<Option<Step>, Result<Vec<u8>, FetchError>> {
    let fail = |stack: &mut Stack, step: Step, e: FetchError| {
        abandon(stack, step);
        Err(Err(e))
    };
    match step {
        Step::Resolving { query, deadline } => {
            let dns_socket = stack.sockets.get_mut::<dns::Socket>(stack.dns);
            match dns_socket.get_query_result(query) {
                Err(GetQueryResultError::Pending) if now < deadline => {
                    Ok(Some(Step::Resolving { query, deadline }))
                }
                Err(GetQueryResultError::Pending) => {
                    dns_socket.cancel_query(query);
                    Err(Err(FetchError::Retry(format!("no DNS answer for {} within 10 s", d.url.host))))
                }
                Err(GetQueryResultError::Failed) => {
                    Err(Err(FetchError::Retry(format!("the DNS servers gave no address for {}", d.url.host))))
                }
                Ok(addrs) => {
                    let ip = addrs.iter().find_map(|a| match a {
                        IpAddress::Ipv4(v4) => Some(*v4),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    });
                    match ip {
                        Some(ip) => connect(stack, d, ip, now).map(Some).map_err(Err),
                        None => Err(Err(FetchError::Retry(format!("no IPv4 address for {}", d.url.host)))),
                    }
                }
            }
        }
        Step::Connecting { socket, deadline } => {
            let state = stack.sockets.get::<tcp::Socket>(socket).state();
            match state {
                tcp::State::Established => {
                    let request = d.url.request(concat!("Ember/", env!("CARGO_PKG_VERSION")));
                    match transport(d, request, now) {
                        Ok(transport) => Ok(Some(Step::Receiving {
                            socket,
                            transport,
                            deadline: now + fetch::RESPONSE_TIMEOUT_MS,
                        })),
                        Err(e) => fail(stack, Step::Connecting { socket, deadline }, e),
                    }
                }
                tcp::State::Closed | tcp::State::TimeWait => fail(
                    stack,
                    Step::Connecting { socket, deadline },
                    FetchError::Retry(format!(
                        "connection to {}:{} refused or reset",
                        d.url.host, d.url.port
                    )),
                ),
                _ if now >= deadline => fail(
                    stack,
                    Step::Connecting { socket, deadline },
                    FetchError::Retry(format!("no connection to {}:{} within 10 s", d.url.host, d.url.port)),
                ),
                _ => Ok(Some(Step::Connecting { socket, deadline })),
            }
        }
        Step::Receiving { socket, mut transport, mut deadline } => {
            let s = stack.sockets.get_mut::<tcp::Socket>(socket);
            let (moved, closed) = match exchange(s, &mut transport) {
                Ok(r) => r,
                Err(e) => return fail(stack, Step::Receiving { socket, transport, deadline }, e),
            };
            if moved {
                deadline = now + fetch::RESPONSE_TIMEOUT_MS;
            }
            let progress = match &transport {
                Transport::Plain { buf, .. } => fetch::parse_response(buf, closed),
                Transport::Tls(t) => fetch::parse_response(t.plaintext(), closed),
            };
            let step = Step::Receiving { socket, transport, deadline };
            match progress {
                Progress::Incomplete if now >= deadline => {
                    fail(stack, step, FetchError::Retry(String::from("no complete answer within 30 s")))
                }
                Progress::Incomplete => Ok(Some(step)),
                Progress::Body(body) => {
                    abandon(stack, step);
                    Err(Ok(body))
                }
                Progress::Failed(e) => fail(stack, step, e),
            }
        }
    }
}

/// Most bytes of answer kept: the largest kickstart, its response head, and one byte to tell
/// "too large".
const ANSWER_LIMIT: usize = ember_storage::kickstart::MAX_KICKSTART_BYTES + fetch::MAX_RESPONSE_HEAD + 1;

/// The transport for an established connection: plain, or a TLS session for `https://`.
fn transport(d: &KickstartDownload, request: Vec<u8>, now: u64) -> Result<Transport, FetchError> {
    if !d.url.tls {
        return Ok(Transport::Plain { request, sent: 0, buf: Vec::new() });
    }
    let Some(t) = &d.tls else {
        return Err(FetchError::Final(String::from("no TLS trust settings for an https:// URL")));
    };
    let Some(boot) = t.boot_unix else {
        return Err(FetchError::Final(String::from(
            "the firmware gave no wall-clock time, so the server certificate's validity cannot be checked",
        )));
    };
    let unix = u64::try_from(boot).unwrap_or(0) + now / 1000;
    let config = tls::client_config(&t.trust, unix).map_err(FetchError::Final)?;
    TlsSession::new(config, &t.trust, &d.url.host, request, ANSWER_LIMIT).map(|s| Transport::Tls(Box::new(s)))
}

/// Moves bytes between the socket and the transport. Returns whether anything moved and whether
/// the answer is complete as far as the connection goes (closed).
fn exchange(s: &mut tcp::Socket, transport: &mut Transport) -> Result<(bool, bool), FetchError> {
    let mut moved = false;
    match transport {
        Transport::Plain { request, sent, buf } => {
            if *sent < request.len() && s.can_send() {
                *sent += s.send_slice(&request[*sent..]).unwrap_or(0);
                moved = true;
            }
            while s.can_recv() && buf.len() < ANSWER_LIMIT {
                let n = s
                    .recv(|data| {
                        let n = data.len().min(ANSWER_LIMIT - buf.len());
                        buf.extend_from_slice(&data[..n]);
                        (n, n)
                    })
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                moved = true;
            }
            Ok((moved, !s.may_recv()))
        }
        Transport::Tls(t) => {
            while s.can_recv() && t.room() > 0 {
                let n = s
                    .recv(|data| {
                        let n = t.received(data);
                        (n, n)
                    })
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                moved = true;
            }
            t.process()?;
            if !t.to_send().is_empty() && s.can_send() {
                let n = s.send_slice(t.to_send()).unwrap_or(0);
                t.sent(n);
                moved |= n > 0;
            }
            let tcp_closed = !s.may_recv();
            if tcp_closed && !t.handshake_done() {
                return Err(FetchError::Retry(String::from(
                    "the server closed the connection during the TLS handshake",
                )));
            }
            Ok((moved, t.closed() || tcp_closed))
        }
    }
}

fn handle_dhcp(
    stack: &mut Stack,
    h: SocketHandle,
    api: &mut ApiState,
    configured_dns: &[Ipv4Addr],
    had_lease: &mut bool,
    log: &mut Vec<String>,
) {
    // Copy the event out: it borrows the socket set.
    let event = match stack.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
        None => None,
        Some(dhcpv4::Event::Configured(c)) => Some(Some((
            c.address,
            c.router,
            c.server.address,
            c.dns_servers.iter().copied().collect::<Vec<_>>(),
        ))),
        Some(dhcpv4::Event::Deconfigured) => Some(None),
    };
    match event {
        None => {}
        Some(Some((address, router, server, lease_dns))) => {
            // The lease replaces the IPv4 address; IPv6 addresses stay.
            stack.iface.update_ip_addrs(|a| {
                a.retain(|c| !matches!(c, IpCidr::Ipv4(_)));
                let _ = a.push(IpCidr::Ipv4(address));
            });
            stack.iface.routes_mut().remove_default_ipv4_route();
            if let Some(r) = router {
                let _ = stack.iface.routes_mut().add_default_ipv4_route(r);
            }
            let dns = if configured_dns.is_empty() { lease_dns } else { configured_dns.to_vec() };
            let servers: Vec<IpAddress> = dns.iter().map(|d| IpAddress::Ipv4(*d)).collect();
            stack.sockets.get_mut::<dns::Socket>(stack.dns).update_servers(&servers);
            log.push(format!(
                "DHCP lease {}/{} from {}, gateway {}, DNS {}",
                address.address(),
                address.prefix_len(),
                server,
                router.map(|r| format!("{r}")).unwrap_or_else(|| String::from("none")),
                if dns.is_empty() {
                    String::from("none")
                } else {
                    dns.iter().map(|d| format!("{d}")).collect::<Vec<_>>().join(", ")
                }
            ));
            api.status = InterfaceStatus {
                state: InterfaceState::Configured,
                address: Some((address.address(), address.prefix_len())),
                gateway: router,
                dns,
                ipv6: core::mem::take(&mut api.status.ipv6),
            };
            *had_lease = true;
        }
        Some(None) => {
            stack.iface.update_ip_addrs(|a| a.retain(|c| !matches!(c, IpCidr::Ipv4(_))));
            stack.iface.routes_mut().remove_default_ipv4_route();
            if *had_lease {
                log.push(String::from(
                    "DHCP lease lost: it expired without renewal; management interface has no address, asking again",
                ));
                api.status = InterfaceStatus {
                    state: InterfaceState::LeaseLost,
                    ipv6: core::mem::take(&mut api.status.ipv6),
                    ..InterfaceStatus::default()
                };
            } else {
                api.status = InterfaceStatus {
                    ipv6: core::mem::take(&mut api.status.ipv6),
                    ..InterfaceStatus::default()
                };
            }
        }
    }
}

/// Runs every HTTP connection's state machine once. Returns true if any made progress.
fn serve_http(
    stack: &mut Stack,
    api: &mut ApiState,
    host: &mut HostState,
    running: &ManagementConfig,
    now: u64,
) -> bool {
    let mut busy = false;
    // Listeners per port ([HTTP, HTTPS]). Connections waiting for a peer that never acknowledges
    // the close are recycled when a port's free slots run short.
    let mut listening = [0usize; 2];
    let mut oldest_closing: [Option<(u64, SocketHandle)>; 2] = [None, None];
    let mut conns = core::mem::take(&mut stack.conns);
    // Open HTTPS connections by client address (for the per-source limit).
    let mut per_source: Vec<(IpAddress, usize)> = Vec::new();
    for c in conns.iter().filter(|c| c.port == HTTPS_PORT && c.tls.is_some()) {
        if let Some(e) = stack.sockets.get::<tcp::Socket>(c.handle).remote_endpoint() {
            match per_source.iter_mut().find(|(a, _)| *a == e.addr) {
                Some((_, n)) => *n += 1,
                None => per_source.push((e.addr, 1)),
            }
        }
    }
    for c in conns.iter_mut() {
        let state = stack.sockets.get::<tcp::Socket>(c.handle).state();
        if state != c.last_state {
            c.last_state = state;
            c.state_since = now;
            if matches!(state, tcp::State::Established) {
                c.reset(now);
                if c.port == HTTPS_PORT {
                    let s = stack.sockets.get_mut::<tcp::Socket>(c.handle);
                    let open =
                        s.remote_endpoint().and_then(|e| per_source.iter_mut().find(|(a, _)| *a == e.addr));
                    match open {
                        // This client holds its share already: the others' slots stay free.
                        Some((_, n)) if *n >= HTTPS_PER_SOURCE => s.abort(),
                        open => match host
                            .https
                            .as_ref()
                            .map(|h| tls::server::TlsServerSession::new(h.config.clone()))
                        {
                            Some(Ok(t)) => {
                                c.tls = Some(Box::new(t));
                                match (open, s.remote_endpoint()) {
                                    (Some((_, n)), _) => *n += 1,
                                    (None, Some(e)) => per_source.push((e.addr, 1)),
                                    (None, None) => {}
                                }
                            }
                            // No certificate (no random source at boot): nothing can be served.
                            _ => s.abort(),
                        },
                    }
                }
            }
        }
        if !matches!(state, tcp::State::Established | tcp::State::CloseWait) {
            // The connection went away: an upload it carried is removed, a download dropped.
            if let Some((u, _)) = c.upload.take() {
                u.abort(&mut host.disks);
            }
            c.download = None;
        }
        let kind = usize::from(c.port == HTTPS_PORT);
        let age = now.saturating_sub(c.state_since);
        match state {
            tcp::State::Closed => {
                c.reset(now);
                let s = stack.sockets.get_mut::<tcp::Socket>(c.handle);
                let _ = s.listen(c.port);
                listening[kind] += 1;
            }
            tcp::State::Listen => listening[kind] += 1,
            tcp::State::SynReceived | tcp::State::SynSent => {
                if age > SYN_TIMEOUT_MS {
                    stack.sockets.get_mut::<tcp::Socket>(c.handle).abort();
                }
            }
            tcp::State::TimeWait => {
                // The server closed first (it answered `Connection: close`); the exchange is complete.
                // TIME-WAIT would hold a pool slot for 10 s, refusing new clients, so the slot is
                // returned at once (RFC 6191 lets a listener reuse such a connection as well).
                stack.sockets.get_mut::<tcp::Socket>(c.handle).abort();
            }
            tcp::State::FinWait1 | tcp::State::FinWait2 | tcp::State::Closing | tcp::State::LastAck => {
                if age > CLOSING_TIMEOUT_MS {
                    stack.sockets.get_mut::<tcp::Socket>(c.handle).abort();
                } else if oldest_closing[kind].is_none_or(|(t, _)| c.state_since < t) {
                    oldest_closing[kind] = Some((c.state_since, c.handle));
                }
            }
            tcp::State::Established | tcp::State::CloseWait => {
                busy |= serve_connection(stack, c, api, host, running, now, state);
            }
        }
    }
    stack.conns = conns;
    for kind in 0..2 {
        if listening[kind] < SPARE_LISTENERS {
            if let Some((_, h)) = oldest_closing[kind] {
                stack.sockets.get_mut::<tcp::Socket>(h).abort();
            }
        }
    }
    busy
}

fn serve_connection(
    stack: &mut Stack,
    c: &mut Conn,
    api: &mut ApiState,
    host: &mut HostState,
    running: &ManagementConfig,
    now: u64,
    state: tcp::State,
) -> bool {
    let mut busy = false;
    // A name resolution in flight.
    if let Some(r) = &c.resolving {
        let dns_socket = stack.sockets.get_mut::<dns::Socket>(stack.dns);
        let answer = match dns_socket.get_query_result(r.query) {
            Err(GetQueryResultError::Pending) if now < r.deadline => None,
            Err(GetQueryResultError::Pending) => {
                dns_socket.cancel_query(r.query);
                Some(api::resolved(&r.name, Err("no answer within 10 s")))
            }
            Err(GetQueryResultError::Failed) => {
                Some(api::resolved(&r.name, Err("the DNS servers gave no address")))
            }
            Ok(addrs) => Some(api::resolved(
                &r.name,
                Ok(addrs
                    .iter()
                    .filter_map(|a| match a {
                        IpAddress::Ipv4(v4) => Some(*v4),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    })
                    .collect()),
            )),
        };
        if let Some(resp) = answer {
            c.resolving = None;
            let keep = !c.close_after;
            c.out = resp.to_bytes(keep);
            c.out_pos = 0;
        }
    }
    // A change being saved: answered once the save has ended.
    if let Some(saved) = c.saving.as_ref().and_then(|w| host.outcome(w.ticket)) {
        if let Some(w) = c.saving.take() {
            // A change of the management settings restarts the interface: the connection ends.
            let keep = w.keep_alive && api.pending.is_none() && host.config.network == *running;
            c.close_after = !keep;
            c.out = (w.then)(host, saved).to_bytes(keep);
            c.out_pos = 0;
            busy = true;
        }
    }
    let s = stack.sockets.get_mut::<tcp::Socket>(c.handle);
    // Take what the client sent (bounded): the bytes themselves, or through the TLS session.
    loop {
        let room = match c.tls.as_deref() {
            Some(t) => t.room(),
            None => MAX_INBUF.saturating_sub(c.inbuf.len()),
        };
        if !s.can_recv() || room == 0 {
            break;
        }
        let mut tmp = [0u8; 2048];
        let take = room.min(tmp.len());
        match s.recv_slice(&mut tmp[..take]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                match c.tls.as_deref_mut() {
                    Some(t) => {
                        t.received(&tmp[..n]);
                    }
                    None => c.inbuf.extend_from_slice(&tmp[..n]),
                }
                c.last_progress = now;
                busy = true;
            }
        }
    }
    if let Some(t) = c.tls.as_deref_mut() {
        if t.process().is_err() {
            // Not TLS, or a client that broke the protocol: the connection ends here.
            s.abort();
            return busy;
        }
        let room = MAX_INBUF.saturating_sub(c.inbuf.len());
        c.inbuf.extend(t.take_plaintext(room));
        // A handshake, or a record, that is not completed in time ends the connection: a client
        // trickling bytes in cannot hold a slot.
        let handshake_late = !t.established() && now.saturating_sub(c.state_since) > REQUEST_TIMEOUT_MS;
        if c.inbuf.is_empty() && !t.has_input() {
            // Nothing half received: the next record's clock starts when it does.
            c.request_started = None;
        }
        let record_late = c.inbuf.is_empty() && t.has_input() && {
            let started = *c.request_started.get_or_insert(now);
            now.saturating_sub(started) > REQUEST_TIMEOUT_MS
        };
        if handshake_late || record_late {
            s.abort();
            return busy;
        }
    } else if c.port == HTTPS_PORT {
        // Never served in clear text (a connection that went from SYN-RECEIVED straight to
        // CLOSE-WAIT got no TLS session).
        s.abort();
        return busy;
    }
    // An upload takes the body bytes as they arrive (bounded by the input buffer, so each pass
    // writes at most a few pieces), and is answered when the last one is stored.
    if let Some((u, keep)) = c.upload.as_mut() {
        let keep = *keep;
        match u.feed(&mut host.disks, &c.inbuf) {
            Ok(used) => {
                c.inbuf.drain(..used);
                busy |= used > 0;
            }
            Err(resp) => {
                if let Some((u, _)) = c.upload.take() {
                    u.abort(&mut host.disks);
                }
                c.out = resp.to_bytes(false);
                c.out_pos = 0;
                c.close_after = true;
                c.inbuf.clear();
            }
        }
        if c.upload.as_ref().is_some_and(|(u, _)| u.done()) {
            if let Some((u, _)) = c.upload.take() {
                // After whatever is still unsent (a `100 Continue`).
                let mut out = c.out.split_off(c.out_pos.min(c.out.len()));
                out.extend(u.finish(&mut host.disks).to_bytes(keep));
                c.out = out;
                c.out_pos = 0;
                c.close_after = !keep;
                busy = true;
            }
        } else if c.upload.is_some() && now.saturating_sub(c.last_progress) > IDLE_TIMEOUT_MS {
            // A client that stopped sending: the upload is removed and the connection ends.
            if let Some((u, _)) = c.upload.take() {
                u.abort(&mut host.disks);
            }
            s.abort();
            return busy;
        }
    }
    // Answer the next request once the previous answer is out: one held back while a change was
    // being saved, or the next one the client sent.
    if c.out.is_empty()
        && c.resolving.is_none()
        && c.saving.is_none()
        && c.upload.is_none()
        && c.download.is_none()
        && !c.close_after
    {
        let next = match c.waiting.take() {
            Some(req) => Some(req),
            None if c.inbuf.is_empty() => None,
            None => match parse_request_with(&c.inbuf, |m, p, t| {
                c.port == HTTPS_PORT && datastores::is_upload(m, p, t)
            }) {
                Parsed::Streamed(mut req, head_len, len) => {
                    req.peer = s.remote_endpoint().map(|e| e.addr.into());
                    c.inbuf.drain(..head_len);
                    c.request_started = None;
                    busy = true;
                    match datastores::begin_upload(host, &req, len, now) {
                        Ok(u) => {
                            c.upload = Some((u, req.keep_alive));
                            if req.expect_continue {
                                // The client waits for this before it sends the body (RFC 9110 10.1.1).
                                c.out = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
                                c.out_pos = 0;
                            }
                        }
                        Err(resp) => {
                            // The body was not read: the connection ends after the answer.
                            c.out = resp.to_bytes(false);
                            c.out_pos = 0;
                            c.close_after = true;
                            c.inbuf.clear();
                        }
                    }
                    None
                }
                Parsed::Complete(mut req, used) => {
                    req.peer = s.remote_endpoint().map(|e| e.addr.into());
                    c.inbuf.drain(..used);
                    c.request_started = if c.inbuf.is_empty() { None } else { Some(now) };
                    busy = true;
                    Some(req)
                }
                Parsed::Error(e) => {
                    c.out = Response::error(e.status, &e.message).to_bytes(false);
                    c.out_pos = 0;
                    c.close_after = true;
                    c.inbuf.clear();
                    busy = true;
                    None
                }
                Parsed::Incomplete => {
                    let started = *c.request_started.get_or_insert(now);
                    if now.saturating_sub(started) > REQUEST_TIMEOUT_MS {
                        c.out = Response::error(408, "request not completed within 10 s").to_bytes(false);
                        c.out_pos = 0;
                        c.close_after = true;
                        c.inbuf.clear();
                    }
                    None
                }
            },
        };
        match next {
            // Checked against, and built on, what the change being saved leaves; a request that has
            // waited as long as an idle connection may is answered "busy" (a client cannot hold
            // its slot by sending changes while the medium is slow).
            Some(req) if c.port == HTTPS_PORT && host.saving() && api::may_change_config(&req) => {
                if now.saturating_sub(c.last_progress) > IDLE_TIMEOUT_MS {
                    let mut r = Response::error(503, "another change is still being saved; try again");
                    r.headers.push(String::from("Retry-After: 5"));
                    c.out = r.to_bytes(false);
                    c.out_pos = 0;
                    c.close_after = true;
                } else {
                    c.waiting = Some(req);
                }
            }
            Some(req) => {
                let reply = if c.port == HTTPS_PORT {
                    api::handle(api, host, &req, now)
                } else {
                    Reply::Now(redirect(&req, s.local_endpoint().map(|e| e.addr)))
                };
                // After a configuration change the interface restarts: do not keep the connection.
                let keep = req.keep_alive && api.pending.is_none();
                match reply {
                    Reply::Now(resp) => {
                        c.close_after = !keep;
                        c.out = resp.to_bytes(keep);
                    }
                    Reply::Resolve(name) => {
                        c.close_after = !keep;
                        let dns_socket = stack.sockets.get_mut::<dns::Socket>(stack.dns);
                        match dns_socket.start_query(stack.iface.context(), &name, DnsQueryType::A) {
                            Ok(query) => {
                                c.resolving =
                                    Some(Resolving { query, name, deadline: now + RESOLVE_TIMEOUT_MS })
                            }
                            Err(e) => {
                                c.out =
                                    Response::error(503, &format!("cannot resolve now: {e}")).to_bytes(keep)
                            }
                        }
                    }
                    Reply::Saving(ticket, then) => {
                        c.saving = Some(SavingReply { ticket, then, keep_alive: req.keep_alive })
                    }
                    Reply::Download(head, d) => {
                        c.close_after = !keep;
                        c.out = head.head(d.size, keep);
                        c.download = (!d.done()).then_some(d);
                    }
                }
                c.out_pos = 0;
                busy = true;
            }
            None => {}
        }
    }
    let s = stack.sockets.get_mut::<tcp::Socket>(c.handle);
    // A download's next piece, once the previous one has left (over TLS: its ciphertext too), so
    // a slow client holds one piece of memory.
    if let Some(d) = c.download.as_mut() {
        if c.out_pos >= c.out.len() && c.tls.as_deref().is_none_or(|t| t.flushed()) {
            match d.next(&mut host.disks) {
                Ok(piece) => {
                    c.out = piece;
                    c.out_pos = 0;
                    if d.done() {
                        c.download = None;
                    }
                    busy = true;
                }
                Err(_) => {
                    // The promised length cannot be kept: the client sees the connection end.
                    c.download = None;
                    s.abort();
                    return busy;
                }
            }
        }
    }
    // Over TLS: the answer goes to the session, its ciphertext to the socket.
    if let Some(t) = c.tls.as_deref_mut() {
        if c.out_pos < c.out.len() {
            t.write(&c.out[c.out_pos..]);
            c.out_pos = c.out.len();
            if c.close_after && c.download.is_none() {
                t.close();
            }
        }
        if t.process().is_err() {
            s.abort();
            return busy;
        }
        if t.flushed() {
            c.last_sent = now;
        }
        if !t.to_send().is_empty() && s.can_send() {
            if let Ok(n) = s.send_slice(t.to_send()) {
                if n > 0 {
                    t.sent(n);
                    c.last_progress = now;
                    c.last_sent = now;
                    busy = true;
                }
            }
        }
        if !t.flushed() {
            if now.saturating_sub(c.last_sent) > WRITE_TIMEOUT_MS {
                s.abort();
            }
            return busy;
        }
    }
    // Send what is pending.
    if c.out_pos < c.out.len() {
        if s.can_send() {
            if let Ok(n) = s.send_slice(&c.out[c.out_pos..]) {
                if n > 0 {
                    c.out_pos += n;
                    c.last_progress = now;
                    busy = true;
                }
            }
        }
        if c.out_pos < c.out.len() && now.saturating_sub(c.last_progress) > WRITE_TIMEOUT_MS {
            s.abort();
            return busy;
        }
    }
    if c.out_pos >= c.out.len() && !c.out.is_empty() {
        c.out.clear();
        c.out_pos = 0;
        if c.close_after && c.download.is_none() {
            s.close();
            return busy;
        }
    }
    // Close when the client has finished sending and has every answer, when the last answer said
    // `Connection: close`, or when a keep-alive connection has been idle too long.
    let idle = now.saturating_sub(c.last_progress) > IDLE_TIMEOUT_MS;
    let peer_done = state == tcp::State::CloseWait || c.tls.as_deref().is_some_and(|t| t.peer_closed());
    let pending = c.resolving.is_some()
        || c.waiting.is_some()
        || c.saving.is_some()
        || c.upload.is_some()
        || c.download.is_some();
    if c.out.is_empty() && !pending && c.inbuf.is_empty() && (peer_done || c.close_after || idle) {
        if let Some(t) = c.tls.as_deref_mut() {
            // close_notify first (what fits the socket; the FIN follows it).
            t.close();
            if t.process().is_ok() && s.can_send() {
                if let Ok(n) = s.send_slice(t.to_send()) {
                    t.sent(n);
                }
            }
        }
        s.close();
    }
    busy
}

/// Port 80's only answer: the same resource over HTTPS (at the host name the client used, or the
/// address it connected to).
fn redirect(req: &Request, local: Option<IpAddress>) -> Response {
    let host = match (&req.host, local) {
        // Without the client's port: HTTPS is on its own port.
        (Some(h), _) => match h.rsplit_once(':') {
            Some((name, port))
                if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') =>
            {
                String::from(name)
            }
            _ => h.clone(),
        },
        (None, Some(IpAddress::Ipv6(a))) => format!("[{a}]"),
        (None, Some(a)) => format!("{a}"),
        (None, None) => String::from("localhost"),
    };
    // Only a path (origin form) is kept: anything else could point the redirect elsewhere.
    let target = match (&req.query, req.path.starts_with('/')) {
        (Some(q), true) => format!("{}?{q}", req.path),
        (None, true) => req.path.clone(),
        (_, false) => String::from("/"),
    };
    let location = format!("https://{host}{target}");
    let mut r = Response {
        status: 301,
        content_type: "text/plain; charset=utf-8",
        body: format!("The management API is served over HTTPS: {location}\n").into_bytes(),
        headers: Vec::new(),
    };
    r.headers.push(format!("Location: {location}"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HostFacts;
    use crate::auth::{PasswordHash, MIN_ITERATIONS};
    use crate::host::Persistence;
    use crate::nic::{FakeNic, Nic};
    use base64::Engine;
    use ember_storage::hostconfig::HostConfig;
    use sha2::{Digest, Sha256};

    const SERVER_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const CLIENT_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

    fn api_state() -> ApiState {
        ApiState::new(HostFacts { version: "0.1.0".into(), cpus: 1, ..HostFacts::default() })
    }

    fn host_state(cfg: ManagementConfig) -> HostState {
        // The HTTPS key is made from the TLS random source.
        tls::crypto::seed([5; 32]);
        let mut config =
            HostConfig::defaults(PasswordHash::new("rootpass", [3; 16], MIN_ITERATIONS).encode());
        config.network = cfg;
        HostState::new(config, Persistence::None("test".into()), [4; 32], 7).unwrap()
    }

    fn static_cfg(vlan: Option<u16>) -> ManagementConfig {
        ManagementConfig {
            ipv4: Ipv4Mode::Static { address: Ipv4Addr::new(10, 0, 0, 1), prefix: 24, gateway: None },
            vlan,
            ..ManagementConfig::default()
        }
    }

    /// A client host: its own smoltcp stack on the other end of the fake wire.
    struct Client {
        /// The wire end, for raw frames.
        nic: FakeNic,
        /// The client's own switch, which tags its frames with its VLAN.
        net: HostNetwork,
        iface: Interface,
        sockets: SocketSet<'static>,
        stats: PortStats,
        /// The TLS sessions of HTTPS connections, by socket; what they trust (the server's
        /// certificate, pinned as a client does after comparing its fingerprint).
        tls: alloc::collections::BTreeMap<SocketHandle, TlsSession>,
        trust: Option<Trust>,
    }

    /// The client's clock for certificate checks (the server has none: its certificate starts
    /// in 2025).
    const CLIENT_NOW: u64 = 1_767_225_600;

    impl Client {
        fn new(nic: FakeNic, vlan: Option<u16>) -> Self {
            let mut stats = PortStats::default();
            let wire = ManagedNic { name: "vmnic0".into(), driver: "fake", nic: Box::new(nic.clone()) };
            let mut net = HostNetwork::new(vec![wire]);
            net.connect_management(0, vlan).unwrap();
            let mut vmk = net.vmk().unwrap();
            let mut port = Port { nic: &mut vmk, stats: &mut stats };
            let mut iface = Interface::new(
                Config::new(HardwareAddress::Ethernet(EthernetAddress(CLIENT_MAC))),
                &mut port,
                Instant::ZERO,
            );
            iface.update_ip_addrs(|a| {
                let _ = a.push(IpCidr::Ipv4(Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, 2), 24)));
            });
            Client {
                nic,
                net,
                iface,
                sockets: SocketSet::new(Vec::new()),
                stats,
                tls: alloc::collections::BTreeMap::new(),
                trust: None,
            }
        }

        fn connect(&mut self, local_port: u16) -> SocketHandle {
            self.connect_to(IpAddress::Ipv4(Ipv4Addr::new(10, 0, 0, 1)), local_port)
        }

        /// An HTTPS connection to the API (the server's name is `ember`, its default host name).
        fn connect_to(&mut self, server: IpAddress, local_port: u16) -> SocketHandle {
            self.connect_tls(server, HTTPS_PORT, local_port)
        }

        /// A TLS connection to `port`.
        fn connect_tls(&mut self, server: IpAddress, port: u16, local_port: u16) -> SocketHandle {
            let h = self.connect_port(server, port, local_port);
            let trust = self.trust.clone().expect("the server's certificate is known");
            let config = tls::client_config(&trust, CLIENT_NOW).unwrap();
            self.tls.insert(h, TlsSession::new(config, &trust, "ember", Vec::new(), 1 << 20).unwrap());
            h
        }

        /// A plain TCP connection.
        fn connect_port(&mut self, server: IpAddress, port: u16, local_port: u16) -> SocketHandle {
            let s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 65536]),
                tcp::SocketBuffer::new(vec![0; 65536]),
            );
            let h = self.sockets.add(s);
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            s.connect(self.iface.context(), (server, port), local_port).unwrap();
            h
        }

        /// Moves ciphertext between an HTTPS connection's socket and its TLS session; returns
        /// the plaintext that arrived.
        fn pump(&mut self, h: SocketHandle) -> Vec<u8> {
            let Some(t) = self.tls.get_mut(&h) else { return Vec::new() };
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            while s.can_recv() {
                let mut buf = [0u8; 4096];
                let room = t.room().min(buf.len());
                let n = s.recv_slice(&mut buf[..room]).unwrap();
                t.received(&buf[..n]);
                t.process().unwrap();
            }
            t.process().unwrap();
            if s.can_send() && !t.to_send().is_empty() {
                let n = s.send_slice(t.to_send()).unwrap();
                t.sent(n);
            }
            t.take_plaintext()
        }

        fn poll(&mut self, now: u64) {
            self.net.pump(now);
            let mut vmk = self.net.vmk().unwrap();
            let mut port = Port { nic: &mut vmk, stats: &mut self.stats };
            self.iface.poll(instant(now), &mut port, &mut self.sockets);
            self.net.pump(now);
        }
    }

    struct World {
        server: ManagementNetwork,
        host: HostState,
        net: HostNetwork,
        client: Client,
        now: u64,
        /// The boot medium does not finish commands (a save waits) while set.
        store_stalled: bool,
    }

    impl World {
        fn new(cfg: ManagementConfig, client_vlan: Option<u16>) -> Self {
            let (a, b) = FakeNic::pair(SERVER_MAC, CLIENT_MAC);
            let mut net = HostNetwork::new(vec![ManagedNic {
                name: "vmnic0".into(),
                driver: "fake",
                nic: Box::new(a),
            }]);
            let mut host = host_state(cfg);
            let server = ManagementNetwork::new(&mut net, api_state(), &mut host, 42, 0);
            let mut client = Client::new(b, client_vlan);
            let pem = &host.https.as_ref().expect("an HTTPS certificate was made").stored.chain_pem;
            client.trust = Some(Trust::from_pem("pinned.pem", pem.as_bytes()).unwrap());
            World { server, host, net, client, now: 0, store_stalled: false }
        }

        /// One pass of the appliance's management loop (and of the client).
        fn step(&mut self) {
            self.now += 5;
            self.client.poll(self.now);
            if !self.store_stalled {
                self.host.poll_store();
            }
            self.server.poll(&mut self.host, &mut self.net, self.now);
        }

        fn run_until(&mut self, ms: u64, mut done: impl FnMut(&mut Client) -> bool) -> bool {
            let end = self.now + ms;
            while self.now < end {
                self.step();
                if done(&mut self.client) {
                    return true;
                }
            }
            false
        }

        fn send(&mut self, h: SocketHandle, data: &[u8]) {
            assert!(self.run_until(5_000, |c| c.sockets.get::<tcp::Socket>(h).may_send()), "not connected");
            if let Some(t) = self.client.tls.get_mut(&h) {
                t.write(data);
                self.client.pump(h);
                return;
            }
            let mut sent = 0;
            while sent < data.len() {
                sent += self.client.sockets.get_mut::<tcp::Socket>(h).send_slice(&data[sent..]).unwrap();
                self.step();
            }
        }

        /// Reads until the peer closes or a full response (by Content-Length) arrived.
        fn response(&mut self, h: SocketHandle, ms: u64) -> String {
            let mut got = Vec::new();
            let end = self.now + ms;
            while self.now < end {
                self.step();
                got.extend(self.client.pump(h));
                let s = self.client.sockets.get_mut::<tcp::Socket>(h);
                while s.can_recv() && !self.client.tls.contains_key(&h) {
                    let mut buf = [0u8; 4096];
                    let n = s.recv_slice(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                if let Some(text) = complete_response(&got) {
                    return text;
                }
                if !s.may_recv() && !got.is_empty() {
                    break;
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        }
    }

    fn complete_response(got: &[u8]) -> Option<String> {
        let text = core::str::from_utf8(got).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let len: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: "))?.parse().ok()?;
        (body.len() >= len).then(|| text.into())
    }

    /// An authenticated `PUT /api/v1/config` with `body`.
    fn put_config(body: &str) -> String {
        format!(
            "PUT /api/v1/config HTTP/1.1\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            auth_header(),
            body.len()
        )
    }

    fn auth_header() -> String {
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode("root:rootpass")
        )
    }

    /// A VM service with one VM whose console holds `output` and records input (at most 8 bytes
    /// waiting at a time, to exercise flow control).
    struct ConsoleVms {
        output: alloc::rc::Rc<core::cell::RefCell<Vec<u8>>>,
        input: alloc::rc::Rc<core::cell::RefCell<Vec<u8>>>,
    }

    impl crate::vms::VmService for ConsoleVms {
        fn list(&self, _: u64) -> Vec<crate::vms::VmSummary> {
            vec![crate::vms::VmSummary {
                name: "web".into(),
                vcpus: 1,
                memory_mib: 128,
                autostart: true,
                console_port: Some(9001),
                nics: Vec::new(),
                uptime_ms: Some(1),
                run: crate::vms::VmReport { state: crate::vms::VmState::Running, ..Default::default() },
            }]
        }
        fn console(&self, _: &str) -> Option<Vec<u8>> {
            Some(self.output.borrow().clone())
        }
        fn act(
            &mut self,
            _: &mut ember_storage::disks::HostDisks,
            _: &str,
            _: crate::vms::VmAction,
            _: u64,
        ) -> Result<(), crate::vms::VmError> {
            Ok(())
        }
        fn console_since(&self, _: &str, from: u64, max: usize) -> (Vec<u8>, u64) {
            let out = self.output.borrow();
            let start = (from as usize).min(out.len());
            let end = (start + max).min(out.len());
            (out[start..end].to_vec(), end as u64)
        }
        fn console_input(&mut self, _: &str, bytes: &[u8]) -> usize {
            let mut input = self.input.borrow_mut();
            let n = bytes.len().min(8usize.saturating_sub(input.len()));
            input.extend_from_slice(&bytes[..n]);
            n
        }
    }

    #[test]
    fn a_console_session_without_input_ends_after_the_idle_time_out_and_a_login_after_its_own() {
        let mut w = World::new(static_cfg(None), None);
        let output = alloc::rc::Rc::new(core::cell::RefCell::new(b"boot\n".to_vec()));
        let input = alloc::rc::Rc::new(core::cell::RefCell::new(Vec::new()));
        w.host.vms = Box::new(ConsoleVms { output, input });
        w.server.vms_changed();
        w.step();
        let server = IpAddress::Ipv4(Ipv4Addr::new(10, 0, 0, 1));
        let read_until = |w: &mut World, h: SocketHandle, got: &mut Vec<u8>, want: &[u8], ms: u64| {
            w.run_until(ms, |c| {
                got.extend(c.pump(h));
                got.windows(want.len()).any(|x| x == want)
            })
        };
        // A session that types nothing for 30 minutes is told and closed.
        let h = w.client.connect_tls(server, 9001, 40130);
        let mut got = Vec::new();
        assert!(read_until(&mut w, h, &mut got, b"root password: ", 5_000));
        w.send(h, b"rootpass\n");
        assert!(read_until(&mut w, h, &mut got, b"boot\n", 5_000), "{got:?}");
        // A connection that never answers the password prompt is closed after LOGIN_TIMEOUT_MS.
        let silent = w.client.connect_tls(server, 9001, 40131);
        let mut prompt = Vec::new();
        assert!(read_until(&mut w, silent, &mut prompt, b"root password: ", 5_000));
        let gone = w.run_until(crate::console::LOGIN_TIMEOUT_MS + 10_000, |c| {
            !matches!(c.sockets.get::<tcp::Socket>(silent).state(), tcp::State::Established)
        });
        assert!(gone, "the silent login is closed");
        // (Time in steps of a second: nothing is in flight on an idle session.)
        let mut closed = false;
        for _ in 0..(30 * 60 + 30) {
            w.now += 995;
            w.step();
            got.extend(w.client.pump(h));
            if got.windows(11).any(|x| x == b"30 minutes ") {
                closed = true;
                break;
            }
        }
        assert!(closed, "{:?}", String::from_utf8_lossy(&got));
        assert!(String::from_utf8_lossy(&got)
            .contains("[Ember: console session closed after 30 minutes without input]"));
    }

    #[test]
    fn vm_consoles_stream_over_tcp_both_ways() {
        /// Connects a TLS client to the console port from `local_port`.
        fn console_client(w: &mut World, local_port: u16) -> SocketHandle {
            w.client.connect_tls(IpAddress::Ipv4(Ipv4Addr::new(10, 0, 0, 1)), 9001, local_port)
        }
        /// Reads from `h` into `got` until it holds `want` (or 5 s pass).
        fn read_until(w: &mut World, h: SocketHandle, got: &mut Vec<u8>, want: &[u8]) -> bool {
            w.run_until(5_000, |c| {
                got.extend(c.pump(h));
                got.windows(want.len()).any(|x| x == want)
            })
        }
        let mut w = World::new(static_cfg(None), None);
        let output = alloc::rc::Rc::new(core::cell::RefCell::new(b"Linux version 6.1\n".to_vec()));
        let input = alloc::rc::Rc::new(core::cell::RefCell::new(Vec::new()));
        w.host.vms = Box::new(ConsoleVms { output: output.clone(), input: input.clone() });
        w.server.vms_changed();
        w.step(); // the consoles open at the next poll
        assert!(w
            .server
            .take_log()
            .iter()
            .any(|l| l == "VM web console on TCP port 9001 (TLS, root password required)"));
        // Nothing of the console before the root password; a wrong one is refused.
        let h = console_client(&mut w, 40100);
        let mut got = Vec::new();
        assert!(read_until(&mut w, h, &mut got, b"root password: "), "{got:?}");
        assert_eq!(got, b"Ember: serial console of VM web\r\nroot password: ");
        w.send(h, b"guess\r\n");
        assert!(read_until(&mut w, h, &mut got, b"Login incorrect.\r\nroot password: "), "{got:?}");
        assert!(input.borrow().is_empty(), "nothing typed reached the VM");
        w.send(h, b"rootpass\r\n");
        got.clear();
        assert!(read_until(&mut w, h, &mut got, b"Linux version 6.1\n"), "the kept output first: {got:?}");
        output.borrow_mut().extend_from_slice(b"login: ");
        assert!(read_until(&mut w, h, &mut got, b"login: "), "then new output: {got:?}");
        assert_eq!(got, b"\r\nLinux version 6.1\nlogin: ", "nothing twice");
        // Input reaches the VM; what it cannot take yet waits.
        w.send(h, b"root\nuptime\n");
        w.run_until(500, |_| false);
        assert_eq!(input.borrow().as_slice(), b"root\nupt");
        input.borrow_mut().clear();
        w.run_until(500, |_| false);
        assert_eq!(input.borrow().as_slice(), b"ime\n");
        // A second administrator logs in and takes the console over: the first is told and closed.
        let h2 = console_client(&mut w, 40101);
        let mut again = Vec::new();
        assert!(read_until(&mut w, h2, &mut again, b"root password: "), "{again:?}");
        w.send(h2, b"rootpass\n");
        assert!(
            read_until(&mut w, h2, &mut again, b"Linux version 6.1\nlogin: "),
            "a second client: {again:?}"
        );
        assert!(
            read_until(&mut w, h, &mut got, b"[Ember: console taken over by another session]"),
            "{got:?}"
        );
        // Three wrong passwords end a connection.
        let h3 = console_client(&mut w, 40102);
        let mut third = Vec::new();
        for _ in 0..3 {
            assert!(read_until(&mut w, h3, &mut third, b"root password: "), "{third:?}");
            third.clear();
            w.send(h3, b"wrong\r");
            w.run_until(1_100, |_| false); // the per-source budget refills each second
        }
        let closed = w.run_until(5_000, |c| {
            !matches!(c.sockets.get::<tcp::Socket>(h3).state(), tcp::State::Established)
        });
        assert!(closed, "closed after three wrong passwords");
        // Plain bytes (not TLS) end a connection at once, and nothing is shown.
        let plain = w.client.connect_port(IpAddress::Ipv4(Ipv4Addr::new(10, 0, 0, 1)), 9001, 40103);
        w.send(plain, b"rootpass\r\n");
        assert!(w.run_until(5_000, |c| !c.sockets.get::<tcp::Socket>(plain).is_active()), "not dropped");
        assert!(w.response(plain, 100).is_empty());
        // Idle connections that never log in cannot use up the port: one per source address waits
        // for its password (a newer one replaces it), so the administrator still gets in.
        let idle: Vec<SocketHandle> = (0..5).map(|i| console_client(&mut w, 40110 + i)).collect();
        // (Connections closed above whose peer never closed its side are dropped after 5 s.)
        w.run_until(6_000, |_| false);
        let h4 = console_client(&mut w, 40120);
        let mut fourth = Vec::new();
        assert!(read_until(&mut w, h4, &mut fourth, b"root password: "), "{fourth:?}");
        w.send(h4, b"rootpass\r\n");
        assert!(read_until(&mut w, h4, &mut fourth, b"login: "), "the administrator gets in: {fourth:?}");
        let dropped = w.run_until(2_000, |c| {
            idle.iter().all(|h| !matches!(c.sockets.get::<tcp::Socket>(*h).state(), tcp::State::Established))
        });
        let states: Vec<tcp::State> =
            idle.iter().map(|h| w.client.sockets.get::<tcp::Socket>(*h).state()).collect();
        assert!(dropped, "the idle logins were replaced: {states:?}");
    }

    #[test]
    fn serves_the_api_over_tcp_with_keep_alive() {
        let mut w = World::new(static_cfg(None), None);
        let h = w.client.connect(40000);
        w.send(h, b"GET /api/v1/host HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = w.response(h, 5_000);
        assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
        // Same connection, now with credentials.
        w.send(h, format!("GET /api/v1/host HTTP/1.1\r\nHost: x\r\n{}\r\n", auth_header()).as_bytes());
        let r = w.response(h, 5_000);
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(r.contains("\"address\":\"10.0.0.1\""), "{r}");
        assert!(r.contains("\"mac\":\"52:54:00:00:00:01\""), "{r}");
        assert_eq!(w.server.console_address().1, Some(Ipv4Addr::new(10, 0, 0, 1)));
    }

    /// A world whose host has one datastore on a 64 MiB in-memory disk.
    fn world_with_datastore() -> World {
        use ember_storage::block::MemDisk;
        use ember_storage::disks::HostDisks;
        use ember_storage::persist::Disk;
        let mut w = World::new(static_cfg(None), None);
        let disk = Disk::new("vda".into(), "virtio-blk", Box::new(MemDisk::new(512, 64 * 2048)));
        w.host.disks = HostDisks::scan(vec![disk], None, 1, &mut Vec::new());
        w.host.disks.create("datastore1", "vda", false).unwrap();
        w
    }

    fn upload_head(path: &str, len: usize) -> String {
        format!(
            "PUT /api/v1/datastores/datastore1/files/{path} HTTP/1.1\r\nHost: x\r\n{}Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n",
            auth_header()
        )
    }

    #[test]
    fn an_upload_is_streamed_to_the_datastore_and_a_download_streamed_back() {
        let mut w = world_with_datastore();
        // 2.2 MB: letters, with the second MiB (one file block) zeros, which stays unallocated.
        let mut file: Vec<u8> = (0..2_200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        file[1 << 20..2 << 20].fill(0);
        let h = w.client.connect(40030);
        let mut req = upload_head("iso/linux/image.bin", file.len()).into_bytes();
        req.extend_from_slice(&file);
        w.send(h, &req);
        let r = w.response(h, 60_000);
        assert!(r.starts_with("HTTP/1.1 201 "), "{r}");
        let want: String = Sha256::digest(&file).iter().map(|b| format!("{b:02x}")).collect();
        assert!(r.contains(&format!("\"sha256\":\"{want}\"")) && r.contains("\"size_bytes\":2200000"), "{r}");
        // The same connection lists the directory: one file, the hidden upload file gone.
        let list = format!(
            "GET /api/v1/datastores/datastore1/files/iso/linux HTTP/1.1\r\nHost: x\r\n{}\r\n",
            auth_header()
        );
        w.send(h, list.as_bytes());
        let r = w.response(h, 10_000);
        assert!(r.starts_with("HTTP/1.1 200 ") && r.contains("\"name\":\"image.bin\""), "{r}");
        assert!(r.contains("\"entries\":[{"), "{r}");
        assert!(!r.contains(".ember-upload"), "{r}");
        let stat = w.host.disks.with("datastore1", |ds, _| ds.stat("iso/linux/image.bin")).unwrap().unwrap();
        assert_eq!((stat.size, stat.allocated), (2_200_000, 2 << 20), "the zero block is not stored");
        // Download.
        let get = format!(
            "GET /api/v1/datastores/datastore1/files/iso/linux/image.bin HTTP/1.1\r\nHost: x\r\n{}\r\n",
            auth_header()
        );
        w.send(h, get.as_bytes());
        let r = w.response(h, 60_000);
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 200 ") && head.contains("Content-Type: application/octet-stream"),
            "{head}"
        );
        assert_eq!(body.as_bytes(), &file[..]);
        // Replacing it with a shorter upload, then deleting it.
        let h2 = w.client.connect(40031);
        let mut req = upload_head("iso/linux/image.bin", 5).into_bytes();
        req.extend_from_slice(b"short");
        w.send(h2, &req);
        assert!(w.response(h2, 10_000).starts_with("HTTP/1.1 201 "));
        let del = format!(
            "DELETE /api/v1/datastores/datastore1/files/iso/linux/image.bin HTTP/1.1\r\nHost: x\r\n{}Content-Type: application/json\r\nContent-Length: 0\r\n\r\n",
            auth_header()
        );
        let h3 = w.client.connect(40032);
        w.send(h3, del.as_bytes());
        assert!(w.response(h3, 10_000).starts_with("HTTP/1.1 200 "));
        assert!(w.host.disks.with("datastore1", |ds, _| ds.stat("iso/linux/image.bin")).unwrap().is_err());
    }

    #[test]
    fn an_upload_follows_its_datastore_through_renames_and_expect_continue_is_answered() {
        let mut w = world_with_datastore();
        // A second datastore whose file must not be touched.
        {
            use ember_storage::block::MemDisk;
            use ember_storage::disks::HostDisks;
            use ember_storage::persist::Disk;
            let disks = vec![
                Disk::new("vda".into(), "virtio-blk", Box::new(MemDisk::new(512, 64 * 2048))),
                Disk::new("vdb".into(), "virtio-blk", Box::new(MemDisk::new(512, 64 * 2048))),
            ];
            w.host.disks = HostDisks::scan(disks, None, 1, &mut Vec::new());
            w.host.disks.create("datastore1", "vda", false).unwrap();
            w.host.disks.create("ds2", "vdb", false).unwrap();
            w.host
                .disks
                .with("ds2", |ds, dev| {
                    let id = ds.create("victim.bin", 1)?;
                    ds.write(dev, id, 0, &[9u8; 200_000], 1)?;
                    ds.commit(dev)
                })
                .unwrap()
                .unwrap();
        }
        let h = w.client.connect(40050);
        let head = upload_head("new.bin", 131_072)
            .replace("Content-Length", "Expect: 100-continue\r\nContent-Length");
        w.send(h, head.as_bytes());
        let r = w.response(h, 3_000);
        assert!(r.starts_with("HTTP/1.1 100 Continue\r\n\r\n"), "{r:?}");
        w.send(h, &[1u8; 65_536]);
        assert!(w.response(h, 2_000).is_empty());
        // The names are swapped while the body is on its way.
        w.host.disks.rename("datastore1", "old").unwrap();
        w.host.disks.rename("ds2", "datastore1").unwrap();
        w.send(h, &[1u8; 65_536]);
        let r = w.response(h, 10_000);
        assert!(r.starts_with("HTTP/1.1 201 "), "{r}");
        let victim = w.host.disks.with("datastore1", |ds, dev| {
            let e = ds.stat("victim.bin")?;
            let mut buf = vec![0u8; 200_000];
            ds.read(dev, e.id, 0, &mut buf)?;
            Ok((e.size, buf))
        });
        let (size, bytes) = victim.unwrap().unwrap();
        assert_eq!(size, 200_000);
        assert!(bytes.iter().all(|&b| b == 9), "the other datastore's file is untouched");
        assert_eq!(w.host.disks.with("old", |ds, _| ds.stat("new.bin")).unwrap().unwrap().size, 131_072);
        // Hidden names cannot be reached.
        let h = w.client.connect(40051);
        w.send(h, upload_head(".ember-upload-x/y/f", 3).as_bytes());
        assert!(w.response(h, 5_000).starts_with("HTTP/1.1 400 "));
    }

    #[test]
    fn uploads_are_refused_before_their_body_and_a_cut_off_upload_leaves_nothing() {
        let mut w = world_with_datastore();
        // No credentials: 401 at the head, the connection ends.
        let h = w.client.connect(40040);
        let head = upload_head("a.bin", 10).replace(&auth_header(), "");
        w.send(h, head.as_bytes());
        assert!(w.response(h, 10_000).starts_with("HTTP/1.1 401 "));
        // More than the free space: 507.
        let h = w.client.connect(40041);
        w.send(h, upload_head("big.bin", 1 << 30).as_bytes());
        let r = w.response(h, 10_000);
        assert!(r.starts_with("HTTP/1.1 507 ") && r.contains("not enough free space"), "{r}");
        // A path leaving the datastore, and no such datastore.
        let h = w.client.connect(40042);
        w.send(h, upload_head("../../etc/passwd", 10).as_bytes());
        assert!(w.response(h, 10_000).starts_with("HTTP/1.1 400 "));
        let h = w.client.connect(40043);
        w.send(h, upload_head("x", 10).replace("datastore1", "nope").as_bytes());
        assert!(w.response(h, 10_000).starts_with("HTTP/1.1 404 "));
        // A client that sends half and goes away: the hidden file is removed, nothing is listed.
        let h = w.client.connect(40044);
        let mut req = upload_head("dir/half.bin", 200_000).into_bytes();
        req.extend_from_slice(&[7u8; 100_000]);
        w.send(h, &req);
        let hidden = |w: &mut World| {
            w.host.disks.with("datastore1", |ds, _| ds.list("dir")).unwrap().map_or(0, |l| l.len())
        };
        // (`response` keeps the client's TLS data flowing while it waits.)
        let early = w.response(h, 3_000);
        assert!(early.is_empty(), "{early}");
        assert_eq!(hidden(&mut w), 1, "its hidden file is there while it runs");
        // A pause longer than a request may take, shorter than the idle time-out, is fine.
        let early = w.response(h, 15_000);
        assert!(early.is_empty(), "{early}");
        assert_eq!(hidden(&mut w), 1, "its hidden file is there while it runs");
        w.client.sockets.get_mut::<tcp::Socket>(h).abort();
        w.run_until(5_000, |_| false);
        assert_eq!(hidden(&mut w), 0, "and removed when the client goes away");
        // A client that stops sending for longer than the idle time-out: removed, connection ended.
        let h = w.client.connect(40045);
        let mut req = upload_head("dir/stalled.bin", 200_000).into_bytes();
        req.extend_from_slice(&[7u8; 1000]);
        w.send(h, &req);
        assert!(w.response(h, 3_000).is_empty());
        assert_eq!(hidden(&mut w), 1);
        w.response(h, IDLE_TIMEOUT_MS + 5_000);
        assert_eq!(hidden(&mut w), 0);
        assert!(!w.client.sockets.get::<tcp::Socket>(h).may_send(), "the connection ended");
        let free = w.host.disks.datastore("datastore1").unwrap();
        assert_eq!(free.free_bytes, free.capacity_bytes);
    }

    #[test]
    fn restart_agents_drops_connections_and_serves_again() {
        let mut w = World::new(static_cfg(None), None);
        let h = w.client.connect(40000);
        w.send(h, format!("GET /api/v1/host HTTP/1.1\r\nHost: x\r\n{}\r\n", auth_header()).as_bytes());
        assert!(w.response(h, 5_000).starts_with("HTTP/1.1 200 "));
        w.server.take_log();
        w.server.restart_agents(&mut w.host, w.now);
        assert_eq!(w.server.take_log(), ["management agents restarted: 1 API connections dropped"]);
        // The kept-alive connection is reset; a new one is served as before.
        assert!(w.run_until(5_000, |c| !c.sockets.get::<tcp::Socket>(h).is_active()), "connection not reset");
        let h = w.client.connect(40001);
        w.send(h, format!("GET /api/v1/host HTTP/1.1\r\nHost: x\r\n{}\r\n", auth_header()).as_bytes());
        let r = w.response(h, 5_000);
        assert!(r.starts_with("HTTP/1.1 200 ") && r.contains("\"address\":\"10.0.0.1\""), "{r}");
    }

    #[test]
    fn garbage_gets_400_and_the_server_keeps_serving() {
        let mut w = World::new(static_cfg(None), None);
        // Raw junk frames on the wire first.
        for i in 0..50u8 {
            w.client.nic.transmit(&[i; 60]);
            w.client.nic.transmit(&[0xff; 3]);
        }
        let h = w.client.connect(40001);
        w.send(h, b"\x16\x03\x01 this is not http\r\n\r\n");
        let r = w.response(h, 5_000);
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        let h = w.client.connect(40002);
        w.send(h, b"GET / HTTP/1.1\r\n\r\n");
        assert!(w.response(h, 5_000).starts_with("HTTP/1.1 200 "));
    }

    #[test]
    fn port_80_only_redirects_and_bytes_that_are_not_tls_end_an_https_connection() {
        let mut w = World::new(static_cfg(None), None);
        let server = IpAddress::Ipv4(Ipv4Addr::new(10, 0, 0, 1));
        let plain = w.client.connect_port(server, HTTP_PORT, 40020);
        let request =
            format!("GET /api/v1/host?x=1 HTTP/1.1\r\nHost: esx01.lab:8080\r\n{}\r\n", auth_header());
        w.send(plain, request.as_bytes());
        let r = w.response(plain, 5_000);
        assert!(r.starts_with("HTTP/1.1 301 "), "{r}");
        assert!(r.contains("\r\nLocation: https://esx01.lab/api/v1/host?x=1\r\n"), "{r}");
        assert!(!r.contains("\"hostname\""), "nothing is served in clear text: {r}");
        // Without a Host header: the address the client connected to.
        let plain = w.client.connect_port(server, HTTP_PORT, 40021);
        w.send(plain, b"PUT /api/v1/config HTTP/1.0\r\n\r\n");
        assert!(w.response(plain, 5_000).contains("\r\nLocation: https://10.0.0.1/api/v1/config\r\n"));
        // Plain HTTP to the HTTPS port: the connection is dropped, nothing is answered.
        let wrong = w.client.connect_port(server, HTTPS_PORT, 40022);
        w.send(wrong, b"GET /api/v1/host HTTP/1.1\r\n\r\n");
        assert!(w.run_until(5_000, |c| !c.sockets.get::<tcp::Socket>(wrong).is_active()), "not dropped");
        let r = w.response(wrong, 100);
        assert!(r.is_empty(), "{r}");
        // The API is served over HTTPS, to a client that checks the pinned certificate.
        let h = w.client.connect(40023);
        w.send(h, format!("GET /api/v1/host HTTP/1.1\r\nHost: x\r\n{}\r\n", auth_header()).as_bytes());
        let r = w.response(h, 5_000);
        let fingerprint = w.host.https.as_ref().unwrap().info.fingerprint();
        assert!(r.starts_with("HTTP/1.1 200 ") && r.contains(&fingerprint), "{r}");
    }

    #[test]
    fn a_client_trickling_a_tls_handshake_loses_its_slot() {
        let mut w = World::new(static_cfg(None), None);
        let server = IpAddress::Ipv4(Ipv4Addr::new(10, 0, 0, 1));
        let h = w.client.connect_port(server, HTTPS_PORT, 40030);
        // A ClientHello record header, then one byte every 2 s: never a whole handshake.
        w.send(h, &[0x16, 0x03, 0x01, 0x02, 0x00]);
        let start = w.now;
        let dropped = (0..20).any(|_| {
            w.send(h, &[0x01]);
            w.run_until(2_000, |c| !c.sockets.get::<tcp::Socket>(h).is_active())
        });
        assert!(dropped, "still connected after {} ms", w.now - start);
        assert!(w.now - start <= REQUEST_TIMEOUT_MS + 3_000, "dropped after {} ms", w.now - start);
    }

    #[test]
    fn slow_client_times_out_without_blocking_others() {
        let mut w = World::new(static_cfg(None), None);
        let slow = w.client.connect(40010);
        w.send(slow, b"GET /api/v1/host HTTP/1.1\r\nX-Slow: ");
        let fast = w.client.connect(40011);
        w.send(fast, b"GET / HTTP/1.1\r\n\r\n");
        assert!(w.response(fast, 5_000).starts_with("HTTP/1.1 200 "));
        let r = w.response(slow, REQUEST_TIMEOUT_MS + 5_000);
        assert!(r.starts_with("HTTP/1.1 408 "), "{r}");
    }

    #[test]
    fn connection_pool_is_bounded_and_recovers() {
        let mut w = World::new(static_cfg(None), None);
        // One client address holds at most its share of the HTTPS slots.
        let idle: Vec<_> = (0..HTTPS_PER_SOURCE as u16 + 4).map(|i| w.client.connect(41000 + i)).collect();
        w.run_until(2_000, |_| false);
        let established = idle
            .iter()
            .filter(|h| w.client.sockets.get::<tcp::Socket>(**h).state() == tcp::State::Established)
            .count();
        assert_eq!(established, HTTPS_PER_SOURCE);
        // One more is refused while all slots are held...
        let extra = w.client.connect(42000);
        w.run_until(1_000, |_| false);
        assert_ne!(w.client.sockets.get::<tcp::Socket>(extra).state(), tcp::State::Established);
        // ...and served after the idle ones time out.
        w.run_until(IDLE_TIMEOUT_MS + 2_000, |_| false);
        let again = w.client.connect(42001);
        w.send(again, b"GET / HTTP/1.1\r\n\r\n");
        assert!(w.response(again, 5_000).starts_with("HTTP/1.1 200 "));
    }

    /// The server's link-local address: fe80::/64 with the EUI-64 of 52:54:00:00:00:01.
    fn server_link_local() -> Ipv6Addr {
        "fe80::5054:ff:fe00:1".parse().unwrap()
    }

    fn get_host_over(w: &mut World, server: IpAddress, port: u16) -> String {
        let h = w.client.connect_to(server, port);
        w.send(
            h,
            format!("GET /api/v1/network/management HTTP/1.1\r\nHost: x\r\n{}\r\n", auth_header()).as_bytes(),
        );
        w.response(h, 5_000)
    }

    #[test]
    fn ipv6_static_and_link_local_serve_the_api() {
        let mut cfg = static_cfg(None);
        let address: Ipv6Addr = "2001:db8::1".parse().unwrap();
        cfg.ipv6 = Ipv6Mode::Static { address, prefix: 64, gateway: Some("fe80::99".parse().unwrap()) };
        let mut w = World::new(cfg, None);
        w.client.iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::Ipv6(Ipv6Cidr::new("2001:db8::2".parse().unwrap(), 64)));
            let _ = a.push(IpCidr::Ipv6(Ipv6Cidr::new("fe80::2".parse().unwrap(), 64)));
        });
        assert_eq!(w.server.api.status.ipv6, [(server_link_local(), 64), (address, 64)]);
        let r = get_host_over(&mut w, IpAddress::Ipv6(address), 40100);
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(r.contains("\"ipv6_addresses\":[\"fe80::5054:ff:fe00:1/64\",\"2001:db8::1/64\"]"), "{r}");
        assert!(r.contains("\"mode\":\"static\",\"prefix\":64"), "{r}");
        let r = get_host_over(&mut w, IpAddress::Ipv6(server_link_local()), 40101);
        assert!(r.starts_with("HTTP/1.1 200 "), "over link-local: {r}");
        // IPv4 still works beside it.
        let r = get_host_over(&mut w, IpAddress::Ipv4(Ipv4Addr::new(10, 0, 0, 1)), 40102);
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    }

    /// A router advertisement from fe80::99 for `prefix`/64 (autonomous, on-link) to all nodes.
    fn router_advert(prefix: Ipv6Addr) -> Vec<u8> {
        use smoltcp::wire::{
            EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv6Packet,
            Ipv6Repr, NdiscPrefixInfoFlags, NdiscPrefixInformation, NdiscRepr, NdiscRouterFlags,
        };
        let router: Ipv6Addr = "fe80::99".parse().unwrap();
        let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
        let icmp = Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
            hop_limit: 64,
            flags: NdiscRouterFlags::empty(),
            router_lifetime: Duration::from_secs(1800),
            reachable_time: Duration::ZERO,
            retrans_time: Duration::ZERO,
            lladdr: Some(EthernetAddress(CLIENT_MAC).into()),
            mtu: None,
            prefix_info: Some(NdiscPrefixInformation {
                prefix_len: 64,
                flags: NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF,
                valid_lifetime: Duration::from_secs(86_400),
                preferred_lifetime: Duration::from_secs(14_400),
                prefix,
            }),
        });
        let ip = Ipv6Repr {
            src_addr: router,
            dst_addr: all_nodes,
            next_header: IpProtocol::Icmpv6,
            payload_len: icmp.buffer_len(),
            hop_limit: 255,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress(CLIENT_MAC),
            dst_addr: EthernetAddress([0x33, 0x33, 0, 0, 0, 1]),
            ethertype: EthernetProtocol::Ipv6,
        };
        let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + icmp.buffer_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut frame);
        let mut packet = Ipv6Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet);
        let mut message = Icmpv6Packet::new_unchecked(packet.payload_mut());
        icmp.emit(&router, &all_nodes, &mut message, &ChecksumCapabilities::default());
        buf
    }

    #[test]
    fn ipv6_auto_takes_an_address_from_router_advertisements() {
        let mut cfg = static_cfg(None);
        cfg.ipv6 = Ipv6Mode::Auto;
        let mut w = World::new(cfg, None);
        assert_eq!(w.server.api.status.ipv6, [(server_link_local(), 64)], "link-local only at first");
        w.server.take_log();
        w.client.nic.transmit(&router_advert("2001:db8:5::".parse().unwrap()));
        let slaac: Ipv6Addr = "2001:db8:5::5054:ff:fe00:1".parse().unwrap();
        w.run_until(5_000, |_| false);
        assert_eq!(w.server.api.status.ipv6, [(server_link_local(), 64), (slaac, 64)]);
        let log = w.server.take_log();
        assert!(
            log.iter()
                .any(|l| l
                    .contains("IPv6 addresses now fe80::5054:ff:fe00:1/64, 2001:db8:5:0:5054:ff:fe00:1/64")),
            "{log:?}"
        );
        w.client.iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::Ipv6(Ipv6Cidr::new("2001:db8:5::2".parse().unwrap(), 64)));
        });
        let r = get_host_over(&mut w, IpAddress::Ipv6(slaac), 40200);
        assert!(r.starts_with("HTTP/1.1 200 ") && r.contains("\"ipv6\":{\"mode\":\"auto\"}"), "{r}");
        // Disabled (the default): no IPv6 addresses, advertisements ignored.
        let mut w = World::new(static_cfg(None), None);
        w.client.nic.transmit(&router_advert("2001:db8:5::".parse().unwrap()));
        w.run_until(1_000, |_| false);
        assert!(w.server.api.status.ipv6.is_empty());
    }

    #[test]
    fn vlan_tagged_management() {
        let mut w = World::new(static_cfg(Some(7)), Some(7));
        let h = w.client.connect(40020);
        w.send(h, b"GET / HTTP/1.1\r\n\r\n");
        assert!(w.response(h, 5_000).starts_with("HTTP/1.1 200 "));
        // An untagged client cannot reach it.
        let mut w = World::new(static_cfg(Some(7)), None);
        let h = w.client.connect(40021);
        assert!(!w.run_until(3_000, |c| c.sockets.get::<tcp::Socket>(h).may_send()));
    }

    #[test]
    fn a_vm_nic_on_the_switch_gets_answers_from_vmk0() {
        let mut w = World::new(static_cfg(None), None);
        let vm_mac = [0x02, 0x45, 0x4d, 0, 0, 9];
        let nic = ember_vmm::virtio_net::NetPort::new(vm_mac, 1500, None);
        let port = w
            .net
            .attach_vm("vm nic0", "VM Network", vm_mac, crate::hostnet::vm_portgroup("VM Network").unwrap())
            .unwrap();
        // ARP: who has 10.0.0.1? tell 10.0.0.5.
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&vm_mac);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&vm_mac);
        arp.extend_from_slice(&[10, 0, 0, 5]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&[10, 0, 0, 1]);
        nic.untake_sent(vec![arp]);
        let mut answered = false;
        for _ in 0..10 {
            w.step();
            w.net.move_vm_frames(port, &nic);
            w.step();
            answered |= w.net.move_vm_frames(port, &nic).1;
        }
        assert!(answered, "vmk0 answers the VM's ARP request");
        // The switch view: vSwitch0 with its uplink, vmk0 and the VM's port, with counters.
        w.run_until(1_500, |_| false);
        let h = w.client.connect(40090);
        w.send(
            h,
            format!("GET /api/v1/network/switches HTTP/1.1\r\nHost: x\r\n{}\r\n", auth_header()).as_bytes(),
        );
        let r = w.response(h, 5_000);
        let body = r.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {r}"));
        let sw = &v["switches"][0];
        assert_eq!((sw["name"].as_str(), sw["mtu"].as_u64()), (Some("vSwitch0"), Some(1500)), "{v}");
        assert_eq!(sw["uplinks"]["active"][0], "vmnic0", "{v}");
        let ports = sw["ports"].as_array().unwrap();
        let port =
            |n: &str| ports.iter().find(|p| p["name"] == n).unwrap_or_else(|| panic!("{n}: {v}")).clone();
        assert_eq!(port("vm nic0")["portgroup"], "VM Network");
        assert_eq!(port("vm nic0")["counters"]["packets_sent"], 1);
        assert_eq!(port("vm nic0")["counters"]["packets_received"], 1, "the ARP answer");
        assert_eq!(port("vmk0")["portgroup"], "Management Network");
        assert!(port("vmk0")["counters"]["packets_received"].as_u64().unwrap() >= 1);
        assert_eq!(port("vmnic0")["type"], "uplink");
    }

    #[test]
    fn put_management_restarts_with_new_address() {
        let mut w = World::new(static_cfg(None), None);
        let h = w.client.connect(40030);
        let body = r#"{"mode":"static","address":"10.0.0.9","prefix":24}"#;
        w.send(
            h,
            format!(
                "PUT /api/v1/network/management HTTP/1.1\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                auth_header(),
                body.len()
            )
            .as_bytes(),
        );
        let r = w.response(h, 5_000);
        assert!(r.starts_with("HTTP/1.1 202 "), "{r}");
        assert!(r.contains("Connection: close"), "{r}");
        w.run_until(APPLY_DELAY_MS + 500, |_| false);
        assert_eq!(w.server.console_address().1, Some(Ipv4Addr::new(10, 0, 0, 9)));
        assert!(w.server.take_log().iter().any(|l| l.contains("static 10.0.0.9/24")));
    }

    #[test]
    fn while_a_change_is_saved_the_api_answers_and_a_second_change_waits_and_builds_on_it() {
        let mut w = World::new(static_cfg(None), None);
        w.host.store = crate::host::testing::memory_store(false);
        // The boot medium stalls: the first change's save does not end.
        w.store_stalled = true;
        let first = w.client.connect(40040);
        w.send(first, put_config(r#"{"keyboard":"German"}"#).as_bytes());
        assert_eq!(w.response(first, 3_000), "", "answered before it was saved");
        assert!(w.host.saving());
        // Meanwhile the API answers, with the configuration in force.
        let reader = w.client.connect(40041);
        w.send(reader, format!("GET /api/v1/config HTTP/1.1\r\n{}\r\n", auth_header()).as_bytes());
        let r = w.response(reader, 5_000);
        assert!(r.starts_with("HTTP/1.1 200 ") && r.contains("\"keyboard\":\"US Default\""), "{r}");
        // A second change waits for the first.
        let second = w.client.connect(40042);
        w.send(second, put_config(r#"{"ssh":true}"#).as_bytes());
        assert_eq!(w.response(second, 2_000), "");
        // The medium answers again: both are saved, in order, the second on top of the first.
        w.store_stalled = false;
        let r = w.response(first, 5_000);
        assert!(r.starts_with("HTTP/1.1 200 ") && r.contains("\"keyboard\":\"German\""), "{r}");
        assert!(r.contains("\"sequence\":1"), "{r}");
        let r = w.response(second, 5_000);
        assert!(r.starts_with("HTTP/1.1 200 ") && r.contains("\"keyboard\":\"German\""), "{r}");
        assert!(r.contains("\"ssh\":true") && r.contains("\"sequence\":2"), "{r}");
        assert!(w.host.config.ssh_enabled && w.host.config.keyboard == "German");
    }

    #[test]
    fn a_change_that_waits_too_long_for_another_is_answered_busy() {
        let mut w = World::new(static_cfg(None), None);
        w.host.store = crate::host::testing::memory_store(false);
        w.store_stalled = true;
        let first = w.client.connect(40050);
        w.send(first, put_config(r#"{"keyboard":"German"}"#).as_bytes());
        assert_eq!(w.response(first, 3_000), "");
        assert!(w.host.saving(), "the first change is being saved");
        let second = w.client.connect(40051);
        w.send(second, put_config(r#"{"ssh":true}"#).as_bytes());
        let r = w.response(second, IDLE_TIMEOUT_MS + 5_000);
        assert!(r.starts_with("HTTP/1.1 503 ") && r.contains("Retry-After: 5"), "{r}");
        assert!(r.contains("another change is still being saved"), "{r}");
        // The first one is saved once the medium answers; the second changed nothing.
        w.store_stalled = false;
        let r = w.response(first, 5_000);
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(!w.host.config.ssh_enabled && w.host.config.keyboard == "German");
    }

    #[test]
    fn missing_uplink_is_reported() {
        let cfg = ManagementConfig { uplink: "vmnic3".into(), ..ManagementConfig::default() };
        let mut w = World::new(cfg, None);
        assert_eq!(w.server.api.status.state, InterfaceState::NoUplink);
        assert!(w.server.take_log().iter().any(|l| l.contains("no NIC named vmnic3")));
        assert!(!w.server.poll(&mut w.host, &mut w.net, 10));
    }

    /// The client host serves scripted HTTP answers on port 8000, one connection per answer (a
    /// `None` answer is a listener that never existed: the connection is refused), until the
    /// server's download ends or `ms` pass. Returns the requests received.
    fn serve_kickstart(w: &mut World, answers: &[Option<&str>], ms: u64) -> Vec<String> {
        let mut listeners = Vec::new();
        let mut refusals = answers.iter().take_while(|a| a.is_none()).count();
        for a in answers.iter().flatten() {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 4096]),
                tcp::SocketBuffer::new(vec![0; 4096]),
            );
            if refusals == 0 {
                s.listen(8000).unwrap();
            }
            listeners.push((w.client.sockets.add(s), a.to_string(), Vec::new(), false));
        }
        let end = w.now + ms;
        let mut failures_seen = 0;
        while w.now < end && w.server.downloading() {
            w.step();
            // While refusals remain, nothing listens; each failed attempt uses one up.
            let failures = w.server.download.as_ref().map_or(0, |d| d.failures);
            if refusals > 0 && failures > failures_seen {
                refusals -= 1;
                failures_seen = failures;
                if refusals == 0 {
                    for (h, ..) in &listeners {
                        w.client.sockets.get_mut::<tcp::Socket>(*h).listen(8000).unwrap();
                    }
                }
            }
            for (h, answer, req, answered) in listeners.iter_mut() {
                let s = w.client.sockets.get_mut::<tcp::Socket>(*h);
                while s.can_recv() {
                    let mut buf = [0u8; 1024];
                    let n = s.recv_slice(&mut buf).unwrap();
                    req.extend_from_slice(&buf[..n]);
                }
                if !*answered && req.windows(4).any(|x| x == b"\r\n\r\n") {
                    s.send_slice(answer.as_bytes()).unwrap();
                    s.close();
                    *answered = true;
                }
            }
        }
        listeners.iter().filter(|l| l.3).map(|l| String::from_utf8_lossy(&l.2).into_owned()).collect()
    }

    const KICKSTART: &str = "vmaccepteula\nrootpw --iscrypted $6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0\nkeyboard German\nnetwork --bootproto=static --ip=10.0.0.1 --netmask=255.255.255.0 --hostname=esx-fetched\n";

    #[test]
    fn kickstart_fetch_retries_server_errors_then_applies_it() {
        let mut w = World::new(static_cfg(None), None);
        w.server.fetch_kickstart(&w.host, "http://10.0.0.2:8000/ks/host.cfg", None).unwrap();
        let ok = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{KICKSTART}", KICKSTART.len());
        let requests = serve_kickstart(
            &mut w,
            &[
                Some("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"),
                Some("HTTP/1.1 500 Internal Server Error\r\n\r\n"),
                Some(&ok),
            ],
            60_000,
        );
        let log = w.server.take_log().join("\n");
        assert!(!w.server.downloading(), "{log}");
        assert_eq!(requests.len(), 3, "{log}");
        assert!(
            requests[0].starts_with("GET /ks/host.cfg HTTP/1.1\r\nHost: 10.0.0.2:8000\r\n"),
            "{}",
            requests[0]
        );
        assert!(
            log.contains("attempt 1 failed: server error 503 Service Unavailable; next attempt in 100 ms"),
            "{log}"
        );
        assert!(
            log.contains("attempt 2 failed: server error 500 Internal Server Error; next attempt in 200 ms"),
            "{log}"
        );
        assert!(
            log.contains("fetched") && log.contains("applied (not stored: no configuration store)"),
            "{log}"
        );
        assert_eq!(w.host.config.keyboard, "German");
        assert_eq!(w.host.config.network.hostname, "esx-fetched");
        assert_eq!(w.host.root.hash().scheme(), "sha512-crypt");
        assert_eq!(w.server.take_notice(), Some(None));
    }

    #[test]
    fn kickstart_fetch_retries_refused_connections_and_a_404_is_final() {
        let mut w = World::new(static_cfg(None), None);
        let before = w.host.config.clone();
        w.server.fetch_kickstart(&w.host, "http://10.0.0.2:8000/missing.cfg", None).unwrap();
        let requests = serve_kickstart(
            &mut w,
            &[None, None, Some("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")],
            60_000,
        );
        let log = w.server.take_log().join("\n");
        assert_eq!(requests.len(), 1, "{log}");
        assert!(log.contains("attempt 1 failed: connection to 10.0.0.2:8000 refused or reset"), "{log}");
        assert!(log.contains("attempt 2 failed: connection to 10.0.0.2:8000 refused or reset"), "{log}");
        assert!(
            log.contains("ERROR: first boot: kickstart http://10.0.0.2:8000/missing.cfg: HTTP 404 Not Found"),
            "{log}"
        );
        assert!(!w.server.downloading());
        assert_eq!(w.host.config, before, "nothing applied");
        let notice = w.server.take_notice().unwrap().unwrap();
        assert!(notice.contains("HTTP 404 Not Found") && notice.contains("Nothing was applied"), "{notice}");
    }

    #[test]
    fn a_bad_fetched_kickstart_names_its_line_and_an_api_change_wins_over_a_download() {
        let mut w = World::new(static_cfg(None), None);
        w.server.fetch_kickstart(&w.host, "http://10.0.0.2:8000/ks.cfg", None).unwrap();
        let bad = "vmaccepteula\nrootpw long-enough\n%include more.cfg\n";
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{bad}", bad.len());
        serve_kickstart(&mut w, &[Some(&answer)], 60_000);
        let log = w.server.take_log().join("\n");
        assert!(log.contains("error parsing the installation script: http://10.0.0.2:8000/ks.cfg:line 3: %include more.cfg: cannot read more.cfg: includes are not supported"), "{log}");
        assert_eq!(w.host.config.keyboard, "US Default");

        let mut w = World::new(static_cfg(None), None);
        w.server.fetch_kickstart(&w.host, "http://10.0.0.2:8000/ks.cfg", None).unwrap();
        let mut host = w.host.config.clone();
        host.keyboard = "French".into();
        w.host.commit(host).unwrap();
        w.step();
        assert!(!w.server.downloading());
        assert!(w
            .server
            .take_log()
            .iter()
            .any(|l| l.contains("abandoned: the configuration was changed through the API")));
    }

    #[test]
    fn test_management_network_pings_and_resolves() {
        let cfg = ManagementConfig {
            ipv4: Ipv4Mode::Static {
                address: Ipv4Addr::new(10, 0, 0, 1),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 2)),
            },
            dns: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 77)],
            ..ManagementConfig::default()
        };
        let mut w = World::new(cfg, None);
        w.server.start_network_test(w.now);
        assert!(w.server.take_test_changed());
        let labels: Vec<&str> = w.server.network_test().iter().map(|c| c.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "Pinging default gateway (10.0.0.2).",
                "Pinging primary DNS server (10.0.0.2).",
                "Pinging alternate DNS server (10.0.0.77).",
                "Resolving hostname (ember)."
            ]
        );
        // The client host answers echo requests; 10.0.0.77 does not exist; nobody answers DNS.
        w.run_until(TEST_TIMEOUT_MS + 500, |_| false);
        let results: Vec<Option<bool>> = w.server.network_test().iter().map(|c| c.ok).collect();
        assert_eq!(results, [Some(true), Some(true), Some(false), Some(false)]);
        assert!(w.server.take_test_changed());
        // Without an address every check fails at once.
        let mut w = World::new(ManagementConfig::default(), None);
        w.server.start_network_test(0);
        assert!(w.server.network_test().iter().all(|c| c.ok == Some(false)));
    }
}
