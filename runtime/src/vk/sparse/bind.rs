//! Binding pages of a [`SparseArena`] to pool blocks: operations queued per
//! page, then sent by [`SparseArena::flush`] in one `vkQueueBindSparse`,
//! merging runs of contiguous pages on contiguous blocks into one
//! `VkSparseMemoryBind`.

use ash::vk;

use std::sync::Arc;

use super::{BindOutbox, BlockId, SparseArena, SparseError, BIND, NONE, UNBIND, UNBOUND};
use crate::vk::raw::TimelinePoint;

impl SparseArena {
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
    /// after all work submitted so far and before all work submitted later
    /// ([`seal`](Self::seal), then [`BindOutbox::send`], which also sends
    /// the batches sealed before). Returns the timeline value reached when
    /// they are done (host-wait it with
    /// [`RawDevice::wait`](crate::vk::RawDevice::wait) only if the CPU needs
    /// to know; GPU work is ordered without it). Nothing queued: no call,
    /// the last point.
    ///
    /// On a device error the bookkeeping keeps what was queued (the device
    /// is lost; nothing reads the arena again).
    ///
    /// # Safety
    ///
    /// As for [`BindOutbox::send`].
    pub unsafe fn flush(&mut self) -> Result<TimelinePoint, SparseError> {
        self.seal();
        // SAFETY: the caller's contract.
        unsafe { self.outbox.send() }
    }

    /// Make the operations queued since the last batch a batch of their own
    /// and put it in the [`outbox`](Self::outbox), behind the batches sealed
    /// before; [`BindOutbox::send`] sends it, with or without the lock that
    /// guards this arena. Until it is sent, queued binds are not seen by the
    /// device: send before the first submission that uses their pages.
    pub fn seal(&mut self) {
        if self.pending_runs.is_empty() {
            return;
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
        self.outbox.push(binds);
    }

    /// Where [`seal`](Self::seal)ed batches wait to be sent.
    pub fn outbox(&self) -> &Arc<BindOutbox> {
        &self.outbox
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
