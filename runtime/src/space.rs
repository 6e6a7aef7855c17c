//! Pure bookkeeping: the arena's virtual-range allocator and the device
//! pool's frame allocator. No I/O, unit-tested on their own.

use std::collections::BTreeMap;

/// First-fit allocator of page-aligned ranges (offsets from the arena base).
/// Free ranges are kept coalesced.
#[derive(Debug)]
pub(crate) struct RangeAllocator {
    /// start → length of each free range.
    free: BTreeMap<usize, usize>,
    /// start → length of each live allocation.
    live: BTreeMap<usize, usize>,
}

impl RangeAllocator {
    pub fn new(len: usize) -> Self {
        Self { free: BTreeMap::from([(0, len)]), live: BTreeMap::new() }
    }

    /// Allocate `len` bytes aligned to `align` (powers of two).
    pub fn alloc(&mut self, len: usize, align: usize) -> Option<usize> {
        let (&start, &flen) = self.free.iter().find(|(&s, &l)| {
            let a = s.next_multiple_of(align);
            a + len <= s + l
        })?;
        let a = start.next_multiple_of(align);
        self.free.remove(&start);
        if a > start {
            self.free.insert(start, a - start);
        }
        if a + len < start + flen {
            self.free.insert(a + len, start + flen - a - len);
        }
        self.live.insert(a, len);
        Some(a)
    }

    /// Free the allocation starting exactly at `start`; returns its length.
    pub fn free(&mut self, start: usize) -> Option<usize> {
        let len = self.live.remove(&start)?;
        let mut s = start;
        let mut l = len;
        if let Some((&ps, &pl)) = self.free.range(..start).next_back() {
            if ps + pl == start {
                self.free.remove(&ps);
                s = ps;
                l += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            l += nl;
        }
        self.free.insert(s, l);
        Some(len)
    }

    /// The live allocation containing `offset`, as (start, len).
    pub fn containing(&self, offset: usize) -> Option<(usize, usize)> {
        let (&s, &l) = self.live.range(..=offset).next_back()?;
        (offset < s + l).then_some((s, l))
    }

    pub fn largest_free(&self) -> usize {
        self.free.values().copied().max().unwrap_or(0)
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }
}

/// Allocator of device pool frames, handing out runs so that consecutive
/// pages land in consecutive frames (one copy per run).
#[derive(Debug)]
pub(crate) struct FrameAllocator {
    free: BTreeMap<u32, u32>,
    free_count: u32,
    total: u32,
}

impl FrameAllocator {
    pub fn new(total: u32) -> Self {
        Self { free: BTreeMap::from([(0, total)]), free_count: total, total }
    }
    pub fn free_count(&self) -> u32 {
        self.free_count
    }
    pub fn total(&self) -> u32 {
        self.total
    }
    /// Up to `want` frames in one run (the first free run), as (start, len).
    pub fn alloc_run(&mut self, want: u32) -> Option<(u32, u32)> {
        let (&s, &l) = self.free.iter().next()?;
        let n = l.min(want);
        self.free.remove(&s);
        if n < l {
            self.free.insert(s + n, l - n);
        }
        self.free_count -= n;
        Some((s, n))
    }
    /// Return one frame.
    pub fn free(&mut self, frame: u32) {
        let mut s = frame;
        let mut l = 1;
        if let Some((&ps, &pl)) = self.free.range(..frame).next_back() {
            debug_assert!(ps + pl <= frame, "double free of frame {frame}");
            if ps + pl == frame {
                self.free.remove(&ps);
                s = ps;
                l += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(frame + 1)) {
            self.free.remove(&(frame + 1));
            l += nl;
        }
        self.free.insert(s, l);
        self.free_count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_coalesce_and_find() {
        let mut a = RangeAllocator::new(1 << 20);
        let x = a.alloc(8192, 4096).expect("x");
        let y = a.alloc(4096, 4096).expect("y");
        let z = a.alloc(65536, 65536).expect("z");
        assert_eq!((x, y), (0, 8192));
        assert_eq!(z % 65536, 0);
        assert_eq!(a.containing(x + 5000), Some((x, 8192)));
        assert_eq!(a.containing(y + 4096), None);
        assert_eq!(a.free(y + 1), None, "interior pointer");
        assert_eq!(a.free(y), Some(4096));
        assert_eq!(a.free(y), None, "double free");
        a.free(x);
        a.free(z);
        assert_eq!(a.largest_free(), 1 << 20);
        assert!(a.alloc(2 << 20, 4096).is_none());
    }

    #[test]
    fn frames_runs() {
        let mut f = FrameAllocator::new(10);
        assert_eq!(f.alloc_run(4), Some((0, 4)));
        assert_eq!(f.alloc_run(100), Some((4, 6)));
        assert_eq!(f.alloc_run(1), None);
        for i in [1, 2, 0, 3] {
            f.free(i);
        }
        assert_eq!(f.free_count(), 4);
        assert_eq!(f.alloc_run(10), Some((0, 4)));
    }
}
