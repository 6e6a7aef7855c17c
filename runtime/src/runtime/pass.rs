//! One kernel pass: pick the variant (extents or page table, segments,
//! speculative reads), submit it with its arguments and a log read-back of
//! its own; `outcome` reads what it reported once the GPU is done.

use super::flight::{FaultBitmaps, InFlight};
use super::*;

mod outcome;

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
pub(super) struct Pass<'a> {
    pub(super) kernel: &'a Kernel,
    pub(super) groups: &'a [Option<wgpu::BindGroup>],
    pub(super) words: &'a [u32],
    pub(super) workgroups: [u32; 3],
    pub(super) replayable: bool,
    /// Writable byte ranges in slab pages, for page-table passes.
    pub(super) slab_writes: &'a [Extent],
}

impl Inner {
    /// Treat the device as lost (a kernel that does not finish): every
    /// later operation fails with [`DeviceError::Lost`], and pages a kernel
    /// may still be writing in place (coherent) are withheld from the CPU
    /// for good (`Arena::withhold`: nothing maps them again, whichever
    /// member or path would), so that no Rust reference observes the
    /// runaway kernel's writes; they are reported by [`Svm::lost_ranges`]
    /// with the device-owned pages. The runaway kernel need not be the
    /// launch that timed out (`busy`, taken out of the flights already):
    /// every pass in flight may be it.
    pub(super) fn lose_device(&self, st: &mut State, why: &str, busy: &[(u32, u32, bool)]) {
        {
            let mut lost = self.gpu.lost.lock();
            if lost.is_none() {
                *lost = Some(why.to_string());
            }
        }
        if let Some(raw) = &self.gpu.raw {
            raw.mark_lost();
        }
        self.runaway.store(true, std::sync::atomic::Ordering::Release);
        // What the passes may write: their ranges used for writing (their
        // read-write declarations, and for a replayable launch what it
        // mapped writable), and an application scope's (its copies back,
        // or its own work in place, queued behind the runaway kernel). (A
        // prefetch's claim runs nothing on the device.)
        let in_place_page =
            |p: u32| self.gpu.mode == MappingMode::Coherent || st.advice[p as usize] & advice::COHERENT != 0;
        let passes = st.flights.iter().filter(|f| !f.claim || f.app_passes.is_some()).flat_map(|f| f.busy.iter());
        let mut in_place: Vec<(u32, u32)> = Vec::new();
        for &(a, b, write) in busy.iter().chain(passes) {
            if write {
                in_place.extend(runs(a, b, in_place_page));
            }
        }
        for (a, b, _) in merge_ranges(in_place.into_iter().map(|(a, b)| (a, b, true)).collect()) {
            let (o, l) = (a as usize * PAGE_SIZE, (b - a) as usize * PAGE_SIZE);
            if let Err(e) = self.arena.withhold(o, l) {
                // The pages may still be the CPU's while a kernel writes
                // them: no Rust reference may be trusted any more.
                eprintln!("svm: fatal: pages a runaway kernel writes cannot be taken from the CPU: {e}");
                std::process::abort();
            }
        }
    }

    /// Whether a page of `[a, b)` is withheld from the CPU for good (a lost
    /// device's kernel may still write it in place; see `lose_device`).
    pub(super) fn withheld(&self, a: u32, b: u32) -> bool {
        self.arena.is_withheld(a as usize * PAGE_SIZE, (b - a) as usize * PAGE_SIZE)
    }

    /// [`DeviceError::Lost`] for a launch, scope, prefetch or advice that
    /// names withheld pages (their contents are a runaway kernel's), as for
    /// pages lost with a device.
    pub(super) fn refuse_withheld(&self, ranges: impl IntoIterator<Item = (u32, u32)>) -> Result<(), DeviceError> {
        match ranges.into_iter().find(|&(a, b)| self.withheld(a, b)) {
            Some((a, _)) => Err(DeviceError::Lost(format!(
                "pages from {:#x} may still be written in place by a kernel of a device lost to a launch timeout",
                self.arena.base() + a as usize * PAGE_SIZE
            ))),
            None => Ok(()),
        }
    }

    /// The pipeline of `kernel` specialized for `v`, built on first use.
    pub(super) fn pipeline(&self, kernel: &Kernel, v: Variant) -> Result<wgpu::ComputePipeline, LaunchError> {
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
    /// when there are more, or a page lies past the extents' flat word
    /// index (the kernel then uses the page table).
    pub(super) fn extents(&self, st: &State) -> Option<Vec<Extent>> {
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
                    flat_word(pte.frame()?.get(), 0)?
                };
                let x = Extent::new(p as u64 * PAGE_SIZE as u64, PAGE_SIZE as u32, dest, pte.is_writable())?;
                let full = out.len() == MAX_EXTENTS as usize;
                match out.last_mut() {
                    // (Same bank and flags: never across a 4 GiB boundary.)
                    Some(e)
                        if e.start.wrapping_add(e.len) == x.start
                            && e.flags == x.flags
                            && e.dest + e.len / 4 == dest =>
                    {
                        e.len += PAGE_SIZE as u32;
                    }
                    _ if full => return None,
                    _ => out.push(x),
                }
            }
        }
        // Slab pages are mapped read-only: the bytes the launch declared
        // read-write in them get writable extents of their own, byte-exact,
        // over the page's.
        for x in self.slab_write_extents(st)? {
            if out.len() == MAX_EXTENTS as usize {
                return None;
            }
            out.push(x);
        }
        // The prelude adds one bank to the base: extents in several banks
        // (a launch spanning a 4 GiB boundary of the arena) use the page
        // table.
        let bank = out.first().map_or(0, Extent::bank);
        out.iter().all(|e| e.bank() == bank).then_some(out)
    }

    /// The byte ranges (4-byte words inside the declarations) a launch
    /// declared read-write in slab pages, as writable extents: `None` when a
    /// mapped page has no frame (the launch then uses the page table).
    pub(super) fn slab_write_extents(&self, st: &State) -> Option<Vec<Extent>> {
        let coherent_base = st.coherent.as_ref().map_or(0, |c| c.first);
        let mut out = Vec::new();
        for &(lo, hi) in &st.write_bytes {
            for p in page_of(lo)..page_of(hi.next_multiple_of(PAGE_SIZE)) {
                let pte = st.table.get(PageIndex(p));
                if !st.slabs.is_slab(p) || !pte.is_valid() {
                    continue;
                }
                let page0 = p as usize * PAGE_SIZE;
                let (x, y) = (lo.max(page0).next_multiple_of(4), hi.min(page0 + PAGE_SIZE) / 4 * 4);
                if x >= y {
                    continue;
                }
                let word = ((x - page0) / 4) as u32;
                let dest = if pte.is_coherent() {
                    Extent::COHERENT | ((p - coherent_base) * PAGE_WORDS + word)
                } else {
                    flat_word(pte.frame()?.get(), word)?
                };
                #[allow(clippy::cast_possible_truncation, reason = "inside one page")]
                out.push(Extent::new(x as u64, (y - x) as u32, dest, true)?);
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

    /// The device tables, made or replaced by larger ones first when the
    /// arena's allocated high-water mark (`top`) is above them: a new page
    /// table starts zeroed and gets every live leaf at the next upload.
    pub(super) fn tables<'s>(&self, st: &'s mut State) -> &'s crate::gpu::Tables {
        let old = st.tables.as_ref().map_or(0, |t| t.pages);
        if st.tables.is_none() || st.top > old {
            let pages = crate::gpu::Tables::capacity_for(st.top, old, self.arena_pages());
            let t = self.gpu.tables(pages);
            if let Some(c) = st.coherent.as_mut() {
                c.bind_group = self.gpu.bind_group_with(&t, c._import.buffer());
            }
            if old > 0 {
                st.table.mark_live_dirty();
            }
            tracing::debug!(target: "svm", pages, old, "device tables grown");
            st.tables = Some(t);
        }
        let t = st.tables.as_mut().expect("made above");
        if t.coherent_covered != self.gpu.coherent_covered() {
            // The coherent view was imported again since: bind the new one.
            self.gpu.rebind(t);
            if let Some(c) = st.coherent.as_mut() {
                c.bind_group = self.gpu.bind_group_with(t, c._import.buffer());
            }
        }
        st.tables.as_ref().expect("made above")
    }

    /// Arena pages (the page numbers the prelude admits).
    pub(super) fn arena_pages(&self) -> u32 {
        u32::try_from(self.arena.len() / PAGE_SIZE).expect("arena pages fit u32: checked at creation")
    }

    /// Encode one pass of the kernel: upload the dirty page table and the
    /// arguments (queued for the next submission), clear the log, dispatch,
    /// copy the log to a read-back buffer of the pass's own. The pass is
    /// returned as an [`InFlight`] using `busy` with its command buffers
    /// (the caller fills in its settling, tracks it and submits it, in that
    /// order, no other launch encoding in between: `Inner::launch_order`).
    pub(super) fn encode_pass(
        &self,
        st: &mut State,
        pass: &Pass<'_>,
        extents: Option<&[Extent]>,
        busy: Vec<(u32, u32, bool)>,
        driven: bool,
        exclusive: bool,
    ) -> Result<(InFlight, Vec<wgpu::CommandBuffer>), LaunchError> {
        let Pass { kernel, groups, words, workgroups, replayable, .. } = *pass;
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
        self.tables(st);
        let tables = st.tables.as_ref().expect("made just above");
        let bind_group = match (&st.coherent, single) {
            (Some(c), _) => &c.bind_group,
            (None, Some((k, _))) => &tables.first_segment_bind_groups[k as usize],
            (None, None) => &tables.bind_group,
        };
        // The kernel wrote host memory in place or a pool the CPU reads
        // directly: make its writes visible to the CPU (a real GPU needs
        // the barrier; lavapipe is coherent).
        let barrier = if coherent || gpu.mode == MappingMode::Coherent || gpu.cpu_copies {
            Some(crate::vk::host_read_barrier(&gpu.device).map_err(|e| DeviceError::Unexpected(e.to_string()))?)
        } else {
            None
        };
        // The changed page-table leaves and the arguments travel in the
        // pass's own command buffer, copied from a buffer of its own (laid
        // out: arguments, then the leaves): the pass may be submitted in
        // one batch with later ones (`submit.rs`), and a write through the
        // queue would land before the whole batch. (A kernel without the
        // prelude reads neither the page table nor the arguments: both
        // wait for the next pointer launch.)
        let mut upload: Vec<u8> = Vec::new();
        let mut leaves: Vec<(u64, u64, u64)> = Vec::new(); // (from, to, bytes)
        let args_bytes = std::mem::size_of::<ArgsBlock>();
        let pt_bytes = if kernel.prelude {
            upload.resize(args_bytes, 0);
            st.table.drain_dirty(|batch| {
                let bytes: &[u8] = bytemuck::cast_slice(batch.entries);
                leaves.push((upload.len() as u64, batch.byte_offset, bytes.len() as u64));
                upload.extend_from_slice(bytes);
            })
        } else {
            0
        };
        let log_faults = svm_shaders::LOG_FAULTS;
        let fault_read_bitmap = log_faults + 1 + FAULT_CAP;
        // The extent path's offsets are from the base of their bank.
        let bank = extents.and_then(|e| e.first()).map_or(0, Extent::bank);
        let base = self.arena.base() as u64 + (u64::from(bank) << 32);
        let mut block = ArgsBlock {
            #[allow(clippy::cast_possible_truncation, reason = "address halves")]
            base: [base as u32, (base >> 32) as u32],
            arena_pages: self.arena_pages(),
            table_pages: tables.pages,
            fault_cap: FAULT_CAP,
            fault_read_bitmap,
            fault_write_bitmap: fault_read_bitmap + tables.fault_bitmap_words,
            coherent_page: st.coherent.as_ref().map_or(0, |c| c.first),
            safe_word: match speculative {
                Speculative::SafeWord(w) => w,
                _ => 0,
            },
            // Unused slots: empty extents, which admit nothing.
            extents: [Extent::default(); MAX_EXTENTS as usize],
            words: [0; MAX_ARG_WORDS as usize],
            _pad: 0,
        };
        block.words[..words.len()].copy_from_slice(words);
        if let Some(e) = extents {
            block.extents[..e.len()].copy_from_slice(e);
        } else {
            // The page-table path reads the slots as the byte ranges it may
            // write in read-only (slab) pages; past the eighth, refused.
            let n = pass.slab_writes.len().min(MAX_EXTENTS as usize);
            block.extents[..n].copy_from_slice(&pass.slab_writes[..n]);
        }
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(&kernel.label) });
        if kernel.prelude {
            upload[..args_bytes].copy_from_slice(bytemuck::bytes_of(&block));
            let src = wgpu::util::DeviceExt::create_buffer_init(
                &gpu.device,
                &wgpu::util::BufferInitDescriptor {
                    label: Some("svm pass upload"),
                    contents: &upload,
                    usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::MAP_WRITE,
                },
            );
            enc.copy_buffer_to_buffer(&src, 0, &gpu.args, 0, args_bytes as u64);
            for &(from, to, bytes) in &leaves {
                enc.copy_buffer_to_buffer(&src, from, &tables.page_table, to, bytes);
            }
        }
        // The error and fault counts start at zero, and the fault bitmaps
        // where a replayable pass sets them (clearing them for every pass
        // would cost what the arena's high-water mark covers).
        if kernel.prelude {
            let bytes = if replayable_table { None } else { Some(Gpu::log_read_bytes()) };
            enc.clear_buffer(&tables.log, 0, bytes);
        }
        // GPU timestamps of the pass, when something records them (a
        // tracing subscriber taking svm's debug spans, e.g. the demos'
        // --trace): an extra read back per pass otherwise not paid. One
        // query set: a pass submitted while another holds it has none.
        let stamps = gpu
            .timestamps
            .as_ref()
            .filter(|_| !st.stamps_busy && tracing::enabled!(target: "svm", tracing::Level::DEBUG));
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
        let readback = kernel.prelude.then(|| gpu.take_log_readback());
        if let Some(rb) = &readback {
            enc.copy_buffer_to_buffer(&tables.log, 0, rb, 0, Gpu::log_read_bytes());
        }
        if let Some(t) = stamps {
            enc.resolve_query_set(&t.set, 0..2, &t.resolve, 0);
            enc.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, 16);
            st.stamps_busy = true;
        }
        let mut cmds = vec![enc.finish()];
        cmds.extend(barrier);
        let submitted = Instant::now();
        // Where a replayable page-table pass's fault bitmaps are, for when
        // its faults overflow the list (`read_outcome`).
        let fault_bitmaps =
            replayable_table.then(|| FaultBitmaps { log: tables.log.clone(), words: tables.fault_bitmap_words });
        let f = InFlight {
            shared: Self::new_shared(driven),
            busy,
            exclusive,
            claim: false,
            app_passes: None,
            label: kernel.label.clone(),
            readback,
            fault_bitmaps,
            extents: extents.is_some(),
            replayable,
            stamps: stamps.is_some(),
            submitted,
            pt_bytes,
            temporary: Vec::new(),
            report: LaunchReport::default(),
            zapped_in_place: Vec::new(),
            protected_in_place: Vec::new(),
            release_frames: Vec::new(),
        };
        Ok((f, cmds))
    }
}

/// Word `word` of device frame `frame` as the extent path's flat index
/// (`Extent::dest`): below 2^31 words, 8 GiB of pool or view (bit 31 marks
/// the coherent window). `None` beyond: the launch takes the page table,
/// whose path finds the segment from the frame.
fn flat_word(frame: u32, word: u32) -> Option<u32> {
    frame.checked_mul(PAGE_WORDS).map(|w| w + word).filter(|&w| w < Extent::COHERENT)
}
