//! Advice and prefetch: `Svm::advise` (ReadMostly, PreferredLocation,
//! AccessedBy's host import) and `Svm::prefetch`.

use super::*;

impl Svm {
    /// Where the pages of `[addr, addr + len)` are and what advice they
    /// carry; `BadRange` unless the range lies in live allocations.
    pub fn range_info(&self, addr: *const u8, len: usize) -> Result<crate::advise::RangeInfo, AdviseError> {
        let inner = &*self.inner;
        inner.check_process()?;
        // Pages another mirror holds: asked of it first (its lock, then
        // this one's; a snapshot, as the rest).
        let elsewhere = inner.pages_on_other_devices(addr as usize, len);
        let st = inner.state.lock();
        let (a, b) =
            inner.page_range(&st, addr as usize, len).ok_or(AdviseError::BadRange { addr: addr as usize, len })?;
        let mut r = crate::advise::RangeInfo { pages: u64::from(b - a), ..Default::default() };
        let whole_arena_in_place = inner.gpu.mode == MappingMode::Coherent;
        for p in a..b {
            let (i, adv) = (p as usize, st.advice[p as usize]);
            let count = |c: &mut u64, yes: bool| *c += u64::from(yes);
            count(&mut r.device, st.owned(p));
            count(&mut r.duplicated, st.dup[i]);
            let other = elsewhere.iter().any(|&(x, y)| (x..y).contains(&p));
            count(&mut r.other_device, other);
            count(&mut r.host, st.frames_of.get(i) == HOST && !other);
            count(&mut r.in_place, whole_arena_in_place || adv & advice::COHERENT != 0);
            count(&mut r.read_mostly, adv & advice::READ_MOSTLY != 0);
            count(&mut r.preferred_host, adv & advice::PREFER_HOST != 0);
            count(&mut r.preferred_device, adv & advice::PREFER_DEVICE != 0);
        }
        Ok(r)
    }

    /// Give advice for `[addr, addr + len)`; see [`Advice`] for the effects.
    pub fn advise(&self, addr: *const u8, len: usize, advice: Advice) -> Result<(), AdviseError> {
        let inner = &*self.inner;
        inner.check_process()?;
        let mut guard = inner.state.lock();
        // AccessedBy gives the device the host pages in place: pages
        // another device mirroring the arena holds come home first
        // (`mirror.rs`). Decided again after every wait (the lock released).
        let foreign = |st: &State| match inner.page_range(st, addr as usize, len) {
            Some((a, b)) if matches!(advice, Advice::AccessedBy) => inner.foreign_runs([(a, b)]),
            _ => Vec::new(),
        };
        loop {
            let away = foreign(&guard);
            if !away.is_empty() {
                inner.take_leases(&mut guard, &away)?;
                continue;
            }
            // Advice changes how pages are kept: launches in flight using
            // them finish first (AccessedBy rebinds the one coherent
            // window: all).
            match inner.page_range(&guard, addr as usize, len) {
                Some(_) if matches!(advice, Advice::AccessedBy | Advice::UnsetAccessedBy) => {
                    inner.wait_all_flights(&mut guard);
                }
                Some((a, b)) => inner.wait_pages(&mut guard, a, b),
                None => {}
            }
            if foreign(&guard).is_empty() {
                break;
            }
        }
        let st = &mut *guard;
        let (a, b) =
            inner.page_range(st, addr as usize, len).ok_or(AdviseError::BadRange { addr: addr as usize, len })?;
        let (a, b) = (a as usize, b as usize);
        match advice {
            Advice::ReadMostly => st.advice[a..b].iter_mut().for_each(|x| *x |= advice::READ_MOSTLY),
            Advice::UnsetReadMostly => {
                st.advice[a..b].iter_mut().for_each(|x| *x &= !advice::READ_MOSTLY);
                for p in a..b {
                    if st.dup[p] {
                        inner.drop_copy(st, p as u32)?;
                    }
                }
            }
            Advice::PreferredLocation(Location::Host) => {
                st.advice[a..b].iter_mut().for_each(|x| *x = (*x & !advice::PREFER_DEVICE) | advice::PREFER_HOST)
            }
            Advice::PreferredLocation(Location::Device) => {
                st.advice[a..b].iter_mut().for_each(|x| *x = (*x & !advice::PREFER_HOST) | advice::PREFER_DEVICE)
            }
            Advice::UnsetPreferredLocation => {
                st.advice[a..b].iter_mut().for_each(|x| *x &= !(advice::PREFER_HOST | advice::PREFER_DEVICE))
            }
            // The coherent mode already uses every page in place.
            Advice::AccessedBy if inner.gpu.mode == MappingMode::Coherent => {}
            Advice::AccessedBy => inner.make_coherent(st, a as u32, b as u32, false)?,
            Advice::UnsetAccessedBy => {
                if st.coherent.as_ref().is_some_and(|c| (c.first as usize) < b && a < c.end as usize) {
                    inner.drop_coherent(st);
                }
            }
        }
        Ok(())
    }

    /// Start migrating `[addr, addr + len)` to `to` in the background.
    /// To the device: pages advised ReadMostly get kept read-only copies,
    /// the others become device-owned (the CPU faults them back). To the
    /// host: device-owned pages come back. [`Prefetch::wait`] returns the
    /// pages moved, or the error (`BadRange`, `PoolExhausted`, device).
    pub fn prefetch(&self, addr: *const u8, len: usize, to: Location) -> Prefetch {
        let (tx, rx) = std::sync::mpsc::channel();
        let job: PrefetchJob = (addr as usize, len, to, tx);
        // (A forked child: the prefetch thread is the parent's.)
        let queued = match self.inner.check_process() {
            Ok(()) => self.inner.prefetcher.queue(&self.inner, job).map(|()| rx),
            Err(e) => Err(e.into()),
        };
        Prefetch { done: Some(queued), got: parking_lot::Mutex::new(None), runtime: self.clone() }
    }
}

/// A prefetch request: range, destination, where its result goes.
type PrefetchJob = (usize, usize, Location, std::sync::mpsc::Sender<Result<u64, LaunchError>>);

/// The runtime's one prefetch thread (started on first use): requests run
/// in the order they were made, each as `LaunchQueue::prefetch` does (after
/// the launches in flight that use its pages), instead of a thread each.
#[derive(Default)]
pub(super) struct Prefetcher {
    tx: Mutex<Option<std::sync::mpsc::Sender<PrefetchJob>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Prefetcher {
    fn queue(&self, inner: &Arc<Inner>, job: PrefetchJob) -> Result<(), LaunchError> {
        let mut tx = self.tx.lock();
        if tx.is_none() {
            let (t, rx) = std::sync::mpsc::channel::<PrefetchJob>();
            // Weak: the thread must not keep the runtime alive; it ends
            // when the runtime (holding the sender) goes.
            let weak = Arc::downgrade(inner);
            let handle = std::thread::Builder::new()
                .name("svm-prefetch".into())
                .spawn(move || {
                    while let Ok((addr, len, to, reply)) = rx.recv() {
                        let r = match weak.upgrade() {
                            Some(inner) => inner.prefetch_now(addr, len, to),
                            None => Err(LaunchError::Os("the runtime was dropped".into())),
                        };
                        let _ = reply.send(r);
                    }
                })
                .map_err(|e| LaunchError::Os(format!("spawning the prefetch thread: {e}")))?;
            *tx = Some(t);
            *self.thread.lock() = Some(handle);
        }
        let sender = tx.as_ref().expect("set above");
        sender.send(job).map_err(|_| LaunchError::Os("the prefetch thread ended".into()))
    }

    /// End the thread and wait until it has exited (from the runtime's
    /// drop: a thread that used the device must not outlive it, nor run
    /// its thread-exit teardown while the process exits — a GL driver
    /// aborted there). Not from the thread itself, which cannot hold the
    /// runtime's last reference (every request's `Prefetch` holds one).
    pub(super) fn stop(&self) {
        drop(self.tx.lock().take());
        if let Some(h) = self.thread.lock().take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

impl Svm {
    /// [`crate::LaunchQueue::prefetch`]: now, on this thread.
    pub(crate) fn prefetch_ordered(&self, addr: usize, len: usize, to: Location) -> Result<u64, LaunchError> {
        self.inner.prefetch_now(addr, len, to)
    }
}

impl Inner {
    /// Import pages `[a, b)` of the host copy for in-place device access.
    #[allow(unsafe_code, reason = "the one host import of the arena; its safety argument is inline")]
    pub(super) fn make_coherent(&self, st: &mut State, a: u32, b: u32, auto: bool) -> Result<(), AdviseError> {
        let gpu = &self.gpu;
        if !cfg!(feature = "vulkan") {
            return Err(AdviseError::Unsupported(
                "AccessedBy needs the `vulkan` feature of svm-runtime (host memory import below wgpu)",
            ));
        }
        let Some(raw) = gpu.raw.clone().filter(|_| gpu.host_import) else {
            return Err(AdviseError::Unsupported(
                "AccessedBy needs VK_EXT_external_memory_host, which this device lacks",
            ));
        };
        if st.coherent.as_ref().is_some_and(|c| c.auto) {
            // The runtime's own choice (a launch larger than the pool)
            // gives way (no launch is in flight: the callers waited).
            self.drop_coherent(st);
        }
        if st.coherent.is_some() {
            return Err(AdviseError::Unsupported(
                "one AccessedBy range at a time (the prelude has one coherent window); unset the other first",
            ));
        }
        let len = (b - a) as usize * PAGE_SIZE;
        if len as u64 > gpu.device.limits().max_storage_buffer_binding_size {
            return Err(AdviseError::Unsupported("AccessedBy range longer than one storage binding"));
        }
        self.refuse_withheld([(a, b)])?;
        // Bring the range home first: from now on only the host copy exists.
        self.migrate_back_spans(st, &Self::spans_of(a, b))?;
        for p in a..b {
            if st.dup[p as usize] {
                self.drop_copy(st, p)?;
            }
        }
        // Every page exists and is mapped for the CPU: it never faults here.
        let off = a as usize * PAGE_SIZE;
        let mapped = self.arena.populate_host(off, len).and_then(|()| self.arena.restore(off, len));
        mapped.map_err(|e| AdviseError::Device(DeviceError::Unexpected(format!("mapping the range: {e}"))))?;
        // SAFETY: the alias view of the arena is mapped read-write for the
        // arena's whole life, and `Inner` drops its state (which owns the
        // import) before the arena (field order), or, lost to a launch
        // timeout, leaks both. Program threads touching
        // the range while a kernel runs race with the kernel as they would
        // with another CPU thread; the runtime itself only copies it under
        // the update lock, and never for coherent pages.
        let import = unsafe {
            crate::vk::HostImport::new(
                &raw,
                Some("svm coherent window"),
                self.arena.host_ptr(a as usize * PAGE_SIZE),
                len,
                (),
            )
        }
        .map_err(|e| AdviseError::Device(DeviceError::Unexpected(format!("host import: {e}"))))?;
        let bind_group = gpu.bind_group_with(self.tables(st), import.buffer());
        st.advice[a as usize..b as usize].iter_mut().for_each(|x| *x |= advice::COHERENT);
        st.coherent = Some(Coherent { first: a, end: b, bind_group, _import: import, auto });
        Ok(())
    }

    /// End in-place access: the range migrates normally again.
    pub(super) fn drop_coherent(&self, st: &mut State) {
        if let Some(c) = st.coherent.take() {
            st.advice[c.first as usize..c.end as usize].iter_mut().for_each(|x| *x &= !advice::COHERENT);
            st.table.update_range(c.first..c.end, |_, p| if p.is_allocated() { Pte::ALLOCATED } else { p });
            if self.gpu.check_lost().is_err() {
                // A runaway kernel of a device declared lost may still use
                // the import: it is never released.
                std::mem::forget(c);
            }
        }
    }

    pub(super) fn prefetch_now(&self, addr: usize, len: usize, to: Location) -> Result<u64, LaunchError> {
        self.check_process()?;
        let mut guard = self.state.lock();
        loop {
            match self.prefetch_locked(&mut guard, addr, len, to) {
                // Launches in flight hold frames: after them, again.
                Err(LaunchError::PoolExhausted { .. }) if !guard.flights.is_empty() => {
                    self.wait_all_flights(&mut guard)
                }
                r => return r,
            }
        }
    }

    fn prefetch_locked(
        &self,
        guard: &mut parking_lot::MutexGuard<'_, State>,
        addr: usize,
        len: usize,
        to: Location,
    ) -> Result<u64, LaunchError> {
        if let Some((a, b)) = self.page_range(guard, addr, len) {
            self.refuse_withheld([(a, b)])?;
            loop {
                // Pages another device mirroring the arena holds come home
                // first (`mirror.rs`); decided again after.
                let foreign = self.foreign_runs([(a, b)]);
                if !foreign.is_empty() {
                    self.take_leases(guard, &foreign)?;
                    continue;
                }
                self.wait_pages(guard, a, b);
                // (Copies back under the lock — to the host, or evicting to
                // make room — not behind a running kernel.)
                let behind = match to {
                    Location::Host => self.copy_back_behind_a_pass(guard, a, b),
                    Location::Device => self.evicting_behind_a_pass(guard, &[(a, b, true)], false),
                };
                match behind {
                    Some(f) => self.wait_settled(guard, &f),
                    // (The waits released the lock: the leases checked again.)
                    None if self.foreign_runs([(a, b)]).is_empty() => break,
                    None => {}
                }
            }
        }
        let st = &mut **guard;
        self.gpu.check_lost()?;
        let (a, b) = self.page_range(st, addr, len).ok_or(LaunchError::BadRange { addr, len })?;
        let _span = tracing::debug_span!("svm_prefetch", a, b, ?to).entered();
        match to {
            Location::Device => {
                let ranges: Vec<(u32, u32, bool)> = merge_ranges(
                    runs(a, b, |p| st.advice[p as usize] & advice::READ_MOSTLY != 0)
                        .map(|(x, y)| (x, y, false))
                        .chain(
                            runs(a, b, |p| st.advice[p as usize] & advice::READ_MOSTLY == 0).map(|(x, y)| (x, y, true)),
                        )
                        .collect(),
                );
                let mut temporary = Vec::new();
                let mut report = LaunchReport::default();
                // The copies are made with the lock released, the pages
                // claimed meanwhile (as a launch's: `residency::to_device`).
                st.copies = Some(Vec::new());
                let mapped = self.map_ranges(
                    st,
                    &ranges,
                    &mut temporary,
                    &mut report,
                    Mapping { pin: true, ptes: true, evict: true },
                );
                st.pinned.clear();
                if let Err(e) = mapped {
                    let _ = self.flush_copies(st);
                    st.copies = None;
                    let _ = self.settle_copies(st, temporary);
                    return Err(e);
                }
                let copies = st.copies.take().unwrap_or_default();
                if !copies.is_empty() {
                    let claim = self.claim(st, ranges, flight::ClaimFor::Prefetch);
                    let copied = parking_lot::MutexGuard::unlocked(guard, || self.run_copies(copies, true));
                    let st = &mut **guard;
                    if let Err((_, undone)) = &copied {
                        self.undo_copies(st, undone);
                    }
                    self.end_claim(st, &claim);
                    if let Err((e, _)) = copied {
                        let _ = self.settle_copies(st, temporary);
                        return Err(e.into());
                    }
                }
                self.settle_copies(guard, temporary)?;
                Ok(report.migrated_pages)
            }
            Location::Host => Ok(self.migrate_back_spans(st, &Self::spans_of(a, b))?),
        }
    }

    /// Move the device-owned pages advised PreferredLocation(Host) among the
    /// pages a launch used (`used`) back to the host. Where that copy goes
    /// through the device's queue (the staged path) while a pass may run,
    /// it would wait behind the kernel with the update lock held (it is
    /// made at retire time, under the lock): the move is put off until no
    /// pass runs ([`Self::flush_preferred_host_later`]; a CPU access brings
    /// a page back meanwhile, as any device-owned page).
    pub(super) fn flush_preferred_host(&self, st: &mut State, used: &[(u32, u32, bool)]) -> Result<(), DeviceError> {
        let mut todo: Vec<(u32, u32)> = Vec::new();
        for &(a, b, _) in used {
            todo.extend(runs(a, b, |p| st.owned(p) && st.advice[p as usize] & advice::PREFER_HOST != 0));
        }
        if todo.is_empty() {
            return Ok(());
        }
        // (`todo` holds device-owned pages only.)
        if self.copies_back_on_the_queue(st) && st.running_pass().is_some() {
            st.prefer_host_later.extend(todo);
            return Ok(());
        }
        let spans: Vec<(u32, u32)> = todo.into_iter().flat_map(|(a, b)| Self::spans_of(a, b)).collect();
        self.migrate_back_spans(st, &spans).map(drop)
    }

    /// The moves home [`Self::flush_preferred_host`] put off, once no pass
    /// may run: pages still device-owned, advised so, and used by no flight
    /// (a flight's own retire moves those). Called after retiring.
    pub(super) fn flush_preferred_host_later(&self, st: &mut State) {
        // (Checked after every retire: the cheap tests first.)
        if st.prefer_host_later.is_empty() || (self.copies_back_on_the_queue(st) && st.running_pass().is_some()) {
            return;
        }
        let later = std::mem::take(&mut st.prefer_host_later);
        let home = |p: u32| st.owned(p) && st.advice[p as usize] & advice::PREFER_HOST != 0 && !Self::busy(st, p);
        let spans: Vec<(u32, u32)> =
            later.iter().flat_map(|&(a, b)| runs(a, b, home)).flat_map(|(a, b)| Self::spans_of(a, b)).collect();
        if let Err(e) = self.migrate_back_spans(st, &spans) {
            tracing::warn!("svm: moving PreferredLocation(Host) pages home: {e}");
        }
    }
}
