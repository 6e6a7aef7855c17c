//! [`Outbox`]: device updates sealed under the update lock, sent in sealing
//! order outside it.
//!
//! The mirror's bookkeeping changes under the update lock, but telling the
//! device may block for a long time (a Vulkan sparse bind waits for the
//! work queued before it; lavapipe's returns only once a running kernel is
//! done). So the update lock only *seals* the changes made since the last
//! batch and pushes the batch here ([`Outbox::push`], a short lock); any
//! thread then sends with the update lock released ([`Outbox::send`]),
//! every batch waiting, oldest first, under the sender's own mutex. Batches
//! thus reach the device in the order they were sealed, whichever thread
//! sends them: a resource released by one batch and taken by a later one is
//! never seen taken and then released.
//!
//! What a sender may rely on when `send` returns `Ok`: every batch pushed
//! before the call is on the device (sent by this thread or by another
//! one whose send had popped it: `send` waits for that send to end). A
//! refused batch breaks the outbox for good (every later send fails). And
//! once [`Outbox::close`] has returned, the send function never runs again.
//! The loom models in `loom_tests` check these, and the order.
//!
//! Lock order: the sender's mutex before the batch queue's; pushing takes
//! only the queue's (so sealing never waits for a send in progress).

use std::collections::VecDeque;

use crate::loom::Mutex;

/// Why [`Outbox::send`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError<E> {
    /// The outbox was closed: nothing is sent any more.
    #[error("the outbox is closed: nothing is sent any more")]
    Closed,
    /// The device refused a batch, met by this call (see [`Outbox::send`]).
    #[error("the device refused a batch: {0}")]
    Refused(E),
    /// The device refused a batch earlier (met by another call): what it
    /// holds no longer follows the sealed changes, nothing is sent any more.
    #[error("the device refused an earlier batch: nothing is sent any more")]
    Broken,
}

/// Sealed batches `B` on their way to the device; `P` is what sending one
/// returns (a point on the device's timeline). See the module.
pub struct Outbox<B, P> {
    /// The batches waiting. Held only briefly.
    queue: Mutex<Queue<B, P>>,
    /// Held while batches are popped and sent, so that they reach the
    /// device in order.
    sender: Mutex<Sending>,
}

/// The sender's state.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sending {
    Open,
    /// [`Outbox::close`] was called.
    Closed,
    /// A batch was refused: every later send fails.
    Broken,
}

struct Queue<B, P> {
    /// Oldest first.
    batches: VecDeque<B>,
    /// Batches popped by a sender and not yet sent.
    popped: usize,
    /// What sending the last batch returned.
    last: Option<P>,
    /// A batch was refused (so the fast path of `send` fails too).
    broken: bool,
}

impl<B, P> core::fmt::Debug for Outbox<B, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let q = self.queue.lock();
        f.debug_struct("Outbox").field("batches", &q.batches.len()).field("popped", &q.popped).finish()
    }
}

impl<B, P> Default for Outbox<B, P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B, P> Outbox<B, P> {
    /// An empty, open outbox.
    pub fn new() -> Self {
        Self {
            queue: Mutex::new(Queue { batches: VecDeque::new(), popped: 0, last: None, broken: false }),
            sender: Mutex::new(Sending::Open),
        }
    }

    /// Queue a batch behind the ones waiting. Never waits for a send.
    pub fn push(&self, batch: B) {
        self.queue.lock().batches.push_back(batch);
    }

    /// Whether a batch is not on the device yet (waiting here, or being
    /// sent by another thread).
    pub fn has_batches(&self) -> bool {
        let q = self.queue.lock();
        !q.batches.is_empty() || q.popped > 0
    }
}

impl<B, P: Copy> Outbox<B, P> {
    /// Send every batch waiting, oldest first, one call of `send` each, and
    /// wait for any batch another thread is sending. Returns what sending
    /// the last batch returned (`None`: no batch was ever sent). With
    /// nothing waiting or being sent, returns at once.
    ///
    /// A batch `send` refuses breaks the outbox: the caller's bookkeeping
    /// keeps the batch's changes, which the device now lacks, so the call
    /// that met the refusal gets [`SendError::Refused`], every later one
    /// (and every one waiting for it) [`SendError::Broken`], and nothing is
    /// sent again. Only a device that can no longer be used correctly
    /// refuses a batch.
    pub fn send<E>(&self, mut send: impl FnMut(B) -> Result<P, E>) -> Result<Option<P>, SendError<E>> {
        {
            let q = self.queue.lock();
            if q.batches.is_empty() && q.popped == 0 && !q.broken {
                return Ok(q.last);
            }
        }
        let mut state = self.sender.lock();
        match *state {
            Sending::Open => {}
            Sending::Closed => return Err(SendError::Closed),
            Sending::Broken => return Err(SendError::Broken),
        }
        loop {
            // (Popped under the sender's lock: batches go in order.)
            let batch = {
                let mut q = self.queue.lock();
                let Some(b) = q.batches.pop_front() else { return Ok(q.last) };
                q.popped += 1;
                b
            };
            let sent = send(batch);
            let mut q = self.queue.lock();
            q.popped -= 1;
            match sent {
                Ok(p) => q.last = Some(p),
                Err(e) => {
                    q.broken = true;
                    q.batches.clear();
                    *state = Sending::Broken;
                    return Err(SendError::Refused(e));
                }
            }
        }
    }

    /// Refuse every later send (waiting for one in progress), drop the
    /// batches not sent, and return what sending the last one returned.
    pub fn close(&self) -> Option<P> {
        let mut state = self.sender.lock();
        *state = Sending::Closed;
        let mut q = self.queue.lock();
        q.batches.clear();
        q.last
    }
}
