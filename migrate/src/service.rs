//! The fault service: one thread per arena that receives CPU faults from the
//! backend, in batches, and hands each to the runtime's [`FaultHandler`].
//!
//! * **uffd**: the thread `poll`s the userfaultfd and an eventfd (shutdown),
//!   drains every pending fault message at once, drops duplicates (threads
//!   touching the same page) and serves the rest in address order, so one
//!   wake-up serves a burst of faults.
//! * **mprotect**: the SIGSEGV handler writes request pointers into a pipe;
//!   the thread reads them, serves them, and wakes each faulting thread.
//!
//! A handler may answer [`Served::Again`] for a fault it cannot serve yet
//! without waiting for other work (a page a running kernel uses): the
//! service *parks* it — its thread stays blocked — and goes on serving
//! other faults; it tries the parked ones again when the handler calls the
//! [`Kick`] it was given ([`FaultHandler::set_kick`]). So a thread that
//! touches a running kernel's data waits for the kernel, and no other
//! thread waits behind it (HMM's non-blockable invalidation, `-EAGAIN`).
//!
//! A handler that cannot serve a fault (device lost, say) returns
//! [`FaultFatal`]: the service prints its message and makes the faulting
//! access crash (uffd: the page is made `PROT_NONE` and the thread woken;
//! mprotect: the signal handler aborts). Never a silent wrong answer.
//!
//! Nor a silent wait: when the service thread exits, however (stopped,
//! a failed `poll`/`read`, a panic that escapes it), a drop guard marks the
//! arena's service stopped: uffd makes the whole user view `PROT_NONE` and
//! wakes every waiting thread, the mprotect backend finishes every queued
//! request as fatal, and later faults crash with a one-line message.
//!
//! The fatal path takes no lock a faulting thread may hold: messages go out
//! through [`write_stderr`] (formatted on the stack, one `write(2)`), never
//! `eprintln!` or `tracing` (the thread may have faulted inside
//! `eprintln!("{}", v[0])`, holding the stderr lock).
//!
//! A service belongs to the process that started it: in a `fork` child,
//! dropping it does nothing (its stop signal would reach the parent's
//! thread through the shared eventfd or pipe), and [`FaultService::start`]
//! fails for an arena of the parent.

use std::sync::Arc;
use std::thread::JoinHandle;

use rustix::event::{EventfdFlags, PollFd, PollFlags};

use crate::arena::{Arena, Guard};
use crate::error::{MigrateError, Result};
use crate::sys::signals::{write_stderr, PendingFault, ServiceEvent, FATAL, RESOLVED};
use crate::sys::uffd::{PageFault, PF_WP, PF_WRITE};

/// One CPU fault on the arena's user view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFault {
    /// Page-aligned byte offset from the arena base.
    pub offset: usize,
    /// `Some(true)` for a write, `Some(false)` for a read, `None` when the
    /// backend cannot tell.
    pub write: Option<bool>,
}

/// A fault that cannot be served; the faulting access will crash with this
/// message.
#[derive(Debug, Clone)]
pub struct FaultFatal(pub String);

/// Whether [`FaultHandler::try_fault`] served a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Served: the faulting thread was (or will be) woken.
    Done,
    /// Not now: other work holds the page. The service parks the fault and
    /// asks again after the next [`Kick`].
    Again,
}

/// Wakes the fault service to try its parked faults again. Cheap, callable
/// from any thread; it owns a descriptor of its own, nothing of the service.
#[derive(Clone)]
pub struct Kick(Arc<dyn Fn() + Send + Sync>);

impl Kick {
    /// Ask the service to try its parked faults again.
    pub fn kick(&self) {
        (self.0)();
    }
}

impl core::fmt::Debug for Kick {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Kick").finish_non_exhaustive()
    }
}

/// What the runtime does on a CPU fault (its policy).
pub trait FaultHandler: Send + Sync + 'static {
    /// The arena whose faults this handler serves.
    fn arena(&self) -> &Arena;
    /// Serve `fault`: make the host copy current and call
    /// [`Arena::restore`] on a range containing the faulting page, waiting
    /// for whatever holds the page.
    fn handle_fault(&self, fault: CpuFault) -> core::result::Result<(), FaultFatal>;
    /// Serve `fault` if nothing else holds its page, else answer
    /// [`Served::Again`] — and then call the [`Kick`] given to
    /// [`Self::set_kick`] once it may be servable (a kick too many costs a
    /// retry; one too few leaves the thread waiting). The service calls
    /// this one; by default it is [`Self::handle_fault`].
    fn try_fault(&self, fault: CpuFault) -> core::result::Result<Served, FaultFatal> {
        self.handle_fault(fault).map(|()| Served::Done)
    }
    /// The service's [`Kick`], given once when it starts (before any
    /// fault). By default ignored (a handler that never answers `Again`).
    fn set_kick(&self, _kick: Kick) {}
}

/// The running fault service of one arena; stops its thread on drop.
pub struct FaultService {
    stop: Stop,
    thread: Option<JoinHandle<()>>,
    /// Process that started the service.
    pid: rustix::process::Pid,
}

enum Stop {
    Eventfd(std::os::fd::OwnedFd),
    Pipe(Arc<dyn Fn() + Send + Sync>),
}

impl core::fmt::Debug for FaultService {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FaultService").finish_non_exhaustive()
    }
}

impl FaultService {
    /// Start serving the faults of `handler.arena()`.
    ///
    /// # Errors
    /// [`MigrateError::NotInherited`] in a `fork` child of the arena's
    /// process; `Os` when the thread or its descriptors cannot be made.
    pub fn start<H: FaultHandler>(handler: Arc<H>) -> Result<Self> {
        let arena = handler.arena();
        arena.check_owner()?;
        let pid = rustix::process::getpid();
        match &arena.guard {
            Guard::Uffd(_) => {
                // Stop (from `drop`) and kick (from the handler): each an
                // eventfd the service thread polls, and a second descriptor
                // of it for the writer.
                let (ev, ev2) = eventfd_pair()?;
                let (kick, kick2) = eventfd_pair()?;
                handler.set_kick(Kick(Arc::new(move || {
                    let _ = rustix::io::write(&kick2, &1u64.to_ne_bytes());
                })));
                let h2 = handler.clone();
                arena.service_started();
                let thread = std::thread::Builder::new()
                    .name("svm-fault-uffd".into())
                    .spawn(move || {
                        let mut exit = OnExit { arena: h2.arena(), why: Exit::Panicked };
                        exit.why = uffd_loop(&*h2, &ev2, &kick);
                    })
                    .map_err(|_| {
                        arena.service_stopped();
                        MigrateError::Os { op: "spawn fault thread", source: rustix::io::Errno::AGAIN }
                    })?;
                Ok(Self { stop: Stop::Eventfd(ev), thread: Some(thread), pid })
            }
            Guard::Mprotect => {
                // Without a kick, a parked fault would never be tried again.
                let kicker = arena.segv().and_then(|r| r.kicker()).ok_or(MigrateError::Os {
                    op: "dup(fault pipe) for the service's kick",
                    source: rustix::io::Errno::MFILE,
                })?;
                handler.set_kick(Kick(Arc::new(kicker)));
                let h2 = handler.clone();
                arena.service_started();
                let thread = std::thread::Builder::new()
                    .name("svm-fault-segv".into())
                    .spawn(move || {
                        let mut exit = OnExit { arena: h2.arena(), why: Exit::Panicked };
                        segv_loop(&*h2);
                        exit.why = Exit::Requested;
                    })
                    .map_err(|_| {
                        arena.service_stopped();
                        MigrateError::Os { op: "spawn fault thread", source: rustix::io::Errno::AGAIN }
                    })?;
                let stopper: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                    if let Some(r) = handler.arena().segv() {
                        r.wake_service();
                    }
                });
                Ok(Self { stop: Stop::Pipe(stopper), thread: Some(thread), pid })
            }
        }
    }
}

impl Drop for FaultService {
    fn drop(&mut self) {
        if rustix::process::getpid() != self.pid {
            // A fork child: the thread is the parent's (it does not exist
            // here, joining it would wait forever), and the stop signal
            // would go to it through the shared eventfd or pipe.
            core::mem::forget(self.thread.take());
            return;
        }
        match &self.stop {
            Stop::Eventfd(ev) => {
                let _ = rustix::io::write(ev, &1u64.to_ne_bytes());
            }
            Stop::Pipe(f) => f(),
        }
        if let Some(t) = self.thread.take() {
            if t.thread().id() == std::thread::current().id() {
                // Dropped by its own thread (a handler's last reference to
                // what owns the service went while serving): it ends after
                // this fault, stopped above; joining itself would fail.
                drop(t);
            } else {
                let _ = t.join();
            }
        }
    }
}

/// A non-blocking eventfd and a duplicate of it.
fn eventfd_pair() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(MigrateError::os("eventfd"))?;
    let dup = fd.try_clone().map_err(|e| MigrateError::Os {
        op: "dup(eventfd)",
        source: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
    })?;
    Ok((fd, dup))
}

/// Why a service thread exits.
#[derive(Clone, Copy, Debug)]
enum Exit {
    /// [`FaultService`] was dropped.
    Requested,
    /// A system call failed.
    Failed(&'static str, rustix::io::Errno),
    /// A panic is unwinding the thread (the guard's initial value).
    Panicked,
}

/// Runs on every exit of a service thread, unwinding included: says why
/// unless it was asked to stop, and marks the arena's service stopped, so
/// that no faulting thread waits for it forever.
struct OnExit<'a> {
    arena: &'a Arena,
    why: Exit,
}

impl Drop for OnExit<'_> {
    fn drop(&mut self) {
        let base = self.arena.base();
        match self.why {
            Exit::Requested => {}
            Exit::Failed(op, e) => write_stderr(format_args!(
                "svm: the fault service of the arena at {base:#x} stopped: {op} failed (errno {}); CPU accesses to \
                 its managed memory will crash\n",
                e.raw_os_error()
            )),
            Exit::Panicked => write_stderr(format_args!(
                "svm: the fault service of the arena at {base:#x} panicked; CPU accesses to its managed memory will \
                 crash\n"
            )),
        }
        self.arena.service_stopped();
    }
}

fn uffd_loop<H: FaultHandler>(handler: &H, stop: &std::os::fd::OwnedFd, kick: &std::os::fd::OwnedFd) -> Exit {
    let arena = handler.arena();
    let Guard::Uffd(uffd) = &arena.guard else { unreachable!("uffd loop on a non-uffd arena") };
    let mut faults: Vec<PageFault> = Vec::with_capacity(64);
    let mut parked: Vec<CpuFault> = Vec::new();
    loop {
        let ufd = uffd.as_fd();
        let mut fds =
            [PollFd::new(&ufd, PollFlags::IN), PollFd::new(stop, PollFlags::IN), PollFd::new(kick, PollFlags::IN)];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Exit::Failed("poll", e),
        }
        if !fds[1].revents().is_empty() {
            return Exit::Requested;
        }
        if !fds[2].revents().is_empty() {
            retry_kicked(handler, uffd, kick, &mut parked);
        }
        // Serve this batch, then keep polling without sleeping for a short
        // window: a thread streaming through device-owned memory faults
        // again within microseconds, and a sleep/wake-up pair costs ~30 µs
        // across cores here (ANCHORS.md §4). Yielding lets a faulting
        // thread on this same core run.
        let mut idle_since = std::time::Instant::now();
        loop {
            faults.clear();
            if let Err(e) = uffd.read_faults(&mut faults) {
                return Exit::Failed("read(userfaultfd)", e);
            }
            if faults.is_empty() {
                if idle_since.elapsed() > POLL_WINDOW {
                    break;
                }
                std::thread::yield_now();
                continue;
            }
            serve_uffd_batch(handler, uffd, &mut faults, &mut parked);
            // A kick while faults keep coming (this loop may not return to
            // `poll` for long): parked faults must not wait behind them.
            if !parked.is_empty() {
                retry_kicked(handler, uffd, kick, &mut parked);
            }
            idle_since = std::time::Instant::now();
        }
    }
}
/// If the kick eventfd was written since it was last read, reset it and
/// try the parked faults again.
fn retry_kicked<H: FaultHandler>(
    handler: &H,
    uffd: &crate::sys::uffd::Uffd,
    kick: &std::os::fd::OwnedFd,
    parked: &mut Vec<CpuFault>,
) {
    // Non-blocking: EAGAIN when nobody kicked.
    let mut b = [0u8; 8];
    if rustix::io::read(kick, &mut b).is_ok_and(|n| n == 8) {
        for fault in std::mem::take(parked) {
            serve_uffd_fault(handler, uffd, fault, parked);
        }
    }
}

/// How long the uffd service keeps polling after a batch before it sleeps.
const POLL_WINDOW: std::time::Duration = std::time::Duration::from_micros(50);

fn serve_uffd_batch<H: FaultHandler>(
    handler: &H,
    uffd: &crate::sys::uffd::Uffd,
    faults: &mut Vec<PageFault>,
    parked: &mut Vec<CpuFault>,
) {
    let arena = handler.arena();
    let page = crate::arena::svm_page_size() as u64;
    // One fault per page, a write if any thread wrote it.
    for f in faults.iter_mut() {
        f.address &= !(page - 1);
    }
    faults.sort_by_key(|f| f.address);
    faults.dedup_by(|later, first| {
        if later.address == first.address {
            first.flags |= later.flags;
            true
        } else {
            false
        }
    });
    let _span = tracing::trace_span!("svm_cpu_fault_batch", faults = faults.len()).entered();
    for f in faults.iter() {
        let addr = f.address as usize;
        let fault = CpuFault { offset: addr - arena.base(), write: Some(f.flags & (PF_WRITE | PF_WP) != 0) };
        serve_uffd_fault(handler, uffd, fault, parked);
    }
}

/// Serve one uffd fault: done, parked (once per page: a write if any
/// thread's was), or made to crash.
fn serve_uffd_fault<H: FaultHandler>(
    handler: &H,
    uffd: &crate::sys::uffd::Uffd,
    fault: CpuFault,
    parked: &mut Vec<CpuFault>,
) {
    let arena = handler.arena();
    let addr = arena.base() + fault.offset;
    match serve_one(handler, fault) {
        Ok(Served::Done) => {}
        Ok(Served::Again) => match parked.iter_mut().find(|p| p.offset == fault.offset) {
            Some(p) => p.write = p.write.max(fault.write),
            None => parked.push(fault),
        },
        Err(FaultFatal(msg)) => {
            write_stderr(format_args!("svm: fatal CPU fault at {addr:#x}: {msg}\n"));
            // Make the access crash instead of reading stale data.
            let p = crate::arena::svm_page_size();
            let _ = arena.zap_fatal(fault.offset, p);
            let _ = uffd.wake(addr, p);
        }
    }
}

fn segv_loop<H: FaultHandler>(handler: &H) {
    let arena = handler.arena();
    let Some(reg) = arena.segv().filter(|_| matches!(arena.guard, Guard::Mprotect)) else {
        unreachable!("segv loop on a non-mprotect arena")
    };
    // Requests answered `Again`: their threads stay blocked in the signal
    // handler until served (dropped on exit: finished as fatal).
    let mut parked: Vec<PendingFault> = Vec::new();
    while let Some(event) = reg.next_event() {
        match event {
            ServiceEvent::Fault(req) => serve_segv_fault(handler, req, &mut parked),
            ServiceEvent::Kick => {
                for req in std::mem::take(&mut parked) {
                    serve_segv_fault(handler, req, &mut parked);
                }
            }
        }
    }
}

/// Serve one mprotect fault: finished, parked, or finished as fatal.
fn serve_segv_fault<H: FaultHandler>(handler: &H, req: PendingFault, parked: &mut Vec<PendingFault>) {
    let arena = handler.arena();
    let (addr, write) = (req.addr(), req.write());
    let page = crate::arena::svm_page_size();
    let offset = (addr - arena.base()) & !(page - 1);
    match serve_one(handler, CpuFault { offset, write: write.then_some(true) }) {
        Ok(Served::Done) => req.finish(RESOLVED),
        Ok(Served::Again) => parked.push(req),
        Err(FaultFatal(msg)) => {
            write_stderr(format_args!("svm: fatal CPU fault at {addr:#x}: {msg}\n"));
            req.finish(FATAL);
        }
    }
}

impl Arena {
    /// Make a page PROT_NONE in the user view, whatever the backend, so that
    /// the next access crashes (used for faults that cannot be served).
    pub(crate) fn zap_fatal(&self, offset: usize, len: usize) -> Result<()> {
        self.protect_none(offset, len)
    }

    /// A service thread serves this arena from now on.
    fn service_started(&self) {
        if let Some(r) = self.segv() {
            r.service_started();
        }
    }

    /// The arena's service thread has exited: no fault will be served any
    /// more, so none may wait. uffd: the whole user view becomes `PROT_NONE`
    /// and every waiting thread is woken (it retries and crashes, as a new
    /// access does); mprotect: queued requests are finished as fatal, and
    /// the handler aborts on new ones.
    fn service_stopped(&self) {
        if let Some(r) = self.segv() {
            r.service_stopped();
        }
        if let Guard::Uffd(u) = &self.guard {
            let _ = self.protect_none(0, self.len());
            let _ = u.wake(self.base(), self.len());
        }
    }
}

/// Call the handler, turning a panic into a fatal fault: the service thread
/// must survive, or every later faulting thread would wait forever.
fn serve_one<H: FaultHandler>(handler: &H, fault: CpuFault) -> core::result::Result<Served, FaultFatal> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.try_fault(fault))).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(FaultFatal(format!("the fault handler panicked: {what}")))
    })
}
