//! The runtime object, its state and the two migration paths.
//!
//! # Locking
//! One lock, [`Inner::state`], is the *update lock* in HMM's sense: every
//! change of residency, of the page table, of the pool, and every use of the
//! GPU queue happens under it. Launches hold it from validation to kernel
//! completion (launches are synchronous), so a CPU fault on a page a running
//! kernel may write waits for that kernel. The fault service thread takes it
//! for each fault. Nothing that holds it ever touches the arena's *user view*
//! (only the alias view), so a thread holding it never faults on managed
//! memory and cannot deadlock with the fault service. Statistics are atomics
//! outside the lock.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use svm_migrate::{Arena, CpuFault, FaultBackendKind, FaultFatal, FaultHandler, FaultService};
use svm_pagetable::{FrameIndex, PageIndex, PageTable, Pte, PAGE_SIZE};
use svm_shaders::{ERROR_RECORDS, MAX_ARG_WORDS, MAX_EXTENTS};

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

/// 4-byte words per page (the prelude's unit of access).
const PAGE_WORDS: u32 = (PAGE_SIZE / 4) as u32;

use crate::advise::{Advice, AdviseError, Location, Prefetch};
use crate::error::*;
use crate::gpu::{ArgsBlock, DeviceInfo, Extent, Gpu, MappingMode, FAULT_CAP};
use crate::kernel::{AccessMode, Kernel, KernelDescriptor, LaunchDescriptor, LaunchOptions, LaunchReport, Variant};
use crate::managed::ManagedVec;
use crate::space::{FrameAllocator, RangeAllocator};

mod bindable;
use crate::stats::{Counters, Stats};

/// Bits of [`State::advice`].
mod advice {
    /// Keep read-only device copies across launches; CPU writes are caught.
    pub const READ_MOSTLY: u8 = 1;
    /// Migrate written pages back to the host right after each launch.
    pub const PREFER_HOST: u8 = 2;
    /// Evict these pages only when nothing else can go.
    pub const PREFER_DEVICE: u8 = 4;
    /// AccessedBy: the device uses the host copy in place (never migrates).
    pub const COHERENT: u8 = 8;
}

/// A range of host memory the device reads and writes in place (the seed's
/// DEVICE_PUBLIC, UVM's AccessedBy): its pages never migrate; their PTEs say
/// COHERENT and the prelude reaches them through the coherent window.
struct Coherent {
    /// First page and end page of the range.
    first: u32,
    end: u32,
    /// The bind group with the imported buffer as the coherent window (the
    /// import lives as long as the buffer it is bound through).
    bind_group: wgpu::BindGroup,
    _import: crate::vk::HostImport,
}

impl State {
    /// The device owns the page (its data is only there).
    fn owned(&self, p: u32) -> bool {
        self.frames_of[p as usize] != HOST && !self.dup[p as usize]
    }
}

/// What one kernel pass produced: the error of a refused access, if any, and
/// the GPU faults as (page, write) pairs.
type PassOutcome = (Option<LaunchError>, Vec<(u32, bool)>);

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

/// Where device pages get their memory.
enum Frames {
    /// Software mode: frames of the pool, any frame for any page.
    Pool(FrameAllocator),
    /// Sparse mode: page `p`'s frame is `p`; its memory is a block bound at
    /// sparse page `p` while the page is resident.
    Sparse(crate::vk::SparseArena),
}

impl Frames {
    /// Frames for up to `want` pages starting at `page`, as (first frame,
    /// count); `None` when none is free.
    fn alloc_run(&mut self, page: u32, want: u32) -> Result<Option<(u32, u32)>, DeviceError> {
        match self {
            Frames::Pool(f) => Ok(f.alloc_run(want)),
            Frames::Sparse(arena) => {
                let mut binds = Vec::with_capacity(want as usize);
                while (binds.len() as u32) < want {
                    let Some(block) = arena.alloc_block() else { break };
                    binds.push((page + binds.len() as u32, block));
                }
                if binds.is_empty() {
                    return Ok(None);
                }
                // SAFETY: the runtime submits to the queue only under its
                // update lock, which the caller holds: no submit runs during
                // the bind. Pages are inside the arena view and blocks were
                // just allocated from this arena's pool.
                #[allow(unsafe_code, reason = "vkQueueBindSparse; contract argued inline")]
                let bound = unsafe { arena.bind(&binds) };
                if let Err(e) = bound {
                    for &(_, b) in &binds {
                        let _ = arena.free_block(b);
                    }
                    return Err(DeviceError::Unexpected(format!("sparse bind: {e}")));
                }
                Ok(Some((page, binds.len() as u32)))
            }
        }
    }

    /// Give back the frame of a page that left the device.
    fn free(&mut self, frame: u32) {
        self.free_many(&[frame]);
    }

    /// Give back the frames of pages that left the device (sparse: one
    /// unbind for all of them; the device no longer uses them, every submit
    /// was waited for).
    fn free_many(&mut self, frames: &[u32]) {
        match self {
            Frames::Pool(f) => frames.iter().for_each(|&fr| f.free(fr)),
            Frames::Sparse(arena) => {
                if frames.is_empty() {
                    return;
                }
                let blocks: Vec<_> = frames.iter().filter_map(|&fr| arena.bound(fr)).collect();
                // SAFETY: as in `alloc_run`: under the update lock, no submit
                // runs concurrently; the pages are inside the arena view.
                #[allow(unsafe_code, reason = "vkQueueBindSparse; contract argued inline")]
                let unbound = unsafe { arena.unbind(frames) };
                match unbound {
                    Ok(_) => {
                        for b in blocks {
                            if let Err(e) = arena.free_block(b) {
                                tracing::error!("svm: freeing a sparse block: {e}");
                            }
                        }
                    }
                    // The blocks stay bound (leaked). Only a lost device gets
                    // here.
                    Err(e) => tracing::error!("svm: sparse unbind of {} pages: {e}", frames.len()),
                }
            }
        }
    }

    fn free_count(&self) -> u32 {
        match self {
            Frames::Pool(f) => f.free_count(),
            Frames::Sparse(arena) => arena.free_blocks(),
        }
    }

    fn total(&self) -> u32 {
        match self {
            Frames::Pool(f) => f.total(),
            Frames::Sparse(arena) => arena.pool_blocks(),
        }
    }
}

/// Sentinel of [`State::frames_of`]: the page is not on the device.
const HOST: u32 = u32::MAX;
/// Size of the device→host staging buffer, in pages (2 MiB): the largest
/// span one CPU fault, prefetch or eviction batch moves.
const STAGING_PAGES: u32 = 512;

/// Creation parameters of an [`Svm`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SvmDescriptor {
    /// Bytes of managed address space (rounded up to 2 MiB). Default 1 GiB.
    pub arena_size: usize,
    /// Bytes of device page pool. Default 512 MiB, at most as many storage
    /// bindings' worth as the prelude has windows (32 with binding arrays,
    /// else 4).
    pub pool_size: u64,
    /// CPU fault backend; `None`: `SVM_FAULT_BACKEND` if set, else uffd.
    pub fault_backend: Option<FaultBackendKind>,
    /// Bytes brought back per CPU fault: a power of two from 4 KiB to 2 MiB,
    /// aligned. Default 64 KiB.
    pub fault_chunk: usize,
    /// Grow CPU-fault migrations like UVM's tree prefetcher (see
    /// `fault_span`). Default on.
    pub fault_prefetch: bool,
    /// On unified-memory adapters (CPU drivers such as lavapipe, integrated
    /// GPUs), keep the device pool in CPU-mappable memory and migrate by
    /// mapping it, with no staging copy and no queue round trip. Default on;
    /// `SVM_MAPPED_POOL=0` also turns it off. Discrete GPUs never use it.
    pub host_mapped_pool: bool,
    /// How device pages are mapped; `None`: `SVM_MAPPING_MODE` if set, else
    /// [`MappingMode::Software`].
    pub mapping: Option<MappingMode>,
}

impl Default for SvmDescriptor {
    fn default() -> Self {
        Self {
            arena_size: 1 << 30,
            pool_size: 512 << 20,
            fault_backend: None,
            fault_chunk: 64 << 10,
            fault_prefetch: true,
            host_mapped_pool: true,
            mapping: None,
        }
    }
}

impl SvmDescriptor {
    /// Set the arena size.
    pub fn arena_size(mut self, bytes: usize) -> Self {
        self.arena_size = bytes;
        self
    }
    /// Set the device pool size.
    pub fn pool_size(mut self, bytes: u64) -> Self {
        self.pool_size = bytes;
        self
    }
    /// Choose the fault backend.
    pub fn fault_backend(mut self, kind: FaultBackendKind) -> Self {
        self.fault_backend = Some(kind);
        self
    }
    /// Turn the CPU-fault prefetcher on or off.
    pub fn fault_prefetch(mut self, on: bool) -> Self {
        self.fault_prefetch = on;
        self
    }
    /// Choose the mapping mode.
    pub fn mapping(mut self, mode: MappingMode) -> Self {
        self.mapping = Some(mode);
        self
    }
    /// Allow or forbid the host-mapped pool.
    pub fn host_mapped_pool(mut self, on: bool) -> Self {
        self.host_mapped_pool = on;
        self
    }
    /// Set the fault chunk.
    pub fn fault_chunk(mut self, bytes: usize) -> Self {
        self.fault_chunk = bytes;
        self
    }
}

/// Mutable state, under the update lock.
struct State {
    ranges: RangeAllocator,
    /// Per arena page: its pool frame when the device owns it, else [`HOST`].
    frames_of: Vec<u32>,
    table: PageTable,
    frames: Frames,
    /// Pages whose PTE was made valid for the last launch (reset before the
    /// next one).
    mapped: Vec<(u32, u32)>,
    /// The working set of the running launch or prefetch: never evicted to
    /// make room for it. Empty between operations (a finished launch's pages
    /// are ordinary LRU candidates).
    pinned: Vec<(u32, u32)>,
    /// Per arena page: the device holds a read-only duplicate for the
    /// running launch (dropped at its end); the CPU copy stays current.
    dup: Vec<bool>,
    /// Per arena page: the launch epoch that last mapped it (LRU eviction).
    last_use: Vec<u32>,
    /// Per arena page: [`advice`] bits set by [`Svm::advise`].
    advice: Vec<u8>,
    /// Launches so far.
    epoch: u32,
    /// End (page) of the span the last CPU fault brought back: a fault
    /// there is the next step of a sequential stream.
    last_fault_end: Option<u32>,
    /// The range advised `AccessedBy`, imported for in-place device access.
    coherent: Option<Coherent>,
    /// Pages a kernel was writing in place when the device was declared
    /// lost (a launch timeout): taken from the CPU for good.
    lost_in_place: Vec<(u32, u32)>,
    /// Starts of the live allocations a typed owner ([`ManagedVec`]) holds:
    /// the raw [`Svm::free`] refuses them (only the owner's drop frees).
    owned: std::collections::HashSet<usize>,
}

// Field order is drop order: the state (which owns the coherent import of
// part of the arena) and the device go before the arena's mappings.
pub(crate) struct Inner {
    id: u64,
    /// The process that created the runtime: in a forked child nothing of
    /// it is usable (the GPU and the fault service stay with the parent),
    /// every method refuses and dropping it leaks the device side.
    pid: u32,
    state: std::mem::ManuallyDrop<Mutex<State>>,
    gpu: std::mem::ManuallyDrop<Gpu>,
    arena: Arena,
    stats: Counters,
    chunk: usize,
    prefetch: bool,
}

/// A shared-virtual-memory runtime: one managed arena, one GPU. Cheap to
/// clone (a handle); the arena and device go away with the last handle.
#[derive(Clone)]
pub struct Svm {
    inner: Arc<Inner>,
    _service: Arc<FaultService>,
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
        if !desc.fault_chunk.is_power_of_two() || !(PAGE_SIZE..=2 << 20).contains(&desc.fault_chunk) {
            return Err(SvmError::Config(format!(
                "fault_chunk {} must be a power of two between 4 KiB and 2 MiB",
                desc.fault_chunk
            )));
        }
        if desc.arena_size == 0 || desc.arena_size > (4 << 30) - (2 << 20) {
            return Err(SvmError::Config(format!(
                "arena_size {} must be between 1 byte and 4 GiB - 2 MiB (32-bit page offsets in the prelude)",
                desc.arena_size
            )));
        }
        let backend = match desc.fault_backend {
            Some(k) => k,
            None => FaultBackendKind::from_env()?.unwrap_or(FaultBackendKind::Uffd),
        };
        let arena = Arena::new(desc.arena_size, backend)?;
        let pages = u32::try_from(arena.len() / PAGE_SIZE).map_err(|_| SvmError::Config("arena too large".into()))?;
        let mode = match desc.mapping {
            Some(m) => m,
            None => MappingMode::from_env()?.unwrap_or(MappingMode::Software),
        };
        if mode == MappingMode::Coherent {
            // The device uses the host pages in place: they all exist before
            // the import and for the arena's life (free zeroes in place;
            // allocations map them for the CPU, nothing else ever does).
            arena
                .populate_host(0, arena.len())
                .map_err(|e| SvmError::Config(format!("populating the arena for the coherent mode: {e}")))?;
        }
        // SAFETY: `arena.host_ptr(0)` is the alias view, mapped read-write
        // for the arena's whole life; the arena outlives the `Gpu` (a local
        // declared before it here, and a field after it in `Inner`, so
        // dropped after it either way). Program threads racing with a
        // kernel on managed memory race as with another CPU thread.
        #[allow(unsafe_code, reason = "the coherent view's host import; argued above")]
        let (gpu, sparse) = unsafe {
            Gpu::new(
                pages,
                desc.pool_size,
                u64::from(STAGING_PAGES) * PAGE_SIZE as u64,
                desc.host_mapped_pool,
                mode,
                arena.host_ptr(0),
            )
        }?;
        let state = State {
            ranges: RangeAllocator::new(arena.len()),
            frames_of: vec![HOST; pages as usize],
            table: PageTable::new(pages),
            frames: match sparse {
                Some(arena) => Frames::Sparse(arena),
                None => Frames::Pool(FrameAllocator::new(gpu.total_frames)),
            },
            mapped: Vec::new(),
            pinned: Vec::new(),
            dup: vec![false; pages as usize],
            last_use: vec![0; pages as usize],
            advice: vec![0; pages as usize],
            epoch: 0,
            last_fault_end: None,
            coherent: None,
            owned: std::collections::HashSet::new(),
            lost_in_place: Vec::new(),
        };
        let inner = Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            pid: std::process::id(),
            arena,
            gpu: std::mem::ManuallyDrop::new(gpu),
            state: std::mem::ManuallyDrop::new(Mutex::new(state)),
            stats: Counters::default(),
            chunk: desc.fault_chunk,
            prefetch: desc.fault_prefetch,
        });
        let service = FaultService::start(inner.clone())?;
        Ok(Self { inner, _service: Arc::new(service) })
    }

    /// The runtime's wgpu device: for the app's own buffers and pipelines,
    /// and to read its limits (e.g. the largest binding).
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.gpu.device
    }
    /// The runtime's wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.gpu.queue
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
    /// known false positives are filtered (see [`crate::vk::KNOWN_FALSE_POSITIVES`]).
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
    /// adapters; see [`SvmDescriptor::host_mapped_pool`]).
    pub fn pool_is_host_mapped(&self) -> bool {
        self.inner.gpu.mapped_pool
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
    /// device (what was lost). Empty while the device works.
    pub fn lost_ranges(&self) -> Vec<(usize, usize)> {
        if self.inner.foreign() || self.inner.gpu.check_lost().is_ok() {
            return Vec::new();
        }
        let st = self.inner.state.lock();
        let mut r: Vec<(u32, u32)> = runs(0, st.table.len(), |p| st.owned(p)).collect();
        r.extend(st.lost_in_place.iter().copied());
        r.sort_unstable();
        r.into_iter()
            .map(|(a, b)| (self.inner.arena.base() + a as usize * PAGE_SIZE, (b - a) as usize * PAGE_SIZE))
            .collect()
    }

    /// Number of live allocations.
    pub fn live_allocations(&self) -> usize {
        if self.inner.foreign() {
            return 0;
        }
        self.inner.state.lock().ranges.live_count()
    }
    /// Pages the device owns now.
    pub fn device_resident_pages(&self) -> usize {
        if self.inner.foreign() {
            return 0;
        }
        let st = self.inner.state.lock();
        (0..st.frames_of.len()).filter(|&p| st.owned(p as u32)).count()
    }

    /// Allocate `bytes` of managed memory (zero-filled, page aligned; 2 MiB
    /// aligned from 2 MiB up).
    pub fn alloc(&self, bytes: usize) -> Result<NonNull<u8>, AllocError> {
        self.inner.check_process().map_err(|_| AllocError::NotInherited)?;
        if bytes == 0 {
            return Err(AllocError::ZeroSize);
        }
        let arena = &self.inner.arena;
        if bytes > arena.len() {
            return Err(AllocError::TooLarge { requested: bytes, arena: arena.len() });
        }
        let len = bytes.next_multiple_of(PAGE_SIZE);
        let align = if len >= 2 << 20 { 2 << 20 } else { PAGE_SIZE };
        let mut st = self.inner.state.lock();
        let off = st
            .ranges
            .alloc(len, align)
            .ok_or(AllocError::ArenaExhausted { requested: bytes, largest_free: st.ranges.largest_free() })?;
        // Coherent mode: the pages exist (populated at creation); map them
        // for the CPU now, so that first touches do not fault.
        let mapped = arena.allocate(off, len).and_then(|()| {
            if self.inner.gpu.mode == MappingMode::Coherent {
                arena.restore(off, len)
            } else {
                Ok(())
            }
        });
        if let Err(e) = mapped {
            st.ranges.free(off);
            return Err(AllocError::Os(e.to_string()));
        }
        let first = page_of(off);
        st.table.update_range(first..first + page_of(len), |_, _| Pte::ALLOCATED);
        drop(st);
        // SAFETY-free: an arena address is never null.
        Ok(NonNull::new((arena.base() + off) as *mut u8).expect("arena addresses are non-null"))
    }

    /// Free an allocation made by [`Self::alloc`], by its start address.
    /// Device-resident pages are dropped; the range becomes inaccessible (a
    /// later CPU access faults). Allocations a typed owner holds
    /// ([`ManagedVec`]) are refused ([`FreeError::Owned`]): only dropping
    /// the owner frees them, so no two owners can ever share memory.
    pub fn free(&self, ptr: *mut u8) -> Result<(), FreeError> {
        self.free_impl(ptr, false)
    }

    /// The drop of a typed owner.
    pub(crate) fn free_owned(&self, ptr: *mut u8) -> Result<(), FreeError> {
        self.free_impl(ptr, true)
    }

    fn free_impl(&self, ptr: *mut u8, owner: bool) -> Result<(), FreeError> {
        if self.inner.foreign() {
            // An owner dropped in a forked child frees nothing (the memory
            // is the parent's); the raw free says why.
            return if owner { Ok(()) } else { Err(FreeError::NotInherited) };
        }
        let addr = ptr as usize;
        let arena = &self.inner.arena;
        if !arena.contains(addr) {
            return Err(FreeError::NotAllocated { addr });
        }
        let off = addr - arena.base();
        let mut st = self.inner.state.lock();
        let Some((start, len)) = st.ranges.containing(off) else { return Err(FreeError::NotAllocated { addr }) };
        if start != off {
            return Err(FreeError::NotAllocated { addr });
        }
        if st.owned.contains(&start) != owner {
            return Err(if owner { FreeError::NotAllocated { addr } } else { FreeError::Owned { addr } });
        }
        let st = &mut *st;
        let first = page_of(start);
        let pages = first as usize..(first + page_of(len)) as usize;
        if st.coherent.as_ref().is_some_and(|c| (c.first as usize) < pages.end && pages.start < c.end as usize) {
            // (Its pages stay intact in the host copy: if the free fails
            // below, the range simply migrates again.)
            self.inner.drop_coherent(st);
        }
        // The CPU side first, the bookkeeping after: a free the OS refuses
        // (mprotect's ENOMEM at vm.max_map_count) leaves the allocation
        // live, readable and intact, as `FreeError` promises.
        let dup_runs: Vec<(u32, u32)> = runs(first, first + page_of(len), |p| st.dup[p as usize]).collect();
        // Kept read-only copies are write-protected on the CPU side; with
        // userfaultfd the protection outlives the mapping, so it is lifted
        // first (mprotect's PROT_NONE below replaces PROT_READ).
        let uffd_wp = !dup_runs.is_empty() && arena.backend() == FaultBackendKind::Uffd;
        let span = |(a, b): (u32, u32)| (a as usize * PAGE_SIZE, (b - a) as usize * PAGE_SIZE);
        if uffd_wp {
            for &r in &dup_runs {
                let (o, l) = span(r);
                arena.write_unprotect(o, l).map_err(|e| FreeError::Os(e.to_string()))?;
            }
        }
        let released = if self.inner.gpu.mode == MappingMode::Coherent {
            // The device uses these very pages (imported once, pinned by a
            // real driver): zero them in place; punching them out would
            // part the CPU's memory from the device's.
            arena.release_in_place(start, len)
        } else {
            arena.release(start, len)
        };
        if let Err(e) = released {
            // mprotect may have changed part of the range before failing:
            // put back what each page had (best effort; a page left
            // PROT_NONE is still served by the fault path).
            let uffd = arena.backend() == FaultBackendKind::Uffd;
            let restore = |pred: &dyn Fn(u32) -> bool| {
                for r in runs(first, first + page_of(len), pred) {
                    let (o, l) = span(r);
                    let _ = arena.allocate(o, l);
                }
            };
            if uffd {
                restore(&|_| true);
            } else {
                restore(&|p| !st.owned(p));
            }
            for &r in &dup_runs {
                let (o, l) = span(r);
                let _ = arena.write_protect(o, l);
            }
            return Err(FreeError::Os(e.to_string()));
        }
        st.dup[pages.clone()].fill(false);
        st.advice[pages].fill(0);
        let freed: Vec<u32> = (first..first + page_of(len))
            .map(|p| std::mem::replace(&mut st.frames_of[p as usize], HOST))
            .filter(|&f| f != HOST)
            .collect();
        st.frames.free_many(&freed);
        st.table.update_range(first..first + page_of(len), |_, _| Pte::EMPTY);
        st.ranges.free(start);
        st.owned.remove(&start);
        Ok(())
    }

    /// Allocate a zeroed managed array of `len` elements (page aligned:
    /// element types aligned above a page are refused).
    pub fn alloc_vec<T: bytemuck::Pod>(&self, len: usize) -> Result<ManagedVec<T>, AllocError> {
        if core::mem::align_of::<T>() > PAGE_SIZE {
            return Err(AllocError::Alignment { align: core::mem::align_of::<T>(), max: PAGE_SIZE });
        }
        let bytes = len
            .checked_mul(core::mem::size_of::<T>())
            .ok_or(AllocError::TooLarge { requested: usize::MAX, arena: self.inner.arena.len() })?;
        let p = self.alloc(bytes.max(1))?;
        // Owned from here: the raw `free` refuses it. (Between `alloc` and
        // this line only this thread knows the address.)
        self.inner.state.lock().owned.insert(p.as_ptr() as usize - self.inner.arena.base());
        Ok(ManagedVec::from_raw(self.clone(), p, len))
    }

    /// Allocate a managed array holding a copy of `data`.
    pub fn alloc_from_slice<T: bytemuck::Pod>(&self, data: &[T]) -> Result<ManagedVec<T>, AllocError> {
        let mut v = self.alloc_vec::<T>(data.len())?;
        v.copy_from_slice(data);
        Ok(v)
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

    /// Give advice for `[addr, addr + len)`; see [`Advice`] for the effects.
    pub fn advise(&self, addr: *const u8, len: usize, advice: Advice) -> Result<(), AdviseError> {
        let inner = &*self.inner;
        inner.check_process()?;
        let mut guard = inner.state.lock();
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
            Advice::AccessedBy => inner.make_coherent(st, a as u32, b as u32)?,
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
        let inner = self.inner.clone();
        let addr = addr as usize;
        let handle = std::thread::Builder::new()
            .name("svm-prefetch".into())
            .spawn(move || inner.prefetch_now(addr, len, to))
            .map_err(|e| LaunchError::Os(format!("spawning the prefetch thread: {e}")));
        Prefetch { handle }
    }

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
        for (i, b) in bound.iter().enumerate() {
            let crate::bind::Checked::Managed { addr, len, write } = *b else { continue };
            let (first, last) = inner
                .page_range(st, addr, len)
                .ok_or_else(|| crate::bind::error(kernel, i, BindError::NotAllocated { addr, len }))?;
            decl.push((first, last, write));
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
        }
        let decl = merge_ranges(decl);
        // A replayable launch also sees what is already resident: pages the
        // device owns (read-write) and kept read-only copies, mapped as they
        // are, without pinning them (eviction may still take them; the
        // kernel then faults them back).
        // Without `allow_undeclared_writes`, the owned pages are mapped
        // read-only (a write to one not declared read-write is refused).
        let resident = if opts.replayable {
            let n = st.table.len();
            let w = opts.undeclared_writes;
            let mut r: Vec<(u32, u32, bool)> = runs(0, n, |p| st.owned(p)).map(|(a, b)| (a, b, w)).collect();
            r.extend(runs(0, n, |p| st.dup[p as usize]).map(|(a, b)| (a, b, false)));
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
        let result = (|| {
            // A kernel without the prelude never reads the page table:
            // its pages are made resident, but no PTE changes (nothing to
            // upload; the next pointer launch maps what it declares).
            let ptes = kernel.prelude;
            inner.map_ranges(st, &resident, &mut temporary, &mut report, false, ptes)?;
            inner.map_ranges(st, &decl, &mut temporary, &mut report, true, ptes)?;
            let placed = inner.place_bindings(st, kernel, &bound)?;
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
                let changed = inner.map_ranges(st, &merge_ranges(want), &mut temporary, &mut report, true, true)?;
                if changed == 0 {
                    return Err(LaunchError::NoProgress { pages: addrs() });
                }
                report.replays += 1;
            }
        })();

        st.pinned.clear();
        // 3. Read-only copies are dropped, except ReadMostly ones.
        let mut post = inner.settle_copies(st, temporary);
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

impl Drop for Inner {
    fn drop(&mut self) {
        if self.foreign() {
            // A forked child: the device and its memory belong to the
            // parent; destroying them from here would act on shared driver
            // state (and the state lock may have been held at the fork).
            return;
        }
        // SAFETY: each field is dropped exactly once, here, and never used
        // again (`self` is being dropped); the state (which holds device
        // objects) goes before the device, as the field order did.
        #[allow(unsafe_code, reason = "ManuallyDrop of the device side, so that a forked child can leak it")]
        unsafe {
            std::mem::ManuallyDrop::drop(&mut self.state);
            std::mem::ManuallyDrop::drop(&mut self.gpu);
        }
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
        let in_place_page = |p: u32| {
            self.gpu.mode == MappingMode::Coherent || st.advice[p as usize] & advice::COHERENT != 0
        };
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

    /// Import pages `[a, b)` of the host copy for in-place device access.
    #[allow(unsafe_code, reason = "the one host import of the arena; its safety argument is inline")]
    fn make_coherent(&self, st: &mut State, a: u32, b: u32) -> Result<(), AdviseError> {
        let gpu = &self.gpu;
        let Some(raw) = gpu.raw.clone().filter(|_| gpu.host_import) else {
            return Err(AdviseError::Unsupported(
                "AccessedBy needs VK_EXT_external_memory_host, which this device lacks",
            ));
        };
        if st.coherent.is_some() {
            return Err(AdviseError::Unsupported(
                "one AccessedBy range at a time (the prelude has one coherent window); unset the other first",
            ));
        }
        let len = (b - a) as usize * PAGE_SIZE;
        if len as u64 > gpu.device.limits().max_storage_buffer_binding_size {
            return Err(AdviseError::Unsupported("AccessedBy range longer than one storage binding"));
        }
        // Bring the range home first: from now on only the host copy exists.
        let mut x = a;
        while x < b {
            let y = (x + STAGING_PAGES).min(b);
            self.migrate_back_span(st, x, y)?;
            x = y;
        }
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
        // import) before the arena (field order). Program threads touching
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
        let bind_group = gpu.bind_group_with(import.buffer());
        st.advice[a as usize..b as usize].iter_mut().for_each(|x| *x |= advice::COHERENT);
        st.coherent = Some(Coherent { first: a, end: b, bind_group, _import: import });
        Ok(())
    }

    /// End in-place access: the range migrates normally again.
    fn drop_coherent(&self, st: &mut State) {
        if let Some(c) = st.coherent.take() {
            st.advice[c.first as usize..c.end as usize].iter_mut().for_each(|x| *x &= !advice::COHERENT);
            st.table.update_range(c.first..c.end, |_, p| if p.is_allocated() { Pte::ALLOCATED } else { p });
        }
    }

    /// Pages `[a, b)` covering `[addr, addr + len)`, if all are allocated.
    fn page_range(&self, st: &State, addr: usize, len: usize) -> Option<(u32, u32)> {
        let off = addr.wrapping_sub(self.arena.base());
        let end = off.checked_add(len).filter(|&e| e <= self.arena.len() && len > 0)?;
        let (a, b) = (page_of(off), page_of(end.next_multiple_of(PAGE_SIZE)));
        st.table.entries(a..b).iter().all(|p| p.is_allocated()).then_some((a, b))
    }

    fn prefetch_now(&self, addr: usize, len: usize, to: Location) -> Result<u64, LaunchError> {
        self.check_process()?;
        let mut guard = self.state.lock();
        let st = &mut *guard;
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
                let mapped = self.map_ranges(st, &ranges, &mut temporary, &mut report, true, true);
                st.pinned.clear();
                mapped?;
                self.settle_copies(st, temporary)?;
                Ok(report.migrated_pages)
            }
            Location::Host => {
                let mut moved = 0;
                let mut x = a;
                while x < b {
                    let y = (x + STAGING_PAGES).min(b);
                    moved += self.migrate_back_span(st, x, y)?;
                    x = y;
                }
                Ok(moved)
            }
        }
    }

    /// Make `ranges` device-resident and map them: host pages are copied to
    /// new frames (read ranges as read-only duplicates recorded in
    /// `temporary`; write ranges after zapping the CPU mapping, as
    /// device-owned pages). With `pin`, the ranges join the running
    /// operation's working set, which eviction never takes. Returns how many
    /// PTEs changed.
    fn map_ranges(
        &self,
        st: &mut State,
        ranges: &[(u32, u32, bool)],
        temporary: &mut Vec<(u32, u32)>,
        report: &mut LaunchReport,
        pin: bool,
        ptes: bool,
    ) -> Result<u64, LaunchError> {
        if self.gpu.mode == MappingMode::Coherent {
            return Ok(Self::map_in_place(st, ranges, ptes));
        }
        let migrates = |st: &State, p: usize| st.frames_of[p] == HOST && st.advice[p] & advice::COHERENT == 0;
        let needed: usize =
            ranges.iter().map(|&(a, b, _)| (a as usize..b as usize).filter(|&p| migrates(st, p)).count()).sum();
        if needed > st.frames.free_count() as usize {
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
        let (mut pages, mut batches, mut changed) = (0u64, 0u64, 0u64);
        for &(a, b, write) in ranges {
            // Coherent pages: mapped in place, nothing moves.
            let coherent_runs: Vec<(u32, u32)> =
                runs(a, b, |p| st.advice[p as usize] & advice::COHERENT != 0).collect();
            for &(ca, cb) in coherent_runs.iter().filter(|_| ptes) {
                for p in ca..cb {
                    let old = st.table.get(PageIndex(p));
                    let new = Pte::coherent(write || old.is_writable());
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
                let _span = tracing::debug_span!("svm_h2d_batch", first_page = ra, pages = rb - ra, write).entered();
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
                let f = FrameIndex::new(st.frames_of[p as usize]).expect("resident page has a frame");
                let old = st.table.get(PageIndex(p));
                let new = Pte::resident(f, write || old.is_writable());
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

    /// The coherent mode's `map_ranges`: every page is its own frame of the
    /// imported arena view; mapping moves nothing and pins nothing (nothing
    /// is ever evicted).
    fn map_in_place(st: &mut State, ranges: &[(u32, u32, bool)], ptes: bool) -> u64 {
        let mut changed = 0;
        for &(a, b, write) in ranges {
            for p in (a..b).filter(|_| ptes) {
                let old = st.table.get(PageIndex(p));
                let f = FrameIndex::new(p).expect("arena pages fit the PTE's frame field (checked at creation)");
                let new = Pte::resident(f, write || old.is_writable());
                if old != new {
                    st.table.set(PageIndex(p), new);
                    changed += 1;
                }
            }
            st.mapped.push((a, b));
        }
        changed
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
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&kernel.label),
                timestamp_writes: None,
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
        let mut cmds = vec![enc.finish()];
        if st.coherent.is_some() || gpu.mode == MappingMode::Coherent {
            // The kernel wrote host memory in place: make its writes visible
            // to the CPU (a real GPU needs the barrier; lavapipe is coherent).
            cmds.push(crate::vk::host_read_barrier(&gpu.device).map_err(|e| DeviceError::Unexpected(e.to_string()))?);
        }
        let t1 = Instant::now();
        gpu.queue.submit(cmds);
        let c = &self.stats;
        if let Some(after) = timeout {
            gpu.wait_for(after)?.then_some(()).ok_or(LaunchError::Timeout { after })?;
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

impl Inner {
    /// Copy host pages `[a, b)` into newly allocated frames; returns the
    /// number of copies queued.
    fn upload(&self, st: &mut State, a: u32, b: u32) -> Result<u64, DeviceError> {
        let gpu = &self.gpu;
        let mut p = a;
        let mut copies = 0;
        while p < b {
            let (f, n) = st.frames.alloc_run(p, b - p)?.expect("pool space checked before migrating");
            // A frame run may straddle pool segments: one copy per segment.
            let mut done = 0;
            while done < n {
                let fr = f + done;
                let k = (n - done).min(gpu.frames_left_in_segment(fr));
                let (seg, off) = gpu.frame_location(fr);
                let host_off = (p + done) as usize * PAGE_SIZE;
                let len = k as usize * PAGE_SIZE;
                if gpu.mapped_pool {
                    // Unified memory: one copy, straight into the mapped pool.
                    let (buf, base) = gpu.segment(seg);
                    gpu.write_mapped_range(buf, base + off, len as u64, |view| {
                        self.arena.with_host(host_off, len, |bytes| view.copy_from_slice(bytes));
                    })?;
                } else {
                    self.arena.with_host(host_off, len, |bytes| {
                        let (buf, base) = gpu.segment(seg);
                        gpu.queue.write_buffer(buf, base + off, bytes);
                    });
                }
                copies += 1;
                done += k;
            }
            for i in 0..n {
                st.frames_of[(p + i) as usize] = f + i;
            }
            p += n;
        }
        Ok(copies)
    }

    /// Copy device-owned runs back through the staging buffer: one submit
    /// of frame-contiguous copies into the staging buffer at each page's
    /// offset from `a`, one map, then into the host copy.
    fn copy_back_staged(&self, st: &State, a: u32, b: u32, device_runs: &[(u32, u32)]) -> Result<(), DeviceError> {
        let gpu = &self.gpu;
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("svm d2h") });
        for &(ra, rb) in device_runs {
            self.for_each_frame_piece(st, ra, rb, |p, seg, off, n| {
                let (buf, base) = gpu.segment(seg);
                enc.copy_buffer_to_buffer(
                    buf,
                    base + off,
                    &gpu.staging,
                    u64::from(p - a) * PAGE_SIZE as u64,
                    u64::from(n) * PAGE_SIZE as u64,
                );
            });
        }
        gpu.queue.submit([enc.finish()]);
        let span = u64::from(b - a) * PAGE_SIZE as u64;
        gpu.read_mapped(&gpu.staging, span, |bytes| {
            for &(ra, rb) in device_runs {
                let lo = (ra - a) as usize * PAGE_SIZE;
                let hi = (rb - a) as usize * PAGE_SIZE;
                self.arena.write_host(ra as usize * PAGE_SIZE, &bytes[lo..hi]);
            }
        })
    }

    /// Copy device-owned runs back by mapping the pool (unified memory):
    /// per segment, one map of the range the pieces span, one copy each.
    fn copy_back_mapped(&self, st: &State, device_runs: &[(u32, u32)]) -> Result<(), DeviceError> {
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
            // (Only the software pool is ever mapped: segment base 0.)
            gpu.read_mapped_range(gpu.segment(seg).0, lo, hi - lo, |bytes| {
                for &&(p, _, off, n) in &mine {
                    let at = (off - lo) as usize;
                    self.arena.write_host(p as usize * PAGE_SIZE, &bytes[at..at + n as usize * PAGE_SIZE]);
                }
            })?;
        }
        Ok(())
    }

    /// Split pages `[ra, rb)` (all device-owned) into pieces whose frames are
    /// consecutive inside one pool segment: `f(first page, segment, byte
    /// offset in the segment, pages)`.
    fn for_each_frame_piece(&self, st: &State, ra: u32, rb: u32, mut f: impl FnMut(u32, usize, u64, u32)) {
        let gpu = &self.gpu;
        let mut p = ra;
        while p < rb {
            let fr = st.frames_of[p as usize];
            let mut n = 1;
            while p + n < rb && st.frames_of[(p + n) as usize] == fr + n && n < gpu.frames_left_in_segment(fr) {
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
    fn fault_span(&self, st: &State, page: u32) -> (u32, u32) {
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
    fn migrate_back(&self, st: &mut State, page: u32) -> Result<u64, DeviceError> {
        let (a, b) = self.fault_span(st, page);
        st.last_fault_end = Some(b);
        self.migrate_back_span(st, a, b)
    }

    /// Move every device-owned page of `[a, b)` (at most [`STAGING_PAGES`]
    /// pages) back to the host, in three phases: *setup* (collect the
    /// device-owned runs), *pages* (one submit copying each frame-contiguous
    /// piece into the staging buffer, then into the alias view), *finalize*
    /// (free the frames, invalidate the PTEs, restore the CPU mappings). The
    /// update lock is held throughout, so no other access sees a page in
    /// flight: faults on it wait for the lock.
    fn migrate_back_span(&self, st: &mut State, a: u32, b: u32) -> Result<u64, DeviceError> {
        debug_assert!(b - a <= STAGING_PAGES);
        let gpu = &self.gpu;
        let device_runs: Vec<(u32, u32)> = runs(a, b, |p| st.owned(p)).collect();
        if device_runs.is_empty() {
            return Ok(0);
        }
        gpu.check_lost()?;
        let _span = tracing::debug_span!("svm_d2h_batch", first_page = a, pages = b - a).entered();
        let t0 = Instant::now();
        if gpu.mapped_pool {
            self.copy_back_mapped(st, &device_runs)?;
        } else {
            self.copy_back_staged(st, a, b, &device_runs)?;
        }
        let mut moved = 0u64;
        let mut freed = Vec::with_capacity((b - a) as usize);
        for &(ra, rb) in &device_runs {
            for p in ra..rb {
                freed.push(std::mem::replace(&mut st.frames_of[p as usize], HOST));
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

    /// Free at least `want` frames by moving least-recently-used
    /// device-owned pages back to the host (they are all dirty: only pages
    /// a kernel could write are device-owned). Pages in `protect` or mapped
    /// by the running launch are never chosen. Returns the pages evicted.
    fn evict(&self, st: &mut State, want: usize, protect: &[(u32, u32, bool)]) -> Result<usize, DeviceError> {
        let n = st.table.len() as usize;
        let mut protected = vec![false; n];
        for &(a, b, _) in protect {
            protected[a as usize..b as usize].fill(true);
        }
        for &(a, b) in &st.pinned {
            protected[a as usize..b as usize].fill(true);
        }
        // Candidates: device-owned pages and kept read-only copies this
        // launch does not use; PreferredLocation(Device) pages last, then
        // least recently used first.
        let mut cand: Vec<(bool, u32, u32)> = (0..n)
            .filter(|&p| st.frames_of[p] != HOST && !protected[p])
            .map(|p| (st.advice[p] & advice::PREFER_DEVICE != 0, st.last_use[p], p as u32))
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
        chosen.retain(|&p| !st.dup[p as usize] && st.frames_of[p as usize] != HOST);
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
        tracing::debug!(want, evicted, "evicted LRU device pages");
        Ok(evicted)
    }

    /// After a launch or prefetch: read-only device copies made for it are
    /// dropped (the CPU's copy never stopped being current), except
    /// ReadMostly ones: those stay, and the CPU side is write-protected so
    /// that a CPU write drops them first.
    fn settle_copies(&self, st: &mut State, temporary: Vec<(u32, u32)>) -> Result<(), LaunchError> {
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
                    freed.push(std::mem::replace(&mut st.frames_of[p as usize], HOST));
                }
            }
            st.frames.free_many(&freed);
        }
        post
    }

    /// Drop the kept read-only device copy of `p` (its host copy is current)
    /// and let the CPU write it again.
    fn drop_copy(&self, st: &mut State, p: u32) -> Result<(), DeviceError> {
        debug_assert!(st.dup[p as usize]);
        st.dup[p as usize] = false;
        let f = std::mem::replace(&mut st.frames_of[p as usize], HOST);
        st.frames.free(f);
        st.table.set(PageIndex(p), Pte::ALLOCATED);
        self.arena
            .write_unprotect(p as usize * PAGE_SIZE, PAGE_SIZE)
            .map_err(|e| DeviceError::Unexpected(format!("write-unprotect: {e}")))
    }

    /// Move the device-owned pages advised PreferredLocation(Host) that the
    /// current launch mapped back to the host.
    fn flush_preferred_host(&self, st: &mut State) -> Result<(), DeviceError> {
        let mut todo: Vec<(u32, u32)> = Vec::new();
        for &(a, b) in &st.mapped {
            todo.extend(runs(a, b, |p| st.owned(p) && st.advice[p as usize] & advice::PREFER_HOST != 0));
        }
        for (a, b) in todo {
            let mut x = a;
            while x < b {
                let y = (x + STAGING_PAGES).min(b);
                self.migrate_back_span(st, x, y)?;
                x = y;
            }
        }
        Ok(())
    }
}

impl FaultHandler for Inner {
    fn arena(&self) -> &Arena {
        &self.arena
    }

    fn handle_fault(&self, fault: CpuFault) -> Result<(), FaultFatal> {
        let page = page_of(fault.offset);
        let addr = self.arena.base() + fault.offset;
        let mut st = self.state.lock();
        Counters::add(&self.stats.cpu_faults, 1);
        if st.lost_in_place.iter().any(|&(a, b)| (a..b).contains(&page)) {
            return Err(FaultFatal(format!(
                "page {addr:#x} was being written in place by a kernel when the device was declared lost (launch timeout)"
            )));
        }
        if !st.table.get(PageIndex(page)).is_allocated() {
            if self.arena.backend() == FaultBackendKind::Uffd {
                // Freed pages are PROT_NONE: a real access to one raises
                // SIGSEGV, never a userfault. This message is stale: its
                // thread was woken by an earlier resolution of the same page
                // (before the page was freed). Wake again, change nothing.
                return self.arena.wake(fault.offset, PAGE_SIZE).map_err(|e| FaultFatal(e.to_string()));
            }
            return Err(FaultFatal(format!(
                "CPU access to managed address {addr:#x}, which is not allocated (never allocated, or freed)"
            )));
        }
        if st.dup[page as usize] {
            // A kept read-only copy (ReadMostly). A write (or a fault whose
            // kind the backend cannot tell) drops the device copy first; a
            // read of a page with no PTE maps it, still write-protected.
            return if fault.write != Some(false) {
                self.drop_copy(&mut st, page).map_err(|e| FaultFatal(e.to_string()))
            } else {
                self.arena.restore_readonly(fault.offset, PAGE_SIZE).map_err(|e| FaultFatal(e.to_string()))
            };
        }
        let device_owned = st.owned(page);
        self.migrate_back(&mut st, page).map_err(|e| {
            FaultFatal(format!("page {addr:#x} is owned by the device and cannot be brought back: {e}"))
        })?;
        if !device_owned {
            // A host page that simply is not mapped yet, or a stale message
            // (a fault that raced with another on the same page, possibly
            // freed and reallocated since, hence maybe a hole): give it a
            // page-cache page and map it.
            self.arena
                .populate_host(fault.offset, PAGE_SIZE)
                .and_then(|()| self.arena.restore(fault.offset, PAGE_SIZE))
                .map_err(|e| FaultFatal(e.to_string()))?;
        }
        Ok(())
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

    #[test]
    fn runs_split() {
        let v: Vec<_> = runs(0, 10, |p| p % 4 != 0).collect();
        assert_eq!(v, vec![(1, 4), (5, 8), (9, 10)]);
    }
}
