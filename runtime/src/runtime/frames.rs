//! Where device pages get their memory: frames of the software pool, or
//! sparse blocks bound at the page's own address.

use super::*;

/// Where device pages get their memory.
pub(super) enum Frames {
    /// Software mode: frames of the pool, any frame for any page.
    Pool(FrameAllocator),
    /// Sparse mode: page `p`'s frame is `p`; its memory is a block bound at
    /// sparse page `p` while the page is resident. (Boxed: one per
    /// runtime, and much larger than the pool's allocator.)
    Sparse(Box<crate::vk::SparseArena>),
}

/// Pages of unbinds queued in sparse mode before they are sealed into a
/// batch of their own (merged runs: bounds the per-page queue), which the
/// next bind sends.
const SPARSE_UNBIND_FLUSH_PAGES: u32 = 1 << 14;

impl Frames {
    /// Sparse mode: bind blocks at every page of `runs` not bound yet (runs
    /// of consecutive blocks, one `VkSparseMemoryBind` each), sealed with
    /// the unbinds queued since the last batch into **one** batch (one
    /// `vkQueueBindSparse`). `alloc_run` then hands out these pages without
    /// binding. Called once per launch (or prefetch) before its first copy.
    /// With `send`, the batch is sent now (under the update lock, which the
    /// caller holds); without, the caller sends it (`Inner::send_binds`)
    /// before the first copy or submission that uses these pages — a launch
    /// does so with the update lock released, since the call waits for the
    /// work queued before it (see `vk::BindOutbox`). Software mode: nothing.
    pub(super) fn prepare(&mut self, runs: &[(u32, u32)], send: bool) -> Result<(), DeviceError> {
        let Frames::Sparse(arena) = self else { return Ok(()) };
        let err = |e: crate::vk::SparseError| DeviceError::Unexpected(format!("sparse bind: {e}"));
        'runs: for &(a, b) in runs {
            let mut p = a;
            while p < b {
                if arena.bound(p).is_some() {
                    p += 1;
                    continue;
                }
                let mut e = p + 1;
                while e < b && arena.bound(e).is_none() {
                    e += 1;
                }
                while p < e {
                    // Out of blocks: the caller's `alloc_run` reports it.
                    let Some((block, n)) = arena.alloc_run(e - p) else { break 'runs };
                    arena.queue_bind_run(p, block, n).map_err(err)?;
                    p += n;
                }
            }
        }
        arena.seal();
        if !send {
            return Ok(());
        }
        // SAFETY: the runtime submits to the queue only under the raw
        // device's locks, which the bind takes.
        #[allow(unsafe_code, reason = "vkQueueBindSparse; contract argued inline")]
        let sent = unsafe { arena.outbox().send() };
        sent.map(|_| ()).map_err(err)
    }

    /// Frames for up to `want` pages starting at `page`, as (first frame,
    /// count); `None` when none is free. Sparse: pages bound by `prepare`
    /// are taken as they are; otherwise blocks are bound at once (one
    /// `vkQueueBindSparse`, which also sends the queued unbinds).
    pub(super) fn alloc_run(&mut self, page: u32, want: u32) -> Result<Option<(u32, u32)>, DeviceError> {
        match self {
            Frames::Pool(f) => Ok(f.alloc_run(want)),
            Frames::Sparse(arena) => {
                let mut n = 0;
                while n < want && arena.bound(page + n).is_some() {
                    n += 1;
                }
                if n > 0 {
                    return Ok(Some((page, n)));
                }
                let Some((block, n)) = arena.alloc_run(want) else { return Ok(None) };
                let queued = arena.queue_bind_run(page, block, n);
                // SAFETY: the runtime submits to the queue only under the
                // raw device's locks, which the bind takes. (Sent with the
                // batches sealed before, in order.)
                #[allow(unsafe_code, reason = "vkQueueBindSparse; contract argued inline")]
                let bound = queued.and_then(|()| unsafe { arena.flush() });
                if let Err(e) = bound {
                    return Err(DeviceError::Unexpected(format!("sparse bind: {e}")));
                }
                Ok(Some((page, n)))
            }
        }
    }

    /// Give back the frame of a page that left the device.
    pub(super) fn free(&mut self, frame: u32) {
        self.free_many(&[frame]);
    }

    /// Give back the frames of pages that left the device. Sparse: their
    /// blocks return to the pool now, the unbinds are queued (sealed into a
    /// batch once `SPARSE_UNBIND_FLUSH_PAGES` are) and sent with the next
    /// bind: the
    /// caller no longer lets a submission read these pages (their PTEs are
    /// invalid, no binding covers them), and every reuse of a block is a
    /// bind sent no earlier than its unbind.
    pub(super) fn free_many(&mut self, frames: &[u32]) {
        match self {
            Frames::Pool(f) => frames.iter().for_each(|&fr| f.free(fr)),
            Frames::Sparse(arena) => {
                let mut i = 0;
                while i < frames.len() {
                    let s = frames[i];
                    let mut n = 1;
                    while i + (n as usize) < frames.len() && frames[i + n as usize] == s + n {
                        n += 1;
                    }
                    if let Err(e) = arena.queue_release(s, n) {
                        tracing::error!("svm: sparse release of pages {s}..{}: {e}", s + n);
                    }
                    i += n as usize;
                }
                if arena.pending_pages() >= SPARSE_UNBIND_FLUSH_PAGES {
                    // Merged into one batch, sent with the next bind (not
                    // here: the call would wait for a running kernel with
                    // the update lock held).
                    arena.seal();
                }
            }
        }
    }

    /// The sparse arena (sparse mode).
    pub(super) fn sparse(&self) -> Option<&crate::vk::SparseArena> {
        match self {
            Frames::Sparse(arena) => Some(arena),
            Frames::Pool(_) => None,
        }
    }

    /// The software pool's allocator (for placement's moves).
    pub(super) fn pool_mut(&mut self) -> Option<&mut FrameAllocator> {
        match self {
            Frames::Pool(pool) => Some(pool),
            Frames::Sparse(_) => None,
        }
    }

    pub(super) fn free_count(&self) -> u32 {
        match self {
            Frames::Pool(f) => f.free_count(),
            Frames::Sparse(arena) => arena.free_blocks(),
        }
    }

    pub(super) fn total(&self) -> u32 {
        match self {
            Frames::Pool(f) => f.total(),
            Frames::Sparse(arena) => arena.pool_blocks(),
        }
    }
}
