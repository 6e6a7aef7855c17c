//! Allocation: the arena's ranges (`alloc`, `free`, typed owners). Free
//! changes the CPU side first and the bookkeeping after, so that a free the
//! OS refuses leaves the allocation live.

use super::*;

/// Zeros for freed blocks (the largest slab class).
static ZEROS: [u8; crate::slab::MAX_SMALL] = [0; crate::slab::MAX_SMALL];

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

    /// A sub-page allocation for a typed owner (`ManagedBox`, the
    /// collections' allocator): a block of a size-class slab (see
    /// [`crate::slab`]), aligned to its class, zeroed. Larger requests and
    /// alignments above the largest class are page allocations.
    pub(crate) fn alloc_small_owned(&self, bytes: usize, align: usize) -> Result<NonNull<u8>, AllocError> {
        let Some(class) = crate::slab::Slabs::class_of(bytes, align) else {
            return self.alloc_impl(bytes, true);
        };
        self.inner.check_process().map_err(|_| AllocError::NotInherited)?;
        if let Some(home) = self.home() {
            // A mirror: the arena's runtime allocates (and copies it here).
            return home.alloc_small_owned(bytes, align);
        }
        let arena = &self.inner.arena;
        let mut st = self.inner.state.lock();
        // A slab page no one can reach (lost with a device, or written in
        // place by a lost device's kernel) hands out no more blocks.
        while let Some(p) = st.slabs.next_page(class).filter(|&p| self.inner.unreachable(&st, p)) {
            st.slabs.retire(p);
        }
        let off = match st.slabs.alloc(class) {
            Some(off) => off,
            None => {
                // A new slab page, taken and mapped as a page allocation.
                let page = st
                    .ranges
                    .alloc(PAGE_SIZE, PAGE_SIZE)
                    .ok_or(AllocError::ArenaExhausted { requested: bytes, largest_free: st.ranges.largest_free() })?;
                if let Err(e) = self.inner.map_new_range(&mut st, page, PAGE_SIZE, true) {
                    st.ranges.free(page);
                    return Err(e);
                }
                st.slabs.add_page(page_of(page), class)
            }
        };
        st.owned.insert(off);
        if let Some((start, len)) = st.slabs.block_at(off) {
            crate::label::reuse(arena.base() + start, arena.base() + start + len);
        }
        drop(st);
        Ok(NonNull::new((arena.base() + off) as *mut u8).expect("arena addresses are non-null"))
    }

    /// `owned`: registered as a typed owner's under the same lock, so that no
    /// raw `free` can reach it in between.
    fn alloc_impl(&self, bytes: usize, owned: bool) -> Result<NonNull<u8>, AllocError> {
        self.inner.check_process().map_err(|_| AllocError::NotInherited)?;
        if let Some(home) = self.home() {
            return home.alloc_impl(bytes, owned);
        }
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
        if let Err(e) = self.inner.map_new_range(&mut st, off, len, false) {
            st.ranges.free(off);
            return Err(e);
        }
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
        if let Some(home) = self.home() {
            return home.free_impl(ptr, owner);
        }
        let addr = ptr as usize;
        let arena = &self.inner.arena;
        if !arena.contains(addr) {
            return Err(FreeError::NotAllocated { addr });
        }
        let off = addr - arena.base();
        // Whether freeing the allocation at page `a` releases its pages (a
        // slab page only with its last block).
        let releases_pages = |st: &State, a: u32| !st.slabs.is_slab(a) || st.slabs.live_in(a) <= 1;
        let mut st = self.inner.state.lock();
        // A launch in flight using the range (a raw access) finishes first;
        // other launches go on, a replayable one too (`wait_users`). Freeing a range the coherent window covers
        // drops the window: every launch finishes first. (Waiting releases
        // the lock: decided again after, the window may have come.)
        while let Some((start, len)) = st.ranges.containing(off) {
            if st.leaked.contains(&start) {
                // Freed already, kept for good (`Inner::leak`).
                return Err(FreeError::NotAllocated { addr });
            }
            let (a, b) = (page_of(start), page_of(start + len));
            // Pages a mirror holds come home first (its launches on them
            // finish), the lock released: decided again after.
            self.inner.reclaim_lost(a, b);
            let foreign = self.inner.foreign_runs([(a, b)]);
            if !foreign.is_empty() {
                self.inner.take_leases(&mut st, &foreign).map_err(|e| FreeError::Os(e.to_string()))?;
                continue;
            }
            // A mirror's in-place window over pages this free releases
            // goes, its launches finishing first, with this lock released
            // (they may need it).
            if releases_pages(&st, a) && self.inner.mirror_windows_meet(a, b) {
                if !parking_lot::MutexGuard::unlocked(&mut st, || self.inner.drop_mirror_windows(a, b)) {
                    return Err(FreeError::InOwnScope { addr });
                }
                continue;
            }
            let in_window = |st: &State| st.coherent.as_ref().is_some_and(|c| c.first < b && a < c.end);
            if in_window(&st) {
                if st.flights.is_empty() {
                    break;
                }
                if st.own_scope_open() {
                    return Err(FreeError::InOwnScope { addr });
                }
                self.inner.wait_all_flights(&mut st);
            } else {
                self.inner.wait_users(&mut st, a, b);
                if !in_window(&st) {
                    break;
                }
            }
        }
        let Some((start, len)) = st.ranges.containing(off) else { return Err(FreeError::NotAllocated { addr }) };
        let (a, b) = (page_of(start), page_of(start + len));
        if !self.inner.foreign_runs([(a, b)]).is_empty()
            || (releases_pages(&st, a) && !self.inner.drop_idle_mirror_windows(a, b))
        {
            // A mirror took some of it, or maps it in place with a launch
            // in flight, while this free waited: again.
            drop(st);
            return self.free_impl(ptr, owner);
        }
        if st.slabs.is_slab(page_of(start)) {
            // A device-owned slab page comes back (its other blocks live),
            // under the lock: not behind a running kernel. (Waiting releases
            // the lock: decided again after.)
            let p = page_of(off);
            if let Some(f) = self.inner.copy_back_behind_a_pass(&st, p, p + 1) {
                self.inner.wait_settled(&mut st, &f);
                drop(st);
                return self.free_impl(ptr, owner);
            }
            return self.inner.free_small(&mut st, off, owner, addr);
        }
        if start != off {
            return Err(FreeError::NotAllocated { addr });
        }
        if st.owned.contains(&start) != owner {
            return Err(if owner { FreeError::NotAllocated { addr } } else { FreeError::Owned { addr } });
        }
        if self.inner.withheld(a, b) {
            self.inner.leak(&mut st, start, addr);
            return Ok(());
        }
        self.inner.release_range(&mut st, start, len, addr)
    }
}

impl Svm {
    /// `f(address, length)` of the live allocation holding `addr` (a slab
    /// page's block or a page allocation), under the update lock (the
    /// allocation stays live while `f` runs).
    pub(crate) fn with_allocation_at<R>(&self, addr: usize, f: impl FnOnce(usize, usize) -> R) -> Option<R> {
        if let Some(home) = self.home() {
            return home.with_allocation_at(addr, f);
        }
        let arena = &self.inner.arena;
        if self.inner.foreign() || !arena.contains(addr) {
            return None;
        }
        let off = addr - arena.base();
        let st = self.inner.state.lock();
        let (start, len) = st.ranges.containing(off)?;
        let (start, len) =
            if st.slabs.is_slab(page_of(start)) { st.slabs.block_containing(off)? } else { (start, len) };
        Some(f(arena.base() + start, len))
    }
}

impl Inner {
    /// Map the newly allocated range `[off, off + len)` for the CPU side
    /// (coherent mode: the windows of the device view up to it imported
    /// first, their pages populated; mapped now so that first touches do
    /// not fault) and mark its PTEs allocated.
    /// The mirrors' tables are marked too (`slab`: a slab page).
    fn map_new_range(&self, st: &mut State, off: usize, len: usize, slab: bool) -> Result<(), AllocError> {
        let arena = &self.arena;
        self.gpu
            .import_coherent((off + len) as u64, |o, l| arena.populate_host(o, l).map_err(|e| e.to_string()))
            .map_err(AllocError::Os)?;
        let mapped = arena.allocate(off, len).and_then(|()| {
            if self.gpu.mode == MappingMode::Coherent {
                arena.restore(off, len)
            } else {
                Ok(())
            }
        });
        mapped.map_err(|e| AllocError::Os(e.to_string()))?;
        if let Err(e) = self.copy_alloc_to_mirrors(off, len, slab) {
            // (The caller frees the range: the CPU side goes back too.)
            let _ = if self.gpu.mode == MappingMode::Coherent {
                arena.release_in_place(off, len)
            } else {
                arena.release(off, len)
            };
            return Err(e);
        }
        let first = page_of(off);
        st.table.update_range(first..first + page_of(len), |_, _| Pte::ALLOCATED);
        st.top = st.top.max(first + page_of(len));
        crate::label::reuse(arena.base() + off, arena.base() + off + len);
        Ok(())
    }

    /// Free the sub-page block at `off` (a slab page's): zeroed in the host
    /// copy (the page brought back from the device first, a kept read-only
    /// copy dropped), then the slab's; the page goes when its last block
    /// does.
    fn free_small(&self, st: &mut State, off: usize, owner: bool, addr: usize) -> Result<(), FreeError> {
        let Some((start, len)) = st.slabs.block_at(off) else { return Err(FreeError::NotAllocated { addr }) };
        if st.owned.contains(&start) != owner {
            return Err(if owner { FreeError::NotAllocated { addr } } else { FreeError::Owned { addr } });
        }
        let p = page_of(start);
        // A page lost with the device, or one a lost device may still write
        // in place: the block is freed but its page hands out no more
        // (nothing is copied back nor zeroed; see `alloc_small_owned`).
        let unreachable = self.unreachable(st, p);
        if unreachable {
            st.slabs.retire(p);
        } else {
            if st.owned(p) {
                self.migrate_back_span(st, p, p + 1).map_err(|e| FreeError::Os(e.to_string()))?;
            } else if st.dup[p as usize] {
                self.drop_copy(st, p).map_err(|e| FreeError::Os(e.to_string()))?;
            }
            // SAFETY: the block is freed by its owner (a typed owner's drop,
            // or the raw free whose caller holds no reference to it); the
            // page is on the host now (no device copy to go stale), no
            // launch in flight uses it (the caller waited) and no lost
            // device writes it in place (`unreachable`); the alias view
            // never faults.
            #[allow(unsafe_code, reason = "zeroing a freed block in the host copy; argued inline")]
            let () = unsafe { self.arena.write_host(start, &ZEROS[..len]) };
        }
        let freed = st.slabs.free(start).expect("checked live above");
        st.owned.remove(&start);
        crate::label::freed(self.arena.base() + start, self.arena.base() + start + len);
        if freed.emptied {
            let page = p as usize * PAGE_SIZE;
            if self.withheld(p, p + 1) {
                self.leak(st, page, addr);
                return Ok(());
            }
            return self.release_range(st, page, PAGE_SIZE, addr);
        }
        Ok(())
    }

    /// Whether page `p` cannot be reached: its only copy was on this
    /// runtime's lost device or on a lost mirror's, or a lost device's
    /// kernel may still write it in place.
    pub(super) fn unreachable(&self, st: &State, p: u32) -> bool {
        self.withheld(p, p + 1) || (st.owned(p) && self.gpu.check_lost().is_err()) || self.lost_with_a_mirror(p)
    }

    /// Keep the allocation at `start` for good instead of freeing it: a
    /// runaway kernel of a lost device may still write its pages in place
    /// (the device was declared lost, not stopped), so no later allocation
    /// may be handed them. A second free of it is refused.
    fn leak(&self, st: &mut State, start: usize, addr: usize) {
        tracing::warn!("svm: {addr:#x} lies on pages a lost device may still write: kept allocated (leaked)");
        st.owned.remove(&start);
        st.leaked.insert(start);
    }

    /// Free the page range `[start, start + len)` of a live allocation: the
    /// CPU side first (a free the OS refuses leaves it live and intact),
    /// then frames, PTEs and the range allocator.
    fn release_range(&self, st: &mut State, start: usize, len: usize, _addr: usize) -> Result<(), FreeError> {
        let arena = &self.arena;
        let first = page_of(start);
        let pages = first as usize..(first + page_of(len)) as usize;
        if st.coherent.as_ref().is_some_and(|c| (c.first as usize) < pages.end && pages.start < c.end as usize) {
            // (Its pages stay intact in the host copy: if the free fails
            // below, the range simply migrates again.)
            self.drop_coherent(st);
        }
        debug_assert!(!self.mirror_windows_meet(first, first + page_of(len)), "a mirror's window over freed pages");
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
        let released = if self.gpu.mode == MappingMode::Coherent {
            // The device uses these very pages (imported, pinned by a
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
        self.copy_free_to_mirrors(start, len);
        crate::label::freed(arena.base() + start, arena.base() + start + len);
        Ok(())
    }
}

impl Svm {
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
    /// A small `T` takes a block of a size-class slab (sub-page: 16 bytes
    /// for a 16-byte node; neighbours share the page's residency, and a
    /// small block binds only where its offset meets the device's storage
    /// offset alignment).
    pub fn alloc_box<T: bytemuck::Pod>(&self, value: T) -> Result<crate::managed::ManagedBox<T>, AllocError> {
        if core::mem::align_of::<T>() > PAGE_SIZE {
            return Err(AllocError::Alignment { align: core::mem::align_of::<T>(), max: PAGE_SIZE });
        }
        let bytes = core::mem::size_of::<T>().max(1);
        let p = self.alloc_small_owned(bytes, core::mem::align_of::<T>())?;
        let mut v = ManagedVec::from_raw(self.clone(), p, 1);
        v[0] = value;
        Ok(crate::managed::ManagedBox::new(v))
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
