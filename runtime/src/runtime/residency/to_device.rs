//! Host → device copies: `upload` takes frames for host pages and makes one
//! [`CopyIn`] per piece (a run of frames in one pool segment, or the bound
//! blocks of a host-mapped sparse pool), run at once — or, for a launch
//! being prepared, *after the update lock is released* (HMM's
//! `migrate_vma_setup` / copy / `finalize`: the pages are claimed under the
//! lock, copied outside it, and nothing else touches them meanwhile).
//!
//! Why nothing else touches a deferred copy's pages: the launch records its
//! flight with every page it declared busy before it releases the lock, and
//! submits only after its copies. Every path that would read, move or free
//! a busy page waits for that flight (a CPU fault parks, `free`, advice and
//! prefetch wait, eviction never picks one), other launches encode only
//! after this one has submitted (`Inner::launch_order`, held across the
//! copies), and the frames were free, so no pass in flight uses them. Paths
//! under the lock that read a planned frame's contents (a bound range moved
//! together on the device) run the pending copies first
//! ([`Inner::flush_copies`]); so does every error path before it frees
//! frames or releases the lock.

use super::super::*;

/// One host → device copy of pages `[page, page + pages)` into the frames
/// `upload` took for them.
pub(in crate::runtime) enum CopyIn {
    /// Into pool segment `seg` at byte `off` (from the segment's base): a
    /// CPU copy into an imported segment, a copy into the mapped pool, or
    /// the upload ring (a discrete GPU; the sparse mode's staged blocks).
    Segment { page: u32, pages: u32, seg: usize, off: u64 },
    /// Into the bound blocks of a host-mapped sparse pool: (byte offset in
    /// the pages, the block's host address, bytes) per run of consecutive
    /// blocks.
    SparseHost { page: u32, pages: u32, blocks: Vec<(usize, BlockPtr, usize)> },
    /// No copy: the frames at `off` in segment `seg` are cleared on the
    /// device (pages whose contents the launch discards; they may hold a
    /// previous page's bytes). Queued like a copy, so that in the sparse
    /// mode it goes after the batch that binds them.
    Clear { page: u32, pages: u32, seg: usize, off: u64 },
}

impl CopyIn {
    /// The pages it fills.
    pub(in crate::runtime) fn pages(&self) -> (u32, u32) {
        match *self {
            CopyIn::Segment { page, pages, .. }
            | CopyIn::SparseHost { page, pages, .. }
            | CopyIn::Clear { page, pages, .. } => (page, page + pages),
        }
    }
}

/// The host address of a sparse block bound for a page being uploaded.
/// Valid while the block stays bound there: the page is claimed by the
/// upload (busy in the launch's flight, or the update lock held) until the
/// copy ran, and the sparse pool's host mapping lives as long as the runtime.
pub(in crate::runtime) struct BlockPtr(*mut u8);

// SAFETY: a plain address, dereferenced only by `Inner::run_copy` under the
// contract above, whichever thread runs it.
#[allow(unsafe_code, reason = "an address handed to the copying thread; argued inline")]
unsafe impl Send for BlockPtr {}

impl Inner {
    /// Take frames for host pages `[a, b)` and copy the pages in (or queue
    /// the copies, see the module's text); returns the number of copies.
    ///
    /// The caller (`map_ranges`, under the update lock) has made sure that
    /// nothing writes these host pages until the copies ran: read-write
    /// ranges are zapped from the user view first; `ReadMostly` read ranges
    /// are write-protected first; other read ranges are borrowed shared for
    /// the launch (`Access::read` / `Binding::read` take `&`; `Access::raw`
    /// is `unsafe` with that contract). They are host pages (not on the
    /// device) and not coherent (never imported).
    pub(in crate::runtime) fn upload(&self, st: &mut State, a: u32, b: u32) -> Result<u64, DeviceError> {
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
            for i in 0..n {
                st.set_frame(p + i, f + i);
            }
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
                let page = p + done;
                let job = if discard {
                    // No copy through the staging ring: the frames are
                    // cleared on the device. Only the host copy holds these
                    // pages' data now: a launch that fails before its pass
                    // gives them back.
                    st.discarded_fresh.push((page, page + k));
                    CopyIn::Clear { page, pages: k, seg, off }
                } else {
                    match st.frames.sparse().filter(|s| s.host_mapped()) {
                        Some(sparse) => {
                            let mut blocks = Vec::new();
                            // SAFETY: only addresses are collected here (the
                            // blocks were bound for these pages by `prepare`).
                            #[allow(unsafe_code, reason = "collecting block addresses; argued inline")]
                            let listed = unsafe {
                                sparse.host_runs(page, k, |q, dst, len| {
                                    blocks.push(((q - page) as usize * PAGE_SIZE, BlockPtr(dst), len));
                                })
                            };
                            debug_assert!(listed, "pages bound in a host-mapped sparse pool");
                            CopyIn::SparseHost { page, pages: k, blocks }
                        }
                        None => CopyIn::Segment { page, pages: k, seg, off },
                    }
                };
                // (A wgpu-mapped pool segment is mapped by CPU faults and
                // eviction under the lock too, and wgpu allows one map of a
                // buffer at a time: those copies are made at once.)
                let maps = matches!(job, CopyIn::Segment { .. }) && gpu.mapped_pool && !gpu.segment_is_host(seg);
                let made = match st.copies.as_mut().filter(|_| !maps) {
                    Some(queued) => {
                        queued.push(job);
                        Ok(())
                    }
                    None => self.run_copy(&job),
                };
                if let Err(e) = made {
                    // Not made: the pages from here on stay on the host (those
                    // before were copied or queued).
                    let freed: Vec<u32> = (page..p + n)
                        .map(|q| {
                            st.dup[q as usize] = false;
                            st.set_frame(q, HOST)
                        })
                        .collect();
                    st.frames.free_many(&freed);
                    return Err(e);
                }
                copies += 1;
                done += k;
            }
            p += n;
        }
        Ok(copies)
    }

    /// Make one copy of `upload`.
    ///
    /// Nothing writes the host pages while it runs (`upload`'s contract),
    /// and nothing else uses the destination frames or blocks: they were
    /// taken for these pages, which the update lock or the launch's flight
    /// keeps every other path off (see the module's text).
    pub(in crate::runtime) fn run_copy(&self, job: &CopyIn) -> Result<(), DeviceError> {
        let gpu = &self.gpu;
        let (page, end) = job.pages();
        let n = end - page;
        let (host_off, len) = (page as usize * PAGE_SIZE, n as usize * PAGE_SIZE);
        let _span = tracing::debug_span!(
            "svm_h2d_copy",
            first_page = page,
            pages = n,
            label = %crate::label::trace_label(self.arena.base() + host_off)
        )
        .entered();
        // (Cleared pages get page-cache pages too, as copied ones.)
        self.populate(page, n)?;
        match *job {
            CopyIn::Clear { seg, off, .. } => {
                // No copy: the frames (which may hold a previous page's
                // bytes) are cleared on the device.
                let (buf, base) = gpu.segment(seg);
                let mut enc =
                    gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("svm discard") });
                enc.clear_buffer(buf, base + off, Some(len as u64));
                gpu.submit([enc.finish()]);
                Counters::add(&self.stats.discarded_pages, u64::from(n));
            }
            CopyIn::SparseHost { ref blocks, .. } => {
                // SAFETY: no writer of these host pages during the copy
                // (`upload`'s contract); each block is bound for its page and
                // used by nothing else until the launch that claimed it runs
                // (see `BlockPtr`), `len` bytes long from `dst`.
                #[allow(unsafe_code, reason = "host-copy borrow and block write; argued inline")]
                let () = unsafe {
                    self.arena.with_host(host_off, len, |bytes| {
                        for (at, dst, n) in blocks {
                            std::ptr::copy_nonoverlapping(bytes[*at..*at + *n].as_ptr(), dst.0, *n);
                        }
                    })
                };
            }
            CopyIn::Segment { seg, off, .. } => {
                let (buf, base) = gpu.segment(seg);
                if gpu.segment_is_host(seg) {
                    // Unified memory, pool in imported host memory: one CPU
                    // copy, no map (nothing waits for running kernels).
                    // SAFETY: no writer of these host pages during the copy
                    // (`upload`'s contract); the frames were free when taken
                    // (no launch in flight uses them) and are claimed since.
                    #[allow(unsafe_code, reason = "host-copy borrow and pool write; argued inline")]
                    let done = unsafe {
                        self.arena.with_host(host_off, len, |bytes| gpu.write_pool_host(seg, base + off, bytes))
                    };
                    debug_assert!(done, "host segment range");
                } else if gpu.mapped_pool {
                    // Unified memory: one copy, straight into the mapped pool.
                    gpu.write_mapped_range(buf, base + off, len as u64, |view| {
                        // SAFETY: no writer of these host pages during the
                        // copy (`upload`'s contract).
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
            }
        }
        Ok(())
    }

    /// Run the copies a launch being prepared has queued, under the update
    /// lock (before anything reads or frees their frames, or the lock is
    /// released without the launch's flight recorded).
    pub(in crate::runtime) fn flush_copies(&self, st: &mut State) -> Result<(), DeviceError> {
        // (Queued binds first, copies or not: their pages may be read.
        // `run_copies` sends them, and gives every copy back on a failure.)
        let Some(queued) = st.copies.as_mut().filter(|q| !q.is_empty()) else { return self.send_binds() };
        let jobs = std::mem::take(queued);
        self.run_copies(jobs, false).map_err(|(e, rest)| {
            self.undo_copies(st, &rest);
            e
        })
    }

    /// Make queued copies in order: under the update lock ([`Self::flush_copies`])
    /// or, `unlocked`, with it released (the launch's flight or the
    /// prefetch's claim holds their pages; counted in
    /// `Stats::h2d_unlocked_pages`). On a failure, returns the copies not
    /// made (the failed one first): their pages are still only on the host
    /// ([`Self::undo_copies`]).
    pub(in crate::runtime) fn run_copies(
        &self,
        jobs: Vec<CopyIn>,
        unlocked: bool,
    ) -> Result<(), (DeviceError, Vec<CopyIn>)> {
        if let Err(e) = self.send_binds() {
            return Err((e, jobs));
        }
        let t0 = Instant::now();
        let mut jobs = jobs.into_iter();
        let mut result = Ok(());
        for job in jobs.by_ref() {
            let (a, b) = job.pages();
            if let Err(e) = self.run_copy(&job) {
                result = Err((e, std::iter::once(job).chain(jobs.by_ref()).collect()));
                break;
            }
            if unlocked && !matches!(job, CopyIn::Clear { .. }) {
                Counters::add(&self.stats.h2d_unlocked_pages, u64::from(b - a));
            }
        }
        Counters::add(&self.stats.h2d_ns, t0.elapsed().as_nanos() as u64);
        result
    }

    /// Sparse mode: send the bind batches sealed so far (in order, see
    /// `vk::BindOutbox`) — before the copies into their pages and the pass
    /// that uses them. With the update lock released (a launch's or a
    /// prefetch's copies), other threads go on meanwhile: the call waits for
    /// the work queued before it (lavapipe's does), a running kernel's.
    pub(in crate::runtime) fn send_binds(&self) -> Result<(), DeviceError> {
        // (`send` returns at once when nothing waits.)
        let Some(outbox) = self.bind_outbox.as_ref() else { return Ok(()) };
        // SAFETY: the runtime submits to the queue only under the raw
        // device's locks, which the bind takes (`Gpu::submit`,
        // `RawDevice::submit_signalled`, `Svm::submit_commands`).
        #[allow(unsafe_code, reason = "vkQueueBindSparse; contract argued inline")]
        let sent = unsafe { outbox.send() };
        // A refused batch leaves the device's bindings behind the arena's
        // bookkeeping for good (the outbox sends nothing more): the device
        // is unusable, every later operation says so.
        sent.map(drop).map_err(|e| self.gpu.fail(format!("sparse bind refused: {e}")))
    }

    /// Copies that were never made: their pages go back to the host, whose
    /// copy is still current (frames freed, PTEs unmapped, the CPU mapping
    /// restored); read-only copies among them are dropped (write
    /// protection lifted), not kept.
    pub(in crate::runtime) fn undo_copies(&self, st: &mut State, jobs: &[CopyIn]) {
        for job in jobs {
            let (a, b) = job.pages();
            let copies: Vec<(u32, u32)> = runs(a, b, |p| st.dup[p as usize]).collect();
            for (ra, rb) in copies {
                for p in ra..rb {
                    st.dup[p as usize] = false;
                    let f = st.set_frame(p, HOST);
                    st.frames.free(f);
                }
                st.table.update_range(ra..rb, |_, _| Pte::ALLOCATED);
                if self.arena.has_write_protect() {
                    let _ = self.arena.write_unprotect(ra as usize * PAGE_SIZE, (rb - ra) as usize * PAGE_SIZE);
                }
            }
            let owned: Vec<(u32, u32)> = runs(a, b, |p| st.owned(p)).collect();
            for (ra, rb) in owned {
                let freed: Vec<u32> = (ra..rb).map(|p| st.set_frame(p, HOST)).collect();
                st.frames.free_many(&freed);
                st.table.update_range(ra..rb, |_, _| Pte::ALLOCATED);
                if let Err(e) = self.arena.restore(ra as usize * PAGE_SIZE, (rb - ra) as usize * PAGE_SIZE) {
                    tracing::error!("svm: giving pages whose copy failed back to the CPU: {e}");
                }
            }
        }
    }

    /// Give host pages `[page, page + n)` page-cache pages (no holes) before
    /// they leave for the device: with userfaultfd, the CPU's access to a
    /// device-owned page must be a MINOR fault (a hole would raise a
    /// MISSING fault, which the registration does not catch).
    fn populate(&self, page: u32, n: u32) -> Result<(), DeviceError> {
        self.arena
            .populate_host(page as usize * PAGE_SIZE, n as usize * PAGE_SIZE)
            .map_err(|e| DeviceError::Unexpected(format!("populating the host copy: {e}")))
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
}
