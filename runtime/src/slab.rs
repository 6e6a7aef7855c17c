//! Sub-page allocation: size-class slabs inside arena pages (the mechanism;
//! `runtime/alloc.rs` takes the pages and keeps the CPU side).
//!
//! Requests of at most [`MAX_SMALL`] bytes come from *slabs*: one arena page
//! cut into equal blocks of a power-of-two class from [`MIN_CLASS`] bytes up,
//! each block aligned to its class. Per class, the slabs with free blocks are
//! kept in a set (lowest page first, so that live blocks pack into few
//! pages). A slab whose last block is freed gives its page back.

use std::collections::{BTreeSet, HashMap};

/// Smallest block, bytes.
pub const MIN_CLASS: usize = 16;
/// Largest request served from slabs, bytes.
pub const MAX_SMALL: usize = 2048;
const PAGE: usize = 4096;
const CLASSES: usize = (MAX_SMALL / MIN_CLASS).trailing_zeros() as usize + 1;

/// One slab page.
#[derive(Clone, Debug)]
struct Slab {
    /// log2(block bytes).
    shift: u8,
    /// Bit per block: live.
    used: [u64; PAGE / MIN_CLASS / 64],
    live: u16,
    /// Hands out no more blocks (its page cannot be reached: lost with a
    /// device); its live blocks can still be freed.
    retired: bool,
}

impl Slab {
    fn blocks(&self) -> usize {
        PAGE >> self.shift
    }
    fn is_used(&self, i: usize) -> bool {
        self.used[i / 64] >> (i % 64) & 1 != 0
    }
    fn set(&mut self, i: usize, on: bool) {
        if on {
            self.used[i / 64] |= 1 << (i % 64);
        } else {
            self.used[i / 64] &= !(1 << (i % 64));
        }
    }
    fn first_free(&self) -> Option<usize> {
        let n = self.blocks();
        self.used.iter().enumerate().find_map(|(w, &bits)| {
            let i = w * 64 + bits.trailing_ones() as usize;
            (bits != u64::MAX && i < n).then_some(i)
        })
    }
}

/// What freeing a block did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Freed {
    /// Bytes of the block.
    pub len: usize,
    /// The slab has no live block left: its page was dropped from the
    /// slabs and goes back to the caller.
    pub emptied: bool,
}

/// The slabs of one arena, by page number.
#[derive(Debug, Default)]
pub struct Slabs {
    pages: HashMap<u32, Slab>,
    /// Per class: slab pages with a free block.
    partial: [BTreeSet<u32>; CLASSES],
    live: usize,
}

impl Slabs {
    /// The block size for `bytes` aligned to `align`, if slabs serve it.
    pub fn class_of(bytes: usize, align: usize) -> Option<usize> {
        if bytes == 0 || bytes > MAX_SMALL || !align.is_power_of_two() || align > MAX_SMALL {
            return None;
        }
        Some(bytes.max(align).max(MIN_CLASS).next_power_of_two())
    }

    fn index(class: usize) -> usize {
        (class / MIN_CLASS).trailing_zeros() as usize
    }

    /// Take a free block of `class` bytes (a [`Self::class_of`] result) from
    /// a slab that has one: its arena byte offset. `None`: a new slab page
    /// is needed ([`Self::add_page`]).
    pub fn alloc(&mut self, class: usize) -> Option<usize> {
        let k = Self::index(class);
        let &page = self.partial[k].iter().next()?;
        let slab = self.pages.get_mut(&page).expect("partial slabs exist");
        let i = slab.first_free().expect("partial slabs have a free block");
        slab.set(i, true);
        slab.live += 1;
        if slab.first_free().is_none() {
            self.partial[k].remove(&page);
        }
        self.live += 1;
        Some(page as usize * PAGE + (i << slab.shift))
    }

    /// Make page `page` (allocated by the caller, zeroed) a slab of `class`
    /// and take its first block: its arena byte offset.
    pub fn add_page(&mut self, page: u32, class: usize) -> usize {
        debug_assert!(!self.pages.contains_key(&page), "page {page} is a slab already");
        let slab =
            Slab { shift: class.trailing_zeros() as u8, used: [0; PAGE / MIN_CLASS / 64], live: 0, retired: false };
        self.pages.insert(page, slab);
        self.partial[Self::index(class)].insert(page);
        self.alloc(class).expect("a new slab has free blocks")
    }

    /// Whether `page` is a slab page.
    pub fn is_slab(&self, page: u32) -> bool {
        self.pages.contains_key(&page)
    }

    /// The live block starting exactly at arena byte offset `off`, as
    /// (start, len); `None` if there is none (not a block start, or free).
    pub fn block_at(&self, off: usize) -> Option<(usize, usize)> {
        let slab = self.pages.get(&u32::try_from(off / PAGE).ok()?)?;
        let in_page = off % PAGE;
        let len = 1usize << slab.shift;
        (in_page.is_multiple_of(len) && slab.is_used(in_page / len)).then_some((off, len))
    }

    /// The live block `off` lies in, anywhere inside it: `(start, len)`.
    pub fn block_containing(&self, off: usize) -> Option<(usize, usize)> {
        let slab = self.pages.get(&u32::try_from(off / PAGE).ok()?)?;
        let len = 1usize << slab.shift;
        let i = off % PAGE / len;
        slab.is_used(i).then_some((off / PAGE * PAGE + i * len, len))
    }

    /// Free the live block at `off`. `None` (nothing changed) if there is
    /// no live block starting there.
    pub fn free(&mut self, off: usize) -> Option<Freed> {
        let (_, len) = self.block_at(off)?;
        let page = u32::try_from(off / PAGE).ok()?;
        let k = Self::index(len);
        let slab = self.pages.get_mut(&page)?;
        slab.set(off % PAGE / len, false);
        slab.live -= 1;
        self.live -= 1;
        if slab.live == 0 {
            self.pages.remove(&page);
            self.partial[k].remove(&page);
            return Some(Freed { len, emptied: true });
        }
        if !slab.retired {
            self.partial[k].insert(page);
        }
        Some(Freed { len, emptied: false })
    }

    /// The slab page [`Self::alloc`] would take a `class` block from.
    pub fn next_page(&self, class: usize) -> Option<u32> {
        self.partial[Self::index(class)].iter().next().copied()
    }

    /// Hand out no more blocks of slab page `page` (its live blocks can
    /// still be freed; the last one's free gives the page back as usual).
    pub fn retire(&mut self, page: u32) {
        if let Some(slab) = self.pages.get_mut(&page) {
            slab.retired = true;
            self.partial[Self::index(1 << slab.shift)].remove(&page);
        }
    }

    /// Live blocks on slab page `page` (0 if it is not one).
    pub fn live_in(&self, page: u32) -> usize {
        self.pages.get(&page).map_or(0, |s| usize::from(s.live))
    }

    /// Drop slab page `page` whatever its blocks (a mirror's copy of the
    /// slab pages, whose blocks it does not track).
    pub fn forget_page(&mut self, page: u32) {
        if let Some(slab) = self.pages.remove(&page) {
            self.live -= slab.live as usize;
            self.partial[Self::index(1 << slab.shift)].remove(&page);
        }
    }

    /// Live blocks.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Slab pages.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classes() {
        assert_eq!(Slabs::class_of(1, 1), Some(16));
        assert_eq!(Slabs::class_of(16, 8), Some(16));
        assert_eq!(Slabs::class_of(17, 4), Some(32));
        assert_eq!(Slabs::class_of(24, 32), Some(32));
        assert_eq!(Slabs::class_of(2048, 8), Some(2048));
        assert_eq!(Slabs::class_of(2049, 8), None);
        assert_eq!(Slabs::class_of(0, 8), None);
        assert_eq!(Slabs::class_of(8, 4096), None);
    }

    proptest! {
        /// Random allocs and frees against a model: blocks never overlap,
        /// are aligned to their class, lie in one page, and pages empty out
        /// exactly when their last block goes.
        #[test]
        fn blocks_are_disjoint_aligned_and_pages_recycle(
            ops in proptest::collection::vec((any::<bool>(), 1usize..=2048, any::<u16>()), 1..400)
        ) {
            let mut s = Slabs::default();
            let mut retired: Vec<u32> = Vec::new();
            let mut next_page = 0u32;
            let mut free_pages: Vec<u32> = Vec::new();
            let mut live: Vec<(usize, usize)> = Vec::new();
            for (alloc, bytes, pick) in ops {
                if alloc || live.is_empty() {
                    let class = Slabs::class_of(bytes, 8).unwrap();
                    let off = match s.alloc(class) {
                        Some(o) => o,
                        None => {
                            let p = free_pages.pop().unwrap_or_else(|| { next_page += 1; next_page - 1 });
                            s.add_page(p, class)
                        }
                    };
                    prop_assert!(!retired.contains(&((off / PAGE) as u32)), "a block of a retired page");
                    if pick % 7 == 0 {
                        // (Its other blocks stay live; it hands out no more.)
                        s.retire((off / PAGE) as u32);
                        retired.push((off / PAGE) as u32);
                    }
                    prop_assert_eq!(off % class, 0);
                    prop_assert_eq!(off / PAGE, (off + class - 1) / PAGE);
                    for &(o, l) in &live {
                        prop_assert!(off + class <= o || o + l <= off, "{off}+{class} overlaps {o}+{l}");
                    }
                    prop_assert_eq!(s.block_at(off), Some((off, class)));
                    prop_assert_eq!(s.block_containing(off + class - 1), Some((off, class)));
                    prop_assert_eq!(s.block_at(off + class / 2), None, "only a block's start");
                    live.push((off, class));
                } else {
                    let (off, len) = live.swap_remove(pick as usize % live.len());
                    let f = s.free(off).unwrap();
                    prop_assert_eq!(f.len, len);
                    prop_assert_eq!(s.block_at(off), None);
                    prop_assert_eq!(s.block_containing(off + len - 1), None);
                    prop_assert_eq!(s.free(off), None, "double free refused");
                    let page = (off / PAGE) as u32;
                    let others = live.iter().any(|&(o, _)| o / PAGE == page as usize);
                    prop_assert_eq!(f.emptied, !others);
                    if f.emptied {
                        prop_assert!(!s.is_slab(page));
                        retired.retain(|&r| r != page);
                        free_pages.push(page);
                    }
                }
                prop_assert_eq!(s.live(), live.len());
            }
        }
    }
}
