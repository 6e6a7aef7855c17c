//! The wgpu side: adapter and device selection, the device page pool, the
//! page-table / argument / error buffers the prelude binds, and the copies
//! that move pages between the host copy and the pool. Submitting, waiting,
//! device loss and buffer maps are `sync.rs`'s.
//!
//! Several threads use the device at once (launches, the completion
//! thread, fault service, prefetch): every submission and poll is taken
//! under `Gpu::poll_lock` (see ARCHITECTURE.md, "Lock order").

use std::sync::Arc;

use parking_lot::Mutex;
use svm_pagetable::PAGE_SIZE;
use svm_shaders::{Windows, COHERENT_BINDING, LOG_FAULTS, MAX_ARG_WORDS, WINDOWS_BINDING};

use crate::error::SvmError;

mod coherent;
mod mode;
mod open;
mod sync;
mod tables;
pub use mode::{MappingMode, MAPPING_MODE_ENV};
pub(crate) use open::Timestamps;
pub use open::{create_wgpu_device, SharedDevice};
// (For `svm::vk`, which opens its devices the same way.)
#[cfg(feature = "vulkan")]
pub use open::runtime_limits;
#[cfg(feature = "vulkan")]
pub(crate) use open::select_adapter;
use open::{open_device, Opened};
pub(crate) use tables::Tables;

/// What the runtime runs on.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Adapter name (e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// Driver name and version.
    pub driver: String,
    /// Backend (`Vulkan` unless the runtime is built without the `vulkan`
    /// feature or `WGPU_BACKEND` names another).
    pub backend: String,
    /// Adapter type.
    pub device_type: String,
}

impl core::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({}; {}, {})", self.name, self.driver, self.backend, self.device_type)
    }
}

/// Layout of the argument buffer (`SvmArgs` in the prelude).
#[repr(C)]
#[derive(Copy, Clone, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ArgsBlock {
    pub base: [u32; 2],
    pub arena_pages: u32,
    pub table_pages: u32,
    pub fault_cap: u32,
    pub fault_read_bitmap: u32,
    pub fault_write_bitmap: u32,
    pub coherent_page: u32,
    pub safe_word: u32,
    pub extents: [Extent; svm_shaders::MAX_EXTENTS as usize],
    pub words: [u32; MAX_ARG_WORDS as usize],
    /// The prelude's struct is 8-aligned (its `vec2<u32>` base).
    pub _pad: u32,
}

/// One extent of a launch (`SvmExtent` in the prelude): arena bytes
/// `[bank << 32 | start, + len)` live at device words from `dest` on. The
/// bank (the offset's high word) is in `flags` above bit 8: a pass's extents
/// share one, which the prelude adds to the base.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Extent {
    pub start: u32,
    pub len: u32,
    /// Word in the pool / arena view, or [`Extent::COHERENT`] | word in the
    /// coherent window.
    pub dest: u32,
    /// [`Extent::WRITE`] when writable.
    pub flags: u32,
}

impl Extent {
    pub const COHERENT: u32 = 0x8000_0000;
    pub const WRITE: u32 = 1;
    const BANK_SHIFT: u32 = 8;

    /// Arena bytes `[offset, offset + len)` (inside one 4 GiB bank) at
    /// device word `dest`, writable or not. `None` past the banks the flags
    /// can name (2^24 x 4 GiB).
    pub fn new(offset: u64, len: u32, dest: u32, write: bool) -> Option<Self> {
        let bank = u32::try_from(offset >> 32).ok().filter(|b| *b < 1 << (32 - Self::BANK_SHIFT))?;
        #[allow(clippy::cast_possible_truncation, reason = "the low word")]
        let start = offset as u32;
        Some(Self { start, len, dest, flags: (bank << Self::BANK_SHIFT) | if write { Self::WRITE } else { 0 } })
    }

    /// The 4 GiB bank of the arena `start` is in.
    pub fn bank(&self) -> u32 {
        self.flags >> Self::BANK_SHIFT
    }
}

/// Capacity of the GPU fault list per pass (read back with the log; when
/// more faults are counted, the runtime reads the fault bitmaps instead).
pub(crate) const FAULT_CAP: u32 = 4096;

/// Words of the launch log read back after each pass: errors, then the
/// fault count and list (the bitmaps stay on the device).
const LOG_READ_WORDS: u64 = LOG_FAULTS as u64 + 1 + FAULT_CAP as u64;

/// The device-side resources of one runtime.
pub(crate) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: DeviceInfo,
    pub max_workgroups: u32,
    /// The launch arguments (bound with the [`Tables`]).
    pub args: wgpu::Buffer,
    /// Layout of the runtime's bind group ([`Tables`]).
    pub bgl: wgpu::BindGroupLayout,
    /// Bound as the coherent window when no range is imported.
    pub coherent_placeholder: wgpu::Buffer,
    /// The raw Vulkan device, when opened through [`crate::vk`] (host
    /// import available for the coherent mode).
    pub raw: Option<std::sync::Arc<crate::vk::RawDevice>>,
    pub host_import: bool,
    /// The windows (`windows.count()` of them): buffers of the pool
    /// (software mode) or ranges of the arena view (sparse, coherent).
    /// Index `k` is binding 3 + k (fixed) or element k of binding 3 (array).
    pub segments: Vec<SegmentView>,
    /// How device pages are mapped. Sparse: frame = arena page, backed by
    /// sparse binding. Coherent: frame = arena page, in `coherent_view`.
    pub mode: MappingMode,
    /// The coherent mode's device view of the arena (host memory, its
    /// allocated prefix imported as one buffer, again as allocations grow;
    /// `segments` holds placeholders, see [`Gpu::window_views`]).
    coherent_view: Option<coherent::CoherentView>,
    /// Frames per segment: a power of two, `1 << segment_page_shift`.
    pub frames_per_segment: u32,
    pub segment_page_shift: u32,
    /// Segments holding frames (the other windows are placeholders the
    /// kernels never read).
    pub segments_used: u32,
    /// How kernels bind the windows (the prelude variant).
    pub windows: Windows,
    pub total_frames: u32,
    /// The pool segments are CPU-mappable (unified memory): migrations map
    /// them instead of going through staging buffers.
    pub mapped_pool: bool,
    /// Migrations copy device memory with the CPU: a host-mapped pool, or
    /// a sparse pool in mapped host-visible memory (unified memory). Passes
    /// then end with a host-read barrier, and nothing is cleared on the
    /// device instead of copied.
    pub cpu_copies: bool,
    /// Per segment of a host-mapped pool opened with host import: the
    /// segment's memory, which migrations read and write with the CPU
    /// directly (no map, so no wait for running kernels). Empty or `None`
    /// elsewhere: the wgpu-mapped pool maps the segment per migration.
    pub pool_host: Vec<Option<crate::vk::HostImport>>,
    /// Held around every `Device::poll` and every submission (wgpu-core's
    /// submit polls too): wgpu-core 30 asserts when two threads poll at
    /// once and one finds the queue empty that the other emptied (it read
    /// the fence before: a poll waiting for a submission index with a
    /// timeout). The completion thread waits on the timeline, then confirms
    /// with non-blocking polls (which cannot trip it), or (without the raw
    /// device) polls under this lock too. A
    /// plain device's runtime migrating while another thread faulted hit
    /// that assertion (`shared::a_plain_device_migrates_beside_cpu_faults`).
    pub poll_lock: Arc<Mutex<()>>,
    /// Launch-log read-back buffers not in use (one per launch in flight).
    pub log_readbacks: Mutex<Vec<wgpu::Buffer>>,
    /// Staging rings for migration when the pool is not host-mapped
    /// (pipelined chunked copies both ways, see [`crate::staging`]); empty
    /// with a host-mapped pool and in the coherent mode.
    pub staging: crate::staging::Staging,
    /// GPU timestamps of kernel passes, where the device has them.
    pub timestamps: Option<Timestamps>,
    /// Set by the device-lost callback, an error of the runtime's own
    /// submissions ([`Self::submit`], the passes'), or an internal wgpu
    /// error.
    pub lost: Arc<Mutex<Option<String>>>,
    _adapter: wgpu::Adapter,
    /// Validation messages (`SVM_VALIDATION=1` with the layer installed);
    /// declared last so that it outlives the device and reports until the end.
    pub validation: Option<crate::vk::ValidationCapture>,
    _instance: Option<wgpu::Instance>,
}

impl Gpu {
    /// Open the device and create the runtime's buffers. With `sparse`, the
    /// pool is a sparse buffer the size of the arena whose page `p` backs
    /// arena page `p` (returned for the caller's state to bind and unbind).
    ///
    /// In the coherent mode the arena's device view is the host memory at
    /// `arena_host` (`arena_pages` pages), imported: page `p` is device page
    /// `p` and is always "resident".
    ///
    /// # Safety
    ///
    /// With [`MappingMode::Coherent`], `arena_host` is mapped readable and
    /// writable for `arena_pages` pages for as long as the returned `Gpu`
    /// lives, and the caller keeps the CPU from racing with kernels on it as
    /// it would another CPU thread.
    #[allow(unsafe_code, reason = "the coherent view's host import; contract on the caller")]
    #[allow(clippy::too_many_arguments, reason = "the runtime descriptor's device-side fields; one caller")]
    pub unsafe fn new(
        arena_pages: u32,
        pool_bytes: u64,
        staging_bytes: u64,
        host_mapped_pool: bool,
        mode: MappingMode,
        arena_host: *mut u8,
        shared: Option<&SharedDevice>,
    ) -> Result<(Self, Option<crate::vk::SparseArena>), SvmError> {
        // The environment's settings, refused when garbled whatever the
        // device (a setting the device makes moot is still checked).
        open::mapped_pool_env()?;
        let windows_ok = windows_allowed()?;
        let sparse = mode == MappingMode::Sparse;
        let coherent = mode == MappingMode::Coherent;
        let Opened { adapter, device, queue, info, raw, host_import, validation, instance } = match shared {
            Some(s) => s.opened(mode)?,
            None => open_device(host_mapped_pool && mode == MappingMode::Software, sparse)?,
        };
        // The prelude's bindings must fit the device's storage-buffer limit
        // (an application's device may have wgpu's default of 8).
        let per_stage = device.limits().max_storage_buffers_per_shader_stage;
        let array_fits = per_stage >= 4 + MAX_WINDOWS_BINDINGS;
        let windows = if device.features().contains(BINDING_ARRAY_FEATURES) && array_fits && windows_ok {
            Windows::Array
        } else {
            Windows::Fixed
        };
        let window_count = windows.count();
        let limits = device.limits();
        let seg_limit =
            (limits.max_storage_buffer_binding_size.min(limits.max_buffer_size) / PAGE_SIZE as u64) * PAGE_SIZE as u64;
        let pool_bytes = pool_bytes.next_multiple_of(PAGE_SIZE as u64);
        // Software mode: the pool is cut into segments. Sparse and coherent
        // modes: the arena's device view is cut into windows the same way.
        let view_bytes =
            if mode == MappingMode::Software { pool_bytes } else { u64::from(arena_pages) * PAGE_SIZE as u64 };
        // Segments are a power of two of pages (the prelude shifts instead
        // of dividing), as large as a binding allows.
        let segment_page_shift = (seg_limit / PAGE_SIZE as u64).max(1).ilog2();
        let seg_bytes = (PAGE_SIZE as u64) << segment_page_shift;
        let nseg = view_bytes.div_ceil(seg_bytes).max(1);
        if nseg > u64::from(window_count) {
            return Err(SvmError::Config(format!(
                "{} of {view_bytes} bytes needs {nseg} windows of {seg_bytes} bytes; the prelude binds {window_count} ({windows:?})",
                if mode == MappingMode::Software { "the device pool" } else { "the arena's device view" }
            )));
        }
        let frames_per_segment = 1u32 << segment_page_shift;
        #[allow(clippy::cast_possible_truncation, reason = "at most window_count, checked above")]
        let segments_used = nseg as u32;
        let total_frames =
            u32::try_from(pool_bytes / PAGE_SIZE as u64).map_err(|_| SvmError::Config("pool too large".into()))?;
        // The prelude finds a page's segment from its frame (the PTE's
        // frame field: 2^24 pages, 64 GiB); its extent path's flat word
        // indices reach 8 GiB, and launches beyond take the page table.
        let view_pages = u64::from(total_frames).max(view_bytes / PAGE_SIZE as u64);
        if total_frames >= svm_pagetable::Pte::MAX_FRAMES || view_pages > u64::from(svm_pagetable::Pte::MAX_FRAMES) {
            return Err(SvmError::Config(format!(
                "a device pool or arena view of {} bytes exceeds the PTE's frame field ({} pages, {} GiB)",
                view_pages * PAGE_SIZE as u64,
                svm_pagetable::Pte::MAX_FRAMES,
                (u64::from(svm_pagetable::Pte::MAX_FRAMES) * PAGE_SIZE as u64) >> 30
            )));
        }

        if (windows.bindings().len() as u32) > per_stage {
            return Err(SvmError::Config(format!(
                "the device allows {per_stage} storage buffers per shader stage; the runtime's kernels need {}",
                windows.bindings().len()
            )));
        }
        let lost = Arc::new(Mutex::new(None));
        // A shared device keeps the application's callbacks: the runtime
        // then learns of a loss from its own polls and submissions.
        if shared.is_none() {
            let l = lost.clone();
            // Weak: the raw device holds the wgpu device, which holds this
            // callback.
            let r = raw.as_ref().map(Arc::downgrade);
            device.set_device_lost_callback(move |reason, msg| {
                *l.lock() = Some(format!("{reason:?}: {msg}"));
                if let Some(raw) = r.as_ref().and_then(std::sync::Weak::upgrade) {
                    raw.mark_lost();
                }
            });
            // The runtime's own submissions catch their errors in scopes
            // (`submit`, the passes' `send_open`): an invalid object of the
            // runtime's surfaces there, and the device is then taken as
            // lost. What reaches this handler is the application's own use
            // of `Svm::device()` outside `with_bindings` (whose errors are
            // returned): reported, and the runtime goes on — its managed
            // data must not become unreachable for an application's mistake.
            // An internal error of wgpu is a loss.
            let l = lost.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| match e {
                wgpu::Error::Internal { .. } => {
                    let mut g = l.lock();
                    if g.is_none() {
                        *g = Some(format!("uncaptured GPU error: {e}"));
                    }
                }
                _ => tracing::error!(
                    "svm: an uncaptured wgpu error on the runtime's device (not the runtime's own work): {e}"
                ),
            }));
        }

        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let unified = matches!(adapter.get_info().device_type, wgpu::DeviceType::Cpu | wgpu::DeviceType::IntegratedGpu);
        let mapped_pool = !sparse && unified && device.features().contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS);
        let pool_usage =
            if mapped_pool { storage | wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::MAP_WRITE } else { storage };
        let mut sparse_arena = None;
        // Migrations are CPU copies of device memory (no queue operation).
        let mut cpu_copies = mapped_pool;
        let mut coherent_view = None;
        let mut segments = Vec::new();
        let mut pool_host = Vec::new();
        // Bound where a window is unused.
        let unused = SegmentView {
            buffer: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("svm unused window"),
                size: 16,
                usage: storage,
                mapped_at_creation: false,
            }),
            base: 0,
            size: 16,
        };
        // Windows of one buffer holding the whole arena view (sparse and
        // coherent modes); placeholders past its end.
        let view_windows = |buffer: &wgpu::Buffer, segments: &mut Vec<SegmentView>| {
            let mut left = view_bytes;
            for _ in 0..window_count {
                if left > 0 {
                    let size = seg_bytes.min(left);
                    segments.push(SegmentView { buffer: buffer.clone(), base: view_bytes - left, size });
                    left -= size;
                } else {
                    segments.push(unused.clone());
                }
            }
        };
        if coherent {
            if raw.is_none() || !host_import {
                return Err(SvmError::Config(
                    "coherent mapping mode needs VK_EXT_external_memory_host, which this device lacks".into(),
                ));
            }
            // Imported as allocations grow (`import_coherent`).
            segments.extend((0..window_count).map(|_| unused.clone()));
            coherent_view = Some(coherent::CoherentView::new(arena_host, view_bytes, seg_bytes));
        } else if sparse {
            let raw = raw.as_ref().ok_or_else(|| {
                SvmError::Config("sparse mapping mode needs the Vulkan device opened through ash".into())
            })?;
            if !raw.caps().sparse {
                return Err(SvmError::Config(
                    "sparse mapping mode needs sparseBinding + sparseResidencyBuffer, which this device lacks".into(),
                ));
            }
            let arena = crate::vk::SparseArena::new(
                raw,
                &crate::vk::SparseArenaDescriptor {
                    label: Some("svm sparse arena view"),
                    size: view_bytes,
                    pool_blocks: total_frames,
                    chunk_blocks: 1 << 14,
                    // Unified memory: blocks the CPU copies directly, as
                    // the software mode's host-mapped pool.
                    host_mapped: host_mapped_pool && unified && open::mapped_pool_allowed(),
                },
            )
            .map_err(|e| SvmError::Config(format!("sparse arena: {e}")))?;
            if arena.page_size() != PAGE_SIZE as u64 {
                return Err(SvmError::Config(format!(
                    "sparse block size {} is not the managed page size {PAGE_SIZE}",
                    arena.page_size()
                )));
            }
            view_windows(arena.buffer(), &mut segments);
            cpu_copies = arena.host_mapped();
            sparse_arena = Some(arena);
        } else {
            let mut left = pool_bytes;
            for i in 0..window_count {
                if left == 0 && i > 0 {
                    pool_host.push(None);
                    segments.push(unused.clone());
                    continue;
                }
                let size = seg_bytes.min(left).max(16);
                left = left.saturating_sub(size);
                let label = format!("svm pool segment {i}");
                // Unified memory with host import: the segment is heap
                // memory of the runtime's own, imported, so that migrations
                // copy with the CPU at any time (a wgpu map would wait for
                // every submission using the buffer, i.e. for running
                // kernels that use other frames of it).
                let imported = match raw.as_ref().filter(|_| mapped_pool && host_import) {
                    Some(raw) => Some(
                        crate::vk::HostImport::zeroed(raw, Some(&label), usize::try_from(size).unwrap_or(usize::MAX))
                            .map_err(|e| SvmError::Config(format!("host-mapped pool segment {i}: {e}")))?,
                    ),
                    None => None,
                };
                let buffer = match &imported {
                    Some(import) => import.buffer().clone(),
                    None => device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(&label),
                        size,
                        usage: pool_usage,
                        mapped_at_creation: false,
                    }),
                };
                pool_host.push(imported);
                segments.push(SegmentView { buffer, base: 0, size });
            }
        }
        let args = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("svm args"),
            size: core::mem::size_of::<ArgsBlock>() as u64,
            usage: storage,
            mapped_at_creation: false,
        });
        let coherent_placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("svm coherent placeholder"),
            size: 16,
            usage: storage,
            mapped_at_creation: false,
        });
        // `staging_bytes`: the largest span one migration moves.
        let staging = crate::staging::Staging::new(&device, !cpu_copies && !coherent, staging_bytes);

        let entry = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![entry(0, true), entry(1, true), entry(2, false)];
        match windows {
            Windows::Fixed => entries.extend((0..window_count).map(|i| entry(WINDOWS_BINDING + i, false))),
            Windows::Array => entries.push(wgpu::BindGroupLayoutEntry {
                count: core::num::NonZeroU32::new(window_count),
                ..entry(WINDOWS_BINDING, false)
            }),
        }
        entries.push(entry(COHERENT_BINDING, false));
        let bgl =
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some("svm"), entries: &entries });
        let timestamps = Timestamps::new(&device, &queue);
        // (The raw device's, which its binds and flushes take too.)
        let poll_lock = raw.as_ref().map_or_else(|| Arc::new(Mutex::new(())), |r| r.poll_lock().clone());
        let gpu = Self {
            max_workgroups: limits.max_compute_workgroups_per_dimension,
            device,
            queue,
            info,
            args,
            bgl,
            coherent_placeholder,
            raw,
            host_import,
            segments,
            mode,
            coherent_view,
            frames_per_segment,
            segment_page_shift,
            segments_used,
            windows,
            total_frames,
            mapped_pool,
            cpu_copies,
            pool_host,
            log_readbacks: Mutex::new(Vec::new()),
            poll_lock,
            staging,
            timestamps,
            lost,
            _adapter: adapter,
            validation,
            _instance: instance,
        };
        Ok((gpu, sparse_arena))
    }

    /// The buffer and byte offset where segment `seg` starts.
    pub fn segment(&self, seg: usize) -> (&wgpu::Buffer, u64) {
        let v = &self.segments[seg];
        (&v.buffer, v.base)
    }

    /// Segment and byte offset of a frame.
    pub fn frame_location(&self, frame: u32) -> (usize, u64) {
        let seg = frame / self.frames_per_segment;
        let off = u64::from(frame % self.frames_per_segment) * PAGE_SIZE as u64;
        (seg as usize, off)
    }

    /// Frames from `frame` to the end of its segment.
    pub fn frames_left_in_segment(&self, frame: u32) -> u32 {
        self.frames_per_segment - frame % self.frames_per_segment
    }

    /// Whether segment `seg` is host memory the CPU copies directly (a
    /// host-mapped pool with host import, see [`Self::pool_host`]).
    pub fn segment_is_host(&self, seg: usize) -> bool {
        self.pool_host.get(seg).is_some_and(Option::is_some)
    }

    /// The bytes `[off, off + len)` of host segment `seg`, if it is one.
    fn pool_host_range(&self, seg: usize, off: u64, len: usize) -> Option<*mut u8> {
        let import = self.pool_host.get(seg)?.as_ref()?;
        let off = usize::try_from(off).ok()?;
        (off.checked_add(len)? <= import.len()).then(|| import.as_ptr().wrapping_add(off))
    }

    /// Copy `src` into host segment `seg` at byte `off`; false (nothing
    /// done) if the segment is not host memory or the range is outside it.
    ///
    /// # Safety
    /// No GPU work submitted and not yet complete reads or writes these
    /// bytes, and no other thread accesses them during the copy (the
    /// runtime's frames: free, or held by a page no launch in flight uses,
    /// under the update lock).
    #[allow(unsafe_code, reason = "CPU copy into device memory; contract on the caller")]
    pub unsafe fn write_pool_host(&self, seg: usize, off: u64, src: &[u8]) -> bool {
        let Some(dst) = self.pool_host_range(seg, off, src.len()) else { return false };
        // SAFETY: in bounds of the live import (checked above); `src` is not
        // device memory, so no overlap; nothing else touches the bytes (the
        // caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        true
    }

    /// Hand `[off, off + len)` of host segment `seg` to `f`; `None` if the
    /// segment is not host memory or the range is outside it.
    ///
    /// # Safety
    /// As [`Self::write_pool_host`]: nothing writes these bytes meanwhile
    /// (the GPU work that wrote them is complete and followed by a
    /// host-read barrier).
    #[allow(unsafe_code, reason = "CPU read of device memory; contract on the caller")]
    pub unsafe fn with_pool_host<R>(&self, seg: usize, off: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let src = self.pool_host_range(seg, off, len)?;
        // SAFETY: in bounds of the live import; no writer during the borrow
        // (the caller's contract).
        Some(f(unsafe { std::slice::from_raw_parts(src, len) }))
    }

    /// Bytes of the launch log read back after a pass.
    pub fn log_read_bytes() -> u64 {
        LOG_READ_WORDS * 4
    }
}

/// The device features [`Windows::Array`] needs.
const BINDING_ARRAY_FEATURES: wgpu::Features = wgpu::Features::BUFFER_BINDING_ARRAY
    .union(wgpu::Features::STORAGE_RESOURCE_BINDING_ARRAY)
    .union(wgpu::Features::SAMPLED_TEXTURE_AND_STORAGE_BUFFER_ARRAY_NON_UNIFORM_INDEXING);

/// Environment variable choosing how kernels bind the windows of the pool /
/// arena view: `array` (one binding array, where the device has them; the
/// default) or `fixed` (four bindings).
pub const WINDOWS_ENV: &str = "SVM_WINDOWS";

fn windows_allowed() -> Result<bool, SvmError> {
    match std::env::var(WINDOWS_ENV).as_deref() {
        Ok("array") | Ok("") | Err(_) => Ok(true),
        Ok("fixed") => Ok(false),
        Ok(other) => Err(SvmError::Config(format!("{WINDOWS_ENV}={other:?}: expected array or fixed"))),
    }
}

/// The runtime's bind group: `core` = page table, arguments, log (bindings
/// 0-2), then the windows, then the coherent window.
pub(crate) fn make_bind_group(
    device: &wgpu::Device,
    bgl: &wgpu::BindGroupLayout,
    core: [&wgpu::Buffer; 3],
    segments: &[SegmentView],
    coherent: &wgpu::Buffer,
    windows: Windows,
) -> wgpu::BindGroup {
    let mut e: Vec<wgpu::BindGroupEntry<'_>> = (0u32..)
        .zip(core)
        .map(|(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() })
        .collect();
    fn binding(v: &SegmentView) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding { buffer: &v.buffer, offset: v.base, size: wgpu::BufferSize::new(v.size) }
    }
    let array: Vec<wgpu::BufferBinding<'_>> = segments.iter().map(binding).collect();
    match windows {
        Windows::Fixed => e.extend(segments.iter().enumerate().map(|(i, v)| wgpu::BindGroupEntry {
            binding: WINDOWS_BINDING + i as u32,
            resource: wgpu::BindingResource::Buffer(binding(v)),
        })),
        Windows::Array => {
            e.push(wgpu::BindGroupEntry {
                binding: WINDOWS_BINDING,
                resource: wgpu::BindingResource::BufferArray(&array),
            });
        }
    }
    e.push(wgpu::BindGroupEntry { binding: COHERENT_BINDING, resource: coherent.as_entire_binding() });
    device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("svm"), layout: bgl, entries: &e })
}

/// Storage bindings of the windows' binding array.
const MAX_WINDOWS_BINDINGS: u32 = svm_shaders::MAX_WINDOWS;

/// One pool binding: a buffer range.
#[derive(Clone)]
pub(crate) struct SegmentView {
    pub buffer: wgpu::Buffer,
    pub base: u64,
    pub size: u64,
}
