//! The forwarding engine of a standard virtual switch (ESXi's vSS model): ports, VLANs, security
//! policy, egress shaping, uplink failover and counters. Pure logic over byte frames; the
//! management loop moves frames between it and the NIC drivers, the management interface and the
//! VMs' NICs.
//!
//! **Not wired yet**: nothing in the appliance sends frames through a [`Switch`] so far (the
//! management interface still owns its NIC directly, and guests have no NIC). This module is the
//! first part of issue 18; see `docs/status.md`.
//!
//! The rules, as ESXi's standard switch has them:
//! - Every port is an **uplink** (a physical NIC in promiscuous mode), the **management interface**
//!   (`vmk0`) or a **VM NIC**. Internal ports (all but uplinks) belong to a port group with a VLAN
//!   ID: 0 untagged, 1-4094 tagged on the uplink and stripped towards the port, 4095 the guest
//!   tags itself (trunk: every VLAN passes, tags kept).
//! - The switch knows the MAC of every internal port (no learning). A unicast frame goes to the
//!   internal port with that MAC in the same VLAN; from an internal port to an unknown MAC it goes
//!   out of the active uplink; from an uplink to an unknown MAC it is not ours and goes nowhere.
//! - Broadcast and multicast go to every internal port in the VLAN and, from an internal port, out
//!   of the active uplink - never back out of the port they came from, never out of a second uplink.
//!   Frames arriving on an uplink that is not the active one are dropped (a physical switch floods
//!   to every uplink: taking them from one only keeps copies out), as are frames from an uplink
//!   whose source MAC is one of our ports' (our own broadcasts reflected back).
//! - Uplinks fail over in their configured order (explicit failover order): the first active-list
//!   uplink whose link is up carries the traffic; with none up, the first standby uplink that is.
//! - Security policy per port group: promiscuous mode (a port that asks for it sees every frame of
//!   its VLANs), MAC address changes (rejected: a port whose guest set a MAC other than its own
//!   receives nothing), forged transmits (rejected: frames whose source MAC is not the port's
//!   effective MAC are dropped).
//! - Egress shaping per port group, on what VM NICs send into the switch: average and peak
//!   bandwidth in kbit/s and a burst size in KiB (token buckets; a frame over the limit waits).
//! - MTU per switch: frames whose payload exceeds it are dropped at ingress.
//! - The management interface's frames to an uplink wait in a queue of their own, taken first: a
//!   VM sending at line rate fills the uplink's queue with its frames, not the host's way out.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

/// 802.1Q tag protocol identifier.
pub const TPID_8021Q: u16 = 0x8100;
/// Tag protocol identifiers of stacked tags (802.1ad S-tag and its pre-standard form): a guest on
/// an access port group may not send them (on a physical trunk they would put its frame in
/// another VLAN).
const OUTER_TPIDS: [u16; 3] = [TPID_8021Q, 0x88a8, 0x9100];
/// VLAN ID 4095 is reserved on the wire (802.1Q); frames tagged with it are dropped.
const VID_RESERVED: u16 = 0x0fff;
/// The VLAN ID of a port group whose guests tag their own frames (ESXi's VGT mode).
pub const VLAN_TRUNK: u16 = 4095;
/// The smallest and largest switch MTU (IPv6's minimum link MTU; jumbo frames).
pub const MIN_MTU: u16 = 1280;
pub const MAX_MTU: u16 = 9000;
/// Bytes a port's queue of frames to be taken by its owner holds at most; frames past it are
/// dropped and counted (a VM that does not empty its receive ring must not take the host's memory).
pub const PORT_QUEUE_BYTES: usize = 1 << 20;
const ETH_HEADER: usize = 14;

/// Which end of the switch a port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// A physical NIC.
    Uplink,
    /// The management interface (`vmk0`).
    Vmkernel,
    /// A VM's NIC.
    Vm,
}

/// Security policy of a port group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Security {
    pub promiscuous: bool,
    pub mac_changes: bool,
    pub forged_transmits: bool,
}

impl Default for Security {
    /// ESXi's standard-switch defaults: promiscuous mode rejected, MAC address changes and forged
    /// transmits accepted. Ember keeps them so that guests moved from ESXi (clusters with floating
    /// MACs, nested hypervisors with promiscuous mode set explicitly) behave the same; a port group
    /// that needs isolation rejects both.
    fn default() -> Self {
        Security { promiscuous: false, mac_changes: true, forged_transmits: true }
    }
}

/// Egress traffic shaping: ESXi's three figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shaping {
    /// Long-term average, kbit/s.
    pub average_kbps: u64,
    /// Most bandwidth while a burst lasts, kbit/s (at least the average).
    pub peak_kbps: u64,
    /// Bytes (in KiB) a port may send above the average after it has sent less.
    pub burst_kib: u64,
}

/// What applies to an internal port: its port group's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSettings {
    /// 0-4094, or [`VLAN_TRUNK`].
    pub vlan: u16,
    pub security: Security,
    pub shaping: Option<Shaping>,
}

impl PortSettings {
    /// Untagged, default security, no shaping.
    pub fn untagged() -> Self {
        PortSettings { vlan: 0, security: Security::default(), shaping: None }
    }
}

/// A port's counters, from the port's side (`tx`: what the port sent into the switch; `rx`: what
/// the switch handed to it), as `esxcli network port stats get` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames the port sent that the switch refused (forged source, a tag on a non-trunk port
    /// group, larger than the MTU, shorter than a header, no uplink to carry them).
    pub tx_dropped: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames for the port dropped because its queue was full.
    pub rx_dropped: u64,
}

/// Identifies a port of one switch.
pub type PortId = usize;

/// Why a frame went nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    Runt,
    Oversized,
    /// A tagged (or stacked-tagged) frame from a port group with a VLAN ID below 4095.
    TaggedOnAccessPort,
    /// Tagged with the reserved VLAN ID 4095.
    ReservedVlan,
    /// From a port whose link is down.
    LinkDown,
    Forged,
    /// From an uplink that is not the active one.
    InactiveUplink,
    /// From an uplink, with the source MAC of one of our own ports.
    Reflected,
    /// Nowhere to go (an unknown unicast MAC with no uplink up, or not ours from an uplink).
    NoDestination,
    /// The port is unknown or was removed.
    NoSuchPort,
}

/// What became of a frame offered to [`Switch::ingress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded to this many ports (copies queued; a full queue counts on that port).
    Forwarded(usize),
    /// Over the port's shaping limit: not taken; offer it again after this many microseconds.
    Shaped {
        retry_after_us: u64,
    },
    Dropped(Drop),
}

/// Token buckets for one port's egress shaping.
#[derive(Debug, Clone)]
struct Shaper {
    limits: Shaping,
    /// Tokens in bytes, scaled by 1,000,000 (byte-microseconds are exact with integer rates).
    average: u128,
    peak: u128,
    last_us: u64,
}

const SCALE: u128 = 1_000_000;

impl Shaper {
    fn new(limits: Shaping, now_us: u64) -> Self {
        let mut s = Shaper { limits, average: 0, peak: 0, last_us: now_us };
        s.average = s.average_capacity();
        s.peak = s.peak_capacity();
        s
    }

    /// The average bucket holds the burst (at least one largest frame, or nothing could pass).
    fn average_capacity(&self) -> u128 {
        (self.limits.burst_kib as u128 * 1024).max((MAX_MTU as usize + ETH_HEADER + 4) as u128) * SCALE
    }

    /// The peak bucket holds a millisecond at the peak rate, at least one largest frame.
    fn peak_capacity(&self) -> u128 {
        (self.limits.peak_kbps as u128 * 1000 / 8 / 1000).max((MAX_MTU as usize + ETH_HEADER + 4) as u128)
            * SCALE
    }

    /// Bytes per second as tokens per microsecond, scaled: kbit/s * 1000 / 8 bytes/s.
    fn refill(&mut self, now_us: u64) {
        let elapsed = now_us.saturating_sub(self.last_us) as u128;
        self.last_us = self.last_us.max(now_us);
        let avg_rate = self.limits.average_kbps as u128 * 1000 / 8; // bytes per second = scaled per µs
        let peak_rate = self.limits.peak_kbps.max(self.limits.average_kbps) as u128 * 1000 / 8;
        self.average =
            self.average.saturating_add(avg_rate.saturating_mul(elapsed)).min(self.average_capacity());
        self.peak = self.peak.saturating_add(peak_rate.saturating_mul(elapsed)).min(self.peak_capacity());
    }

    /// Takes `len` bytes' tokens, or says how long until both buckets hold them.
    fn admit(&mut self, len: usize, now_us: u64) -> Result<(), u64> {
        self.refill(now_us);
        let need = len as u128 * SCALE;
        if self.average >= need && self.peak >= need {
            self.average -= need;
            self.peak -= need;
            return Ok(());
        }
        let avg_rate = (self.limits.average_kbps as u128 * 1000 / 8).max(1);
        let peak_rate = (self.limits.peak_kbps.max(self.limits.average_kbps) as u128 * 1000 / 8).max(1);
        let wait = |have: u128, rate: u128| need.saturating_sub(have).div_ceil(rate);
        let us = wait(self.average, avg_rate).max(wait(self.peak, peak_rate)).max(1);
        Err(u64::try_from(us).unwrap_or(u64::MAX))
    }
}

struct Port {
    kind: PortKind,
    name: String,
    /// The MAC the port was given (the VM definition's; the NIC's own for uplinks).
    mac: [u8; 6],
    /// The MAC the guest set (the same unless it changed it).
    effective_mac: [u8; 6],
    /// The guest asked for every frame (its driver set promiscuous mode).
    wants_promiscuous: bool,
    link_up: bool,
    settings: PortSettings,
    shaper: Option<Shaper>,
    counters: PortCounters,
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    /// Frames of the management interface for an uplink (taken before `queue`), and their bytes.
    urgent: VecDeque<Vec<u8>>,
    urgent_bytes: usize,
}

impl Port {
    /// Whether frames of `vlan` reach this internal port.
    fn in_vlan(&self, vlan: u16) -> bool {
        self.settings.vlan == vlan || self.settings.vlan == VLAN_TRUNK
    }

    /// Whether the port takes frames at all: its link is up, and its guest kept its MAC or may
    /// change it.
    fn receives(&self) -> bool {
        self.link_up && (self.effective_mac == self.mac || self.settings.security.mac_changes)
    }

    fn promiscuous(&self) -> bool {
        self.wants_promiscuous && self.settings.security.promiscuous
    }
}

/// A frame as the switch carries it: untagged, with the VLAN it belongs to.
struct Classified<'a> {
    vlan: u16,
    /// Destination and source MAC.
    head: &'a [u8],
    /// Everything after the addresses and the tag (ethertype onwards).
    rest: &'a [u8],
}

impl Classified<'_> {
    fn dst(&self) -> [u8; 6] {
        mac_at(self.head, 0)
    }
    fn src(&self) -> [u8; 6] {
        mac_at(self.head, 6)
    }
    fn untagged_len(&self) -> usize {
        self.head.len() + self.rest.len()
    }
    /// The frame as it leaves through a port: tagged with the VLAN or not.
    fn build(&self, tagged: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.untagged_len() + 4);
        out.extend_from_slice(self.head);
        if tagged {
            out.extend_from_slice(&TPID_8021Q.to_be_bytes());
            out.extend_from_slice(&(self.vlan & 0x0fff).to_be_bytes());
        }
        out.extend_from_slice(self.rest);
        out
    }
}

fn mac_at(b: &[u8], at: usize) -> [u8; 6] {
    let mut m = [0u8; 6];
    if let Some(s) = b.get(at..at + 6) {
        m.copy_from_slice(s);
    }
    m
}

/// Splits a frame into its addresses, its 802.1Q VLAN ID (if tagged) and the rest.
fn split(frame: &[u8]) -> Option<(&[u8], Option<u16>, &[u8])> {
    let head = frame.get(..12)?;
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype == TPID_8021Q {
        let tci = u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]);
        let rest = frame.get(16..)?;
        if rest.len() < 2 {
            return None;
        }
        Some((head, Some(tci & 0x0fff), rest))
    } else {
        Some((head, None, frame.get(12..)?))
    }
}

/// One standard virtual switch.
pub struct Switch {
    pub name: String,
    mtu: u16,
    ports: Vec<Option<Port>>,
    /// Uplinks in failover order, and how many of them are active (the rest are standby).
    uplink_order: Vec<PortId>,
    active_uplinks: usize,
}

impl Switch {
    /// A switch without ports. `mtu` is clamped to [`MIN_MTU`]..=[`MAX_MTU`] (the configuration
    /// refuses other values before this).
    pub fn new(name: &str, mtu: u16) -> Self {
        Switch {
            name: String::from(name),
            mtu: mtu.clamp(MIN_MTU, MAX_MTU),
            ports: Vec::new(),
            uplink_order: Vec::new(),
            active_uplinks: 0,
        }
    }

    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = mtu.clamp(MIN_MTU, MAX_MTU);
    }

    /// Adds a port (its link up) and returns its ID. Uplinks carry no port group settings (theirs
    /// are ignored) and join the failover order as standby until [`Switch::set_failover_order`].
    pub fn add_port(
        &mut self,
        kind: PortKind,
        name: &str,
        mac: [u8; 6],
        settings: PortSettings,
        now_us: u64,
    ) -> PortId {
        let port = Port {
            kind,
            name: String::from(name),
            mac,
            effective_mac: mac,
            wants_promiscuous: false,
            link_up: true,
            settings,
            shaper: None,
            counters: PortCounters::default(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            urgent: VecDeque::new(),
            urgent_bytes: 0,
        };
        let id = match self.ports.iter().position(Option::is_none) {
            Some(free) => {
                self.ports[free] = Some(port);
                free
            }
            None => {
                self.ports.push(Some(port));
                self.ports.len() - 1
            }
        };
        if kind == PortKind::Uplink {
            self.uplink_order.push(id);
        } else {
            self.apply_settings(id, settings, now_us);
        }
        id
    }

    /// Removes a port; its queued frames are gone.
    pub fn remove_port(&mut self, id: PortId) {
        if let Some(slot) = self.ports.get_mut(id) {
            *slot = None;
        }
        if let Some(at) = self.uplink_order.iter().position(|&u| u == id) {
            self.uplink_order.remove(at);
            if at < self.active_uplinks {
                self.active_uplinks -= 1;
            }
        }
    }

    /// Uplinks by port ID: `active` in order, then `standby` in order; uplinks in neither are
    /// left unused. IDs that are not uplinks of this switch are ignored.
    pub fn set_failover_order(&mut self, active: &[PortId], standby: &[PortId]) {
        let is_uplink = |id: &PortId| self.port(*id).is_some_and(|p| p.kind == PortKind::Uplink);
        let active: Vec<PortId> = active.iter().copied().filter(is_uplink).collect();
        let standby: Vec<PortId> =
            standby.iter().copied().filter(is_uplink).filter(|id| !active.contains(id)).collect();
        self.active_uplinks = active.len();
        self.uplink_order = active;
        self.uplink_order.extend(standby);
    }

    /// The uplink carrying traffic now, if any.
    pub fn active_uplink(&self) -> Option<PortId> {
        let up = |id: &&PortId| self.port(**id).is_some_and(|p| p.link_up);
        let (active, standby) = self.uplink_order.split_at(self.active_uplinks.min(self.uplink_order.len()));
        active.iter().find(up).or_else(|| standby.iter().find(up)).copied()
    }

    /// A port group's settings changed (or the port moved to another port group): applies at once;
    /// a new shaping limit starts with a full burst.
    pub fn apply_settings(&mut self, id: PortId, settings: PortSettings, now_us: u64) {
        if let Some(p) = self.port_mut(id) {
            let keep = p.shaper.as_ref().is_some_and(|s| Some(s.limits) == settings.shaping);
            if !keep {
                p.shaper = settings.shaping.map(|l| Shaper::new(l, now_us));
            }
            p.settings = settings;
        }
    }

    /// The link of a port went up or down (an uplink's carrier; a VM NIC connected or not).
    pub fn set_link(&mut self, id: PortId, up: bool) {
        if let Some(p) = self.port_mut(id) {
            p.link_up = up;
            if !up {
                p.queue.clear();
                p.queued_bytes = 0;
                p.urgent.clear();
                p.urgent_bytes = 0;
            }
        }
    }

    /// The MAC address the guest gave its NIC, and whether it asked for promiscuous mode.
    pub fn set_guest_filter(&mut self, id: PortId, effective_mac: [u8; 6], promiscuous: bool) {
        if let Some(p) = self.port_mut(id) {
            p.effective_mac = effective_mac;
            p.wants_promiscuous = promiscuous;
        }
    }

    pub fn counters(&self, id: PortId) -> Option<PortCounters> {
        self.port(id).map(|p| p.counters)
    }

    /// Whether a port's link is up.
    pub fn link(&self, id: PortId) -> bool {
        self.port(id).is_some_and(|p| p.link_up)
    }

    /// The MAC a port was given.
    pub fn mac(&self, id: PortId) -> Option<[u8; 6]> {
        self.port(id).map(|p| p.mac)
    }

    pub fn port_name(&self, id: PortId) -> Option<&str> {
        self.port(id).map(|p| p.name.as_str())
    }

    /// The ports, as (ID, kind, name).
    pub fn ports(&self) -> impl Iterator<Item = (PortId, PortKind, &str)> {
        self.ports.iter().enumerate().filter_map(|(i, p)| p.as_ref().map(|p| (i, p.kind, p.name.as_str())))
    }

    /// The next frame the switch has for a port's owner to take (send out of the NIC, hand to the
    /// IP stack, put in the guest's receive ring).
    pub fn take(&mut self, id: PortId) -> Option<Vec<u8>> {
        let p = self.port_mut(id)?;
        if let Some(f) = p.urgent.pop_front() {
            p.urgent_bytes -= f.len();
            return Some(f);
        }
        let f = p.queue.pop_front()?;
        p.queued_bytes -= f.len();
        Some(f)
    }

    /// Whether a port has frames waiting.
    pub fn has_frames(&self, id: PortId) -> bool {
        self.port(id).is_some_and(|p| !p.queue.is_empty() || !p.urgent.is_empty())
    }

    fn port(&self, id: PortId) -> Option<&Port> {
        self.ports.get(id).and_then(Option::as_ref)
    }

    fn port_mut(&mut self, id: PortId) -> Option<&mut Port> {
        self.ports.get_mut(id).and_then(Option::as_mut)
    }

    /// A frame sent into the switch by port `from` (an uplink's received frame, or what the
    /// management interface or a guest transmitted).
    pub fn ingress(&mut self, from: PortId, frame: &[u8], now_us: u64) -> Verdict {
        let mtu = self.mtu as usize;
        let active = self.active_uplink();
        let Some(src_port) = self.port(from) else { return Verdict::Dropped(Drop::NoSuchPort) };
        let kind = src_port.kind;
        let verdict = self.classify(from, frame, active).and_then(|c| {
            if c.rest.len() - 2 > mtu {
                return Err(Drop::Oversized);
            }
            Ok(c)
        });
        let c = match verdict {
            Ok(c) => c,
            Err(why) => {
                // A standby uplink's copies and our reflected frames are the physical network
                // doing its job, not damaged frames: not counted.
                let counted = kind != PortKind::Uplink || matches!(why, Drop::Runt | Drop::Oversized);
                if let (Some(p), true) = (self.port_mut(from), counted) {
                    p.counters.tx_dropped += 1;
                }
                return Verdict::Dropped(why);
            }
        };
        if kind == PortKind::Vm {
            if let Some(Err(wait)) =
                self.port_mut(from).and_then(|p| p.shaper.as_mut()).map(|s| s.admit(frame.len(), now_us))
            {
                return Verdict::Shaped { retry_after_us: wait };
            }
        }
        let targets = self.destinations(from, kind, &c, active);
        if let Some(p) = self.port_mut(from) {
            if targets.is_empty() {
                // Unicast from an uplink to someone else's MAC is not a drop: it was never ours.
                if kind != PortKind::Uplink {
                    p.counters.tx_dropped += 1;
                }
            } else {
                p.counters.tx_packets += 1;
                p.counters.tx_bytes += frame.len() as u64;
            }
        }
        if targets.is_empty() {
            return Verdict::Dropped(Drop::NoDestination);
        }
        for &t in &targets {
            let Some(p) = self.port_mut(t) else { continue };
            let tagged = match p.kind {
                PortKind::Uplink => c.vlan != 0,
                _ => p.settings.vlan == VLAN_TRUNK && c.vlan != 0,
            };
            // Room first: a flood to a full port costs no copy.
            let len = c.untagged_len() + if tagged { 4 } else { 0 };
            let urgent = kind == PortKind::Vmkernel && p.kind == PortKind::Uplink;
            let (queue, bytes) = if urgent {
                (&mut p.urgent, &mut p.urgent_bytes)
            } else {
                (&mut p.queue, &mut p.queued_bytes)
            };
            if *bytes + len > PORT_QUEUE_BYTES {
                p.counters.rx_dropped += 1;
                continue;
            }
            let out = c.build(tagged);
            *bytes += out.len();
            queue.push_back(out);
            p.counters.rx_packets += 1;
            p.counters.rx_bytes += len as u64;
        }
        Verdict::Forwarded(targets.len())
    }

    /// The frame's VLAN and untagged form, after the ingress rules of port `from`.
    fn classify<'f>(
        &self,
        from: PortId,
        frame: &'f [u8],
        active: Option<PortId>,
    ) -> Result<Classified<'f>, Drop> {
        let p = self.port(from).ok_or(Drop::NoSuchPort)?;
        let (head, tag, rest) = split(frame).ok_or(Drop::Runt)?;
        if !p.link_up {
            return Err(Drop::LinkDown);
        }
        if tag == Some(VID_RESERVED) {
            return Err(Drop::ReservedVlan);
        }
        let inner = u16::from_be_bytes([*rest.first().ok_or(Drop::Runt)?, *rest.get(1).ok_or(Drop::Runt)?]);
        let vlan = match p.kind {
            PortKind::Uplink => {
                if active != Some(from) {
                    return Err(Drop::InactiveUplink);
                }
                tag.unwrap_or(0)
            }
            _ if p.settings.vlan == VLAN_TRUNK => tag.unwrap_or(0),
            // A priority tag (VLAN ID 0) is no VLAN: the frame joins the port group's - unless
            // another tag follows it (or starts the frame), which would carry it into another
            // VLAN on a trunk.
            _ if OUTER_TPIDS.contains(&inner) => return Err(Drop::TaggedOnAccessPort),
            _ => match tag {
                None | Some(0) => p.settings.vlan,
                Some(_) => return Err(Drop::TaggedOnAccessPort),
            },
        };
        let c = Classified { vlan, head, rest };
        match p.kind {
            PortKind::Vm if !p.settings.security.forged_transmits && c.src() != p.effective_mac => {
                Err(Drop::Forged)
            }
            PortKind::Uplink
                if self.internal().any(|(_, q)| q.effective_mac == c.src() || q.mac == c.src()) =>
            {
                Err(Drop::Reflected)
            }
            _ => Ok(c),
        }
    }

    fn internal(&self) -> impl Iterator<Item = (PortId, &Port)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
            .filter(|(_, p)| p.kind != PortKind::Uplink)
    }

    /// Where a classified frame goes.
    fn destinations(
        &self,
        from: PortId,
        kind: PortKind,
        c: &Classified<'_>,
        active: Option<PortId>,
    ) -> Vec<PortId> {
        let dst = c.dst();
        let group = dst[0] & 1 != 0;
        let mut out: Vec<PortId> = Vec::new();
        let mut known = false;
        for (id, p) in self.internal() {
            if id == from || !p.in_vlan(c.vlan) {
                continue;
            }
            let addressed = p.effective_mac == dst;
            known |= addressed;
            if p.receives() && (group || addressed || p.promiscuous()) {
                out.push(id);
            }
        }
        if kind != PortKind::Uplink && (group || !known) {
            if let Some(u) = active {
                out.push(u);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x10];
    const VMK: [u8; 6] = [0x00, 0x50, 0x56, 0, 0, 1];
    const VM_A: [u8; 6] = [0x00, 0x50, 0x56, 0, 0, 0xa];
    const VM_B: [u8; 6] = [0x00, 0x50, 0x56, 0, 0, 0xb];
    const OUTSIDE: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];
    const BCAST: [u8; 6] = [0xff; 6];

    fn frame(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, payload: usize) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        if let Some(v) = vlan {
            f.extend_from_slice(&TPID_8021Q.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.extend((0..payload).map(|i| i as u8));
        f
    }

    fn vlan_of(f: &[u8]) -> Option<u16> {
        split(f).unwrap().1
    }

    fn settings(vlan: u16) -> PortSettings {
        PortSettings { vlan, ..PortSettings::untagged() }
    }

    /// vSwitch0 as a fresh host has it, plus two VMs on "VM Network" (VLAN 0).
    struct Lab {
        sw: Switch,
        up: PortId,
        vmk: PortId,
        a: PortId,
        b: PortId,
    }

    fn lab() -> Lab {
        let mut sw = Switch::new("vSwitch0", 1500);
        let up = sw.add_port(PortKind::Uplink, "vmnic0", HOST_MAC, PortSettings::untagged(), 0);
        sw.set_failover_order(&[up], &[]);
        let vmk = sw.add_port(PortKind::Vmkernel, "vmk0", VMK, PortSettings::untagged(), 0);
        let a = sw.add_port(PortKind::Vm, "a.eth0", VM_A, PortSettings::untagged(), 0);
        let b = sw.add_port(PortKind::Vm, "b.eth0", VM_B, PortSettings::untagged(), 0);
        Lab { sw, up, vmk, a, b }
    }

    fn drain(sw: &mut Switch, id: PortId) -> Vec<Vec<u8>> {
        core::iter::from_fn(|| sw.take(id)).collect()
    }

    #[test]
    fn unicast_goes_to_the_port_with_that_mac_and_unknown_macs_out_of_the_uplink() {
        let mut l = lab();
        let f = frame(VM_B, VM_A, None, 100);
        assert_eq!(l.sw.ingress(l.a, &f, 0), Verdict::Forwarded(1));
        assert_eq!(drain(&mut l.sw, l.b), vec![f.clone()]);
        assert!(drain(&mut l.sw, l.up).is_empty() && drain(&mut l.sw, l.vmk).is_empty());
        let out = frame(OUTSIDE, VM_A, None, 60);
        assert_eq!(l.sw.ingress(l.a, &out, 0), Verdict::Forwarded(1));
        assert_eq!(drain(&mut l.sw, l.up), vec![out]);
        // From the uplink, a MAC that is not ours goes nowhere and is no drop.
        let other = frame([2, 0, 0, 0, 0, 9], OUTSIDE, None, 60);
        assert_eq!(l.sw.ingress(l.up, &other, 0), Verdict::Dropped(Drop::NoDestination));
        assert_eq!(l.sw.counters(l.up).unwrap().tx_dropped, 0);
        let to_vmk = frame(VMK, OUTSIDE, None, 60);
        assert_eq!(l.sw.ingress(l.up, &to_vmk, 0), Verdict::Forwarded(1));
        assert_eq!(drain(&mut l.sw, l.vmk), vec![to_vmk]);
    }

    #[test]
    fn broadcast_reaches_every_port_but_its_source_and_one_uplink() {
        let mut l = lab();
        let standby = l.sw.add_port(
            PortKind::Uplink,
            "vmnic1",
            [0x52, 0x54, 0, 0, 0, 0x11],
            PortSettings::untagged(),
            0,
        );
        l.sw.set_failover_order(&[l.up], &[standby]);
        let f = frame(BCAST, VM_A, None, 28);
        assert_eq!(l.sw.ingress(l.a, &f, 0), Verdict::Forwarded(3));
        for p in [l.vmk, l.b, l.up] {
            assert_eq!(drain(&mut l.sw, p), vec![f.clone()], "port {p}");
        }
        assert!(drain(&mut l.sw, l.a).is_empty() && drain(&mut l.sw, standby).is_empty());
        // From the uplink: every internal port, not back out.
        let g = frame(BCAST, OUTSIDE, None, 28);
        assert_eq!(l.sw.ingress(l.up, &g, 0), Verdict::Forwarded(3));
        assert!(drain(&mut l.sw, l.up).is_empty());
        // The standby uplink's copy of the same broadcast is dropped.
        assert_eq!(l.sw.ingress(standby, &g, 0), Verdict::Dropped(Drop::InactiveUplink));
        // Multicast is flooded like broadcast.
        let m = frame([0x01, 0, 0x5e, 0, 0, 0xfb], VM_B, None, 40);
        assert_eq!(l.sw.ingress(l.b, &m, 0), Verdict::Forwarded(3));
    }

    #[test]
    fn our_own_frames_reflected_by_the_physical_switch_are_dropped() {
        let mut l = lab();
        let f = frame(BCAST, VM_A, None, 28);
        assert_eq!(l.sw.ingress(l.up, &f, 0), Verdict::Dropped(Drop::Reflected));
        assert_eq!(l.sw.ingress(l.up, &frame(BCAST, VMK, None, 28), 0), Verdict::Dropped(Drop::Reflected));
    }

    #[test]
    fn vlans_are_tagged_on_the_uplink_stripped_towards_ports_and_kept_apart() {
        let mut l = lab();
        let v10 = settings(10);
        let c = l.sw.add_port(PortKind::Vm, "c.eth0", [0, 0x50, 0x56, 0, 0, 0xc], v10, 0);
        let trunk =
            l.sw.add_port(PortKind::Vm, "t.eth0", [0, 0x50, 0x56, 0, 0, 0xd], settings(VLAN_TRUNK), 0);
        // c's broadcast: tagged 10 on the uplink, untagged nowhere else but the trunk (tagged).
        let f = frame(BCAST, [0, 0x50, 0x56, 0, 0, 0xc], None, 28);
        assert_eq!(l.sw.ingress(c, &f, 0), Verdict::Forwarded(2));
        let up = drain(&mut l.sw, l.up);
        assert_eq!(vlan_of(&up[0]), Some(10));
        assert_eq!(up[0].len(), f.len() + 4);
        assert_eq!(vlan_of(&drain(&mut l.sw, trunk)[0]), Some(10));
        assert!(drain(&mut l.sw, l.a).is_empty() && drain(&mut l.sw, l.vmk).is_empty());
        // Tagged 10 from the uplink reaches c untagged; tagged 20 reaches only the trunk.
        let g = frame(BCAST, OUTSIDE, Some(10), 28);
        l.sw.ingress(l.up, &g, 0);
        let got = drain(&mut l.sw, c);
        assert_eq!(got, vec![frame(BCAST, OUTSIDE, None, 28)]);
        let h = frame(BCAST, OUTSIDE, Some(20), 28);
        assert_eq!(l.sw.ingress(l.up, &h, 0), Verdict::Forwarded(1));
        assert_eq!(drain(&mut l.sw, trunk), vec![g, h]);
        // An untagged frame from the uplink is VLAN 0: the untagged ports and the trunk (untagged).
        let u = frame(BCAST, OUTSIDE, None, 28);
        assert_eq!(l.sw.ingress(l.up, &u, 0), Verdict::Forwarded(4));
        assert_eq!(drain(&mut l.sw, trunk), vec![u]);
    }

    #[test]
    fn a_guest_tag_on_an_access_port_group_is_dropped_and_a_priority_tag_is_not() {
        let mut l = lab();
        let tagged = frame(OUTSIDE, VM_A, Some(7), 60);
        assert_eq!(l.sw.ingress(l.a, &tagged, 0), Verdict::Dropped(Drop::TaggedOnAccessPort));
        assert_eq!(l.sw.counters(l.a).unwrap().tx_dropped, 1);
        let priority = frame(OUTSIDE, VM_A, Some(0x6000), 60); // PCP 3, VLAN ID 0
        assert_eq!(l.sw.ingress(l.a, &priority, 0), Verdict::Forwarded(1));
        assert_eq!(drain(&mut l.sw, l.up), vec![frame(OUTSIDE, VM_A, None, 60)]);
    }

    #[test]
    fn stacked_tags_and_the_reserved_vlan_cannot_cross_vlans() {
        let mut l = lab();
        let trunk = l.sw.add_port(PortKind::Vm, "t", [0, 0x50, 0x56, 0, 0, 0xd], settings(VLAN_TRUNK), 0);
        // A priority tag followed by a real one, from an access port: refused, as is an S-tag.
        let mut f = frame(BCAST, VM_A, Some(0), 40);
        f.splice(16..16, [0x81, 0x00, 0x00, 0x14]);
        assert_eq!(l.sw.ingress(l.a, &f, 0), Verdict::Dropped(Drop::TaggedOnAccessPort));
        let mut s = frame(BCAST, VM_A, None, 40);
        s[12..14].copy_from_slice(&[0x88, 0xa8]);
        assert_eq!(l.sw.ingress(l.a, &s, 0), Verdict::Dropped(Drop::TaggedOnAccessPort));
        assert!(!l.sw.has_frames(l.up) && !l.sw.has_frames(trunk));
        // VLAN 4095 on the wire or from a trunk guest: dropped.
        assert_eq!(
            l.sw.ingress(l.up, &frame(BCAST, OUTSIDE, Some(4095), 40), 0),
            Verdict::Dropped(Drop::ReservedVlan)
        );
        assert_eq!(
            l.sw.ingress(trunk, &frame(BCAST, [0, 0x50, 0x56, 0, 0, 0xd], Some(4095), 40), 0),
            Verdict::Dropped(Drop::ReservedVlan)
        );
        // A trunk guest may stack tags (it is its VLAN's business).
        let mut q = frame(BCAST, [0, 0x50, 0x56, 0, 0, 0xd], Some(30), 40);
        q.splice(16..16, [0x81, 0x00, 0x00, 0x14]);
        assert!(matches!(l.sw.ingress(trunk, &q, 0), Verdict::Forwarded(_)));
        // From a port whose link is down, nothing.
        l.sw.set_link(l.a, false);
        assert_eq!(l.sw.ingress(l.a, &frame(BCAST, VM_A, None, 40), 0), Verdict::Dropped(Drop::LinkDown));
    }

    #[test]
    fn forged_transmits_and_mac_changes_follow_the_port_groups_policy() {
        let mut l = lab();
        let forged = frame(OUTSIDE, [2, 2, 2, 2, 2, 2], None, 60);
        assert_eq!(l.sw.ingress(l.a, &forged, 0), Verdict::Forwarded(1), "accepted by default");
        let strict = PortSettings {
            security: Security { promiscuous: false, mac_changes: false, forged_transmits: false },
            ..PortSettings::untagged()
        };
        l.sw.apply_settings(l.a, strict, 0);
        assert_eq!(l.sw.ingress(l.a, &forged, 0), Verdict::Dropped(Drop::Forged));
        // The guest changes its MAC: with changes rejected it receives nothing, not even broadcast.
        let new_mac = [0, 0x50, 0x56, 0, 0, 0x99];
        l.sw.set_guest_filter(l.a, new_mac, false);
        l.sw.ingress(l.b, &frame(BCAST, VM_B, None, 28), 0);
        l.sw.ingress(l.b, &frame(new_mac, VM_B, None, 28), 0);
        assert!(drain(&mut l.sw, l.a).is_empty());
        // Its frames from the new MAC pass the forged-transmit check (it is the effective MAC).
        assert_eq!(l.sw.ingress(l.a, &frame(VM_B, new_mac, None, 28), 0), Verdict::Forwarded(1));
        // With changes accepted it receives at its new MAC.
        l.sw.apply_settings(l.a, PortSettings::untagged(), 0);
        l.sw.ingress(l.b, &frame(new_mac, VM_B, None, 28), 0);
        assert_eq!(drain(&mut l.sw, l.a).len(), 1);
    }

    #[test]
    fn promiscuous_mode_needs_both_the_guest_and_the_port_group() {
        let mut l = lab();
        let f = frame(VM_B, VMK, None, 60);
        l.sw.set_guest_filter(l.a, VM_A, true);
        l.sw.ingress(l.vmk, &f, 0);
        assert!(drain(&mut l.sw, l.a).is_empty(), "rejected by default");
        let open = PortSettings {
            security: Security { promiscuous: true, ..Security::default() },
            ..PortSettings::untagged()
        };
        l.sw.apply_settings(l.a, open, 0);
        assert_eq!(l.sw.ingress(l.vmk, &f, 0), Verdict::Forwarded(2));
        assert_eq!(drain(&mut l.sw, l.a), vec![f.clone()]);
        // Not frames of another VLAN.
        let c = l.sw.add_port(PortKind::Vm, "c", [0, 0x50, 0x56, 0, 0, 0xc], settings(5), 0);
        l.sw.ingress(c, &frame(OUTSIDE, [0, 0x50, 0x56, 0, 0, 0xc], None, 60), 0);
        assert!(drain(&mut l.sw, l.a).is_empty());
    }

    #[test]
    fn uplinks_fail_over_in_order_and_back() {
        let mut l = lab();
        let second = l.sw.add_port(
            PortKind::Uplink,
            "vmnic1",
            [0x52, 0x54, 0, 0, 0, 0x11],
            PortSettings::untagged(),
            0,
        );
        let third = l.sw.add_port(
            PortKind::Uplink,
            "vmnic2",
            [0x52, 0x54, 0, 0, 0, 0x12],
            PortSettings::untagged(),
            0,
        );
        l.sw.set_failover_order(&[l.up, second], &[third]);
        assert_eq!(l.sw.active_uplink(), Some(l.up));
        l.sw.set_link(l.up, false);
        assert_eq!(l.sw.active_uplink(), Some(second));
        let f = frame(OUTSIDE, VM_A, None, 60);
        l.sw.ingress(l.a, &f, 0);
        assert_eq!(drain(&mut l.sw, second), vec![f.clone()]);
        l.sw.set_link(second, false);
        assert_eq!(l.sw.active_uplink(), Some(third), "standby takes over");
        l.sw.set_link(third, false);
        assert_eq!(l.sw.active_uplink(), None);
        assert_eq!(l.sw.ingress(l.a, &f, 0), Verdict::Dropped(Drop::NoDestination));
        // Internal traffic does not need an uplink.
        assert_eq!(l.sw.ingress(l.a, &frame(VM_B, VM_A, None, 60), 0), Verdict::Forwarded(1));
        l.sw.set_link(l.up, true);
        assert_eq!(l.sw.active_uplink(), Some(l.up), "failback to the first");
        l.sw.remove_port(l.up);
        l.sw.set_link(third, true);
        assert_eq!(l.sw.active_uplink(), Some(third));
    }

    #[test]
    fn frames_over_the_mtu_and_runts_are_dropped_and_jumbo_frames_pass_a_jumbo_switch() {
        let mut l = lab();
        assert_eq!(l.sw.ingress(l.a, &frame(OUTSIDE, VM_A, None, 1500), 0), Verdict::Forwarded(1));
        assert_eq!(
            l.sw.ingress(l.a, &frame(OUTSIDE, VM_A, None, 1501), 0),
            Verdict::Dropped(Drop::Oversized)
        );
        assert_eq!(l.sw.ingress(l.a, &[0u8; 13], 0), Verdict::Dropped(Drop::Runt));
        assert_eq!(
            l.sw.ingress(l.a, &frame(OUTSIDE, VM_A, Some(5), 0)[..17], 0),
            Verdict::Dropped(Drop::Runt)
        );
        // A tagged 1500-byte payload from the uplink is within the MTU.
        let v = settings(3);
        let c = l.sw.add_port(PortKind::Vm, "c", [0, 0x50, 0x56, 0, 0, 0xc], v, 0);
        let big = frame([0, 0x50, 0x56, 0, 0, 0xc], OUTSIDE, Some(3), 1500);
        assert_eq!(l.sw.ingress(l.up, &big, 0), Verdict::Forwarded(1));
        assert_eq!(drain(&mut l.sw, c)[0].len(), 1514);
        l.sw.set_mtu(9000);
        assert_eq!(l.sw.ingress(l.a, &frame(OUTSIDE, VM_A, None, 9000), 0), Verdict::Forwarded(1));
        assert_eq!(l.sw.counters(l.a).unwrap().tx_dropped, 3);
    }

    #[test]
    fn counters_count_both_directions_and_a_full_queue_drops() {
        let mut l = lab();
        let f = frame(VM_B, VM_A, None, 1486);
        let n = PORT_QUEUE_BYTES / f.len();
        for _ in 0..n + 5 {
            l.sw.ingress(l.a, &f, 0);
        }
        let a = l.sw.counters(l.a).unwrap();
        let b = l.sw.counters(l.b).unwrap();
        assert_eq!((a.tx_packets, a.tx_bytes), ((n + 5) as u64, ((n + 5) * 1500) as u64));
        assert_eq!((b.rx_packets, b.rx_dropped), (n as u64, 5));
        assert_eq!(drain(&mut l.sw, l.b).len(), n);
        // Link down: the queue is emptied and nothing more arrives.
        l.sw.ingress(l.a, &f, 0);
        l.sw.set_link(l.b, false);
        assert!(!l.sw.has_frames(l.b));
        // A disconnected port's MAC is still ours: its frames are not sent out of the uplink.
        assert_eq!(l.sw.ingress(l.a, &f, 0), Verdict::Dropped(Drop::NoDestination));
        assert!(!l.sw.has_frames(l.b) && !l.sw.has_frames(l.up));
    }

    #[test]
    fn the_management_interface_gets_out_while_a_vm_floods_the_uplink() {
        let mut l = lab();
        let flood = frame(OUTSIDE, VM_A, None, 1486);
        while l.sw.ingress(l.a, &flood, 0) == Verdict::Forwarded(1)
            && l.sw.counters(l.up).unwrap().rx_dropped == 0
        {}
        let mgmt = frame(OUTSIDE, VMK, None, 60);
        assert_eq!(l.sw.ingress(l.vmk, &mgmt, 0), Verdict::Forwarded(1));
        assert_eq!(l.sw.take(l.up), Some(mgmt), "taken before the VM's frames");
        assert_eq!(l.sw.take(l.up), Some(flood));
    }

    #[test]
    fn shaping_holds_a_port_to_its_average_after_the_burst_and_its_peak_within_it() {
        // 8,000 kbit/s = 1,000,000 B/s average, 16,000 kbit/s peak, 64 KiB burst.
        let shaping = Shaping { average_kbps: 8000, peak_kbps: 16000, burst_kib: 64 };
        // A switch with an uplink and one shaped VM port.
        let shaped = || {
            let mut sw = Switch::new("s", 1500);
            let up = sw.add_port(PortKind::Uplink, "vmnic0", HOST_MAC, PortSettings::untagged(), 0);
            sw.set_failover_order(&[up], &[]);
            let settings = PortSettings { shaping: Some(shaping), ..PortSettings::untagged() };
            let a = sw.add_port(PortKind::Vm, "a", VM_A, settings, 0);
            (sw, up, a)
        };
        let (mut sw, up, a) = shaped();
        let f = frame(OUTSIDE, VM_A, None, 986); // 1000 bytes
        let mut sent = 0u64;
        let mut now = 0u64;
        // Offer frames as fast as admitted, waiting as told, for one simulated second.
        while now < 1_000_000 {
            match sw.ingress(a, &f, now) {
                Verdict::Forwarded(_) => {
                    sent += 1000;
                    let _ = sw.take(up);
                }
                Verdict::Shaped { retry_after_us } => now += retry_after_us,
                v => panic!("{v:?}"),
            }
        }
        // Average 1 MB/s plus the 64 KiB burst (and what the peak bucket held at the start).
        let expected = 1_000_000 + 64 * 1024;
        assert!(sent <= expected + 20_000 && sent >= expected - 20_000, "sent {sent}");
        // Within the first millisecond at most the peak bucket's contents pass (1 frame of the
        // largest size), so a burst leaves at the peak rate, not at once.
        let (mut sw2, _, a2) = shaped();
        let burst_at_once =
            (0..100).take_while(|_| matches!(sw2.ingress(a2, &f, 0), Verdict::Forwarded(_))).count();
        assert_eq!(burst_at_once, 9, "one peak-bucket's worth: 9018 bytes");
        // Removing the limit lets everything through.
        sw2.apply_settings(a2, PortSettings::untagged(), 0);
        assert_eq!(sw2.ingress(a2, &f, 0), Verdict::Forwarded(1));
    }

    #[test]
    fn removed_ports_free_their_ids_and_unknown_ids_are_refused() {
        let mut l = lab();
        l.sw.remove_port(l.b);
        assert_eq!(l.sw.ingress(l.b, &frame(VM_A, VM_B, None, 40), 0), Verdict::Dropped(Drop::NoSuchPort));
        assert_eq!(l.sw.ingress(99, &frame(VM_A, VM_B, None, 40), 0), Verdict::Dropped(Drop::NoSuchPort));
        // A frame to the removed port's MAC now goes out of the uplink.
        l.sw.ingress(l.a, &frame(VM_B, VM_A, None, 40), 0);
        assert_eq!(drain(&mut l.sw, l.up).len(), 1);
        let again = l.sw.add_port(PortKind::Vm, "c", VM_B, PortSettings::untagged(), 0);
        assert_eq!(again, l.b);
        assert_eq!(l.sw.ports().count(), 4);
    }
}
