//! Where device pages get their memory: frames of the software pool, or
//! sparse blocks bound at the page's own address.

use super::*;

/// Where device pages get their memory.
pub(super) enum Frames {
    /// Software mode: frames of the pool, any frame for any page.
    Pool(FrameAllocator),
    /// Sparse mode: page `p`'s frame is `p`; its memory is a block bound at
    /// sparse page `p` while the page is resident.
    Sparse(crate::vk::SparseArena),
}

impl Frames {
    /// Frames for up to `want` pages starting at `page`, as (first frame,
    /// count); `None` when none is free.
    pub(super) fn alloc_run(&mut self, page: u32, want: u32) -> Result<Option<(u32, u32)>, DeviceError> {
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
    pub(super) fn free(&mut self, frame: u32) {
        self.free_many(&[frame]);
    }

    /// Give back the frames of pages that left the device (sparse: one
    /// unbind for all of them; the device no longer uses them, every submit
    /// was waited for).
    pub(super) fn free_many(&mut self, frames: &[u32]) {
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
