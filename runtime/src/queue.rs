//! Launches that do not wait: [`LaunchQueue`] (in-order, as a CUDA stream or
//! a SYCL in-order queue) and the [`Pending`] handle of each launch.
//!
//! Every queue submits to the device's one GPU queue, so launches run in
//! the order they were submitted, across queues too; a queue is the unit
//! that [`LaunchQueue::finish`] waits for. A launch on a queue returns once
//! its pass is submitted: the host side (residency, page table, arguments)
//! of the next launch overlaps the kernel of this one, and a CPU thread can
//! work on other data meanwhile. A launch whose pages conflict with one in
//! flight (it would move them, or take them from the device) waits for that
//! one before it is submitted.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;

use crate::advise::Location;
use crate::error::LaunchError;
use crate::kernel::{Kernel, LaunchDescriptor, LaunchOptions, LaunchReport};
use crate::runtime::FlightShared;
use crate::Svm;

/// An in-order launch queue of a runtime ([`Svm::create_queue`]).
///
/// Launches on it return a [`Pending`] handle at once; they run in
/// submission order. Cheap to create; several may be used from several
/// threads (each is `Send + Sync`).
pub struct LaunchQueue {
    svm: Svm,
    /// Launches submitted on this queue and not known retired.
    submitted: Mutex<Vec<Arc<FlightShared>>>,
}

impl core::fmt::Debug for LaunchQueue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LaunchQueue").field("in_flight", &self.submitted.lock().len()).finish_non_exhaustive()
    }
}

impl Svm {
    /// A new in-order launch queue.
    pub fn create_queue(&self) -> LaunchQueue {
        LaunchQueue { svm: self.clone(), submitted: Mutex::new(Vec::new()) }
    }
}

impl LaunchQueue {
    /// Submit a launch (default options) and return without waiting for
    /// its kernel: see [`Self::launch_with`].
    pub fn launch<'a>(&self, kernel: &Kernel, desc: &LaunchDescriptor<'a>) -> Result<Pending<'a>, LaunchError> {
        self.launch_with(kernel, desc, &LaunchOptions::default())
    }

    /// Submit a launch. Errors found before submission (bad ranges,
    /// bindings, a full pool, a lost device) are returned here; the
    /// kernel's own (refused accesses) by the handle.
    ///
    /// The handle keeps the descriptor's borrows alive, so no Rust
    /// reference can see the kernel's writes before it is done; if it is
    /// leaked instead of waited for, the pages the kernel writes stay away
    /// from the CPU until it is (a CPU access waits for the kernel), and
    /// inputs it reads in place (coherent) are write-protected until then
    /// (a CPU write waits for the kernel instead of changing its input).
    ///
    /// A replayable launch, or one with a timeout, runs to completion
    /// here (its passes depend on the previous ones' faults); the handle is
    /// then complete already.
    pub fn launch_with<'a>(
        &self,
        kernel: &Kernel,
        desc: &LaunchDescriptor<'a>,
        opts: &LaunchOptions,
    ) -> Result<Pending<'a>, LaunchError> {
        let state = match self.svm.submit(kernel, desc, opts)? {
            Ok(flight) => {
                let mut list = self.submitted.lock();
                list.retain(|f| !f.is_retired());
                list.push(flight.clone());
                State::Flight(flight)
            }
            Err(report) => State::Done(Some(Ok(report))),
        };
        Ok(Pending { svm: self.svm.clone(), state, _borrows: PhantomData })
    }

    /// Move `[addr, addr + len)` to `to` now, after the launches in flight
    /// that use it (they finish first); the copies to the device are queued
    /// behind every launch submitted before. Returns the pages moved.
    pub fn prefetch(&self, addr: *const u8, len: usize, to: Location) -> Result<u64, LaunchError> {
        self.svm.prefetch_ordered(addr as usize, len, to)
    }

    /// Give advice for `[addr, addr + len)` now, after the launches in
    /// flight that use it (they finish first, as for [`Svm::advise`], whose
    /// effects and errors these are): ordered after this queue's earlier
    /// launches on the range, before its later ones.
    pub fn advise(&self, addr: *const u8, len: usize, advice: crate::Advice) -> Result<(), crate::AdviseError> {
        self.svm.advise(addr, len, advice)
    }

    /// Wait for every launch submitted on this queue so far (their
    /// handles keep their results).
    pub fn finish(&self) {
        let list = std::mem::take(&mut *self.submitted.lock());
        for f in &list {
            self.svm.wait_retired(f);
        }
    }

    /// Launches submitted on this queue that are not retired yet.
    pub fn in_flight(&self) -> usize {
        let mut list = self.submitted.lock();
        list.retain(|f| !f.is_retired());
        list.len()
    }
}

enum State {
    Flight(Arc<FlightShared>),
    Done(Option<Result<LaunchReport, LaunchError>>),
}

/// A launch submitted on a [`LaunchQueue`]: wait for it with
/// [`Self::wait`] or `.await`. It borrows what the launch's descriptor
/// borrows (the launch's data) until then; dropping it waits too.
///
/// Awaited, its task's waker is called from the runtime's threads (the
/// completion thread, or the polling thread itself), never with the
/// runtime's update lock held: a waker may drop the handle (the last
/// reference to its task). As the `Waker` contract expects, the executor
/// should schedule the task rather than poll it inside `wake`. In a
/// forked child, waiting returns [`crate::DeviceError::NotInherited`].
#[must_use = "a launch is waited for when its handle drops; call wait() to see its result"]
pub struct Pending<'a> {
    svm: Svm,
    state: State,
    _borrows: PhantomData<&'a ()>,
}

impl core::fmt::Debug for Pending<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pending").field("complete", &self.is_complete()).finish_non_exhaustive()
    }
}

impl Pending<'_> {
    /// Wait for the launch: what it did, or why it failed (a refused
    /// access, a lost device).
    pub fn wait(mut self) -> Result<LaunchReport, LaunchError> {
        self.take()
    }

    /// Whether the kernel has finished on the GPU (a `wait` then returns
    /// without waiting for the device).
    pub fn is_complete(&self) -> bool {
        match &self.state {
            State::Flight(f) => f.gpu_done() || f.is_retired(),
            State::Done(_) => true,
        }
    }

    fn take(&mut self) -> Result<LaunchReport, LaunchError> {
        let state = std::mem::replace(&mut self.state, State::Done(None));
        match state {
            State::Flight(f) => self.svm.wait_submitted(&f),
            State::Done(r) => r.unwrap_or_else(|| {
                Err(crate::error::DeviceError::Unexpected("the launch's result was taken already".into()).into())
            }),
        }
    }
}

impl Future for Pending<'_> {
    type Output = Result<LaunchReport, LaunchError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let State::Flight(f) = &self.state {
            if !f.gpu_done() && !f.is_retired() {
                f.wake_when_done(cx.waker());
                if !f.gpu_done() && !f.is_retired() {
                    return Poll::Pending;
                }
            }
        }
        // Done on the GPU: retiring it takes the update lock briefly.
        Poll::Ready(self.take())
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let State::Flight(_) = self.state {
            if let Err(e) = self.take() {
                tracing::warn!("svm: a launch whose handle was dropped failed: {e}");
            }
        }
    }
}
