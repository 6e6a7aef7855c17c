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
        debug_assert!(a + len <= start + flen);
        self.insert(a, len).then_some(a)
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

    /// Mark `[start, start + len)`, which must lie in one free range, live
    /// (a copy of another allocator's decision: a mirror's state). False,
    /// and nothing changed, if it does not.
    pub fn insert(&mut self, start: usize, len: usize) -> bool {
        let Some((&fs, &fl)) = self.free.range(..=start).next_back() else { return false };
        if len == 0 || start + len > fs + fl {
            return false;
        }
        self.free.remove(&fs);
        if start > fs {
            self.free.insert(fs, start - fs);
        }
        if start + len < fs + fl {
            self.free.insert(start + len, fs + fl - start - len);
        }
        self.live.insert(start, len);
        true
    }

    /// The live allocations, as (start, len), ascending.
    pub fn live(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.live.iter().map(|(&s, &l)| (s, l))
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
    /// Up to `want` frames in one run, as (start, len): from the first free
    /// run that holds all of them, else from the first free run (so that
    /// what is migrated together lands in consecutive frames when it can).
    pub fn alloc_run(&mut self, want: u32) -> Option<(u32, u32)> {
        let (&s, &l) = self.free.iter().find(|(_, &l)| l >= want).or_else(|| self.free.iter().next())?;
        let n = l.min(want);
        self.free.remove(&s);
        if n < l {
            self.free.insert(s + n, l - n);
        }
        self.free_count -= n;
        Some((s, n))
    }
    /// Exactly `n` consecutive frames that do not cross a multiple of
    /// `segment` (frames per pool segment), from the smallest free run that
    /// has them; the first frame.
    pub fn alloc_contiguous(&mut self, n: u32, segment: u32) -> Option<u32> {
        let fits = |s: u32, l: u32| {
            let mut x = s;
            if x / segment != (x + n - 1) / segment {
                x = (x / segment + 1) * segment;
            }
            (x + n <= s + l).then_some(x)
        };
        if n == 0 || n > segment {
            return None;
        }
        let (s, l, x) =
            self.free.iter().filter_map(|(&s, &l)| fits(s, l).map(|x| (s, l, x))).min_by_key(|&(_, l, _)| l)?;
        self.free.remove(&s);
        if x > s {
            self.free.insert(s, x - s);
        }
        if x + n < s + l {
            self.free.insert(x + n, s + l - x - n);
        }
        self.free_count -= n;
        Some(x)
    }

    /// Take the free frame `frame` back (false if it is not free).
    pub fn take(&mut self, frame: u32) -> bool {
        let Some((&s, &l)) = self.free.range(..=frame).next_back() else { return false };
        if frame >= s + l {
            return false;
        }
        self.free.remove(&s);
        if frame > s {
            self.free.insert(s, frame - s);
        }
        if frame + 1 < s + l {
            self.free.insert(frame + 1, s + l - frame - 1);
        }
        self.free_count -= 1;
        true
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

    /// A mirror's copy (`insert`) of another allocator's decisions, over a
    /// pseudo-random mix of allocations and frees: the same live ranges
    /// and free space; an overlapping insert is refused and changes nothing.
    #[test]
    fn insert_copies_another_allocators_decisions() {
        let (mut home, mut copy) = (RangeAllocator::new(1 << 22), RangeAllocator::new(1 << 22));
        let mut live: Vec<usize> = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) && !live.is_empty() {
                let s = live.swap_remove((x >> 8) as usize % live.len());
                assert_eq!(home.free(s), copy.free(s));
            } else if let Some(s) = home.alloc(4096 * (1 + (x >> 20) as usize % 16), 4096) {
                live.push(s);
            }
            for &s in &live {
                if copy.containing(s).is_none() {
                    let len = home.containing(s).expect("live").1;
                    assert!(copy.insert(s, len), "insert {s}");
                }
            }
            assert_eq!(home.live, copy.live);
            assert_eq!(home.free, copy.free);
        }
        if let Some(&s) = live.first() {
            let before = (copy.free.clone(), copy.live.clone());
            assert!(!copy.insert(s, 4096), "an insert over a live range");
            assert_eq!((copy.free.clone(), copy.live.clone()), before);
        }
    }

    #[test]
    fn contiguous_runs_stay_in_one_segment() {
        let mut f = FrameAllocator::new(32);
        // Free runs [0, 3) and [6, 32): segments of 8 frames.
        assert_eq!(f.alloc_run(6), Some((0, 6)));
        for i in 0..3 {
            f.free(i);
        }
        assert_eq!(f.alloc_contiguous(3, 8), Some(0), "smallest run that fits");
        assert_eq!(f.alloc_contiguous(4, 8), Some(8), "[6, 10) would cross frame 8");
        assert_eq!(f.alloc_contiguous(9, 8), None, "larger than a segment");
        assert_eq!(f.free_count(), 32 - 6 - 4);
        assert_eq!(f.alloc_contiguous(2, 8), Some(6));
        assert_eq!(f.alloc_run(4), Some((12, 4)), "a run that holds all of them");
    }

    #[test]
    fn take_a_free_frame() {
        let mut f = FrameAllocator::new(8);
        assert!(f.take(3));
        assert!(!f.take(3), "taken already");
        assert!(f.take(0) && f.take(7));
        assert_eq!(f.free_count(), 5);
        assert_eq!(f.alloc_contiguous(4, 8), None, "no run of 4 left");
        f.free(3);
        assert_eq!(f.alloc_contiguous(4, 8), Some(1), "[1, 5) once 3 is back");
        assert!(!f.take(9), "out of range");
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

/// Per arena page: the pool frame of a page the device holds, or
/// [`FrameMap::HOST`]. Stored as frame + 1 so that an arena's worth of
/// "on the host" is all zero bits: the OS commits the map's memory only
/// where pages were ever resident, not for the whole reservation.
#[derive(Debug)]
pub(crate) struct FrameMap(Vec<u32>);

impl FrameMap {
    /// The page has no device frame.
    pub const HOST: u32 = u32::MAX;

    /// `pages` pages, all on the host.
    pub fn new(pages: usize) -> Self {
        Self(vec![0; pages])
    }
    /// Page `p`'s frame, or [`Self::HOST`].
    #[inline]
    pub fn get(&self, p: usize) -> u32 {
        self.0[p].wrapping_sub(1)
    }
    /// Set page `p`'s frame ([`Self::HOST`]: none); returns the old one.
    #[inline]
    pub fn replace(&mut self, p: usize, frame: u32) -> u32 {
        std::mem::replace(&mut self.0[p], frame.wrapping_add(1)).wrapping_sub(1)
    }
}

#[cfg(test)]
mod frame_map_tests {
    use super::FrameMap;

    #[test]
    fn host_is_zero_bits_and_frames_round_trip() {
        let mut m = FrameMap::new(4);
        assert!(m.0.iter().all(|&w| w == 0));
        assert_eq!(m.get(3), FrameMap::HOST);
        assert_eq!(m.replace(3, 0), FrameMap::HOST);
        assert_eq!(m.replace(3, FrameMap::HOST - 1), 0);
        assert_eq!(m.get(3), FrameMap::HOST - 1);
        assert_eq!(m.replace(3, FrameMap::HOST), FrameMap::HOST - 1);
        assert!(m.0.iter().all(|&w| w == 0));
    }
}
