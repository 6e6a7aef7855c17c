//! Eviction: making room in the device pool. `PreferredLocation(Device)`
//! pages last; otherwise least recently used first, except while the pool
//! thrashes (pages evicted earlier are needed again, within
//! [`THRASH_WINDOW`] launches): then most recently used first. On a working
//! set that is swept cyclically and does not fit, LRU evicts exactly the
//! pages the next launches need — every sweep moves the whole working set
//! out and back — while evicting the most recent keeps the longest-resident
//! part resident and cycles only the excess (UVM detects the same bouncing
//! and stops migrating part of the set).

use parking_lot::MutexGuard;

use super::*;

impl Inner {
    /// Whether a launch's range can be served from host memory in place:
    /// the device imports host memory and the one coherent window is free
    /// or the runtime's own earlier choice.
    pub(super) fn remote_possible(&self, st: &State) -> bool {
        let gpu = &self.gpu;
        self.serve_in_place
            && gpu.host_import
            && gpu.raw.is_some()
            && gpu.mode != MappingMode::Coherent
            && st.coherent.as_ref().is_none_or(|c| c.auto)
    }

    /// The pool thrashes: pages evicted earlier were needed again within
    /// the last [`THRASH_WINDOW`] launches.
    pub(super) fn thrashing(&self, st: &State) -> bool {
        st.last_refault.is_some_and(|e| st.epoch.wrapping_sub(e) <= THRASH_WINDOW)
    }

    /// The range the runtime serves in place migrates again when the pool
    /// no longer thrashes and a launch that uses it fits the pool (served
    /// in place from a PCIe-attached GPU, every access would cross the
    /// bus), or when a launch binds a range across its edge (a binding is
    /// one buffer: it could not be placed; the program's own `AccessedBy`
    /// is the program's choice, the runtime's gives way). Waits for the
    /// launches in flight (the window is theirs until they finish).
    pub(super) fn give_back_in_place(
        &self,
        guard: &mut MutexGuard<'_, State>,
        decl: &[(u32, u32, bool)],
        bound: &[(u32, u32)],
    ) {
        let Some(c) = guard.coherent.as_ref().filter(|c| c.auto) else { return };
        let (first, end) = (c.first, c.end);
        let uses = decl.iter().any(|&(a, b, _)| a < end && first < b);
        let pages: usize = decl.iter().map(|&(a, b, _)| (b - a) as usize).sum();
        let fits = uses && pages <= guard.frames.total() as usize && !self.thrashing(guard);
        if fits || bound.iter().any(|&r| straddles(r, (first, end))) {
            self.wait_all_flights(guard);
            if guard.coherent.as_ref().is_some_and(|c| c.auto && c.first == first) {
                self.drop_coherent(guard);
                tracing::debug!(first_page = first, pages = end - first, "range served in place migrates again");
            }
        }
    }

    /// A launch whose working set `decl` does not fit the pool even after
    /// eviction: serve one of its declared or bound ranges (`whole`) from
    /// host memory in place (the coherent window, as `AccessedBy` does:
    /// UVM's remote mapping of what does not fit) — the smallest whose
    /// absence lets the rest fit the pool — where the device imports host
    /// memory, the window is free or held by an earlier such choice, and
    /// the range fits one binding.
    /// The choice stays (later launches over the range use it in place)
    /// until another launch needs the window, the program advises
    /// `AccessedBy`, or the range is freed. Returns whether a range was
    /// chosen (the caller prepares again). No launch is in flight.
    pub(super) fn serve_remotely(
        &self,
        st: &mut State,
        decl: &[(u32, u32, bool)],
        whole: &[(u32, u32)],
        bound: &[(u32, u32)],
    ) -> Result<bool, LaunchError> {
        let gpu = &self.gpu;
        if !self.remote_possible(st) {
            return Ok(false);
        }
        let limit = gpu.device.limits().max_storage_buffer_binding_size;
        // Pages of `decl` outside `[a, b)`: each needs a frame (an earlier
        // choice elsewhere goes).
        let rest = |a: u32, b: u32| -> usize {
            decl.iter().map(|&(x, y, _)| (x..y).filter(|p| !(a..b).contains(p)).count()).sum()
        };
        let total = st.frames.total() as usize;
        let Some(&(a, b)) = whole
            .iter()
            .filter(|&&(a, b)| u64::from(b - a) * PAGE_SIZE as u64 <= limit && rest(a, b) <= total)
            .filter(|&&w| !bound.iter().any(|&r| straddles(r, w)))
            .min_by_key(|&&(a, b)| b - a)
        else {
            return Ok(false);
        };
        match self.make_coherent(st, a, b, true) {
            Ok(()) => {}
            Err(AdviseError::Device(e)) => return Err(e.into()),
            Err(_) => return Ok(false),
        }
        Counters::add(&self.stats.remote_pages, u64::from(b - a));
        tracing::debug!(
            first_page = a,
            pages = b - a,
            "serving a range from host memory in place (larger than the pool)"
        );
        Ok(true)
    }
}

impl Inner {
    /// Free at least `want` frames by moving least-recently-used
    /// device-owned pages back to the host (they are all dirty: only pages
    /// a kernel could write are device-owned). Pages in `protect` or mapped
    /// by the running launch or by a launch in flight are never chosen. Returns the pages evicted.
    pub(super) fn evict(
        &self,
        st: &mut State,
        want: usize,
        protect: &[(u32, u32, bool)],
    ) -> Result<usize, DeviceError> {
        let _span = tracing::debug_span!("svm_evict", want).entered();
        // The ranges eviction must not take, sorted: a binary search a page.
        let mut fence: Vec<(u32, u32)> = protect
            .iter()
            .map(|&(a, b, _)| (a, b))
            .chain(st.pinned.iter().copied())
            .chain(st.flights.iter().flat_map(|f| f.busy.iter().map(|&(a, b, _)| (a, b))))
            .collect();
        fence.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(fence.len());
        for (a, b) in fence {
            match merged.last_mut() {
                Some(l) if a <= l.1 => l.1 = l.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let protected = |p: u32| {
            let i = merged.partition_point(|r| r.1 <= p);
            merged.get(i).is_some_and(|r| r.0 <= p)
        };
        // Candidates: device-owned pages and kept read-only copies this
        // launch does not use; PreferredLocation(Device) pages last, then
        // least recently used first.
        let thrashing = self.thrashing(st);
        let mut cand: Vec<(bool, u32, u32)> = st
            .resident_pages()
            .filter(|&p| !protected(p))
            .map(|p| {
                let (i, u) = (p as usize, st.last_use[p as usize]);
                let age = if thrashing { u32::MAX - u } else { u };
                (st.advice[i] & advice::PREFER_DEVICE != 0, age, p)
            })
            .collect();
        if cand.len() < want {
            return Ok(0);
        }
        cand.sort_unstable();
        let mut chosen: Vec<u32> = cand[..want].iter().map(|&(_, _, p)| p).collect();
        chosen.sort_unstable();
        // Clean copies are dropped without a copy.
        let clean: Vec<u32> = chosen.iter().copied().filter(|&p| st.dup[p as usize]).collect();
        for &p in &clean {
            self.drop_copy(st, p)?;
        }
        chosen.retain(|&p| !st.dup[p as usize] && st.frames_of.get(p as usize) != HOST);
        for &p in &chosen {
            st.evicted[p as usize] = true;
        }
        let mut spans = Vec::new();
        let mut i = 0;
        while i < chosen.len() {
            let a = chosen[i];
            let mut j = i + 1;
            while j < chosen.len() && chosen[j] == chosen[j - 1] + 1 && chosen[j] - a < STAGING_PAGES {
                j += 1;
            }
            spans.push((a, chosen[j - 1] + 1));
            i = j;
        }
        let evicted = clean.len() + self.migrate_back_spans(st, &spans)? as usize;
        Counters::add(&self.stats.evicted_pages, evicted as u64);
        tracing::debug!(want, evicted, thrashing, "evicted device pages");
        Ok(evicted)
    }
}

/// `r` overlaps `w` without lying inside it.
fn straddles(r: (u32, u32), w: (u32, u32)) -> bool {
    r.0 < w.1 && w.0 < r.1 && !(w.0 <= r.0 && r.1 <= w.1)
}
