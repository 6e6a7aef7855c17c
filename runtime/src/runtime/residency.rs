//! Residency: migration both ways. Host → device when a launch (or
//! prefetch, or replay) maps a range; device → host when the CPU faults,
//! eviction or advice brings pages back. The copies themselves
//! (`upload`, `copy_back_*`) and the CPU-fault span policy (`fault_span`).

use super::*;

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
        let migrates = |st: &State, p: usize| st.frames_of.get(p) == HOST && st.advice[p] & advice::COHERENT == 0;
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
            // `upload` below finds them bound.
            let host_runs: Vec<(u32, u32)> =
                ranges.iter().flat_map(|&(a, b, _)| runs(a, b, |p| migrates(st, p as usize))).collect();
            st.frames.prepare(&host_runs)?;
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
                self.arena
                    .populate_host(ra as usize * PAGE_SIZE, (rb - ra) as usize * PAGE_SIZE)
                    .map_err(|e| LaunchError::Os(e.to_string()))?;
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

    /// Copy host pages `[a, b)` into newly allocated frames; returns the
    /// number of copies queued.
    ///
    /// The caller (`map_ranges`, under the update lock) has made sure that
    /// nothing writes these host pages during the copy: read-write ranges
    /// are zapped from the user view first; `ReadMostly` read ranges are
    /// write-protected first; other read ranges are borrowed shared for the
    /// launch (`Access::read` / `Binding::read` take `&`; `Access::raw` is
    /// `unsafe` with that contract). They are host pages (not on the device)
    /// and not coherent (never imported).
    pub(super) fn upload(&self, st: &mut State, a: u32, b: u32) -> Result<u64, DeviceError> {
        let gpu = &self.gpu;
        if !gpu.cpu_copies {
            // A read-ahead of these pages (which left the device since, by
            // a free) is stale.
            self.drop_readahead(a, b);
        }
        let mut p = a;
        let mut copies = 0;
        while p < b {
            let (f, n) = st.frames.alloc_run(p, b - p)?.expect("pool space checked before migrating");
            // A frame run may straddle pool segments: one copy per segment
            // (and per run of pages whose contents the launch discards:
            // those frames are zeroed instead).
            let mut done = 0;
            while done < n {
                let fr = f + done;
                let mut k = (n - done).min(gpu.frames_left_in_segment(fr));
                // (With a host-mapped pool, zeroing costs what the copy does:
                // measured, no gain; the pages are copied as usual there.)
                let discarded = |q: u32| !gpu.cpu_copies && st.discarded(q);
                let discard = discarded(p + done);
                k = (1..k).find(|&i| discarded(p + done + i) != discard).unwrap_or(k);
                let (seg, off) = gpu.frame_location(fr);
                let host_off = (p + done) as usize * PAGE_SIZE;
                let len = k as usize * PAGE_SIZE;
                let (buf, base) = gpu.segment(seg);
                if discard {
                    // No copy through the staging ring: the frames (which may
                    // hold a previous page's bytes) are cleared on the device.
                    let mut enc = gpu
                        .device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("svm discard") });
                    enc.clear_buffer(buf, base + off, Some(len as u64));
                    gpu.queue.submit([enc.finish()]);
                    Counters::add(&self.stats.discarded_pages, u64::from(k));
                    // Only the host copy holds these pages' data now: a
                    // launch that fails before its pass gives them back.
                    st.discarded_fresh.push((p + done, p + done + k));
                } else if let Some(arena) = st.frames.sparse().filter(|a| a.host_mapped()) {
                    // Sparse pool in mapped host memory (unified memory): a
                    // CPU copy into each page's block (bound by `prepare`).
                    // SAFETY: no writer of these host pages during the copy
                    // (the caller's protocol, see above); the blocks were
                    // just taken for these pages, so no GPU work in flight
                    // uses them; the update lock keeps other paths off.
                    #[allow(unsafe_code, reason = "host-copy borrow and block write; argued inline")]
                    let copied = unsafe {
                        self.arena.with_host(host_off, len, |bytes| {
                            arena.host_runs(p + done, k, |q, dst, n| {
                                let at = (q - (p + done)) as usize * PAGE_SIZE;
                                std::ptr::copy_nonoverlapping(bytes[at..at + n].as_ptr(), dst, n);
                            })
                        })
                    };
                    debug_assert!(copied, "pages bound in a host-mapped sparse pool");
                } else if gpu.segment_is_host(seg) {
                    // Unified memory, pool in imported host memory: one CPU
                    // copy, no map (nothing waits for running kernels).
                    // SAFETY: no writer of these host pages during the copy
                    // (the caller's protocol, see above); the frames are
                    // newly allocated (free frames are used by no launch in
                    // flight), and the update lock (`st`) keeps every other
                    // runtime path off them.
                    #[allow(unsafe_code, reason = "host-copy borrow and pool write; argued inline")]
                    let done = unsafe {
                        self.arena.with_host(host_off, len, |bytes| gpu.write_pool_host(seg, base + off, bytes))
                    };
                    debug_assert!(done, "host segment range");
                } else if gpu.mapped_pool {
                    // Unified memory: one copy, straight into the mapped pool.
                    gpu.write_mapped_range(buf, base + off, len as u64, |view| {
                        // SAFETY: no writer of these host pages during the
                        // copy (the caller's protocol, see above); the update
                        // lock (`st`) keeps every other runtime path off them.
                        #[allow(unsafe_code, reason = "host-copy borrow; argued inline")]
                        let () = unsafe { self.arena.with_host(host_off, len, |bytes| view.copy_from_slice(bytes)) };
                    })?;
                } else {
                    // Pipelined through the upload ring: the copy of one
                    // chunk into a mapped staging buffer overlaps the GPU
                    // copy of the previous ones.
                    // SAFETY: as above: no writer of these host pages while
                    // the borrow lasts (it ends when the last chunk is in a
                    // staging buffer).
                    #[allow(unsafe_code, reason = "host-copy borrow; argued inline")]
                    let queued = unsafe {
                        self.arena.with_host(host_off, len, |bytes| gpu.staging.upload(gpu, buf, base + off, bytes))
                    };
                    queued?;
                }
                copies += 1;
                done += k;
            }
            for i in 0..n {
                st.set_frame(p + i, f + i);
            }
            p += n;
        }
        Ok(copies)
    }

    /// Discard the read-ahead in flight if it covers a page of `[a, b)`.
    fn drop_readahead(&self, a: u32, b: u32) {
        let staging = &self.gpu.staging;
        if let Some(r) = staging.take_readahead() {
            if r.first < b && a < r.end {
                staging.discard(r.download);
            } else {
                staging.set_readahead(r);
            }
        }
    }

    /// Copy device-owned runs (inside `[a, b)`) back through the download
    /// ring: the read-ahead of a sequential stream if it holds them all and
    /// is still valid, else new copies, one submission per staging chunk,
    /// each copied into the host copy while the next ones transfer. With
    /// `next_span`, the copies of the next span (a sequential stream's, or
    /// the next of a multi-span migration) are queued before this span is
    /// copied out, so that the device's copy of the next span overlaps the
    /// CPU's copy of this one.
    pub(super) fn copy_back_staged(
        &self,
        st: &State,
        a: u32,
        b: u32,
        device_runs: &[(u32, u32)],
        next_span: Option<(u32, u32)>,
    ) -> Result<(), DeviceError> {
        let gpu = &self.gpu;
        let ahead = gpu.staging.take_readahead().and_then(|r| {
            // Valid: no launch since (a kernel may have written the pages),
            // and every page wanted is in it, on the frame it was copied
            // from (a page that left the device and came back since went
            // through `upload`, which dropped the read-ahead; this is the
            // belt to those braces).
            let valid = r.epoch == st.epoch
                && device_runs.iter().all(|&(ra, rb)| {
                    ra >= r.first
                        && rb <= r.end
                        && (ra..rb).all(|p| r.frames[(p - r.first) as usize] == st.frames_of.get(p as usize))
                });
            if valid {
                Some(r.download)
            } else {
                if r.first < b && a < r.end {
                    gpu.staging.discard(r.download);
                } else {
                    gpu.staging.set_readahead(r);
                }
                None
            }
        });
        let download = match ahead {
            Some(d) => {
                tracing::trace!(a, b, "d2h from the read-ahead");
                d
            }
            None => self.start_download(st, device_runs)?,
        };
        if let Some(next) = next_span {
            self.read_ahead(st, next);
        }
        gpu.staging.finish(gpu, download, |host, bytes| {
            // Only the device-owned pages of this span: a read-ahead may
            // hold more (pages the host copy of which is current, or
            // outside the span).
            let (lo, hi) = (host, host + bytes.len());
            for &(ra, rb) in device_runs {
                let (x, y) = ((ra as usize * PAGE_SIZE).max(lo), (rb as usize * PAGE_SIZE).min(hi));
                if x < y {
                    // SAFETY: these pages are device-owned, hence zapped from
                    // the user view (no program thread reads or writes them
                    // until `migrate_back_span` restores them after this
                    // copy), not coherent (never imported), and the update
                    // lock (`st`) keeps every other runtime path off them;
                    // `bytes` is a mapped staging buffer, not arena memory.
                    #[allow(unsafe_code, reason = "host-copy write; argued inline")]
                    let () = unsafe { self.arena.write_host(x, &bytes[x - lo..y - lo]) };
                }
            }
        })
    }

    /// Queue copies of the device-owned runs `runs` into download slots.
    fn start_download(&self, st: &State, runs: &[(u32, u32)]) -> Result<crate::staging::Download, DeviceError> {
        let gpu = &self.gpu;
        let mut pieces: Vec<(&wgpu::Buffer, u64, usize, u64)> = Vec::new();
        for &(ra, rb) in runs {
            self.for_each_frame_piece(st, ra, rb, |p, seg, off, n| {
                let (buf, base) = gpu.segment(seg);
                pieces.push((buf, base + off, p as usize * PAGE_SIZE, u64::from(n) * PAGE_SIZE as u64));
            });
        }
        gpu.staging.download(gpu, &pieces)
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
        let download = self.start_download(st, &device_runs)?;
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
    pub(super) fn copy_back_mapped(&self, st: &State, device_runs: &[(u32, u32)]) -> Result<(), DeviceError> {
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
    pub(super) fn for_each_frame_piece(&self, st: &State, ra: u32, rb: u32, mut f: impl FnMut(u32, usize, u64, u32)) {
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
    pub(super) fn fault_span(&self, st: &State, page: u32) -> (u32, u32) {
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
    /// starts the copies of the stream's next span ([`Self::read_ahead`]).
    pub(super) fn migrate_back(&self, st: &mut State, page: u32) -> Result<u64, DeviceError> {
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
        let next = if self.prefetch && sequential && self.reads_ahead() { Self::next_stream_span(st, b) } else { None };
        self.migrate_back_span_ahead(st, a, b, next)
    }

    /// Move every device-owned page of `spans` (each at most
    /// [`STAGING_PAGES`] pages) back to the host, span by span; on the
    /// staged path the device's copy of each span is queued before the CPU
    /// copies out the one before. Returns the pages moved.
    pub(super) fn migrate_back_spans(&self, st: &mut State, spans: &[(u32, u32)]) -> Result<u64, DeviceError> {
        let ahead = self.reads_ahead();
        let mut moved = 0;
        for (i, &(a, b)) in spans.iter().enumerate() {
            let next = spans.get(i + 1).copied().filter(|_| ahead);
            moved += self.migrate_back_span_ahead(st, a, b, next)?;
        }
        Ok(moved)
    }

    /// `[a, b)` cut into spans of at most [`STAGING_PAGES`] pages.
    pub(super) fn spans_of(a: u32, b: u32) -> Vec<(u32, u32)> {
        (a..b).step_by(STAGING_PAGES as usize).map(|x| (x, (x + STAGING_PAGES).min(b))).collect()
    }

    /// Move every device-owned page of `[a, b)` (at most [`STAGING_PAGES`]
    /// pages) back to the host, in three phases: *setup* (collect the
    /// device-owned runs), *pages* (one submit copying each frame-contiguous
    /// piece into the staging buffer, then into the alias view), *finalize*
    /// (free the frames, invalidate the PTEs, restore the CPU mappings). The
    /// update lock is held throughout, so no other access sees a page in
    /// flight: faults on it wait for the lock.
    pub(super) fn migrate_back_span(&self, st: &mut State, a: u32, b: u32) -> Result<u64, DeviceError> {
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
        let _span = tracing::debug_span!(
            "svm_d2h_batch",
            first_page = a,
            pages = b - a,
            label = %crate::label::trace_label(self.arena.base() + a as usize * PAGE_SIZE)
        )
        .entered();
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
        let mut moved = 0u64;
        let mut freed = Vec::with_capacity((b - a) as usize);
        for &(ra, rb) in &device_runs {
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
        for &(ra, rb) in &device_runs {
            self.arena
                .restore(ra as usize * PAGE_SIZE, (rb - ra) as usize * PAGE_SIZE)
                .map_err(|e| DeviceError::Unexpected(format!("restoring CPU access: {e}")))?;
        }
        tracing::trace!(a, b, moved, "migrated back");
        Ok(moved)
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
