//! Memory advice and explicit prefetch (UVM's `cudaMemAdvise` /
//! `cudaMemPrefetchAsync`).

use crate::error::LaunchError;

/// Where data should be.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// Host memory (the arena's host copy).
    Host,
    /// The GPU's page pool.
    Device,
}

/// Advice for a range of managed memory. Effects (all visible in
/// [`crate::Stats`]):
///
/// * [`Advice::ReadMostly`]: read-only device copies made by launches are
///   kept after the launch (the CPU's mapping becomes write-protected), so
///   later launches that read the range migrate nothing. A CPU write to a
///   page drops its device copy first (a write-protect fault), then proceeds.
/// * [`Advice::PreferredLocation`]`(Host)`: pages a kernel wrote migrate
///   back to the host right after the launch (no CPU faults later).
/// * [`Advice::PreferredLocation`]`(Device)`: under pool pressure these pages
///   are evicted last.
/// * [`Advice::AccessedBy`]: the device accesses the range in place in host
///   memory (imported into Vulkan with `VK_EXT_external_memory_host`):
///   nothing migrates either way, kernels read and write the host copy, and
///   the CPU never faults on it. One range at a time, at most one storage
///   binding long; devices without host import refuse it
///   ([`AdviseError::Unsupported`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Advice {
    /// See the type docs.
    ReadMostly,
    /// Undo [`Advice::ReadMostly`]; kept device copies are dropped.
    UnsetReadMostly,
    /// See the type docs.
    PreferredLocation(Location),
    /// Undo [`Advice::PreferredLocation`].
    UnsetPreferredLocation,
    /// See the type docs.
    AccessedBy,
    /// Undo [`Advice::AccessedBy`]; the range migrates normally again.
    UnsetAccessedBy,
}

/// `advise` failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdviseError {
    /// The range is not inside live allocations of this runtime.
    #[error("range {addr:#x}+{len:#x} is not inside live allocations of this runtime")]
    BadRange {
        /// Start.
        addr: usize,
        /// Length.
        len: usize,
    },
    /// The advice needs something this runtime does not have.
    #[error("advice not supported here: {0}")]
    Unsupported(&'static str),
    /// A kept copy could not be dropped, or an import failed.
    #[error(transparent)]
    Device(#[from] crate::error::DeviceError),
}

/// An asynchronous prefetch; [`Prefetch::wait`] gives its result.
///
/// Dropped without `wait`, it waits for the prefetch (as a dropped launch
/// handle does). It keeps its runtime alive: the runtime's last handle may
/// be a prefetch, and the runtime then goes when it is dropped, on the
/// dropping thread.
#[derive(Debug)]
#[must_use = "a prefetch runs in the background; wait for it to know it finished"]
pub struct Prefetch {
    /// The result, once the runtime's prefetch thread has done it; or why
    /// it could not be queued. `None` once received.
    pub(crate) done: Option<Result<std::sync::mpsc::Receiver<Result<u64, LaunchError>>, LaunchError>>,
    /// The result, once received by `is_finished`.
    pub(crate) got: parking_lot::Mutex<Option<Result<u64, LaunchError>>>,
    /// The runtime, kept until the prefetch has finished (its thread holds
    /// only a weak reference between requests).
    pub(crate) runtime: crate::Svm,
}

impl Prefetch {
    /// Wait for the prefetch; returns the pages it moved.
    pub fn wait(mut self) -> Result<u64, LaunchError> {
        self.take()
    }
    /// Whether it has finished.
    pub fn is_finished(&self) -> bool {
        let Some(Ok(rx)) = &self.done else { return true };
        let mut got = self.got.lock();
        if got.is_some() {
            return true;
        }
        match rx.try_recv() {
            Ok(r) => {
                *got = Some(r);
                true
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => false,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => true,
        }
    }
    /// The result, waiting for it if it has not come yet (in a forked
    /// child, which has no prefetch thread: `NotInherited`).
    fn take(&mut self) -> Result<u64, LaunchError> {
        let done = self.done.take();
        if let Some(r) = self.got.lock().take() {
            return r;
        }
        self.runtime.check_process()?;
        match done {
            Some(Ok(rx)) => rx.recv().unwrap_or_else(|_| Err(LaunchError::Os("the prefetch thread ended".into()))),
            Some(Err(e)) => Err(e),
            None => Err(LaunchError::Os("the prefetch's result was already taken".into())),
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        if self.done.is_some() {
            if let Err(e) = self.take() {
                tracing::warn!("svm: a prefetch whose handle was dropped failed: {e}");
            }
        }
    }
}

/// Where the pages of a range are and what advice they carry
/// ([`crate::Svm::range_info`], in the spirit of
/// `cudaMemRangeGetAttribute`). Counts are in pages (page-granular: a
/// range covers every page it touches).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RangeInfo {
    /// Pages the range covers.
    pub pages: u64,
    /// Pages whose only current copy is the host's.
    pub host: u64,
    /// Pages the device owns (the host copy is stale until a CPU access).
    pub device: u64,
    /// Pages current on both (read-only device copies: `ReadMostly`).
    pub duplicated: u64,
    /// Pages used in place by the device (`AccessedBy`, or the coherent
    /// mapping mode).
    pub in_place: u64,
    /// Pages another device mirroring the arena has ([`crate::Svm::mirror`]):
    /// owned or copied read-only there (counted there as `device` /
    /// `duplicated`; here they are neither `host` nor `device`).
    pub other_device: u64,
    /// Pages advised `ReadMostly`.
    pub read_mostly: u64,
    /// Pages advised `PreferredLocation(Host)`.
    pub preferred_host: u64,
    /// Pages advised `PreferredLocation(Device)`.
    pub preferred_device: u64,
}
