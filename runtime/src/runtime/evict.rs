//! Eviction: making room in the device pool. `PreferredLocation(Device)`
//! pages last; otherwise least recently used first, except while the pool
//! thrashes (pages evicted earlier are needed again, within
//! [`THRASH_WINDOW`] launches): then most recently used first. On a working
//! set that is swept cyclically and does not fit, LRU evicts exactly the
//! pages the next launches need — every sweep moves the whole working set
//! out and back — while evicting the most recent keeps the longest-resident
//! part resident and cycles only the excess (UVM detects the same bouncing
//! and stops migrating part of the set).

use super::*;

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
        let thrashing = st.last_refault.is_some_and(|e| st.epoch.wrapping_sub(e) <= THRASH_WINDOW);
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
        let mut evicted = clean.len();
        let mut i = 0;
        while i < chosen.len() {
            let a = chosen[i];
            let mut j = i + 1;
            while j < chosen.len() && chosen[j] == chosen[j - 1] + 1 && chosen[j] - a < STAGING_PAGES {
                j += 1;
            }
            evicted += self.migrate_back_span(st, a, chosen[j - 1] + 1)? as usize;
            i = j;
        }
        Counters::add(&self.stats.evicted_pages, evicted as u64);
        tracing::debug!(want, evicted, thrashing, "evicted device pages");
        Ok(evicted)
    }
}
