//! Launches in flight: what a submitted pass holds until it is *retired*
//! (its log read, its read-only copies dropped), which pages it keeps busy,
//! and how every other path waits for the ones it conflicts with.
//!
//! The update lock is not held while a kernel runs. A pass is submitted
//! under the lock and recorded in [`State::flights`] with the pages it may
//! touch (its *busy* ranges); the lock is released; a completion thread
//! waits for the GPU and marks the pass done; then whoever needs it retires
//! it under the lock. Anything that would change a busy page in a way the
//! pass could see — a CPU fault on it, `free`, advice, prefetch, eviction,
//! another launch that moves it — waits for that pass first (HMM's blockable
//! invalidation: the update lock is released while waiting, and the
//! decision is taken again after). Everything else proceeds while kernels
//! run: CPU faults on other pages, `alloc`, `free` of other ranges, other
//! launches (which queue behind the running one on the GPU).
//!
//! Frames a pass may still use are never handed out: a page keeps its frame
//! while busy, and frames freed by a device-side move (bound ranges made
//! contiguous) are released only when the pass that moved them retires.

use std::sync::atomic::AtomicBool;
use std::task::Waker;

use parking_lot::{Condvar, MutexGuard};

use super::*;

/// The part of a launch in flight that its handle and the completion
/// thread share.
pub(crate) struct FlightShared {
    /// Set once submitted (after the update lock is released: on a queue
    /// that takes a submission only when the previous one has run, the
    /// submit waits for the running kernel).
    pub(super) index: std::sync::OnceLock<wgpu::SubmissionIndex>,
    /// The timeline value the submission signals (with the raw device): a
    /// hint only (see `submit::complete`).
    pub(super) point: std::sync::OnceLock<crate::vk::raw::TimelinePoint>,
    /// Set by wgpu once the submission's work is done (its
    /// `on_submitted_work_done`, registered right after it, fires in some
    /// thread's poll), with the raw device.
    pub(super) work_done: std::sync::OnceLock<Arc<AtomicBool>>,
    /// The GPU finished the submission (or the device was lost: `lost`).
    pub(super) gpu_done: AtomicBool,
    /// Removed from [`State::flights`]; its result is in `result`.
    pub(super) retired: AtomicBool,
    /// The owner retires it (a synchronous launch's passes), not whoever
    /// finds it done.
    pub(super) driven: bool,
    pub(super) lost: Mutex<Option<String>>,
    pub(super) result: Mutex<Option<Result<LaunchReport, LaunchError>>>,
    pub(super) waker: Mutex<Option<Waker>>,
}

/// A submitted pass, under the update lock until retired.
pub(super) struct InFlight {
    pub(super) shared: Arc<FlightShared>,
    /// Pages the pass may touch, with whether it may write them; sorted.
    pub(super) busy: Vec<(u32, u32, bool)>,
    /// Every other operation waits for it (a replayable launch: it maps
    /// what is resident and replays between passes).
    pub(super) exclusive: bool,
    /// No pass: pages a prefetch claimed while it copies them in with the
    /// update lock released (`Inner::claim`). Never shared with a launch
    /// (their frames are not filled yet); retired by its owner.
    pub(super) claim: bool,
    /// A claim under which the application's own passes run
    /// (`with_bindings`), submitted by this thread: to every other thread,
    /// like a pass, it may be running on the device.
    pub(super) app_passes: Option<std::thread::ThreadId>,
    pub(super) label: String,
    /// The pass reads the launch log back (kernels using the prelude).
    pub(super) readback: Option<wgpu::Buffer>,
    /// A replayable page-table pass: where its fault bitmaps are.
    pub(super) fault_bitmaps: Option<FaultBitmaps>,
    /// The pass checked extents (else the page table).
    pub(super) extents: bool,
    pub(super) replayable: bool,
    /// The pass writes GPU timestamps (the shared query set is its own
    /// until retired).
    pub(super) stamps: bool,
    pub(super) submitted: Instant,
    pub(super) pt_bytes: u64,
    /// A queued launch's settling: read-only copies it made, its report,
    /// CPU mappings of in-place pages it took away, frames to release.
    pub(super) temporary: Vec<(u32, u32)>,
    pub(super) report: LaunchReport,
    pub(super) zapped_in_place: Vec<(u32, u32)>,
    /// In-place pages it reads, write-protected on the CPU until it retires.
    pub(super) protected_in_place: Vec<(u32, u32)>,
    pub(super) release_frames: Vec<u32>,
}

/// The fault bitmaps of the launch log a replayable pass wrote: after
/// `LOG_FAULTS`, the count and `FAULT_CAP` list entries, `words` words of
/// read faults, then `words` of write faults.
pub(super) struct FaultBitmaps {
    pub(super) log: wgpu::Buffer,
    pub(super) words: u32,
}

/// What pages are claimed for ([`Inner::claim`]).
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub(super) enum ClaimFor {
    /// `prefetch(Device)` copies them in.
    Prefetch,
    /// A CPU fault copies them back.
    FaultCopyBack,
    /// The application's own passes use them (`with_bindings`).
    AppPasses,
}

impl ClaimFor {
    fn label(self) -> &'static str {
        match self {
            Self::Prefetch => "prefetch",
            Self::FaultCopyBack => "fault copy back",
            Self::AppPasses => "with_bindings",
        }
    }
}

/// Wakes waiters when a flight's GPU work completes or it retires.
#[derive(Default)]
pub(crate) struct Signals {
    lock: Mutex<()>,
    cv: Condvar,
    /// The fault service's kick ([`svm_migrate::FaultHandler::set_kick`]).
    kick: std::sync::OnceLock<svm_migrate::Kick>,
    /// CPU faults parked on flights (`Served::Again`): the next
    /// notification after one kicks the fault service (the seed crate's
    /// handshake, loom-checked there: no lost wake-up).
    again: svm_pagetable::AgainGate,
}

impl Signals {
    /// Wake waiters on a state change (made before, under `lock`, which
    /// the caller holds), and the fault service if it parked a fault.
    fn notify(&self) {
        self.cv.notify_all();
        if self.again.released() {
            if let Some(k) = self.kick.get() {
                k.kick();
            }
        }
    }

    /// Mark `f` done on the GPU (or given up: its `lost` set first) and
    /// wake its waiters and its handle.
    pub(super) fn mark_done(&self, f: &FlightShared) {
        {
            let _g = self.lock.lock();
            f.gpu_done.store(true, Ordering::Release);
            self.notify();
        }
        f.wake();
    }

    pub(super) fn set_kick(&self, kick: svm_migrate::Kick) {
        let _ = self.kick.set(kick);
    }

    /// The fault service's kick, once it has given it.
    pub(super) fn kick(&self) -> Option<svm_migrate::Kick> {
        self.kick.get().cloned()
    }

    /// Whether `f` has settled (see [`FlightShared::settled_enough`]); if
    /// not, the next notification kicks the fault service: a flight
    /// settling meanwhile is either seen here or kicks after.
    pub(super) fn settled_or_kick_later(&self, f: &FlightShared) -> bool {
        self.again.ready_or_register(|| f.settled_enough())
    }

    /// Block until `done()` holds (checked under the signal lock, which
    /// every state change that can make it true takes before notifying).
    fn wait_until(&self, done: impl Fn() -> bool, deadline: Option<Instant>) -> bool {
        let mut g = self.lock.lock();
        while !done() {
            match deadline {
                Some(d) => {
                    if self.cv.wait_until(&mut g, d).timed_out() {
                        return done();
                    }
                }
                None => self.cv.wait(&mut g),
            }
        }
        true
    }
}

/// Call an executor's waker; a panicking one (an executor's bug) is
/// reported instead of ending the calling thread.
fn call_waker(w: Waker) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake())).is_err() {
        tracing::error!("svm: a launch handle's waker panicked");
    }
}

impl FlightShared {
    /// The submission (once submitted).
    pub(super) fn submission(&self) -> Result<&wgpu::SubmissionIndex, DeviceError> {
        self.index.get().ok_or_else(|| DeviceError::Unexpected("a pass read back before its submission".into()))
    }

    /// The GPU finished the pass (or the device was lost).
    pub(crate) fn gpu_done(&self) -> bool {
        self.gpu_done.load(Ordering::Acquire)
    }

    /// Retired: its result is ready to take.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Wake `w` when the GPU finishes the pass (or at once if it has).
    pub(crate) fn wake_when_done(&self, w: &Waker) {
        *self.waker.lock() = Some(w.clone());
        if self.gpu_done() || self.is_retired() {
            self.wake();
        }
    }

    /// Wake the handle's task, if one waits: with the waker's lock
    /// released (a waker may poll at once, and register again), and a
    /// panicking waker (an executor's bug) reported instead of ending the
    /// calling thread, which may be the runtime's completion thread. The
    /// caller holds none of the runtime's locks but the launch order (a
    /// waker may drop the handle, whose drop takes the update lock).
    fn wake(&self) {
        // (Taken in a statement of its own: the waker's lock is released
        // before the waker runs.)
        let w = self.waker.lock().take();
        if let Some(w) = w {
            call_waker(w);
        }
    }

    /// [`Self::wake`] for a caller holding the update lock: the waker (only
    /// there when a poll raced the launch's end, or on an error path) is
    /// called on a thread of its own, so that the runtime never runs an
    /// executor's code under its locks.
    fn wake_off_lock(&self) {
        let Some(w) = self.waker.lock().take() else { return };
        let slot = Arc::new(Mutex::new(Some(w)));
        let theirs = slot.clone();
        let spawned = std::thread::Builder::new().name("svm-wake".into()).spawn(move || {
            if let Some(w) = theirs.lock().take() {
                call_waker(w);
            }
        });
        if let Err(e) = spawned {
            tracing::error!("svm: no thread to wake a launch handle's task ({e}): woken under the update lock");
            if let Some(w) = slot.lock().take() {
                call_waker(w);
            }
        }
    }

    /// Whether a waiter may go on: retired, or (for a pass anyone retires)
    /// done on the GPU.
    fn settled_enough(&self) -> bool {
        self.retired.load(Ordering::Acquire) || (!self.driven && self.gpu_done.load(Ordering::Acquire))
    }
}

impl Inner {
    /// Record an encoded pass, about to be submitted ([`Self::submit_pass`]):
    /// from now on its pages are busy.
    pub(super) fn track(&self, st: &mut State, mut f: InFlight) -> Arc<FlightShared> {
        f.busy.sort_unstable();
        // (Only the member holding a page's lease uses it: `mirror.rs`.)
        debug_assert!(
            self.foreign_runs(f.busy.iter().map(|&(a, b, _)| (a, b))).is_empty(),
            "a flight on pages another mirror holds"
        );
        let shared = f.shared.clone();
        st.flights.push(f);
        shared
    }

    /// A flight that was tracked but could not be submitted: untracked, its
    /// settling done, its waiters woken with `e`.
    pub(super) fn abandon(&self, st: &mut State, f: &Arc<FlightShared>, e: &LaunchError) {
        if let Some(mut x) = self.take_flight(st, f) {
            if x.stamps {
                // (Its timestamp queries were never written.)
                st.stamps_busy = false;
            }
            // (Frames of moves go after the GPU work queued before.)
            st.deferred_free.append(&mut x.release_frames);
            let _ = self.settle_flight(st, &mut x);
            self.release_deferred_now(st);
        }
        {
            let _g = self.signals.lock.lock();
            f.gpu_done.store(true, Ordering::Release);
        }
        self.finish_flight(f, Some(Err(DeviceError::Unexpected(format!("the pass was not submitted: {e}")).into())));
    }

    /// Record pages claimed by an operation that copies them in with the
    /// update lock released (a prefetch), or that the application's own
    /// passes use (`with_bindings`): busy like a pass's, so that
    /// every path that would read, move or free them waits. Its owner ends
    /// it with [`Self::end_claim`].
    pub(super) fn claim(&self, st: &mut State, busy: Vec<(u32, u32, bool)>, why: ClaimFor) -> Arc<FlightShared> {
        let f = InFlight {
            shared: Self::new_shared(true),
            busy,
            exclusive: false,
            claim: true,
            app_passes: (why == ClaimFor::AppPasses).then(|| std::thread::current().id()),
            label: why.label().into(),
            readback: None,
            fault_bitmaps: None,
            extents: false,
            replayable: false,
            stamps: false,
            submitted: Instant::now(),
            pt_bytes: 0,
            temporary: Vec::new(),
            report: LaunchReport::default(),
            zapped_in_place: Vec::new(),
            protected_in_place: Vec::new(),
            release_frames: Vec::new(),
        };
        self.track(st, f)
    }

    /// End a claim: untracked, its waiters woken.
    pub(super) fn end_claim(&self, st: &mut State, f: &Arc<FlightShared>) {
        let _ = self.take_flight(st, f);
        {
            let _g = self.signals.lock.lock();
            f.gpu_done.store(true, Ordering::Release);
        }
        self.finish_flight(f, None);
    }

    /// A new flight's shared part.
    pub(super) fn new_shared(driven: bool) -> Arc<FlightShared> {
        Arc::new(FlightShared {
            index: std::sync::OnceLock::new(),
            point: std::sync::OnceLock::new(),
            work_done: std::sync::OnceLock::new(),
            gpu_done: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            driven,
            lost: Mutex::new(None),
            result: Mutex::new(None),
            waker: Mutex::new(None),
        })
    }

    /// Wait (update lock released meanwhile) until `f` has completed on the
    /// GPU, or `deadline` passed (false then).
    pub(super) fn wait_gpu(
        &self,
        guard: &mut MutexGuard<'_, State>,
        f: &FlightShared,
        deadline: Option<Instant>,
    ) -> bool {
        debug_assert!(guard.copies.is_none(), "the lock released with a launch's copies queued");
        MutexGuard::unlocked(guard, || self.signals.wait_until(|| f.gpu_done.load(Ordering::Acquire), deadline))
    }

    /// Remove flight `f` from the list (its owner retires it).
    pub(super) fn take_flight(&self, st: &mut State, f: &Arc<FlightShared>) -> Option<InFlight> {
        let i = st.flights.iter().position(|x| Arc::ptr_eq(&x.shared, f))?;
        Some(st.flights.remove(i))
    }

    /// Mark `f` retired with `result` and wake whoever waits for it.
    pub(super) fn finish_flight(&self, f: &FlightShared, result: Option<Result<LaunchReport, LaunchError>>) {
        if let Some(r) = result {
            *f.result.lock() = Some(r);
        }
        {
            let _g = self.signals.lock.lock();
            f.retired.store(true, Ordering::Release);
            self.signals.notify();
        }
        f.wake_off_lock();
    }

    /// Retire every queued flight the GPU has finished (log read, copies
    /// settled, result stored for its handle).
    pub(super) fn retire_done(&self, st: &mut State) {
        while let Some(i) =
            st.flights.iter().position(|f| !f.shared.driven && f.shared.gpu_done.load(Ordering::Acquire))
        {
            let f = st.flights.remove(i);
            let shared = f.shared.clone();
            let result = self.retire_queued(st, f);
            self.finish_flight(&shared, Some(result));
        }
        self.flush_preferred_host_later(st);
    }

    /// Wait (update lock released) until `f` is retired or, for a pass
    /// anyone retires, done on the GPU; then retire what is done.
    pub(super) fn wait_settled(&self, guard: &mut MutexGuard<'_, State>, f: &FlightShared) {
        debug_assert!(guard.copies.is_none(), "the lock released with a launch's copies queued");
        MutexGuard::unlocked(guard, || self.signals.wait_until(|| f.settled_enough(), None));
        self.retire_done(guard);
    }

    /// [`Self::wait_settled`] for a launch being prepared, which holds the
    /// launch order (`order`): released too while waiting (state first,
    /// then the order; taken again in lock order), so that other threads'
    /// launches on other data go on. Nothing of this launch is encoded yet.
    pub(super) fn wait_settled_unordered(
        &self,
        guard: &mut MutexGuard<'_, State>,
        order: &mut MutexGuard<'_, ()>,
        f: &FlightShared,
    ) {
        debug_assert!(guard.copies.is_none(), "the lock released with a launch's copies queued");
        MutexGuard::unlocked(guard, || {
            MutexGuard::unlocked(order, || self.signals.wait_until(|| f.settled_enough(), None))
        });
        self.retire_done(guard);
    }

    /// Wait until `conflict` finds no flight in the way, retiring finished
    /// ones and releasing the update lock while waiting (blockable).
    pub(super) fn wait_flights(
        &self,
        guard: &mut MutexGuard<'_, State>,
        mut conflict: impl FnMut(&State) -> Option<Arc<FlightShared>>,
    ) {
        loop {
            self.retire_done(guard);
            let Some(f) = conflict(guard) else { return };
            self.wait_settled(guard, &f);
        }
    }

    /// Wait for every flight (exclusive operations).
    pub(super) fn wait_all_flights(&self, guard: &mut MutexGuard<'_, State>) {
        self.wait_flights(guard, |st| st.flights.first().map(|f| f.shared.clone()));
    }

    /// The first flight using page `p`, if any, after retiring what is done.
    pub(super) fn flight_on(&self, st: &mut State, p: u32) -> Option<Arc<FlightShared>> {
        self.retire_done(st);
        st.flights.iter().find(|f| f.busy.iter().any(|&(x, y, _)| (x..y).contains(&p))).map(|f| f.shared.clone())
    }

    /// Wait until no flight uses a page of `[a, b)`.
    pub(super) fn wait_pages(&self, guard: &mut MutexGuard<'_, State>, a: u32, b: u32) {
        self.wait_flights(guard, |st| {
            st.flights
                .iter()
                .find(|f| f.exclusive || f.busy.iter().any(|&(x, y, _)| x < b && a < y))
                .map(|f| f.shared.clone())
        });
    }

    /// Wait until no flight *uses* a page of `[a, b)`: like
    /// [`Self::wait_pages`], but a replayable launch (exclusive) is waited
    /// for only where its busy pages meet the range. What `free` needs: a
    /// page outside every busy range has no valid PTE in a running pass
    /// (a replayable launch maps only what it holds busy, and everything
    /// that would map more — launches, prefetch, advice — waits for it),
    /// so no pass can reach its frame once freed; a later GPU fault on it
    /// finds it unallocated (the kernel's error).
    pub(super) fn wait_users(&self, guard: &mut MutexGuard<'_, State>, a: u32, b: u32) {
        self.wait_flights(guard, |st| {
            st.flights.iter().find(|f| f.busy.iter().any(|&(x, y, _)| x < b && a < y)).map(|f| f.shared.clone())
        });
    }

    /// A pass that may be running, when device-owned pages of `[a, b)`
    /// would be copied back through the device's queue (the staged path)
    /// under the update lock: a device with one queue (lavapipe's) takes
    /// the copy only once the kernel is done, and every other thread would
    /// wait for it. Callers wait for the pass first, the lock released
    /// (`wait_settled`), then decide again.
    pub(super) fn copy_back_behind_a_pass(&self, st: &State, a: u32, b: u32) -> Option<Arc<FlightShared>> {
        if !self.copies_back_on_the_queue(st) {
            return None;
        }
        let running = st.running_pass()?;
        (a..b).any(|p| st.owned(p)).then(|| running.clone())
    }

    /// Whether a flight uses page `p`.
    pub(super) fn busy(st: &State, p: u32) -> bool {
        st.flights.iter().any(|f| f.busy.iter().any(|&(x, y, _)| (x..y).contains(&p)))
    }

    /// The first flight a launch using `ranges` must wait for. A page in
    /// use by a flight can be shared when the new launch leaves it as it
    /// is: device-owned pages (read or written: the GPU runs the two in
    /// submission order), kept read-only copies that both only read, pages
    /// used in place (coherent) that both queued launches take from the CPU
    /// the same way (`zaps`: the new launch does; both write, or both read
    /// write-protected). `fixed`: pages the new
    /// launch will not move on the device (bound ranges in the software pool
    /// may be moved together: not shareable unless already contiguous).
    pub(super) fn launch_conflict(
        &self,
        st: &State,
        ranges: &[(u32, u32, bool)],
        exclusive: bool,
        zaps: bool,
        fixed: &dyn Fn(u32) -> bool,
    ) -> Option<Arc<FlightShared>> {
        let in_place = |p: u32| self.gpu.mode == MappingMode::Coherent || st.advice[p as usize] & advice::COHERENT != 0;
        let wp = self.arena.has_write_protect();
        for f in &st.flights {
            if exclusive || f.exclusive {
                return Some(f.shared.clone());
            }
            for &(a, b, write) in ranges {
                for &(x, y, fw) in &f.busy {
                    let (lo, hi) = (a.max(x), b.min(y));
                    for p in lo..hi {
                        let adv = st.advice[p as usize];
                        let ok = if f.claim {
                            false
                        } else if in_place(p) {
                            // In place: shared by queued launches that take
                            // the page from the CPU the same way (both zap
                            // it, or both write-protect it); the CPU gets it
                            // back when the last of them retires
                            // (`settle_flight`).
                            zaps && if write || !wp {
                                covers(&f.zapped_in_place, p)
                            } else {
                                covers(&f.protected_in_place, p)
                            }
                        } else if st.owned(p) {
                            adv & advice::PREFER_HOST == 0 && fixed(p)
                        } else {
                            st.dup[p as usize] && adv & advice::READ_MOSTLY != 0 && !write && !fw
                        };
                        if !ok {
                            return Some(f.shared.clone());
                        }
                    }
                }
            }
        }
        None
    }

    /// Retire a queued launch's pass: read its log, settle what it made.
    fn retire_queued(&self, st: &mut State, mut f: InFlight) -> Result<LaunchReport, LaunchError> {
        let outcome = self.read_outcome(st, &mut f);
        let mut post = self.settle_flight(st, &mut f);
        if post.is_ok() {
            post = self.flush_preferred_host(st, &f.busy).map_err(LaunchError::from);
        }
        let c = &self.stats;
        Counters::add(&c.launches, 1);
        let report = f.report;
        match outcome {
            Ok((Some(e), _)) => Err(e),
            // (Queued launches are not replayable: no faults to serve.)
            Ok((None, _)) => post.map(|()| report),
            Err(e) => Err(e),
        }
    }

    /// What every retired pass leaves behind: its read-only copies dropped
    /// (except ReadMostly ones), in-place pages given back to the CPU,
    /// frames of device-side moves released.
    pub(super) fn settle_flight(&self, st: &mut State, f: &mut InFlight) -> Result<(), LaunchError> {
        let mut post = self.settle_copies(st, std::mem::take(&mut f.temporary));
        // In-place pages go back to the CPU unless another flight (`f` is
        // out of the list) holds them the same way (`launch_conflict`).
        let held = |p: u32, zapped: bool| {
            st.flights.iter().any(|g| covers(if zapped { &g.zapped_in_place } else { &g.protected_in_place }, p))
        };
        for (a, b) in std::mem::take(&mut f.protected_in_place) {
            for (x, y) in runs(a, b, |p| !held(p, false)) {
                if let Err(e) = self.arena.write_unprotect(x as usize * PAGE_SIZE, (y - x) as usize * PAGE_SIZE) {
                    post = post.and(Err(LaunchError::Os(e.to_string())));
                }
            }
        }
        for (a, b) in std::mem::take(&mut f.zapped_in_place) {
            for (x, y) in runs(a, b, |p| !held(p, true)) {
                if let Err(e) = self.arena.restore(x as usize * PAGE_SIZE, (y - x) as usize * PAGE_SIZE) {
                    post = post.and(Err(LaunchError::Os(e.to_string())));
                }
            }
        }
        st.frames.free_many(&std::mem::take(&mut f.release_frames));
        post
    }
}

/// Whether sorted, disjoint page runs cover page `p`.
fn covers(runs: &[(u32, u32)], p: u32) -> bool {
    let i = runs.partition_point(|r| r.1 <= p);
    runs.get(i).is_some_and(|r| r.0 <= p)
}
