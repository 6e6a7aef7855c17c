//! The plain host-side changes of an [`AddressSpace`]: allocate (an `mmap`),
//! free (an `munmap`) and protect (an `mprotect`), each run through the
//! invalidation protocol of `AddressSpace::change`.

use super::state::{Alloc, Page};
use super::{AddressSpace, AllocDescriptor, PageState, Prot};
use crate::error::{Result, SpaceError};
use crate::mirror::InvalidateEvent;
use crate::range::{ChunkOrder, PageRange};

impl AddressSpace {
    /// Allocate `range` (an `mmap`): its pages become [`PageState::Empty`].
    /// No invalidation: no mirror can hold entries for unallocated pages.
    ///
    /// # Errors
    /// [`SpaceError::Overlap`] if a page is already allocated; `OutOfRange`, `Released`.
    pub fn alloc(&self, range: PageRange, desc: AllocDescriptor) -> Result<()> {
        self.alloc_with(range, desc.max_order, PageState::Empty { prot: desc.prot })
    }

    /// Allocate `range` as special memory (imported or fixed, like a
    /// `VM_PFNMAP` VMA): snapshots report SPECIAL, faults fail.
    ///
    /// # Errors
    /// As [`Self::alloc`].
    pub fn alloc_special(&self, range: PageRange) -> Result<()> {
        self.alloc_with(range, ChunkOrder::Page, PageState::Special)
    }

    fn alloc_with(&self, range: PageRange, max_order: ChunkOrder, state: PageState) -> Result<()> {
        self.check_range(range)?;
        let mut st = self.state.lock();
        if st.released {
            return Err(SpaceError::Released);
        }
        if let Some(p) = range.iter().find(|p| st.pages[p.0 as usize].state != PageState::Unallocated) {
            return Err(SpaceError::Overlap(p));
        }
        if range.is_empty() {
            return Ok(());
        }
        for p in &mut st.pages[range.start().0 as usize..range.end().0 as usize] {
            *p = Page { state, order: ChunkOrder::Page };
        }
        st.allocs.insert(range.start().0, Alloc { end: range.end().0, max_order });
        Ok(())
    }

    /// Free `range` (an `munmap`; holes are fine): invalidation event
    /// [`InvalidateEvent::Unmap`], then every page becomes Unallocated.
    /// Device-private pages are dropped with it; pages in flight are
    /// dropped too and their migration skips them.
    ///
    /// # Errors
    /// `Again` when `!blockable` and a lock is held; `OutOfRange`, `Released`.
    pub fn free(&self, range: PageRange, blockable: bool) -> Result<()> {
        self.change(range, InvalidateEvent::Unmap, blockable, |st| {
            if range.is_empty() {
                return;
            }
            for p in &mut st.pages[range.start().0 as usize..range.end().0 as usize] {
                *p = Page::default();
            }
            // Trim the allocation tree like munmap trims VMAs.
            let (s, e) = (range.start().0, range.end().0);
            let hit: Vec<(u32, Alloc)> =
                st.allocs.range(..e).filter(|(_, a)| a.end > s).map(|(k, a)| (*k, *a)).collect();
            for (k, a) in hit {
                st.allocs.remove(&k);
                if k < s {
                    st.allocs.insert(k, Alloc { end: s, ..a });
                }
                if a.end > e {
                    st.allocs.insert(e, a);
                }
            }
        })
    }

    /// Change the access rights of the allocated pages of `range` (an
    /// `mprotect`): event [`InvalidateEvent::Protect`]. Host mappings lose
    /// write permission when `prot` forbids it.
    ///
    /// # Errors
    /// As [`Self::free`].
    pub fn protect(&self, range: PageRange, prot: Prot, blockable: bool) -> Result<()> {
        self.change(range, InvalidateEvent::Protect, blockable, |st| {
            if range.is_empty() {
                return;
            }
            for p in &mut st.pages[range.start().0 as usize..range.end().0 as usize] {
                p.state = p.state.with_prot(prot);
            }
        })
    }
}
