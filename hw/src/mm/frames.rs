//! The physical frame allocator: free ranges from the memory map, handed out a page at a time (or in
//! contiguous runs), with freed frames kept on a free list.
//!
//! Invariant: a frame is owned by at most one holder; ranges never overlap and never include the first
//! MiB (left to real-mode start-up code and legacy firmware structures).

use super::{Region, RegionKind, PAGE_SIZE};
use alloc::vec::Vec;

/// Lowest address handed out.
pub const LOW_LIMIT: u64 = 0x10_0000;

/// Allocates 4 KiB physical frames.
#[derive(Debug, Default)]
pub struct FrameAllocator {
    /// Free ranges `[start, end)`, page aligned, sorted, disjoint.
    ranges: Vec<(u64, u64)>,
    /// Single frames given back.
    freed: Vec<u64>,
}

impl FrameAllocator {
    /// Builds the allocator from the free ranges of a memory map.
    pub fn from_map(map: &[Region]) -> Self {
        let mut ranges: Vec<(u64, u64)> = map
            .iter()
            .filter(|r| r.kind == RegionKind::Free)
            .filter_map(|r| {
                let start = r.start.max(LOW_LIMIT).next_multiple_of(PAGE_SIZE);
                let end = r.end() & !(PAGE_SIZE - 1);
                (start < end).then_some((start, end))
            })
            .collect();
        ranges.sort_unstable();
        // Merge adjacent or overlapping ranges (firmware maps list neighbours separately).
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        FrameAllocator { ranges: merged, freed: Vec::new() }
    }

    /// Bytes still free.
    pub fn free_bytes(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum::<u64>() + self.freed.len() as u64 * PAGE_SIZE
    }

    /// One frame anywhere.
    pub fn alloc(&mut self) -> Option<u64> {
        self.alloc_below(u64::MAX)
    }

    /// One frame whose end is at or below `limit`.
    pub fn alloc_below(&mut self, limit: u64) -> Option<u64> {
        if let Some(i) = self.freed.iter().position(|f| f + PAGE_SIZE <= limit) {
            return Some(self.freed.swap_remove(i));
        }
        self.alloc_contiguous(1, PAGE_SIZE, limit)
    }

    /// `pages` contiguous frames, aligned to `align` (a power of two multiple of the page size), ending at
    /// or below `limit`.
    pub fn alloc_contiguous(&mut self, pages: u64, align: u64, limit: u64) -> Option<u64> {
        if pages == 0 || !align.is_power_of_two() || align < PAGE_SIZE {
            return None;
        }
        let len = pages.checked_mul(PAGE_SIZE)?;
        for i in 0..self.ranges.len() {
            let (s, e) = self.ranges[i];
            let start = s.checked_next_multiple_of(align)?;
            let end = start.checked_add(len)?;
            if end > e || end > limit {
                continue;
            }
            // Split the range around [start, end).
            let mut pieces = Vec::with_capacity(2);
            if s < start {
                pieces.push((s, start));
            }
            if end < e {
                pieces.push((end, e));
            }
            self.ranges.splice(i..=i, pieces);
            return Some(start);
        }
        None
    }

    /// Gives back `pages` contiguous frames from `start` (a run [`Self::alloc_contiguous`] handed
    /// out), merged with free neighbours so the run can be handed out whole again.
    pub fn free_contiguous(&mut self, start: u64, pages: u64) {
        let Some(end) = pages.checked_mul(PAGE_SIZE).and_then(|l| start.checked_add(l)) else { return };
        debug_assert!(start.is_multiple_of(PAGE_SIZE) && pages > 0);
        let at = self.ranges.partition_point(|r| r.0 < start);
        debug_assert!(at == 0 || self.ranges[at - 1].1 <= start, "freeing a free range");
        self.ranges.insert(at, (start, end));
        if at + 1 < self.ranges.len() && self.ranges[at + 1].0 == end {
            self.ranges[at].1 = self.ranges[at + 1].1;
            self.ranges.remove(at + 1);
        }
        if at > 0 && self.ranges[at - 1].1 == start {
            self.ranges[at - 1].1 = self.ranges[at].1;
            self.ranges.remove(at);
        }
    }

    /// Gives a single frame back.
    pub fn free(&mut self, frame: u64) {
        debug_assert_eq!(frame % PAGE_SIZE, 0);
        self.freed.push(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Vec<Region> {
        alloc::vec![
            Region { start: 0, pages: 0x9f, kind: RegionKind::Free },
            Region { start: 0x10_0000, pages: 0x100, kind: RegionKind::Free },
            Region { start: 0x20_0000, pages: 0x100, kind: RegionKind::Free },
            Region { start: 0x30_0000, pages: 0x10, kind: RegionKind::Loader },
            Region { start: 0x1_0000_0000, pages: 0x200, kind: RegionKind::Free },
        ]
    }

    #[test]
    fn skips_low_memory_and_merges() {
        let f = FrameAllocator::from_map(&map());
        assert_eq!(f.ranges, alloc::vec![(0x10_0000, 0x30_0000), (0x1_0000_0000, 0x1_0020_0000)]);
        assert_eq!(f.free_bytes(), 0x200 * 4096 + 0x200 * 4096);
    }

    #[test]
    fn allocations_are_disjoint_and_bounded() {
        let mut f = FrameAllocator::from_map(&map());
        let total = f.free_bytes() / PAGE_SIZE;
        let mut got = alloc::collections::BTreeSet::new();
        while let Some(p) = f.alloc() {
            assert!(p >= LOW_LIMIT && p % PAGE_SIZE == 0);
            assert!(got.insert(p), "frame {p:#x} handed out twice");
        }
        assert_eq!(got.len() as u64, total);
        f.free(0x10_0000);
        assert_eq!(f.alloc(), Some(0x10_0000));
        assert_eq!(f.alloc(), None);
    }

    #[test]
    fn below_and_aligned() {
        let mut f = FrameAllocator::from_map(&map());
        let p = f.alloc_contiguous(16, 0x10_0000, u64::MAX).unwrap();
        assert_eq!(p % 0x10_0000, 0);
        assert_eq!(f.alloc_contiguous(0x1000, PAGE_SIZE, u64::MAX), None, "too large");
        // Fill everything below 4 GiB, then a below-4G request fails while high memory remains.
        while f.alloc_below(0x1_0000_0000).is_some() {}
        assert_eq!(f.alloc_below(0x1_0000_0000), None);
        assert!(f.alloc().unwrap() >= 0x1_0000_0000);
        assert_eq!(f.alloc_contiguous(1, 3, u64::MAX), None, "bad alignment");
    }

    #[test]
    fn a_freed_run_is_merged_and_handed_out_whole_again() {
        let mut f = FrameAllocator::from_map(&map());
        let before = f.ranges.clone();
        let a = f.alloc_contiguous(0x80, 0x10_0000, u64::MAX).unwrap();
        let b = f.alloc_contiguous(0x80, PAGE_SIZE, u64::MAX).unwrap();
        f.free_contiguous(a, 0x80);
        f.free_contiguous(b, 0x80);
        assert_eq!(f.ranges, before, "merged back into the original ranges");
        assert_eq!(f.alloc_contiguous(0x200, PAGE_SIZE, u64::MAX), Some(0x10_0000));
    }
}
