//! A virtio block device on the virtio-mmio transport (virtio 1.2: 4.2 "Virtio Over MMIO", 2.7
//! "Split Virtqueues", 5.2 "Block Device").
//!
//! Guests find it through the VM's DSDT (`LNRO0005` devices with their MMIO window and IRQ,
//! `super::acpi`), which Linux's virtio_mmio driver binds to. Only the modern interface (version 2, VIRTIO_F_VERSION_1)
//! is offered, with one request queue. Requests are parsed completely from the descriptor chain
//! (bounded by the queue size, no indirect descriptors) before anything is executed; a malformed
//! chain or an access outside the disk completes with VIRTIO_BLK_S_IOERR, an unknown request type
//! with VIRTIO_BLK_S_UNSUPP; a chain that cannot even carry a status byte is skipped (returned with
//! length 0). Nothing a guest writes can make the device touch memory outside the guest's RAM (all
//! accesses go through [`GuestMemory`]) or outside the disk.
//!
//! A VM's disk is a file on a datastore ([`Backing::Queue`], `super::blkio`): reads, writes and
//! flushes (the device offers VIRTIO_BLK_F_FLUSH) are submitted to the management CPU, which owns
//! the storage, and complete later, when the device is next serviced - a flush only once what was
//! written before it is on stable storage; the device takes requests from its ring only while the
//! queue has room, so the host memory a guest can tie up in bounce buffers is bounded. The other
//! backing, a disk image in host memory ([`Backing::Image`], [`DiskImage`]), completes every
//! request at once (the device's tests, scratch disks).

use super::blkio::{IoOp, IoQueue};
use super::bus::MmioDevice;
use super::memory::GuestMemory;
use super::virtio_mmio::{self, Event, Transport};
use super::virtqueue::{Desc, Violation};
use super::GuestPhysAddr;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use spin::Mutex;

/// Queue size offered (QueueNumMax).
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of the MMIO window.
pub const MMIO_LEN: u64 = virtio_mmio::MMIO_LEN;
const SECTOR: u64 = 512;
const DEVICE_ID: u32 = 2;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Data segments a request may have (offered as `seg_max`; without it Linux sends one 4 KiB page
/// per request). Two requests of the most fit the queue with their header and status.
pub const SEG_MAX: u32 = (QUEUE_SIZE as u32) / 2 - 2;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Largest data transfer of one request (guards the bounce buffer).
const MAX_REQUEST_BYTES: u64 = super::blkio::MAX_REQUEST_BYTES as u64;

/// A disk image in memory.
pub type SharedDisk<D> = Arc<Mutex<D>>;

/// A virtual disk's bytes as the device sees them.
pub trait DiskImage: Send {
    fn bytes(&self) -> &[u8];
    /// `range` of the bytes, to be written by the guest; `None` if the range is not inside the disk.
    fn bytes_mut(&mut self, range: core::ops::Range<usize>) -> Option<&mut [u8]>;
}

/// An image only in memory (tests, scratch disks): flushes are done at once.
impl DiskImage for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self, range: core::ops::Range<usize>) -> Option<&mut [u8]> {
        self.get_mut(range)
    }
}

/// What backs a device: an image in host memory, or a queue to the host's I/O service.
pub enum Backing<D> {
    Image(SharedDisk<D>),
    Queue(Arc<IoQueue>),
}

impl<D> Clone for Backing<D> {
    fn clone(&self) -> Self {
        match self {
            Backing::Image(d) => Backing::Image(d.clone()),
            Backing::Queue(q) => Backing::Queue(q.clone()),
        }
    }
}

/// A queued request not completed yet: its head, where its status byte goes, its tag, and for a
/// read the guest buffers its bytes go to.
#[derive(Debug, Clone)]
struct Pending {
    head: u16,
    status_at: Option<u64>,
    tag: u64,
    read_into: Vec<Desc>,
}

/// How a request ended, or the queued request it waits for (tag, read buffers).
enum Outcome {
    Done(u8, u32),
    Wait(u64, Vec<Desc>),
}

/// The device.
pub struct VirtioBlk<D: DiskImage> {
    disk: Backing<D>,
    readonly: bool,
    irq: u8,
    /// The registers and the one request queue.
    transport: Transport,
    /// Requests not completed yet (at most a queue's worth).
    pending: Vec<Pending>,
}

impl<D: DiskImage> VirtioBlk<D> {
    /// A device for `disk` raising interrupt line `irq`.
    pub fn new(disk: SharedDisk<D>, readonly: bool, irq: u8) -> Self {
        Self::with_backing(Backing::Image(disk), readonly, irq)
    }

    /// A device for the disk behind `disk` raising interrupt line `irq`.
    pub fn with_backing(disk: Backing<D>, readonly: bool, irq: u8) -> Self {
        let features = VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | if readonly { VIRTIO_BLK_F_RO } else { 0 };
        VirtioBlk {
            disk,
            readonly,
            irq,
            transport: Transport::new(DEVICE_ID, features, &[QUEUE_SIZE]),
            pending: Vec::new(),
        }
    }

    fn capacity_sectors(&self) -> u64 {
        match &self.disk {
            Backing::Image(d) => d.lock().bytes().len() as u64 / SECTOR,
            Backing::Queue(q) => q.capacity() / SECTOR,
        }
    }

    /// The driver broke a rule of the specification: the device stops using its queue (virtio
    /// 1.2 2.1.2) and forgets its requests; only a reset brings it back.
    fn needs_reset(&mut self, v: Violation) {
        self.transport.needs_reset(v);
        self.pending.clear();
    }

    /// The configuration space: capacity in sectors (0x100), seg_max (0x10c).
    fn config_read(&self, offset: u64) -> u32 {
        match offset {
            0x100..=0x107 => {
                let cap = self.capacity_sectors();
                (cap >> (offset & 7).saturating_mul(8)) as u32
            }
            0x10c => SEG_MAX,
            _ => 0,
        }
    }

    /// Executes one request; returns (status, bytes written into the guest's buffers), or the
    /// ticket of the flush it waits for.
    fn execute(&mut self, mem: &mut dyn GuestMemory, chain: &[Desc]) -> Outcome {
        // Header (device-readable, 16 bytes), data, status (device-writable, 1 byte, last).
        let [first, data @ .., last] = chain else {
            return Outcome::Done(S_IOERR, 0);
        };
        if first.write || first.len < 16 || !last.write || last.len < 1 {
            return Outcome::Done(S_IOERR, 0);
        }
        let mut hdr = [0u8; 16];
        if mem.read(GuestPhysAddr(first.addr), &mut hdr).is_err() {
            return Outcome::Done(S_IOERR, 0);
        }
        let [k0, k1, k2, k3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = hdr;
        let kind = u32::from_le_bytes([k0, k1, k2, k3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        // At most a queue's worth of descriptors of at most 4 GiB each: no overflow in u64.
        let total: u64 = data.iter().map(|d| u64::from(d.len)).sum();
        let want_write = kind == T_IN || kind == T_GET_ID;
        if data.iter().any(|d| d.write != want_write) && kind != T_FLUSH {
            return Outcome::Done(S_IOERR, 0);
        }
        match kind {
            T_IN | T_OUT => {
                if total > MAX_REQUEST_BYTES || !total.is_multiple_of(SECTOR) {
                    return Outcome::Done(S_IOERR, 0);
                }
                if kind == T_OUT && self.readonly {
                    return Outcome::Done(S_IOERR, 0);
                }
                let disk = match &self.disk {
                    Backing::Image(d) => d.clone(),
                    Backing::Queue(q) => return Self::submit(q, mem, kind, sector, total, data),
                };
                let mut disk = disk.lock();
                let size = disk.bytes().len();
                let Some(start) = sector
                    .checked_mul(SECTOR)
                    .and_then(|s| usize::try_from(s).ok())
                    .filter(|s| s.checked_add(total as usize).is_some_and(|e| e <= size))
                else {
                    return Outcome::Done(S_IOERR, 0);
                };
                let mut at = start;
                for d in data {
                    // Inside the disk: the whole request was checked against its size above.
                    let range = at..at.saturating_add(d.len as usize);
                    let ok = if kind == T_IN {
                        disk.bytes().get(range).is_some_and(|b| mem.write(GuestPhysAddr(d.addr), b).is_ok())
                    } else {
                        disk.bytes_mut(range).is_some_and(|b| mem.read(GuestPhysAddr(d.addr), b).is_ok())
                    };
                    if !ok {
                        return Outcome::Done(S_IOERR, 0);
                    }
                    at = at.saturating_add(d.len as usize);
                }
                Outcome::Done(S_OK, if kind == T_IN { total as u32 } else { 0 })
            }
            T_FLUSH => match &self.disk {
                // An image in memory has nothing to make durable.
                Backing::Image(_) => Outcome::Done(S_OK, 0),
                Backing::Queue(q) => Outcome::Wait(q.submit(IoOp::Flush), Vec::new()),
            },
            T_GET_ID => {
                let id = b"ember-virtio-blk\0\0\0\0";
                let Some(d) = data.first() else { return Outcome::Done(S_IOERR, 0) };
                let n = (d.len as usize).min(id.len());
                match mem.write(GuestPhysAddr(d.addr), id.get(..n).unwrap_or_default()) {
                    Ok(()) => Outcome::Done(S_OK, n as u32),
                    Err(_) => Outcome::Done(S_IOERR, 0),
                }
            }
            _ => Outcome::Done(S_UNSUPP, 0),
        }
    }

    /// A read or write of `total` bytes at `sector` for a queue-backed disk: checked against the
    /// disk's size, a write's bytes copied out of the guest, and submitted.
    fn submit(
        q: &IoQueue,
        mem: &mut dyn GuestMemory,
        kind: u32,
        sector: u64,
        total: u64,
        data: &[Desc],
    ) -> Outcome {
        let in_disk =
            sector.checked_mul(SECTOR).filter(|s| s.checked_add(total).is_some_and(|e| e <= q.capacity()));
        let (Some(offset), Ok(len)) = (in_disk, usize::try_from(total)) else {
            return Outcome::Done(S_IOERR, 0);
        };
        if kind == T_IN {
            return Outcome::Wait(q.submit(IoOp::Read { offset, len }), data.to_vec());
        }
        // Every byte is the guest's (the descriptors add up to `len`).
        let mut bytes = crate::blkio::buffer(len);
        let mut at = 0usize;
        for d in data {
            let end = at.saturating_add(d.len as usize);
            let ok = bytes.get_mut(at..end).is_some_and(|b| mem.read(GuestPhysAddr(d.addr), b).is_ok());
            if !ok {
                return Outcome::Done(S_IOERR, 0);
            }
            at = end;
        }
        Outcome::Wait(q.submit(IoOp::Write { offset, data: bytes }), Vec::new())
    }

    /// Whether the backing takes another request now (room for it is reserved; a queue with too
    /// much in flight does not: the rest stays on the ring until completions make room).
    fn reserve(&self) -> bool {
        match &self.disk {
            Backing::Image(_) => true,
            Backing::Queue(q) => q.reserve(),
        }
    }

    /// Gives back the room [`Self::reserve`] took if the request did not use it.
    fn unreserve(&self) {
        if let Backing::Queue(q) = &self.disk {
            q.unreserve();
        }
    }

    /// Takes every available request, executes it, and puts it on the used ring.
    fn process_queue(&mut self, mem: &mut dyn GuestMemory) {
        self.take_requests(mem);
        // Room reserved for a request that was not submitted goes back.
        self.unreserve();
    }

    fn take_requests(&mut self, mem: &mut dyn GuestMemory) {
        if !self.transport.live() {
            return;
        }
        let Some(queue) = self.transport.queue(0) else { return };
        // At most one queue's worth per notification (a guest cannot make the device loop).
        let mut budget = match queue.available(mem) {
            Ok(n) => n,
            Err(v) => return self.needs_reset(v),
        };
        while budget > 0 {
            if !self.reserve() {
                // Looked at again at the next service, after completions.
                self.transport.renotify(0);
                break;
            }
            budget = budget.saturating_sub(1);
            let Some(queue) = self.transport.queue(0) else { return };
            let head = match queue.pop(mem) {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(v) => return self.needs_reset(v),
            };
            let Some(chain) = queue.chain(mem, head) else {
                // Returned unused.
                queue.push_used(mem, head, 0);
                self.transport.used();
                continue;
            };
            let status_at = chain
                .last()
                .filter(|d| d.write && d.len >= 1)
                .and_then(|d| d.addr.checked_add(u64::from(d.len).saturating_sub(1)));
            let (status, len) = match self.execute(mem, &chain) {
                Outcome::Done(status, len) => (status, len),
                // Waits, if there is room to remember it (a hostile driver may offer a head again
                // while it waits).
                Outcome::Wait(tag, read_into) if self.pending.len() < usize::from(QUEUE_SIZE) => {
                    self.pending.push(Pending { head, status_at, tag, read_into });
                    continue;
                }
                Outcome::Wait(..) => (S_IOERR, 0),
            };
            self.complete(mem, head, status_at.map(|a| (a, status)), len);
        }
    }

    /// Puts request `head` on the used ring (with its status byte written, if it has one).
    fn complete(&mut self, mem: &mut dyn GuestMemory, head: u16, status: Option<(u64, u8)>, len: u32) {
        if let Some((at, status)) = status {
            let _ = mem.write(GuestPhysAddr(at), &[status]);
        }
        if let Some(q) = self.transport.queue(0) {
            q.push_used(mem, head, len.saturating_add(u32::from(status.is_some())));
        }
        self.transport.used();
    }

    /// Completes the queued requests the host has done.
    fn complete_waiting(&mut self, mem: &mut dyn GuestMemory) {
        match self.disk.clone() {
            Backing::Image(_) => {}
            Backing::Queue(q) => {
                // Completions of requests the device forgot (a reset since) are dropped.
                for d in q.take_done() {
                    let found = self.pending.iter().position(|p| p.tag == d.tag);
                    let Some(k) = found else { continue };
                    let p = self.pending.swap_remove(k);
                    if !self.transport.live() {
                        continue;
                    }
                    let read_into = p.read_into;
                    let (mut status, mut len) = (if d.ok { S_OK } else { S_IOERR }, 0u32);
                    if d.ok && !read_into.is_empty() {
                        let mut at = 0usize;
                        for desc in &read_into {
                            let end = at.saturating_add(desc.len as usize);
                            let ok = d
                                .data
                                .get(at..end)
                                .is_some_and(|b| mem.write(GuestPhysAddr(desc.addr), b).is_ok());
                            if !ok {
                                status = S_IOERR;
                                break;
                            }
                            at = end;
                        }
                        if status == S_OK {
                            len = u32::try_from(at).unwrap_or(u32::MAX);
                        }
                    }
                    self.complete(mem, p.head, p.status_at.map(|a| (a, status)), len);
                    crate::blkio::recycle(d.data);
                }
            }
        }
    }
}

impl<D: DiskImage> MmioDevice for VirtioBlk<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are 32 bits wide (config space may be read in smaller pieces).
        virtio_mmio::read_bytes(offset, data, |o| {
            self.transport.read(o).unwrap_or_else(|| self.config_read(o))
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(v) = virtio_mmio::write_value(offset, data) else { return };
        match self.transport.write(offset, v) {
            // A reset, a queue enabled or disabled anew, a broken rule: the requests taken from
            // the old rings are forgotten (their completions are dropped).
            Event::Reset | Event::QueueChanged(_) | Event::Broken => self.pending.clear(),
            Event::None => {}
        }
    }

    fn process(&mut self, mem: &mut dyn GuestMemory) {
        // Completions first: they make room for requests left on the ring.
        self.complete_waiting(mem);
        if self.transport.take_notified(0) {
            self.process_queue(mem);
        }
    }

    fn irq(&self) -> Option<(u8, bool)> {
        Some((self.irq, self.transport.interrupt()))
    }

    fn take_notice(&mut self) -> Option<&'static str> {
        self.transport.take_notice()
    }
}

/// A disk image of `len` bytes in host memory, zero-filled (for tests and empty disks).
pub fn blank_disk(len: usize) -> SharedDisk<Vec<u8>> {
    Arc::new(Mutex::new(vec![0u8; len]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use crate::virtio_mmio::STATUS_NEEDS_RESET;

    const DESC_F_NEXT: u16 = 1;
    const DESC_F_WRITE: u16 = 2;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn img<D: DiskImage>(d: &VirtioBlk<D>) -> SharedDisk<D> {
        match &d.disk {
            Backing::Image(i) => i.clone(),
            Backing::Queue(_) => panic!("not an image"),
        }
    }

    fn w32<D: DiskImage>(d: &mut VirtioBlk<D>, off: u64, v: u32) {
        d.write(off, &v.to_le_bytes());
    }

    fn r32<D: DiskImage>(d: &mut VirtioBlk<D>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// The Linux driver's initialization: reset, ACK, DRIVER, features, FEATURES_OK, queue 0.
    fn ready(readonly: bool) -> (VirtioBlk<Vec<u8>>, GuestRam) {
        let disk = blank_disk(8 * 512);
        for (i, b) in disk.lock().iter_mut().enumerate() {
            *b = (i / 512) as u8;
        }
        ready_with(disk, readonly)
    }

    fn ready_with<D: DiskImage>(disk: SharedDisk<D>, readonly: bool) -> (VirtioBlk<D>, GuestRam) {
        ready_backed(Backing::Image(disk), readonly)
    }

    fn ready_backed<D: DiskImage>(disk: Backing<D>, readonly: bool) -> (VirtioBlk<D>, GuestRam) {
        let mut d = VirtioBlk::with_backing(disk, readonly, 5);
        assert_eq!(r32(&mut d, 0), 0x7472_6976);
        assert_eq!((r32(&mut d, 4), r32(&mut d, 8)), (2, 2));
        w32(&mut d, 0x70, 0);
        w32(&mut d, 0x70, 1 | 2);
        w32(&mut d, 0x14, 1);
        assert_eq!(r32(&mut d, 0x10), 1, "VERSION_1");
        w32(&mut d, 0x24, 1);
        w32(&mut d, 0x20, 1);
        w32(&mut d, 0x70, 1 | 2 | 8);
        assert_eq!(r32(&mut d, 0x70) & 8, 8, "features accepted");
        assert_eq!(r32(&mut d, 0x34), QUEUE_SIZE as u32);
        w32(&mut d, 0x38, 8);
        for (off, v) in [(0x80, DESC), (0x90, AVAIL), (0xa0, USED)] {
            w32(&mut d, off, v as u32);
            w32(&mut d, off + 4, 0);
        }
        w32(&mut d, 0x44, 1);
        w32(&mut d, 0x70, 1 | 2 | 8 | 4);
        assert_eq!(r32(&mut d, 0x100), 8, "capacity in sectors");
        (d, GuestRam::new(0x10_0000))
    }

    fn put_desc(m: &mut GuestRam, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        m.write(GuestPhysAddr(DESC + 16 * i as u64), &b).unwrap();
    }

    /// Puts a request (header at 0x4000, data at 0x5000, status at 0x6000) as chain 0-2 and
    /// notifies; returns the status byte and the used element's length.
    fn request<D: DiskImage>(
        d: &mut VirtioBlk<D>,
        m: &mut GuestRam,
        kind: u32,
        sector: u64,
        len: u32,
    ) -> (u8, u32) {
        request_at(d, m, kind, sector, len, 0x5000)
    }

    fn request_at<D: DiskImage>(
        d: &mut VirtioBlk<D>,
        m: &mut GuestRam,
        kind: u32,
        sector: u64,
        len: u32,
        data_at: u64,
    ) -> (u8, u32) {
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write(GuestPhysAddr(0x4000), &hdr).unwrap();
        let data_flags = DESC_F_NEXT | if kind == T_IN { DESC_F_WRITE } else { 0 };
        put_desc(m, 0, 0x4000, 16, DESC_F_NEXT, 1);
        put_desc(m, 1, data_at, len, data_flags, 2);
        put_desc(m, 2, 0x6000, 1, DESC_F_WRITE, 0);
        let idx = d.transport.queue(0).unwrap().last_avail();
        m.write(GuestPhysAddr(AVAIL + 4 + 2 * (idx % 8) as u64), &0u16.to_le_bytes()).unwrap();
        m.write(GuestPhysAddr(AVAIL + 2), &idx.wrapping_add(1).to_le_bytes()).unwrap();
        m.write(GuestPhysAddr(0x6000), &[0xff]).unwrap();
        w32(d, 0x50, 0);
        d.process(m);
        let mut s = [0u8; 1];
        m.read(GuestPhysAddr(0x6000), &mut s).unwrap();
        let mut e = [0u8; 8];
        m.read(GuestPhysAddr(USED + 4 + 8 * (idx % 8) as u64), &mut e).unwrap();
        (s[0], u32::from_le_bytes(e[4..8].try_into().unwrap()))
    }

    /// A disk behind a queue: requests wait for the host's service, reads land in the guest's
    /// buffers, failures fail, a device with too much in flight leaves requests on the ring, and
    /// completions for requests a reset forgot are dropped.
    #[test]
    fn a_queued_disk_completes_requests_when_the_host_has_done_them() {
        use crate::blkio::{IoDone, IoQueue, MAX_IN_FLIGHT};
        let q = Arc::new(IoQueue::new(8 * 512));
        let (mut d, mut m) = ready_backed::<Vec<u8>>(Backing::Queue(q.clone()), false);
        let status = |m: &GuestRam| {
            let mut st = [0u8; 1];
            m.read(GuestPhysAddr(0x6000), &mut st).unwrap();
            st[0]
        };
        let used = |m: &GuestRam| {
            let mut u = [0u8; 2];
            m.read(GuestPhysAddr(USED + 2), &mut u).unwrap();
            u16::from_le_bytes(u)
        };
        m.write(GuestPhysAddr(0x5000), &[0xcd; 512]).unwrap();
        assert_eq!(request(&mut d, &mut m, T_OUT, 2, 512).0, 0xff, "waits");
        let r = q.take_requests(10).unwrap();
        assert_eq!(r[0].op, IoOp::Write { offset: 1024, data: vec![0xcd; 512] });
        q.complete(IoDone { tag: r[0].tag, ok: true, data: Vec::new() });
        assert_eq!(used(&m), 0);
        d.process(&mut m);
        assert_eq!((status(&m), used(&m), d.irq()), (S_OK, 1, Some((5, true))));
        // A read: the bytes go into the guest's buffer.
        assert_eq!(request(&mut d, &mut m, T_IN, 6, 1024).0, 0xff);
        let r = q.take_requests(10).unwrap();
        assert_eq!(r[0].op, IoOp::Read { offset: 3072, len: 1024 });
        q.complete(IoDone { tag: r[0].tag, ok: true, data: vec![0x5a; 1024] });
        d.process(&mut m);
        let mut got = [0u8; 1024];
        m.read(GuestPhysAddr(0x5000), &mut got).unwrap();
        assert_eq!((status(&m), used(&m)), (S_OK, 2));
        assert!(got.iter().all(|&b| b == 0x5a));
        // A failure, a flush, and a read past the end that is never submitted.
        request(&mut d, &mut m, T_FLUSH, 0, 0);
        let r = q.take_requests(10).unwrap();
        assert_eq!(r[0].op, IoOp::Flush);
        q.complete(IoDone { tag: r[0].tag, ok: false, data: Vec::new() });
        d.process(&mut m);
        assert_eq!((status(&m), used(&m)), (S_IOERR, 3));
        assert_eq!(request(&mut d, &mut m, T_IN, 7, 1024), (S_IOERR, 1));
        assert_eq!(q.pending(), 0);
        // Too much in flight: the request stays on the ring until there is room.
        for _ in 0..MAX_IN_FLIGHT {
            q.submit(IoOp::Flush);
        }
        assert_eq!(request(&mut d, &mut m, T_IN, 0, 512).0, 0xff);
        let others = q.take_requests(100).unwrap();
        assert_eq!(others.len(), MAX_IN_FLIGHT, "not submitted");
        for o in &others {
            q.complete(IoDone { tag: o.tag, ok: true, data: Vec::new() });
        }
        d.process(&mut m);
        assert_eq!(q.pending(), 1, "taken from the ring once there was room");
        let r = q.take_requests(10).unwrap();
        q.complete(IoDone { tag: r[0].tag, ok: true, data: vec![1; 512] });
        d.process(&mut m);
        assert_eq!((status(&m), used(&m)), (S_OK, 5));
        // A reset forgets what was in flight: its completion touches nothing.
        request(&mut d, &mut m, T_IN, 0, 512);
        let r = q.take_requests(10).unwrap();
        w32(&mut d, 0x70, 0);
        m.write(GuestPhysAddr(0x5000), &[0; 512]).unwrap();
        q.complete(IoDone { tag: r[0].tag, ok: true, data: vec![9; 512] });
        d.process(&mut m);
        m.read(GuestPhysAddr(0x5000), &mut got[..512]).unwrap();
        assert!(got[..512].iter().all(|&b| b == 0));
        assert!(q.reserve() && d.pending.is_empty());
        q.unreserve();
    }

    #[test]
    fn reads_writes_flush_and_the_interrupt() {
        let (mut d, mut m) = ready(false);
        assert_eq!(d.irq(), Some((5, false)));
        assert_eq!(request(&mut d, &mut m, T_IN, 3, 1024), (S_OK, 1025));
        let mut got = [0u8; 1024];
        m.read(GuestPhysAddr(0x5000), &mut got).unwrap();
        assert!(got[..512].iter().all(|&b| b == 3) && got[512..].iter().all(|&b| b == 4));
        assert_eq!(d.irq(), Some((5, true)));
        assert_eq!(r32(&mut d, 0x60), 1);
        w32(&mut d, 0x64, 1);
        assert_eq!(d.irq(), Some((5, false)), "acknowledged");
        m.write(GuestPhysAddr(0x5000), &[0xab; 512]).unwrap();
        assert_eq!(request(&mut d, &mut m, T_OUT, 7, 512), (S_OK, 1));
        assert!(img(&d).lock()[7 * 512..].iter().all(|&b| b == 0xab), "written to the last sector");
        assert_eq!(request(&mut d, &mut m, T_FLUSH, 0, 0), (S_OK, 1));
        let mut used = [0u8; 2];
        m.read(GuestPhysAddr(USED + 2), &mut used).unwrap();
        assert_eq!(u16::from_le_bytes(used), 3);
    }

    #[test]
    fn bad_requests_fail_without_touching_the_disk() {
        let (mut d, mut m) = ready(false);
        let before = img(&d).lock().clone();
        assert_eq!(request(&mut d, &mut m, T_IN, 7, 1024).0, S_IOERR, "past the end");
        assert_eq!(request(&mut d, &mut m, T_OUT, u64::MAX, 512).0, S_IOERR, "sector overflow");
        assert_eq!(request(&mut d, &mut m, T_IN, 0, 100).0, S_IOERR, "not whole sectors");
        assert_eq!(request(&mut d, &mut m, 99, 0, 512).0, S_UNSUPP);
        // Data outside guest RAM, or running past its end.
        assert_eq!(request_at(&mut d, &mut m, T_OUT, 0, 512, 0xfff_0000).0, S_IOERR);
        assert_eq!(request_at(&mut d, &mut m, T_IN, 0, 1024, 0xf_fe00).0, S_IOERR);
        assert_eq!(img(&d).lock().clone(), before);
        // A read-only disk refuses writes.
        let (mut ro, mut m2) = ready(true);
        w32(&mut ro, 0x14, 0);
        assert_eq!(r32(&mut ro, 0x10) & (1 << 5), 1 << 5, "VIRTIO_BLK_F_RO offered");
        assert_eq!(request(&mut ro, &mut m2, T_OUT, 0, 512).0, S_IOERR);
        assert_eq!(request(&mut ro, &mut m2, T_IN, 0, 512).0, S_OK);
    }

    /// The reproduced attack: a FLUSH, then queue size 0 while the queue is enabled. The device
    /// refuses the change, needs a reset, and keeps working after one.
    #[test]
    fn reconfiguring_an_enabled_queue_needs_a_reset_and_never_panics() {
        let (mut d, mut m) = ready(false);
        assert_eq!(request(&mut d, &mut m, T_FLUSH, 0, 0), (S_OK, 1));
        w32(&mut d, 0x64, 1);
        w32(&mut d, 0x38, 0);
        assert_eq!(r32(&mut d, 0x70), 1 | 2 | 4 | 8 | STATUS_NEEDS_RESET);
        assert_eq!(r32(&mut d, 0x60), 2, "configuration change interrupt");
        assert_eq!(d.irq(), Some((5, true)));
        assert!(d.take_notice().is_some());
        // Nothing is processed until the reset.
        assert_eq!(request(&mut d, &mut m, T_IN, 0, 512).0, 0xff);
        for off in [0x84, 0x90, 0xa4] {
            w32(&mut d, off, 1);
        }
        assert_eq!(d.take_notice(), None, "logged once");
        w32(&mut d, 0x70, 0);
        assert_eq!(r32(&mut d, 0x70), 0);
        let (mut d, mut m) = ready_with(img(&d), false);
        assert_eq!(request(&mut d, &mut m, T_IN, 1, 512), (S_OK, 513));
    }

    #[test]
    fn status_changes_follow_the_specification() {
        let disk = blank_disk(4096);
        let mut d = VirtioBlk::new(disk, false, 5);
        // DRIVER_OK without FEATURES_OK.
        w32(&mut d, 0x70, 1 | 2 | 4);
        assert_eq!(r32(&mut d, 0x70) & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
        w32(&mut d, 0x70, 0);
        // FEATURES_OK without VERSION_1 is not accepted.
        w32(&mut d, 0x70, 1 | 2 | 8);
        assert_eq!(r32(&mut d, 0x70), 1 | 2);
        // Features accepted, then changed: a violation.
        w32(&mut d, 0x24, 1);
        w32(&mut d, 0x20, 1);
        w32(&mut d, 0x70, 1 | 2 | 8);
        assert_eq!(r32(&mut d, 0x70), 1 | 2 | 8);
        w32(&mut d, 0x20, 0);
        assert_eq!(r32(&mut d, 0x70) & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
        w32(&mut d, 0x70, 0);
        // Clearing a bit without a reset.
        w32(&mut d, 0x70, 1 | 2);
        w32(&mut d, 0x70, 1);
        assert_eq!(r32(&mut d, 0x70) & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
        // A queue enabled with size 0, 3 or misaligned rings.
        for (num, desc) in [(0, 0x1000), (3, 0x1000), (8, 0x1004)] {
            w32(&mut d, 0x70, 0);
            w32(&mut d, 0x38, num);
            w32(&mut d, 0x80, desc);
            w32(&mut d, 0x44, 1);
            assert_eq!(r32(&mut d, 0x44), 0, "size {num}, table at {desc:#x}");
            assert_eq!(r32(&mut d, 0x70) & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
        }
        // Notifications before DRIVER_OK are ignored.
        w32(&mut d, 0x70, 0);
        w32(&mut d, 0x50, 0);
        assert!(!d.transport.take_notified(0));
    }

    #[test]
    fn looping_and_out_of_range_chains_are_refused() {
        let (mut d, mut m) = ready(false);
        // A chain that loops forever: 0 -> 1 -> 0.
        put_desc(&mut m, 0, 0x4000, 16, DESC_F_NEXT, 1);
        put_desc(&mut m, 1, 0x5000, 512, DESC_F_NEXT, 0);
        m.write(GuestPhysAddr(AVAIL + 4), &0u16.to_le_bytes()).unwrap();
        m.write(GuestPhysAddr(AVAIL + 2), &1u16.to_le_bytes()).unwrap();
        w32(&mut d, 0x50, 0);
        d.process(&mut m);
        let mut e = [0u8; 8];
        m.read(GuestPhysAddr(USED + 4), &mut e).unwrap();
        assert_eq!(u32::from_le_bytes(e[4..8].try_into().unwrap()), 0, "returned unused");
        // An available index far ahead (more than the queue holds): the device needs a reset.
        m.write(GuestPhysAddr(AVAIL + 2), &1000u16.to_le_bytes()).unwrap();
        w32(&mut d, 0x50, 0);
        d.process(&mut m);
        assert_eq!(d.transport.queue(0).unwrap().last_avail(), 1);
        assert_eq!(r32(&mut d, 0x70) & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
        assert_eq!(d.take_notice(), Some("the driver made more buffers available than the queue holds"));
        w32(&mut d, 0x70, 0);
        let (mut d, mut m) = ready(false);
        // Queue addresses outside RAM: nothing happens, nothing panics.
        w32(&mut d, 0x80, 0xffff_f000);
        w32(&mut d, 0x84, 0xffff_ffff);
        w32(&mut d, 0x50, 0);
        d.process(&mut m);
        // Random register traffic.
        let mut x = 0x9e37_79b9u32;
        for _ in 0..20_000 {
            crate::xorshift32(&mut x);
            let off = (x as u64 >> 4) & 0x1fc;
            if x & 1 == 0 {
                w32(&mut d, off, x.rotate_left(7));
            } else {
                r32(&mut d, off);
            }
            if x & 0x300 == 0 {
                w32(&mut d, 0x50, 0);
                d.process(&mut m);
            }
        }
    }
}
