//! [`BindOutbox`]: bind batches on their way to the queue.
//!
//! The arena's bookkeeping changes under whatever lock guards the arena (the
//! runtime's update lock); [`SparseArena::seal`](super::SparseArena::seal)
//! turns the operations queued since the last batch into one batch and puts
//! it here, in that order. [`BindOutbox::send`] sends every batch waiting,
//! oldest first, one `vkQueueBindSparse` each, under the outbox's sender
//! mutex —
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
//! Sealing takes only the short lock of the batch queue, never the sender's:
//! it does not wait for a send in progress.

use std::sync::Arc;

use ash::vk;
use svm_pagetable::{Outbox, SendError};

use super::SparseError;
use crate::vk::raw::{RawDevice, TimelinePoint};
use crate::vk::VkError;

/// Sealed bind batches of one sparse arena, sent in order (see the module;
/// the ordering is `svm_pagetable::Outbox`'s, modelled with loom there).
pub struct BindOutbox {
    raw: Arc<RawDevice>,
    vk_buffer: vk::Buffer,
    /// The batches, and the timeline value of the last one sent.
    batches: Outbox<Vec<vk::SparseMemoryBind>, TimelinePoint>,
}

impl core::fmt::Debug for BindOutbox {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BindOutbox").field("batches", &self.batches).finish_non_exhaustive()
    }
}

impl BindOutbox {
    pub(super) fn new(raw: Arc<RawDevice>, vk_buffer: vk::Buffer) -> Self {
        Self { raw, vk_buffer, batches: Outbox::new() }
    }

    /// Queue a batch behind the ones waiting (its binds were validated when
    /// the arena queued them).
    pub(super) fn push(&self, binds: Vec<vk::SparseMemoryBind>) {
        if !binds.is_empty() {
            self.batches.push(binds);
        }
    }

    /// Whether a batch is not on the device's queue yet (waiting here, or
    /// being sent by another thread).
    pub fn has_batches(&self) -> bool {
        self.batches.has_batches()
    }

    /// Send every batch waiting, oldest first (one `vkQueueBindSparse`
    /// each, after all work submitted before it and before all work
    /// submitted after it: the timeline protocol of
    /// `RawDevice::bind_sparse`), and wait for any being sent by another
    /// thread. Returns the timeline value of the last batch this outbox
    /// sent (the last point queued when none was). May block until the work
    /// before the batch is done (lavapipe). With nothing to send, returns
    /// at once.
    ///
    /// A batch the device refuses breaks the outbox (the arena's bookkeeping
    /// keeps it: only a lost or out-of-memory device refuses one, and
    /// nothing reads the arena correctly again): this and every later send
    /// fail.
    ///
    /// # Safety
    ///
    /// No other thread may use this device's queue during the call except
    /// through the raw device's locks, which `bind_sparse` takes: every
    /// submission of the runtime does (`Gpu::submit`,
    /// `RawDevice::submit_signalled`); an application submitting on a
    /// shared device must too.
    pub unsafe fn send(&self) -> Result<TimelinePoint, SparseError> {
        let sent = self.batches.send(|binds| {
            // SAFETY: the caller's contract for the queue; the binds were
            // checked when queued (pages inside the buffer, blocks in live
            // chunks of an allowed type, page-multiple offsets, one
            // operation a page) and the buffer and chunks live until the
            // arena's Drop, which closes the outbox first (after which this
            // closure never runs: `Outbox::close`).
            unsafe { self.raw.bind_sparse(self.vk_buffer, &binds) }
        });
        match sent {
            Ok(last) => Ok(last.unwrap_or_else(|| self.raw.last_point())),
            Err(SendError::Closed) => Err(VkError::Unsupported("the sparse arena was dropped: no more binds").into()),
            Err(SendError::Refused(e)) => Err(e.into()),
            Err(SendError::Broken) => {
                Err(VkError::Unsupported("an earlier sparse bind was refused: no more binds").into())
            }
        }
    }

    /// The arena is being dropped: refuse every later send, drop the batches
    /// not sent, and return the last bind's timeline value (to wait for).
    pub(super) fn close(&self) -> Option<TimelinePoint> {
        self.batches.close()
    }
}
