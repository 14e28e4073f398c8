//! The smoltcp adapter for a NIC ([`Nic`], defined with the drivers in `ember_hw::nic`), with optional
//! 802.1Q tagging.
//!
//! Drivers (virtio-net, e1000e) implement [`Nic`] by copying frames in and out of their DMA buffers;
//! [`Port`] turns one NIC into a smoltcp `phy::Device`, adding and removing the management VLAN tag
//! (IEEE 802.1Q 9.6) on the way. [`FakeNic`] is the in-memory double used by the host tests.

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Largest Ethernet frame handled, without FCS, with room for one VLAN tag (1514 + 4).
pub const MAX_FRAME: usize = 1518;
/// Largest untagged frame handed to the IP stack (MTU 1500 + 14-byte header).
pub const MAX_UNTAGGED_FRAME: usize = 1514;
const TPID_8021Q: u16 = 0x8100;

pub use ember_hw::nic::Nic;

/// Frame counters of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames dropped on receive: wrong VLAN, untagged on a tagged port, runts.
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// Inserts an 802.1Q tag with `vid` after the source address. Returns the tagged length, or `None`
/// when `frame` is shorter than an Ethernet header or `out` is too small.
pub fn insert_vlan_tag(frame: &[u8], vid: u16, out: &mut [u8]) -> Option<usize> {
    if frame.len() < 14 || out.len() < frame.len() + 4 {
        return None;
    }
    out[..12].copy_from_slice(&frame[..12]);
    out[12..14].copy_from_slice(&TPID_8021Q.to_be_bytes());
    out[14..16].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
    out[16..frame.len() + 4].copy_from_slice(&frame[12..]);
    Some(frame.len() + 4)
}

/// What to do with a received frame on a port with the given VLAN setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// Pass the frame up unchanged.
    Pass,
    /// Remove the 4-byte tag at offset 12 and pass it up.
    StripTag,
    /// Not for this port.
    Drop,
}

/// Classifies a received frame: on a tagged port only frames with our VLAN id pass (tag removed); on
/// an untagged port tagged frames are dropped, except priority-tagged ones (VID 0), whose tag is removed.
pub fn classify_ingress(frame: &[u8], vlan: Option<u16>) -> Ingress {
    if frame.len() < 14 {
        return Ingress::Drop;
    }
    let tagged = u16::from_be_bytes([frame[12], frame[13]]) == TPID_8021Q;
    if !tagged {
        return if vlan.is_none() { Ingress::Pass } else { Ingress::Drop };
    }
    if frame.len() < 18 {
        return Ingress::Drop;
    }
    let vid = u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff;
    match vlan {
        Some(v) if v == vid => Ingress::StripTag,
        None if vid == 0 => Ingress::StripTag,
        _ => Ingress::Drop,
    }
}

/// One NIC as a smoltcp device, with the management VLAN applied.
pub struct Port<'a> {
    pub nic: &'a mut dyn Nic,
    pub vlan: Option<u16>,
    pub stats: &'a mut PortStats,
}

impl phy::Device for Port<'_> {
    type RxToken<'b>
        = RxToken
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        loop {
            let mut buf = [0u8; MAX_FRAME];
            let n = self.nic.receive(&mut buf)?;
            let frame = &buf[..n];
            let token = match classify_ingress(frame, self.vlan) {
                Ingress::Pass => RxToken { buf, len: n, start: 0 },
                Ingress::StripTag => {
                    // Move the addresses forward over the tag instead of copying the payload.
                    buf.copy_within(0..12, 4);
                    RxToken { buf, len: n - 4, start: 4 }
                }
                Ingress::Drop => {
                    self.stats.rx_dropped += 1;
                    continue;
                }
            };
            self.stats.rx_frames += 1;
            return Some((token, TxToken { nic: &mut *self.nic, vlan: self.vlan, stats: &mut *self.stats }));
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if !self.nic.can_transmit() {
            return None;
        }
        Some(TxToken { nic: &mut *self.nic, vlan: self.vlan, stats: &mut *self.stats })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_UNTAGGED_FRAME;
        caps.max_burst_size = Some(8);
        caps
    }
}

/// A received frame.
pub struct RxToken {
    buf: [u8; MAX_FRAME],
    start: usize,
    len: usize,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.buf[self.start..self.start + self.len])
    }
}

/// Permission to send one frame.
pub struct TxToken<'a> {
    nic: &'a mut dyn Nic,
    vlan: Option<u16>,
    stats: &'a mut PortStats,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = [0u8; MAX_UNTAGGED_FRAME];
        let len = len.min(MAX_UNTAGGED_FRAME);
        let r = f(&mut frame[..len]);
        let sent = match self.vlan {
            None => self.nic.transmit(&frame[..len]),
            Some(vid) => {
                let mut tagged = [0u8; MAX_FRAME];
                match insert_vlan_tag(&frame[..len], vid, &mut tagged) {
                    Some(n) => self.nic.transmit(&tagged[..n]),
                    None => false,
                }
            }
        };
        if sent {
            self.stats.tx_frames += 1;
        } else {
            self.stats.tx_dropped += 1;
        }
        r
    }
}

/// A software NIC for tests: frames sent go to the peer's receive queue.
#[derive(Clone)]
pub struct FakeNic {
    mac: [u8; 6],
    inbox: Rc<RefCell<VecDeque<Vec<u8>>>>,
    outbox: Rc<RefCell<VecDeque<Vec<u8>>>>,
    pub link: bool,
}

impl FakeNic {
    /// Two NICs wired back to back.
    pub fn pair(a: [u8; 6], b: [u8; 6]) -> (FakeNic, FakeNic) {
        let q1 = Rc::new(RefCell::new(VecDeque::new()));
        let q2 = Rc::new(RefCell::new(VecDeque::new()));
        (
            FakeNic { mac: a, inbox: q1.clone(), outbox: q2.clone(), link: true },
            FakeNic { mac: b, inbox: q2, outbox: q1, link: true },
        )
    }
    /// Puts a raw frame into this NIC's receive queue, as if it came from the wire.
    pub fn inject(&self, frame: &[u8]) {
        self.inbox.borrow_mut().push_back(frame.to_vec());
    }
    /// Takes the frames this NIC has sent (those the peer has not received yet).
    pub fn drain_sent(&self) -> Vec<Vec<u8>> {
        self.outbox.borrow_mut().drain(..).collect()
    }
}

impl Nic for FakeNic {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
    fn link_up(&mut self) -> bool {
        self.link
    }
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let f = self.inbox.borrow_mut().pop_front()?;
            if f.len() <= buf.len() {
                buf[..f.len()].copy_from_slice(&f);
                return Some(f.len());
            }
        }
    }
    fn can_transmit(&mut self) -> bool {
        self.outbox.borrow().len() < 256
    }
    fn transmit(&mut self, frame: &[u8]) -> bool {
        if self.outbox.borrow().len() >= 256 {
            return false;
        }
        self.outbox.borrow_mut().push_back(frame.to_vec());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = alloc::vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn tag_then_classify_round_trip() {
        let f = frame(0x0800, &[1, 2, 3, 4]);
        let mut out = [0u8; 64];
        let n = insert_vlan_tag(&f, 100, &mut out).unwrap();
        assert_eq!(n, f.len() + 4);
        assert_eq!(&out[12..16], &[0x81, 0x00, 0x00, 100]);
        assert_eq!(&out[16..n], &f[12..]);
        assert_eq!(classify_ingress(&out[..n], Some(100)), Ingress::StripTag);
        assert_eq!(classify_ingress(&out[..n], Some(101)), Ingress::Drop);
        assert_eq!(classify_ingress(&out[..n], None), Ingress::Drop);
        assert_eq!(classify_ingress(&f, None), Ingress::Pass);
        assert_eq!(classify_ingress(&f, Some(100)), Ingress::Drop);
    }

    #[test]
    fn runts_and_short_tags_are_dropped() {
        assert_eq!(classify_ingress(&[0; 13], None), Ingress::Drop);
        let mut f = frame(0x8100, &[]);
        f.extend_from_slice(&[0, 5]);
        assert_eq!(classify_ingress(&f, Some(5)), Ingress::Drop);
        assert!(insert_vlan_tag(&[0; 10], 1, &mut [0; 64]).is_none());
        assert!(insert_vlan_tag(&[0; 60], 1, &mut [0; 63]).is_none());
    }

    #[test]
    fn priority_tagged_frames_pass_untagged_ports() {
        let f = frame(0x0800, &[9; 4]);
        let mut out = [0u8; 64];
        let n = insert_vlan_tag(&f, 0, &mut out).unwrap();
        assert_eq!(classify_ingress(&out[..n], None), Ingress::StripTag);
    }

    #[test]
    fn port_strips_and_adds_tags() {
        use smoltcp::phy::{Device, RxToken as _, TxToken as _};
        let (mut a, b) = FakeNic::pair([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let f = frame(0x0800, &[7; 50]);
        let mut tagged = [0u8; 128];
        let n = insert_vlan_tag(&f, 42, &mut tagged).unwrap();
        a.inject(&tagged[..n]);
        a.inject(&f); // untagged: dropped on a tagged port
        let mut stats = PortStats::default();
        let mut port = Port { nic: &mut a, vlan: Some(42), stats: &mut stats };
        let (rx, _) = port.receive(Instant::ZERO).unwrap();
        rx.consume(|got| assert_eq!(got, &f[..]));
        assert!(port.receive(Instant::ZERO).is_none());
        let tx = port.transmit(Instant::ZERO).unwrap();
        tx.consume(f.len(), |buf| buf.copy_from_slice(&f));
        let sent = b.inbox.borrow_mut().pop_front().unwrap();
        assert_eq!(&sent[..n], &tagged[..n]);
        assert_eq!(stats, PortStats { rx_frames: 1, tx_frames: 1, rx_dropped: 1, tx_dropped: 0 });
    }
}
