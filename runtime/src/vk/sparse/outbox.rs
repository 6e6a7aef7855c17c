//! [`BindOutbox`]: bind batches on their way to the queue.
//!
//! The arena's bookkeeping changes under whatever lock guards the arena (the
//! runtime's update lock); [`SparseArena::seal`](super::SparseArena::seal)
//! turns the operations queued since the last batch into one batch and puts
//! it here, in that order. [`BindOutbox::send`] sends every batch waiting,
//! oldest first, one `vkQueueBindSparse` each, under the outbox's own mutex —
//! so batches reach the queue in the order they were sealed, whichever
//! thread sends them and whether or not it holds the arena's lock. That is
//! what lets a launch send its binds with the update lock released:
//! `vkQueueBindSparse` waits on the timeline for the work queued before it,
//! and lavapipe's call returns only once that work (a running kernel) is
//! done.
//!
//! Why the order is all that matters: a block released by one batch (an
//! unbind) may be bound at another page by a later one; sent in sealing
//! order, the device never sees the later bind undone by the earlier unbind.
//! A sender that finds the outbox empty knows its batch was sent: the thread
//! that took it held the mutex until its call returned.

use std::collections::VecDeque;
use std::sync::Arc;

use ash::vk;
use parking_lot::Mutex;

use super::SparseError;
use crate::vk::raw::{RawDevice, TimelinePoint};
use crate::vk::VkError;

/// Sealed bind batches of one sparse arena, sent in order (see the module).
pub struct BindOutbox {
    raw: Arc<RawDevice>,
    vk_buffer: vk::Buffer,
    state: Mutex<Outbox>,
}

struct Outbox {
    batches: VecDeque<Vec<vk::SparseMemoryBind>>,
    /// The timeline value of the last batch sent.
    last_bind: Option<TimelinePoint>,
    /// Set when the arena is dropped: its buffer and memory are going away,
    /// nothing may be sent any more.
    closed: bool,
}

impl core::fmt::Debug for BindOutbox {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let o = self.state.lock();
        f.debug_struct("BindOutbox").field("batches", &o.batches.len()).field("closed", &o.closed).finish()
    }
}

impl BindOutbox {
    pub(super) fn new(raw: Arc<RawDevice>, vk_buffer: vk::Buffer) -> Self {
        Self { raw, vk_buffer, state: Mutex::new(Outbox { batches: VecDeque::new(), last_bind: None, closed: false }) }
    }

    /// Queue a batch behind the ones waiting (its binds were validated when
    /// the arena queued them).
    pub(super) fn push(&self, binds: Vec<vk::SparseMemoryBind>) {
        if !binds.is_empty() {
            self.state.lock().batches.push_back(binds);
        }
    }

    /// Whether a batch waits to be sent.
    pub fn has_batches(&self) -> bool {
        !self.state.lock().batches.is_empty()
    }

    /// Send every batch waiting, oldest first (one `vkQueueBindSparse`
    /// each, after all work submitted before it and before all work
    /// submitted after it: the timeline protocol of
    /// [`RawDevice::bind_sparse`]). Returns the timeline value of the last
    /// batch sent by anyone (the last point queued when none was). May
    /// block until the work before the batch is done (lavapipe).
    ///
    /// On a device error the failed batch stays first (the device is lost;
    /// nothing is sent again).
    ///
    /// # Safety
    ///
    /// No other thread may use this device's queue during the call except
    /// through the raw device's locks, which `bind_sparse` takes: every
    /// submission of the runtime does (`Gpu::submit`,
    /// `RawDevice::submit_signalled`); an application submitting on a
    /// shared device must too.
    pub unsafe fn send(&self) -> Result<TimelinePoint, SparseError> {
        let mut o = self.state.lock();
        if o.closed {
            return Err(VkError::Unsupported("the sparse arena was dropped: no more binds").into());
        }
        while let Some(binds) = o.batches.front() {
            // SAFETY: the caller's contract for the queue; the binds were
            // checked when queued (pages inside the buffer, blocks in live
            // chunks of an allowed type, page-multiple offsets, one operation
            // a page) and the buffer and chunks live until the arena's Drop,
            // which closes the outbox first.
            let point = unsafe { self.raw.bind_sparse(self.vk_buffer, binds) }?;
            o.batches.pop_front();
            o.last_bind = Some(point);
        }
        Ok(o.last_bind.unwrap_or_else(|| self.raw.last_point()))
    }

    /// The arena is being dropped: refuse every later send, drop the batches
    /// not sent, and return the last bind's timeline value (to wait for).
    pub(super) fn close(&self) -> Option<TimelinePoint> {
        let mut o = self.state.lock();
        o.closed = true;
        o.batches.clear();
        o.last_bind
    }
}
