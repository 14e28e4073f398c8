//! Writing VM disks back to the boot media in bounded steps: each disk is a [`WritebackImage`]
//! (the guest's writes in host memory, dirty 4 KiB chunks tracked) whose file lies at known device
//! bytes ([`FileExtents`]). A pass starts when the guest waits for a flush, or every
//! [`WRITEBACK_MS`] when chunks are dirty; it is carried on by [`Writeback::poll`] a bounded step
//! at a time (at most [`POLL_CHUNKS`] chunks per call, at most [`DISK_CHUNKS_PER_SECOND`] per disk
//! per second, disks taken in turn), so the management CPU that calls it keeps answering while a
//! guest writes and flushes without pause; when a pass has written everything and the device is
//! flushed, the flushes it was for complete (a failure fails them, and the chunks stay dirty).

use super::disk::{Pass, WritebackImage};
use super::virtio_blk::SharedDisk;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ember_storage::block::{BlockDevice, IoError};
use ember_storage::fatfile::FileExtents;

/// A VM disk written back to its file on the boot media.
pub struct BackedDisk<B> {
    label: String,
    image: SharedDisk<WritebackImage<B>>,
    extents: FileExtents,
    /// The pass under way (it may take several calls of [`Writeback::poll`]) and how far it got.
    pass: Option<(Pass, usize)>,
    /// Chunks written in second `budget_second` (the disk's write budget).
    budget_second: u64,
    budget_used: usize,
}

/// Writes the VMs' changed disk chunks back to the boot media in bounded steps: one call writes at most [`POLL_CHUNKS`] chunks in
/// all, and each disk at most [`DISK_CHUNKS_PER_SECOND`] a second, so a guest that dirties its
/// disk and flushes again and again neither stalls the management network and console nor wears
/// the boot media faster than that; its flushes just take longer.
pub struct Writeback<B> {
    disks: Vec<BackedDisk<B>>,
    last_pass_ms: u64,
    /// The disk looked at first in the next call (round robin).
    next: usize,
    buf: Vec<u8>,
}

/// Chunks (4 KiB) written back by one call of [`Writeback::poll`], at most.
pub const POLL_CHUNKS: usize = 64;
/// Chunks one disk may have written back per second, at most (8 MiB/s).
pub const DISK_CHUNKS_PER_SECOND: usize = 2048;
/// How often changed chunks are written back without a guest flush.
pub const WRITEBACK_MS: u64 = 1000;
/// Chunks written back with one device write, at most.
const WRITEBACK_RUN: usize = 64;
/// What a device flush costs of the budgets, in chunks (so a guest that flushes without pause
/// makes the boot media flush at most 32 times a second, one flush per call at most).
pub const FLUSH_CHUNKS: usize = 64;
/// Tries at a disk image's lock before a restart (a vCPU holds it only briefly; one whose CPU
/// stopped holds it for good, and the restart must go on).
const FINAL_LOCK_TRIES: usize = 10_000_000;

/// The image's lock: one try, or (`all`: before a restart) up to [`FINAL_LOCK_TRIES`].
fn lock_image<B>(
    image: &SharedDisk<WritebackImage<B>>,
    all: bool,
) -> Option<spin::MutexGuard<'_, WritebackImage<B>>> {
    for _ in 0..if all { FINAL_LOCK_TRIES } else { 1 } {
        if let Some(g) = image.try_lock() {
            return Some(g);
        }
        core::hint::spin_loop();
    }
    None
}

/// Writes `data` at device byte `offset`, reading and merging the blocks it covers only in part.
fn write_bytes(dev: &mut dyn BlockDevice, offset: u64, data: &[u8]) -> Result<(), IoError> {
    let bs = u64::from(dev.block_size());
    let bad = || {
        IoError::Device(format!("write-back of {} bytes at byte {offset}: outside the device", data.len()))
    };
    let (Some(first), Some(skip)) = (offset.checked_div(bs), offset.checked_rem(bs)) else {
        return Err(IoError::Device(String::from("block size 0")));
    };
    let end = offset.checked_add(data.len() as u64).ok_or_else(bad)?;
    if skip == 0 && end.is_multiple_of(bs) {
        return dev.write_blocks(first, data);
    }
    let len = end
        .div_ceil(bs)
        .checked_sub(first)
        .and_then(|n| n.checked_mul(bs))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(bad)?;
    let mut tmp = alloc::vec![0u8; len];
    dev.read_blocks(first, &mut tmp)?;
    let skip = usize::try_from(skip).map_err(|_| bad())?;
    tmp.get_mut(skip..skip.saturating_add(data.len())).ok_or_else(bad)?.copy_from_slice(data);
    dev.write_blocks(first, &tmp)
}

/// How a step of a pass ended.
enum Step {
    /// The step's chunks are written; the pass goes on.
    More,
    /// Every chunk of the pass is written.
    Written,
    /// A write failed; the chunks from that one on were not written.
    Failed(IoError),
}

impl<B: AsRef<[u8]> + AsMut<[u8]> + Send> BackedDisk<B> {
    /// `image`, written back to the device bytes `extents` (its file); `label` names it in errors.
    pub fn new(label: String, image: SharedDisk<WritebackImage<B>>, extents: FileExtents) -> Self {
        BackedDisk { label, image, extents, pass: None, budget_second: 0, budget_used: 0 }
    }

    /// Writes up to `max` chunks of the pass under way (in runs of consecutive chunks, with as
    /// few device writes as the file's clusters allow); returns how many it wrote and how the
    /// step ended.
    fn step(&mut self, dev: &mut dyn BlockDevice, buf: &mut Vec<u8>, max: usize, all: bool) -> (usize, Step) {
        let Some((pass, at)) = &mut self.pass else { return (0, Step::Written) };
        let mut written = 0usize;
        while written < max {
            let Some(&first) = pass.chunks.get(*at) else { return (written, Step::Written) };
            // A run of consecutive chunks, at most WRITEBACK_RUN and what is left of `max`.
            let mut n = 1usize;
            let most = WRITEBACK_RUN.min(max.saturating_sub(written));
            while n < most && pass.chunks.get(at.saturating_add(n)) == Some(&first.saturating_add(n)) {
                n = n.saturating_add(1);
            }
            // The guest's vCPU holds the image only briefly; one that never lets go (its CPU
            // stopped) must not stop the management CPU: try again next time.
            let Some(mut img) = lock_image(&self.image, all) else { return (written, Step::More) };
            let range = img.copy_chunks(first, n, buf);
            drop(img);
            let mut from = 0usize;
            for e in self.extents.map(range.start as u64, range.end as u64) {
                let to = from.saturating_add(usize::try_from(e.len).unwrap_or(usize::MAX));
                let result = match buf.get(from..to) {
                    Some(bytes) => write_bytes(dev, e.offset, bytes),
                    None => Err(IoError::Device(String::from("the file's extents do not match the image"))),
                };
                if let Err(e) = result {
                    return (written, Step::Failed(e));
                }
                from = to;
            }
            *at = at.saturating_add(n);
            written = written.saturating_add(n);
        }
        (written, if *at >= pass.chunks.len() { Step::Written } else { Step::More })
    }
}

/// What a call of [`Writeback::poll`] did.
#[derive(Debug, Default)]
pub struct Polled {
    /// Passes are still under way (the next call carries them on).
    pub under_way: bool,
    /// A pass ended (done or failed): flushes that waited for it can complete.
    pub ended: bool,
    /// Why passes failed, for the log.
    pub errors: Vec<String>,
}

impl<B: AsRef<[u8]> + AsMut<[u8]> + Send> Writeback<B> {
    pub fn new(disks: Vec<BackedDisk<B>>) -> Self {
        Writeback { disks, last_pass_ms: 0, next: 0, buf: Vec::new() }
    }

    /// Starts a pass for every disk whose guest waits for a flush, or every [`WRITEBACK_MS`], and
    /// carries the passes under way on by a bounded step (`all`: every disk with anything dirty
    /// written back to the end in this call - passes under way finished, then new ones while
    /// chunks are dirty, three rounds at most as the guests still run -, whatever the time and the
    /// budgets: before the host restarts or powers off).
    pub fn poll(&mut self, dev: &mut dyn BlockDevice, now_ms: u64, all: bool) -> Polled {
        let periodic = all || now_ms.saturating_sub(self.last_pass_ms) >= WRITEBACK_MS;
        if periodic {
            self.last_pass_ms = now_ms;
        }
        let Writeback { disks, next, buf, .. } = self;
        let count = disks.len();
        let mut left = if all { usize::MAX } else { POLL_CHUNKS };
        let mut out = Polled::default();
        for k in 0..count.saturating_mul(if all { 3 } else { 1 }) {
            let Some(d) = next.wrapping_add(k).checked_rem(count).and_then(|i| disks.get_mut(i)) else {
                continue;
            };
            if d.pass.is_none() {
                let Some(mut img) = lock_image(&d.image, all) else { continue };
                if img.flush_wanted() || (periodic && img.dirty_chunks() > 0) {
                    d.pass = img.begin_pass().map(|p| (p, 0));
                }
            }
            if d.pass.is_none() {
                continue;
            }
            let second = now_ms.wrapping_div(1000);
            if d.budget_second != second {
                d.budget_second = second;
                d.budget_used = 0;
            }
            let allowance =
                if all { usize::MAX } else { DISK_CHUNKS_PER_SECOND.saturating_sub(d.budget_used) };
            let (written, step) = d.step(dev, buf, left.min(allowance), all);
            left = left.saturating_sub(written);
            d.budget_used = d.budget_used.saturating_add(written);
            let result = match step {
                Step::More => {
                    out.under_way = true;
                    continue;
                }
                // The device flush waits for room in the budgets (the next call, or second).
                Step::Written
                    if !all && (left < FLUSH_CHUNKS || allowance.saturating_sub(written) < FLUSH_CHUNKS) =>
                {
                    out.under_way = true;
                    continue;
                }
                Step::Written => {
                    left = left.saturating_sub(FLUSH_CHUNKS);
                    d.budget_used = d.budget_used.saturating_add(FLUSH_CHUNKS);
                    dev.flush()
                }
                Step::Failed(e) => Err(e),
            };
            let Some(mut img) = lock_image(&d.image, all) else {
                // Ended next time (written again, or retried after a failure).
                out.under_way = true;
                continue;
            };
            let Some((pass, at)) = d.pass.take() else { continue };
            let failed = match &result {
                Ok(()) => &[][..],
                // A failed device flush fails the whole pass; a failed write the chunks from it on.
                Err(_) if at >= pass.chunks.len() => pass.chunks.as_slice(),
                Err(_) => pass.chunks.get(at..).unwrap_or_default(),
            };
            if let Err(e) = &result {
                out.errors.push(format!("{}: writing back to the boot media failed: {e}", d.label));
            }
            img.end_pass(&pass, result.is_ok(), failed);
            out.ended = true;
        }
        *next = next.wrapping_add(1).checked_rem(count).unwrap_or(0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::CHUNK;
    use crate::virtio_blk::{DiskImage, FlushState};
    use alloc::sync::Arc;
    use alloc::vec;
    use ember_storage::block::MemDisk;
    use ember_storage::fatfile::Extent;
    use spin::Mutex;

    /// A device that counts the bytes written to it.
    struct Counting {
        disk: MemDisk,
        written: usize,
        fail: bool,
    }

    impl BlockDevice for Counting {
        fn block_size(&self) -> u32 {
            self.disk.block_size()
        }
        fn num_blocks(&self) -> u64 {
            self.disk.num_blocks()
        }
        fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
            self.disk.read_blocks(lba, buf)
        }
        fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
            if self.fail {
                return Err(IoError::Device(String::from("unplugged")));
            }
            self.written += buf.len();
            self.disk.write_blocks(lba, buf)
        }
        fn flush(&mut self) -> Result<(), IoError> {
            self.disk.flush()
        }
    }

    type Image = WritebackImage<Vec<u8>>;

    /// A 16 MiB disk image whose file is at device byte 1 MiB, in two extents.
    fn setup() -> (SharedDisk<Image>, Writeback<Vec<u8>>, Counting) {
        let size = 16 << 20;
        let image = Arc::new(Mutex::new(WritebackImage::new(vec![0u8; size], true)));
        let extents = FileExtents {
            size: size as u64,
            extents: vec![
                Extent { offset: 1 << 20, len: 8 << 20 },
                Extent { offset: 10 << 20, len: 8 << 20 },
            ],
        };
        let w = Writeback::new(vec![BackedDisk::new(String::from("disk"), image.clone(), extents)]);
        (image, w, Counting { disk: MemDisk::new(512, 20 << 11), written: 0, fail: false })
    }

    /// The guest writes the whole disk and flushes: each call writes a bounded step, the flush
    /// completes only when everything is on the device, and the device holds the bytes.
    #[test]
    fn a_big_flush_is_written_in_bounded_steps() {
        let (image, mut w, mut dev) = setup();
        let ticket = {
            let mut img = image.lock();
            let len = img.bytes().len();
            for (i, b) in img.bytes_mut(0..len).unwrap().iter_mut().enumerate() {
                *b = (i / CHUNK) as u8;
            }
            img.request_flush()
        };
        let mut calls = 0;
        let mut now = 5_000;
        loop {
            let before = dev.written;
            let r = w.poll(&mut dev, now, false);
            calls += 1;
            assert!(
                dev.written - before <= POLL_CHUNKS * CHUNK,
                "one call wrote {} bytes",
                dev.written - before
            );
            assert!(r.errors.is_empty());
            if !r.under_way {
                assert!(r.ended);
                break;
            }
            assert_eq!(image.lock().flush_state(ticket), FlushState::Pending);
            now += 10;
            assert!(calls < 100_000);
        }
        assert_eq!(image.lock().flush_state(ticket), FlushState::Done);
        assert!(calls >= (16 << 20) / CHUNK / POLL_CHUNKS);
        // 16 MiB at 8 MiB a second: the budget spread it over more than a second.
        assert!(now - 5_000 >= 1_000, "took {} ms", now - 5_000);
        let d = dev.disk.bytes();
        assert_eq!(d[(1 << 20) + 5 * CHUNK], 5);
        assert_eq!(d[(10 << 20) + 3 * CHUNK], ((8 << 20) / CHUNK + 3) as u8);
        assert_eq!(dev.written, 16 << 20);
    }

    /// One disk may write at most its budget per second, however often it is polled.
    #[test]
    fn the_per_disk_budget_holds() {
        let (image, mut w, mut dev) = setup();
        {
            let mut img = image.lock();
            let len = img.bytes().len();
            img.bytes_mut(0..len).unwrap().fill(1);
            img.request_flush();
        }
        for i in 0..10_000 {
            w.poll(&mut dev, 7_000 + i % 1000 / 10, false);
        }
        assert_eq!(dev.written, DISK_CHUNKS_PER_SECOND * CHUNK);
        w.poll(&mut dev, 8_000, false);
        assert_eq!(dev.written, (DISK_CHUNKS_PER_SECOND + POLL_CHUNKS) * CHUNK, "a new second");
        // Before a restart everything is written at once.
        let r = w.poll(&mut dev, 8_001, true);
        assert!(!r.under_way && r.ended);
        assert_eq!(image.lock().dirty_chunks(), 0);
    }

    /// An image whose lock is never let go (its vCPU's CPU stopped holding it) does not stop the
    /// caller: the disk is left alone until the lock is free.
    #[test]
    fn a_held_image_lock_is_waited_for_by_nobody() {
        let (image, mut w, mut dev) = setup();
        let ticket = {
            let mut img = image.lock();
            img.bytes_mut(0..CHUNK).unwrap().fill(3);
            img.request_flush()
        };
        let held = image.lock();
        for i in 0..3 {
            let r = w.poll(&mut dev, 9_000 + i, false);
            assert!(!r.ended && r.errors.is_empty());
        }
        assert_eq!(dev.written, 0);
        drop(held);
        while w.poll(&mut dev, 9_100, false).under_way {}
        assert_eq!(image.lock().flush_state(ticket), FlushState::Done);
    }

    /// A guest that flushes without pause (nothing dirty) makes the device flush at most
    /// DISK_CHUNKS_PER_SECOND / FLUSH_CHUNKS times a second.
    #[test]
    fn device_flushes_are_budgeted() {
        let (image, mut w, mut dev) = setup();
        for i in 0..10_000 {
            image.lock().request_flush();
            w.poll(&mut dev, 20_000 + i / 10, false);
        }
        assert_eq!(dev.disk.flushes, (DISK_CHUNKS_PER_SECOND / FLUSH_CHUNKS) as u64);
        // Before a restart: everything written, the guest's writes after the pass too.
        image.lock().bytes_mut(0..CHUNK).unwrap().fill(9);
        let r = w.poll(&mut dev, 20_999, true);
        assert!(!r.under_way && image.lock().dirty_chunks() == 0);
        assert_eq!(dev.disk.bytes()[1 << 20], 9);
    }

    /// A failed write fails the flush and leaves the unwritten chunks dirty.
    #[test]
    fn a_failed_write_fails_the_flush() {
        let (image, mut w, mut dev) = setup();
        let ticket = {
            let mut img = image.lock();
            img.bytes_mut(0..3 * CHUNK).unwrap().fill(7);
            img.request_flush()
        };
        dev.fail = true;
        let r = w.poll(&mut dev, 1_000, false);
        assert!(r.ended && !r.under_way);
        assert_eq!(r.errors, ["disk: writing back to the boot media failed: device error: unplugged"]);
        assert_eq!(image.lock().flush_state(ticket), FlushState::Failed);
        assert_eq!(image.lock().dirty_chunks(), 3);
        dev.fail = false;
        let t2 = image.lock().request_flush();
        while w.poll(&mut dev, 1_001, false).under_way {}
        assert_eq!(image.lock().flush_state(t2), FlushState::Done);
        assert_eq!(dev.disk.bytes()[(1 << 20) + 2 * CHUNK], 7);
    }
}
