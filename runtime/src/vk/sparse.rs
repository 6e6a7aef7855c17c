//! [`SparseArena`]: one sparse `VkBuffer` seen by wgpu as an ordinary storage
//! buffer, whose pages are bound at run time to blocks of a device-memory
//! pool.
//!
//! ```text
//!   arena (wgpu::Buffer, STORAGE | COPY_SRC | COPY_DST), N pages of B bytes
//!   ┌──────┬──────┬──────┬──────┬──────┬─────
//!   │  p0  │  p1  │  p2  │  p3  │  p4  │ ...      B = caps.sparse_block_size
//!   └──┬───┴──┬───┴──────┴──┬───┴──────┴─────     (4 KiB on lavapipe)
//!      │      │   unbound   │
//!      ▼      ▼             ▼
//!   ┌──────┬──────┬──────┬──────┐ ┌──────┬─────
//!   │ b0   │ b1   │ b2   │ b3   │ │ b4   │ ...    pool: DEVICE_LOCAL VkDeviceMemory
//!   └──────┴──────┴──────┴──────┘ └──────┴─────   chunks of `chunk_blocks` blocks
//!        chunk 0                     chunk 1
//! ```
//!
//! * Pool memory is allocated once, at creation, in a few large
//!   `vkAllocateMemory` chunks (*pieces*; drivers cap the number of
//!   allocations, 4096 is common), and never freed before the buffer:
//!   freeing memory a sparse buffer still maps is allowed only if the buffer
//!   is not used again, which we cannot know while wgpu may hold clones.
//! * Blocks are handed out in **runs** ([`SparseArena::alloc_run`]):
//!   consecutive blocks of one chunk, best fit among the free runs (kept
//!   coalesced, by start and by length). A run of pages bound to a run of
//!   blocks is **one** `VkSparseMemoryBind`, whatever its length (on
//!   lavapipe also one mapping of the chunk's memory).
//! * Binds and unbinds are *queued* ([`SparseArena::queue_bind_run`],
//!   [`SparseArena::queue_release`], [`SparseArena::queue_unbind`]) and sent
//!   together by [`SparseArena::flush`]: **one** `vkQueueBindSparse` for all
//!   of them, pages in order, merging runs of contiguous pages on contiguous
//!   blocks (and runs of unbinds) into one `VkSparseMemoryBind`. The
//!   arena's bookkeeping ([`SparseArena::bound`], the free runs) is updated
//!   at queue time; the device sees it at the flush. A released block goes
//!   back to the free runs at once: it can only be bound again by a queued
//!   bind, which reaches the device in the same `vkQueueBindSparse` as its
//!   unbind or a later one, so no submission ever sees it at two pages. For
//!   each page only its last queued operation is sent. [`SparseArena::bind`]
//!   / [`SparseArena::unbind`] queue and flush in one call. Flushes are
//!   ordered against wgpu submissions by the device timeline (see
//!   [`crate::vk`]): no host wait is needed between a dispatch, a re-bind
//!   and the next dispatch. The caller flushes before the first submission
//!   that must see a queued bind (a copy into the page, a kernel); a queued
//!   unbind may wait as long as its page is not read (its block stays
//!   mapped there until the flush).
//! * A block keeps its bytes while unbound; re-binding it anywhere shows
//!   them again (that is how a page "moves" without a copy). A freshly
//!   allocated block holds whatever its last user left.
//! * A block may be bound at several pages at once (aliasing); without
//!   `sparseResidencyAliased` the contents seen through the aliases are
//!   only consistent across submissions, not within one.
//!
//! ## Cost (lavapipe, 2 vCPUs, `sparse_bind_throughput`)
//!
//! One batch of 512 scattered 4 KiB pages, bind + host wait: ~1.9 µs a page
//! (≈ 0.5 M pages/s); unbinding 256 separate ranges ~3.4 µs a range; a
//! merged contiguous range costs one bind whatever its length. A call on
//! its own costs ~40 µs (mostly the empty wgpu submission of the timeline
//! flush): batch. With the validation layer loaded (wgpu does so in every
//! debug build) a range costs ~55 µs more: time with
//! [`super::ValidationMode::Off`].
//!
//! # Safety
//!
//! Raw objects (the sparse `VkBuffer`, the pool chunks) are created here and
//! destroyed only by the drop callback wgpu-hal runs when wgpu's last use of
//! the buffer is over; before the arena gives up its own reference it waits
//! on the host for its last bind. Every bind is validated (page range,
//! allocated blocks, no duplicate pages) before the unchecked Vulkan call,
//! so the offsets always satisfy the `VkSparseMemoryBind` VUIDs.

use std::sync::Arc;
use std::time::Duration;

use ash::vk;
use wgpu_hal::api::Vulkan;

use super::raw::{RawDevice, TimelinePoint};
use super::VkError;

/// Vulkan usage of sparse arenas (matches [`WGPU_USAGE`]).
pub(crate) const VK_USAGE: vk::BufferUsageFlags = vk::BufferUsageFlags::from_raw(
    vk::BufferUsageFlags::STORAGE_BUFFER.as_raw()
        | vk::BufferUsageFlags::TRANSFER_SRC.as_raw()
        | vk::BufferUsageFlags::TRANSFER_DST.as_raw(),
);

/// wgpu usage of the arena buffer.
pub const WGPU_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// A block of the arena's memory pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockId(pub u32);

/// Sparse-arena failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SparseError {
    /// The device was opened without sparse binding.
    #[error("sparse binding is not enabled on this device")]
    Unsupported,
    /// Zero-sized arena or pool.
    #[error("zero-sized sparse arena or pool")]
    ZeroSize,
    /// Larger than `sparseAddressSpaceSize` or wgpu's `max_buffer_size`.
    #[error("sparse arena of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes asked for (rounded to pages).
        size: u64,
        /// The smaller of the two limits.
        limit: u64,
    },
    /// No memory type fits the sparse buffer.
    #[error("no memory type for the pool (allowed types {0:#b})")]
    NoMemoryType(u32),
    /// `VUID-VkSparseMemoryBind-resourceOffset-01099`: outside the buffer.
    #[error("page {page} is outside the arena ({pages} pages)")]
    PageOutOfRange {
        /// The page.
        page: u32,
        /// Pages in the arena.
        pages: u32,
    },
    /// The block is not allocated (or does not exist).
    #[error("{0:?} is not an allocated block of this arena's pool")]
    BadBlock(BlockId),
    /// A page appears twice in one batch (the result would depend on the
    /// order the driver applies binds in).
    #[error("page {0} appears twice in one bind batch")]
    DuplicatePage(u32),
    /// `free_block` of a block still bound somewhere.
    #[error("{block:?} is still bound at {pages} page(s)")]
    BlockInUse {
        /// The block.
        block: BlockId,
        /// How many pages bind it.
        pages: u32,
    },
    /// The device failed.
    #[error(transparent)]
    Device(#[from] VkError),
}

/// How to make a [`SparseArena`].
#[derive(Clone, Debug)]
pub struct SparseArenaDescriptor<'a> {
    /// Debug label of the wgpu buffer.
    pub label: Option<&'a str>,
    /// Virtual size in bytes (rounded up to whole pages).
    pub size: u64,
    /// Physical blocks (pages) in the pool.
    pub pool_blocks: u32,
    /// Blocks per `vkAllocateMemory` chunk.
    pub chunk_blocks: u32,
    /// Take the pool from host-visible, coherent memory and keep it mapped
    /// (unified-memory devices): the CPU then copies pages in and out of
    /// their blocks directly ([`SparseArena::host_runs`]), with no queue
    /// operation. Ignored (the pool is not mapped) where no such type fits.
    pub host_mapped: bool,
}

impl Default for SparseArenaDescriptor<'_> {
    fn default() -> Self {
        Self {
            label: Some("svm sparse arena"),
            size: 64 << 20,
            pool_blocks: 256,
            chunk_blocks: 256,
            host_mapped: false,
        }
    }
}

const UNBOUND: u32 = u32::MAX;

/// A sparse buffer plus its pool; see the module docs.
pub struct SparseArena {
    raw: Arc<RawDevice>,
    // Invariant: `buffer` wraps `vk_buffer`; the drop callback destroys it.
    buffer: Option<wgpu::Buffer>,
    vk_buffer: vk::Buffer,
    page_size: u64,
    pages: u32,
    chunks: Vec<vk::DeviceMemory>,
    /// Host addresses of the mapped chunks (a host-mapped pool), else empty.
    chunk_host: Vec<usize>,
    chunk_blocks: u32,
    pool_blocks: u32,
    /// Free blocks, as coalesced runs inside chunks.
    free: FreeRuns,
    /// Per block: allocated?
    allocated: Vec<bool>,
    /// Per block: pages that bind it (after the queued operations).
    bind_count: Vec<u32>,
    /// Per page: the block bound there after the queued operations, or
    /// `UNBOUND`.
    page_block: Vec<u32>,
    /// Per page: the last queued, unflushed operation (`NONE`, `BIND`,
    /// `UNBIND`).
    pending: Vec<u8>,
    /// Page runs with a queued operation (may overlap; `pending` decides).
    pending_runs: Vec<(u32, u32)>,
    /// Pages queued since the last flush (counted with repeats).
    pending_pages: u32,
    /// The value of the last bind this arena queued.
    last_bind: Option<TimelinePoint>,
    scratch: Vec<u32>,
}

const NONE: u8 = 0;
const BIND: u8 = 1;
const UNBIND: u8 = 2;

/// Free blocks as maximal runs of consecutive blocks inside one chunk,
/// indexed by start (to coalesce) and by length (best fit).
#[derive(Debug, Default)]
struct FreeRuns {
    chunk_blocks: u32,
    /// start → length.
    by_start: std::collections::BTreeMap<u32, u32>,
    /// (length, start).
    by_len: std::collections::BTreeSet<(u32, u32)>,
    total: u32,
}

impl FreeRuns {
    fn new(pool_blocks: u32, chunk_blocks: u32) -> Self {
        let mut f = Self { chunk_blocks, ..Self::default() };
        let mut s = 0;
        while s < pool_blocks {
            let n = chunk_blocks.min(pool_blocks - s);
            f.insert(s, n);
            s += n;
        }
        f
    }

    fn insert(&mut self, start: u32, len: u32) {
        self.by_start.insert(start, len);
        self.by_len.insert((len, start));
        self.total += len;
    }

    fn remove(&mut self, start: u32, len: u32) {
        self.by_start.remove(&start);
        self.by_len.remove(&(len, start));
        self.total -= len;
    }

    /// Up to `want` consecutive blocks: the shortest free run that holds
    /// them all (lowest start among equals), else the longest run.
    fn alloc(&mut self, want: u32) -> Option<(u32, u32)> {
        let want = want.max(1);
        let (len, start) = match self.by_len.range((want, 0)..).next() {
            Some(&r) => r,
            None => *self.by_len.last()?,
        };
        self.remove(start, len);
        let n = len.min(want);
        if n < len {
            self.insert(start + n, len - n);
        }
        Some((start, n))
    }

    /// Give back `[start, start + len)` (inside one chunk, not free),
    /// merged with its free neighbours in the same chunk.
    fn free(&mut self, mut start: u32, mut len: u32) {
        debug_assert_eq!(start / self.chunk_blocks, (start + len - 1) / self.chunk_blocks, "run crosses a chunk");
        if !start.is_multiple_of(self.chunk_blocks) {
            if let Some((&ls, &ll)) = self.by_start.range(..start).next_back() {
                debug_assert!(ls + ll <= start, "double free of block {start}");
                if ls + ll == start {
                    self.remove(ls, ll);
                    start = ls;
                    len += ll;
                }
            }
        }
        let end = start + len;
        if !end.is_multiple_of(self.chunk_blocks) {
            if let Some(&rl) = self.by_start.get(&end) {
                self.remove(end, rl);
                len += rl;
            }
        }
        self.insert(start, len);
    }
}

impl core::fmt::Debug for SparseArena {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SparseArena")
            .field("page_size", &self.page_size)
            .field("pages", &self.pages)
            .field("pool_blocks", &self.pool_blocks)
            .field("free_blocks", &self.free.total)
            .field("free_runs", &self.free.by_start.len())
            .field("pending_pages", &self.pending_pages)
            .finish_non_exhaustive()
    }
}

impl SparseArena {
    /// Create the sparse buffer (nothing bound) and allocate the pool.
    pub fn new(raw: &Arc<RawDevice>, desc: &SparseArenaDescriptor<'_>) -> Result<Self, SparseError> {
        let caps = *raw.caps();
        if !caps.sparse || caps.sparse_block_size == 0 {
            return Err(SparseError::Unsupported);
        }
        if desc.size == 0 || desc.pool_blocks == 0 || desc.chunk_blocks == 0 {
            return Err(SparseError::ZeroSize);
        }
        let page_size = caps.sparse_block_size;
        let size = desc.size.div_ceil(page_size) * page_size;
        let limit = caps.sparse_address_space_size.min(raw.device().limits().max_buffer_size);
        if size > limit {
            return Err(SparseError::TooLarge { size, limit });
        }
        let pages = u32::try_from(size / page_size).map_err(|_| SparseError::TooLarge { size, limit })?;
        let d = raw.raw_device().clone();

        let info = vk::BufferCreateInfo::default()
            .size(size)
            .flags(vk::BufferCreateFlags::SPARSE_BINDING | vk::BufferCreateFlags::SPARSE_RESIDENCY)
            .usage(VK_USAGE)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: sparse binding/residency are enabled (`caps.sparse`), and
        // `size` ≤ sparseAddressSpaceSize (checked above).
        let vk_buffer = unsafe { d.create_buffer(&info, None) }.map_err(VkError::vk("vkCreateBuffer(sparse)"))?;
        // From here on, `cleanup` releases what exists if a step fails.
        let cleanup = |chunks: &[vk::DeviceMemory]| {
            // SAFETY: nothing uses these objects yet (no bind, no wgpu
            // wrapper); they were created from `d`.
            unsafe {
                d.destroy_buffer(vk_buffer, None);
                for &m in chunks {
                    d.free_memory(m, None);
                }
            }
        };
        // SAFETY: `vk_buffer` is live.
        let req = unsafe { d.get_buffer_memory_requirements(vk_buffer) };
        debug_assert_eq!(req.alignment, page_size, "sparse block size differs between buffers");
        let host_flags = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        let host_type = raw
            .find_memory_type(req.memory_type_bits, host_flags, vk::MemoryPropertyFlags::DEVICE_LOCAL)
            .filter(|_| desc.host_mapped);
        let Some(type_index) = host_type.or_else(|| {
            raw.find_memory_type(
                req.memory_type_bits,
                vk::MemoryPropertyFlags::empty(),
                vk::MemoryPropertyFlags::DEVICE_LOCAL,
            )
        }) else {
            cleanup(&[]);
            return Err(SparseError::NoMemoryType(req.memory_type_bits));
        };

        let mut chunks = Vec::new();
        let mut left = desc.pool_blocks;
        while left > 0 {
            let n = left.min(desc.chunk_blocks);
            let ai = vk::MemoryAllocateInfo::default()
                .allocation_size(u64::from(n) * page_size)
                .memory_type_index(type_index);
            // SAFETY: valid allocate info with a type the buffer allows.
            match unsafe { d.allocate_memory(&ai, None) } {
                Ok(m) => chunks.push(m),
                Err(e) => {
                    cleanup(&chunks);
                    return Err(VkError::Vulkan { op: "vkAllocateMemory(sparse pool)", result: e }.into());
                }
            }
            left -= n;
        }

        // Host-mapped pool: every chunk mapped once, for the arena's life
        // (unmapped implicitly when the memory is freed).
        let mut chunk_host = Vec::new();
        if host_type.is_some() {
            for &m in &chunks {
                // SAFETY: `m` is host-visible memory of this device, not mapped
                // yet; the whole range is mapped once and never unmapped
                // before `vkFreeMemory` (which unmaps it).
                match unsafe { d.map_memory(m, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) } {
                    Ok(p) => chunk_host.push(p as usize),
                    Err(e) => {
                        cleanup(&chunks);
                        return Err(VkError::Vulkan { op: "vkMapMemory(sparse pool)", result: e }.into());
                    }
                }
            }
        }
        let owned_chunks = chunks.clone();
        let dd = d.clone();
        let on_drop: wgpu_hal::DropCallback = Box::new(move || {
            // SAFETY: wgpu-hal runs this once wgpu's last use of the buffer
            // is over, and the arena waited for its last bind before letting
            // go (Drop). Buffer first, then the memory it maps.
            unsafe {
                dd.destroy_buffer(vk_buffer, None);
                for m in owned_chunks {
                    dd.free_memory(m, None);
                }
            }
        });
        // SAFETY: `vk_buffer` outlives the hal buffer (destroyed only in the
        // callback); it was created from this device with the usage
        // `WGPU_USAGE` maps to, `size` bytes, not mappable by wgpu; it is
        // "initialised" in wgpu's sense (unbound pages are the caller's
        // business, documented).
        let buffer = unsafe {
            let hal = wgpu_hal::vulkan::Buffer::from_raw_externally_owned(vk_buffer, on_drop);
            raw.device().create_buffer_from_hal::<Vulkan>(
                hal,
                &wgpu::BufferDescriptor { label: desc.label, size, usage: WGPU_USAGE, mapped_at_creation: false },
            )
        };
        let n = desc.pool_blocks as usize;
        Ok(Self {
            raw: raw.clone(),
            buffer: Some(buffer),
            vk_buffer,
            page_size,
            pages,
            chunks,
            chunk_host,
            chunk_blocks: desc.chunk_blocks,
            pool_blocks: desc.pool_blocks,
            free: FreeRuns::new(desc.pool_blocks, desc.chunk_blocks),
            allocated: vec![false; n],
            bind_count: vec![0; n],
            page_block: vec![UNBOUND; pages as usize],
            pending: vec![NONE; pages as usize],
            pending_runs: Vec::new(),
            pending_pages: 0,
            last_bind: None,
            scratch: Vec::new(),
        })
    }

    /// The wgpu view of the whole arena. Bind windows of at most
    /// `max_storage_buffer_binding_size` bytes.
    pub fn buffer(&self) -> &wgpu::Buffer {
        // Invariant: `buffer` is `Some` until Drop.
        self.buffer.as_ref().unwrap_or_else(|| unreachable!("arena buffer taken before drop"))
    }

    /// Bytes per page (= per block).
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Pages in the arena.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Bytes of virtual space.
    pub fn size(&self) -> u64 {
        u64::from(self.pages) * self.page_size
    }

    /// Blocks in the pool.
    pub fn pool_blocks(&self) -> u32 {
        self.pool_blocks
    }

    /// Blocks not allocated.
    pub fn free_blocks(&self) -> u32 {
        self.free.total
    }

    /// Maximal runs of free blocks (1 = unfragmented, per chunk).
    pub fn free_runs(&self) -> usize {
        self.free.by_start.len()
    }

    /// Pages with an operation queued since the last [`flush`](Self::flush)
    /// (counted once per queuing).
    pub fn pending_pages(&self) -> u32 {
        self.pending_pages
    }

    /// The device side.
    pub fn raw(&self) -> &Arc<RawDevice> {
        &self.raw
    }

    /// Whether the pool is host-mapped ([`SparseArenaDescriptor::host_mapped`]).
    pub fn host_mapped(&self) -> bool {
        !self.chunk_host.is_empty()
    }

    /// Walk pages `[page, page + n)` as maximal runs whose blocks are
    /// consecutive in one chunk: `f(first page, host address of its block,
    /// bytes)`. False (nothing called) unless the pool is host-mapped and
    /// every page has a block bound (after the queued operations).
    ///
    /// # Safety
    /// The addresses are the blocks' memory, which the GPU reads and writes:
    /// the caller accesses them only while no GPU work submitted and not
    /// complete uses those pages (and the blocks stay bound meanwhile).
    #[allow(unsafe_code, reason = "hands out device memory addresses; contract on the caller")]
    pub unsafe fn host_runs(&self, page: u32, n: u32, mut f: impl FnMut(u32, *mut u8, usize)) -> bool {
        if self.chunk_host.is_empty() || (page..page + n).any(|p| self.bound(p).is_none()) {
            return false;
        }
        let bs = self.page_size as usize;
        let mut p = page;
        while p < page + n {
            let b0 = self.page_block[p as usize];
            let mut k = 1;
            while p + k < page + n
                && self.page_block[(p + k) as usize] == b0 + k
                && !(b0 + k).is_multiple_of(self.chunk_blocks)
            {
                k += 1;
            }
            let chunk = (b0 / self.chunk_blocks) as usize;
            let at = self.chunk_host[chunk] + (b0 % self.chunk_blocks) as usize * bs;
            f(p, at as *mut u8, k as usize * bs);
            p += k;
        }
        true
    }

    /// The block bound at `page`, if any.
    pub fn bound(&self, page: u32) -> Option<BlockId> {
        self.page_block.get(page as usize).copied().filter(|&b| b != UNBOUND).map(BlockId)
    }

    /// Take a block from the pool (`None`: exhausted).
    pub fn alloc_block(&mut self) -> Option<BlockId> {
        self.alloc_run(1).map(|(b, _)| b)
    }

    /// Take up to `want` consecutive blocks of one chunk from the pool, as
    /// (first block, count ≥ 1); `None`: exhausted. Fewer than `want` only
    /// when no free run is that long (the longest is taken).
    pub fn alloc_run(&mut self, want: u32) -> Option<(BlockId, u32)> {
        let (b, n) = self.free.alloc(want)?;
        self.allocated[b as usize..(b + n) as usize].fill(true);
        Some((BlockId(b), n))
    }

    /// Give a block back; it must not be bound anywhere.
    pub fn free_block(&mut self, block: BlockId) -> Result<(), SparseError> {
        let i = block.0 as usize;
        if !self.allocated.get(i).copied().unwrap_or(false) {
            return Err(SparseError::BadBlock(block));
        }
        if self.bind_count[i] != 0 {
            return Err(SparseError::BlockInUse { block, pages: self.bind_count[i] });
        }
        self.allocated[i] = false;
        self.free.free(block.0, 1);
        Ok(())
    }

    /// Give back allocated, unbound blocks, coalescing runs of consecutive
    /// ones (in the order given).
    fn free_unbound(&mut self, blocks: &[u32]) {
        let mut i = 0;
        while i < blocks.len() {
            let s = blocks[i];
            let mut n = 1;
            while i + (n as usize) < blocks.len()
                && blocks[i + n as usize] == s + n
                && !(s + n).is_multiple_of(self.chunk_blocks)
            {
                n += 1;
            }
            for b in s..s + n {
                debug_assert!(self.allocated[b as usize] && self.bind_count[b as usize] == 0);
                self.allocated[b as usize] = false;
            }
            self.free.free(s, n);
            i += n as usize;
        }
    }

    fn check_run(&self, page: u32, n: u32) -> Result<(), SparseError> {
        match page.checked_add(n) {
            Some(end) if end <= self.pages => Ok(()),
            _ => Err(SparseError::PageOutOfRange { page: page.saturating_add(n).saturating_sub(1), pages: self.pages }),
        }
    }

    /// Record that `page` gets `block` (or `UNBOUND`) at the next flush.
    fn queue_page(&mut self, page: u32, block: u32) -> Option<u32> {
        let old = core::mem::replace(&mut self.page_block[page as usize], block);
        if old != UNBOUND {
            self.bind_count[old as usize] -= 1;
        }
        if block != UNBOUND {
            self.bind_count[block as usize] += 1;
        }
        self.pending[page as usize] = if block == UNBOUND { UNBIND } else { BIND };
        (old != UNBOUND).then_some(old)
    }

    /// Queue binding pages `page..page + n` to blocks `first..first + n`
    /// (allocated, consecutive: one `VkSparseMemoryBind` if they lie in one
    /// chunk). A page bound before is re-bound (its old block stays
    /// allocated). Sent by the next [`flush`](Self::flush).
    ///
    /// Errors (nothing queued): a page outside the arena, a block not
    /// allocated, a page that already has a bind queued since the last
    /// flush (the device would see two binds of it in one batch).
    pub fn queue_bind_run(&mut self, page: u32, first: BlockId, n: u32) -> Result<(), SparseError> {
        self.check_run(page, n)?;
        let blocks_ok = first.0.checked_add(n).is_some_and(|e| e <= self.pool_blocks)
            && self.allocated[first.0 as usize..(first.0 + n) as usize].iter().all(|&a| a);
        if !blocks_ok {
            let bad = (first.0..first.0.saturating_add(n))
                .find(|&b| !self.allocated.get(b as usize).copied().unwrap_or(false))
                .unwrap_or(first.0);
            return Err(SparseError::BadBlock(BlockId(bad)));
        }
        if let Some(p) = (page..page + n).find(|&p| self.pending[p as usize] == BIND) {
            return Err(SparseError::DuplicatePage(p));
        }
        for i in 0..n {
            self.queue_page(page + i, first.0 + i);
        }
        self.pending_runs.push((page, page + n));
        self.pending_pages += n;
        Ok(())
    }

    /// Queue unbinding pages `page..page + n` and give their blocks back to
    /// the pool once no page binds them (the runtime's "this page left the
    /// device"). Unbound pages are skipped. The blocks may be handed out at
    /// once: they reach the device again only through a queued bind, sent
    /// no earlier than this unbind. Until the flush the pages keep their old
    /// blocks on the device: the caller must not let a submission read
    /// them.
    pub fn queue_release(&mut self, page: u32, n: u32) -> Result<(), SparseError> {
        self.check_run(page, n)?;
        let mut freed = core::mem::take(&mut self.scratch);
        freed.clear();
        for p in page..page + n {
            if self.page_block[p as usize] == UNBOUND {
                continue;
            }
            if let Some(old) = self.queue_page(p, UNBOUND) {
                if self.bind_count[old as usize] == 0 {
                    freed.push(old);
                }
            }
        }
        self.free_unbound(&freed);
        self.scratch = freed;
        self.pending_runs.push((page, page + n));
        self.pending_pages += n;
        Ok(())
    }

    /// Queue unbinding `pages`; their blocks stay allocated (give them back
    /// with [`free_block`](Self::free_block) once unbound). Unbinding an
    /// unbound page is allowed.
    pub fn queue_unbind(&mut self, pages: &[u32]) -> Result<(), SparseError> {
        if let Some(&p) = pages.iter().find(|&&p| p >= self.pages) {
            return Err(SparseError::PageOutOfRange { page: p, pages: self.pages });
        }
        for &p in pages {
            self.queue_page(p, UNBOUND);
            self.pending_runs.push((p, p + 1));
        }
        self.pending_pages += u32::try_from(pages.len()).unwrap_or(u32::MAX);
        Ok(())
    }

    /// Send every queued bind and unbind in **one** `vkQueueBindSparse`,
    /// after all work submitted so far and before all work submitted later.
    /// Returns the timeline value reached when they are done (host-wait it
    /// with [`RawDevice::wait`] only if the CPU needs to know; GPU work is
    /// ordered without it). Nothing queued: no call, the last point.
    ///
    /// On a device error the bookkeeping keeps what was queued (the device
    /// is lost; nothing reads the arena again).
    ///
    /// # Safety
    ///
    /// No other thread may submit to this device's queue
    /// (`wgpu::Queue::submit`) or bind during the call (Vulkan's external
    /// synchronisation of `VkQueue`; wgpu offers no lock to take).
    pub unsafe fn flush(&mut self) -> Result<TimelinePoint, SparseError> {
        if self.pending_runs.is_empty() {
            return Ok(self.raw.last_point());
        }
        let mut runs = core::mem::take(&mut self.pending_runs);
        runs.sort_unstable();
        let mut binds = Vec::with_capacity(runs.len());
        for &(a, b) in &runs {
            for p in a..b {
                let op = core::mem::replace(&mut self.pending[p as usize], NONE);
                let offset = u64::from(p) * self.page_size;
                match op {
                    BIND => {
                        let (memory, memory_offset) = self.block_memory(self.page_block[p as usize]);
                        Self::push_bind(&mut binds, offset, self.page_size, memory, memory_offset);
                    }
                    UNBIND => Self::push_bind(&mut binds, offset, self.page_size, vk::DeviceMemory::null(), 0),
                    _ => {}
                }
            }
        }
        runs.clear();
        self.pending_runs = runs;
        self.pending_pages = 0;
        if binds.is_empty() {
            return Ok(self.raw.last_point());
        }
        // SAFETY: the caller keeps the queue to us; every page is inside the
        // buffer (checked when queued), every block inside a live chunk of a
        // type the buffer allows, all offsets/sizes are page multiples, and
        // each page appears once (`pending` holds one operation a page).
        let point = unsafe { self.raw.bind_sparse(self.vk_buffer, &binds) }?;
        self.last_bind = Some(point);
        Ok(point)
    }

    fn check_pages(&mut self, pages: impl Iterator<Item = u32>) -> Result<(), SparseError> {
        self.scratch.clear();
        for p in pages {
            if p >= self.pages {
                return Err(SparseError::PageOutOfRange { page: p, pages: self.pages });
            }
            self.scratch.push(p);
        }
        self.scratch.sort_unstable();
        if let Some(w) = self.scratch.windows(2).find(|w| w[0] == w[1]) {
            return Err(SparseError::DuplicatePage(w[0]));
        }
        Ok(())
    }

    fn block_memory(&self, block: u32) -> (vk::DeviceMemory, u64) {
        let chunk = (block / self.chunk_blocks) as usize;
        (self.chunks[chunk], u64::from(block % self.chunk_blocks) * self.page_size)
    }

    /// Append a bind, merging it into the previous one when both resource
    /// and memory ranges continue it.
    fn push_bind(
        binds: &mut Vec<vk::SparseMemoryBind>,
        offset: u64,
        size: u64,
        memory: vk::DeviceMemory,
        memory_offset: u64,
    ) {
        if let Some(last) = binds.last_mut() {
            if last.resource_offset + last.size == offset
                && last.memory == memory
                && (memory == vk::DeviceMemory::null() || last.memory_offset + last.size == memory_offset)
            {
                last.size += size;
                return;
            }
        }
        binds.push(
            vk::SparseMemoryBind::default()
                .resource_offset(offset)
                .size(size)
                .memory(memory)
                .memory_offset(memory_offset),
        );
    }

    /// Bind each `(page, block)` in one `vkQueueBindSparse` (with whatever
    /// was queued before), after all work queued so far and before all work
    /// queued later. A page bound before is re-bound. Returns the timeline
    /// value reached when the binds are done (see [`flush`](Self::flush)).
    ///
    /// # Safety
    ///
    /// As for [`flush`](Self::flush).
    pub unsafe fn bind(&mut self, pages: &[(u32, BlockId)]) -> Result<TimelinePoint, SparseError> {
        self.check_pages(pages.iter().map(|&(p, _)| p))?;
        if let Some(&(_, b)) = pages.iter().find(|&&(_, b)| !self.allocated.get(b.0 as usize).copied().unwrap_or(false))
        {
            return Err(SparseError::BadBlock(b));
        }
        if let Some(&(p, _)) = pages.iter().find(|&&(p, _)| self.pending[p as usize] == BIND) {
            return Err(SparseError::DuplicatePage(p));
        }
        for &(p, b) in pages {
            self.queue_page(p, b.0);
            self.pending_runs.push((p, p + 1));
        }
        self.pending_pages += u32::try_from(pages.len()).unwrap_or(u32::MAX);
        // SAFETY: the caller's contract.
        unsafe { self.flush() }
    }

    /// Unbind `pages` in one `vkQueueBindSparse` (ordered like [`bind`],
    /// with whatever was queued before). Unbinding an unbound page is
    /// allowed; the blocks stay allocated.
    ///
    /// # Safety
    ///
    /// As for [`flush`](Self::flush).
    ///
    /// [`bind`]: Self::bind
    pub unsafe fn unbind(&mut self, pages: &[u32]) -> Result<TimelinePoint, SparseError> {
        self.check_pages(pages.iter().copied())?;
        self.queue_unbind(pages)?;
        // SAFETY: the caller's contract.
        unsafe { self.flush() }
    }
}

impl Drop for SparseArena {
    fn drop(&mut self) {
        // The drop callback frees the buffer and pool once wgpu is done with
        // it, but wgpu does not know about our binds: wait for the last one.
        if let Some(p) = self.last_bind {
            // A lost device never advances its timeline: do not wait.
            let waited = if self.raw.is_lost() {
                Err(super::VkError::Unsupported("device lost"))
            } else {
                self.raw.wait(p, Duration::from_secs(60))
            };
            if let Err(e) = waited {
                // Leak rather than free memory a bind may still use.
                tracing::warn!("svm vk: sparse arena leaked, last bind not finished: {e}");
                core::mem::forget(self.buffer.take());
                return;
            }
        }
        drop(self.buffer.take());
    }
}
