//! Residency: migration both ways. Host → device here, when a launch (or
//! prefetch, or replay) maps a range (`map_ranges`, `upload`), and the
//! bookkeeping of read-only copies; device → host in [`to_host`], when the
//! CPU faults, eviction or advice brings pages back (the copies
//! `copy_back_*`, the read-ahead of the staged path, and the CPU-fault span
//! policy `fault_span`).

use super::*;

mod to_device;
mod to_host;

pub(super) use to_device::CopyIn;

/// How [`Inner::map_ranges`] maps: `pin` the ranges into the running
/// operation's working set; write their PTEs (`ptes`; a kernel without the
/// prelude reads none); `evict` to make room (else a pool too full is
/// `PoolExhausted`: the range is to be served in place instead).
#[derive(Copy, Clone)]
pub(super) struct Mapping {
    pub pin: bool,
    pub ptes: bool,
    pub evict: bool,
}

impl Inner {
    /// Make `ranges` device-resident and map them: host pages are copied to
    /// new frames (read ranges as read-only duplicates recorded in
    /// `temporary`; write ranges after zapping the CPU mapping, as
    /// device-owned pages). With `pin`, the ranges join the running
    /// operation's working set, which eviction never takes. Without `evict`
    /// a pool too full is `PoolExhausted` (the range is to be served in
    /// place instead). Returns how many PTEs changed.
    pub(super) fn map_ranges(
        &self,
        st: &mut State,
        ranges: &[(u32, u32, bool)],
        temporary: &mut Vec<(u32, u32)>,
        report: &mut LaunchReport,
        how: Mapping,
    ) -> Result<u64, LaunchError> {
        let Mapping { pin, ptes, evict } = how;
        if self.gpu.mode == MappingMode::Coherent {
            return Ok(Self::map_in_place(st, ranges, ptes));
        }
        let migrates = |st: &State, p: usize| st.migrates(p as u32);
        let needed: usize =
            ranges.iter().map(|&(a, b, _)| (a as usize..b as usize).filter(|&p| migrates(st, p)).count()).sum();
        // Thrashing: pages evicted earlier are needed again. Eviction then
        // keeps the longest-resident part of the working set and cycles the
        // rest (see `evict`).
        let mut refaults = 0u64;
        for &(a, b, _) in ranges {
            for flag in &mut st.evicted[a as usize..b as usize] {
                refaults += u64::from(std::mem::take(flag));
            }
        }
        if refaults > 0 {
            st.last_refault = Some(st.epoch);
            Counters::add(&self.stats.refaults, refaults);
        }
        if needed > st.frames.free_count() as usize && evict {
            // Oversubscription: make room by evicting least-recently-used
            // pages this launch does not use.
            let want = needed - st.frames.free_count() as usize;
            self.evict(st, want, ranges)?;
        }
        if needed > st.frames.free_count() as usize {
            return Err(LaunchError::PoolExhausted {
                needed,
                free: st.frames.free_count() as usize,
                total: st.frames.total() as usize,
            });
        }
        let t0 = Instant::now();
        if self.gpu.mode == MappingMode::Sparse {
            // Every page this call migrates gets its block bound now, in one
            // vkQueueBindSparse with the unbinds queued since the last one;
            // `upload` below finds them bound. With the copies deferred
            // (a launch or prefetch being prepared) the batch is sent with
            // them, outside the update lock (`run_copies`).
            let host_runs: Vec<(u32, u32)> =
                ranges.iter().flat_map(|&(a, b, _)| runs(a, b, |p| migrates(st, p as usize))).collect();
            let send_now = st.copies.is_none();
            st.frames.prepare(&host_runs, send_now)?;
        }
        let (mut pages, mut batches, mut changed) = (0u64, 0u64, 0u64);
        for &(a, b, write) in ranges {
            // Coherent pages: mapped in place, nothing moves.
            let coherent_runs: Vec<(u32, u32)> =
                runs(a, b, |p| st.advice[p as usize] & advice::COHERENT != 0).collect();
            for &(ca, cb) in coherent_runs.iter().filter(|_| ptes) {
                for p in ca..cb {
                    let old = st.table.get(PageIndex(p));
                    let new = Pte::coherent((write || old.is_writable()) && !st.slabs.is_slab(p));
                    if old != new {
                        st.table.set(PageIndex(p), new);
                        changed += 1;
                    }
                }
            }
            let host_runs: Vec<(u32, u32)> = runs(a, b, |p| migrates(st, p as usize)).collect();
            for (ra, rb) in host_runs {
                if write {
                    // The CPU must not change these pages while they are
                    // copied and while the kernel owns them.
                    self.arena
                        .zap(ra as usize * PAGE_SIZE, (rb - ra) as usize * PAGE_SIZE)
                        .map_err(|e| LaunchError::Os(e.to_string()))?;
                } else {
                    st.dup[ra as usize..rb as usize].fill(true);
                    temporary.push((ra, rb));
                    // ReadMostly copies outlive the launch: the CPU must not
                    // write them unseen while they are copied, so they are
                    // write-protected before the copy (a CPU write then
                    // waits for the update lock and drops the copy).
                    if self.arena.has_write_protect() {
                        for (ka, kb) in runs(ra, rb, |p| st.advice[p as usize] & advice::READ_MOSTLY != 0) {
                            self.arena
                                .write_protect(ka as usize * PAGE_SIZE, (kb - ka) as usize * PAGE_SIZE)
                                .map_err(|e| LaunchError::Os(e.to_string()))?;
                        }
                    }
                }
                let _span = tracing::debug_span!(
                    "svm_h2d_batch",
                    first_page = ra,
                    pages = rb - ra,
                    write,
                    label = %crate::label::trace_label(self.arena.base() + ra as usize * PAGE_SIZE)
                )
                .entered();
                batches += self.upload(st, ra, rb)?;
                pages += u64::from(rb - ra);
            }
            if write {
                // Read-only duplicates of earlier passes become device-owned.
                let dup_runs: Vec<(u32, u32)> = runs(a, b, |p| st.dup[p as usize]).collect();
                for (ra, rb) in dup_runs {
                    let (off, len) = (ra as usize * PAGE_SIZE, (rb - ra) as usize * PAGE_SIZE);
                    // Kept (ReadMostly) copies are write-protected on the CPU.
                    if self.arena.has_write_protect() {
                        self.arena.write_unprotect(off, len).map_err(|e| LaunchError::Os(e.to_string()))?;
                    }
                    self.arena.zap(off, len).map_err(|e| LaunchError::Os(e.to_string()))?;
                    st.dup[ra as usize..rb as usize].fill(false);
                }
            }
            st.last_use[a as usize..b as usize].fill(st.epoch);
            for p in (a..b).filter(|_| ptes) {
                if st.advice[p as usize] & advice::COHERENT != 0 {
                    continue;
                }
                let f = FrameIndex::new(st.frames_of.get(p as usize)).expect("resident page has a frame");
                let old = st.table.get(PageIndex(p));
                // (Slab pages: never writable, see `State::slabs`.)
                let new = Pte::resident(f, (write || old.is_writable()) && !st.slabs.is_slab(p));
                if old != new {
                    st.table.set(PageIndex(p), new);
                    changed += 1;
                }
            }
            st.mapped.push((a, b));
            if pin {
                st.pinned.push((a, b));
            }
        }
        let c = &self.stats;
        Counters::add(&c.h2d_pages, pages);
        Counters::add(&c.h2d_batches, batches);
        Counters::add(&c.h2d_ns, t0.elapsed().as_nanos() as u64);
        report.migrated_pages += pages;
        Ok(changed)
    }

    /// The coherent mode's `map_ranges`: every page is its own frame of the
    /// imported arena view; mapping moves nothing and pins nothing (nothing
    /// is ever evicted).
    pub(super) fn map_in_place(st: &mut State, ranges: &[(u32, u32, bool)], ptes: bool) -> u64 {
        let mut changed = 0;
        for &(a, b, write) in ranges {
            for p in (a..b).filter(|_| ptes) {
                let old = st.table.get(PageIndex(p));
                let f = FrameIndex::new(p).expect("arena pages fit the PTE's frame field (checked at creation)");
                // (Slab pages: never writable, see `State::slabs`.)
                let new = Pte::resident(f, (write || old.is_writable()) && !st.slabs.is_slab(p));
                if old != new {
                    st.table.set(PageIndex(p), new);
                    changed += 1;
                }
            }
            st.mapped.push((a, b));
        }
        changed
    }

    /// After a launch or prefetch: read-only device copies made for it are
    /// dropped (the CPU's copy never stopped being current), except
    /// ReadMostly ones: those stay, and the CPU side is write-protected so
    /// that a CPU write drops them first.
    pub(super) fn settle_copies(&self, st: &mut State, temporary: Vec<(u32, u32)>) -> Result<(), LaunchError> {
        let mut post: Result<(), LaunchError> = Ok(());
        for (a, b) in temporary {
            let mut keep: Vec<(u32, u32)> =
                runs(a, b, |p| st.dup[p as usize] && st.advice[p as usize] & advice::READ_MOSTLY != 0).collect();
            if let Some(e) = keep.iter().find_map(|&(ka, kb)| {
                self.arena.write_protect(ka as usize * PAGE_SIZE, (kb - ka) as usize * PAGE_SIZE).err()
            }) {
                // Without write protection a copy cannot be kept.
                post = Err(LaunchError::Os(e.to_string()));
                let _ = self.arena.write_unprotect(a as usize * PAGE_SIZE, (b - a) as usize * PAGE_SIZE);
                keep.clear();
            }
            let kept = |p: u32| keep.iter().any(|&(ka, kb)| (ka..kb).contains(&p));
            let mut freed = Vec::new();
            for p in a..b {
                if st.dup[p as usize] && !kept(p) {
                    st.dup[p as usize] = false;
                    freed.push(st.set_frame(p, HOST));
                }
            }
            st.frames.free_many(&freed);
        }
        post
    }

    /// Drop the kept read-only device copy of `p` (its host copy is current)
    /// and let the CPU write it again.
    pub(super) fn drop_copy(&self, st: &mut State, p: u32) -> Result<(), DeviceError> {
        debug_assert!(st.dup[p as usize]);
        st.dup[p as usize] = false;
        let f = st.set_frame(p, HOST);
        st.frames.free(f);
        st.table.set(PageIndex(p), Pte::ALLOCATED);
        self.arena
            .write_unprotect(p as usize * PAGE_SIZE, PAGE_SIZE)
            .map_err(|e| DeviceError::Unexpected(format!("write-unprotect: {e}")))
    }
}
