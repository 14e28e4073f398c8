//! A virtio network device on the virtio-mmio transport (virtio 1.2, 5.1 "Network Device"), and
//! the port it is plugged into ([`NetPort`]).
//!
//! The device runs on the CPU of the vCPU that touched it; the virtual switch belongs to the
//! management CPU. Between the two is a [`NetPort`]: frames the guest sent wait there for the
//! management CPU (which the port's notify kicks), frames the switch has for the guest wait there
//! until the guest has receive buffers (the management CPU wakes the VM for them). Both queues are
//! bounded ([`PORT_FRAMES`]); a guest that does not empty its receive ring loses frames, counted,
//! and one that sends faster than the switch takes them finds its transmit ring left as it is
//! until there is room.
//!
//! Offered: VIRTIO_NET_F_MAC (the address the VM definition gives), VIRTIO_NET_F_STATUS (link up or
//! down, changed by the host), one receive and one transmit queue. Not offered (so the driver
//! computes checksums and segments itself): checksum offload, TSO, mergeable receive buffers, the
//! control queue. Every buffer is checked: a transmit chain with a device-writable part, one
//! shorter than the header plus an Ethernet header, longer than [`MAX_FRAME`] plus the header, or
//! asking for offloads that were not offered is dropped (returned, counted); a receive chain with a
//! device-readable part or too small for the frame gets the frame dropped and is returned empty.

use super::blkio::Notify;
use super::bus::MmioDevice;
use super::memory::GuestMemory;
use super::virtio_mmio::{self, Event, Transport};
use super::virtqueue::Desc;
use super::GuestPhysAddr;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;

/// Queue size offered for each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Frames waiting in each direction of a port, at most.
pub const PORT_FRAMES: usize = 256;
/// Bytes waiting in each direction of a port, at most.
pub const PORT_BYTES: usize = 512 << 10;
/// Bytes waiting in all the ports of the host, both ways, at most: guests that neither empty their
/// receive rings nor stop sending cannot take the host's heap.
pub const HOST_BYTES: usize = 16 << 20;
/// Largest frame any port carries (a 9000-byte MTU, its Ethernet header and one VLAN tag); each
/// port's own limit follows its switch's MTU.
pub const MAX_FRAME: usize = 9018;
/// The virtio-net header the modern interface always has (5.1.6): flags, gso_type, hdr_len,
/// gso_size, csum_start, csum_offset, num_buffers.
pub const HEADER: usize = 12;
const DEVICE_ID: u32 = 1;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
const VIRTIO_NET_S_LINK_UP: u32 = 1;
const RXQ: usize = 0;
const TXQ: usize = 1;
/// Tries at the port's lock on the management CPU (a vCPU holds it briefly; one whose CPU stopped
/// holds it for good, and the management CPU must go on).
const LOCK_TRIES: usize = 1_000;

/// Bytes waiting in all ports.
static HOST_QUEUED: AtomicUsize = AtomicUsize::new(0);

/// Bytes waiting in all the host's ports now.
pub fn host_queued_bytes() -> usize {
    HOST_QUEUED.load(Ordering::Relaxed)
}

/// Takes `n` bytes of the host's budget, if there is room.
fn reserve(n: usize) -> bool {
    let before = HOST_QUEUED.fetch_add(n, Ordering::AcqRel);
    if before.saturating_add(n) > HOST_BYTES {
        HOST_QUEUED.fetch_sub(n, Ordering::AcqRel);
        return false;
    }
    true
}

fn release(n: usize) {
    HOST_QUEUED.fetch_sub(n, Ordering::AcqRel);
}

/// Frame counters of a guest NIC as its device sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicCounters {
    /// Frames the guest sent that the device dropped (malformed, too large, link down, no room).
    pub tx_dropped: u64,
    /// Frames for the guest dropped: its port's queue full, or its buffer too small.
    pub rx_dropped: u64,
}

/// Frames one way, bounded in count and bytes.
#[derive(Default)]
struct Frames {
    q: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Frames {
    /// Appends `f` if the port's and the host's bounds allow it.
    fn push_back(&mut self, f: Vec<u8>) -> Result<(), Vec<u8>> {
        let n = f.len();
        if self.q.len() >= PORT_FRAMES || self.bytes.saturating_add(n) > PORT_BYTES || !reserve(n) {
            return Err(f);
        }
        self.bytes = self.bytes.saturating_add(n);
        self.q.push_back(f);
        Ok(())
    }

    /// Puts `f` back in front (it was taken from here; its room was given back with it).
    fn push_front(&mut self, f: Vec<u8>) -> Result<(), Vec<u8>> {
        let n = f.len();
        if self.bytes.saturating_add(n) > PORT_BYTES || !reserve(n) {
            return Err(f);
        }
        self.bytes = self.bytes.saturating_add(n);
        self.q.push_front(f);
        Ok(())
    }

    fn pop_front(&mut self) -> Option<Vec<u8>> {
        let f = self.q.pop_front()?;
        self.bytes = self.bytes.saturating_sub(f.len());
        release(f.len());
        Some(f)
    }

    fn clear(&mut self) {
        release(self.bytes);
        self.bytes = 0;
        self.q.clear();
    }
}

#[derive(Default)]
struct Queues {
    to_guest: Frames,
    from_guest: Frames,
}

/// Where a guest NIC meets the host: its MAC, its link, and the frames in flight both ways.
pub struct NetPort {
    mac: [u8; 6],
    /// Largest frame the guest may send (its switch's MTU, the Ethernet header and a tag).
    max_frame: usize,
    queues: Mutex<Queues>,
    /// Frames waiting for the guest (looked at without the lock at every service).
    waiting: AtomicUsize,
    link_up: AtomicBool,
    tx_dropped: AtomicU64,
    rx_dropped: AtomicU64,
    /// Kicks the management CPU when the guest's frames start waiting.
    notify: Option<Notify>,
}

impl Drop for NetPort {
    fn drop(&mut self) {
        self.queues.get_mut().to_guest.clear();
        self.queues.get_mut().from_guest.clear();
    }
}

impl NetPort {
    /// A port for a NIC with address `mac` on a switch with `mtu`, its link up.
    pub fn new(mac: [u8; 6], mtu: u16, notify: Option<Notify>) -> Self {
        NetPort {
            mac,
            max_frame: usize::from(mtu).saturating_add(18).min(MAX_FRAME),
            queues: Mutex::new(Queues::default()),
            waiting: AtomicUsize::new(0),
            link_up: AtomicBool::new(true),
            tx_dropped: AtomicU64::new(0),
            rx_dropped: AtomicU64::new(0),
            notify,
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::Acquire)
    }

    /// The host connects or disconnects the NIC (the guest sees its link change).
    pub fn set_link(&self, up: bool) {
        self.link_up.store(up, Ordering::Release);
    }

    pub fn counters(&self) -> NicCounters {
        NicCounters {
            tx_dropped: self.tx_dropped.load(Ordering::Relaxed),
            rx_dropped: self.rx_dropped.load(Ordering::Relaxed),
        }
    }

    fn lock_bounded(&self) -> Option<spin::MutexGuard<'_, Queues>> {
        crate::try_lock_bounded(&self.queues, LOCK_TRIES)
    }

    /// The management CPU takes up to `max` frames the guest sent (none if the lock stays held).
    pub fn take_sent(&self, max: usize) -> Vec<Vec<u8>> {
        let Some(mut q) = self.lock_bounded() else { return Vec::new() };
        core::iter::from_fn(|| q.from_guest.pop_front()).take(max).collect()
    }

    /// Frames the management CPU took but could not pass on yet (a shaping limit): back in front,
    /// as far as there is room (the rest are dropped and counted).
    pub fn untake_sent(&self, frames: Vec<Vec<u8>>) {
        let n = frames.len() as u64;
        let Some(mut q) = self.lock_bounded() else {
            self.tx_dropped.fetch_add(n, Ordering::Relaxed);
            return;
        };
        for f in frames.into_iter().rev() {
            if q.from_guest.push_front(f).is_err() {
                self.tx_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The management CPU hands frames to the guest under one lock; returns how many were taken
    /// (the others are dropped and counted: the port's or the host's bound, or a held lock).
    pub fn deliver(&self, frames: Vec<Vec<u8>>) -> usize {
        let n = frames.len();
        let Some(mut q) = self.lock_bounded() else {
            self.rx_dropped.fetch_add(n as u64, Ordering::Relaxed);
            return 0;
        };
        let mut taken = 0usize;
        for f in frames {
            match q.to_guest.push_back(f) {
                Ok(()) => taken = taken.saturating_add(1),
                Err(_) => {
                    self.rx_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.waiting.store(q.to_guest.q.len(), Ordering::Release);
        taken
    }

    /// Empties both ways (the NIC left the switch); the bytes go back to the host's budget.
    pub fn clear(&self) {
        if let Some(mut q) = self.lock_bounded() {
            q.to_guest.clear();
            q.from_guest.clear();
            self.waiting.store(0, Ordering::Release);
        }
    }

    /// Frames waiting for the guest's receive buffers.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Whether frames wait for the guest.
    fn has_frames(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    fn pop_for_guest(&self) -> Option<Vec<u8>> {
        let mut q = self.queues.lock();
        let f = q.to_guest.pop_front();
        self.waiting.store(q.to_guest.q.len(), Ordering::Release);
        f
    }

    fn unpop_for_guest(&self, frame: Vec<u8>) {
        let mut q = self.queues.lock();
        if q.to_guest.push_front(frame).is_err() {
            self.rx_dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.waiting.store(q.to_guest.q.len(), Ordering::Release);
    }

    /// Whether another sent frame of the largest size fits.
    fn room_to_send(&self) -> bool {
        let q = self.queues.lock();
        q.from_guest.q.len() < PORT_FRAMES && q.from_guest.bytes.saturating_add(self.max_frame) <= PORT_BYTES
    }

    /// Queues a frame the guest sent; `Ok(true)` when it is the first waiting (the management CPU
    /// is kicked only then: it takes all that wait at once), `Err` when there is no room.
    fn push_sent(&self, frame: Vec<u8>) -> Result<bool, ()> {
        let mut q = self.queues.lock();
        let first = q.from_guest.q.is_empty();
        q.from_guest.push_back(frame).map(|()| first).map_err(|_| ())
    }

    fn kick(&self) {
        if let Some(n) = &self.notify {
            n();
        }
    }
}

/// The device.
pub struct VirtioNet {
    port: alloc::sync::Arc<NetPort>,
    irq: u8,
    transport: Transport,
    /// The link state the guest was last shown.
    link_shown: bool,
}

impl VirtioNet {
    /// A NIC plugged into `port`, raising interrupt line `irq`.
    pub fn new(port: alloc::sync::Arc<NetPort>, irq: u8) -> Self {
        let link_shown = port.link_up();
        VirtioNet {
            port,
            irq,
            transport: Transport::new(
                DEVICE_ID,
                VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS,
                &[QUEUE_SIZE, QUEUE_SIZE],
            ),
            link_shown,
        }
    }

    /// The configuration space: the MAC (0x100-0x105) and the link status (0x106).
    fn config_read(&self, offset: u64) -> u32 {
        let mac = self.port.mac();
        let status = if self.link_shown { VIRTIO_NET_S_LINK_UP } else { 0 };
        let mut space = [0u8; 8];
        space[..6].copy_from_slice(&mac);
        space[6..8].copy_from_slice(&(status as u16).to_le_bytes());
        let at = offset.saturating_sub(virtio_mmio::CONFIG_SPACE) as usize;
        let mut word = [0u8; 4];
        for (i, b) in word.iter_mut().enumerate() {
            *b = space.get(at.saturating_add(i)).copied().unwrap_or(0);
        }
        u32::from_le_bytes(word)
    }

    /// Takes what the guest queued for sending, while the port has room.
    fn transmit(&mut self, mem: &mut dyn GuestMemory) {
        let Some(q) = self.transport.queue(TXQ) else { return };
        let mut budget = match q.available(mem) {
            Ok(n) => n,
            Err(v) => return self.transport.needs_reset(v),
        };
        let mut kick = false;
        let mut broken = None;
        while budget > 0 {
            if !self.port.room_to_send() {
                // Looked at again at the next service, once the management CPU took some.
                self.transport.renotify(TXQ);
                break;
            }
            budget = budget.saturating_sub(1);
            let Some(q) = self.transport.queue(TXQ) else { break };
            let head = match q.pop(mem) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(v) => {
                    broken = Some(v);
                    break;
                }
            };
            let frame = q.chain(mem, head).and_then(|chain| read_frame(mem, &chain, self.port.max_frame));
            q.push_used(mem, head, 0);
            self.transport.used();
            match frame.filter(|_| self.port.link_up()).map(|f| self.port.push_sent(f)) {
                Some(Ok(first)) => kick |= first,
                _ => {
                    self.port.tx_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // What was queued before a broken rule still reaches the management CPU.
        if kick {
            self.port.kick();
        }
        if let Some(v) = broken {
            self.transport.needs_reset(v);
        }
    }

    /// Puts the frames waiting for the guest into its receive buffers.
    fn receive(&mut self, mem: &mut dyn GuestMemory) {
        let Some(q) = self.transport.queue(RXQ) else { return };
        let mut budget = match q.available(mem) {
            Ok(n) => n,
            Err(v) => return self.transport.needs_reset(v),
        };
        while budget > 0 {
            let Some(frame) = self.port.pop_for_guest() else { break };
            budget = budget.saturating_sub(1);
            let Some(q) = self.transport.queue(RXQ) else { return };
            let head = match q.pop(mem) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    self.port.unpop_for_guest(frame);
                    break;
                }
                Err(v) => {
                    self.port.unpop_for_guest(frame);
                    return self.transport.needs_reset(v);
                }
            };
            let written = q.chain(mem, head).and_then(|chain| write_frame(mem, &chain, &frame));
            if written.is_none() {
                self.port.rx_dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_used(mem, head, written.unwrap_or(0));
            self.transport.used();
        }
    }
}

/// A transmit chain's frame (without the virtio-net header), if the chain is well-formed and the
/// frame at most `max_frame` bytes.
fn read_frame(mem: &dyn GuestMemory, chain: &[Desc], max_frame: usize) -> Option<Vec<u8>> {
    if chain.iter().any(|d| d.write) {
        return None;
    }
    let total = chain.iter().try_fold(0usize, |t, d| t.checked_add(d.len as usize))?;
    if !(HEADER + 14..=HEADER.saturating_add(max_frame)).contains(&total) {
        return None;
    }
    let mut bytes = alloc::vec![0u8; total];
    let mut at = 0usize;
    for d in chain {
        let end = at.checked_add(d.len as usize)?;
        mem.read(GuestPhysAddr(d.addr), bytes.get_mut(at..end)?).ok()?;
        at = end;
    }
    // flags (NEEDS_CSUM) and gso_type ask for offloads that were not offered.
    let (flags, gso_type) = (*bytes.first()?, *bytes.get(1)?);
    if flags != 0 || gso_type != 0 {
        return None;
    }
    bytes.drain(..HEADER);
    Some(bytes)
}

/// Writes the header and `frame` across a receive chain; the bytes written, or `None` when the
/// chain is not all device-writable or too small.
fn write_frame(mem: &mut dyn GuestMemory, chain: &[Desc], frame: &[u8]) -> Option<u32> {
    if chain.iter().any(|d| !d.write) {
        return None;
    }
    let room = chain.iter().try_fold(0usize, |t, d| t.checked_add(d.len as usize))?;
    let total = HEADER.checked_add(frame.len())?;
    if room < total {
        return None;
    }
    // No offloads; one buffer (num_buffers = 1).
    let mut header = [0u8; HEADER];
    header[10] = 1;
    let mut stream = header.iter().chain(frame.iter()).copied();
    let mut left = total;
    for d in chain {
        if left == 0 {
            break;
        }
        let n = (d.len as usize).min(left);
        let piece: Vec<u8> = stream.by_ref().take(n).collect();
        mem.write(GuestPhysAddr(d.addr), &piece).ok()?;
        left = left.saturating_sub(n);
    }
    u32::try_from(total).ok()
}

impl MmioDevice for VirtioNet {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        virtio_mmio::read_bytes(offset, data, |o| {
            self.transport.read(o).unwrap_or_else(|| self.config_read(o))
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(v) = virtio_mmio::write_value(offset, data) else { return };
        // Nothing is held between services: a reset or a queue change has nothing to forget.
        let _: Event = self.transport.write(offset, v);
    }

    fn process(&mut self, mem: &mut dyn GuestMemory) {
        let link = self.port.link_up();
        if link != self.link_shown {
            self.link_shown = link;
            self.transport.config_changed();
        }
        if !self.transport.live() {
            return;
        }
        if self.transport.take_notified(TXQ) {
            self.transmit(mem);
        }
        // Receive buffers added (a notification) or frames arrived (the host woke the VM).
        let rx_notified = self.transport.take_notified(RXQ);
        if self.port.has_frames() || rx_notified {
            self.receive(mem);
        }
    }

    fn irq(&self) -> Option<(u8, bool)> {
        Some((self.irq, self.transport.interrupt()))
    }

    fn take_notice(&mut self) -> Option<&'static str> {
        self.transport.take_notice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use alloc::sync::Arc;

    const DESC_F_NEXT: u16 = 1;
    const DESC_F_WRITE: u16 = 2;
    const MAC: [u8; 6] = [0x02, 0x45, 0x4d, 0, 0, 1];
    // Per queue: descriptors, available ring, used ring.
    const RX: (u64, u64, u64) = (0x1000, 0x2000, 0x3000);
    const TX: (u64, u64, u64) = (0x4000, 0x5000, 0x6000);

    fn w32(d: &mut VirtioNet, off: u64, v: u32) {
        d.write(off, &v.to_le_bytes());
    }

    fn r32(d: &mut VirtioNet, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn setup_queue(d: &mut VirtioNet, n: u32, (desc, avail, used): (u64, u64, u64)) {
        w32(d, 0x30, n);
        w32(d, 0x38, 16);
        w32(d, 0x80, desc as u32);
        w32(d, 0x90, avail as u32);
        w32(d, 0xa0, used as u32);
        w32(d, 0x44, 1);
    }

    /// A device after a driver's set-up, its port (kicks counted) and guest RAM.
    fn ready() -> (VirtioNet, Arc<NetPort>, Arc<AtomicUsize>, GuestRam) {
        let kicks = Arc::new(AtomicUsize::new(0));
        let k = kicks.clone();
        let port = Arc::new(NetPort::new(
            MAC,
            1500,
            Some(alloc::boxed::Box::new(move || {
                k.fetch_add(1, Ordering::Relaxed);
            })),
        ));
        let mut d = VirtioNet::new(port.clone(), 5);
        w32(&mut d, 0x70, 1 | 2);
        w32(&mut d, 0x24, 0);
        w32(&mut d, 0x20, (VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS) as u32);
        w32(&mut d, 0x24, 1);
        w32(&mut d, 0x20, 1);
        w32(&mut d, 0x70, 1 | 2 | 8);
        setup_queue(&mut d, 0, RX);
        setup_queue(&mut d, 1, TX);
        w32(&mut d, 0x70, 1 | 2 | 8 | 4);
        assert_eq!(r32(&mut d, 0x70), 15);
        (d, port, kicks, GuestRam::new(1 << 20))
    }

    fn put_desc(m: &mut GuestRam, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        m.write(GuestPhysAddr(table + 16 * u64::from(i)), &b).unwrap();
    }

    /// Makes chain `head` available as the `n`-th entry (0-based) of a queue's ring.
    fn offer(m: &mut GuestRam, (_, avail, _): (u64, u64, u64), n: u16, head: u16) {
        m.write(GuestPhysAddr(avail + 4 + 2 * u64::from(n % 16)), &head.to_le_bytes()).unwrap();
        m.write(GuestPhysAddr(avail + 2), &(n + 1).to_le_bytes()).unwrap();
    }

    fn used(m: &GuestRam, (_, _, used): (u64, u64, u64), n: u16) -> (u16, u32) {
        let mut idx = [0u8; 2];
        m.read(GuestPhysAddr(used + 2), &mut idx).unwrap();
        assert!(u16::from_le_bytes(idx) > n, "entry {n} not used yet");
        let mut e = [0u8; 8];
        m.read(GuestPhysAddr(used + 4 + 8 * u64::from(n % 16)), &mut e).unwrap();
        (
            u32::from_le_bytes(e[0..4].try_into().unwrap()) as u16,
            u32::from_le_bytes(e[4..8].try_into().unwrap()),
        )
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| i as u8).collect();
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&MAC);
        f
    }

    #[test]
    fn the_configuration_space_has_the_mac_and_the_link() {
        let (mut d, port, _, mut m) = ready();
        let mut mac = [0u8; 6];
        d.read(0x100, &mut mac);
        assert_eq!(mac, MAC);
        let mut status = [0u8; 2];
        d.read(0x106, &mut status);
        assert_eq!(status, [1, 0]);
        port.set_link(false);
        d.process(&mut m);
        d.read(0x106, &mut status);
        assert_eq!(status, [0, 0]);
        assert_eq!(r32(&mut d, 0x60) & 2, 2, "a configuration change interrupt");
        assert_eq!(r32(&mut d, 0xfc), 1);
    }

    #[test]
    fn a_sent_frame_reaches_the_port_without_its_header_and_kicks_the_host() {
        let (mut d, port, kicks, mut m) = ready();
        let f = frame(60);
        // Header and frame in two descriptors, the frame split over a third.
        m.write(GuestPhysAddr(0x10000), &[0u8; HEADER]).unwrap();
        m.write(GuestPhysAddr(0x11000), &f[..20]).unwrap();
        m.write(GuestPhysAddr(0x12000), &f[20..]).unwrap();
        put_desc(&mut m, TX.0, 0, 0x10000, HEADER as u32, DESC_F_NEXT, 1);
        put_desc(&mut m, TX.0, 1, 0x11000, 20, DESC_F_NEXT, 2);
        put_desc(&mut m, TX.0, 2, 0x12000, 40, 0, 0);
        offer(&mut m, TX, 0, 0);
        w32(&mut d, 0x50, 1);
        d.process(&mut m);
        assert_eq!(port.take_sent(10), vec![f]);
        assert_eq!(kicks.load(Ordering::Relaxed), 1);
        assert_eq!(used(&m, TX, 0), (0, 0));
        assert!(d.irq().unwrap().1);
    }

    #[test]
    fn malformed_sends_are_dropped_and_counted_and_the_ring_goes_on() {
        let (mut d, port, kicks, mut m) = ready();
        // Too short; a device-writable part; asks for checksum offload; too long.
        put_desc(&mut m, TX.0, 0, 0x10000, (HEADER + 13) as u32, 0, 0);
        put_desc(&mut m, TX.0, 1, 0x10000, (HEADER + 60) as u32, DESC_F_WRITE, 0);
        m.write(GuestPhysAddr(0x20000), &[1u8]).unwrap();
        put_desc(&mut m, TX.0, 2, 0x20000, (HEADER + 60) as u32, 0, 0);
        put_desc(&mut m, TX.0, 3, 0x30000, (HEADER + 1519) as u32, 0, 0);
        put_desc(&mut m, TX.0, 4, 0x10000, (HEADER + 60) as u32, 0, 0);
        for i in 0..5 {
            offer(&mut m, TX, i, i);
        }
        w32(&mut d, 0x50, 1);
        d.process(&mut m);
        assert_eq!(port.take_sent(10).len(), 1, "only the last one");
        assert_eq!(port.counters().tx_dropped, 4);
        assert_eq!(kicks.load(Ordering::Relaxed), 1);
        for i in 0..5 {
            assert_eq!(used(&m, TX, i).0, i);
        }
        // With the link down, even a good frame goes nowhere.
        port.set_link(false);
        offer(&mut m, TX, 5, 4);
        w32(&mut d, 0x50, 1);
        d.process(&mut m);
        assert!(port.take_sent(10).is_empty());
    }

    #[test]
    fn a_full_port_leaves_frames_on_the_ring_until_there_is_room() {
        let (mut d, port, _, mut m) = ready();
        for _ in 0..PORT_FRAMES {
            port.push_sent(frame(60)).unwrap();
        }
        put_desc(&mut m, TX.0, 0, 0x10000, (HEADER + 60) as u32, 0, 0);
        offer(&mut m, TX, 0, 0);
        w32(&mut d, 0x50, 1);
        d.process(&mut m);
        d.process(&mut m);
        assert_eq!(port.take_sent(PORT_FRAMES).len(), PORT_FRAMES);
        d.process(&mut m);
        assert_eq!(port.take_sent(10).len(), 1, "taken once there was room");
    }

    #[test]
    fn frames_for_the_guest_fill_its_buffers_with_a_header_and_wait_for_buffers() {
        let (mut d, port, _, mut m) = ready();
        let f = frame(100);
        assert_eq!(port.deliver(vec![f.clone()]), 1);
        d.process(&mut m);
        assert!(port.has_frames(), "no buffer yet: it waits");
        // A buffer in two pieces: 50 + 2000 bytes.
        put_desc(&mut m, RX.0, 0, 0x10000, 50, DESC_F_WRITE | DESC_F_NEXT, 1);
        put_desc(&mut m, RX.0, 1, 0x11000, 2000, DESC_F_WRITE, 0);
        offer(&mut m, RX, 0, 0);
        w32(&mut d, 0x50, 0);
        d.process(&mut m);
        assert_eq!(used(&m, RX, 0), (0, (HEADER + 100) as u32));
        let mut got = [0u8; HEADER + 100];
        m.read(GuestPhysAddr(0x10000), &mut got[..50]).unwrap();
        m.read(GuestPhysAddr(0x11000), &mut got[50..]).unwrap();
        assert_eq!(&got[..HEADER], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&got[HEADER..], &f[..]);
        assert!(!port.has_frames());
        assert!(d.irq().unwrap().1);
    }

    #[test]
    fn a_buffer_too_small_or_readable_gets_nothing_and_the_frame_is_dropped() {
        let (mut d, port, _, mut m) = ready();
        put_desc(&mut m, RX.0, 0, 0x10000, 40, DESC_F_WRITE, 0);
        put_desc(&mut m, RX.0, 1, 0x10000, 2000, 0, 0);
        offer(&mut m, RX, 0, 0);
        offer(&mut m, RX, 1, 1);
        port.deliver(vec![frame(60), frame(60)]);
        d.process(&mut m);
        assert_eq!(used(&m, RX, 0), (0, 0));
        assert_eq!(used(&m, RX, 1), (1, 0));
        assert_eq!(port.counters().rx_dropped, 2);
    }

    #[test]
    fn the_port_holds_at_most_its_bounds_and_gives_its_bytes_back() {
        let port = NetPort::new(MAC, 1500, None);
        let before = host_queued_bytes();
        assert_eq!(port.deliver((0..PORT_FRAMES + 1).map(|_| frame(60)).collect()), PORT_FRAMES);
        assert_eq!(port.counters().rx_dropped, 1);
        // Bytes bound: 512 KiB of 9018-byte (jumbo) frames is 58 of them.
        let big = NetPort::new(MAC, 9000, None);
        assert_eq!(big.deliver((0..100).map(|_| frame(9018)).collect()), PORT_BYTES / 9018);
        // (Other tests run alongside and hold a few frames of their own: a margin of 32 KiB.)
        let held = PORT_FRAMES * 60 + (PORT_BYTES / 9018) * 9018;
        assert!(host_queued_bytes() + (32 << 10) >= before + held);
        big.clear();
        drop(port);
        assert!(host_queued_bytes() <= before + (32 << 10), "given back");
        let port = NetPort::new(MAC, 1500, None);
        assert_eq!(port.push_sent(frame(62)), Ok(true), "the first waiting frame kicks");
        assert_eq!(port.push_sent(frame(63)), Ok(false), "the next ones do not");
        let two = port.take_sent(1);
        port.untake_sent(two);
        let back = port.take_sent(3);
        assert_eq!(back.iter().map(Vec::len).collect::<Vec<_>>(), vec![62, 63]);
    }

    #[test]
    fn nothing_moves_before_the_driver_is_ready() {
        let port = Arc::new(NetPort::new(MAC, 1500, None));
        let mut d = VirtioNet::new(port.clone(), 5);
        let mut m = GuestRam::new(1 << 20);
        port.deliver(vec![frame(60)]);
        w32(&mut d, 0x50, 0);
        d.process(&mut m);
        assert!(port.has_frames());
        assert!(!d.irq().unwrap().1);
    }
}
