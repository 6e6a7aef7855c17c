//! Device → host: the CPU-fault span policy, the copies back (through the
//! host-mapped pool, mapped sparse blocks, or the staging download ring with
//! the next span read ahead), and the multi-span migrations back of
//! prefetch, advice and eviction.

use parking_lot::MutexGuard;

use super::super::*;

impl Inner {
    /// Copy device-owned runs (inside `[a, b)`) back through the download
    /// ring: the read-ahead of a sequential stream if it holds them all and
    /// is still valid, else new copies, one submission per staging chunk,
    /// each copied into the host copy while the next ones transfer. With
    /// `next_span`, the copies of the next span (a sequential stream's, or
    /// the next of a multi-span migration) are queued before this span is
    /// copied out, so that the device's copy of the next span overlaps the
    /// CPU's copy of this one.
    pub(in crate::runtime) fn copy_back_staged(
        &self,
        st: &State,
        a: u32,
        b: u32,
        device_runs: &[(u32, u32)],
        next_span: Option<(u32, u32)>,
    ) -> Result<(), DeviceError> {
        let download = match self.valid_readahead(st, a, b, device_runs) {
            Some(d) => d,
            None => self.start_download(st, device_runs, false)?,
        };
        if let Some(next) = next_span {
            self.read_ahead(st, next);
        }
        self.write_back(download, device_runs)
    }

    /// The read-ahead in flight, if it holds every page of `device_runs`
    /// (inside `[a, b)`) and is still valid: no launch since (a kernel may
    /// have written the pages), and each page on the frame it was copied
    /// from (a page that left the device and came back since went through
    /// `upload`, which dropped the read-ahead; this is the belt to those
    /// braces). An invalid one overlapping the span is discarded.
    fn valid_readahead(
        &self,
        st: &State,
        a: u32,
        b: u32,
        device_runs: &[(u32, u32)],
    ) -> Option<crate::staging::Download> {
        let gpu = &self.gpu;
        let r = gpu.staging.take_readahead()?;
        let valid = r.epoch == st.epoch
            && device_runs.iter().all(|&(ra, rb)| {
                ra >= r.first
                    && rb <= r.end
                    && (ra..rb).all(|p| r.frames[(p - r.first) as usize] == st.frames_of.get(p as usize))
            });
        if valid {
            tracing::trace!(a, b, "d2h from the read-ahead");
            return Some(r.download);
        }
        if r.first < b && a < r.end {
            gpu.staging.discard(r.download);
        } else {
            gpu.staging.set_readahead(r);
        }
        None
    }

    /// Wait for `download` chunk by chunk and copy the device-owned pages
    /// of `device_runs` out of it into the host copy (a read-ahead may hold
    /// more: pages whose host copy is current, or outside the span).
    /// Called with the update lock held, or released with the pages
    /// claimed by the caller (`migrate_back`).
    fn write_back(&self, download: crate::staging::Download, device_runs: &[(u32, u32)]) -> Result<(), DeviceError> {
        let gpu = &self.gpu;
        gpu.staging.finish(gpu, download, |host, bytes| {
            let (lo, hi) = (host, host + bytes.len());
            for &(ra, rb) in device_runs {
                let (x, y) = ((ra as usize * PAGE_SIZE).max(lo), (rb as usize * PAGE_SIZE).min(hi));
                if x < y {
                    // SAFETY: these pages are device-owned, hence zapped from
                    // the user view (no program thread reads or writes them
                    // until they are restored after this copy), not coherent
                    // (never imported), and either the update lock is held
                    // or the caller's claim on them makes every other
                    // runtime path that would read, move or free them wait;
                    // `bytes` is a mapped staging buffer, not arena memory.
                    #[allow(unsafe_code, reason = "host-copy write; argued inline")]
                    let () = unsafe { self.arena.write_host(x, &bytes[x - lo..y - lo]) };
                }
            }
        })
    }

    /// Queue copies of the device-owned runs `runs` into download slots
    /// (`fault`: the fault service's own).
    fn start_download(
        &self,
        st: &State,
        runs: &[(u32, u32)],
        fault: bool,
    ) -> Result<crate::staging::Download, DeviceError> {
        let gpu = &self.gpu;
        let pieces = self.download_pieces(st, runs);
        if fault {
            gpu.staging.download_for_fault(gpu, &pieces)
        } else {
            gpu.staging.download(gpu, &pieces)
        }
    }

    /// What copying the device-owned runs `runs` back takes: `(segment
    /// buffer, offset in it, host byte offset, bytes)` per frame piece.
    fn download_pieces(&self, st: &State, runs: &[(u32, u32)]) -> Vec<(&wgpu::Buffer, u64, usize, u64)> {
        let gpu = &self.gpu;
        let mut pieces: Vec<(&wgpu::Buffer, u64, usize, u64)> = Vec::new();
        for &(ra, rb) in runs {
            self.for_each_frame_piece(st, ra, rb, |p, seg, off, n| {
                let (buf, base) = gpu.segment(seg);
                pieces.push((buf, base + off, p as usize * PAGE_SIZE, u64::from(n) * PAGE_SIZE as u64));
            });
        }
        pieces
    }

    /// The span a sequential CPU-fault stream that reached page `b` wants
    /// next: the rest of the 2 MiB region from `b`, inside the allocation
    /// (what the next fault's `fault_span` takes).
    fn next_stream_span(st: &State, b: u32) -> Option<(u32, u32)> {
        let (s, l) = b.checked_sub(1).and_then(|last| st.ranges.containing(last as usize * PAGE_SIZE))?;
        let e = ((b / STAGING_PAGES + 1) * STAGING_PAGES).min(page_of(s + l));
        (b < e).then_some((b, e))
    }

    /// Whether migrations back read ahead (the staged path: copies through
    /// the download ring, which can run while the CPU copies out the span
    /// before).
    fn reads_ahead(&self) -> bool {
        !self.gpu.cpu_copies && self.gpu.mode != MappingMode::Coherent
    }

    /// Start copying the device-owned pages of `[b, e)` (at most one span)
    /// into staging memory, so that they are there by the time the
    /// migration back of that span (a fault's, a prefetch's, an eviction's)
    /// wants them. Only a speed-up: a failure is logged and shows again
    /// where it matters.
    fn read_ahead(&self, st: &State, (b, e): (u32, u32)) {
        if let Err(err) = self.try_read_ahead(st, b, e) {
            tracing::debug!("svm: read-ahead of pages {b}..{e}: {err}");
        }
    }

    fn try_read_ahead(&self, st: &State, b: u32, e: u32) -> Result<(), DeviceError> {
        debug_assert!(b < e && e - b <= STAGING_PAGES);
        if (b..e).any(|p| Self::busy(st, p)) {
            return Ok(());
        }
        let device_runs: Vec<(u32, u32)> = runs(b, e, |p| st.owned(p)).collect();
        if device_runs.is_empty() {
            return Ok(());
        }
        // One read-ahead at a time, and its slots are needed now.
        if let Some(old) = self.gpu.staging.take_readahead() {
            self.gpu.staging.discard(old.download);
        }
        let download = self.start_download(st, &device_runs, false)?;
        let frames = (b..e).map(|p| if st.owned(p) { st.frames_of.get(p as usize) } else { HOST }).collect();
        self.gpu.staging.set_readahead(crate::staging::Readahead {
            first: b,
            end: e,
            epoch: st.epoch,
            frames,
            download,
        });
        Ok(())
    }

    /// Copy device-owned runs back by mapping the pool (unified memory):
    /// per segment, one map of the range the pieces span, one copy each.
    pub(in crate::runtime) fn copy_back_mapped(
        &self,
        st: &State,
        device_runs: &[(u32, u32)],
    ) -> Result<(), DeviceError> {
        let gpu = &self.gpu;
        // (page, segment, byte offset, pages) of every frame-contiguous piece.
        let mut pieces: Vec<(u32, usize, u64, u32)> = Vec::new();
        for &(ra, rb) in device_runs {
            self.for_each_frame_piece(st, ra, rb, |p, seg, off, n| pieces.push((p, seg, off, n)));
        }
        for seg in 0..gpu.segments.len() {
            let mine: Vec<_> = pieces.iter().filter(|x| x.1 == seg).collect();
            let (Some(lo), Some(hi)) =
                (mine.iter().map(|x| x.2).min(), mine.iter().map(|x| x.2 + u64::from(x.3) * PAGE_SIZE as u64).max())
            else {
                continue;
            };
            let copy = |bytes: &[u8]| {
                for &&(p, _, off, n) in &mine {
                    let at = (off - lo) as usize;
                    // SAFETY: device-owned pages: zapped from the user view
                    // until `migrate_back_span` restores them after this
                    // copy, never imported (not coherent), and the update
                    // lock (`st`) keeps the runtime's other paths off them;
                    // `bytes` is the mapped pool, not arena memory.
                    #[allow(unsafe_code, reason = "host-copy write; argued inline")]
                    let () = unsafe {
                        self.arena.write_host(p as usize * PAGE_SIZE, &bytes[at..at + n as usize * PAGE_SIZE])
                    };
                }
            };
            let len = usize::try_from(hi - lo).expect("segment fits the address space");
            // SAFETY: these frames hold device-owned pages no launch in
            // flight uses (the callers wait for those first), so no GPU work
            // writes them; the launch that wrote them is complete and ended
            // with a host-read barrier; the update lock keeps the runtime's
            // other paths off them.
            #[allow(unsafe_code, reason = "CPU read of the host-mapped pool; argued inline")]
            let direct = unsafe { gpu.with_pool_host(seg, lo, len, copy) };
            if direct.is_none() {
                // (Only the software pool is ever mapped: segment base 0.)
                gpu.read_mapped_range(gpu.segment(seg).0, lo, hi - lo, copy)?;
            }
        }
        Ok(())
    }

    /// Split pages `[ra, rb)` (all device-owned) into pieces whose frames are
    /// consecutive inside one pool segment: `f(first page, segment, byte
    /// offset in the segment, pages)`.
    pub(in crate::runtime) fn for_each_frame_piece(
        &self,
        st: &State,
        ra: u32,
        rb: u32,
        mut f: impl FnMut(u32, usize, u64, u32),
    ) {
        let gpu = &self.gpu;
        let mut p = ra;
        while p < rb {
            let fr = st.frames_of.get(p as usize);
            let mut n = 1;
            while p + n < rb && st.frames_of.get((p + n) as usize) == fr + n && n < gpu.frames_left_in_segment(fr) {
                n += 1;
            }
            let (seg, off) = gpu.frame_location(fr);
            f(p, seg, off, n);
            p += n;
        }
    }

    /// The span a CPU fault on `page` brings back: the largest aligned chunk
    /// (2 MiB, 64 KiB, 4 KiB, at most the configured fault chunk) that lies
    /// inside the page's allocation, as drm_gpusvm chooses; then grown like
    /// UVM's tree prefetcher: every enclosing aligned region (up to 2 MiB)
    /// that would be more than 51 % host-resident after this fetch is fetched
    /// whole. Sequential reads of a 2 MiB region then take about six faults
    /// with 64 KiB chunks instead of 32.
    pub(in crate::runtime) fn fault_span(&self, st: &State, page: u32) -> (u32, u32) {
        let (s, l) = st.ranges.containing(page as usize * PAGE_SIZE).expect("faulting page is allocated");
        let (sa, sb) = (page_of(s), page_of(s + l));
        let max = (self.chunk / PAGE_SIZE) as u32;
        let (mut a, mut b) = (page, page + 1);
        for size in [512u32, 16, 1] {
            let ca = page / size * size;
            if size <= max && ca >= sa && ca + size <= sb {
                (a, b) = (ca, ca + size);
                break;
            }
        }
        // A fault right where the previous span ended is a sequential
        // stream: take the rest of its 2 MiB region at once.
        if self.prefetch && st.last_fault_end == Some(page) {
            let rb = ((page / STAGING_PAGES + 1) * STAGING_PAGES).min(sb);
            if rb > b {
                b = rb;
            }
        }
        // Every enclosing aligned region up to 2 MiB, smallest first; the
        // span grows to each region that passes the threshold (a larger one
        // may pass where a smaller did not: sequential access fills regions
        // from their start).
        let mut size = (b - a).next_power_of_two();
        while self.prefetch && size < STAGING_PAGES {
            size *= 2;
            let ra = (page / size * size).max(sa);
            let rb = (page / size * size + size).min(sb);
            let device_outside = (ra..rb).filter(|&p| (p < a || p >= b) && st.owned(p)).count() as u32;
            let resident_after = (rb - ra) - device_outside;
            if resident_after * 100 > 51 * (rb - ra) {
                (a, b) = (ra.min(a), rb.max(b));
            }
        }
        (a, b)
    }

    /// Bring the device-owned pages of the span around `page` (see
    /// [`Self::fault_span`]) back to the host copy and map them for the CPU.
    /// Returns the pages moved.
    ///
    /// On the staged path, a fault that continues a sequential stream also
    /// starts the copies of the stream's next span ([`Self::read_ahead`]);
    /// and the copy is waited for with the update lock released (it may
    /// queue behind a running kernel on a device with one queue), the pages
    /// claimed meanwhile (`Inner::claim`): every path that would read, move
    /// or free them waits, and everything else goes on.
    pub(in crate::runtime) fn migrate_back(
        &self,
        guard: &mut MutexGuard<'_, State>,
        page: u32,
    ) -> Result<u64, DeviceError> {
        let st = &mut **guard;
        let sequential = st.last_fault_end == Some(page);
        let (mut a, mut b) = self.fault_span(st, page);
        // Pages a launch in flight uses stay where they are: the span ends
        // before the nearest such page on either side of `page`.
        if !st.flights.is_empty() {
            if let Some(q) = (a..page).rev().find(|&q| Self::busy(st, q)) {
                a = q + 1;
            }
            if let Some(q) = (page + 1..b).find(|&q| Self::busy(st, q)) {
                b = q;
            }
        }
        st.last_fault_end = Some(b);
        // No read-ahead while a pass may run: it is submitted under the
        // lock, and a device with one queue (lavapipe's) takes it only once
        // the kernel is done — every other thread would wait for the kernel
        // (this fault's own copy waits with the lock released, below). The
        // next fault then copies its span itself.
        let gpu_busy = st.running_pass().is_some();
        let next = if self.prefetch && sequential && self.reads_ahead() && !gpu_busy {
            Self::next_stream_span(st, b)
        } else {
            None
        };
        if !self.copies_back_on_the_queue(st) {
            return self.migrate_back_span_ahead(st, a, b, next);
        }
        let device_runs: Vec<(u32, u32)> = runs(a, b, |p| st.owned(p)).collect();
        if device_runs.is_empty() {
            if let Some(next) = next {
                self.read_ahead(st, next);
            }
            return Ok(0);
        }
        self.gpu.check_lost()?;
        let _span = self.d2h_span(a, b);
        let t0 = Instant::now();
        // (The copies are submitted with the lock released too: lavapipe's
        // queue takes a submission only once the one before has run.)
        let ahead = self.valid_readahead(st, a, b, &device_runs);
        let pieces = if ahead.is_none() { self.download_pieces(st, &device_runs) } else { Vec::new() };
        if let Some(next) = next {
            self.read_ahead(st, next);
        }
        // The faulting page is claimed too, device-owned or not: the fault
        // maps it for the CPU after the copy, and a launch (or another
        // device mirroring the arena) taking it meanwhile would have the
        // CPU mapped over a stale host copy.
        let mut busy: Vec<(u32, u32, bool)> = device_runs.iter().map(|&(x, y)| (x, y, true)).collect();
        if !device_runs.iter().any(|&(x, y)| (x..y).contains(&page)) {
            busy.push((page, page + 1, true));
        }
        let claim = self.claim(st, busy, super::super::flight::ClaimFor::FaultCopyBack);
        let copied = MutexGuard::unlocked(guard, || {
            let download = match ahead {
                Some(d) => d,
                None => self.gpu.staging.download_for_fault(&self.gpu, &pieces)?,
            };
            self.write_back(download, &device_runs)
        });
        let st = &mut **guard;
        let moved = copied.and_then(|()| self.finish_back(st, &device_runs, t0));
        self.end_claim(st, &claim);
        moved
    }

    /// Move every device-owned page of `spans` (each at most
    /// [`STAGING_PAGES`] pages) back to the host, span by span; on the
    /// staged path the device's copy of each span is queued before the CPU
    /// copies out the one before. Returns the pages moved.
    pub(in crate::runtime) fn migrate_back_spans(
        &self,
        st: &mut State,
        spans: &[(u32, u32)],
    ) -> Result<u64, DeviceError> {
        let ahead = self.reads_ahead();
        let mut moved = 0;
        for (i, &(a, b)) in spans.iter().enumerate() {
            let next = spans.get(i + 1).copied().filter(|_| ahead);
            moved += self.migrate_back_span_ahead(st, a, b, next)?;
        }
        Ok(moved)
    }

    /// `[a, b)` cut into spans of at most [`STAGING_PAGES`] pages.
    pub(in crate::runtime) fn spans_of(a: u32, b: u32) -> Vec<(u32, u32)> {
        (a..b).step_by(STAGING_PAGES as usize).map(|x| (x, (x + STAGING_PAGES).min(b))).collect()
    }

    /// Move every device-owned page of `[a, b)` (at most [`STAGING_PAGES`]
    /// pages) back to the host, in three phases: *setup* (collect the
    /// device-owned runs), *pages* (one submit copying each frame-contiguous
    /// piece into the staging buffer, then into the alias view), *finalize*
    /// (free the frames, invalidate the PTEs, restore the CPU mappings). The
    /// update lock is held throughout, so no other access sees a page in
    /// flight: faults on it wait for the lock.
    pub(in crate::runtime) fn migrate_back_span(&self, st: &mut State, a: u32, b: u32) -> Result<u64, DeviceError> {
        self.migrate_back_span_ahead(st, a, b, None)
    }

    /// [`Self::migrate_back_span`], and on the staged path the read-ahead
    /// of the span `next`, started while this span is still being copied
    /// out.
    fn migrate_back_span_ahead(
        &self,
        st: &mut State,
        a: u32,
        b: u32,
        next: Option<(u32, u32)>,
    ) -> Result<u64, DeviceError> {
        debug_assert!(b - a <= STAGING_PAGES);
        let gpu = &self.gpu;
        let device_runs: Vec<(u32, u32)> = runs(a, b, |p| st.owned(p)).collect();
        if device_runs.is_empty() {
            if let Some(next) = next {
                self.read_ahead(st, next);
            }
            return Ok(0);
        }
        gpu.check_lost()?;
        let _span = self.d2h_span(a, b);
        let t0 = Instant::now();
        if gpu.mapped_pool {
            self.copy_back_mapped(st, &device_runs)?;
        } else if let Some(arena) = st.frames.sparse().filter(|a| a.host_mapped()) {
            for &(ra, rb) in &device_runs {
                // SAFETY: device-owned pages no launch in flight uses (the
                // callers wait for those first): no GPU work writes their
                // blocks, and the launch that did ended with a host-read
                // barrier; the pages are zapped from the user view until
                // restored below; the update lock keeps other paths off.
                #[allow(unsafe_code, reason = "CPU read of bound sparse blocks; argued inline")]
                let done = unsafe {
                    arena.host_runs(ra, rb - ra, |q, src, n| {
                        self.arena.write_host(q as usize * PAGE_SIZE, std::slice::from_raw_parts(src, n));
                    })
                };
                if !done {
                    return Err(DeviceError::Unexpected(format!("pages {ra}..{rb} have no block bound")));
                }
            }
        } else {
            self.copy_back_staged(st, a, b, &device_runs, next)?;
        }
        let moved = self.finish_back(st, &device_runs, t0)?;
        tracing::trace!(a, b, moved, "migrated back");
        Ok(moved)
    }

    /// Whether copies back go through the device's queue (the staged path:
    /// not the host-mapped pool, not host-mapped sparse blocks, not the
    /// coherent mode).
    pub(in crate::runtime) fn copies_back_on_the_queue(&self, st: &State) -> bool {
        self.reads_ahead() && !self.gpu.mapped_pool && !st.frames.sparse().is_some_and(|a| a.host_mapped())
    }

    fn d2h_span(&self, a: u32, b: u32) -> tracing::span::EnteredSpan {
        tracing::debug_span!(
            "svm_d2h_batch",
            first_page = a,
            pages = b - a,
            label = %crate::label::trace_label(self.arena.base() + a as usize * PAGE_SIZE)
        )
        .entered()
    }

    /// After the copies back of `device_runs` (HMM's finalize): free their
    /// frames, leave their entries invalid, count, restore CPU access.
    /// Returns the pages moved.
    fn finish_back(&self, st: &mut State, device_runs: &[(u32, u32)], t0: Instant) -> Result<u64, DeviceError> {
        let mut moved = 0u64;
        let mut freed = Vec::new();
        for &(ra, rb) in device_runs {
            for p in ra..rb {
                freed.push(st.set_frame(p, HOST));
                // Keep the entry invalid: the next launch maps what it declares.
                st.table.set(PageIndex(p), Pte::ALLOCATED);
            }
            moved += u64::from(rb - ra);
        }
        st.frames.free_many(&freed);
        let c = &self.stats;
        Counters::add(&c.d2h_pages, moved);
        Counters::add(&c.d2h_batches, 1);
        Counters::add(&c.d2h_ns, t0.elapsed().as_nanos() as u64);
        for &(ra, rb) in device_runs {
            self.arena
                .restore(ra as usize * PAGE_SIZE, (rb - ra) as usize * PAGE_SIZE)
                .map_err(|e| DeviceError::Unexpected(format!("restoring CPU access: {e}")))?;
        }
        Ok(moved)
    }
}
