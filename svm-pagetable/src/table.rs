//! The device page table as the host keeps it: one [`Pte`] per arena page,
//! grouped in leaves of [`LEAF_PTES`] entries, with a dirty bit per leaf so
//! that only changed leaves are uploaded before a launch.
//!
//! The GPU sees the table as one flat `array<u32>` (index = page index); the
//! leaves are the unit of change tracking and upload, not of lookup, so a
//! shader pays a single load per translation.

use crate::pte::{PageIndex, Pte};

/// Entries per leaf (one leaf = 4 KiB of PTEs = 4 MiB of arena).
pub const LEAF_PTES: usize = 1024;

/// Host copy of the device page table, with per-leaf dirty tracking.
#[derive(Clone, Debug)]
pub struct PageTable {
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
            entries: vec![Pte::EMPTY; pages],
            dirty: vec![0; leaves.div_ceil(64)],
            dirty_count: 0,
        };
        for leaf in 0..leaves {
            t.mark_dirty(leaf);
        }
        t
    }

    /// Number of pages covered.
    pub fn len(&self) -> u32 {
        // Invariant: built from a u32 in `new`.
        self.entries.len() as u32
    }

    /// True for a table of no pages.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
    pub fn set(&mut self, page: PageIndex, pte: Pte) {
        let i = page.0 as usize;
        if self.entries[i] != pte {
            self.entries[i] = pte;
            self.mark_dirty(i / LEAF_PTES);
        }
    }

    /// Set every entry of `pages` to the value `f` gives.
    pub fn update_range(
        &mut self,
        pages: core::ops::Range<u32>,
        mut f: impl FnMut(PageIndex, Pte) -> Pte,
    ) {
        for p in pages {
            let idx = PageIndex(p);
            let new = f(idx, self.get(idx));
            self.set(idx, new);
        }
    }

    /// Entries of `pages`.
    pub fn entries(&self, pages: core::ops::Range<u32>) -> &[Pte] {
        &self.entries[pages.start as usize..pages.end as usize]
    }

    /// Number of dirty leaves.
    pub fn dirty_leaves(&self) -> usize {
        self.dirty_count
    }

    /// Bytes the next [`Self::drain_dirty`] will hand out.
    pub fn dirty_bytes(&self) -> u64 {
        self.batches()
            .map(|b| core::mem::size_of_val(b.entries) as u64)
            .sum()
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
        let leaves = self.entries.len().div_ceil(LEAF_PTES);
        let mut leaf = 0;
        core::iter::from_fn(move || {
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

    fn mark_dirty(&mut self, leaf: usize) {
        let w = &mut self.dirty[leaf / 64];
        let bit = 1u64 << (leaf % 64);
        if *w & bit == 0 {
            *w |= bit;
            self.dirty_count += 1;
        }
    }
}

#[cfg(test)]
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
        assert_eq!(
            got,
            vec![(0, LEAF_PTES), (3 * 4 * LEAF_PTES as u64, 2 * LEAF_PTES)]
        );
        assert_eq!(bytes, 3 * 4 * LEAF_PTES as u64);
    }
}
