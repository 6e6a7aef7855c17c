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
//!   [`SparseArena::queue_release`], [`SparseArena::queue_unbind`]), sealed
//!   into a batch ([`SparseArena::seal`]) and sent in sealing order by
//!   [`BindOutbox::send`] — possibly by another thread, without the arena
//!   (`outbox`); [`SparseArena::flush`] does both: **one** `vkQueueBindSparse` for all
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
//! The parts: `blocks` (the pool's free runs and block allocation),
//! `create` ([`SparseArena::new`]: the buffer, the pool chunks, the wgpu
//! wrapper), `bind` (queued binds and unbinds, their batching into one
//! `vkQueueBindSparse`), `outbox` (sealed batches, sent in order with or
//! without the arena's lock); this file keeps the types, the accessors and Drop.
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

mod bind;
mod blocks;
mod create;
mod outbox;

pub use outbox::BindOutbox;

use std::sync::Arc;
use std::time::Duration;

use ash::vk;

use super::raw::RawDevice;
use super::VkError;
use blocks::FreeRuns;

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
    // Invariant: `buffer` wraps the sparse `VkBuffer` (the outbox binds it);
    // the drop callback destroys it.
    buffer: Option<wgpu::Buffer>,
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
    /// Sealed batches on their way to the queue, and the last one sent.
    outbox: Arc<BindOutbox>,
    scratch: Vec<u32>,
}

const NONE: u8 = 0;
const BIND: u8 = 1;
const UNBIND: u8 = 2;

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
}

impl Drop for SparseArena {
    fn drop(&mut self) {
        // The drop callback frees the buffer and pool once wgpu is done with
        // it, but wgpu does not know about our binds: wait for the last one.
        if let Some(p) = self.outbox.close() {
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
