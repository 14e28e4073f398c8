//! The network interface card as drivers offer it and the network layers (the management stack, later
//! the virtual switch) use it: frames in and out, the station address and the link state.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;

/// A network interface card.
pub trait Nic {
    /// Station address.
    fn mac(&self) -> [u8; 6];
    /// Whether the link is up (as the device reports it).
    fn link_up(&mut self) -> bool;
    /// Copies the next received frame into `buf` and returns its length, or `None` when no frame is
    /// waiting. Frames larger than `buf` are dropped by the driver.
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize>;
    /// Whether a frame can be queued for transmission now.
    fn can_transmit(&mut self) -> bool;
    /// Queues one frame; returns false when it was dropped (ring full, frame too large).
    fn transmit(&mut self, frame: &[u8]) -> bool;
    /// Receives every frame on the wire, not only those for its own address and broadcast (an
    /// uplink of a virtual switch with VM ports: their MACs are not the NIC's). A NIC that
    /// delivers every frame anyway (QEMU's virtio-net without the control queue) keeps the default.
    fn set_promiscuous(&mut self, _on: bool) {}
}

/// A physical NIC bound by a driver and named as ESXi names them.
pub struct ManagedNic {
    /// `vmnicN`, in PCI order.
    pub name: String,
    /// Driver name for reports.
    pub driver: &'static str,
    pub nic: Box<dyn Nic>,
}

/// Formats a MAC address as `52:54:00:12:34:56`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5])
}

#[cfg(test)]
mod tests {
    #[test]
    fn mac_strings_are_lower_case_hex_with_colons() {
        assert_eq!(super::mac_string(&[0x52, 0x54, 0, 0x12, 0xab, 0xff]), "52:54:00:12:ab:ff");
    }
}
