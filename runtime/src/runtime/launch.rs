//! Launch: validate the declared and bound ranges, make them resident and
//! map them (`residency`), pick the kernel variant, dispatch, read the log
//! back, and for replayable launches serve GPU faults and dispatch again.

use super::*;

/// What one kernel pass produced: the error of a refused access, if any, and
/// the GPU faults as (page, write) pairs.
type PassOutcome = (Option<LaunchError>, Vec<(u32, bool)>);

/// How a pass's loads may read ahead of their checks (the prelude's
/// `SVM_SPECULATIVE_READS`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Speculative {
    No,
    AnyIndex,
    /// Refused loads read this word of the view instead.
    SafeWord(u32),
}

impl Speculative {
    fn code(self) -> u32 {
        match self {
            Speculative::No => 0,
            Speculative::AnyIndex => 1,
            Speculative::SafeWord(_) => 2,
        }
    }
}

/// The inputs of every pass of one launch.
#[derive(Copy, Clone)]
struct Pass<'a> {
    kernel: &'a Kernel,
    groups: &'a [Option<wgpu::BindGroup>],
    words: &'a [u32],
    workgroups: [u32; 3],
    replayable: bool,
    timeout: Option<std::time::Duration>,
}

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
    pub fn launch_with(
        &self,
        kernel: &Kernel,
        desc: &LaunchDescriptor<'_>,
        opts: &LaunchOptions,
    ) -> Result<LaunchReport, LaunchError> {
        let inner = &*self.inner;
        let gpu = &inner.gpu;
        inner.check_process()?;
        if kernel.runtime_id != inner.id {
            return Err(LaunchError::ForeignKernel(kernel.label.clone()));
        }
        let _span = tracing::info_span!("svm_launch", kernel = %kernel.label).entered();
        let bound = crate::bind::check(kernel, desc.bindings, &gpu.device.limits())?;
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
        let mut guard = inner.state.lock();
        let st = &mut *guard;
        gpu.check_lost()?;

        // 1. Declared page ranges (bound ones first), validated and merged.
        let mut decl: Vec<(u32, u32, bool)> = Vec::with_capacity(desc.access.len() + bound.len());
        let mut discard_pages: Vec<(u32, u32)> = Vec::new();
        let mut keep_pages: Vec<(u32, u32)> = Vec::new();
        for (i, b) in bound.iter().enumerate() {
            let crate::bind::Checked::Managed { addr, len, write, discard } = *b else { continue };
            let (first, last) = inner
                .page_range(st, addr, len)
                .ok_or_else(|| crate::bind::error(kernel, i, BindError::NotAllocated { addr, len }))?;
            decl.push((first, last, write));
            if !discard {
                keep_pages.push((first, last));
            } else {
                // Only the pages the range covers whole.
                let off = addr - inner.arena.base();
                let (a, b) = (page_of(off.next_multiple_of(PAGE_SIZE)), page_of(off + len));
                if a < b {
                    discard_pages.push((a, b));
                }
            }
        }
        for a in desc.access {
            if a.len == 0 {
                continue;
            }
            let off = a.addr.wrapping_sub(inner.arena.base());
            let end = off.checked_add(a.len).filter(|&e| e <= inner.arena.len());
            let Some(end) = end else { return Err(LaunchError::BadRange { addr: a.addr, len: a.len }) };
            let (first, last) = (page_of(off), page_of(end.next_multiple_of(PAGE_SIZE)));
            if st.table.entries(first..last).iter().any(|p| !p.is_allocated()) {
                return Err(LaunchError::BadRange { addr: a.addr, len: a.len });
            }
            decl.push((first, last, a.mode == AccessMode::ReadWrite));
            keep_pages.push((first, last));
        }
        let decl = merge_ranges(decl);
        // Pages whose contents the launch discards: those only
        // `Binding::write_discard` ranges cover, whole.
        let kept = |p: u32| keep_pages.iter().any(|&(a, b)| (a..b).contains(&p));
        st.discard = discard_pages.iter().flat_map(|&(a, b)| runs(a, b, |p| !kept(p)).collect::<Vec<_>>()).collect();
        st.discard.sort_unstable();
        // A replayable launch also sees what is already resident: pages the
        // device owns (read-write) and kept read-only copies, mapped as they
        // are, without pinning them (eviction may still take them; the
        // kernel then faults them back).
        // Without `allow_undeclared_writes`, the owned pages are mapped
        // read-only (a write to one not declared read-write is refused).
        let resident = if opts.replayable {
            // Runs of resident pages, from the resident index (cost follows
            // what is resident, not the arena).
            let w = opts.undeclared_writes;
            let mut r: Vec<(u32, u32, bool)> = Vec::new();
            for p in st.resident_pages() {
                let write = w && !st.dup[p as usize];
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
        // 2. Unmap the previous launch's pages, migrate and map this one's.
        for (a, b) in std::mem::take(&mut st.mapped) {
            st.table.update_range(a..b, |_, p| if p.is_allocated() { Pte::ALLOCATED } else { p });
        }
        let mut report = LaunchReport::default();
        let mut temporary: Vec<(u32, u32)> = Vec::new();
        // Host pages copied for read faults, write-protected on the CPU
        // while copied and used (unprotected after the launch).
        let mut guarded: Vec<(u32, u32)> = Vec::new();
        let result = (|| {
            // A kernel without the prelude never reads the page table:
            // its pages are made resident, but no PTE changes (nothing to
            // upload; the next pointer launch maps what it declares).
            let ptes = kernel.prelude;
            inner.map_ranges(st, &resident, &mut temporary, &mut report, false, ptes)?;
            let mapped = inner.map_ranges(st, &decl, &mut temporary, &mut report, true, ptes);
            st.discard.clear();
            mapped?;
            let placed = inner.place_bindings(st, &|i, why| crate::bind::error(kernel, i, why), &bound)?;
            let groups = crate::bind::groups(&gpu.device, &gpu.queue, kernel, &bound, &placed);
            // Accesses are checked against the mapped pages' extents when
            // they are few, otherwise against the page table. A replayable
            // launch's first pass uses the extents too when something is
            // mapped (warm data): its refused accesses to allocated pages
            // are its faults. Once a pass faults, the page table finds the
            // rest in bulk (an extent pass reports one access per
            // invocation).
            let mut extents = if !ptes || (opts.replayable && st.mapped.is_empty()) { None } else { inner.extents(st) };
            loop {
                let pass = Pass {
                    kernel,
                    groups: &groups,
                    words: &words,
                    workgroups: desc.workgroups,
                    replayable: opts.replayable,
                    timeout: opts.timeout,
                };
                let (errors, faults) = match inner.run_pass(st, &pass, extents.as_deref()) {
                    Err(LaunchError::Timeout { after }) => {
                        let why = format!("kernel {:?} ran past its {after:?} timeout", kernel.label);
                        inner.lose_device(st, &why, &decl);
                        return Err(LaunchError::Timeout { after });
                    }
                    other => other?,
                };
                if let Some(e) = errors {
                    return Err(e);
                }
                if faults.is_empty() {
                    return Ok(());
                }
                extents = None;
                report.gpu_fault_pages += faults.len() as u64;
                let addrs =
                    || faults.iter().map(|&(p, _)| (inner.arena.base() + p as usize * PAGE_SIZE) as u64).collect();
                if report.replays >= opts.max_replays {
                    return Err(LaunchError::ReplayLimit { replays: report.replays, pending: addrs() });
                }
                // Every fault is checked against what the launch may do:
                // reads of allocated pages, writes only inside ranges
                // declared read-write (or anywhere allocated with
                // `allow_undeclared_writes`). The rest are errors, whatever
                // wrote the log.
                let declared = |p: u32| {
                    let i = decl.partition_point(|r| r.1 <= p);
                    decl.get(i).filter(|r| r.0 <= p).copied()
                };
                let mut refused = Vec::new();
                let mut want: Vec<(u32, u32, bool)> = Vec::with_capacity(faults.len());
                // The chunk around each faulting page, inside its allocation
                // and, for a write, inside its read-write declaration.
                let chunk_pages = (inner.chunk / PAGE_SIZE) as u32;
                for &(p, write) in &faults {
                    let addr = (inner.arena.base() + p as usize * PAGE_SIZE) as u64;
                    let Some((s, l)) = st.ranges.containing(p as usize * PAGE_SIZE).filter(|_| p < st.table.len())
                    else {
                        refused.push(KernelFault { addr, kind: KernelFaultKind::Unallocated });
                        continue;
                    };
                    let (mut lo, mut hi) = (page_of(s), page_of(s + l));
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
                let want = merge_ranges(want);
                // Read faults copy pages this launch did not declare: safe
                // code elsewhere may hold a `&mut` to them. Write-protect the
                // host pages first, so that no CPU write runs during the copy
                // or the kernel (it waits for the launch, then drops the
                // copy), as ReadMostly copies are.
                if inner.arena.has_write_protect() {
                    for &(a, b, write) in &want {
                        if write {
                            continue;
                        }
                        let fresh: Vec<(u32, u32)> = runs(a, b, |p| {
                            st.frames_of[p as usize] == HOST && st.advice[p as usize] & advice::COHERENT == 0
                        })
                        .collect();
                        for (ra, rb) in fresh {
                            let (o, l) = (ra as usize * PAGE_SIZE, (rb - ra) as usize * PAGE_SIZE);
                            inner.arena.write_protect(o, l).map_err(|e| LaunchError::Os(e.to_string()))?;
                            guarded.push((ra, rb));
                        }
                    }
                }
                let changed = inner.map_ranges(st, &want, &mut temporary, &mut report, true, true)?;
                if changed == 0 {
                    return Err(LaunchError::NoProgress { pages: addrs() });
                }
                report.replays += 1;
            }
        })();

        st.pinned.clear();
        // 3. Read-only copies are dropped, except ReadMostly ones.
        let mut post = inner.settle_copies(st, temporary);
        // Pages guarded for a read fault's copy are writable again unless a
        // ReadMostly copy of them is kept.
        for (a, b) in guarded {
            for (ra, rb) in runs(a, b, |p| !st.dup[p as usize] && st.frames_of[p as usize] == HOST) {
                let (o, l) = (ra as usize * PAGE_SIZE, (rb - ra) as usize * PAGE_SIZE);
                if let Err(e) = inner.arena.write_unprotect(o, l) {
                    post = post.and(Err(LaunchError::Os(e.to_string())));
                }
            }
        }
        // PreferredLocation(Host): written pages go straight back. Only the
        // ranges this launch mapped can hold such pages (launch cost stays
        // proportional to the working set, not to the arena).
        if post.is_ok() {
            post = inner.flush_preferred_host(st).map_err(LaunchError::from);
        }
        let c = &inner.stats;
        Counters::add(&c.launches, 1);
        Counters::add(&c.gpu_faults, report.gpu_fault_pages);
        Counters::add(&c.replays, u64::from(report.replays));
        tracing::debug!(kernel = %kernel.label, ?report, "launch");
        result.and(post).map(|()| report)
    }
}

impl Inner {
    /// Treat the device as lost (a kernel that does not finish): every
    /// later operation fails with [`DeviceError::Lost`], and pages a kernel
    /// may still be writing in place (coherent) are taken from the CPU, so
    /// that no Rust reference observes the runaway kernel's writes; they
    /// are reported by [`Svm::lost_ranges`] with the device-owned pages.
    fn lose_device(&self, st: &mut State, why: &str, declared: &[(u32, u32, bool)]) {
        {
            let mut lost = self.gpu.lost.lock();
            if lost.is_none() {
                *lost = Some(why.to_string());
            }
        }
        if let Some(raw) = &self.gpu.raw {
            raw.mark_lost();
        }
        // What the launch may write: its read-write declarations, and any
        // page mapped writable (a replayable launch's).
        let in_place_page =
            |p: u32| self.gpu.mode == MappingMode::Coherent || st.advice[p as usize] & advice::COHERENT != 0;
        let mut in_place: Vec<(u32, u32)> = st
            .mapped
            .iter()
            .flat_map(|&(a, b)| {
                runs(a, b, |p| st.table.get(PageIndex(p)).is_writable() && in_place_page(p)).collect::<Vec<_>>()
            })
            .collect();
        for &(a, b, write) in declared {
            if write {
                in_place.extend(runs(a, b, in_place_page));
            }
        }
        for (a, b) in in_place {
            let (o, l) = (a as usize * PAGE_SIZE, (b - a) as usize * PAGE_SIZE);
            if let Err(e) = self.arena.zap(o, l) {
                tracing::error!("svm: taking pages from the CPU after a device loss: {e}");
            }
            st.lost_in_place.push((a, b));
        }
    }

    /// The pipeline of `kernel` specialized for `v`, built on first use.
    fn pipeline(&self, kernel: &Kernel, v: Variant) -> Result<wgpu::ComputePipeline, LaunchError> {
        // Without the prelude there is nothing to specialize.
        let v = if kernel.prelude { v } else { Variant::PLAIN };
        let mut cache = kernel.pipelines.lock();
        if let Some((_, p)) = cache.iter().find(|(k, _)| *k == v) {
            return Ok(p.clone());
        }
        let gpu = &self.gpu;
        use svm_shaders::overrides as o;
        let constants = [
            (o::SEGMENTS, f64::from(v.segments)),
            (o::SEGMENT_PAGE_SHIFT, f64::from(gpu.segment_page_shift)),
            (o::EXTENTS, f64::from(v.extents)),
            (o::REPLAYABLE, f64::from(u8::from(v.replayable))),
            (o::COHERENT, f64::from(u8::from(v.coherent))),
            (o::SPECULATIVE_READS, f64::from(v.speculative)),
        ];
        let constants: &[(&str, f64)] = if kernel.prelude { &constants } else { &[] };
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let p = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&kernel.label),
            layout: Some(&kernel.layout),
            module: &kernel.module,
            entry_point: Some(&kernel.entry_point),
            compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(DeviceError::Unexpected(format!("specializing kernel {:?} ({v:?}): {e}", kernel.label)).into());
        }
        tracing::debug!(kernel = %kernel.label, ?v, "pipeline built");
        cache.push((v, p.clone()));
        Ok(p)
    }

    /// The mapped pages as at most [`MAX_EXTENTS`] extents (runs of pages
    /// with the same rights whose device words are consecutive), or `None`
    /// when there are more (the kernel then uses the page table).
    fn extents(&self, st: &State) -> Option<Vec<Extent>> {
        let coherent_base = st.coherent.as_ref().map_or(0, |c| c.first);
        let mut out: Vec<Extent> = Vec::new();
        let mut mapped = st.mapped.clone();
        mapped.sort_unstable();
        for (a, b) in mapped {
            for p in a..b {
                let pte = st.table.get(PageIndex(p));
                // (A replayable launch maps resident pages unpinned: eviction
                // may have taken one since; `frame()` is then `None` and the
                // launch uses the page table.)
                let dest = if pte.is_coherent() {
                    Extent::COHERENT | ((p - coherent_base) * PAGE_WORDS)
                } else {
                    pte.frame()?.get() * PAGE_WORDS
                };
                let flags = if pte.is_writable() { Extent::WRITE } else { 0 };
                let start = p * PAGE_SIZE as u32;
                let full = out.len() == MAX_EXTENTS as usize;
                match out.last_mut() {
                    Some(e) if e.start + e.len == start && e.flags == flags && e.dest + e.len / 4 == dest => {
                        e.len += PAGE_SIZE as u32;
                    }
                    _ if full => return None,
                    _ => out.push(Extent { start, len: PAGE_SIZE as u32, dest, flags }),
                }
            }
        }
        Some(out)
    }

    /// The segment all of `extents` lie in, and its first word, if there is
    /// one (and they are not in the coherent window).
    fn one_segment(&self, extents: &[Extent]) -> Option<(u32, u32)> {
        let shift = self.gpu.segment_page_shift + PAGE_WORDS.ilog2();
        let mut seg = None;
        for x in extents {
            if x.dest & Extent::COHERENT != 0 || x.len == 0 {
                return None;
            }
            let (a, b) = (x.dest >> shift, (x.dest + x.len / 4 - 1) >> shift);
            if a != b || seg.is_some_and(|s| s != a) {
                return None;
            }
            seg = Some(a);
        }
        seg.map(|s| (s, s << shift))
    }

    /// Whether this pass's loads may read before their check's outcome is
    /// known. Only with one segment bound (reading several unconditionally
    /// costs more than the masked branches: measured, the coherent mode's
    /// two windows 2.2x -> 1.8x plain without): then always in the software
    /// pool and the coherent view (every index lands in a buffer; the bounds
    /// checks clamp it), and in a sparse view by reading a word of a page
    /// this launch mapped (bound) instead, or any word where residency is
    /// strict (unbound pages read zero). `extents` are the pass's, rebased
    /// to the segment bound first.
    fn speculative(&self, st: &State, segments: u32, extents: Option<&[Extent]>) -> Speculative {
        let gpu = &self.gpu;
        if segments != 1 {
            return Speculative::No;
        }
        if gpu.mode != MappingMode::Sparse || gpu.raw.as_ref().is_some_and(|r| r.caps().residency_non_resident_strict) {
            return Speculative::AnyIndex;
        }
        if let Some(e) = extents {
            // Extents map bound pages, of the segment bound first.
            return e.first().map_or(Speculative::No, |x| Speculative::SafeWord(x.dest));
        }
        // One segment in all (page-table path): any mapped page will do.
        st.mapped
            .iter()
            .flat_map(|&(a, b)| a..b)
            .find_map(|p| {
                let pte = st.table.get(PageIndex(p));
                if pte.is_valid() && !pte.is_coherent() {
                    pte.frame()
                } else {
                    None
                }
            })
            .map_or(Speculative::No, |f| Speculative::SafeWord(f.get() * PAGE_WORDS))
    }

    /// Why the access at `addr` was refused, from the page table the pass
    /// ran with (the order of the page-table path's checks).
    fn classify(&self, st: &State, addr: u64, write: bool) -> KernelFaultKind {
        let off = addr.wrapping_sub(self.arena.base() as u64);
        if off >= self.arena.len() as u64 {
            return KernelFaultKind::OutOfArena;
        }
        if !off.is_multiple_of(4) {
            return KernelFaultKind::Misaligned;
        }
        #[allow(clippy::cast_possible_truncation, reason = "off < arena length < 4 GiB")]
        let pte = st.table.get(PageIndex((off / PAGE_SIZE as u64) as u32));
        if !pte.is_allocated() {
            KernelFaultKind::Unallocated
        } else if !pte.is_valid() {
            KernelFaultKind::NotDeclared
        } else if write && !pte.is_writable() {
            KernelFaultKind::ReadOnly
        } else {
            // The extents were built from this table: unreachable unless the
            // log is corrupt.
            KernelFaultKind::Unknown(svm_shaders::err::REFUSED)
        }
    }

    /// One pass of the kernel: upload the dirty page table, arguments, clear
    /// the logs, dispatch, wait. Returns the pass's error (if any access was
    /// refused) and its faults as (page, write) pairs.
    fn run_pass(
        &self,
        st: &mut State,
        pass: &Pass<'_>,
        extents: Option<&[Extent]>,
    ) -> Result<PassOutcome, LaunchError> {
        let Pass { kernel, groups, words, workgroups, replayable, timeout } = *pass;
        let gpu = &self.gpu;
        let slots = extents.map_or(0, |e| e.len().next_power_of_two() as u32);
        let coherent = st.coherent.is_some();
        // Extents all in one segment: bind it first, rebase the extents,
        // and run the one-segment specialization.
        let single = extents.filter(|_| !coherent && gpu.segments_used > 1).and_then(|e| self.one_segment(e));
        let rebased: Option<Vec<Extent>> = single.map(|(_, base)| {
            extents.unwrap_or_default().iter().map(|x| Extent { dest: x.dest - base, ..*x }).collect()
        });
        let extents = rebased.as_deref().or(extents);
        let segments = if single.is_some() { 1 } else { gpu.segments_used };
        let speculative = if coherent { Speculative::No } else { self.speculative(st, segments, extents) };
        // The replayable specialization only changes the page-table path.
        let replayable_table = replayable && extents.is_none();
        let variant = Variant {
            segments,
            extents: slots,
            replayable: replayable_table,
            coherent,
            speculative: speculative.code(),
        };
        let pipeline = self.pipeline(kernel, variant)?;
        let bind_group = match (&st.coherent, single) {
            (Some(c), _) => &c.bind_group,
            (None, Some((k, _))) => &gpu.first_segment_bind_groups[k as usize],
            (None, None) => &gpu.bind_group,
        };
        // (A kernel without the prelude reads neither the page table nor
        // the arguments: both wait for the next pointer launch.)
        let pt_bytes = if kernel.prelude {
            st.table.drain_dirty(|batch| {
                gpu.queue.write_buffer(&gpu.page_table, batch.byte_offset, bytemuck::cast_slice(batch.entries));
            })
        } else {
            0
        };
        let log_faults = svm_shaders::LOG_FAULTS;
        let fault_read_bitmap = log_faults + 1 + FAULT_CAP;
        let mut block = ArgsBlock {
            #[allow(clippy::cast_possible_truncation, reason = "address halves")]
            base: [self.arena.base() as u32, (self.arena.base() as u64 >> 32) as u32],
            arena_bytes: u32::try_from(self.arena.len()).expect("arena < 4 GiB, checked at creation"),
            fault_cap: FAULT_CAP,
            fault_read_bitmap,
            fault_write_bitmap: fault_read_bitmap + gpu.fault_bitmap_words,
            coherent_base: st.coherent.as_ref().map_or(0, |c| c.first * PAGE_SIZE as u32),
            safe_word: match speculative {
                Speculative::SafeWord(w) => w,
                _ => 0,
            },
            // Unused slots: empty extents, which admit nothing.
            extents: [Extent::default(); MAX_EXTENTS as usize],
            words: [0; MAX_ARG_WORDS as usize],
        };
        block.words[..words.len()].copy_from_slice(words);
        if let Some(e) = extents {
            block.extents[..e.len()].copy_from_slice(e);
        }
        if kernel.prelude {
            gpu.queue.write_buffer(&gpu.args, 0, bytemuck::bytes_of(&block));
        }
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(&kernel.label) });
        // The error and fault counts, and the bitmaps, start at zero.
        if kernel.prelude {
            enc.clear_buffer(&gpu.log, 0, None);
        }
        // GPU timestamps of the pass, when something records them (a
        // tracing subscriber taking svm's debug spans, e.g. the demos'
        // --trace): an extra read back per pass otherwise not paid.
        let stamps = gpu.timestamps.as_ref().filter(|_| tracing::enabled!(target: "svm", tracing::Level::DEBUG));
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&kernel.label),
                timestamp_writes: stamps.map(|t| wgpu::ComputePassTimestampWrites {
                    query_set: &t.set,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                }),
            });
            pass.set_pipeline(&pipeline);
            for (g, bg) in groups.iter().enumerate() {
                if let Some(bg) = bg {
                    pass.set_bind_group(g as u32, bg, &[]);
                }
            }
            if kernel.prelude {
                pass.set_bind_group(svm_shaders::RUNTIME_GROUP, bind_group, &[]);
            }
            let [x, y, z] = workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
        if kernel.prelude {
            enc.copy_buffer_to_buffer(&gpu.log, 0, &gpu.log_readback, 0, Gpu::log_read_bytes());
        }
        if let Some(t) = stamps {
            enc.resolve_query_set(&t.set, 0..2, &t.resolve, 0);
            enc.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, 16);
        }
        let mut cmds = vec![enc.finish()];
        if st.coherent.is_some() || gpu.mode == MappingMode::Coherent {
            // The kernel wrote host memory in place: make its writes visible
            // to the CPU (a real GPU needs the barrier; lavapipe is coherent).
            cmds.push(crate::vk::host_read_barrier(&gpu.device).map_err(|e| DeviceError::Unexpected(e.to_string()))?);
        }
        let t1 = Instant::now();
        // From submit to the log read back: the kernel (and, without
        // timestamps, the queue's latency).
        let _kernel_span =
            tracing::debug_span!("svm_kernel", kernel = %kernel.label, bound = !kernel.prelude).entered();
        gpu.queue.submit(cmds);
        let c = &self.stats;
        if let Some(after) = timeout {
            gpu.wait_for(after)?.then_some(()).ok_or(LaunchError::Timeout { after })?;
        }
        if let Some(t) = stamps {
            let ticks: [u64; 2] = gpu.read_mapped(&t.readback, 16, bytemuck::pod_read_unaligned)?;
            let ns = (ticks[1].saturating_sub(ticks[0]) as f64 * f64::from(t.period)) as u64;
            Counters::add(&c.kernel_gpu_ns, ns);
            tracing::debug!(target: "svm", kernel = %kernel.label, gpu_ns = ns, "svm_kernel_gpu");
        }
        if !kernel.prelude {
            // Bound access only: no log, nothing refused in software.
            gpu.wait()?;
            Counters::add(&c.kernel_ns, t1.elapsed().as_nanos() as u64);
            Counters::add(&c.bound_passes, 1);
            return Ok((None, Vec::new()));
        }
        let log: Vec<u32> = gpu.read_mapped(&gpu.log_readback, Gpu::log_read_bytes(), bytemuck::pod_collect_to_vec)?;
        Counters::add(&c.kernel_ns, t1.elapsed().as_nanos() as u64);
        Counters::add(&c.pt_upload_bytes, pt_bytes);
        Counters::add(if extents.is_some() { &c.extent_passes } else { &c.page_table_passes }, 1);
        let total = log[0];
        if total != 0 {
            let records: Vec<(KernelFault, bool)> = (0..total.min(ERROR_RECORDS) as usize)
                .map(|i| {
                    let addr = u64::from(log[2 + i * 4]) | (u64::from(log[3 + i * 4]) << 32);
                    let write = log[4 + i * 4] != 0;
                    let kind = match log[1 + i * 4] {
                        // The extent path only knows that no extent admitted
                        // the access; the page table the pass ran with says why.
                        svm_shaders::err::REFUSED => self.classify(st, addr, write),
                        code => KernelFaultKind::from_code(code),
                    };
                    (KernelFault { addr, kind }, write)
                })
                .collect();
            // A replayable extent pass: refused accesses to allocated pages
            // are GPU faults, unless a real error is among them.
            let is_fault = |k: KernelFaultKind| matches!(k, KernelFaultKind::NotDeclared | KernelFaultKind::ReadOnly);
            if replayable && extents.is_some() && records.iter().all(|(f, _)| is_fault(f.kind)) {
                let mut pages: Vec<(u32, bool)> =
                    records.iter().map(|&(f, write)| (page_of(f.addr as usize - self.arena.base()), write)).collect();
                pages.sort_unstable();
                pages.dedup();
                return Ok((None, pages));
            }
            let faults = records.into_iter().map(|(f, _)| f).collect();
            return Ok((Some(LaunchError::Kernel { faults, total }), Vec::new()));
        }
        // Faults count only in a replayable launch (the prelude records
        // none otherwise; anything there was not written by it). The
        // launch checks each one against what it may do.
        if !replayable {
            return Ok((None, Vec::new()));
        }
        let f = log_faults as usize;
        let n = log[f].min(FAULT_CAP) as usize;
        let mut faults: Vec<(u32, bool)> =
            log[f + 1..f + 1 + n].iter().map(|&e| (e & 0x7fff_ffff, e & 0x8000_0000 != 0)).collect();
        faults.sort_unstable();
        faults.dedup();
        Ok((None, faults))
    }
}
