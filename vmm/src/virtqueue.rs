//! The split virtqueue as a device sees it (virtio 1.2, 2.7 "Split Virtqueues"), for every virtio
//! device model: its configuration with the rules the specification sets for what a driver may
//! write and when, taking buffers from the available ring, walking descriptor chains, and
//! returning buffers on the used ring.
//!
//! Everything here is total: a driver that breaks the rules gets a [`Violation`] naming the rule
//! (the device then sets DEVICE_NEEDS_RESET), never a panic, and no value a guest writes makes the
//! device read or write outside guest RAM (every access goes through [`GuestMemory`]) or loop.

use super::memory::GuestMemory;
use super::GuestPhysAddr;
use alloc::vec::Vec;

/// A rule of the virtio specification the driver broke (the text says which, for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation(pub &'static str);

/// Descriptor flags (2.7.5).
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

/// One descriptor of a chain: a buffer in guest memory, device-writable or device-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// Which of the three areas of the queue an address register sets (QueueDesc, QueueDriver,
/// QueueDevice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Descriptors,
    Driver,
    Device,
}

/// One split virtqueue: its size, areas and where the device stands in its rings.
#[derive(Debug, Clone, Copy)]
pub struct SplitQueue {
    /// The largest size the device offers (QueueNumMax; a power of two).
    max: u16,
    num: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
    /// Next available-ring index to take.
    last_avail: u16,
    /// The device's used-ring index.
    used_idx: u16,
}

impl SplitQueue {
    /// A queue of at most `max` entries (a power of two, at most 32768), not ready.
    pub const fn new(max: u16) -> SplitQueue {
        SplitQueue { max, num: max, ready: false, desc: 0, driver: 0, device: 0, last_avail: 0, used_idx: 0 }
    }

    /// Back to the state after a device reset.
    pub fn reset(&mut self) {
        *self = SplitQueue::new(self.max);
    }

    pub fn max(&self) -> u16 {
        self.max
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    /// The next available-ring index the device takes.
    pub fn last_avail(&self) -> u16 {
        self.last_avail
    }

    fn configurable(&self) -> Result<(), Violation> {
        if self.ready {
            return Err(Violation("the driver changed a queue's configuration while the queue was enabled"));
        }
        Ok(())
    }

    /// QueueNum. A size that is not a power of two or above the maximum is refused when the queue
    /// is enabled ([`Self::set_ready`]), as the driver may write the registers in any order.
    pub fn set_num(&mut self, v: u32) -> Result<(), Violation> {
        self.configurable()?;
        self.num = u16::try_from(v).unwrap_or(0);
        if v > u32::from(self.max) {
            self.num = 0;
        }
        Ok(())
    }

    /// The low or high half of an area's address.
    pub fn set_addr(&mut self, area: Area, high: bool, v: u32) -> Result<(), Violation> {
        self.configurable()?;
        let slot = match area {
            Area::Descriptors => &mut self.desc,
            Area::Driver => &mut self.driver,
            Area::Device => &mut self.device,
        };
        *slot = if high {
            (*slot & 0xffff_ffff) | (u64::from(v) << 32)
        } else {
            (*slot & !0xffff_ffff) | u64::from(v)
        };
        Ok(())
    }

    /// QueueReady. Enabling checks the configuration (2.7: size a power of two and at most the
    /// maximum; descriptor table 16-byte, available ring 2-byte, used ring 4-byte aligned; no
    /// area wrapping the address space) and starts the rings at index 0; disabling stops the
    /// device's use of the queue.
    pub fn set_ready(&mut self, v: u32) -> Result<(), Violation> {
        if v & 1 == 0 {
            self.ready = false;
            return Ok(());
        }
        if self.ready {
            return Ok(());
        }
        if self.num == 0 || !self.num.is_power_of_two() || self.num > self.max {
            return Err(Violation(
                "the driver enabled a queue whose size is 0, above the maximum or not a power of two",
            ));
        }
        if !self.desc.is_multiple_of(16) || !self.driver.is_multiple_of(2) || !self.device.is_multiple_of(4) {
            return Err(Violation("the driver enabled a queue whose rings are not aligned"));
        }
        // At most 32768 entries: these products cannot overflow.
        let n = u64::from(self.num);
        let ends = [
            self.desc.checked_add(n.saturating_mul(16)),
            self.driver.checked_add(n.saturating_mul(2).saturating_add(6)),
            self.device.checked_add(n.saturating_mul(8).saturating_add(6)),
        ];
        if ends.iter().any(Option::is_none) {
            return Err(Violation("the driver enabled a queue whose rings wrap the address space"));
        }
        self.ready = true;
        self.last_avail = 0;
        self.used_idx = 0;
        Ok(())
    }

    /// The ring slot of free-running index `i` (the size is a non-zero power of two while the
    /// queue is ready).
    fn slot(&self, i: u16) -> u64 {
        u64::from(i & self.num.wrapping_sub(1))
    }

    /// Buffers the driver made available and the device has not taken: `Ok(n)`, or a violation if
    /// the driver claims more than the queue holds (2.7.13: the driver may make at most a queue's
    /// worth available). `Ok(0)` when the queue is not ready or its ring is outside guest RAM.
    pub fn available(&self, mem: &dyn GuestMemory) -> Result<u16, Violation> {
        if !self.ready {
            return Ok(0);
        }
        let mut idx = [0u8; 2];
        let Some(at) = self.driver.checked_add(2) else { return Ok(0) };
        if mem.read(GuestPhysAddr(at), &mut idx).is_err() {
            return Ok(0);
        }
        let n = u16::from_le_bytes(idx).wrapping_sub(self.last_avail);
        if n > self.num {
            return Err(Violation("the driver made more buffers available than the queue holds"));
        }
        Ok(n)
    }

    /// Takes the next available buffer's head descriptor index (call only while
    /// [`Self::available`] says there is one). `Ok(None)`: the ring is outside guest RAM.
    pub fn pop(&mut self, mem: &dyn GuestMemory) -> Result<Option<u16>, Violation> {
        let at = self.driver.checked_add(self.slot(self.last_avail).saturating_mul(2).saturating_add(4));
        let mut h = [0u8; 2];
        if at.is_none_or(|a| mem.read(GuestPhysAddr(a), &mut h).is_err()) {
            return Ok(None);
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        let head = u16::from_le_bytes(h);
        if head >= self.num {
            return Err(Violation(
                "the driver made a buffer available whose head index is outside the queue",
            ));
        }
        Ok(Some(head))
    }

    fn desc(&self, mem: &dyn GuestMemory, i: u16) -> Option<(Desc, u16, u16)> {
        if i >= self.num {
            return None;
        }
        let at = self.desc.checked_add(16 * u64::from(i))?;
        let mut b = [0u8; 16];
        mem.read(GuestPhysAddr(at), &mut b).ok()?;
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = b;
        let flags = u16::from_le_bytes([f0, f1]);
        let d = Desc {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            write: flags & DESC_F_WRITE != 0,
        };
        Some((d, flags, u16::from_le_bytes([n0, n1])))
    }

    /// The descriptor chain from `head`, or `None` if it is malformed: an index outside the queue,
    /// a loop (longer than the queue), indirect descriptors (not offered), a table outside RAM.
    pub fn chain(&self, mem: &dyn GuestMemory, head: u16) -> Option<Vec<Desc>> {
        let mut out = Vec::new();
        let mut i = head;
        loop {
            let (d, flags, next) = self.desc(mem, i)?;
            if flags & DESC_F_INDIRECT != 0 || out.len() >= usize::from(self.num) {
                return None;
            }
            out.push(d);
            if flags & DESC_F_NEXT == 0 {
                return Some(out);
            }
            i = next;
        }
    }

    /// Returns buffer `head` on the used ring with `len` bytes written into it, and publishes the
    /// new used index. Writes outside guest RAM are dropped (the guest put its ring there).
    pub fn push_used(&mut self, mem: &mut dyn GuestMemory, head: u16, len: u32) {
        if !self.ready {
            return;
        }
        let mut e = [0u8; 8];
        e[0..4].copy_from_slice(&u32::from(head).to_le_bytes());
        e[4..8].copy_from_slice(&len.to_le_bytes());
        if let Some(at) =
            self.device.checked_add(self.slot(self.used_idx).saturating_mul(8).saturating_add(4))
        {
            let _ = mem.write(GuestPhysAddr(at), &e);
        }
        self.used_idx = self.used_idx.wrapping_add(1);
        if let Some(at) = self.device.checked_add(2) {
            let _ = mem.write(GuestPhysAddr(at), &self.used_idx.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    fn configured(num: u32) -> SplitQueue {
        let mut q = SplitQueue::new(256);
        q.set_num(num).unwrap();
        q.set_addr(Area::Descriptors, false, 0x1000).unwrap();
        q.set_addr(Area::Driver, false, 0x2000).unwrap();
        q.set_addr(Area::Device, false, 0x3000).unwrap();
        q
    }

    #[test]
    fn enabling_checks_size_and_alignment() {
        for bad in [0, 3, 100, 512, 0x1_0000] {
            assert!(configured(bad).set_ready(1).is_err(), "size {bad}");
        }
        assert!(configured(8).set_ready(1).is_ok());
        for (area, at) in [(Area::Descriptors, 0x1008), (Area::Driver, 0x2001), (Area::Device, 0x3002)] {
            let mut q = configured(8);
            q.set_addr(area, false, at).unwrap();
            assert!(q.set_ready(1).is_err(), "{area:?} at {at:#x}");
        }
        let mut q = configured(8);
        q.set_addr(Area::Device, true, 0xffff_ffff).unwrap();
        q.set_addr(Area::Device, false, 0xffff_fff0).unwrap();
        assert!(q.set_ready(1).is_err(), "wraps");
    }

    #[test]
    fn an_enabled_queue_cannot_be_reconfigured() {
        let mut q = configured(8);
        q.set_ready(1).unwrap();
        assert!(q.set_num(0).is_err());
        assert!(q.set_addr(Area::Driver, false, 0).is_err());
        assert_eq!(q.slot(9), 1, "configuration kept");
        q.set_ready(0).unwrap();
        assert!(q.set_num(16).is_ok());
    }

    #[test]
    fn rings_are_taken_and_filled() {
        let mut m = GuestRam::new(0x10000);
        let mut q = configured(4);
        q.set_ready(1).unwrap();
        assert_eq!(q.available(&m), Ok(0));
        // Two buffers: heads 2 and 3; descriptor 2 chains to 1.
        m.write(GuestPhysAddr(0x2004), &[2, 0, 3, 0]).unwrap();
        m.write(GuestPhysAddr(0x2002), &2u16.to_le_bytes()).unwrap();
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&0x5000u64.to_le_bytes());
        d[8..12].copy_from_slice(&16u32.to_le_bytes());
        d[12] = 1;
        d[14] = 1;
        m.write(GuestPhysAddr(0x1000 + 32), &d).unwrap();
        d[12] = 2;
        m.write(GuestPhysAddr(0x1000 + 16), &d).unwrap();
        assert_eq!(q.available(&m), Ok(2));
        assert_eq!(q.pop(&m), Ok(Some(2)));
        let chain = q.chain(&m, 2).unwrap();
        assert_eq!(chain.len(), 2);
        assert!(!chain[0].write && chain[1].write);
        q.push_used(&mut m, 2, 7);
        let mut u = [0u8; 10];
        m.read(GuestPhysAddr(0x3002), &mut u).unwrap();
        assert_eq!(u, [1, 0, 2, 0, 0, 0, 7, 0, 0, 0]);
        // A head outside the queue is a violation.
        assert_eq!(q.pop(&m), Ok(Some(3)));
        m.write(GuestPhysAddr(0x2008), &[9, 0]).unwrap();
        m.write(GuestPhysAddr(0x2002), &5u16.to_le_bytes()).unwrap();
        assert!(q.pop(&m).is_err());
        // More available than the queue holds.
        m.write(GuestPhysAddr(0x2002), &500u16.to_le_bytes()).unwrap();
        assert!(q.available(&m).is_err());
    }

    #[test]
    fn malformed_chains_are_refused() {
        let mut m = GuestRam::new(0x10000);
        let mut q = configured(4);
        q.set_ready(1).unwrap();
        let put = |m: &mut GuestRam, i: u64, flags: u8, next: u8| {
            let mut d = [0u8; 16];
            d[12] = flags;
            d[14] = next;
            m.write(GuestPhysAddr(0x1000 + 16 * i), &d).unwrap();
        };
        put(&mut m, 0, 1, 1);
        put(&mut m, 1, 1, 0);
        assert_eq!(q.chain(&m, 0), None, "loop");
        put(&mut m, 1, 1, 7);
        assert_eq!(q.chain(&m, 0), None, "next outside the queue");
        put(&mut m, 1, 4, 0);
        assert_eq!(q.chain(&m, 0), None, "indirect");
        assert_eq!(q.chain(&m, 4), None, "head outside the queue");
        q.set_ready(0).unwrap();
        q.set_addr(Area::Descriptors, false, 0xfff0).unwrap();
        q.set_ready(1).unwrap();
        assert_eq!(q.chain(&m, 1), None, "table past the end of RAM");
    }
}
