//! The process-wide SIGSEGV handler: the mprotect + SIGSEGV fault backend,
//! and the crash messages of both backends.
//!
//! Pages the device owns are `PROT_NONE` in an mprotect arena's user view. A
//! CPU touch raises SIGSEGV; the handler here (async-signal-safe: no
//! allocation, no locks, only atomics, `write(2)`, `futex(2)`, `getpid(2)`,
//! `sigaction(2)`, `sigprocmask(2)`; `errno` saved and restored):
//!
//! 1. takes only page faults (`si_code` `SEGV_MAPERR` / `SEGV_ACCERR`); a
//!    SIGSEGV some process sent (`kill`, `sigqueue`, `raise`: `si_code` ≤ 0)
//!    is no fault, whatever its `si_addr` field holds;
//! 2. looks the address up in a fixed table of registered arenas; if it is not
//!    ours, hands the signal to the previous handler as the kernel would have
//!    (wasmtime's `delegate_signal_to_previous_handler`): SA_SIGINFO or not,
//!    its mask and SA_RESETHAND; ignored or default: the default action,
//!    re-raised for a sent signal (returning re-executes a faulting access,
//!    but nothing re-executes a `kill`);
//! 3. otherwise writes a pointer to a request on its own stack into the
//!    arena's pipe and waits on a futex in that request;
//! 4. the arena's service thread migrates the data back, `mprotect`s the
//!    chunk readable/writable, sets the request's state and wakes the thread,
//!    which returns from the handler and re-executes the access. If the
//!    service cannot serve it, or is not running, the handler prints one line
//!    and aborts: never a silent wait.
//!
//! The migration itself never runs in signal context: it needs the GPU
//! driver, locks and memory allocation.
//!
//! Arenas of the userfaultfd backend are registered too, without a pipe
//! ([`SegvRegistration::new`] with `served == false`): their faults never
//! raise signals, but a crash in them gets a message: after their service
//! stopped, and in a forked child. Both views are `MADV_DONTFORK`, so in a
//! child of the registering process nothing of an arena is inherited; a
//! `pthread_atfork` child handler ([`reserve_in_child`]) maps an
//! inaccessible reservation over both views right after the fork, so that
//! the child's own later mappings cannot land there (an inherited owner
//! would then reach them: found by review). A touch there faults; the
//! handler says that managed memory is not inherited across `fork` and lets
//! the default action kill the child.
//!
//! [`write_stderr`] is how the fault path prints: formatted on the stack,
//! one `write(2)` to fd 2, no `std::io::stderr` lock (the faulting thread may
//! hold it: `eprintln!("{}", v[0])` on device-owned `v`).
//!
//! # Safety
//! Installing a SIGSEGV handler is process-wide. The handler is installed on
//! the first registration and the previous one restored when the last arena
//! unregisters, unless someone replaced ours in between (then it is left
//! alone). A request pointer is only dereferenced by the service thread while
//! the faulting thread is blocked in the handler waiting for it.
#![allow(unsafe_code, reason = "this module wraps system calls; see its # Safety section")]

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::os::fd::{AsRawFd, OwnedFd};

use parking_lot::Mutex;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::thread::futex;

/// Maximum number of arenas registered at once (both backends).
pub const MAX_ARENAS: usize = 64;

/// Request state: waiting for the service thread.
pub const PENDING: u32 = 0;
/// Request state: resolved, re-execute the access.
pub const RESOLVED: u32 = 1;
/// Request state: cannot be resolved; the handler prints and aborts.
pub const FATAL: u32 = 2;

/// Service state of a slot: no service started yet.
const SERVICE_NONE: u32 = 0;
/// Service state: a service thread serves the slot's faults.
const SERVICE_RUNNING: u32 = 1;
/// Service state: the service thread has exited.
const SERVICE_STOPPED: u32 = 2;

/// `si_code` of a fault on an address with no mapping
/// (`include/uapi/asm-generic/siginfo.h`).
const SEGV_MAPERR: libc::c_int = 1;
/// `si_code` of a fault against a mapping's protection.
const SEGV_ACCERR: libc::c_int = 2;

/// A fault handed from the signal handler to a service thread. Lives on the
/// faulting thread's stack.
#[repr(C)]
pub struct Request {
    /// Faulting address.
    pub addr: AtomicUsize,
    /// Whether the access was a write (x86-64 page-fault error code), else
    /// unknown/read.
    pub write: AtomicBool,
    /// [`PENDING`], [`RESOLVED`] or [`FATAL`].
    pub state: AtomicU32,
}

struct Slot {
    /// User view.
    start: AtomicUsize,
    /// Length of each view; 0: the slot is free.
    len: AtomicUsize,
    /// Alias view (recognised in forked children only).
    alias: AtomicUsize,
    /// Write end of the service pipe; -1 for arenas whose faults do not
    /// come through signals (uffd).
    fd: AtomicI32,
    /// Process that registered the slot: a forked child inherits the table
    /// but not the mappings or the service threads.
    pid: AtomicI32,
    /// `SERVICE_*`.
    service: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const, reason = "array initialiser only")]
const EMPTY_SLOT: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    alias: AtomicUsize::new(0),
    fd: AtomicI32::new(-1),
    pid: AtomicI32::new(0),
    service: AtomicU32::new(SERVICE_NONE),
};
static SLOTS: [Slot; MAX_ARENAS] = [EMPTY_SLOT; MAX_ARENAS];

struct Installed {
    count: usize,
    previous: Option<libc::sigaction>,
}
// SAFETY: `libc::sigaction` is plain data (a handler address, flags, a mask).
unsafe impl Send for Installed {}
static INSTALLED: Mutex<Installed> = Mutex::new(Installed { count: 0, previous: None });
/// Copy of the previous action, readable from the handler without a lock.
static PREV_HANDLER: AtomicUsize = AtomicUsize::new(0);
static PREV_FLAGS: AtomicI32 = AtomicI32::new(0);
/// The previous action's mask: bit `n - 1` for signal `n` (1..=64).
static PREV_MASK: AtomicU64 = AtomicU64::new(0);

/// [`reserve_in_child`] is registered once per process.
static ATFORK: std::sync::Once = std::sync::Once::new();

/// Run in a `fork` child (a `pthread_atfork` child handler): over both
/// views of every arena the parent registered, which `MADV_DONTFORK` left
/// unmapped here, an inaccessible reservation (no memory committed), so
/// that nothing the child maps later lands where an inherited owner points.
/// Only atomics and `mmap(2)`: a child of a multithreaded parent may call
/// async-signal-safe functions only.
extern "C" fn reserve_in_child() {
    let me = current_pid();
    for s in &SLOTS {
        let len = s.len.load(Ordering::Acquire);
        if len == 0 || s.pid.load(Ordering::Relaxed) == me {
            continue;
        }
        for base in [s.start.load(Ordering::Relaxed), s.alias.load(Ordering::Relaxed)] {
            // SAFETY: `[base, base + len)` was the parent's view, never
            // inherited (`MADV_DONTFORK`): nothing of this process lies
            // there yet (and FIXED_NOREPLACE replaces nothing if it does).
            let r = unsafe {
                rustix::mm::mmap_anonymous(
                    base as *mut libc::c_void,
                    len,
                    rustix::mm::ProtFlags::empty(),
                    rustix::mm::MapFlags::PRIVATE
                        | rustix::mm::MapFlags::FIXED_NOREPLACE
                        | rustix::mm::MapFlags::NORESERVE,
                )
            };
            match r {
                Ok(at) if at as usize == base => {}
                // A fork of a fork child: the reservation was inherited.
                Err(rustix::io::Errno::EXIST) => {}
                Ok(at) => {
                    // A kernel without FIXED_NOREPLACE (before 4.17) took it
                    // as a hint and put the mapping elsewhere.
                    // SAFETY: the mapping just made, which nothing uses.
                    let _ = unsafe { rustix::mm::munmap(at, len) };
                    write_stderr(format_args!("svm: no reservation over {base:#x} in a fork child\n"));
                }
                Err(_) => write_stderr(format_args!("svm: no reservation over {base:#x} in a fork child\n")),
            }
        }
    }
}

fn current_pid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// Registration of one arena's views with the SIGSEGV handler.
#[derive(Debug)]
pub struct SegvRegistration {
    slot: usize,
    /// The service pipe (mprotect backend).
    pipe: Option<Pipe>,
    /// Process that registered (see [`Self::is_owner`]).
    pid: i32,
    /// A kick token is in the pipe ([`Self::kicker`]).
    kick_pending: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug)]
struct Pipe {
    /// The service thread reads `*const Request` values from it.
    read: OwnedFd,
    write: OwnedFd,
}

/// The pipe token of [`SegvRegistration::kicker`] (requests are
/// pointers to stack `Request`s: never 1; the stop token is 0).
const KICK: usize = 1;

/// What the service thread reads from a registration's pipe.
#[derive(Debug)]
pub enum ServiceEvent {
    /// A faulting thread's request.
    Fault(PendingFault),
    /// Parked faults may be servable now ([`SegvRegistration::kicker`]).
    Kick,
}

/// Error of [`SegvRegistration::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// All [`MAX_ARENAS`] slots are taken.
    TooManyArenas,
    /// A system call failed.
    Os(rustix::io::Errno),
}

impl SegvRegistration {
    /// Register an arena's user view `[start, start + len)` and alias view
    /// `[alias, alias + len)`, installing the process handler if it is the
    /// first. With `served`, SIGSEGVs in the user view go to this
    /// registration's pipe (mprotect backend); without, they are only
    /// recognised for their messages (uffd backend).
    pub fn new(start: usize, len: usize, alias: usize, served: bool) -> Result<Self, RegisterError> {
        let pipe = if served {
            let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(RegisterError::Os)?;
            Some(Pipe { read, write })
        } else {
            None
        };
        let pid = current_pid();
        let mut inst = INSTALLED.lock();
        // A free slot, else one a parent process registered before it forked
        // us (its arena does not exist here).
        let slot = SLOTS
            .iter()
            .position(|s| s.len.load(Ordering::Acquire) == 0)
            .or_else(|| SLOTS.iter().position(|s| s.pid.load(Ordering::Relaxed) != pid))
            .ok_or(RegisterError::TooManyArenas)?;
        if inst.count == 0 {
            inst.previous = Some(install().map_err(RegisterError::Os)?);
        }
        ATFORK.call_once(|| {
            // SAFETY: `reserve_in_child` is an `extern "C" fn()` that stays
            // valid for the process's life; it runs in a child right after
            // `fork`, where it only reads atomics and makes `mmap` calls.
            let r = unsafe { libc::pthread_atfork(None, None, Some(reserve_in_child)) };
            if r != 0 {
                write_stderr(format_args!("svm: pthread_atfork failed ({r}): fork children get no reservation\n"));
            }
        });
        inst.count += 1;
        let s = &SLOTS[slot];
        s.len.store(0, Ordering::Release);
        s.fd.store(pipe.as_ref().map_or(-1, |p| p.write.as_raw_fd()), Ordering::Relaxed);
        s.pid.store(pid, Ordering::Relaxed);
        s.service.store(SERVICE_NONE, Ordering::SeqCst);
        s.start.store(start, Ordering::Relaxed);
        s.alias.store(alias, Ordering::Relaxed);
        // Publishing `len` last makes the slot visible to the handler.
        s.len.store(len, Ordering::Release);
        Ok(Self { slot, pipe, pid, kick_pending: Default::default() })
    }

    /// Whether this process made the registration (not a forked child).
    pub fn is_owner(&self) -> bool {
        current_pid() == self.pid
    }

    /// Block until the next request; `None` after [`Self::wake_service`],
    /// and at once for a registration without a pipe. Kicks
    /// ([`Self::kicker`]) are skipped: [`Self::next_event`] reports them.
    pub fn next_request(&self) -> Option<PendingFault> {
        loop {
            match self.next_event()? {
                ServiceEvent::Fault(f) => return Some(f),
                ServiceEvent::Kick => {}
            }
        }
    }

    /// Block until the next request or kick; `None` after
    /// [`Self::wake_service`], and at once for a registration without a
    /// pipe.
    pub fn next_event(&self) -> Option<ServiceEvent> {
        self.read_request()?
    }

    /// A function that makes the service thread's [`Self::next_event`]
    /// return [`ServiceEvent::Kick`] (faults it parked may be servable
    /// now), callable from any thread, on a descriptor of its own (so that
    /// it owns nothing of the registration). At most one kick token is in
    /// the pipe at a time (the service clears `kick_pending` when it reads
    /// it), so kicks never fill the pipe and the write never blocks for
    /// long: the pipe holds at most that token and one request per blocked
    /// thread. `None` without a pipe.
    pub fn kicker(&self) -> Option<impl Fn() + Send + Sync + 'static> {
        let fd = self.pipe.as_ref()?.write.try_clone().ok()?;
        let pending = self.kick_pending.clone();
        Some(move || {
            if !pending.swap(true, Ordering::AcqRel) {
                let _ = rustix::io::write(&fd, &KICK.to_ne_bytes());
            }
        })
    }

    /// Read one entry from the pipe: `None` when it cannot be read,
    /// `Some(None)` for the stop token of [`Self::wake_service`].
    fn read_request(&self) -> Option<Option<ServiceEvent>> {
        let pipe = self.pipe.as_ref()?;
        let mut buf = [0u8; core::mem::size_of::<usize>()];
        let mut got = 0;
        while got < buf.len() {
            match rustix::io::read(&pipe.read, &mut buf[got..]) {
                Ok(0) => return None,
                Ok(n) => got += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return None,
            }
        }
        let p = usize::from_ne_bytes(buf);
        Some(match p {
            0 => None,
            KICK => {
                // Kicks after this one write a token again (the service
                // looks at its parked faults after reading this one).
                self.kick_pending.store(false, Ordering::Release);
                Some(ServiceEvent::Kick)
            }
            _ => Some(ServiceEvent::Fault(PendingFault { req: p as *const Request })),
        })
    }

    /// Make the service thread's [`Self::next_request`] return `None`.
    pub fn wake_service(&self) {
        if let Some(pipe) = &self.pipe {
            let _ = rustix::io::write(&pipe.write, &0usize.to_ne_bytes());
        }
    }

    /// A service thread serves this registration's faults from now on.
    pub fn service_started(&self) {
        SLOTS[self.slot].service.store(SERVICE_RUNNING, Ordering::SeqCst);
    }

    /// The service thread has exited (call it on every exit, unwinding
    /// included): faulting threads now crash with a message instead of
    /// waiting. Requests already in the pipe are finished as [`FATAL`].
    pub fn service_stopped(&self) {
        // Marked first, drained second: a handler that wrote its request
        // after the drain looked at the pipe sees the mark when it checks
        // again after writing (both sequentially consistent).
        SLOTS[self.slot].service.store(SERVICE_STOPPED, Ordering::SeqCst);
        let Some(pipe) = &self.pipe else { return };
        loop {
            let mut fds = [PollFd::new(&pipe.read, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })) {
                Ok(0) => return,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            }
            match self.read_request() {
                // Dropping a pending fault finishes it as FATAL.
                Some(Some(ServiceEvent::Fault(req))) => drop(req),
                Some(Some(ServiceEvent::Kick)) => {}
                Some(None) => {}
                None => return,
            }
        }
    }
}

/// A fault read from the pipe whose thread is blocked in the signal handler
/// until this is finished. Finishing consumes it; dropping it unfinished
/// finishes it as [`FATAL`], so a faulting thread is never left hanging.
#[derive(Debug)]
pub struct PendingFault {
    // Invariant: points to a live `Request` whose thread waits for us, until
    // `finish` runs (once).
    req: *const Request,
}

impl PendingFault {
    fn request(&self) -> &Request {
        // SAFETY: alive per the field invariant (the thread is blocked in the
        // handler until the state changes, which only `finish` does).
        unsafe { &*self.req }
    }
    /// Faulting address.
    pub fn addr(&self) -> usize {
        self.request().addr.load(Ordering::Acquire)
    }
    /// Whether the access was known to be a write.
    pub fn write(&self) -> bool {
        self.request().write.load(Ordering::Acquire)
    }
    /// Store `state` ([`RESOLVED`] or [`FATAL`]) and wake the thread.
    pub fn finish(self, state: u32) {
        let this = core::mem::ManuallyDrop::new(self);
        this.finish_inner(state);
    }
    fn finish_inner(&self, state: u32) {
        let r = self.request();
        r.state.store(state, Ordering::Release);
        // The wake may reach the address after the waiter has returned (it
        // can see the state without sleeping): a wake on a dead address is
        // harmless, the kernel treats it as a key.
        let _ = futex::wake(&r.state, futex::Flags::PRIVATE, 1);
    }
}

impl Drop for PendingFault {
    fn drop(&mut self) {
        self.finish_inner(FATAL);
    }
}

impl Drop for SegvRegistration {
    fn drop(&mut self) {
        if !self.is_owner() {
            // A forked child dropping its copy: the slot describes the
            // parent's arena, which the handler keeps recognising here; the
            // registry lock may have been held by a thread that does not
            // exist in this process. The pipe ends just close.
            return;
        }
        let mut inst = INSTALLED.lock();
        let s = &SLOTS[self.slot];
        s.len.store(0, Ordering::Release);
        s.start.store(0, Ordering::Relaxed);
        s.alias.store(0, Ordering::Relaxed);
        s.fd.store(-1, Ordering::Relaxed);
        s.service.store(SERVICE_NONE, Ordering::SeqCst);
        inst.count -= 1;
        if inst.count == 0 {
            if let Some(prev) = inst.previous.take() {
                restore(&prev);
            }
        }
    }
}

fn install() -> Result<libc::sigaction, rustix::io::Errno> {
    // SAFETY: zeroed sigaction is a valid "no handler, empty mask" value that
    // we fill in; sigaction(2) and sigismember(3) with valid pointers are
    // safe to call, and the handler we install is async-signal-safe (module
    // doc).
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut prev: libc::sigaction = core::mem::zeroed();
        if libc::sigaction(libc::SIGSEGV, &sa, &mut prev) != 0 {
            return Err(rustix::io::Errno::from_raw_os_error(
                std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL),
            ));
        }
        let mut mask = 0u64;
        for sig in 1..=64 {
            if libc::sigismember(&prev.sa_mask, sig) == 1 {
                mask |= 1 << (sig - 1);
            }
        }
        PREV_MASK.store(mask, Ordering::Release);
        PREV_FLAGS.store(prev.sa_flags, Ordering::Release);
        PREV_HANDLER.store(prev.sa_sigaction, Ordering::Release);
        Ok(prev)
    }
}

fn restore(prev: &libc::sigaction) {
    // SAFETY: reading and conditionally restoring the process action with
    // valid pointers. If the current handler is no longer ours, someone
    // installed theirs after us; keep it (wasmtime aborts there; we prefer to
    // leave a working handler in place).
    unsafe {
        let mut cur: libc::sigaction = core::mem::zeroed();
        libc::sigaction(libc::SIGSEGV, core::ptr::null(), &mut cur);
        if cur.sa_sigaction == handler as *const () as usize {
            libc::sigaction(libc::SIGSEGV, prev, core::ptr::null_mut());
        }
    }
}

fn fault_is_write(ctx: *mut libc::c_void) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if ctx.is_null() {
            return false;
        }
        // SAFETY: for an SA_SIGINFO handler the third argument is the
        // interrupted context, a `ucontext_t`; REG_ERR holds the page-fault
        // error code, whose bit 1 is set for writes.
        unsafe {
            let uc = &*(ctx as *const libc::ucontext_t);
            uc.uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ctx;
        false
    }
}

/// The interrupted code's `errno`, put back when the handler returns: the
/// calls below may set it, and the interrupted code may be between a failing
/// call and its `errno` check.
struct SavedErrno(libc::c_int);

impl SavedErrno {
    fn save() -> Self {
        // SAFETY: __errno_location returns this thread's errno, always valid.
        Self(unsafe { *libc::__errno_location() })
    }
}

impl Drop for SavedErrno {
    fn drop(&mut self) {
        // SAFETY: as in `save`.
        unsafe { *libc::__errno_location() = self.0 };
    }
}

/// Whose an address is, per the slot table.
enum Owner {
    /// The user view of an arena this process registered.
    Ours(&'static Slot),
    /// A view of an arena a parent process registered before forking us.
    Inherited,
    /// Neither.
    Foreign,
}

fn owner_of(addr: usize) -> Owner {
    let mut pid = None;
    let mut inherited = false;
    for s in &SLOTS {
        let len = s.len.load(Ordering::Acquire);
        if len == 0 {
            continue;
        }
        let in_user = addr.wrapping_sub(s.start.load(Ordering::Relaxed)) < len;
        let in_alias = addr.wrapping_sub(s.alias.load(Ordering::Relaxed)) < len;
        if !in_user && !in_alias {
            continue;
        }
        let me = *pid.get_or_insert_with(current_pid);
        if s.pid.load(Ordering::Relaxed) != me {
            inherited = true;
        } else if in_user {
            return Owner::Ours(s);
        }
    }
    if inherited {
        Owner::Inherited
    } else {
        Owner::Foreign
    }
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let _errno = SavedErrno::save();
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for
    // a SIGSEGV page fault `si_addr` is the faulting address (for a sent
    // signal the same bytes hold the sender's pid and uid: read, not used).
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // Kernel page faults only; `si_code` <= 0 (SI_USER, SI_QUEUE, SI_TKILL,
    // ...) is a signal someone sent, whatever its `si_addr` field says.
    if code == SEGV_MAPERR || code == SEGV_ACCERR {
        match owner_of(addr) {
            Owner::Ours(slot) => {
                if slot.fd.load(Ordering::Relaxed) >= 0 {
                    serve(slot, addr, ctx);
                    return;
                }
                // A uffd arena: its faults come here only for inaccessible
                // pages (freed, or crashed on purpose after a message).
                if slot.service.load(Ordering::SeqCst) == SERVICE_STOPPED {
                    write_stderr(format_args!(
                        "svm: CPU access to managed memory at {addr:#x} after its fault service stopped\n"
                    ));
                }
            }
            Owner::Inherited => {
                write_stderr(format_args!(
                    "svm: this process (a fork child) touched managed memory at {addr:#x}: managed memory is not \
                     inherited across fork\n"
                ));
            }
            Owner::Foreign => {}
        }
    }
    delegate(sig, info, ctx, code <= 0);
}

/// Hand a fault in an mprotect arena's user view to its service and wait;
/// returns when it is resolved (the access is then re-executed), aborts
/// with a message when it cannot be.
fn serve(slot: &Slot, addr: usize, ctx: *mut libc::c_void) {
    let stopped = || slot.service.load(Ordering::SeqCst) != SERVICE_RUNNING;
    if stopped() {
        service_gone(slot, addr);
    }
    let fd = slot.fd.load(Ordering::Relaxed);
    // Atomics with release/acquire: the pipe orders the hand-over for the
    // kernel, and these make it visible to the Rust memory model (and to
    // ThreadSanitizer) too.
    let req = Request { addr: AtomicUsize::new(0), write: AtomicBool::new(false), state: AtomicU32::new(PENDING) };
    req.addr.store(addr, Ordering::Release);
    req.write.store(fault_is_write(ctx), Ordering::Release);
    let p = (&req as *const Request as usize).to_ne_bytes();
    loop {
        // SAFETY: writing 8 bytes from a live stack buffer to a pipe fd;
        // writes of at most PIPE_BUF bytes are atomic.
        let n = unsafe { libc::write(fd, p.as_ptr().cast(), p.len()) };
        if n == p.len() as isize {
            break;
        }
        // SAFETY: reading errno of this thread.
        if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
            continue;
        }
        fatal(format_args!("svm: SIGSEGV in managed memory at {addr:#x} but its fault service is gone\n"));
    }
    // A service that stopped after the check above and drained the pipe
    // before the write will never read it (`service_stopped`).
    if stopped() {
        service_gone(slot, addr);
    }
    loop {
        match req.state.load(Ordering::Acquire) {
            PENDING => {
                let _ = futex::wait(&req.state, futex::Flags::PRIVATE, PENDING, None);
            }
            RESOLVED => return,
            _ if stopped() => service_gone(slot, addr),
            _ => fatal(format_args!(
                "svm: a CPU access to managed memory at {addr:#x} could not be served (see the message above)\n"
            )),
        }
    }
}

fn service_gone(slot: &Slot, addr: usize) -> ! {
    if slot.service.load(Ordering::SeqCst) == SERVICE_NONE {
        fatal(format_args!("svm: CPU access to managed memory at {addr:#x} before its fault service started\n"))
    }
    fatal(format_args!("svm: CPU access to managed memory at {addr:#x} after its fault service stopped\n"))
}

/// What the kernel would have done with the signal without our handler:
/// the previous handler, or the default action. `sent`: a signal some
/// process sent (`si_code` <= 0), which returning does not bring back, as
/// opposed to a fault, whose access re-executes.
fn delegate(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void, sent: bool) {
    let prev = PREV_HANDLER.load(Ordering::Acquire);
    let flags = PREV_FLAGS.load(Ordering::Acquire);
    if prev == libc::SIG_IGN && sent {
        return;
    }
    if prev == libc::SIG_DFL || prev == libc::SIG_IGN {
        // Restore the default action (a fault cannot be ignored: the kernel
        // kills the process then too). A fault re-executes on return and
        // kills the process as usual; a sent signal is raised again.
        // SAFETY: installing SIG_DFL with an empty mask, and raise(3), are
        // async-signal-safe. SIGSEGV is not blocked in this handler
        // (SA_NODEFER), so the raised signal is delivered at once.
        unsafe {
            let mut sa: libc::sigaction = core::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &sa, core::ptr::null_mut());
            if sent {
                libc::raise(sig);
            }
        }
        return;
    }
    if flags & libc::SA_RESETHAND != 0 {
        // One-shot: the kernel would have reset the action on this delivery.
        PREV_HANDLER.store(libc::SIG_DFL, Ordering::Release);
    }
    // Block what the kernel would have blocked while the previous handler
    // runs: its mask, and the signal itself unless SA_NODEFER.
    let mut block = PREV_MASK.load(Ordering::Acquire);
    if flags & libc::SA_NODEFER == 0 {
        block |= 1 << (sig - 1);
    }
    // SAFETY: sigset_t values built with sigemptyset/sigaddset and
    // pthread_sigmask(3) with valid pointers; all async-signal-safe.
    let old = unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in 1..=64 {
            if block & (1 << (s - 1)) != 0 {
                libc::sigaddset(&mut set, s);
            }
        }
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    };
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it
        // has the three-argument signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { core::mem::transmute(prev) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a handler installed without SA_SIGINFO takes one argument.
        let f: extern "C" fn(libc::c_int) = unsafe { core::mem::transmute(prev) };
        f(sig);
    }
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut()) };
}

fn fatal(msg: core::fmt::Arguments<'_>) -> ! {
    write_stderr(msg);
    // SAFETY: abort(3) is async-signal-safe.
    unsafe { libc::abort() }
}

/// A line formatted on the stack (truncated past its capacity).
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Print a message on stderr without taking any lock or allocating: format
/// it into a stack buffer (512 bytes; longer messages are cut, ending in a
/// newline) and write it to fd 2 with `write(2)`. Safe in a signal handler
/// and on the fault path, where the faulting thread may hold the
/// `std::io::stderr` lock. Errors are ignored (there is nowhere to report
/// them).
pub fn write_stderr(msg: core::fmt::Arguments<'_>) {
    use core::fmt::Write as _;
    let mut line = Line { buf: [0; 512], len: 0 };
    let _ = line.write_fmt(msg);
    if line.len == line.buf.len() && line.buf[line.len - 1] != b'\n' {
        line.buf[line.len - 1] = b'\n';
    }
    let mut rest = &line.buf[..line.len];
    while !rest.is_empty() {
        // SAFETY: write(2) from a live buffer of the given length to fd 2;
        // it touches no Rust state.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        // SAFETY: reading errno of this thread.
        let interrupted = n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR;
        if n > 0 {
            rest = &rest[n as usize..];
        } else if !interrupted {
            return;
        }
    }
}
