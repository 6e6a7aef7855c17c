//! The mprotect + SIGSEGV fault backend's process-wide part.
//!
//! Pages the device owns are `PROT_NONE` in the user view. A CPU touch raises
//! SIGSEGV; the handler here (async-signal-safe: no allocation, no locks, only
//! atomics, `write(2)` and `futex(2)`):
//!
//! 1. looks the address up in a fixed table of registered arenas; if it is not
//!    ours, hands the signal to the previous handler (wasmtime's
//!    `delegate_signal_to_previous_handler`), or restores the default action
//!    so that the re-executed access crashes as it would have;
//! 2. otherwise writes a pointer to a request on its own stack into the
//!    arena's pipe and waits on a futex in that request;
//! 3. the arena's service thread migrates the data back, `mprotect`s the
//!    chunk readable/writable, sets the request's state and wakes the thread,
//!    which returns from the handler and re-executes the access.
//!
//! The migration itself never runs in signal context: it needs the GPU
//! driver, locks and memory allocation.
//!
//! # Safety
//! Installing a SIGSEGV handler is process-wide. The handler is installed on
//! the first registration and the previous one restored when the last arena
//! unregisters, unless someone replaced ours in between (then it is left
//! alone). A request pointer is only dereferenced by the service thread while
//! the faulting thread is blocked in the handler waiting for it.
#![allow(unsafe_code, reason = "this module wraps system calls; see its # Safety section")]

use core::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::os::fd::{AsRawFd, OwnedFd};

use parking_lot::Mutex;
use rustix::thread::futex;

/// Maximum number of arenas using this backend at once.
pub const MAX_ARENAS: usize = 16;

/// Request state: waiting for the service thread.
pub const PENDING: u32 = 0;
/// Request state: resolved, re-execute the access.
pub const RESOLVED: u32 = 1;
/// Request state: cannot be resolved; the handler prints and aborts.
pub const FATAL: u32 = 2;

/// A fault handed from the signal handler to a service thread. Lives on the
/// faulting thread's stack.
#[repr(C)]
pub struct Request {
    /// Faulting address.
    pub addr: AtomicUsize,
    /// Whether the access was a write (x86-64 page-fault error code), else
    /// unknown/read.
    pub write: core::sync::atomic::AtomicBool,
    /// [`PENDING`], [`RESOLVED`] or [`FATAL`].
    pub state: AtomicU32,
}

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    fd: AtomicI32,
    /// Process that registered the slot: a forked child inherits the table
    /// but not the service threads, so its faults are not ours to serve.
    pid: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const, reason = "array initialiser only")]
const EMPTY_SLOT: Slot =
    Slot { start: AtomicUsize::new(0), len: AtomicUsize::new(0), fd: AtomicI32::new(-1), pid: AtomicI32::new(0) };
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

/// Registration of one arena's user view with the SIGSEGV handler.
#[derive(Debug)]
pub struct SegvRegistration {
    slot: usize,
    /// Read end: the service thread reads `*const Request` values from it.
    read: OwnedFd,
    write: OwnedFd,
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
    /// Route SIGSEGVs inside `[start, start + len)` to this registration's
    /// pipe, installing the process handler if it is the first.
    pub fn new(start: usize, len: usize) -> Result<Self, RegisterError> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(RegisterError::Os)?;
        let mut inst = INSTALLED.lock();
        let slot = SLOTS.iter().position(|s| s.len.load(Ordering::Acquire) == 0).ok_or(RegisterError::TooManyArenas)?;
        if inst.count == 0 {
            inst.previous = Some(install().map_err(RegisterError::Os)?);
        }
        inst.count += 1;
        let s = &SLOTS[slot];
        s.fd.store(write.as_raw_fd(), Ordering::Relaxed);
        s.pid.store(rustix::process::getpid().as_raw_nonzero().get(), Ordering::Relaxed);
        s.start.store(start, Ordering::Relaxed);
        // Publishing `len` last makes the slot visible to the handler.
        s.len.store(len, Ordering::Release);
        Ok(Self { slot, read, write })
    }

    /// Block until the next request; `None` after [`Self::wake_service`].
    pub fn next_request(&self) -> Option<PendingFault> {
        let mut buf = [0u8; core::mem::size_of::<usize>()];
        let mut got = 0;
        while got < buf.len() {
            match rustix::io::read(&self.read, &mut buf[got..]) {
                Ok(0) => return None,
                Ok(n) => got += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return None,
            }
        }
        let p = usize::from_ne_bytes(buf);
        (p != 0).then(|| PendingFault { req: p as *const Request })
    }

    /// Make the service thread's [`Self::next_request`] return `None`.
    pub fn wake_service(&self) {
        let _ = rustix::io::write(&self.write, &0usize.to_ne_bytes());
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
        let mut inst = INSTALLED.lock();
        let s = &SLOTS[self.slot];
        s.len.store(0, Ordering::Release);
        s.start.store(0, Ordering::Relaxed);
        s.fd.store(-1, Ordering::Relaxed);
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
    // we fill in; sigaction(2) with valid pointers is safe to call, and the
    // handler we install is async-signal-safe (module doc).
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
        PREV_HANDLER.store(prev.sa_sigaction, Ordering::Release);
        PREV_FLAGS.store(prev.sa_flags, Ordering::Release);
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

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for
    // SIGSEGV `si_addr` is the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &SLOTS {
        let len = s.len.load(Ordering::Acquire);
        let start = s.start.load(Ordering::Relaxed);
        if len == 0 || addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: getpid(2) is async-signal-safe and has no preconditions.
        if s.pid.load(Ordering::Relaxed) != unsafe { libc::getpid() } {
            // A forked child: the arena is not mapped here and nobody serves
            // it. Crash as an ordinary wild access would.
            break;
        }
        let fd = s.fd.load(Ordering::Relaxed);
        // Atomics with release/acquire: the pipe orders the hand-over for the
        // kernel, and these make it visible to the Rust memory model (and to
        // ThreadSanitizer) too.
        let req = Request {
            addr: AtomicUsize::new(0),
            write: core::sync::atomic::AtomicBool::new(false),
            state: AtomicU32::new(PENDING),
        };
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
            fatal(b"svm: SIGSEGV in managed memory but its fault service is gone\n");
        }
        loop {
            match req.state.load(Ordering::Acquire) {
                PENDING => {
                    let _ = futex::wait(&req.state, futex::Flags::PRIVATE, PENDING, None);
                }
                RESOLVED => return,
                _ => fatal(b"svm: a CPU access to managed memory could not be served (see the message above)\n"),
            }
        }
    }
    delegate(sig, info, ctx);
}

fn delegate(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let prev = PREV_HANDLER.load(Ordering::Acquire);
    let flags = PREV_FLAGS.load(Ordering::Acquire);
    if prev == libc::SIG_DFL || prev == libc::SIG_IGN {
        // Not ours and nobody else's: restore the default action; returning
        // re-executes the access, which then kills the process as usual.
        // SAFETY: installing SIG_DFL with an empty mask is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = core::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &sa, core::ptr::null_mut());
        }
        return;
    }
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
}

fn fatal(msg: &[u8]) -> ! {
    // SAFETY: write(2) to stderr and abort(3) are async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::abort()
    }
}
