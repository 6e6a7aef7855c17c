//! Allocation: the arena's ranges (`alloc`, `free`, typed owners). Free
//! changes the CPU side first and the bookkeeping after, so that a free the
//! OS refuses leaves the allocation live.

use super::*;

impl Svm {
    /// An allocation a typed owner (a collection through
    /// [`allocator_api2::alloc::Allocator`]) holds: the raw `free` refuses
    /// it, only [`Self::free_owned`] frees it.
    pub(crate) fn alloc_owned(&self, bytes: usize) -> Result<NonNull<u8>, AllocError> {
        self.alloc_impl(bytes, true)
    }

    /// Allocate `bytes` of managed memory (zero-filled, page aligned; 2 MiB
    /// aligned from 2 MiB up).
    pub fn alloc(&self, bytes: usize) -> Result<NonNull<u8>, AllocError> {
        self.alloc_impl(bytes, false)
    }

    /// `owned`: registered as a typed owner's under the same lock, so that no
    /// raw `free` can reach it in between.
    fn alloc_impl(&self, bytes: usize, owned: bool) -> Result<NonNull<u8>, AllocError> {
        self.inner.check_process().map_err(|_| AllocError::NotInherited)?;
        if bytes == 0 {
            return Err(AllocError::ZeroSize);
        }
        let arena = &self.inner.arena;
        if bytes > arena.len() {
            return Err(AllocError::TooLarge { requested: bytes, arena: arena.len() });
        }
        let len = bytes.next_multiple_of(PAGE_SIZE);
        let align = if len >= 2 << 20 { 2 << 20 } else { PAGE_SIZE };
        let mut st = self.inner.state.lock();
        let off = st
            .ranges
            .alloc(len, align)
            .ok_or(AllocError::ArenaExhausted { requested: bytes, largest_free: st.ranges.largest_free() })?;
        // Coherent mode: the pages exist (populated at creation); map them
        // for the CPU now, so that first touches do not fault.
        let mapped = arena.allocate(off, len).and_then(|()| {
            if self.inner.gpu.mode == MappingMode::Coherent {
                arena.restore(off, len)
            } else {
                Ok(())
            }
        });
        if let Err(e) = mapped {
            st.ranges.free(off);
            return Err(AllocError::Os(e.to_string()));
        }
        let first = page_of(off);
        st.table.update_range(first..first + page_of(len), |_, _| Pte::ALLOCATED);
        if owned {
            st.owned.insert(off);
        }
        drop(st);
        // SAFETY-free: an arena address is never null.
        Ok(NonNull::new((arena.base() + off) as *mut u8).expect("arena addresses are non-null"))
    }

    /// Free an allocation made by [`Self::alloc`], by its start address.
    /// Device-resident pages are dropped; the range becomes inaccessible (a
    /// later CPU access faults). Allocations a typed owner holds
    /// ([`ManagedVec`]) are refused ([`FreeError::Owned`]): only dropping
    /// the owner frees them, so no two owners can ever share memory.
    pub fn free(&self, ptr: *mut u8) -> Result<(), FreeError> {
        self.free_impl(ptr, false)
    }

    /// The drop of a typed owner.
    pub(crate) fn free_owned(&self, ptr: *mut u8) -> Result<(), FreeError> {
        self.free_impl(ptr, true)
    }

    fn free_impl(&self, ptr: *mut u8, owner: bool) -> Result<(), FreeError> {
        if self.inner.foreign() {
            // An owner dropped in a forked child frees nothing (the memory
            // is the parent's); the raw free says why.
            return if owner { Ok(()) } else { Err(FreeError::NotInherited) };
        }
        let addr = ptr as usize;
        let arena = &self.inner.arena;
        if !arena.contains(addr) {
            return Err(FreeError::NotAllocated { addr });
        }
        let off = addr - arena.base();
        let mut st = self.inner.state.lock();
        if let Some((start, len)) = st.ranges.containing(off) {
            // A launch in flight using the range (a raw access) finishes
            // first; other launches go on.
            let (a, b) = (page_of(start), page_of(start + len));
            if st.coherent.as_ref().is_some_and(|c| c.first < b && a < c.end) {
                // Freeing drops the one coherent window.
                self.inner.wait_all_flights(&mut st);
            } else {
                self.inner.wait_pages(&mut st, a, b);
            }
        }
        let Some((start, len)) = st.ranges.containing(off) else { return Err(FreeError::NotAllocated { addr }) };
        if start != off {
            return Err(FreeError::NotAllocated { addr });
        }
        if st.owned.contains(&start) != owner {
            return Err(if owner { FreeError::NotAllocated { addr } } else { FreeError::Owned { addr } });
        }
        let st = &mut *st;
        let first = page_of(start);
        let pages = first as usize..(first + page_of(len)) as usize;
        if st.coherent.as_ref().is_some_and(|c| (c.first as usize) < pages.end && pages.start < c.end as usize) {
            // (Its pages stay intact in the host copy: if the free fails
            // below, the range simply migrates again.)
            self.inner.drop_coherent(st);
        }
        // The CPU side first, the bookkeeping after: a free the OS refuses
        // (mprotect's ENOMEM at vm.max_map_count) leaves the allocation
        // live, readable and intact, as `FreeError` promises.
        let dup_runs: Vec<(u32, u32)> = runs(first, first + page_of(len), |p| st.dup[p as usize]).collect();
        // Kept read-only copies are write-protected on the CPU side; with
        // userfaultfd the protection outlives the mapping, so it is lifted
        // first (mprotect's PROT_NONE below replaces PROT_READ).
        let uffd_wp = !dup_runs.is_empty() && arena.backend() == FaultBackendKind::Uffd;
        let span = |(a, b): (u32, u32)| (a as usize * PAGE_SIZE, (b - a) as usize * PAGE_SIZE);
        if uffd_wp {
            for &r in &dup_runs {
                let (o, l) = span(r);
                arena.write_unprotect(o, l).map_err(|e| FreeError::Os(e.to_string()))?;
            }
        }
        let released = if self.inner.gpu.mode == MappingMode::Coherent {
            // The device uses these very pages (imported once, pinned by a
            // real driver): zero them in place; punching them out would
            // part the CPU's memory from the device's.
            arena.release_in_place(start, len)
        } else {
            arena.release(start, len)
        };
        if let Err(e) = released {
            // mprotect may have changed part of the range before failing:
            // put back what each page had (best effort; a page left
            // PROT_NONE is still served by the fault path).
            let uffd = arena.backend() == FaultBackendKind::Uffd;
            let restore = |pred: &dyn Fn(u32) -> bool| {
                for r in runs(first, first + page_of(len), pred) {
                    let (o, l) = span(r);
                    let _ = arena.allocate(o, l);
                }
            };
            if uffd {
                restore(&|_| true);
            } else {
                restore(&|p| !st.owned(p));
            }
            for &r in &dup_runs {
                let (o, l) = span(r);
                let _ = arena.write_protect(o, l);
            }
            return Err(FreeError::Os(e.to_string()));
        }
        st.dup[pages.clone()].fill(false);
        st.evicted[pages.clone()].fill(false);
        st.advice[pages].fill(0);
        let freed: Vec<u32> =
            (first..first + page_of(len)).map(|p| st.set_frame(p, HOST)).filter(|&f| f != HOST).collect();
        st.frames.free_many(&freed);
        st.table.update_range(first..first + page_of(len), |_, _| Pte::EMPTY);
        st.ranges.free(start);
        st.owned.remove(&start);
        Ok(())
    }

    /// Allocate a zeroed managed array of `len` elements (page aligned:
    /// element types aligned above a page are refused).
    pub fn alloc_vec<T: bytemuck::Pod>(&self, len: usize) -> Result<ManagedVec<T>, AllocError> {
        if core::mem::align_of::<T>() > PAGE_SIZE {
            return Err(AllocError::Alignment { align: core::mem::align_of::<T>(), max: PAGE_SIZE });
        }
        let bytes = len
            .checked_mul(core::mem::size_of::<T>())
            .ok_or(AllocError::TooLarge { requested: usize::MAX, arena: self.inner.arena.len() })?;
        // Owned from the start: the raw `free` refuses it.
        let p = self.alloc_owned(bytes.max(1))?;
        Ok(ManagedVec::from_raw(self.clone(), p, len))
    }

    /// Allocate one `T` in managed memory, initialized to `value`.
    pub fn alloc_box<T: bytemuck::Pod>(&self, value: T) -> Result<crate::managed::ManagedBox<T>, AllocError> {
        Ok(crate::managed::ManagedBox::new(self.alloc_from_slice(&[value])?))
    }

    /// Allocate a managed array holding the items of `iter`.
    pub fn alloc_from_iter<T: bytemuck::Pod>(
        &self,
        iter: impl IntoIterator<Item = T>,
    ) -> Result<ManagedVec<T>, AllocError> {
        let items: Vec<T> = iter.into_iter().collect();
        self.alloc_from_slice(&items)
    }

    /// Allocate a managed array holding a copy of `data`.
    pub fn alloc_from_slice<T: bytemuck::Pod>(&self, data: &[T]) -> Result<ManagedVec<T>, AllocError> {
        let mut v = self.alloc_vec::<T>(data.len())?;
        v.copy_from_slice(data);
        Ok(v)
    }
}
