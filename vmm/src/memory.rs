//! Guest memory: the one way the hypervisor reads and writes what a guest sees as RAM. Every access
//! is bounds-checked against the VM's RAM; an address outside it is an error, never a host access.
//!
//! [`GuestMemory`] is the interface (device models and loaders take `&mut impl GuestMemory` per
//! call and never own it); [`GuestRam`] keeps a VM's RAM in one host allocation.

use super::GuestPhysAddr;
use alloc::vec;
use alloc::vec::Vec;

/// An access outside the guest's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange {
    pub addr: GuestPhysAddr,
    pub len: u64,
}

impl core::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} + {} bytes is outside guest RAM", self.addr, self.len)
    }
}

/// Where guest RAM continues past the MMIO window below 4 GiB (a PC's layout).
pub const HIGH_RAM_START: u64 = 1 << 32;

/// Guest-physical memory.
pub trait GuestMemory {
    /// Bytes of RAM, from guest-physical address 0 (up to the MMIO window at most).
    fn size(&self) -> u64;
    /// Bytes of RAM from [`HIGH_RAM_START`] (above the MMIO window).
    fn high(&self) -> u64 {
        0
    }
    /// Whether `len` bytes at `addr` are all RAM.
    fn contains(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else { return false };
        end <= self.size()
            || (addr >= HIGH_RAM_START
                && self.high() > 0
                && end <= HIGH_RAM_START.saturating_add(self.high()))
    }
    fn read(&self, addr: GuestPhysAddr, buf: &mut [u8]) -> Result<(), OutOfRange>;
    fn write(&mut self, addr: GuestPhysAddr, data: &[u8]) -> Result<(), OutOfRange>;

    fn read_u64(&self, addr: GuestPhysAddr) -> Result<u64, OutOfRange> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn write_u64(&mut self, addr: GuestPhysAddr, v: u64) -> Result<(), OutOfRange> {
        self.write(addr, &v.to_le_bytes())
    }

    /// Zeroes all of it (a VM never sees what the memory held before).
    fn zero(&mut self) {
        let zeros = [0u8; 4096];
        let mut at = 0;
        while at < self.size() {
            let n = self.size().saturating_sub(at).min(zeros.len() as u64) as usize;
            let _ = self.write(GuestPhysAddr(at), zeros.get(..n).unwrap_or_default());
            at = at.saturating_add(n as u64);
        }
    }
}

/// A VM's RAM laid out as a PC's: the first `low` bytes from guest-physical 0 (below the MMIO
/// window), the rest from [`HIGH_RAM_START`]; one memory (`inner`, low part first) holds both. An
/// access that is not wholly in one part is out of range.
pub struct SplitRam<M> {
    inner: M,
    low: u64,
}

impl<M: GuestMemory> SplitRam<M> {
    /// `inner`'s first `low` bytes at guest-physical 0, the rest at 4 GiB.
    pub fn new(inner: M, low: u64) -> Self {
        let low = low.min(inner.size());
        SplitRam { inner, low }
    }

    /// Where `len` bytes at `addr` are in `inner`.
    fn place(&self, addr: GuestPhysAddr, len: usize) -> Result<GuestPhysAddr, OutOfRange> {
        let out = OutOfRange { addr, len: len as u64 };
        let end = addr.0.checked_add(len as u64).ok_or(out)?;
        if end <= self.low {
            return Ok(addr);
        }
        // Above 4 GiB; `inner` checks the end against its size.
        let above = addr.0.checked_sub(HIGH_RAM_START).ok_or(out)?;
        self.low.checked_add(above).map(GuestPhysAddr).ok_or(out)
    }
}

impl<M: GuestMemory> GuestMemory for SplitRam<M> {
    fn size(&self) -> u64 {
        self.low
    }

    fn high(&self) -> u64 {
        self.inner.size().saturating_sub(self.low)
    }

    fn read(&self, addr: GuestPhysAddr, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let at = self.place(addr, buf.len())?;
        self.inner.read(at, buf).map_err(|_| OutOfRange { addr, len: buf.len() as u64 })
    }

    fn write(&mut self, addr: GuestPhysAddr, data: &[u8]) -> Result<(), OutOfRange> {
        let at = self.place(addr, data.len())?;
        self.inner.write(at, data).map_err(|_| OutOfRange { addr, len: data.len() as u64 })
    }

    fn zero(&mut self) {
        self.inner.zero();
    }
}

/// A VM's RAM in one host allocation, guest-physical 0 at its start.
pub struct GuestRam {
    bytes: Vec<u8>,
}

impl GuestRam {
    pub fn new(size: usize) -> GuestRam {
        GuestRam { bytes: vec![0; size] }
    }
}

/// The byte range `addr`..`addr + len` of a RAM of `size` bytes from guest-physical 0, if all of it
/// is RAM (for implementations of [`GuestMemory`]).
pub fn checked_range(
    size: u64,
    addr: GuestPhysAddr,
    len: usize,
) -> Result<core::ops::Range<usize>, OutOfRange> {
    let out = OutOfRange { addr, len: len as u64 };
    let start = usize::try_from(addr.0).map_err(|_| out)?;
    let end = start.checked_add(len).ok_or(out)?;
    if end as u64 > size {
        return Err(out);
    }
    Ok(start..end)
}

impl GuestMemory for GuestRam {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read(&self, addr: GuestPhysAddr, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let r = checked_range(self.size(), addr, buf.len())?;
        buf.copy_from_slice(self.bytes.get(r).ok_or(OutOfRange { addr, len: buf.len() as u64 })?);
        Ok(())
    }

    fn write(&mut self, addr: GuestPhysAddr, data: &[u8]) -> Result<(), OutOfRange> {
        let r = checked_range(self.size(), addr, data.len())?;
        self.bytes.get_mut(r).ok_or(OutOfRange { addr, len: data.len() as u64 })?.copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_are_bounds_checked() {
        let mut m = GuestRam::new(4096);
        m.write(GuestPhysAddr(4088), &[1; 8]).unwrap();
        assert_eq!(m.read_u64(GuestPhysAddr(4088)).unwrap(), 0x0101_0101_0101_0101);
        assert_eq!(
            m.write(GuestPhysAddr(4089), &[0; 8]),
            Err(OutOfRange { addr: GuestPhysAddr(4089), len: 8 })
        );
        assert!(m.read(GuestPhysAddr(u64::MAX), &mut [0; 2]).is_err());
        assert!(m.read(GuestPhysAddr(4096), &mut []).is_ok(), "an empty access at the end is fine");
        assert!(m.read(GuestPhysAddr(4097), &mut []).is_err());
        // Nothing was written by the refused access.
        assert_eq!(m.read_u64(GuestPhysAddr(4088)).unwrap(), 0x0101_0101_0101_0101);
    }

    /// RAM split around the MMIO window: 12 KiB below it (in the test, "below" ends at 12 KiB),
    /// 4 KiB from 4 GiB; the hole and what is past the end are out of range.
    #[test]
    fn split_ram_has_a_hole_below_4_gib() {
        let mut m = SplitRam::new(GuestRam::new(16384), 12288);
        assert_eq!((m.size(), m.high()), (12288, 4096));
        m.write(GuestPhysAddr(HIGH_RAM_START + 8), &[7; 8]).unwrap();
        assert_eq!(m.inner.bytes[12288 + 8], 7, "high RAM follows low RAM in the host memory");
        assert_eq!(m.read_u64(GuestPhysAddr(HIGH_RAM_START + 8)).unwrap(), 0x0707_0707_0707_0707);
        for (addr, len) in
            [(12288, 1), (12280, 16), (HIGH_RAM_START - 4, 8), (HIGH_RAM_START + 4090, 8), (u64::MAX, 2)]
        {
            assert!(m.read(GuestPhysAddr(addr), &mut vec![0; len]).is_err(), "{addr:#x}+{len}");
            assert!(!m.contains(addr, len as u64), "{addr:#x}+{len}");
        }
        assert!(m.contains(0, 12288) && m.contains(HIGH_RAM_START, 4096));
        m.write(GuestPhysAddr(0), &[1; 8]).unwrap();
        m.zero();
        assert!(m.inner.bytes.iter().all(|&b| b == 0), "all of it");
    }
}
