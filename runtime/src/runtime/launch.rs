//! Launch: validate the declared and bound ranges, wait for the launches in
//! flight whose pages conflict (`flight`), make the ranges resident and map
//! them (`residency`), and submit a pass (`pass`). A *queued* launch is
//! retired by whoever needs it after the GPU is done (its handle, a fault on
//! its pages, a conflicting launch); a replayable launch, or one with a
//! timeout, is *driven* by its caller pass after pass, the update lock
//! released while each pass runs.

use parking_lot::MutexGuard;

use super::flight::FlightShared;
use super::pass::Pass;
use super::residency::CopyIn;
use super::*;
use crate::bind::Checked;
use prepare::{Prepared, Request};

mod prepare;

impl Svm {
    /// Run a kernel to completion: [`Self::launch_with`] with default
    /// options (not replayable: every access must be declared).
    pub fn launch(&self, kernel: &Kernel, desc: &LaunchDescriptor<'_>) -> Result<(), LaunchError> {
        self.launch_with(kernel, desc, &LaunchOptions::default()).map(|_| ())
    }

    /// Run a kernel to completion.
    ///
    /// Before dispatch, every declared page is made device-resident (the
    /// pages a kernel may write are first taken away from the CPU), and the
    /// page table maps exactly the declared ranges (plus, for a replayable
    /// launch, every page the device already owns). Afterwards, written pages
    /// stay on the device until the CPU touches them; read-only pages were
    /// never taken from the CPU and their device copy is dropped.
    ///
    /// A replayable launch turns accesses to unmapped allocated pages into
    /// GPU faults, migrates them with the chunk around them (read faults as
    /// read-only copies, write faults as device-owned chunks) and replays.
    ///
    /// The runtime is not locked while the kernel runs: CPU faults on pages
    /// the kernel does not use, allocation, other launches proceed (see
    /// [`crate::LaunchQueue`] for launches that do not wait).
    pub fn launch_with(
        &self,
        kernel: &Kernel,
        desc: &LaunchDescriptor<'_>,
        opts: &LaunchOptions,
    ) -> Result<LaunchReport, LaunchError> {
        let _span = tracing::info_span!("svm_launch", kernel = %kernel.label).entered();
        if !opts.replayable && opts.timeout.is_none() {
            let f = self.inner.launch_queued(kernel, desc, false)?;
            // From submit to the log read back: the kernel (and the queue's
            // latency).
            let _kernel = tracing::debug_span!("svm_kernel", kernel = %kernel.label, bound = !kernel.prelude).entered();
            return self.inner.wait_result(&f);
        }
        self.inner.launch_driven(kernel, desc, opts)
    }
}

impl Svm {
    /// Submit a launch that does not wait for its kernel (see
    /// [`crate::LaunchQueue`]); replayable launches and launches with a
    /// timeout run to completion here (`Err(report)` of the finished run).
    pub(crate) fn submit(
        &self,
        kernel: &Kernel,
        desc: &LaunchDescriptor<'_>,
        opts: &LaunchOptions,
    ) -> Result<Result<Arc<FlightShared>, LaunchReport>, LaunchError> {
        let _span = tracing::info_span!("svm_launch", kernel = %kernel.label).entered();
        if opts.replayable || opts.timeout.is_some() {
            return self.inner.launch_driven(kernel, desc, opts).map(Err);
        }
        self.inner.launch_queued(kernel, desc, true).map(Ok)
    }

    /// Wait for a submitted launch and take its result.
    ///
    /// In a forked child: [`DeviceError::NotInherited`] at once (the
    /// completion thread is the parent's; the state lock may have been held
    /// at the fork).
    pub(crate) fn wait_submitted(&self, f: &Arc<FlightShared>) -> Result<LaunchReport, LaunchError> {
        self.inner.check_process()?;
        self.inner.wait_result(f)
    }

    /// Wait until a submitted launch is retired, leaving its result (in a
    /// forked child: nothing to wait for there).
    pub(crate) fn wait_retired(&self, f: &Arc<FlightShared>) {
        if self.inner.foreign() {
            return;
        }
        self.inner.wait_retired(f);
    }
}

impl Inner {
    /// The checks that need no lock: kernel, bindings, arguments, dispatch.
    /// A kernel without the prelude has one pipeline: built here, before
    /// the update lock (a driver may compile only once the running kernel
    /// is done, as lavapipe does).
    fn check_launch<'d>(
        &self,
        kernel: &Kernel,
        desc: &LaunchDescriptor<'d>,
    ) -> Result<(Vec<Checked<'d>>, Vec<u32>), LaunchError> {
        let gpu = &self.gpu;
        self.check_process()?;
        if kernel.runtime_id != self.id {
            return Err(LaunchError::ForeignKernel(kernel.label.clone()));
        }
        if !kernel.prelude {
            self.pipeline(kernel, crate::kernel::Variant::PLAIN)?;
        }
        let bound = crate::bind::check(kernel, desc.bindings, &gpu.device.limits())?;
        if !desc.args.is_empty() && !kernel.reads_args {
            return Err(LaunchError::ArgsUnread { kernel: kernel.label.clone(), given: desc.args.len() });
        }
        let mut words = Vec::with_capacity(MAX_ARG_WORDS as usize);
        for a in desc.args {
            a.push_words(&mut words);
        }
        if words.len() > MAX_ARG_WORDS as usize {
            return Err(LaunchError::TooManyArgs { words: words.len(), max: MAX_ARG_WORDS as usize });
        }
        if desc.workgroups.contains(&0) || desc.workgroups.iter().any(|&w| w > gpu.max_workgroups) {
            return Err(LaunchError::BadDispatch { workgroups: desc.workgroups, max: gpu.max_workgroups });
        }
        Ok((bound, words))
    }

    /// Submit a launch that does not replay: its pass is tracked in flight
    /// and retired by whoever needs it. `zap_in_place`: the caller's borrows
    /// may end before the kernel does (a handle can be forgotten), so pages
    /// it writes in place (coherent) are taken from the CPU until it
    /// retires — a CPU access waits for the kernel instead of racing it.
    pub(crate) fn launch_queued(
        &self,
        kernel: &Kernel,
        desc: &LaunchDescriptor<'_>,
        zap_in_place: bool,
    ) -> Result<Arc<FlightShared>, LaunchError> {
        let (bound, words) = self.check_launch(kernel, desc)?;
        // Launches encode and submit in one order (a pass carries the page
        // table and arguments written before its submit); the update lock
        // is released before the submit, which may wait for the device.
        let mut order = self.launch_order.lock();
        let mut guard = self.state.lock();
        self.gpu.check_lost()?;
        let req = Request {
            kernel,
            bound: &bound,
            access: desc.access,
            replayable: false,
            undeclared_writes: false,
            no_evict: false,
            defer_copies: true,
            zaps: zap_in_place,
        };
        let prep = self.prepare(&mut guard, &mut order, &req)?;
        let st = &mut *guard;
        let (mut zapped, mut protected) = (Vec::new(), Vec::new());
        let mut zap = || -> Result<(), LaunchError> {
            for &(a, b, write) in prep.decl.iter().filter(|_| zap_in_place) {
                let in_place =
                    |p: u32| self.gpu.mode == MappingMode::Coherent || st.advice[p as usize] & advice::COHERENT != 0;
                for (x, y) in runs(a, b, in_place) {
                    let (o, l) = (x as usize * PAGE_SIZE, (y - x) as usize * PAGE_SIZE);
                    let os = |e: svm_migrate::MigrateError| LaunchError::Os(e.to_string());
                    if !write && self.arena.has_write_protect() {
                        // Inputs read in place: a CPU write waits for the
                        // kernel instead of changing what it reads.
                        self.arena.write_protect(o, l).map_err(os)?;
                        protected.push((x, y));
                    } else {
                        self.arena.zap(o, l).map_err(os)?;
                        zapped.push((x, y));
                    }
                }
            }
            Ok(())
        };
        let zapped_ok = zap();
        let pass = Pass {
            kernel,
            groups: &prep.groups,
            words: &words,
            workgroups: desc.workgroups,
            replayable: false,
            slab_writes: &prep.slab_writes,
        };
        let encoded = zapped_ok
            .and_then(|()| self.encode_pass(st, &pass, prep.extents.as_deref(), prep.busy.clone(), false, false));
        st.pinned.clear();
        match encoded {
            Ok((mut f, cmds)) => {
                // (The pass writes the discarded pages: they are its once
                // it is submitted; until then they go back on failure.)
                let discarded = std::mem::take(&mut st.discarded_fresh);
                f.temporary = prep.temporary;
                f.report = prep.report;
                f.zapped_in_place = zapped;
                f.protected_in_place = protected;
                f.release_frames = std::mem::take(&mut st.deferred_free);
                let copies = st.copies.take().unwrap_or_default();
                let shared = self.track(st, f);
                drop(guard);
                let sent = self.copy_and_submit(&shared, cmds, copies, false);
                drop(order);
                if let Err((e, undone)) = sent {
                    self.unsent(&mut self.state.lock(), &shared, &e, &undone, discarded);
                    return Err(e);
                }
                Ok(shared)
            }
            Err(e) => {
                let _ = self.flush_copies(st);
                st.copies = None;
                let _ = self.settle_copies(st, prep.temporary);
                self.return_discarded(st);
                for (a, b) in zapped {
                    let _ = self.arena.restore(a as usize * PAGE_SIZE, (b - a) as usize * PAGE_SIZE);
                }
                for (a, b) in protected {
                    let _ = self.arena.write_unprotect(a as usize * PAGE_SIZE, (b - a) as usize * PAGE_SIZE);
                }
                self.release_deferred_now(st);
                Err(e)
            }
        }
    }

    /// With the update lock released and the pass's flight tracked (its
    /// pages busy): make its queued copies, then submit it (`now`: never
    /// batched behind a running pass, see `submit`). On a failure, the
    /// error and the copies not made.
    fn copy_and_submit(
        &self,
        shared: &Arc<FlightShared>,
        cmds: Vec<wgpu::CommandBuffer>,
        copies: Vec<CopyIn>,
        now: bool,
    ) -> Result<(), (LaunchError, Vec<CopyIn>)> {
        self.run_copies(copies, true).map_err(|(e, undone)| (e.into(), undone))?;
        self.submit_pass(shared, cmds, now).map_err(|e| (e, Vec::new()))
    }

    /// A tracked pass that was not sent (`copy_and_submit` failed): its
    /// copies not made give their pages back, its `write_discard` pages go
    /// back to the host, and the flight is abandoned with `e`.
    fn unsent(
        &self,
        st: &mut State,
        shared: &Arc<FlightShared>,
        e: &LaunchError,
        undone: &[CopyIn],
        discarded: Vec<(u32, u32)>,
    ) {
        self.undo_copies(st, undone);
        st.discarded_fresh = discarded;
        self.return_discarded(st);
        self.abandon(st, shared, e);
    }

    /// Wait until a queued launch is retired (its result stored).
    pub(crate) fn wait_retired(&self, f: &Arc<FlightShared>) {
        let mut guard = self.state.lock();
        self.wait_flights(&mut guard, |st| {
            st.flights.iter().find(|x| Arc::ptr_eq(&x.shared, f)).map(|x| x.shared.clone())
        });
    }

    /// Wait for a queued launch and take its result.
    pub(crate) fn wait_result(&self, f: &Arc<FlightShared>) -> Result<LaunchReport, LaunchError> {
        self.wait_retired(f);
        f.result
            .lock()
            .take()
            .unwrap_or_else(|| Err(DeviceError::Unexpected("the launch's result was taken already".into()).into()))
    }

    /// A replayable launch, or one with a timeout: pass after pass on the
    /// caller's thread, other operations waiting for it where they conflict
    /// (a replayable launch maps what is resident: everything waits for it).
    fn launch_driven(
        &self,
        kernel: &Kernel,
        desc: &LaunchDescriptor<'_>,
        opts: &LaunchOptions,
    ) -> Result<LaunchReport, LaunchError> {
        if opts.timeout == Some(core::time::Duration::ZERO) {
            // (Every kernel runs past it: the device would be declared lost.)
            return Err(LaunchError::ZeroTimeout);
        }
        let (bound, words) = self.check_launch(kernel, desc)?;
        // (Held for the whole launch: its passes are encoded and submitted
        // in turn; other launches wait.)
        let mut order = self.launch_order.lock();
        let mut guard = self.state.lock();
        self.gpu.check_lost()?;
        let req = Request {
            kernel,
            bound: &bound,
            access: desc.access,
            replayable: opts.replayable,
            undeclared_writes: opts.undeclared_writes,
            no_evict: false,
            defer_copies: true,
            zaps: false,
        };
        let prep = self.prepare(&mut guard, &mut order, &req)?;
        let Prepared { decl, mut busy, groups, mut extents, slab_writes, mut temporary, mut report } = prep;
        // Host pages copied for read faults, write-protected on the CPU
        // while copied and used (unprotected after the launch).
        let mut guarded: Vec<(u32, u32)> = Vec::new();
        let pass = Pass {
            kernel,
            groups: &groups,
            words: &words,
            workgroups: desc.workgroups,
            replayable: opts.replayable,
            slab_writes: &slab_writes,
        };
        let result = (|| loop {
            let st = &mut *guard;
            let (mut f, cmds) = self.encode_pass(st, &pass, extents.as_deref(), busy.clone(), true, opts.replayable)?;
            let discarded = std::mem::take(&mut st.discarded_fresh);
            f.release_frames = std::mem::take(&mut st.deferred_free);
            // (This pass's copies — the first one's, or those its faults
            // asked for — made with the lock released, its flight holding
            // their pages busy.)
            let copies = st.copies.take().unwrap_or_default();
            let shared = self.track(st, f);
            // (Not batched: the caller waits for each pass, and a timeout
            // counts from the submit.)
            let sent = MutexGuard::unlocked(&mut guard, || self.copy_and_submit(&shared, cmds, copies, true));
            if let Err((e, undone)) = sent {
                self.unsent(&mut guard, &shared, &e, &undone, discarded);
                return Err(e);
            }
            // (A timeout past what `Instant` holds is no limit.)
            let deadline = opts.timeout.and_then(|t| Instant::now().checked_add(t));
            let kernel_span =
                tracing::debug_span!("svm_kernel", kernel = %kernel.label, bound = !kernel.prelude).entered();
            if !self.wait_gpu(&mut guard, &shared, deadline) {
                let st = &mut *guard;
                let after = opts.timeout.unwrap_or_default();
                // (Its frames stay taken: the kernel may still use them.)
                let _ = self.take_flight(st, &shared);
                let why = format!("kernel {:?} ran past its {after:?} timeout", kernel.label);
                self.lose_device(st, &why, &busy);
                self.finish_flight(&shared, None);
                return Err(LaunchError::Timeout { after });
            }
            let st = &mut *guard;
            let mut f = self.take_flight(st, &shared).expect("a driven pass is retired by its owner only");
            let outcome = self.read_outcome(st, &mut f);
            drop(kernel_span);
            st.frames.free_many(&std::mem::take(&mut f.release_frames));
            self.finish_flight(&shared, None);
            let (errors, faults) = outcome?;
            if let Some(e) = errors {
                return Err(e);
            }
            if faults.is_empty() {
                return Ok(());
            }
            extents = None;
            let want = self.serve_gpu_faults(st, &decl, &faults, opts, &mut report, &mut guarded)?;
            // (Queued for the next pass, whose flight claims them: the lock
            // is held from here to its `track`. On an error they are made
            // below, before anything is given back.)
            st.copies = Some(Vec::new());
            let changed = self.map_ranges(
                st,
                &want,
                &mut temporary,
                &mut report,
                Mapping { pin: true, ptes: true, evict: true },
            )?;
            if changed == 0 {
                return Err(LaunchError::NoProgress { pages: self.fault_addrs(&faults) });
            }
            busy = merge_ranges(busy.iter().chain(&want).copied().collect());
            report.replays += 1;
        })();

        let st = &mut *guard;
        st.pinned.clear();
        // (A first pass that was never encoded: its copies are made before
        // anything is given back.)
        let _ = self.flush_copies(st);
        st.copies = None;
        // (A first pass that was never submitted: its discards go back.)
        self.return_discarded(st);
        self.release_deferred_now(st);
        // Read-only copies are dropped, except ReadMostly ones.
        let mut post = self.settle_copies(st, temporary);
        // Pages guarded for a read fault's copy are writable again unless a
        // ReadMostly copy of them is kept.
        for (a, b) in guarded {
            for (ra, rb) in runs(a, b, |p| !st.dup[p as usize] && st.frames_of.get(p as usize) == HOST) {
                let (o, l) = (ra as usize * PAGE_SIZE, (rb - ra) as usize * PAGE_SIZE);
                if let Err(e) = self.arena.write_unprotect(o, l) {
                    post = post.and(Err(LaunchError::Os(e.to_string())));
                }
            }
        }
        // PreferredLocation(Host): written pages go straight back. Only the
        // ranges this launch mapped can hold such pages (launch cost stays
        // proportional to the working set, not to the arena).
        if post.is_ok() {
            post = self.flush_preferred_host(st, &busy).map_err(LaunchError::from);
        }
        let c = &self.stats;
        Counters::add(&c.launches, 1);
        Counters::add(&c.gpu_faults, report.gpu_fault_pages);
        Counters::add(&c.replays, u64::from(report.replays));
        tracing::debug!(kernel = %kernel.label, ?report, "launch");
        result.and(post).map(|()| report)
    }

    /// Addresses of faulting pages (for errors).
    fn fault_addrs(&self, faults: &[(u32, bool)]) -> Vec<u64> {
        faults.iter().map(|&(p, _)| (self.arena.base() + p as usize * PAGE_SIZE) as u64).collect()
    }

    /// A replayable pass's GPU faults: each checked against what the launch
    /// may do (reads of allocated pages, writes only inside ranges declared
    /// read-write, or anywhere allocated with `allow_undeclared_writes`; the
    /// rest are errors, whatever wrote the log), then the chunk around each
    /// as ranges to map. Read faults' host pages are write-protected first.
    fn serve_gpu_faults(
        &self,
        st: &mut State,
        decl: &[(u32, u32, bool)],
        faults: &[(u32, bool)],
        opts: &LaunchOptions,
        report: &mut LaunchReport,
        guarded: &mut Vec<(u32, u32)>,
    ) -> Result<Vec<(u32, u32, bool)>, LaunchError> {
        report.gpu_fault_pages += faults.len() as u64;
        if report.replays >= opts.max_replays {
            return Err(LaunchError::ReplayLimit { replays: report.replays, pending: self.fault_addrs(faults) });
        }
        let declared = |p: u32| {
            let i = decl.partition_point(|r| r.1 <= p);
            decl.get(i).filter(|r| r.0 <= p).copied()
        };
        let mut refused = Vec::new();
        let mut want: Vec<(u32, u32, bool)> = Vec::with_capacity(faults.len());
        // The chunk around each faulting page, inside its allocation and,
        // for a write, inside its read-write declaration.
        let chunk_pages = (self.chunk / PAGE_SIZE) as u32;
        for &(p, write) in faults {
            let addr = (self.arena.base() + p as usize * PAGE_SIZE) as u64;
            let Some((s, l)) = st.ranges.containing(p as usize * PAGE_SIZE).filter(|_| p < st.table.len()) else {
                refused.push(KernelFault { addr, kind: KernelFaultKind::Unallocated });
                continue;
            };
            let (mut lo, mut hi) = (page_of(s), page_of(s + l));
            if write && st.slabs.is_slab(p) && st.table.get(PageIndex(p)).is_valid() {
                // The bytes it may write there were admitted already.
                refused.push(KernelFault { addr, kind: KernelFaultKind::ReadOnly });
                continue;
            }
            if write && !opts.undeclared_writes {
                match declared(p) {
                    Some((a, b, true)) => (lo, hi) = (lo.max(a), hi.min(b)),
                    Some(_) => {
                        refused.push(KernelFault { addr, kind: KernelFaultKind::ReadOnly });
                        continue;
                    }
                    None => {
                        refused.push(KernelFault { addr, kind: KernelFaultKind::NotDeclared });
                        continue;
                    }
                }
            }
            let a = (p / chunk_pages * chunk_pages).max(lo);
            let b = (p / chunk_pages * chunk_pages + chunk_pages).min(hi);
            want.push((a, b, write));
        }
        if !refused.is_empty() {
            let total = u32::try_from(refused.len()).unwrap_or(u32::MAX);
            refused.truncate(ERROR_RECORDS as usize);
            return Err(LaunchError::Kernel { faults: refused, total });
        }
        want.sort_unstable();
        want.dedup();
        let mut want = merge_ranges(want);
        // Pages another device mirroring the arena holds (allocated after
        // this launch took every lease) are not mapped, nor protected:
        // faulting again on them alone is `NoProgress` (`mirror.rs`).
        if !self.foreign_runs(want.iter().map(|&(a, b, _)| (a, b))).is_empty() {
            want = want
                .into_iter()
                .flat_map(|(a, b, w)| self.held_runs(a, b).into_iter().map(move |(x, y)| (x, y, w)))
                .collect();
        }
        // Read faults copy pages this launch did not declare: safe code
        // elsewhere may hold a `&mut` to them. Write-protect the host pages
        // first, so that no CPU write runs during the copy or the kernel (it
        // waits for the launch, then drops the copy), as ReadMostly copies
        // are.
        if self.arena.has_write_protect() {
            for &(a, b, write) in &want {
                if write {
                    continue;
                }
                let fresh: Vec<(u32, u32)> = runs(a, b, |p| {
                    st.frames_of.get(p as usize) == HOST && st.advice[p as usize] & advice::COHERENT == 0
                })
                .collect();
                for (ra, rb) in fresh {
                    let (o, l) = (ra as usize * PAGE_SIZE, (rb - ra) as usize * PAGE_SIZE);
                    self.arena.write_protect(o, l).map_err(|e| LaunchError::Os(e.to_string()))?;
                    guarded.push((ra, rb));
                }
            }
        }
        Ok(want)
    }
}
