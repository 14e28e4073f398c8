//! The block device interface (layer 2) shared by host tools, drivers and the storage services.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// An error from a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoError {
    /// The request reaches past the end of the device.
    OutOfRange { lba: u64, blocks: u64, device_blocks: u64 },
    /// The buffer is not a whole number of blocks.
    UnalignedBuffer { len: usize, block_size: u32 },
    /// The device itself failed; the message comes from the driver or the host OS.
    Device(String),
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoError::OutOfRange { lba, blocks, device_blocks } => write!(
                f,
                "access to blocks {lba}..{} is past the end of the device ({device_blocks} blocks)",
                lba.saturating_add(*blocks)
            ),
            IoError::UnalignedBuffer { len, block_size } => {
                write!(f, "buffer of {len} bytes is not a multiple of the {block_size}-byte block size")
            }
            IoError::Device(msg) => write!(f, "device error: {msg}"),
        }
    }
}

/// A device addressed in fixed-size logical blocks.
pub trait BlockDevice {
    /// Bytes per logical block (512 or 4096 in practice).
    fn block_size(&self) -> u32;
    /// Number of logical blocks.
    fn num_blocks(&self) -> u64;
    /// Reads `buf.len() / block_size` blocks starting at `lba`.
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError>;
    /// Writes `buf.len() / block_size` blocks starting at `lba`.
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> Result<(), IoError>;

    /// Checks that a request of `len` bytes at `lba` fits the device; returns the block count.
    fn check_request(&self, lba: u64, len: usize) -> Result<u64, IoError> {
        let bs = self.block_size();
        if bs == 0 || !len.is_multiple_of(bs as usize) {
            return Err(IoError::UnalignedBuffer { len, block_size: bs });
        }
        let blocks = (len / bs as usize) as u64;
        match lba.checked_add(blocks) {
            Some(end) if end <= self.num_blocks() => Ok(blocks),
            _ => Err(IoError::OutOfRange { lba, blocks, device_blocks: self.num_blocks() }),
        }
    }
}

/// One block device with several owners on the same CPU, each holding a handle (the boot media:
/// its configuration store, and a datastore in its free space). Every call borrows the device for
/// its own duration only; a call made while another handle's call is still running (which the
/// management loop never does) fails with a device error rather than interleaving.
#[derive(Clone)]
pub struct SharedDevice {
    dev: alloc::rc::Rc<core::cell::RefCell<alloc::boxed::Box<dyn BlockDevice>>>,
    /// The device's geometry, read once (it does not change).
    block_size: u32,
    blocks: u64,
}

impl SharedDevice {
    pub fn new(dev: alloc::boxed::Box<dyn BlockDevice>) -> SharedDevice {
        let (block_size, blocks) = (dev.block_size(), dev.num_blocks());
        SharedDevice { dev: alloc::rc::Rc::new(core::cell::RefCell::new(dev)), block_size, blocks }
    }

    fn with<T>(&self, f: impl FnOnce(&mut dyn BlockDevice) -> Result<T, IoError>) -> Result<T, IoError> {
        match self.dev.try_borrow_mut() {
            Ok(mut d) => f(d.as_mut()),
            Err(_) => Err(IoError::Device(String::from("the device is busy with another request"))),
        }
    }
}

impl BlockDevice for SharedDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.blocks
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.with(|d| d.read_blocks(lba, buf))
    }
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.with(|d| d.write_blocks(lba, buf))
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.with(|d| d.flush())
    }
}

/// Splits a request of `len` bytes at `lba` into pieces of at most `max_bytes` (whole blocks), for
/// drivers that move data through a bounce buffer: `piece(lba, range)` handles bytes `range` of the
/// request, which start at block `lba`.
pub fn in_pieces(
    lba: u64,
    len: usize,
    block_size: u32,
    max_bytes: usize,
    mut piece: impl FnMut(u64, core::ops::Range<usize>) -> Result<(), IoError>,
) -> Result<(), IoError> {
    let bs = block_size as usize;
    let step = (max_bytes / bs).max(1) * bs;
    let mut at = 0;
    while at < len {
        let n = (len - at).min(step);
        piece(lba + (at / bs) as u64, at..at + n)?;
        at += n;
    }
    Ok(())
}

/// Blocks `start..start + blocks` of another device, seen as a device of their own (a partition).
pub struct Window<'d, D: BlockDevice + ?Sized> {
    dev: &'d mut D,
    start: u64,
    blocks: u64,
}

impl<'d, D: BlockDevice + ?Sized> Window<'d, D> {
    /// The window, or `None` when it reaches past the end of `dev`.
    pub fn new(dev: &'d mut D, start: u64, blocks: u64) -> Option<Self> {
        let end = start.checked_add(blocks)?;
        (end <= dev.num_blocks()).then_some(Window { dev, start, blocks })
    }
}

impl<D: BlockDevice + ?Sized> BlockDevice for Window<'_, D> {
    fn block_size(&self) -> u32 {
        self.dev.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.blocks
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check_request(lba, buf.len())?;
        self.dev.read_blocks(self.start + lba, buf)
    }
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.check_request(lba, buf.len())?;
        self.dev.write_blocks(self.start + lba, buf)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.dev.flush()
    }
}

/// An in-memory block device: the fake used by tests, and a staging buffer for tools.
#[derive(Debug, Clone)]
pub struct MemDisk {
    block_size: u32,
    data: Vec<u8>,
    /// Number of `flush` calls, so tests can check durability points.
    pub flushes: u64,
    /// Number of `write_blocks` calls (device commands), written or refused.
    pub writes: u64,
    /// When set, every write fails as a write-protected medium's would (tests of failed saves).
    pub write_protected: bool,
}

impl MemDisk {
    /// A zero-filled disk of `blocks` blocks of `block_size` bytes.
    pub fn new(block_size: u32, blocks: u64) -> Self {
        MemDisk {
            block_size,
            data: vec![0; block_size as usize * blocks as usize],
            flushes: 0,
            writes: 0,
            write_protected: false,
        }
    }
    /// A disk holding `data` (its length is cut down to whole blocks).
    pub fn from_bytes(block_size: u32, mut data: Vec<u8>) -> Self {
        let whole = data.len() - data.len() % block_size as usize;
        data.truncate(whole);
        MemDisk { block_size, data, flushes: 0, writes: 0, write_protected: false }
    }
    /// The disk contents.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
    /// Mutable disk contents (tests corrupt fields through this).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl BlockDevice for MemDisk {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        (self.data.len() / self.block_size as usize) as u64
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check_request(lba, buf.len())?;
        let start = lba as usize * self.block_size as usize;
        buf.copy_from_slice(&self.data[start..start + buf.len()]);
        Ok(())
    }
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.writes += 1;
        self.check_request(lba, buf.len())?;
        if self.write_protected {
            return Err(IoError::Device(String::from("the medium is write protected")));
        }
        let start = lba as usize * self.block_size as usize;
        self.data[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.flushes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_device_serves_every_handle() {
        let mut a = SharedDevice::new(alloc::boxed::Box::new(MemDisk::new(512, 8)));
        let mut b = a.clone();
        a.write_blocks(3, &[7u8; 512]).unwrap();
        let mut buf = [0u8; 512];
        b.read_blocks(3, &mut buf).unwrap();
        assert_eq!((buf, b.block_size(), b.num_blocks()), ([7u8; 512], 512, 8));
        assert!(b.flush().is_ok());
        assert!(matches!(b.read_blocks(8, &mut buf), Err(IoError::OutOfRange { .. })));
    }

    #[test]
    fn memdisk_bounds_are_checked() {
        let mut d = MemDisk::new(512, 4);
        let mut buf = [0u8; 1024];
        assert!(d.read_blocks(2, &mut buf).is_ok());
        assert_eq!(
            d.read_blocks(3, &mut buf),
            Err(IoError::OutOfRange { lba: 3, blocks: 2, device_blocks: 4 })
        );
        assert_eq!(
            d.write_blocks(0, &buf[..100]),
            Err(IoError::UnalignedBuffer { len: 100, block_size: 512 })
        );
        assert!(d.read_blocks(u64::MAX, &mut buf).is_err());
    }

    #[test]
    fn requests_are_cut_into_whole_block_pieces() {
        let mut seen = Vec::new();
        in_pieces(10, 5 * 512, 512, 1024, |lba, r| {
            seen.push((lba, r));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [(10, 0..1024), (12, 1024..2048), (14, 2048..2560)]);
        let mut n = 0;
        in_pieces(0, 4096, 4096, 100, |_, r| {
            n += r.len();
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 4096, "a piece is at least one block");
        let e =
            in_pieces(
                0,
                2048,
                512,
                512,
                |lba, _| if lba == 2 { Err(IoError::Device("x".into())) } else { Ok(()) },
            );
        assert!(e.is_err());
        let mut d = MemDisk::new(512, 4);
        d.write_protected = true;
        assert_eq!(
            d.write_blocks(0, &[0; 512]),
            Err(IoError::Device("the medium is write protected".into()))
        );
    }

    #[test]
    fn a_window_is_bounded_and_offset() {
        let mut d = MemDisk::new(512, 8);
        assert!(Window::new(&mut d, 4, 5).is_none());
        assert!(Window::new(&mut d, u64::MAX, 2).is_none());
        let mut w = Window::new(&mut d, 4, 4).unwrap();
        assert_eq!(w.num_blocks(), 4);
        w.write_blocks(1, &[7u8; 512]).unwrap();
        assert!(w.write_blocks(4, &[7u8; 512]).is_err(), "past the window's end");
        assert_eq!(d.bytes()[5 * 512], 7);
        assert_eq!(d.bytes()[4 * 512], 0);
    }

    #[test]
    fn memdisk_round_trip() {
        let mut d = MemDisk::new(512, 8);
        let data: Vec<u8> = (0..1024).map(|i| i as u8).collect();
        d.write_blocks(5, &data).unwrap();
        let mut back = vec![0u8; 1024];
        d.read_blocks(5, &mut back).unwrap();
        assert_eq!(back, data);
    }
}

/// Test doubles shared by the storage tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use alloc::rc::Rc;
    use core::cell::RefCell;

    /// A disk that loses power after `budget` block writes: the write in flight at the cut is torn
    /// (its first `torn_bytes` bytes land), later writes and flushes fail.
    pub struct CuttingDisk<D> {
        pub inner: D,
        pub budget: usize,
        pub torn_bytes: usize,
        pub dead: bool,
    }

    impl<D: BlockDevice> BlockDevice for CuttingDisk<D> {
        fn block_size(&self) -> u32 {
            self.inner.block_size()
        }
        fn num_blocks(&self) -> u64 {
            self.inner.num_blocks()
        }
        fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
            self.inner.read_blocks(lba, buf)
        }
        fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
            let bs = self.block_size() as usize;
            for (i, block) in buf.chunks(bs).enumerate() {
                if self.dead {
                    return Err(IoError::Device("power lost".into()));
                }
                let at = lba + i as u64;
                if self.budget == 0 {
                    self.dead = true;
                    let mut torn = vec![0u8; bs];
                    self.inner.read_blocks(at, &mut torn)?;
                    torn[..self.torn_bytes].copy_from_slice(&block[..self.torn_bytes]);
                    self.inner.write_blocks(at, &torn)?;
                    return Err(IoError::Device("power lost".into()));
                }
                self.budget -= 1;
                self.inner.write_blocks(at, block)?;
            }
            Ok(())
        }
        fn flush(&mut self) -> Result<(), IoError> {
            if self.dead {
                return Err(IoError::Device("power lost".into()));
            }
            self.inner.flush()
        }
    }

    /// One in-memory medium seen through several handles (the device a store writes and the one
    /// a test reads after a cut, as the next boot would).
    #[derive(Clone)]
    pub struct Shared(pub Rc<RefCell<MemDisk>>);

    impl BlockDevice for Shared {
        fn block_size(&self) -> u32 {
            self.0.borrow().block_size()
        }
        fn num_blocks(&self) -> u64 {
            self.0.borrow().num_blocks()
        }
        fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
            self.0.borrow_mut().read_blocks(lba, buf)
        }
        fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
            self.0.borrow_mut().write_blocks(lba, buf)
        }
        fn flush(&mut self) -> Result<(), IoError> {
            self.0.borrow_mut().flush()
        }
    }
}
