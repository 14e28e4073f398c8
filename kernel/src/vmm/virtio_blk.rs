//! A virtio block device on the virtio-mmio transport (virtio 1.2: 4.2 "Virtio Over MMIO", 2.7
//! "Split Virtqueues", 5.2 "Block Device"), backed by a disk image in host memory.
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
//! The device offers VIRTIO_BLK_F_FLUSH: its image ([`DiskImage`]) may be a write-back cache of
//! the disk's file on the boot media (`super::disk`); a flush request completes only once the
//! image says everything written before it is durable (or failed: VIRTIO_BLK_S_IOERR), possibly
//! long after other requests.

use super::bus::MmioDevice;
use super::memory::GuestMemory;
use super::GuestPhysAddr;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use spin::Mutex;

/// Queue size offered (QueueNumMax).
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of the MMIO window.
pub const MMIO_LEN: u64 = 0x1000;
const SECTOR: u64 = 512;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const STATUS_FAILED: u32 = 0x80;
/// Largest data transfer of one request (guards the bounce buffer).
const MAX_REQUEST_BYTES: u64 = 4 << 20;

/// A disk image in memory.
pub type SharedDisk<D> = Arc<Mutex<D>>;

/// Where a flush stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushState {
    Done,
    Pending,
    Failed,
}

/// A virtual disk's bytes as the device sees them.
pub trait DiskImage: Send {
    fn bytes(&self) -> &[u8];
    /// `range` of the bytes, to be written by the guest (a write-back image notes it as changed).
    fn bytes_mut(&mut self, range: core::ops::Range<usize>) -> &mut [u8];
    /// The guest asks for what it wrote so far to be made durable: a ticket for
    /// [`Self::flush_state`].
    fn request_flush(&mut self) -> u64 {
        0
    }
    fn flush_state(&self, _ticket: u64) -> FlushState {
        FlushState::Done
    }
}

/// An image only in memory (tests, scratch disks): flushes are done at once.
impl DiskImage for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self, range: core::ops::Range<usize>) -> &mut [u8] {
        &mut self[range]
    }
}

/// A request waiting for its flush: its head, where its status byte goes, its ticket.
#[derive(Debug, Clone, Copy)]
struct PendingFlush {
    head: u16,
    status_at: Option<u64>,
    ticket: u64,
}

/// How a request ended, or that it waits for a flush.
enum Outcome {
    Done(u8, u32),
    Flush(u64),
}

#[derive(Debug, Default, Clone, Copy)]
struct Queue {
    num: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
    /// Next available-ring index to take.
    last_avail: u16,
    /// Our used-ring index.
    used_idx: u16,
}

/// One parsed descriptor.
#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    write: bool,
}

/// The device.
pub struct VirtioBlk<D: DiskImage> {
    disk: SharedDisk<D>,
    readonly: bool,
    irq: u8,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    queue_sel: u32,
    queue: Queue,
    interrupt_status: u32,
    config_generation: u32,
    /// A notification waits for [`MmioDevice::process`].
    notified: bool,
    /// Flush requests not completed yet (at most a queue's worth).
    pending: Vec<PendingFlush>,
}

impl<D: DiskImage> VirtioBlk<D> {
    /// A device for `disk` raising interrupt line `irq`.
    pub fn new(disk: SharedDisk<D>, readonly: bool, irq: u8) -> Self {
        VirtioBlk {
            disk,
            readonly,
            irq,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            queue_sel: 0,
            queue: Queue::default(),
            interrupt_status: 0,
            config_generation: 0,
            notified: false,
            pending: Vec::new(),
        }
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | if self.readonly { VIRTIO_BLK_F_RO } else { 0 }
    }

    fn capacity_sectors(&self) -> u64 {
        self.disk.lock().bytes().len() as u64 / SECTOR
    }

    fn reset(&mut self) {
        self.driver_features = 0;
        self.status = 0;
        self.queue = Queue::default();
        self.interrupt_status = 0;
        self.pending.clear();
        self.notified = false;
    }

    fn reg_read(&self, offset: u64) -> u32 {
        let q = &self.queue;
        let selected = self.queue_sel == 0;
        match offset {
            0x000 => u32::from_le_bytes(*b"virt"),
            0x004 => 2,      // version: modern
            0x008 => 2,      // device ID: block
            0x00c => 0x4d45, // vendor ID ("EM")
            0x010 => match self.device_features_sel {
                0 => self.features() as u32,
                1 => (self.features() >> 32) as u32,
                _ => 0,
            },
            0x034 if selected => QUEUE_SIZE as u32,
            0x044 if selected => q.ready as u32,
            0x060 => self.interrupt_status,
            0x070 => self.status,
            0x0fc => self.config_generation,
            0x100..=0x107 => {
                let cap = self.capacity_sectors();
                (cap >> (8 * (offset - 0x100))) as u32
            }
            _ => 0,
        }
    }

    fn reg_write(&mut self, offset: u64, v: u32) {
        let selected = self.queue_sel == 0;
        let q = &mut self.queue;
        let low = |old: u64| (old & !0xffff_ffff) | v as u64;
        let high = |old: u64| (old & 0xffff_ffff) | ((v as u64) << 32);
        match offset {
            0x014 => self.device_features_sel = v,
            0x020 => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v as u64,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | ((v as u64) << 32),
                _ => {}
            },
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 if selected => q.num = v.min(QUEUE_SIZE as u32) as u16,
            0x044 if selected => q.ready = v & 1 != 0,
            0x050 if v == 0 => self.notified = true,
            0x064 => self.interrupt_status &= !v,
            0x070 => {
                if v == 0 {
                    self.reset();
                } else {
                    // FEATURES_OK is refused for features we did not offer (virtio 1.2 3.1.1).
                    let mut s = v;
                    if s & 8 != 0 && self.driver_features & !self.features() != 0 {
                        s &= !8;
                    }
                    self.status = s;
                }
            }
            0x080 if selected => q.desc = low(q.desc),
            0x084 if selected => q.desc = high(q.desc),
            0x090 if selected => q.driver = low(q.driver),
            0x094 if selected => q.driver = high(q.driver),
            0x0a0 if selected => q.device = low(q.device),
            0x0a4 if selected => q.device = high(q.device),
            _ => {}
        }
    }

    fn desc(mem: &dyn GuestMemory, q: &Queue, i: u16) -> Option<(Desc, u16, u16)> {
        if i >= q.num {
            return None;
        }
        let at = q.desc.checked_add(16 * i as u64)?;
        let mut b = [0u8; 16];
        mem.read(GuestPhysAddr(at), &mut b).ok()?;
        let flags = u16::from_le_bytes([b[12], b[13]]);
        let d = Desc {
            addr: u64::from_le_bytes(b[0..8].try_into().ok()?),
            len: u32::from_le_bytes(b[8..12].try_into().ok()?),
            write: flags & DESC_F_WRITE != 0,
        };
        Some((d, flags, u16::from_le_bytes([b[14], b[15]])))
    }

    /// The descriptor chain from `head`, or `None` if it is malformed (out of range, a loop,
    /// indirect descriptors).
    fn chain(mem: &dyn GuestMemory, q: &Queue, head: u16) -> Option<Vec<Desc>> {
        let mut out = Vec::new();
        let mut i = head;
        loop {
            let (d, flags, next) = Self::desc(mem, q, i)?;
            if flags & DESC_F_INDIRECT != 0 || out.len() >= q.num as usize {
                return None;
            }
            out.push(d);
            if flags & DESC_F_NEXT == 0 {
                return Some(out);
            }
            i = next;
        }
    }

    /// Executes one request; returns (status, bytes written into the guest's buffers), or the
    /// ticket of the flush it waits for.
    fn execute(&mut self, mem: &mut dyn GuestMemory, chain: &[Desc]) -> Outcome {
        // Header (device-readable, 16 bytes), data, status (device-writable, 1 byte, last).
        let (Some(first), Some(last)) = (chain.first(), chain.last()) else {
            return Outcome::Done(S_IOERR, 0);
        };
        if chain.len() < 2 || first.write || first.len < 16 || !last.write || last.len < 1 {
            return Outcome::Done(S_IOERR, 0);
        }
        let mut hdr = [0u8; 16];
        if mem.read(GuestPhysAddr(first.addr), &mut hdr).is_err() {
            return Outcome::Done(S_IOERR, 0);
        }
        let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        let data = &chain[1..chain.len() - 1];
        let total: u64 = data.iter().map(|d| d.len as u64).sum();
        let want_write = kind == T_IN || kind == T_GET_ID;
        if data.iter().any(|d| d.write != want_write) && kind != T_FLUSH {
            return Outcome::Done(S_IOERR, 0);
        }
        match kind {
            T_IN | T_OUT => {
                if total > MAX_REQUEST_BYTES || !total.is_multiple_of(SECTOR) {
                    return Outcome::Done(S_IOERR, 0);
                }
                let start = match sector.checked_mul(SECTOR) {
                    Some(s)
                        if s.checked_add(total).is_some_and(|e| e <= self.capacity_sectors() * SECTOR) =>
                    {
                        s
                    }
                    _ => return Outcome::Done(S_IOERR, 0),
                };
                if kind == T_OUT && self.readonly {
                    return Outcome::Done(S_IOERR, 0);
                }
                let mut disk = self.disk.lock();
                let mut at = start as usize;
                for d in data {
                    let range = at..at + d.len as usize;
                    let ok = if kind == T_IN {
                        mem.write(GuestPhysAddr(d.addr), &disk.bytes()[range]).is_ok()
                    } else {
                        mem.read(GuestPhysAddr(d.addr), disk.bytes_mut(range)).is_ok()
                    };
                    if !ok {
                        return Outcome::Done(S_IOERR, 0);
                    }
                    at += d.len as usize;
                }
                Outcome::Done(S_OK, if kind == T_IN { total as u32 } else { 0 })
            }
            T_FLUSH => {
                let mut disk = self.disk.lock();
                let ticket = disk.request_flush();
                match disk.flush_state(ticket) {
                    FlushState::Done => Outcome::Done(S_OK, 0),
                    FlushState::Failed => Outcome::Done(S_IOERR, 0),
                    FlushState::Pending => Outcome::Flush(ticket),
                }
            }
            T_GET_ID => {
                let id = b"ember-virtio-blk\0\0\0\0";
                let Some(d) = data.first() else { return Outcome::Done(S_IOERR, 0) };
                let n = (d.len as usize).min(id.len());
                match mem.write(GuestPhysAddr(d.addr), &id[..n]) {
                    Ok(()) => Outcome::Done(S_OK, n as u32),
                    Err(_) => Outcome::Done(S_IOERR, 0),
                }
            }
            _ => Outcome::Done(S_UNSUPP, 0),
        }
    }

    /// Takes every available request, executes it, and puts it on the used ring.
    fn process_queue(&mut self, mem: &mut dyn GuestMemory) {
        let q = self.queue;
        if !q.ready || q.num == 0 || self.status & STATUS_FAILED != 0 {
            return;
        }
        let mut idx = [0u8; 2];
        if mem.read(GuestPhysAddr(q.driver.wrapping_add(2)), &mut idx).is_err() {
            return;
        }
        let avail_idx = u16::from_le_bytes(idx);
        let mut last = q.last_avail;
        let mut used = q.used_idx;
        // At most one queue's worth per notification (a guest cannot make the device loop).
        let mut budget = q.num;
        while last != avail_idx && budget > 0 {
            budget -= 1;
            let slot = q.driver.wrapping_add(4 + 2 * (last % q.num) as u64);
            last = last.wrapping_add(1);
            let mut h = [0u8; 2];
            if mem.read(GuestPhysAddr(slot), &mut h).is_err() {
                break;
            }
            let head = u16::from_le_bytes(h);
            let Some(chain) = Self::chain(mem, &q, head) else {
                used = Self::complete(mem, &q, used, head, None, 0);
                self.interrupt_status |= 1;
                continue;
            };
            let status_at = chain.last().filter(|d| d.write && d.len >= 1).map(|d| d.addr + d.len as u64 - 1);
            let (status, len) = match self.execute(mem, &chain) {
                Outcome::Done(status, len) => (status, len),
                // Waits for the image's flush, if there is room to remember it.
                Outcome::Flush(ticket) if self.pending.len() < q.num as usize => {
                    self.pending.push(PendingFlush { head, status_at, ticket });
                    continue;
                }
                Outcome::Flush(_) => (S_IOERR, 0),
            };
            used = Self::complete(mem, &q, used, head, status_at.map(|a| (a, status)), len);
            self.interrupt_status |= 1;
        }
        self.queue.last_avail = last;
        self.queue.used_idx = used;
    }

    /// Puts request `head` on the used ring at index `used` (with its status byte written, if it
    /// has one); returns the next used index.
    fn complete(
        mem: &mut dyn GuestMemory,
        q: &Queue,
        used: u16,
        head: u16,
        status: Option<(u64, u8)>,
        len: u32,
    ) -> u16 {
        if let Some((at, status)) = status {
            let _ = mem.write(GuestPhysAddr(at), &[status]);
        }
        let len = len + u32::from(status.is_some());
        let elem = q.device.wrapping_add(4 + 8 * (used % q.num) as u64);
        let mut e = [0u8; 8];
        e[0..4].copy_from_slice(&(head as u32).to_le_bytes());
        e[4..8].copy_from_slice(&len.to_le_bytes());
        let _ = mem.write(GuestPhysAddr(elem), &e);
        let used = used.wrapping_add(1);
        let _ = mem.write(GuestPhysAddr(q.device.wrapping_add(2)), &used.to_le_bytes());
        used
    }

    /// Completes the flush requests whose flush is over.
    fn complete_flushes(&mut self, mem: &mut dyn GuestMemory) {
        if self.pending.is_empty() {
            return;
        }
        let q = self.queue;
        let mut used = q.used_idx;
        let disk = self.disk.clone();
        let disk = disk.lock();
        self.pending.retain(|p| {
            let status = match disk.flush_state(p.ticket) {
                FlushState::Pending => return true,
                FlushState::Done => S_OK,
                FlushState::Failed => S_IOERR,
            };
            used = Self::complete(mem, &q, used, p.head, p.status_at.map(|a| (a, status)), 0);
            false
        });
        if used != q.used_idx {
            self.interrupt_status |= 1;
            self.queue.used_idx = used;
        }
    }
}

impl<D: DiskImage> MmioDevice for VirtioBlk<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are 32 bits wide (config space may be read in smaller pieces).
        let base = offset & !3;
        let v = self.reg_read(base).to_le_bytes();
        let shift = (offset & 3) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.get(shift + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 4 || offset & 3 != 0 {
            return; // registers take aligned 32-bit writes only (virtio 1.2 4.2.2.2)
        }
        self.reg_write(offset, u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
    }

    fn process(&mut self, mem: &mut dyn GuestMemory) {
        if core::mem::take(&mut self.notified) {
            self.process_queue(mem);
        }
        self.complete_flushes(mem);
    }

    fn irq(&self) -> Option<(u8, bool)> {
        Some((self.irq, self.interrupt_status != 0))
    }
}

/// A disk image of `len` bytes in host memory, zero-filled (for tests and empty disks).
pub fn blank_disk(len: usize) -> SharedDisk<Vec<u8>> {
    Arc::new(Mutex::new(vec![0u8; len]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory::GuestRam;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

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
        let mut d = VirtioBlk::new(disk, readonly, 5);
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
        let idx = d.queue.last_avail;
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

    #[test]
    fn a_flush_completes_when_the_image_has_written_everything_back() {
        use crate::vmm::disk::WritebackImage;
        let disk = Arc::new(Mutex::new(WritebackImage::new(vec![0u8; 8 * 512], true)));
        let (mut d, mut m) = ready_with(disk.clone(), false);
        m.write(GuestPhysAddr(0x5000), &[0xcd; 512]).unwrap();
        assert_eq!(request(&mut d, &mut m, T_OUT, 2, 512), (S_OK, 1));
        assert_eq!(disk.lock().dirty_chunks(), 1);
        w32(&mut d, 0x64, 1);
        // The flush waits: no status, the used ring stays where it was, no interrupt.
        assert_eq!(request(&mut d, &mut m, T_FLUSH, 0, 0).0, 0xff);
        let used = |m: &GuestRam| {
            let mut u = [0u8; 2];
            m.read(GuestPhysAddr(USED + 2), &mut u).unwrap();
            u16::from_le_bytes(u)
        };
        assert_eq!((used(&m), d.irq()), (1, Some((5, false))));
        d.process(&mut m);
        assert_eq!(used(&m), 1, "still waiting");
        // The host writes the image back and flushes its device.
        let pass = disk.lock().begin_pass().unwrap();
        let mut buf = Vec::new();
        assert_eq!(disk.lock().copy_chunks(pass.chunks[0], 1, &mut buf), 0..4096);
        assert_eq!(&buf[1024..1536], &[0xcd; 512]);
        disk.lock().end_pass(&pass, true, &[]);
        d.process(&mut m);
        let mut st = [0u8; 1];
        m.read(GuestPhysAddr(0x6000), &mut st).unwrap();
        assert_eq!((st[0], used(&m), d.irq()), (S_OK, 2, Some((5, true))));
        // A failed write-back fails the flush.
        m.write(GuestPhysAddr(0x5000), &[0xee; 512]).unwrap();
        request(&mut d, &mut m, T_OUT, 3, 512);
        request(&mut d, &mut m, T_FLUSH, 0, 0);
        let pass = disk.lock().begin_pass().unwrap();
        disk.lock().end_pass(&pass, false, &pass.chunks);
        d.process(&mut m);
        m.read(GuestPhysAddr(0x6000), &mut st).unwrap();
        assert_eq!((st[0], used(&m)), (S_IOERR, 4));
        // A reset forgets waiting flushes.
        request(&mut d, &mut m, T_FLUSH, 0, 0);
        w32(&mut d, 0x70, 0);
        assert!(d.pending.is_empty());
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
        assert!(d.disk.lock()[7 * 512..].iter().all(|&b| b == 0xab), "written to the last sector");
        assert_eq!(request(&mut d, &mut m, T_FLUSH, 0, 0), (S_OK, 1));
        let mut used = [0u8; 2];
        m.read(GuestPhysAddr(USED + 2), &mut used).unwrap();
        assert_eq!(u16::from_le_bytes(used), 3);
    }

    #[test]
    fn bad_requests_fail_without_touching_the_disk() {
        let (mut d, mut m) = ready(false);
        let before = d.disk.lock().clone();
        assert_eq!(request(&mut d, &mut m, T_IN, 7, 1024).0, S_IOERR, "past the end");
        assert_eq!(request(&mut d, &mut m, T_OUT, u64::MAX, 512).0, S_IOERR, "sector overflow");
        assert_eq!(request(&mut d, &mut m, T_IN, 0, 100).0, S_IOERR, "not whole sectors");
        assert_eq!(request(&mut d, &mut m, 99, 0, 512).0, S_UNSUPP);
        // Data outside guest RAM, or running past its end.
        assert_eq!(request_at(&mut d, &mut m, T_OUT, 0, 512, 0xfff_0000).0, S_IOERR);
        assert_eq!(request_at(&mut d, &mut m, T_IN, 0, 1024, 0xf_fe00).0, S_IOERR);
        assert_eq!(d.disk.lock().clone(), before);
        // A read-only disk refuses writes.
        let (mut ro, mut m2) = ready(true);
        w32(&mut ro, 0x14, 0);
        assert_eq!(r32(&mut ro, 0x10) & (1 << 5), 1 << 5, "VIRTIO_BLK_F_RO offered");
        assert_eq!(request(&mut ro, &mut m2, T_OUT, 0, 512).0, S_IOERR);
        assert_eq!(request(&mut ro, &mut m2, T_IN, 0, 512).0, S_OK);
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
        // An available index far ahead: at most one queue's worth is taken per notification.
        m.write(GuestPhysAddr(AVAIL + 2), &1000u16.to_le_bytes()).unwrap();
        w32(&mut d, 0x50, 0);
        d.process(&mut m);
        assert_eq!(d.queue.last_avail, 9);
        // Queue addresses outside RAM: nothing happens, nothing panics.
        w32(&mut d, 0x80, 0xffff_f000);
        w32(&mut d, 0x84, 0xffff_ffff);
        w32(&mut d, 0x50, 0);
        d.process(&mut m);
        // Random register traffic.
        let mut x = 0x9e37_79b9u32;
        for _ in 0..20_000 {
            crate::vmm::xorshift32(&mut x);
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
