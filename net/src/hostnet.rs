//! The host's NICs and its standard virtual switch `vSwitch0`, owned by the appliance and lent to
//! the management network for each call. The management interface (`vmk0`) is a port of the
//! switch; the NIC the management settings name (`network.uplink`) is the switch's uplink, and the
//! management VLAN is the VLAN of vmk0's port (the switch tags and strips it).
//!
//! Frames move NIC -> switch -> vmk0 (and back) in [`HostNetwork::pump`], which the management
//! loop calls around each poll of its IP stack; the IP stack reaches vmk0 through [`VmkNic`].
//!
//! VM NICs are ports too: [`HostNetwork::attach_vm`] when the VM starts, frames moved between
//! the switch and the NIC's [`NetPort`] by [`HostNetwork::move_vm_frames`], [`HostNetwork::detach`]
//! when it stops.
//!
//! For now the switch is the only one and its port groups are the ones ESXi's installer makes:
//! "Management Network" (vmk0) and "VM Network" (VLAN 0, for VMs). Switches and port groups in
//! the configuration come with the rest of issue 18.

use crate::nic::MAX_FRAME;
use crate::vswitch::{PortId, PortKind, PortSettings, Switch, Verdict};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ember_hw::nic::{ManagedNic, Nic};
use ember_vmm::virtio_net::NetPort;
use serde_json::{json, Value};

/// The default switch's name and MTU, as ESXi's installer makes it.
pub const DEFAULT_SWITCH: &str = "vSwitch0";
pub const DEFAULT_MTU: u16 = 1500;
/// Frames taken from one NIC per pump (the rest wait in its ring for the next).
const RX_BURST: usize = 64;
/// The port group for VMs a fresh host has.
pub const VM_NETWORK: &str = "VM Network";
/// The management interface's port group.
pub const MANAGEMENT_NETWORK: &str = "Management Network";

/// The settings of the VM port group `name`, or why a VM NIC cannot use it.
pub fn vm_portgroup(name: &str) -> Result<PortSettings, String> {
    if name == VM_NETWORK {
        return Ok(PortSettings::untagged());
    }
    Err(format!("port group {name:?} does not exist on this host (its VM port group: {VM_NETWORK:?})"))
}

/// The host's NICs and virtual switch.
pub struct HostNetwork {
    /// The physical NICs, `vmnic0`... in PCI order.
    pub nics: Vec<ManagedNic>,
    pub switch: Switch,
    /// The NICs that are uplinks: (index in `nics`, switch port).
    uplinks: Vec<(usize, PortId)>,
    /// vmk0's port and MAC, while the management interface is connected.
    vmk: Option<(PortId, [u8; 6])>,
    /// The management VLAN (0: untagged).
    vmk_vlan: u16,
    /// The VM ports and their port groups.
    vm_ports: Vec<(PortId, String)>,
    now_us: u64,
}

impl HostNetwork {
    pub fn new(nics: Vec<ManagedNic>) -> Self {
        HostNetwork {
            nics,
            switch: Switch::new(DEFAULT_SWITCH, DEFAULT_MTU),
            uplinks: Vec::new(),
            vmk: None,
            vmk_vlan: 0,
            vm_ports: Vec::new(),
            now_us: 0,
        }
    }

    /// Connects the management interface: `nic` becomes vSwitch0's uplink and vmk0 a port in
    /// `vlan` (`None`: untagged) with the NIC's MAC, as ESXi gives vmk0 the MAC of its first
    /// uplink. What was connected before is disconnected first. Returns vmk0's MAC, or `None`
    /// when there is no such NIC.
    pub fn connect_management(&mut self, nic: usize, vlan: Option<u16>) -> Option<[u8; 6]> {
        self.disconnect_management();
        let n = self.nics.get_mut(nic)?;
        let mac = n.nic.mac();
        let link = n.nic.link_up();
        let name = n.name.clone();
        let now = self.now_us;
        let up = self.switch.add_port(PortKind::Uplink, &name, mac, PortSettings::untagged(), now);
        self.switch.set_link(up, link);
        self.switch.set_failover_order(&[up], &[]);
        self.uplinks.push((nic, up));
        self.update_promiscuous();
        let settings = PortSettings { vlan: vlan.unwrap_or(0), ..PortSettings::untagged() };
        let vmk = self.switch.add_port(PortKind::Vmkernel, "vmk0", mac, settings, now);
        self.vmk = Some((vmk, mac));
        self.vmk_vlan = settings.vlan;
        Some(mac)
    }

    /// Takes the management interface and its uplink off the switch (their queued frames go).
    pub fn disconnect_management(&mut self) {
        if let Some((port, _)) = self.vmk.take() {
            self.switch.remove_port(port);
        }
        for (nic, port) in self.uplinks.drain(..) {
            self.switch.remove_port(port);
            if let Some(n) = self.nics.get_mut(nic) {
                n.nic.set_promiscuous(false);
            }
        }
    }

    /// A NIC's link as its driver reports it now; an uplink's link decides whether the switch
    /// uses it.
    pub fn link_up(&mut self, nic: usize) -> bool {
        let Some(n) = self.nics.get_mut(nic) else { return false };
        let up = n.nic.link_up();
        if let Some(&(_, port)) = self.uplinks.iter().find(|(i, _)| *i == nic) {
            self.switch.set_link(port, up);
        }
        up
    }

    /// Moves frames from the uplinks into the switch and from the switch out of the uplinks.
    /// Returns whether any moved.
    pub fn pump(&mut self, now_ms: u64) -> bool {
        self.set_time(now_ms);
        let mut moved = false;
        let mut buf = [0u8; MAX_FRAME];
        for &(nic, port) in &self.uplinks {
            let Some(n) = self.nics.get_mut(nic) else { continue };
            for _ in 0..RX_BURST {
                let Some(len) = n.nic.receive(&mut buf) else { break };
                self.switch.ingress(port, buf.get(..len).unwrap_or_default(), self.now_us);
                moved = true;
            }
            while self.switch.has_frames(port) && n.nic.can_transmit() {
                if let Some(frame) = self.switch.take(port) {
                    // A frame the driver refuses (too large for it) is gone; its ring has room.
                    let _ = n.nic.transmit(&frame);
                    moved = true;
                }
            }
        }
        moved
    }

    /// Plugs a VM's NIC into the switch with `settings` (its port group's). Refused when another
    /// port has its MAC (two ports with one address would each get the other's frames).
    pub fn attach_vm(
        &mut self,
        name: &str,
        portgroup: &str,
        mac: [u8; 6],
        settings: PortSettings,
    ) -> Result<PortId, String> {
        // vmk0 takes the MAC of the NIC it is connected to, at any later (re)connection too.
        let taken = self.vmk.is_some_and(|(_, m)| m == mac)
            || self.nics.iter().any(|n| n.nic.mac() == mac)
            || self
                .switch
                .ports()
                .any(|(id, kind, _)| kind == PortKind::Vm && self.switch.mac(id) == Some(mac));
        if taken {
            return Err(format!(
                "{}: MAC address {} is in use by another port",
                name,
                ember_hw::nic::mac_string(&mac)
            ));
        }
        let id = self.switch.add_port(PortKind::Vm, name, mac, settings, self.now_us);
        self.vm_ports.push((id, portgroup.to_string()));
        self.update_promiscuous();
        Ok(id)
    }

    /// Takes a VM's NIC off the switch.
    pub fn detach(&mut self, port: PortId) {
        self.switch.remove_port(port);
        self.vm_ports.retain(|(p, _)| *p != port);
        self.update_promiscuous();
    }

    /// The uplinks receive every frame while VM ports (with MACs of their own) are on the switch,
    /// and only their own and broadcast/multicast frames otherwise.
    fn update_promiscuous(&mut self) {
        let on = !self.vm_ports.is_empty();
        for &(nic, _) in &self.uplinks {
            if let Some(n) = self.nics.get_mut(nic) {
                n.nic.set_promiscuous(on);
            }
        }
    }

    /// The switch as `GET /api/v1/network/switches` shows it: its MTU, uplinks, port groups and
    /// every port with its counters.
    pub fn to_json(&self) -> Value {
        let sw = &self.switch;
        let name_of = |id: PortId| sw.port_name(id).unwrap_or_default().to_string();
        let active: Vec<String> = self.uplinks.iter().map(|&(_, p)| name_of(p)).collect();
        let ports: Vec<Value> = sw
            .ports()
            .map(|(id, kind, name)| {
                let (kind, group) = match kind {
                    PortKind::Uplink => ("uplink", None),
                    PortKind::Vmkernel => ("vmkernel", Some(MANAGEMENT_NETWORK.to_string())),
                    PortKind::Vm => {
                        ("vm", self.vm_ports.iter().find(|(p, _)| *p == id).map(|(_, g)| g.clone()))
                    }
                };
                let c = sw.counters(id).unwrap_or_default();
                json!({
                    "name": name,
                    "type": kind,
                    "portgroup": group,
                    "mac": sw.mac(id).map(|m| ember_hw::nic::mac_string(&m)),
                    "link": if sw.link(id) { "up" } else { "down" },
                    "counters": {
                        "packets_sent": c.tx_packets, "bytes_sent": c.tx_bytes, "dropped_sent": c.tx_dropped,
                        "packets_received": c.rx_packets, "bytes_received": c.rx_bytes,
                        "dropped_received": c.rx_dropped,
                    },
                })
            })
            .collect();
        json!({"switches": [{
            "name": sw.name,
            "mtu": sw.mtu(),
            "uplinks": {"active": active, "standby": []},
            "portgroups": [
                {"name": MANAGEMENT_NETWORK, "vlan": self.vmk_vlan},
                {"name": VM_NETWORK, "vlan": 0},
            ],
            "ports": ports,
        }]})
    }

    /// Moves frames between a VM NIC's switch port and its [`NetPort`]: what the guest sent into
    /// the switch (a frame over its shaping limit and those after it wait), what the switch has
    /// for it to the guest. Returns (whether any moved, whether any were handed to the guest:
    /// its VM must be woken for them).
    pub fn move_vm_frames(&mut self, port: PortId, nic: &NetPort) -> (bool, bool) {
        self.switch.set_link(port, nic.link_up());
        let mut moved = false;
        let mut sent = nic.take_sent(RX_BURST).into_iter();
        while let Some(frame) = sent.next() {
            if let Verdict::Shaped { .. } = self.switch.ingress(port, &frame, self.now_us) {
                let mut back = alloc::vec![frame];
                back.extend(sent);
                nic.untake_sent(back);
                break;
            }
            moved = true;
        }
        let frames: Vec<Vec<u8>> = core::iter::from_fn(|| self.switch.take(port)).collect();
        moved |= !frames.is_empty();
        let delivered = !frames.is_empty() && nic.deliver(frames) > 0;
        (moved, delivered)
    }

    /// The clock the switch's shaping runs on (the management loop's, ms).
    pub fn set_time(&mut self, now_ms: u64) {
        self.now_us = now_ms.saturating_mul(1000);
    }

    /// vmk0 as a NIC for the IP stack, while connected.
    pub fn vmk(&mut self) -> Option<VmkNic<'_>> {
        let (port, mac) = self.vmk?;
        Some(VmkNic { switch: &mut self.switch, port, mac, now_us: self.now_us })
    }
}

/// The management interface's port, seen as a NIC: what it receives is what the switch queued
/// for it, what it sends enters the switch.
pub struct VmkNic<'a> {
    switch: &'a mut Switch,
    port: PortId,
    mac: [u8; 6],
    now_us: u64,
}

impl Nic for VmkNic<'_> {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&mut self) -> bool {
        self.switch.active_uplink().is_some()
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let frame = self.switch.take(self.port)?;
            if let Some(dst) = buf.get_mut(..frame.len()) {
                dst.copy_from_slice(&frame);
                return Some(frame.len());
            }
        }
    }

    fn can_transmit(&mut self) -> bool {
        true
    }

    fn transmit(&mut self, frame: &[u8]) -> bool {
        matches!(self.switch.ingress(self.port, frame, self.now_us), Verdict::Forwarded(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nic::FakeNic;
    use alloc::boxed::Box;
    use alloc::string::String;

    const MAC0: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x10];
    const PEER: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];

    /// A host with vmnic0 wired to the returned peer NIC.
    fn host(link: bool) -> (HostNetwork, FakeNic) {
        let (mut a, wire) = FakeNic::pair(MAC0, PEER);
        a.link = link;
        let nics = alloc::vec![ManagedNic { name: String::from("vmnic0"), driver: "fake", nic: Box::new(a) }];
        (HostNetwork::new(nics), wire)
    }

    fn frame(dst: [u8; 6], src: [u8; 6], tag: Option<u16>) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        if let Some(v) = tag {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0x5a; 46]);
        f
    }

    #[test]
    fn the_management_interface_reaches_the_wire_through_the_switch_with_its_vlan() {
        let (mut h, mut peer) = host(true);
        assert_eq!(h.connect_management(0, Some(10)), Some(MAC0));
        // Sent by vmk0: tagged 10 on the wire.
        assert!(h.vmk().unwrap().transmit(&frame(PEER, MAC0, None)));
        assert!(h.pump(1));
        let mut got = [0u8; 100];
        let n = peer.receive(&mut got).unwrap();
        assert_eq!(&got[..n], &frame(PEER, MAC0, Some(10))[..]);
        // Received tagged 10: untagged to vmk0; tagged 11 and untagged: not for it.
        peer.transmit(&frame(MAC0, PEER, Some(10)));
        peer.transmit(&frame(MAC0, PEER, Some(11)));
        peer.transmit(&frame(MAC0, PEER, None));
        assert!(h.pump(2));
        let mut vmk = h.vmk().unwrap();
        let n = vmk.receive(&mut got).unwrap();
        assert_eq!(&got[..n], &frame(MAC0, PEER, None)[..]);
        assert!(vmk.receive(&mut got).is_none());
        assert!(!h.pump(3), "nothing left to move");
    }

    #[test]
    fn reconnecting_moves_vmk0_to_the_new_settings_and_a_missing_nic_is_none() {
        let (mut h, mut peer) = host(true);
        h.connect_management(0, Some(10));
        h.connect_management(0, None);
        assert_eq!(h.switch.ports().count(), 2, "the old ports are gone");
        peer.transmit(&frame(MAC0, PEER, None));
        h.pump(1);
        let mut got = [0u8; 100];
        assert!(h.vmk().unwrap().receive(&mut got).is_some());
        assert_eq!(h.connect_management(3, None), None);
        assert!(h.vmk().is_none());
        assert_eq!(h.switch.ports().count(), 0);
    }

    #[test]
    fn a_vm_nic_talks_to_the_wire_and_to_vmk0_and_its_mac_must_be_free() {
        let (mut h, mut peer) = host(true);
        h.connect_management(0, None);
        const VM: [u8; 6] = [0x02, 0x45, 0x4d, 1, 2, 3];
        let nic = NetPort::new(VM, 1500, None);
        let settings = vm_portgroup(VM_NETWORK).unwrap();
        assert!(vm_portgroup("DMZ").unwrap_err().contains("does not exist"));
        assert!(h.attach_vm("vm1 nic0", VM_NETWORK, MAC0, settings).unwrap_err().contains("in use"));
        h.disconnect_management();
        assert!(
            h.attach_vm("vm1 nic0", VM_NETWORK, MAC0, settings).is_err(),
            "a host NIC's MAC, even without vmk0"
        );
        h.connect_management(0, None);
        let port = h.attach_vm("vm1 nic0", VM_NETWORK, VM, settings).unwrap();
        assert!(h.attach_vm("vm2 nic0", VM_NETWORK, VM, settings).is_err());
        // The guest's broadcast reaches the wire and vmk0.
        nic.untake_sent(alloc::vec![frame([0xff; 6], VM, None)]);
        assert_eq!(h.move_vm_frames(port, &nic), (true, false));
        h.pump(1);
        let mut got = [0u8; 100];
        assert_eq!(peer.receive(&mut got), Some(60));
        assert!(h.vmk().unwrap().receive(&mut got).is_some());
        // The wire's answer reaches the guest.
        peer.transmit(&frame(VM, PEER, None));
        h.pump(2);
        assert_eq!(h.move_vm_frames(port, &nic), (true, true));
        // Its link down: nothing for it.
        nic.set_link(false);
        peer.transmit(&frame(VM, PEER, None));
        h.pump(3);
        assert_eq!(h.move_vm_frames(port, &nic), (false, false));
        assert!(peer.peer_promiscuous(), "the uplink takes every frame while a VM port is on");
        h.detach(port);
        assert!(!peer.peer_promiscuous(), "and only its own once none is");
        assert!(h.attach_vm("vm2 nic0", VM_NETWORK, VM, settings).is_ok(), "its MAC is free again");
    }

    #[test]
    fn an_uplink_without_link_carries_nothing() {
        let (mut h, _peer) = host(false);
        h.connect_management(0, None);
        assert!(!h.link_up(0));
        assert!(!h.vmk().unwrap().link_up());
        assert!(!h.vmk().unwrap().transmit(&frame(PEER, MAC0, None)));
    }
}
