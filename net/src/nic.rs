//! The smoltcp adapter for a NIC ([`Nic`], defined with the drivers in `ember_hw::nic`).
//!
//! Drivers (virtio-net, e1000e) implement [`Nic`] by copying frames in and out of their DMA buffers;
//! the management interface is a port of the virtual switch that looks like one too
//! ([`crate::hostnet::VmkNic`]). [`Port`] turns a [`Nic`] into a smoltcp `phy::Device`; VLAN tags
//! are the switch's business. [`FakeNic`] is the in-memory double used by the host tests.

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Largest Ethernet frame handled, without FCS, with room for one VLAN tag (1514 + 4).
pub const MAX_FRAME: usize = 1518;
/// Largest frame handed to the IP stack (MTU 1500 + 14-byte header).
pub const MAX_UNTAGGED_FRAME: usize = 1514;

pub use ember_hw::nic::Nic;

/// Frame counters of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames refused on transmit (the NIC's ring full, nowhere to go).
    pub tx_dropped: u64,
}

/// One NIC as a smoltcp device.
pub struct Port<'a> {
    pub nic: &'a mut dyn Nic,
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
        let mut buf = [0u8; MAX_UNTAGGED_FRAME];
        let len = self.nic.receive(&mut buf)?;
        self.stats.rx_frames += 1;
        Some((RxToken { buf, len }, TxToken { nic: &mut *self.nic, stats: &mut *self.stats }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if !self.nic.can_transmit() {
            return None;
        }
        Some(TxToken { nic: &mut *self.nic, stats: &mut *self.stats })
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
    buf: [u8; MAX_UNTAGGED_FRAME],
    len: usize,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.buf.get(..self.len).unwrap_or_default())
    }
}

/// Permission to send one frame.
pub struct TxToken<'a> {
    nic: &'a mut dyn Nic,
    stats: &'a mut PortStats,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = [0u8; MAX_UNTAGGED_FRAME];
        let len = len.min(MAX_UNTAGGED_FRAME);
        let r = f(&mut frame[..len]);
        if self.nic.transmit(&frame[..len]) {
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
    /// Whether each end was set promiscuous (this end's, the peer's).
    promiscuous: (Rc<Cell<bool>>, Rc<Cell<bool>>),
}

impl FakeNic {
    /// Two NICs wired back to back.
    pub fn pair(a: [u8; 6], b: [u8; 6]) -> (FakeNic, FakeNic) {
        let q1 = Rc::new(RefCell::new(VecDeque::new()));
        let q2 = Rc::new(RefCell::new(VecDeque::new()));
        let (p1, p2) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
        (
            FakeNic {
                mac: a,
                inbox: q1.clone(),
                outbox: q2.clone(),
                link: true,
                promiscuous: (p1.clone(), p2.clone()),
            },
            FakeNic { mac: b, inbox: q2, outbox: q1, link: true, promiscuous: (p2, p1) },
        )
    }
    /// Puts a raw frame into this NIC's receive queue, as if it came from the wire.
    pub fn inject(&self, frame: &[u8]) {
        self.inbox.borrow_mut().push_back(frame.to_vec());
    }
    /// Whether the other end of the wire was set promiscuous.
    pub fn peer_promiscuous(&self) -> bool {
        self.promiscuous.1.get()
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
    fn set_promiscuous(&mut self, on: bool) {
        self.promiscuous.0.set(on);
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

    #[test]
    fn a_port_passes_frames_both_ways_and_counts_them() {
        use smoltcp::phy::{Device, RxToken as _, TxToken as _};
        let (mut a, b) = FakeNic::pair([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let f: Vec<u8> = (0..60).collect();
        a.inject(&f);
        a.inject(&[0u8; MAX_UNTAGGED_FRAME + 1]); // larger than the stack takes: dropped by the NIC
        let mut stats = PortStats::default();
        let mut port = Port { nic: &mut a, stats: &mut stats };
        let (rx, _) = port.receive(Instant::ZERO).unwrap();
        rx.consume(|got| assert_eq!(got, &f[..]));
        assert!(port.receive(Instant::ZERO).is_none());
        let tx = port.transmit(Instant::ZERO).unwrap();
        tx.consume(f.len(), |buf| buf.copy_from_slice(&f));
        assert_eq!(b.inbox.borrow_mut().pop_front().unwrap(), f);
        assert_eq!(stats, PortStats { rx_frames: 1, tx_frames: 1, tx_dropped: 0 });
    }
}
