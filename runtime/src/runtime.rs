//! The runtime object and its state; the work on it is in the child
//! modules (launch, residency, eviction, CPU-fault service, advice, frames,
//! bound-range placement).
//!
//! # Locking
//! One lock, [`Inner::state`], is the *update lock* in HMM's sense: every
//! change of residency, of the page table, of the pool, and every
//! submission happens under it. It is not held while kernels run: a launch
//! submits its pass under it and records the pages the pass uses (`flight`);
//! whatever would change one of those pages (a CPU fault on it, `free`,
//! advice, eviction, a conflicting launch) waits for that pass with the lock
//! released, and everything else goes on. The fault service thread takes it
//! for each fault. Nothing that holds it ever touches the arena's *user view*
//! (only the alias view), so a thread holding it never faults on managed
//! memory and cannot deadlock with the fault service. Statistics are atomics
//! outside the lock.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use svm_migrate::{Arena, CpuFault, FaultBackendKind, FaultFatal, FaultHandler, FaultService, Served};
use svm_pagetable::{FrameIndex, PageIndex, PageTable, Pte, PAGE_SIZE};
use svm_shaders::{ERROR_RECORDS, MAX_ARG_WORDS, MAX_EXTENTS};

/// 4-byte words per page (the prelude's unit of access).
const PAGE_WORDS: u32 = (PAGE_SIZE / 4) as u32;

use crate::advise::{Advice, AdviseError, Location, Prefetch};
use crate::error::*;
use crate::gpu::{ArgsBlock, DeviceInfo, Extent, Gpu, MappingMode, FAULT_CAP};
use crate::kernel::{AccessMode, Kernel, KernelDescriptor, LaunchDescriptor, LaunchOptions, LaunchReport, Variant};
use crate::managed::ManagedVec;
use crate::space::{FrameAllocator, FrameMap, RangeAllocator};

// The runtime's work, one module per step of the data flow (all of it
// under the update lock, `Inner::state`):
mod advise; // advice and prefetch (policy on residency)
mod alloc; // allocation and free of arena ranges
mod app; // managed ranges in the application's own passes
mod bindable; // bound access: placing bound ranges (contiguity)
mod descriptor; // creation parameters (`SvmDescriptor`)
mod evict; // making room in the pool (LRU)
mod fault; // the CPU-fault service: device -> host on a CPU access
mod flight; // launches in flight: busy pages, waiting, retiring
mod frames; // where device pages get their memory (pool frames / sparse blocks)
mod launch; // launch: validate, wait for conflicts, map, submit, replay
mod mirror; // several devices mirroring one arena: page leases, fault dispatch
mod pass; // one kernel pass: variant, submission, its log read back
mod residency; // migration both ways: host -> device at launch, device -> host
mod state; // the state under the update lock, and its queries
mod submit; // submitting passes (at once or batched) and the completion thread
use crate::stats::{Counters, Stats};
pub use descriptor::SvmDescriptor;
pub(crate) use flight::FlightShared;
use frames::Frames;
use residency::Mapping;
use state::{advice, Coherent, State, HOST, STAGING_PAGES, THRASH_WINDOW};

// Field order is drop order: the state (which owns the coherent import of
// part of the arena) and the device go before the arena's mappings.
pub(crate) struct Inner {
    id: u64,
    /// The process that created the runtime: in a forked child nothing of
    /// it is usable (the GPU and the fault service stay with the parent),
    /// every method refuses and dropping it leaks the device side.
    pid: u32,
    state: std::mem::ManuallyDrop<Mutex<State>>,
    /// Wakes waiters for launches in flight.
    signals: Arc<flight::Signals>,
    /// Waits for submissions in order and marks them done.
    completer: submit::Completer,
    /// The prefetch thread's queue.
    prefetcher: advise::Prefetcher,
    /// Taken before the update lock by launches, from encoding a pass to
    /// its submit (done with the update lock released): passes reach the
    /// queue in the order they were encoded.
    launch_order: Mutex<()>,
    gpu: std::mem::ManuallyDrop<Gpu>,
    /// Sparse mode: bind batches sealed under the update lock, sent before
    /// the copies and passes that use their pages (`Inner::send_binds`),
    /// with or without the lock.
    /// (Dropped with the state, before the device: it holds the raw
    /// device too; leaked with them in a forked child.)
    bind_outbox: std::mem::ManuallyDrop<Option<Arc<crate::vk::BindOutbox>>>,
    /// Forgets the arena's allocation labels (before its mappings go): the
    /// arena's own runtime's.
    _labels: Option<crate::label::ArenaLabels>,
    /// Shared with the runtimes mirroring it (`mirror.rs`).
    arena: Arc<Arena>,
    /// The runtimes mirroring this arena, and this one's member number;
    /// set when the first mirror is made.
    group: std::sync::OnceLock<(Arc<mirror::Group>, u8)>,
    /// A mirror: the arena's own runtime (allocations go there; it keeps
    /// the arena and its fault service). Dropped last.
    home: Option<Svm>,
    /// `Svm` handles alive (clones of it, and those owners hold).
    handles: AtomicUsize,
    /// The device was lost to a launch timeout: a kernel may still run
    /// (`lose_device`), so the device side is never released.
    runaway: std::sync::atomic::AtomicBool,
    stats: Arc<Counters>,
    chunk: usize,
    prefetch: bool,
    /// [`SvmDescriptor::serve_in_place`].
    serve_in_place: bool,
}

/// A shared-virtual-memory runtime: one managed arena, one GPU. Cheap to
/// clone (a handle); the arena and device go away with the last handle.
pub struct Svm {
    // Field order is drop order: the fault service (which joins its thread,
    // holding a reference to `inner`) goes first, so that the last handle's
    // drop tears the runtime down on the dropping thread, not on the fault
    // thread as its last reference goes.
    _service: Arc<FaultService>,
    inner: Arc<Inner>,
}

impl Clone for Svm {
    fn clone(&self) -> Self {
        self.inner.handles.fetch_add(1, Ordering::Relaxed);
        Self { _service: self._service.clone(), inner: self.inner.clone() }
    }
}

impl Drop for Svm {
    fn drop(&mut self) {
        // The last handle: a mirror leaves its group here, on the dropping
        // thread (its pages brought home), whoever holds its state a while
        // longer (a fault being served through it).
        if self.inner.handles.fetch_sub(1, Ordering::AcqRel) == 1 && !self.inner.foreign() {
            self.inner.leave_group();
        }
    }
}

impl core::fmt::Debug for Svm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Svm")
            .field("arena", &self.inner.arena)
            .field("device", &self.inner.gpu.info.name)
            .finish_non_exhaustive()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Svm {
    /// Create a runtime with the default descriptor.
    pub fn new() -> Result<Self> {
        Self::with_descriptor(&SvmDescriptor::default())
    }

    /// Create a runtime.
    pub fn with_descriptor(desc: &SvmDescriptor) -> Result<Self> {
        if desc.arena_size == 0 || desc.arena_size > SvmDescriptor::MAX_ARENA_SIZE {
            return Err(SvmError::Config(format!(
                "arena_size {} must be between 1 byte and {} bytes (1 TiB)",
                desc.arena_size,
                SvmDescriptor::MAX_ARENA_SIZE
            )));
        }
        let backend = match desc.fault_backend {
            Some(k) => k,
            None => FaultBackendKind::from_env()?.unwrap_or(FaultBackendKind::Uffd),
        };
        let mode = match desc.mapping {
            Some(m) => m,
            None => MappingMode::from_env()?.unwrap_or(MappingMode::Software),
        };
        mode.check_built()?;
        // The sparse and coherent modes give their arena a device view (a
        // sparse buffer; an import that grows with allocation), whose frame
        // is the page itself: by default they take 1 GiB, not the software
        // mode's reservation, and at most what a PTE's frame field names.
        let arena_size = if desc.arena_size == SvmDescriptor::DEFAULT_ARENA_SIZE
            && !desc.arena_size_set
            && mode != MappingMode::Software
        {
            SvmDescriptor::DEFAULT_VIEW_ARENA_SIZE
        } else {
            desc.arena_size
        };
        Self::check_view_size(mode, arena_size)?;
        let arena = Arc::new(Arena::new(arena_size, backend)?);
        let inner = Self::open_inner(desc, arena, mode, None)?;
        let service = FaultService::start(inner.clone())?;
        Ok(Self { inner, _service: Arc::new(service) })
    }

    /// The sparse and coherent modes' limit on the arena (their device view).
    fn check_view_size(mode: MappingMode, arena_size: usize) -> Result<()> {
        if mode != MappingMode::Software && arena_size > SvmDescriptor::MAX_VIEW_ARENA_SIZE {
            return Err(SvmError::Config(format!(
                "arena_size {arena_size}: the {mode:?} mode gives its whole arena a device view, at most {} GiB \
                 (the PTE's frame field names a page of it); larger arenas are the software mode's",
                SvmDescriptor::MAX_VIEW_ARENA_SIZE >> 30
            )));
        }
        Ok(())
    }

    /// The device side of a runtime over `arena`: a new arena's own, or a
    /// mirror's (`home`: the arena's runtime; see `mirror.rs`).
    fn open_inner(desc: &SvmDescriptor, arena: Arc<Arena>, mode: MappingMode, home: Option<Svm>) -> Result<Arc<Inner>> {
        if !desc.fault_chunk.is_power_of_two() || !(PAGE_SIZE..=2 << 20).contains(&desc.fault_chunk) {
            return Err(SvmError::Config(format!(
                "fault_chunk {} must be a power of two between 4 KiB and 2 MiB",
                desc.fault_chunk
            )));
        }
        // (A pool past the PTE's frame field, or past what the device's
        // windows bind, is refused with the device open.)
        if desc.pool_size == 0 || desc.pool_size > SvmDescriptor::MAX_ARENA_SIZE as u64 {
            return Err(SvmError::Config(format!(
                "pool_size {} must be between 1 byte and {} bytes (1 TiB)",
                desc.pool_size,
                SvmDescriptor::MAX_ARENA_SIZE
            )));
        }
        mode.check_built()?;
        Self::check_view_size(mode, arena.len())?;
        let pages = u32::try_from(arena.len() / PAGE_SIZE).map_err(|_| SvmError::Config("arena too large".into()))?;
        // (Coherent mode: the device uses the host pages in place, imported
        // as allocations reach them, populated first; they stay for the
        // arena's life: free zeroes in place, allocations map them for the
        // CPU, nothing else does.)
        // SAFETY: `arena.host_ptr(0)` is the alias view, mapped read-write
        // for the arena's whole life; the arena outlives the `Gpu` (a local
        // `Arc` held here, and a field after it in `Inner`, so dropped after
        // it either way). Program threads racing with a kernel on managed
        // memory race as with another CPU thread.
        #[allow(unsafe_code, reason = "the coherent view's host import; argued above")]
        let (gpu, sparse) = unsafe {
            Gpu::new(
                pages,
                desc.pool_size,
                u64::from(STAGING_PAGES) * PAGE_SIZE as u64,
                desc.host_mapped_pool,
                mode,
                arena.host_ptr(0),
                desc.device.as_ref(),
            )
        }?;
        // The device tables (page table: 4 bytes a page) must be bindable
        // once the high-water mark reaches the arena's end.
        let table_limit = {
            let l = gpu.device.limits();
            l.max_storage_buffer_binding_size.min(l.max_buffer_size)
        };
        if u64::from(pages) * 4 > table_limit {
            return Err(SvmError::Config(format!(
                "arena_size {}: its page table ({} bytes) exceeds the largest buffer this device binds ({table_limit} \
                 bytes): at most {} bytes of arena here",
                arena.len(),
                u64::from(pages) * 4,
                table_limit / 4 * PAGE_SIZE as u64
            )));
        }
        let bind_outbox = sparse.as_ref().map(|a| a.outbox().clone());
        let frames = match sparse {
            Some(arena) => Frames::Sparse(Box::new(arena)),
            None => Frames::Pool(FrameAllocator::new(gpu.total_frames)),
        };
        let state = State::new(arena.len(), pages, frames);
        let signals = Arc::new(flight::Signals::default());
        let stats = Arc::new(Counters::default());
        let completer = submit::Completer::start(&gpu, signals.clone(), stats.clone())?;
        let labels =
            home.is_none().then(|| crate::label::ArenaLabels { start: arena.base(), end: arena.base() + arena.len() });
        Ok(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            pid: std::process::id(),
            _labels: labels,
            arena,
            gpu: std::mem::ManuallyDrop::new(gpu),
            bind_outbox: std::mem::ManuallyDrop::new(bind_outbox),
            state: std::mem::ManuallyDrop::new(Mutex::new(state)),
            signals,
            completer,
            prefetcher: advise::Prefetcher::default(),
            launch_order: Mutex::new(()),
            stats,
            chunk: desc.fault_chunk,
            prefetch: desc.fault_prefetch,
            serve_in_place: desc.serve_in_place,
            group: std::sync::OnceLock::new(),
            home,
            handles: AtomicUsize::new(1),
            runaway: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The runtime's wgpu device: for the app's own buffers and pipelines,
    /// and to read its limits (e.g. the largest binding).
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.gpu.device
    }
    /// The runtime's wgpu queue (writes, and submissions from the thread
    /// that also drives the runtime). In the sparse mode the runtime binds
    /// memory with raw `vkQueueBindSparse` calls on this queue, which
    /// wgpu's own queue lock does not cover: submit from other threads
    /// with [`Self::submit_commands`]. Launches queued behind a running one
    /// wait in the runtime's batch until the GPU is done with it (one
    /// submission for the batch): a submission made here may run before
    /// them; [`Self::submit_commands`] sends them first. (Launches touch
    /// only managed memory and the runtime's buffers, so only ordering with
    /// the application's own work on its own buffers can tell.)
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.gpu.queue
    }

    /// Submit command buffers on the runtime's queue, ordered against its
    /// own submissions and sparse binds (Vulkan requires a queue's calls to
    /// be externally synchronized; this takes the runtime's queue lock).
    /// Launches queued before and not yet submitted (batched behind a
    /// running one) are submitted first, so that the commands run after
    /// them. Not from inside a wgpu callback (`map_async`,
    /// `on_submitted_work_done`): those run inside the runtime's own polls
    /// too, under the lock this takes, and would wait for themselves.
    pub fn submit_commands(&self, cmds: impl IntoIterator<Item = wgpu::CommandBuffer>) -> wgpu::SubmissionIndex {
        self.inner.completer.flush();
        self.inner.gpu.submit_unscoped(cmds)
    }
    /// The GPU in use.
    pub fn device_info(&self) -> &DeviceInfo {
        &self.inner.gpu.info
    }
    /// The CPU fault backend in use.
    pub fn fault_backend(&self) -> FaultBackendKind {
        self.inner.arena.backend()
    }
    /// Whether system calls that touch device-owned managed memory (a
    /// `read(2)` into it, `write(2)` from it) are served like CPU faults.
    /// True with a full userfaultfd; false with the mprotect backend and
    /// with a userfaultfd an unprivileged process got as
    /// `UFFD_USER_MODE_ONLY` (`vm.unprivileged_userfaultfd=0`): there such
    /// calls fail with `EFAULT`, so `prefetch(range, Location::Host)` first.
    pub fn syscall_faults_served(&self) -> bool {
        self.inner.arena.syscall_faults_served()
    }
    /// First address of the arena.
    pub fn arena_base(&self) -> usize {
        self.inner.arena.base()
    }
    /// Arena size in bytes.
    pub fn arena_size(&self) -> usize {
        self.inner.arena.len()
    }
    /// Vulkan validation errors captured so far, when the runtime runs under
    /// the validation layer (`SVM_VALIDATION=1` and the layer installed);
    /// known false positives are filtered (see `svm::vk::KNOWN_FALSE_POSITIVES`).
    /// `Ok` when there are none or nothing is captured.
    pub fn validation_check(&self) -> Result<(), String> {
        self.inner.gpu.validation.as_ref().map_or(Ok(()), |v| v.check())
    }
    /// Whether validation messages are being captured.
    pub fn validation_active(&self) -> bool {
        self.inner.gpu.validation.as_ref().is_some_and(|v| v.layer_present())
    }
    /// Whether [`Advice::AccessedBy`] (in-place access to host memory) is
    /// available on this device.
    pub fn coherent_mode_available(&self) -> bool {
        self.inner.gpu.host_import
    }
    /// How kernels bind the windows of the pool / arena view (a binding
    /// array where the device has them, else four bindings;
    /// `SVM_WINDOWS=fixed` forces the latter).
    pub fn windows(&self) -> svm_shaders::Windows {
        self.inner.gpu.windows
    }
    /// How device pages are mapped.
    pub fn mapping_mode(&self) -> MappingMode {
        self.inner.gpu.mode
    }
    /// Whether the device pool is CPU-mapped memory (unified-memory
    /// adapters; see [`SvmDescriptor::host_mapped_pool`]): the software
    /// mode's pool segments, or the sparse mode's memory blocks. Migration
    /// is then a CPU copy, with no queue operation.
    pub fn pool_is_host_mapped(&self) -> bool {
        self.inner.gpu.cpu_copies
    }
    /// Device pool size in pages.
    pub fn pool_pages(&self) -> u32 {
        self.inner.gpu.total_frames
    }
    /// Bytes brought back per CPU fault.
    pub fn fault_chunk(&self) -> usize {
        self.inner.chunk
    }
    /// Migration statistics so far.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }
    /// Destroy the GPU device, as a driver reset or a removed GPU would: for
    /// testing the lost-device paths. Afterwards launches fail with
    /// [`DeviceError::Lost`], and a CPU access to a page that only the device
    /// held crashes with a message naming it; [`Self::lost_ranges`] lists
    /// those pages.
    #[doc(hidden)]
    pub fn destroy_device_for_testing(&self) {
        if self.inner.foreign() {
            return;
        }
        let _st = self.inner.state.lock();
        if let Some(raw) = &self.inner.gpu.raw {
            raw.mark_lost();
        }
        self.inner.gpu.device.destroy();
        let mut lost = self.inner.gpu.lost.lock();
        if lost.is_none() {
            *lost = Some("device destroyed".into());
        }
    }

    /// After a device loss: the address ranges whose only copy was on the
    /// device (what was lost), and those whose only copy was on the device
    /// of a dropped mirror of this arena that was lost ([`Self::mirror`]).
    /// Empty while every device works.
    pub fn lost_ranges(&self) -> Vec<(usize, usize)> {
        if self.inner.foreign() {
            return Vec::new();
        }
        let st = self.inner.state.lock();
        let mut r = self.inner.lost_with_mirrors(st.top);
        if self.inner.gpu.check_lost().is_err() {
            r.extend(runs(0, st.top, |p| st.owned(p)));
        }
        // (Whichever member's kernel writes them: the arena's list.)
        r.extend(self.inner.arena.withheld().into_iter().map(|(o, l)| (page_of(o), page_of(o + l))));
        // (Overlapping where several flights or losses named one page.)
        merge_ranges(r.into_iter().map(|(a, b)| (a, b, false)).collect())
            .into_iter()
            .map(|(a, b, _)| (a, b))
            .map(|(a, b)| (self.inner.arena.base() + a as usize * PAGE_SIZE, (b - a) as usize * PAGE_SIZE))
            .collect()
    }

    /// Number of live allocations (sub-page blocks counted one each).
    pub fn live_allocations(&self) -> usize {
        if self.inner.foreign() {
            return 0;
        }
        if let Some(home) = &self.inner.home {
            // (A mirror's copy of the allocations does not count blocks.)
            return home.live_allocations();
        }
        let st = self.inner.state.lock();
        // (Allocations kept for good on pages a lost device may write are
        // freed, to their owners: not counted.)
        st.ranges.live_count() - st.slabs.pages() + st.slabs.live() - st.leaked.len()
    }
    /// Pages the device owns now.
    pub fn device_resident_pages(&self) -> usize {
        if self.inner.foreign() {
            return 0;
        }
        let st = self.inner.state.lock();
        (0..st.top).filter(|&p| st.owned(p)).count()
    }

    /// Compile a kernel (see [`KernelDescriptor::source`] for bound and
    /// pointer access).
    ///
    /// The source is parsed and validated here (errors name the kernel's
    /// own lines); a kernel that uses the prelude may not name its sealed
    /// internals ([`KernelError::Sealed`]) nor use its bind group
    /// ([`KernelError::Binding`]). The device pipelines are specialized per
    /// launch kind and built when a launch first needs one.
    pub fn create_kernel(&self, desc: &KernelDescriptor<'_>) -> Result<Kernel, KernelError> {
        self.inner.check_process()?;
        crate::compile::compile(&self.inner.gpu, self.inner.id, desc)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.foreign() {
            // A forked child: the device and its memory belong to the
            // parent; destroying them from here would act on shared driver
            // state (and the state lock may have been held at the fork).
            return;
        }
        // A mirror brings its pages home (its launches in flight finish
        // first) and gives their leases to the arena's runtime.
        self.leave_group();
        // Launches in flight (their handles forgotten) finish first; after
        // a device loss the completion thread gives up on them.
        let lost = self.gpu.check_lost().is_err();
        self.completer.stop(lost);
        self.prefetcher.stop();
        if self.runaway.load(Ordering::Acquire) {
            // A kernel of the device lost to a timeout may still run: it
            // may read and write the pool (host memory where the pool is
            // host-mapped), the `AccessedBy` import and the arena in place.
            // None of them is ever released: the device side is leaked
            // whole, and the arena with it (found by review: the import and
            // the pool went with the state and the device).
            std::mem::forget(self.arena.clone());
            tracing::warn!(
                "svm: a runtime whose device was lost to a launch timeout is dropped: its device side is leaked"
            );
            return;
        }
        // SAFETY: each field is dropped exactly once, here, and never used
        // again (`self` is being dropped); the state (which holds device
        // objects) goes before the device, as the field order did.
        #[allow(unsafe_code, reason = "ManuallyDrop of the device side, so that a forked child can leak it")]
        unsafe {
            std::mem::ManuallyDrop::drop(&mut self.state);
            std::mem::ManuallyDrop::drop(&mut self.bind_outbox);
            std::mem::ManuallyDrop::drop(&mut self.gpu);
        }
    }
}

impl Inner {
    /// This process did not create the runtime (a forked child).
    pub(crate) fn foreign(&self) -> bool {
        std::process::id() != self.pid
    }

    /// [`DeviceError::NotInherited`] in a forked child.
    pub(crate) fn check_process(&self) -> Result<(), DeviceError> {
        if self.foreign() {
            return Err(DeviceError::NotInherited { owner: self.pid, current: std::process::id() });
        }
        Ok(())
    }

    /// Pages `[a, b)` covering `[addr, addr + len)`, if all are allocated.
    fn page_range(&self, st: &State, addr: usize, len: usize) -> Option<(u32, u32)> {
        let off = addr.wrapping_sub(self.arena.base());
        let end = off.checked_add(len).filter(|&e| e <= self.arena.len() && len > 0)?;
        let (a, b) = (page_of(off), page_of(end.next_multiple_of(PAGE_SIZE)));
        st.table.entries(a..b).iter().all(|p| p.is_allocated()).then_some((a, b))
    }
}

impl Svm {
    /// [`DeviceError::NotInherited`] in a forked child.
    pub(crate) fn check_process(&self) -> Result<(), DeviceError> {
        self.inner.check_process()
    }

    /// Whether `[addr, addr + len)` lies in live allocations of this
    /// runtime (checked under the update lock; it may be freed right after
    /// unless the caller owns it).
    pub fn is_allocated(&self, addr: usize, len: usize) -> bool {
        if self.inner.foreign() {
            return false;
        }
        let st = self.inner.state.lock();
        self.inner.page_range(&st, addr, len).is_some()
    }
}

fn page_of(offset: usize) -> u32 {
    u32::try_from(offset / PAGE_SIZE).expect("arena offsets fit 32-bit page numbers (arena < 16 TiB)")
}

/// Maximal runs of `[a, b)` where `pred` holds.
fn runs(a: u32, b: u32, pred: impl Fn(u32) -> bool) -> impl Iterator<Item = (u32, u32)> {
    let mut p = a;
    core::iter::from_fn(move || {
        while p < b && !pred(p) {
            p += 1;
        }
        if p >= b {
            return None;
        }
        let s = p;
        while p < b && pred(p) {
            p += 1;
        }
        Some((s, p))
    })
}

/// Sort and merge page ranges; a page declared both ways is read-write.
/// Overlapping ranges with different modes are split at their boundaries.
fn merge_ranges(v: Vec<(u32, u32, bool)>) -> Vec<(u32, u32, bool)> {
    // Sweep over range ends: O(n log n) in the number of ranges (a replay
    // pass can bring thousands of fault chunks).
    let mut events: Vec<(u32, i32, i32)> = Vec::with_capacity(2 * v.len());
    for &(a, b, w) in &v {
        if a < b {
            events.push((a, 1, i32::from(w)));
            events.push((b, -1, -i32::from(w)));
        }
    }
    events.sort_unstable_by_key(|e| e.0);
    let mut out: Vec<(u32, u32, bool)> = Vec::new();
    let (mut covered, mut writers) = (0i32, 0i32);
    let mut i = 0;
    while i < events.len() {
        let at = events[i].0;
        while i < events.len() && events[i].0 == at {
            covered += events[i].1;
            writers += events[i].2;
            i += 1;
        }
        let Some(&(next, ..)) = events.get(i) else { break };
        if covered > 0 {
            let write = writers > 0;
            match out.last_mut() {
                Some(l) if l.1 == at && l.2 == write => l.1 = next,
                _ => out.push((at, next, write)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_splits_and_joins() {
        assert_eq!(
            merge_ranges(vec![(0, 4, false), (2, 6, true), (6, 8, true), (10, 12, false)]),
            vec![(0, 2, false), (2, 8, true), (10, 12, false)]
        );
        assert_eq!(merge_ranges(vec![(0, 4, false), (0, 4, false)]), vec![(0, 4, false)]);
    }

    /// The sweep against a per-page model, on pseudo-random inputs.
    #[test]
    fn merge_matches_a_per_page_model() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m) as u32
        };
        for _ in 0..500 {
            let v: Vec<(u32, u32, bool)> = (0..next(8))
                .map(|_| {
                    let a = next(64);
                    (a, a + next(16), next(2) == 1)
                })
                .collect();
            let mut model = [None::<bool>; 96];
            for &(a, b, w) in &v {
                for p in a..b {
                    model[p as usize] = Some(model[p as usize].unwrap_or(false) | w);
                }
            }
            let merged = merge_ranges(v.clone());
            let mut got = [None::<bool>; 96];
            for w in merged.windows(2) {
                assert!(w[0].1 < w[1].0 || w[0].2 != w[1].2, "not maximal: {merged:?}");
            }
            for &(a, b, w) in &merged {
                assert!(a < b);
                for p in a..b {
                    assert!(got[p as usize].is_none(), "overlap: {merged:?}");
                    got[p as usize] = Some(w);
                }
            }
            assert_eq!(got, model, "{v:?} -> {merged:?}");
        }
    }

    /// The resident index against the frames it summarizes, over random
    /// frame changes (a region boundary every 512 pages).
    #[test]
    fn resident_index_matches_the_frames() {
        let pages = 3 * state::REGION_PAGES + 17;
        let mut st = State::new(pages as usize * PAGE_SIZE, pages, Frames::Pool(FrameAllocator::new(64)));
        st.top = pages;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = (x % u64::from(pages)) as u32;
            let f = if x >> 40 & 1 == 0 { HOST } else { step };
            st.set_frame(p, f);
            if step % 997 == 0 {
                let want: Vec<u32> = (0..pages).filter(|&p| st.frames_of.get(p as usize) != HOST).collect();
                assert_eq!(st.resident_pages().collect::<Vec<_>>(), want, "step {step}");
            }
        }
    }

    #[test]
    fn runs_split() {
        let v: Vec<_> = runs(0, 10, |p| p % 4 != 0).collect();
        assert_eq!(v, vec![(1, 4), (5, 8), (9, 10)]);
    }
}
