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

/// Guest-physical memory.
pub trait GuestMemory {
    /// Bytes of RAM, from guest-physical address 0.
    fn size(&self) -> u64;
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
}
