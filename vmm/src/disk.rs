//! A VM's virtual disk as a write-back cache of its image file on the boot media.
//!
//! The whole image is in host memory (the UEFI phase read it); guest writes land there and mark
//! their 4 KiB chunks dirty. The management CPU writes dirty chunks back to the file's place on
//! the media ([`WritebackImage::begin_pass`], [`WritebackImage::copy_chunks`],
//! [`WritebackImage::end_pass`]) periodically and whenever the guest flushes; a guest's flush
//! completes once a pass that started after it has written everything and flushed the device
//! (virtio-blk's volatile write cache semantics: what was written before a completed flush is
//! on the media; a power cut may lose writes after it). A failed pass fails the flushes it was
//! for, and its chunks stay dirty for the next pass.

use super::virtio_blk::{DiskImage, FlushState};
use alloc::vec;
use alloc::vec::Vec;

/// Bytes per dirty-tracking chunk.
pub const CHUNK: usize = 4096;

/// A pass of the write-back: the chunks dirty when it began and the flush ticket it satisfies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Dirty chunk indexes, ascending.
    pub chunks: Vec<usize>,
    pub ticket: u64,
}

/// An image in memory, written back to the boot media (or only in memory, when `persistent` is
/// false: then flushes complete at once).
pub struct WritebackImage<B> {
    bytes: B,
    persistent: bool,
    dirty: Vec<u64>,
    dirty_chunks: usize,
    /// The last flush ticket handed out, and the highest one done or failed.
    requested: u64,
    done: u64,
    failed: u64,
}

impl<B: AsRef<[u8]> + AsMut<[u8]> + Send> WritebackImage<B> {
    pub fn new(bytes: B, persistent: bool) -> Self {
        let chunks = bytes.as_ref().len().div_ceil(CHUNK);
        WritebackImage {
            bytes,
            persistent,
            dirty: vec![0; chunks.div_ceil(64)],
            dirty_chunks: 0,
            requested: 0,
            done: 0,
            failed: 0,
        }
    }

    /// Whether writes reach the boot media.
    pub fn persistent(&self) -> bool {
        self.persistent
    }

    /// Chunks written since they were last copied for a pass.
    pub fn dirty_chunks(&self) -> usize {
        self.dirty_chunks
    }

    /// Whether a flush waits for a pass.
    pub fn flush_wanted(&self) -> bool {
        self.requested > self.done.max(self.failed)
    }

    /// Starts a pass: `None` when there is nothing to write and no flush waits.
    pub fn begin_pass(&mut self) -> Option<Pass> {
        if !self.persistent || (self.dirty_chunks == 0 && !self.flush_wanted()) {
            return None;
        }
        let mut chunks = Vec::with_capacity(self.dirty_chunks);
        for (w, bits) in self.dirty.iter().enumerate() {
            let mut b = *bits;
            while b != 0 {
                chunks.push(w.saturating_mul(64).saturating_add(b.trailing_zeros() as usize));
                b &= b.wrapping_sub(1);
            }
        }
        Some(Pass { chunks, ticket: self.requested })
    }

    /// Copies chunks `first..first + count` into `out` (resized) and marks them clean; returns
    /// the image's byte range they cover.
    pub fn copy_chunks(&mut self, first: usize, count: usize, out: &mut Vec<u8>) -> core::ops::Range<usize> {
        let len = self.bytes.as_ref().len();
        let end = first.saturating_add(count);
        let range = first.saturating_mul(CHUNK).min(len)..end.saturating_mul(CHUNK).min(len);
        out.clear();
        out.extend_from_slice(self.bytes.as_ref().get(range.clone()).unwrap_or_default());
        for c in first..end {
            self.set_dirty(c, false);
        }
        range
    }

    /// A pass ended: `ok` (every chunk written and the device flushed) completes the flushes up to
    /// its ticket; otherwise they fail and the chunks of `failed` are dirty again.
    pub fn end_pass(&mut self, pass: &Pass, ok: bool, failed: &[usize]) {
        if ok {
            self.done = self.done.max(pass.ticket);
        } else {
            self.failed = self.failed.max(pass.ticket);
            for &c in failed {
                self.set_dirty(c, true);
            }
        }
    }

    fn set_dirty(&mut self, chunk: usize, on: bool) {
        let (w, bit) = (chunk / 64, 1u64 << (chunk % 64));
        let Some(word) = self.dirty.get_mut(w) else { return };
        let was = *word & bit != 0;
        if on && !was {
            *word |= bit;
            self.dirty_chunks = self.dirty_chunks.saturating_add(1);
        } else if !on && was {
            *word &= !bit;
            self.dirty_chunks = self.dirty_chunks.saturating_sub(1);
        }
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]> + Send> DiskImage for WritebackImage<B> {
    fn bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    fn bytes_mut(&mut self, range: core::ops::Range<usize>) -> Option<&mut [u8]> {
        if range.end > self.bytes.as_ref().len() {
            return None;
        }
        if self.persistent && !range.is_empty() {
            for c in range.start / CHUNK..range.end.div_ceil(CHUNK) {
                self.set_dirty(c, true);
            }
        }
        self.bytes.as_mut().get_mut(range)
    }

    fn request_flush(&mut self) -> u64 {
        if !self.persistent {
            return 0;
        }
        self.requested = self.requested.saturating_add(1);
        self.requested
    }

    fn flush_state(&self, ticket: u64) -> FlushState {
        if ticket <= self.done {
            FlushState::Done
        } else if ticket <= self.failed {
            FlushState::Failed
        } else {
            FlushState::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_tracked_by_chunk_and_flushes_wait_for_a_later_pass() {
        let mut img = WritebackImage::new(vec![0u8; 10 * CHUNK + 100], true);
        assert_eq!(img.begin_pass(), None, "nothing to do");
        img.bytes_mut(CHUNK - 1..CHUNK + 1).unwrap().fill(1); // chunks 0 and 1
        img.bytes_mut(10 * CHUNK..10 * CHUNK + 100).unwrap().fill(2); // the short last chunk
        assert!(img.bytes_mut(10 * CHUNK..20 * CHUNK).is_none(), "past the end");
        assert_eq!(img.dirty_chunks(), 3);
        let t1 = img.request_flush();
        assert_eq!(img.flush_state(t1), FlushState::Pending);
        let pass = img.begin_pass().unwrap();
        assert_eq!((pass.chunks.as_slice(), pass.ticket), (&[0, 1, 10][..], t1));
        // A flush asked for during the pass is not satisfied by it.
        let t2 = img.request_flush();
        let mut buf = Vec::new();
        assert_eq!(img.copy_chunks(0, 2, &mut buf), 0..2 * CHUNK);
        assert_eq!((buf[CHUNK - 1], buf[CHUNK], buf.len()), (1, 1, 2 * CHUNK));
        assert_eq!(img.copy_chunks(10, 1, &mut buf), 10 * CHUNK..10 * CHUNK + 100);
        assert_eq!(img.dirty_chunks(), 0);
        img.end_pass(&pass, true, &[]);
        assert_eq!((img.flush_state(t1), img.flush_state(t2)), (FlushState::Done, FlushState::Pending));
        assert!(img.flush_wanted());
        let pass = img.begin_pass().unwrap();
        assert!(pass.chunks.is_empty());
        img.end_pass(&pass, true, &[]);
        assert_eq!(img.flush_state(t2), FlushState::Done);
        assert_eq!(img.begin_pass(), None);
    }

    #[test]
    fn a_failed_pass_fails_its_flushes_and_keeps_the_chunks_dirty() {
        let mut img = WritebackImage::new(vec![0u8; 4 * CHUNK], true);
        img.bytes_mut(0..10).unwrap().fill(7);
        let t = img.request_flush();
        let pass = img.begin_pass().unwrap();
        let mut buf = Vec::new();
        img.copy_chunks(0, 1, &mut buf);
        img.end_pass(&pass, false, &[0]);
        assert_eq!(img.flush_state(t), FlushState::Failed);
        assert_eq!(img.dirty_chunks(), 1, "written again next time");
        // The next flush can still succeed.
        let t2 = img.request_flush();
        let pass = img.begin_pass().unwrap();
        img.copy_chunks(0, 1, &mut buf);
        img.end_pass(&pass, true, &[]);
        assert_eq!(img.flush_state(t2), FlushState::Done);
    }

    #[test]
    fn an_image_only_in_memory_flushes_at_once() {
        let mut img = WritebackImage::new(vec![0u8; CHUNK], false);
        img.bytes_mut(0..CHUNK).unwrap().fill(1);
        assert_eq!(img.dirty_chunks(), 0);
        let t = img.request_flush();
        assert_eq!(img.flush_state(t), FlushState::Done);
        assert_eq!(img.begin_pass(), None);
    }
}
