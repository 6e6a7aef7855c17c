//! A launch's claim, under the update lock: its declared and bound ranges
//! validated and merged, the launches in flight it conflicts with waited
//! for (the lock released), then its pages made resident and mapped
//! (`residency`), its bound ranges placed and its extents computed — what
//! [`Prepared`] holds for `launch` to encode and submit.

use parking_lot::MutexGuard;

use super::super::*;
use crate::bind::Checked;

/// A launch's declared ranges (merged; page ranges with write flags) and
/// the pages it discards.
pub(super) type Declared = (Vec<(u32, u32, bool)>, Vec<(u32, u32)>);

/// What a launch asks for, checked before the update lock.
#[derive(Copy, Clone)]
pub(super) struct Request<'a, 'd> {
    pub(super) kernel: &'a Kernel,
    pub(super) bound: &'a [Checked<'d>],
    pub(super) access: &'a [crate::kernel::Access<'d>],
    pub(super) replayable: bool,
    pub(super) undeclared_writes: bool,
    /// Served in place rather than evicting (thrashing, see `prepare`): a
    /// pool too full is `PoolExhausted`.
    pub(super) no_evict: bool,
    /// Its host -> device copies wait in `State::copies` until its flight
    /// is recorded and the lock released (`residency::to_device`): the
    /// caller runs them before the submit.
    pub(super) defer_copies: bool,
    /// A queued launch whose pages used in place are taken from the CPU
    /// until it retires (`launch_queued`'s `zap_in_place`): such pages may
    /// be shared with flights that took them the same way.
    pub(super) zaps: bool,
}

/// A launch made resident and mapped, ready to submit.
pub(super) struct Prepared {
    /// Declared and bound ranges, merged.
    pub(super) decl: Vec<(u32, u32, bool)>,
    /// What the launch may touch: `decl`, and for a replayable launch what
    /// was resident.
    pub(super) busy: Vec<(u32, u32, bool)>,
    pub(super) groups: Vec<Option<wgpu::BindGroup>>,
    pub(super) extents: Option<Vec<Extent>>,
    /// Writable byte ranges in slab pages (page-table passes).
    pub(super) slab_writes: Vec<Extent>,
    pub(super) temporary: Vec<(u32, u32)>,
    pub(super) report: LaunchReport,
}

impl Inner {
    /// Declared page ranges of a launch (bound ones first), validated and
    /// merged, and the pages its `write_discard` bindings cover whole (and
    /// nothing else declares).
    pub(super) fn declared(
        &self,
        st: &State,
        kernel: &Kernel,
        bound: &[Checked<'_>],
        access: &[crate::kernel::Access<'_>],
    ) -> Result<Declared, LaunchError> {
        let mut decl: Vec<(u32, u32, bool)> = Vec::with_capacity(access.len() + bound.len());
        let mut discard_pages: Vec<(u32, u32)> = Vec::new();
        let mut keep_pages: Vec<(u32, u32)> = Vec::new();
        for (i, b) in bound.iter().enumerate() {
            let Checked::Managed { addr, len, write, discard } = *b else { continue };
            let (first, last) = self
                .page_range(st, addr, len)
                .ok_or_else(|| crate::bind::error(kernel, i, BindError::NotAllocated { addr, len }))?;
            decl.push((first, last, write));
            if !discard {
                keep_pages.push((first, last));
            } else {
                // Only the pages the range covers whole.
                let off = addr - self.arena.base();
                let (a, b) = (page_of(off.next_multiple_of(PAGE_SIZE)), page_of(off + len));
                if a < b {
                    discard_pages.push((a, b));
                }
            }
        }
        for a in access {
            if a.len == 0 {
                continue;
            }
            let off = a.addr.wrapping_sub(self.arena.base());
            let end = off.checked_add(a.len).filter(|&e| e <= self.arena.len());
            let Some(end) = end else { return Err(LaunchError::BadRange { addr: a.addr, len: a.len }) };
            let (first, last) = (page_of(off), page_of(end.next_multiple_of(PAGE_SIZE)));
            if st.table.entries(first..last).iter().any(|p| !p.is_allocated()) {
                return Err(LaunchError::BadRange { addr: a.addr, len: a.len });
            }
            decl.push((first, last, a.mode == AccessMode::ReadWrite));
            keep_pages.push((first, last));
        }
        let decl = merge_ranges(decl);
        let kept = |p: u32| keep_pages.iter().any(|&(a, b)| (a..b).contains(&p));
        let mut discard: Vec<(u32, u32)> =
            discard_pages.iter().flat_map(|&(a, b)| runs(a, b, |p| !kept(p)).collect::<Vec<_>>()).collect();
        discard.sort_unstable();
        Ok((decl, discard))
    }

    /// Validate, wait for conflicting launches in flight, then make the
    /// launch's pages resident, map and place them. On failure the state is
    /// as before (read-only copies dropped, nothing pinned). A pool too full
    /// while launches in flight hold frames waits for them and tries again.
    pub(super) fn prepare(
        &self,
        guard: &mut MutexGuard<'_, State>,
        order: &mut MutexGuard<'_, ()>,
        req: &Request<'_, '_>,
    ) -> Result<Prepared, LaunchError> {
        let mut remote_tried = false;
        if guard.coherent.as_ref().is_some_and(|c| c.auto) {
            let (decl, _, bound) = self.declared_whole(guard, req)?;
            self.give_back_in_place(guard, &decl, &bound);
        }
        loop {
            // While the pool thrashes, a launch that would evict is served
            // in place instead where it can be (UVM's thrashing
            // mitigation: stop cycling pages in and out).
            let no_evict = !remote_tried && self.thrashing(guard) && self.remote_possible(guard);
            let r = self.prepare_once(guard, order, &Request { no_evict, ..*req });
            match r {
                Err(LaunchError::PoolExhausted { .. }) if !guard.flights.is_empty() => self.wait_all_flights(guard),
                // Larger than the pool (or thrashing): part of it served
                // from host memory in place, once; failing that, evict.
                Err(e @ LaunchError::PoolExhausted { .. }) if !remote_tried => {
                    remote_tried = true;
                    let (decl, whole, bound) = self.declared_whole(guard, req)?;
                    if self.serve_remotely(guard, &decl, &whole, &bound)? {
                        if no_evict {
                            // Still thrashing while ranges take turns in place.
                            guard.last_refault = Some(guard.epoch);
                        }
                    } else if !no_evict {
                        return Err(e);
                    }
                }
                r => return r,
            }
        }
    }

    /// A pass that may be running, when this launch will have to evict
    /// through the device's queue (the staged path): eviction copies back
    /// under the update lock, and a device with one queue (lavapipe's)
    /// takes those copies only once the kernel is done — every other thread
    /// would wait for it. The launch waits for the pass first, the lock
    /// released (its own copies would queue behind it anyway).
    pub(in crate::runtime) fn evicting_behind_a_pass(
        &self,
        st: &State,
        decl: &[(u32, u32, bool)],
        no_evict: bool,
    ) -> Option<Arc<FlightShared>> {
        if no_evict || self.gpu.mode == MappingMode::Coherent || !self.copies_back_on_the_queue(st) {
            return None;
        }
        let running = st.running_pass()?;
        let needed: usize = decl.iter().map(|&(a, b, _)| (a..b).filter(|&p| st.migrates(p)).count()).sum();
        (needed > st.frames.free_count() as usize).then(|| running.clone())
    }

    /// The launch's pages (merged); each declared or bound range on its own
    /// (what may be served in place: whole ranges only); and the bound ones
    /// (a binding is one buffer: a range in place must not straddle one).
    #[allow(clippy::type_complexity, reason = "three page-range lists, named at the callers")]
    fn declared_whole(
        &self,
        st: &State,
        req: &Request<'_, '_>,
    ) -> Result<(Vec<(u32, u32, bool)>, Vec<(u32, u32)>, Vec<(u32, u32)>), LaunchError> {
        let (decl, _) = self.declared(st, req.kernel, req.bound, req.access)?;
        let bound: Vec<(u32, u32)> = req
            .bound
            .iter()
            .filter_map(|c| match *c {
                Checked::Managed { addr, len, .. } => self.page_range(st, addr, len),
                Checked::Uniform(_) => None,
            })
            .collect();
        let mut whole: Vec<(u32, u32)> = req.access.iter().filter_map(|a| self.page_range(st, a.addr, a.len)).collect();
        whole.extend(&bound);
        Ok((decl, whole, bound))
    }

    fn prepare_once(
        &self,
        guard: &mut MutexGuard<'_, State>,
        order: &mut MutexGuard<'_, ()>,
        req: &Request<'_, '_>,
    ) -> Result<Prepared, LaunchError> {
        let Request { kernel, bound, access, replayable, undeclared_writes, no_evict, defer_copies, zaps } = *req;
        let gpu = &self.gpu;
        let (decl, discard) = loop {
            self.retire_done(guard);
            let (decl, discard) = self.declared(guard, kernel, bound, access)?;
            self.refuse_withheld(decl.iter().map(|&(a, b, _)| (a, b)))?;
            // Pages another device mirroring the arena holds come here
            // first (`mirror.rs`). A replayable launch may fault on any
            // allocated page: it takes every one.
            let foreign = if !self.in_group() {
                Vec::new()
            } else if replayable {
                // (Pages lost with a mirror's device are left out unless
                // declared: unmapped, as pages leased elsewhere are.)
                let mut f = self.foreign_runs([(0, guard.top)]);
                f.retain(|&(a, b, h)| h != svm_pagetable::LOST || decl.iter().any(|&(x, y, _)| x < b && a < y));
                f
            } else {
                self.foreign_runs(decl.iter().map(|&(a, b, _)| (a, b)))
            };
            if !foreign.is_empty() {
                self.take_leases_unordered(guard, order, &foreign)?;
                continue;
            }
            // Bound ranges of the software pool that are not contiguous yet
            // may be moved on the device: not shareable with a flight.
            let movable: Vec<(u32, u32)> = if gpu.mode == MappingMode::Software {
                bound
                    .iter()
                    .filter_map(|c| match *c {
                        Checked::Managed { addr, len, .. } => self.page_range(guard, addr, len),
                        Checked::Uniform(_) => None,
                    })
                    .filter(|&(a, b)| !self.contiguous(guard, a, b))
                    .collect()
            } else {
                Vec::new()
            };
            let fixed = |p: u32| !movable.iter().any(|&(a, b)| (a..b).contains(&p));
            // (Waits release the launch order too: other threads' launches
            // on other data must not wait for this one's conflict.)
            match self.launch_conflict(guard, &decl, replayable, zaps, &fixed) {
                None => match self.evicting_behind_a_pass(guard, &decl, no_evict) {
                    None => break (decl, discard),
                    Some(f) => self.wait_settled_unordered(guard, order, &f),
                },
                Some(f) => self.wait_settled_unordered(guard, order, &f),
            }
        };
        let st = &mut **guard;
        st.discard = discard;
        // Read-write declared bytes, for the byte-exact extents of slab pages.
        let base = self.arena.base();
        st.write_bytes = bound
            .iter()
            .filter_map(|c| match *c {
                Checked::Managed { addr, len, write: true, .. } => Some((addr - base, addr - base + len)),
                _ => None,
            })
            .chain(
                access
                    .iter()
                    .filter(|a| a.mode == AccessMode::ReadWrite && a.len > 0)
                    .map(|a| (a.addr - base, a.addr - base + a.len)),
            )
            .collect();
        // A replayable launch also sees what is already resident: pages the
        // device owns (read-write) and kept read-only copies, mapped as they
        // are, without pinning them (eviction may still take them; the
        // kernel then faults them back). Without `allow_undeclared_writes`,
        // the owned pages are mapped read-only (a write to one not declared
        // read-write is refused).
        let resident = if replayable {
            // Runs of resident pages, from the resident index (cost follows
            // what is resident, not the arena).
            let mut r: Vec<(u32, u32, bool)> = Vec::new();
            for p in st.resident_pages() {
                let write = undeclared_writes && !st.dup[p as usize];
                match r.last_mut() {
                    Some(l) if l.1 == p && l.2 == write => l.1 = p + 1,
                    _ => r.push((p, p + 1, write)),
                }
            }
            r
        } else {
            Vec::new()
        };
        st.epoch = st.epoch.wrapping_add(1);
        // Unmap the previous launch's pages (the change reaches the device
        // after the passes in flight, on the queue), migrate and map this
        // one's.
        for (a, b) in std::mem::take(&mut st.mapped) {
            st.table.update_range(a..b, |_, p| if p.is_allocated() { Pte::ALLOCATED } else { p });
        }
        let mut report = LaunchReport::default();
        let mut temporary: Vec<(u32, u32)> = Vec::new();
        // (Set only here, with the lock held until the caller takes the
        // copies out: another path's copies must never land in this list.)
        if defer_copies {
            st.copies = Some(Vec::new());
        }
        let made = (|| {
            // A kernel without the prelude never reads the page table:
            // its pages are made resident, but no PTE changes (nothing to
            // upload; the next pointer launch maps what it declares).
            let ptes = kernel.prelude;
            self.map_ranges(st, &resident, &mut temporary, &mut report, Mapping { pin: false, ptes, evict: true })?;
            let mapped =
                self.map_ranges(st, &decl, &mut temporary, &mut report, Mapping { pin: true, ptes, evict: !no_evict });
            st.discard.clear();
            mapped?;
            let placed = self.place_bindings(st, &|i, why| crate::bind::error(kernel, i, why), bound)?;
            let groups = crate::bind::groups(&gpu.device, &gpu.queue, kernel, bound, &placed);
            // Accesses are checked against the mapped pages' extents when
            // they are few, otherwise against the page table. A replayable
            // launch's first pass uses the extents too when something is
            // mapped (warm data): its refused accesses to allocated pages
            // are its faults. Once a pass faults, the page table finds the
            // rest in bulk (an extent pass reports one access per
            // invocation).
            let extents = if !ptes || (replayable && st.mapped.is_empty()) { None } else { self.extents(st) };
            let slab_writes = self.slab_write_extents(st).unwrap_or_default();
            Ok::<_, LaunchError>((groups, extents, slab_writes))
        })();
        st.write_bytes.clear();
        match made {
            Ok((groups, extents, slab_writes)) => {
                let busy = merge_ranges(decl.iter().chain(&resident).copied().collect());
                Ok(Prepared { decl, busy, groups, extents, slab_writes, temporary, report })
            }
            Err(e) => {
                st.pinned.clear();
                // (Before frames are freed: copies queued into them run.)
                let _ = self.flush_copies(st);
                st.copies = None;
                let _ = self.settle_copies(st, temporary);
                self.return_discarded(st);
                self.release_deferred_now(st);
                Err(e)
            }
        }
    }

    /// A launch failed before its pass: pages it cleared on the device
    /// instead of copying in (`write_discard`) go back to the host, whose
    /// copy is still theirs (their frames are released after the queued
    /// clears, with the moves').
    pub(super) fn return_discarded(&self, st: &mut State) {
        for (a, b) in std::mem::take(&mut st.discarded_fresh) {
            for p in a..b {
                if !st.owned(p) {
                    continue;
                }
                let f = st.set_frame(p, HOST);
                st.deferred_free.push(f);
                st.table.set(PageIndex(p), Pte::ALLOCATED);
            }
            if let Err(e) = self.arena.restore(a as usize * PAGE_SIZE, (b - a) as usize * PAGE_SIZE) {
                tracing::error!("svm: giving discarded pages back to the CPU: {e}");
            }
        }
    }

    /// Free the frames device-side moves left behind, after waiting for
    /// the GPU (a failed launch's moves may still be queued).
    pub(in crate::runtime) fn release_deferred_now(&self, st: &mut State) {
        if st.deferred_free.is_empty() {
            return;
        }
        if self.gpu.wait().is_ok() {
            let frames = std::mem::take(&mut st.deferred_free);
            st.frames.free_many(&frames);
        }
        // (A lost device: the frames stay taken; nothing runs again.)
    }
}
