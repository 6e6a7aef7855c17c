//! Managed ranges in the application's own GPU work: the residency a
//! launch does for its bindings, around passes the application records and
//! submits itself (on the runtime's device: `Svm::device`, or the
//! application's own, shared with `SvmDescriptor::device`).

use parking_lot::MutexGuard;

use super::flight::{ClaimFor, FlightShared};
use super::residency::CopyIn;
use super::*;
use crate::bind::{Checked, Placed};
use crate::error::BindError;
use crate::kernel::{BindTarget, Binding};

impl Svm {
    /// Make `bindings` resident and placed as a launch would, hand their
    /// device ranges to `f` as `wgpu::BufferBinding`s (in order) for the
    /// application's own bind groups, compute or render passes, wait for
    /// everything submitted by the time `f` returns, and settle the pages by
    /// the rules of a launch (ranges bound read-write belong to the device
    /// until the CPU touches them; read-only copies are dropped; advice
    /// holds). Only managed ranges ([`Binding::read`],
    /// [`Binding::read_write`], slices, [`Binding::raw`]) can be bound here;
    /// bind them as `read_write` storage in the application's layouts
    /// unless every binding of that buffer in the pass is read-only (the
    /// pool is one buffer per segment, and wgpu refuses a read-only and a
    /// read-write use of one buffer in one dispatch).
    ///
    /// The bound pages are claimed while `f` and the work it submits run,
    /// as a launch's are while its kernel runs: what would read, move or
    /// free them (a CPU access, `free`, a launch using them) waits until
    /// this call returns, and everything else goes on meanwhile on other
    /// threads (their faults, allocations, launches on other data).
    /// Launches in flight that use the bound pages are waited for first.
    ///
    /// Inside `f`, on its own thread, allocating, and freeing memory that
    /// is not bound (nor shares a page with what is bound: small
    /// allocations share pages), is fine — but freeing memory a device
    /// maps in place (`AccessedBy`) fails [`FreeError::InOwnScope`]
    /// there. Other runtime calls — a launch, a
    /// prefetch, advice, a CPU access to the bound ranges or to anything
    /// sharing their pages — and any runtime call on a thread `f` waits for
    /// may wait for this scope, which ends only after `f` returns: a
    /// deadlock. Record, submit (on `Svm::queue`, or with
    /// `Svm::submit_commands`), return. A wgpu error of the application's
    /// work inside `f` that its own error scopes do not catch is returned
    /// as [`LaunchError::Application`] (outside `with_bindings`, such an
    /// error on the runtime's device is reported with `tracing::error`; the
    /// runtime goes on).
    ///
    /// Each `BufferBinding` is a buffer of its own holding a copy of its
    /// range (offset 0, the range's size), made before `f` and copied back
    /// into the range (read-write bindings) once the application's work is
    /// done: whatever the application binds, keeps or writes later, it
    /// reaches no other allocation's data, and no CPU reference sees a
    /// write it did not wait for. That costs a device copy of each range
    /// each way and device memory for the copies;
    /// [`Self::with_bindings_in_place`] (`unsafe`) hands out the runtime's
    /// own buffers instead. Kernels launched through the runtime only ever
    /// reach what their launch declared.
    pub fn with_bindings<R>(
        &self,
        bindings: &[Binding<'_>],
        f: impl FnOnce(&[wgpu::BufferBinding<'_>]) -> R,
    ) -> Result<R, LaunchError> {
        self.app_scope(bindings, true, f)
    }

    /// [`Self::with_bindings`] without the copies: each `BufferBinding`'s
    /// buffer is the runtime's own (a segment of the pool, the arena's
    /// device view, or host memory imported in place: the coherent mode's
    /// and `AccessedBy` ranges), shared by every allocation placed in it;
    /// only the binding's offset and size are the caller's.
    ///
    /// # Safety
    ///
    /// The application's work must use each buffer only within its
    /// binding's offset and size, and only until `f` returns: it keeps no
    /// clone of the buffers (nor a bind group or command buffer made with
    /// them) past `f`, submits nothing using them after, and never
    /// destroys them (`wgpu::Buffer::destroy`). Other
    /// allocations' data lies in the rest of those buffers — in place of
    /// the CPU's own memory in the coherent cases, where a write there
    /// races with Rust references — and the runtime cannot see such uses.
    #[allow(unsafe_code, reason = "an unsafe API: the caller keeps to the runtime's buffers' bounds and lifetime")]
    pub unsafe fn with_bindings_in_place<R>(
        &self,
        bindings: &[Binding<'_>],
        f: impl FnOnce(&[wgpu::BufferBinding<'_>]) -> R,
    ) -> Result<R, LaunchError> {
        self.app_scope(bindings, false, f)
    }

    /// An application scope; `copied`: the application gets copies of the
    /// ranges in buffers of their own (see [`Self::with_bindings`]).
    fn app_scope<R>(
        &self,
        bindings: &[Binding<'_>],
        copied: bool,
        f: impl FnOnce(&[wgpu::BufferBinding<'_>]) -> R,
    ) -> Result<R, LaunchError> {
        let inner = &*self.inner;
        let gpu = &inner.gpu;
        inner.check_process()?;
        let error = |index: usize, reason: BindError| LaunchError::Binding {
            index,
            name: format!("binding {index}"),
            group: 0,
            binding: index as u32,
            reason,
        };
        let limits = gpu.device.limits();
        let mut checked = Vec::with_capacity(bindings.len());
        for (i, b) in bindings.iter().enumerate() {
            let BindTarget::Managed { addr, len, mode, .. } = b.target else {
                return Err(error(i, BindError::WrongKind { declared: "a managed range", given: "a uniform value" }));
            };
            crate::bind::check_storage_range(addr, len, &limits).map_err(|why| error(i, why))?;
            if len == 0 || len % 4 != 0 {
                return Err(error(i, BindError::Length { len: len as u64 }));
            }
            // (Discarding is a launch's optimization; here the contents stay.)
            let write = mode == crate::kernel::AccessMode::ReadWrite;
            checked.push(Checked::Managed { addr, len, write, discard: false });
        }
        let mut guard = inner.state.lock();
        let (scope, copies) = loop {
            match inner.open_app_scope(&mut guard, &checked, &error) {
                // Launches in flight hold frames: after them, again.
                Err(LaunchError::PoolExhausted { .. }) if !guard.flights.is_empty() => {
                    inner.wait_all_flights(&mut guard)
                }
                r => break r?,
            }
        };
        let in_place = guard.coherent.is_some() || gpu.mode == MappingMode::Coherent;
        drop(guard);
        // From here the pages are claimed: closed on every exit, a panic
        // in `f` included.
        let writes = checked.iter().map(|c| matches!(c, Checked::Managed { write: true, .. })).collect();
        let mut open = OpenScope { inner, scope: Some(scope), copies: None, writes, in_place, refused: None };
        if let Err((e, undone)) = inner.run_copies(copies, true) {
            inner.undo_copies(&mut inner.state.lock(), &undone);
            return Err(e.into());
        }
        if copied {
            open.copies = Some(AppCopies::make(gpu, open.placed())?);
        }
        let views: Vec<wgpu::BufferBinding<'_>> = if let Some(c) = &open.copies {
            c.views()
        } else {
            open.placed()
                .iter()
                .map(|p| wgpu::BufferBinding {
                    buffer: &p.buffer,
                    offset: p.offset,
                    size: wgpu::BufferSize::new(p.size),
                })
                .collect()
        };
        // The application's errors are caught here, on its thread (wgpu's
        // error scopes are per thread; scopes `f` pushes itself come first):
        // the runtime's handler would take them for a lost device.
        let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f(&views);
        let (validation, oom) = (pollster::block_on(validation.pop()), pollster::block_on(oom.pop()));
        let app_error = validation.or(oom);
        drop(views);
        let last = open.end_work()?;
        let waited = gpu.wait_submission(Some(last));
        let scope = open.scope.take().expect("closed once");
        let closed = inner.close_app_scope(scope, waited.is_ok());
        Counters::add(&inner.stats.app_scopes, 1);
        waited?;
        closed?;
        if let Some(why) = open.refused.take() {
            return Err(LaunchError::Application(format!(
                "the bound ranges' copies could not be copied back (they keep their contents from before): {why}"
            )));
        }
        match app_error {
            Some(e) => Err(LaunchError::Application(e.to_string())),
            None => Ok(r),
        }
    }
}

/// The pages of an application scope ([`Svm::with_bindings`]): claimed
/// (busy as a launch's: what would read, move or free them waits),
/// resident and placed.
struct AppScope {
    claim: Arc<FlightShared>,
    decl: Vec<(u32, u32, bool)>,
    /// Read-only copies made for it (dropped at the end).
    temporary: Vec<(u32, u32)>,
    /// Frames its device-side moves freed: released once its work is done.
    release: Vec<u32>,
    placed: Vec<Placed>,
}

/// An open application scope; closes it if dropped open (a panic in the
/// application's `f`: the work it submitted ran, and its writes are kept).
struct OpenScope<'a> {
    inner: &'a Inner,
    scope: Option<AppScope>,
    /// The application's copies of the ranges (`with_bindings`); `None`
    /// in place.
    copies: Option<AppCopies>,
    /// Per range: bound read-write (its copy goes back).
    writes: Vec<bool>,
    /// Some range is host memory in place (coherent).
    in_place: bool,
    /// Why the device refused the copies back (the application destroyed
    /// its copy, say): the ranges keep their contents from before.
    refused: Option<String>,
}

impl OpenScope<'_> {
    fn placed(&self) -> &[Placed] {
        self.scope.as_ref().map(|s| s.placed.as_slice()).unwrap_or_default()
    }

    /// Submit the scope's end, behind the application's work (queue
    /// order): the read-write ranges' copies back (a submission of their
    /// own, under an error scope: whatever the application did to its
    /// copies is its error, not the device's), then, where the work or the
    /// copies wrote host memory in place, the barrier making it visible to
    /// the CPU. The copies go with it.
    fn end_work(&mut self) -> Result<wgpu::SubmissionIndex, LaunchError> {
        let gpu = &self.inner.gpu;
        // (The copies first: a barrier that cannot be made loses none.)
        if let Some(c) = self.copies.take() {
            self.refused = c.copy_back(gpu, self.placed(), &self.writes);
        }
        let barrier = if self.in_place {
            Some(crate::vk::host_read_barrier(&gpu.device).map_err(|e| DeviceError::Unexpected(e.to_string()))?)
        } else {
            None
        };
        Ok(gpu.submit(barrier))
    }
}

impl Drop for OpenScope<'_> {
    fn drop(&mut self) {
        if self.scope.is_some() {
            // In slices, as the scope's normal end: a whole-device wait
            // would hold the poll lock, and every other thread's
            // submissions, for the application's work.
            let gpu = &self.inner.gpu;
            let last = self.end_work().unwrap_or_else(|_| gpu.submit(std::iter::empty()));
            let waited = gpu.wait_submission(Some(last)).is_ok();
            if let Some(s) = self.scope.take() {
                let _ = self.inner.close_app_scope(s, waited);
            }
        }
    }
}

impl Inner {
    /// Claim `checked`'s pages for an application scope: wait (lock
    /// released) for every flight using them, make them resident and place
    /// them. Returns the scope and its host -> device copies, to be made
    /// with the lock released. On failure the state is as before.
    fn open_app_scope(
        &self,
        guard: &mut MutexGuard<'_, State>,
        checked: &[Checked<'_>],
        error: &dyn Fn(usize, BindError) -> LaunchError,
    ) -> Result<(AppScope, Vec<CopyIn>), LaunchError> {
        // The application's passes may use what it binds in any way: no
        // flight shares a page with them (and eviction does not copy back
        // behind a running pass under the lock).
        let decl = loop {
            self.retire_done(guard);
            let mut decl = Vec::with_capacity(checked.len());
            for (i, c) in checked.iter().enumerate() {
                let Checked::Managed { addr, len, write, .. } = *c else { continue };
                let (a, b) =
                    self.page_range(guard, addr, len).ok_or_else(|| error(i, BindError::NotAllocated { addr, len }))?;
                decl.push((a, b, write));
            }
            let decl = merge_ranges(decl);
            self.refuse_withheld(decl.iter().map(|&(a, b, _)| (a, b)))?;
            let foreign = self.foreign_runs(decl.iter().map(|&(a, b, _)| (a, b)));
            if !foreign.is_empty() {
                // Held by another device mirroring the arena (`mirror.rs`).
                self.take_leases(guard, &foreign)?;
                continue;
            }
            let overlapping = guard
                .flights
                .iter()
                .find(|f| f.exclusive || decl.iter().any(|&(a, b, _)| f.busy.iter().any(|&(x, y, _)| x < b && a < y)))
                .map(|f| f.shared.clone());
            match overlapping.or_else(|| self.evicting_behind_a_pass(guard, &decl, false)) {
                None => break decl,
                Some(f) => self.wait_settled(guard, &f),
            }
        };
        self.gpu.check_lost()?;
        let st = &mut **guard;
        st.epoch = st.epoch.wrapping_add(1);
        let mut temporary = Vec::new();
        let mut report = LaunchReport::default();
        st.copies = Some(Vec::new());
        let made = self
            .map_ranges(st, &decl, &mut temporary, &mut report, Mapping { pin: true, ptes: false, evict: true })
            .and_then(|_| self.place_bindings(st, error, checked));
        st.pinned.clear();
        match made {
            Ok(placed) => {
                let copies = st.copies.take().unwrap_or_default();
                let release = std::mem::take(&mut st.deferred_free);
                let claim = self.claim(st, decl.clone(), ClaimFor::AppPasses);
                let placed = placed.into_iter().flatten().collect();
                Ok((AppScope { claim, decl, temporary, release, placed }, copies))
            }
            Err(e) => {
                let _ = self.flush_copies(st);
                st.copies = None;
                let _ = self.settle_copies(st, temporary);
                self.release_deferred_now(st);
                Err(e)
            }
        }
    }

    /// End an application scope once its work is done (`done`; else the
    /// device is lost and its frames stay taken): the claim ended, the
    /// pages settled by the rules of a launch.
    fn close_app_scope(&self, s: AppScope, done: bool) -> Result<(), LaunchError> {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if done {
            st.frames.free_many(&s.release);
        }
        self.end_claim(st, &s.claim);
        self.settle_copies(st, s.temporary)?;
        self.flush_preferred_host(st, &s.decl).map_err(LaunchError::from)
    }
}

/// An application scope's copies of its ranges (`with_bindings`): one
/// buffer per run of overlapping ranges of one runtime buffer (bindings
/// that overlap share their bytes, as in place), each binding at its offset
/// in it (the ranges' offsets are all aligned to the storage offset
/// alignment, so their differences are too).
struct AppCopies {
    /// (copy, the runtime's buffer it copies, from offset).
    buffers: Vec<(wgpu::Buffer, wgpu::Buffer, u64)>,
    /// Per binding: (its copy, its offset in it, size).
    at: Vec<(usize, u64, u64)>,
}

impl AppCopies {
    /// The copies of `placed`, filled from the ranges by a submission made
    /// now (before the application's work, in queue order).
    fn make(gpu: &crate::gpu::Gpu, placed: &[Placed]) -> Result<Self, LaunchError> {
        // Runs of overlapping ranges per buffer: (buffer index in placed, start, end).
        let mut runs: Vec<(usize, u64, u64)> = Vec::new();
        for (i, p) in placed.iter().enumerate() {
            let (mut a, mut b) = (p.offset, p.offset + p.size);
            // (Merged until no run meets it: a range may join several.)
            while let Some(j) = runs.iter().position(|&(k, x, y)| placed[k].buffer == p.buffer && x < b && a < y) {
                let (_, x, y) = runs.swap_remove(j);
                (a, b) = (a.min(x), b.max(y));
            }
            runs.push((i, a, b));
        }
        let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let mut enc =
            gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("svm app copies") });
        let buffers: Vec<(wgpu::Buffer, wgpu::Buffer, u64)> = runs
            .iter()
            .map(|&(k, a, b)| {
                let src = placed[k].buffer.clone();
                let copy = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("svm app binding (a copy)"),
                    size: b - a,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                enc.copy_buffer_to_buffer(&src, a, &copy, 0, b - a);
                (copy, src, a)
            })
            .collect();
        let at = placed
            .iter()
            .map(|p| {
                let j = runs
                    .iter()
                    .position(|&(k, a, b)| placed[k].buffer == p.buffer && a <= p.offset && p.offset + p.size <= b)
                    .expect("every range lies in its run");
                (j, p.offset - runs[j].1, p.size)
            })
            .collect();
        if let Some(e) = pollster::block_on(oom.pop()) {
            return Err(LaunchError::Application(format!("no device memory for copies of the bound ranges: {e}")));
        }
        gpu.submit([enc.finish()]);
        Ok(Self { buffers, at })
    }

    /// The bindings handed to the application.
    fn views(&self) -> Vec<wgpu::BufferBinding<'_>> {
        self.at
            .iter()
            .map(|&(j, o, n)| wgpu::BufferBinding {
                buffer: &self.buffers[j].0,
                offset: o,
                size: wgpu::BufferSize::new(n),
            })
            .collect()
    }

    /// Copy the read-write bindings' bytes back into their ranges (a
    /// submission of its own, under a validation error scope); the reason
    /// if the device refused it (nothing copied back).
    fn copy_back(self, gpu: &crate::gpu::Gpu, placed: &[Placed], writes: &[bool]) -> Option<String> {
        if !writes.iter().any(|&w| w) {
            return None;
        }
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc =
            gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("svm app copies back") });
        for ((p, &(j, o, n)), &w) in placed.iter().zip(&self.at).zip(writes) {
            if w {
                enc.copy_buffer_to_buffer(&self.buffers[j].0, o, &self.buffers[j].1, p.offset, n);
            }
        }
        gpu.submit_unscoped([enc.finish()]);
        pollster::block_on(scope.pop()).map(|e| e.to_string())
    }
}
