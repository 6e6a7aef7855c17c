//! The device page table as the host keeps it: one [`Pte`] per arena page,
//! in two levels, with a dirty bit per leaf so that only changed leaves are
//! uploaded before a launch.
//!
//! ```text
//!  directory (level 1)          leaves (level 0), LEAF_PTES entries = 4 KiB each
//! +------------------+          +------------------------------------------+
//! | leaf 0: live 3   |  ----->  | pte 0 .. pte 1023                        |  dirty
//! | leaf 1: live 0   |  ----->  | (never written: never committed by OS)   |
//! | leaf 2: live 512 |  ----->  | pte 2048 .. pte 3071                     |  dirty
//! +------------------+          +------------------------------------------+
//!                                 laid end to end = the flat GPU array<u32>
//! ```
//!
//! The GPU sees the table as one flat `array<u32>` (index = page index), so a
//! shader pays a single load per translation. The leaves are the unit of
//! change tracking and upload. They are slots of one zero-initialised
//! allocation: `Pte::EMPTY` is all zero bits, and a leaf is exactly one 4 KiB
//! host page, so the allocator's zeroed memory leaves every untouched leaf
//! uncommitted (lazily allocated by the OS on first write) while keeping the
//! flat view free. The directory counts the live (non-empty) entries of each
//! leaf so that zapping skips leaves that map nothing.

use crate::pte::{PageIndex, Pte};
use crate::range::PageRange;
use crate::snapshot::Encoding;

/// Entries per leaf (one leaf = 4 KiB of PTEs = 4 MiB of arena).
pub const LEAF_PTES: usize = 1024;
const _: () = assert!(LEAF_PTES.is_power_of_two());

/// Directory entry of one leaf.
#[derive(Copy, Clone, Debug, Default)]
struct Leaf {
    /// Entries of the leaf that are not `Pte::EMPTY`.
    live: u32,
}

/// Host copy of the device page table, with per-leaf dirty tracking.
#[derive(Clone, Debug)]
pub struct PageTable {
    /// Level 1.
    dir: Vec<Leaf>,
    /// Level 0: the leaves, end to end.
    entries: Vec<Pte>,
    /// One bit per leaf.
    dirty: Vec<u64>,
    dirty_count: usize,
}

/// One batch of consecutive dirty leaves to upload.
#[derive(Debug, PartialEq, Eq)]
pub struct UploadBatch<'a> {
    /// Byte offset into the device copy of the table.
    pub byte_offset: u64,
    /// The entries to write there.
    pub entries: &'a [Pte],
}

impl PageTable {
    /// A table for `pages` pages, all [`Pte::EMPTY`], all leaves dirty (the
    /// device copy starts undefined).
    pub fn new(pages: u32) -> Self {
        let pages = pages as usize;
        let leaves = pages.div_ceil(LEAF_PTES);
        let mut t = Self {
            dir: vec![Leaf::default(); leaves],
            // Zeroed allocation: untouched leaves stay uncommitted.
            entries: bytemuck::zeroed_vec(pages),
            dirty: vec![0; leaves.div_ceil(64)],
            dirty_count: 0,
        };
        for leaf in 0..leaves {
            t.mark_dirty(leaf);
        }
        t
    }

    /// Number of pages covered.
    #[allow(clippy::cast_possible_truncation, reason = "built from a u32 in `new`")]
    pub fn len(&self) -> u32 {
        self.entries.len() as u32
    }

    /// True for a table of no pages.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of leaves.
    pub fn leaves(&self) -> usize {
        self.dir.len()
    }

    /// Number of leaves holding at least one non-empty entry.
    pub fn populated_leaves(&self) -> usize {
        self.dir.iter().filter(|l| l.live > 0).count()
    }

    /// The entry of `page`.
    ///
    /// # Panics
    /// If `page` is outside the table: callers validate addresses first.
    pub fn get(&self, page: PageIndex) -> Pte {
        self.entries[page.0 as usize]
    }

    /// Set the entry of `page`, marking its leaf dirty if it changed.
    ///
    /// # Panics
    /// If `page` is outside the table.
    #[inline]
    pub fn set(&mut self, page: PageIndex, pte: Pte) {
        let i = page.0 as usize;
        let old = self.entries[i];
        if old != pte {
            self.entries[i] = pte;
            let leaf = i / LEAF_PTES;
            let d = &mut self.dir[leaf];
            if old == Pte::EMPTY {
                d.live += 1;
            } else if pte == Pte::EMPTY {
                d.live -= 1;
            }
            self.mark_dirty(leaf);
        }
    }

    /// Set every entry of `pages` to the value `f` gives.
    pub fn update_range(&mut self, pages: core::ops::Range<u32>, mut f: impl FnMut(PageIndex, Pte) -> Pte) {
        for p in pages {
            let idx = PageIndex(p);
            let new = f(idx, self.get(idx));
            self.set(idx, new);
        }
    }

    /// Set every entry of `pages` to `pte`. Leaves that map nothing are
    /// skipped when `pte` is [`Pte::EMPTY`].
    pub fn fill(&mut self, pages: PageRange, pte: Pte) {
        self.for_leaves(pages, pte == Pte::EMPTY, |t, p| t.set(p, pte));
    }

    /// Drop device residency of `pages`: `VALID`, `WRITE` and the frame are
    /// cleared, `ALLOC` kept (the usual `MirrorOps::invalidate` body). Leaves
    /// that map nothing are skipped.
    pub fn zap(&mut self, pages: PageRange) {
        self.for_leaves(pages, true, |t, p| {
            let old = t.get(p);
            if old.is_valid() {
                t.set(p, Pte::from_bits(old.bits() & Pte::ALLOC));
            }
        });
    }

    /// The usual `MirrorOps::invalidate` body for the device whose table
    /// this is: an unmap or a release empties the entries (the pages are
    /// gone), any other event drops residency ([`PageTable::zap`]).
    pub fn invalidate(&mut self, update: &crate::mirror::Update) {
        use crate::mirror::InvalidateEvent;
        match update.event {
            InvalidateEvent::Unmap | InvalidateEvent::Release => self.fill(update.range, Pte::EMPTY),
            _ => self.zap(update.range),
        }
    }

    fn for_leaves(&mut self, pages: PageRange, skip_empty: bool, mut f: impl FnMut(&mut Self, PageIndex)) {
        const LEAF: u32 = 1 << LEAF_PTES.trailing_zeros();
        let mut p = pages.start().0;
        let end = pages.end().0;
        while p < end {
            let leaf = p / LEAF;
            let leaf_end = (leaf + 1).saturating_mul(LEAF).min(end);
            if !(skip_empty && self.dir[leaf as usize].live == 0) {
                for q in p..leaf_end {
                    f(self, PageIndex(q));
                }
            }
            p = leaf_end;
        }
    }

    /// Write the PTEs of a snapshot (`pfns` in `enc`, one per page of `range`)
    /// as [`crate::SnapshotEntry::to_pte`] maps them. Call it under the update
    /// lock after a successful `read_retry`.
    ///
    /// # Panics
    /// If `pfns.len() != range.len()` or `range` leaves the table.
    pub fn commit_snapshot(&mut self, range: PageRange, pfns: &[u64], enc: &Encoding) {
        assert_eq!(pfns.len(), range.len() as usize, "one result per page");
        for (p, v) in range.iter().zip(pfns) {
            self.set(p, enc.decode(*v).to_pte());
        }
    }

    /// Entries of `pages`.
    pub fn entries(&self, pages: core::ops::Range<u32>) -> &[Pte] {
        &self.entries[pages.start as usize..pages.end as usize]
    }

    /// Mark every leaf clean without handing anything out: the device copy
    /// is known to equal this one (e.g. a new table, all [`Pte::EMPTY`],
    /// and a zero-initialised device buffer). The first upload then costs
    /// what has been set since, not the table's length.
    pub fn mark_clean(&mut self) {
        self.dirty.iter_mut().for_each(|w| *w = 0);
        self.dirty_count = 0;
    }

    /// Mark dirty every leaf holding a non-empty entry: what a new,
    /// zero-initialised device copy lacks (a table buffer that grew).
    pub fn mark_live_dirty(&mut self) {
        for leaf in 0..self.dir.len() {
            if self.dir[leaf].live > 0 {
                self.mark_dirty(leaf);
            }
        }
    }

    /// Number of dirty leaves.
    pub fn dirty_leaves(&self) -> usize {
        self.dirty_count
    }

    /// Bytes the next [`Self::drain_dirty`] will hand out.
    pub fn dirty_bytes(&self) -> u64 {
        self.batches().map(|b| core::mem::size_of_val(b.entries) as u64).sum()
    }

    /// Hand each run of consecutive dirty leaves to `upload`, then mark all
    /// leaves clean. Returns the number of bytes handed out.
    pub fn drain_dirty(&mut self, mut upload: impl FnMut(UploadBatch<'_>)) -> u64 {
        let mut bytes = 0;
        for b in self.batches() {
            bytes += core::mem::size_of_val(b.entries) as u64;
            upload(b);
        }
        self.dirty.iter_mut().for_each(|w| *w = 0);
        self.dirty_count = 0;
        bytes
    }

    fn batches(&self) -> impl Iterator<Item = UploadBatch<'_>> + '_ {
        let leaves = self.dir.len();
        let mut leaf = 0;
        core::iter::from_fn(move || {
            // Skip clean words of the bitmap 64 leaves at a time.
            while leaf < leaves && self.dirty[leaf / 64] >> (leaf % 64) == 0 {
                leaf = (leaf / 64 + 1) * 64;
            }
            while leaf < leaves && !self.is_dirty(leaf) {
                leaf += 1;
            }
            if leaf >= leaves {
                return None;
            }
            let start = leaf;
            while leaf < leaves && self.is_dirty(leaf) {
                leaf += 1;
            }
            let first = start * LEAF_PTES;
            let last = (leaf * LEAF_PTES).min(self.entries.len());
            Some(UploadBatch {
                byte_offset: (first * core::mem::size_of::<Pte>()) as u64,
                entries: &self.entries[first..last],
            })
        })
    }

    fn is_dirty(&self, leaf: usize) -> bool {
        self.dirty[leaf / 64] & (1 << (leaf % 64)) != 0
    }

    #[inline]
    fn mark_dirty(&mut self, leaf: usize) {
        let w = &mut self.dirty[leaf / 64];
        let bit = 1u64 << (leaf % 64);
        if *w & bit == 0 {
            *w |= bit;
            self.dirty_count += 1;
        }
    }
}

#[cfg(all(test, not(loom)))]
#[allow(clippy::cast_possible_truncation, reason = "small test constants")]
mod tests {
    use super::*;
    use crate::pte::FrameIndex;

    #[test]
    fn only_changed_leaves_are_uploaded() {
        let mut t = PageTable::new(10 * LEAF_PTES as u32 + 5);
        assert_eq!(t.dirty_leaves(), 11);
        let all = t.drain_dirty(|_| {});
        assert_eq!(all, (10 * LEAF_PTES as u64 + 5) * 4);
        assert_eq!(t.drain_dirty(|_| {}), 0);

        let f = FrameIndex::new(3).expect("fits");
        t.set(PageIndex(5), Pte::resident(f, true));
        t.set(PageIndex(6), Pte::resident(f, true));
        t.set(PageIndex(3 * LEAF_PTES as u32), Pte::ALLOCATED);
        t.set(PageIndex(4 * LEAF_PTES as u32 + 1), Pte::ALLOCATED);
        // Setting the same value again does not dirty anything.
        t.set(PageIndex(7 * LEAF_PTES as u32), Pte::EMPTY);
        let mut got = Vec::new();
        let bytes = t.drain_dirty(|b| got.push((b.byte_offset, b.entries.len())));
        assert_eq!(got, vec![(0, LEAF_PTES), (3 * 4 * LEAF_PTES as u64, 2 * LEAF_PTES)]);
        assert_eq!(bytes, 3 * 4 * LEAF_PTES as u64);
    }

    #[test]
    fn clean_table_uploads_only_what_is_set_and_live_leaves_after_growth() {
        let mut t = PageTable::new(64 * LEAF_PTES as u32);
        t.mark_clean();
        assert_eq!(t.drain_dirty(|_| {}), 0);
        t.set(PageIndex(40 * LEAF_PTES as u32 + 3), Pte::ALLOCATED);
        assert_eq!(t.drain_dirty(|_| {}), 4 * LEAF_PTES as u64);
        // Set and emptied again: the leaf holds nothing live.
        t.set(PageIndex(2), Pte::ALLOCATED);
        t.set(PageIndex(2), Pte::EMPTY);
        t.drain_dirty(|_| {});
        t.mark_live_dirty();
        let mut got = Vec::new();
        t.drain_dirty(|b| got.push(b.byte_offset));
        assert_eq!(got, vec![40 * 4 * LEAF_PTES as u64]);
    }

    #[test]
    fn directory_counts_and_zap_skip_empty_leaves() {
        let mut t = PageTable::new(300 * LEAF_PTES as u32);
        t.drain_dirty(|_| {});
        let f = FrameIndex::new(9).expect("fits");
        t.set(PageIndex(200 * LEAF_PTES as u32 + 7), Pte::resident(f, true));
        t.set(PageIndex(200 * LEAF_PTES as u32 + 8), Pte::ALLOCATED);
        assert_eq!(t.populated_leaves(), 1);
        t.drain_dirty(|_| {});
        // Zapping the whole table touches one leaf only.
        t.zap(PageRange::from_range(0..t.len()).expect("ordered"));
        assert_eq!(t.get(PageIndex(200 * LEAF_PTES as u32 + 7)), Pte::ALLOCATED);
        assert_eq!(t.dirty_leaves(), 1);
        // Uploads after a far-away change stay one leaf, whatever the size.
        t.drain_dirty(|_| {});
        t.set(PageIndex(299 * LEAF_PTES as u32), Pte::ALLOCATED);
        assert_eq!(t.dirty_bytes(), 4 * LEAF_PTES as u64);
        t.fill(PageRange::from_range(200 * 1024..201 * 1024).expect("ordered"), Pte::EMPTY);
        assert_eq!(t.populated_leaves(), 1);
    }
}
