//! Page ranges and chunk orders: the units every protocol call works in.

use crate::pte::PageIndex;

/// A half-open range of arena pages, `start..end`.
///
/// Invariant: `start <= end` (checked in [`PageRange::new`]); an empty range
/// is allowed and every operation on it is a no-op.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default)]
pub struct PageRange {
    start: u32,
    end: u32,
}

impl PageRange {
    /// `start..end`, or `None` when `start > end`.
    pub fn new(start: PageIndex, end: PageIndex) -> Option<Self> {
        (start.0 <= end.0).then_some(Self { start: start.0, end: end.0 })
    }

    /// `start..start + len`, or `None` on overflow.
    pub fn with_len(start: PageIndex, len: u32) -> Option<Self> {
        start.0.checked_add(len).map(|end| Self { start: start.0, end })
    }

    /// From a raw `Range<u32>`, or `None` when `start > end`.
    pub fn from_range(r: core::ops::Range<u32>) -> Option<Self> {
        Self::new(PageIndex(r.start), PageIndex(r.end))
    }

    /// First page.
    pub fn start(self) -> PageIndex {
        PageIndex(self.start)
    }
    /// One past the last page.
    pub fn end(self) -> PageIndex {
        PageIndex(self.end)
    }
    /// Number of pages.
    pub fn len(self) -> u32 {
        self.end - self.start
    }
    /// True when the range holds no page.
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
    /// As a `Range<u32>` of page numbers.
    pub fn as_range(self) -> core::ops::Range<u32> {
        self.start..self.end
    }
    /// Does the range hold `page`?
    pub fn contains(self, page: PageIndex) -> bool {
        self.start <= page.0 && page.0 < self.end
    }
    /// Does `other` lie wholly inside this range?
    pub fn covers(self, other: PageRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }
    /// Do the two ranges share at least one page?
    pub fn overlaps(self, other: PageRange) -> bool {
        self.start < other.end && other.start < self.end
    }
    /// The pages both ranges hold, if any.
    pub fn intersect(self, other: PageRange) -> Option<PageRange> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start < end).then_some(PageRange { start, end })
    }
    /// The pages, in order.
    pub fn iter(self) -> impl Iterator<Item = PageIndex> {
        self.as_range().map(PageIndex)
    }
}

impl core::fmt::Debug for PageRange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "pages {}..{}", self.start, self.end)
    }
}

/// Size of a large entry: an aligned power-of-two run of pages handled as one
/// unit (the seed's PMD path), in the three sizes drm_gpusvm and UVM use.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum ChunkOrder {
    /// A single 4 KiB page.
    #[default]
    Page = 0,
    /// 16 pages, 64 KiB.
    Chunk64K = 4,
    /// 512 pages, 2 MiB (a PMD on x86-64).
    Chunk2M = 9,
}

impl ChunkOrder {
    /// Every order, largest first (the order in which faults try them).
    pub const LARGEST_FIRST: [ChunkOrder; 3] = [ChunkOrder::Chunk2M, ChunkOrder::Chunk64K, ChunkOrder::Page];

    /// `log2` of the number of pages.
    pub fn log2(self) -> u32 {
        self as u32
    }
    /// Number of pages.
    pub fn pages(self) -> u32 {
        1 << self.log2()
    }
    /// Bytes covered.
    pub fn bytes(self) -> u64 {
        u64::from(self.pages()) << crate::pte::PAGE_SHIFT
    }
    /// The aligned chunk of this order that holds `page`.
    pub fn chunk_of(self, page: PageIndex) -> PageRange {
        let start = page.0 & !(self.pages() - 1);
        PageRange { start, end: start.saturating_add(self.pages()) }
    }
    /// From `log2`, for the three supported sizes.
    pub fn from_log2(log2: u32) -> Option<Self> {
        match log2 {
            0 => Some(Self::Page),
            4 => Some(Self::Chunk64K),
            9 => Some(Self::Chunk2M),
            _ => None,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn range_math() {
        let a = PageRange::from_range(4..10).expect("ordered");
        let b = PageRange::from_range(8..20).expect("ordered");
        assert!(a.overlaps(b) && b.overlaps(a));
        assert_eq!(a.intersect(b), PageRange::from_range(8..10));
        assert!(!a.overlaps(PageRange::from_range(10..12).expect("ordered")));
        assert!(PageRange::new(PageIndex(5), PageIndex(4)).is_none());
        assert_eq!(ChunkOrder::Chunk2M.chunk_of(PageIndex(1000)).as_range(), 512..1024);
        assert_eq!(ChunkOrder::Chunk64K.bytes(), 65536);
    }
}
