//! Issue 13 ("Sound by construction"), the items of `svm-migrate`: the
//! signal handler's manners (item 12), no lock on the fatal path (item 8),
//! a dead fault service (item 7), managed memory across `fork` (items 4 and
//! 5). Each body takes the backend and the name of the calling test, which
//! crash expectations re-run in a process of its own ([`isolated`]).

use core::sync::atomic::{AtomicUsize, Ordering};

use svm_migrate::{Arena, FaultBackendKind, FaultService};

use super::process::{fork_child, isolated, End};
use super::{toy, Fail, Toy};

/// Whether `kind` works here (else the test skips, see [`toy`]).
fn available(kind: FaultBackendKind) -> bool {
    toy(kind, 4096).is_some()
}

/// The signal a fatal CPU fault ends the process with: uffd makes the page
/// inaccessible and wakes the thread (SIGSEGV); the mprotect handler aborts.
fn fatal_signal(kind: FaultBackendKind) -> End {
    End::Signaled(match kind {
        FaultBackendKind::Uffd => libc::SIGSEGV,
        FaultBackendKind::Mprotect => libc::SIGABRT,
    })
}

/// Calls of the test's own SIGSEGV handlers.
static CALLS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_siginfo(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    CALLS.fetch_add(1, Ordering::SeqCst);
}
extern "C" fn count_plain(_: libc::c_int) {
    CALLS.fetch_add(1, Ordering::SeqCst);
}

/// Install a SIGSEGV action (before any arena, so that it is the one the
/// arena's handler finds and chains to).
fn set_sigsegv(action: libc::sighandler_t, flags: libc::c_int) {
    // SAFETY: sigaction(2) with valid pointers; the handlers above only
    // touch an atomic.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = action;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGSEGV, &sa, core::ptr::null_mut()), 0);
    }
}

/// Send this thread a SIGSEGV as `sigqueue(3)` would (`si_code` SI_QUEUE),
/// whose `si_addr` field reads `addr`: a user signal that looks like a fault
/// in managed memory to a handler that does not check `si_code`.
fn queue_sigsegv(addr: usize) {
    // SAFETY: a zeroed siginfo is valid; the 8 bytes at offset 16 are the
    // union holding si_addr (SIGSEGV) and si_pid/si_uid (SI_QUEUE) on 64-bit
    // Linux; rt_tgsigqueueinfo(2) to our own thread may use any negative
    // si_code.
    unsafe {
        let mut info: libc::siginfo_t = core::mem::zeroed();
        info.si_signo = libc::SIGSEGV;
        info.si_code = libc::SI_QUEUE;
        (&mut info as *mut libc::siginfo_t).cast::<u8>().add(16).cast::<usize>().write_unaligned(addr);
        let r = libc::syscall(libc::SYS_rt_tgsigqueueinfo, libc::getpid(), libc::gettid(), libc::SIGSEGV, &info);
        assert_eq!(r, 0, "rt_tgsigqueueinfo: {}", std::io::Error::last_os_error());
    }
}

fn raise_sigsegv() {
    // SAFETY: raise(3) is always safe to call; what the signal does is the
    // point of the test.
    unsafe { libc::raise(libc::SIGSEGV) };
}

/// Item 12: a SIGSEGV sent by a process (`sigqueue`, `raise`) is no page
/// fault, even when its `si_addr` field names managed memory: it goes to the
/// previous SA_SIGINFO handler, and the fault service never sees it.
pub fn user_sigsegv_reaches_previous_handler(kind: FaultBackendKind, test: &str) {
    if !available(kind) {
        return;
    }
    let Some(out) = isolated(test, || {
        set_sigsegv(count_siginfo as *const () as usize, libc::SA_SIGINFO);
        let t = toy(kind, 4096).expect("toy");
        let _svc = FaultService::start(t.clone()).expect("service");
        queue_sigsegv(t.arena.base() + 64);
        assert_eq!(CALLS.load(Ordering::SeqCst), 1, "the previous handler got the queued signal");
        assert_eq!(t.faults.load(Ordering::Relaxed), 0, "a user signal is not served as a fault");
        raise_sigsegv();
        assert_eq!(CALLS.load(Ordering::SeqCst), 2, "the previous handler got the raised signal");
    }) else {
        return;
    };
    out.expect(End::Exited(0), "");
}

/// Item 12: a previous handler installed without SA_SIGINFO is called with
/// one argument, for user signals naming managed memory too.
pub fn user_sigsegv_reaches_plain_handler(kind: FaultBackendKind, test: &str) {
    if !available(kind) {
        return;
    }
    let Some(out) = isolated(test, || {
        set_sigsegv(count_plain as *const () as usize, 0);
        let t = toy(kind, 4096).expect("toy");
        let _svc = FaultService::start(t.clone()).expect("service");
        raise_sigsegv();
        queue_sigsegv(t.arena.base() + 64);
        assert_eq!(CALLS.load(Ordering::SeqCst), 2, "the plain previous handler got both signals");
        assert_eq!(t.faults.load(Ordering::Relaxed), 0);
    }) else {
        return;
    };
    out.expect(End::Exited(0), "");
}

/// Item 12: with the default action before the arena's handler, a raised
/// SIGSEGV kills the process (the handler restores the default and raises
/// it again; returning would lose it: nothing re-executes a `raise`).
pub fn user_sigsegv_default_action_kills(kind: FaultBackendKind, test: &str) {
    if !available(kind) {
        return;
    }
    let Some(out) = isolated(test, || {
        set_sigsegv(libc::SIG_DFL, 0);
        let t = toy(kind, 4096).expect("toy");
        let _svc = FaultService::start(t.clone()).expect("service");
        raise_sigsegv();
        eprintln!("survived a raised SIGSEGV");
    }) else {
        return;
    };
    out.expect(End::Signaled(libc::SIGSEGV), "");
    assert!(!out.stderr.contains("survived"), "{}", out.stderr);
}

/// Item 12: with SIGSEGV ignored before the arena, a raised one stays
/// ignored, and a real wild access still kills the process.
pub fn user_sigsegv_ignored(kind: FaultBackendKind, test: &str) {
    if !available(kind) {
        return;
    }
    let Some(out) = isolated(test, || {
        set_sigsegv(libc::SIG_IGN, 0);
        let t = toy(kind, 4096).expect("toy");
        let _svc = FaultService::start(t.clone()).expect("service");
        raise_sigsegv();
        eprintln!("survived an ignored SIGSEGV");
        // SAFETY: deliberately invalid: the process must die of SIGSEGV.
        unsafe { core::ptr::write_volatile(16usize as *mut u8, 1) };
    }) else {
        return;
    };
    out.expect(End::Signaled(libc::SIGSEGV), "survived an ignored SIGSEGV");
}

fn errno_location() -> *mut libc::c_int {
    // SAFETY: __errno_location has no preconditions; it returns this
    // thread's errno.
    unsafe { libc::__errno_location() }
}

/// Item 12: a served CPU fault leaves the thread's `errno` as it was.
pub fn errno_survives_a_fault(kind: FaultBackendKind) {
    let Some(t) = toy(kind, 4096) else { return };
    let _svc = FaultService::start(t.clone()).expect("service");
    t.give_to_device(3, 7);
    // SAFETY: this thread's errno.
    unsafe { errno_location().write_volatile(1234) };
    assert_eq!(t.read(3 * 4096), 7);
    // SAFETY: this thread's errno.
    assert_eq!(unsafe { errno_location().read_volatile() }, 1234, "errno changed by the fault");
}

/// Item 8: a thread that holds the stderr lock faults on a page the handler
/// cannot serve. The service must not print through `std::io::stderr`
/// (it would wait for that thread, which waits for it): the process dies
/// with the message instead of hanging.
pub fn fatal_fault_with_stderr_locked(kind: FaultBackendKind, test: &str) {
    if !available(kind) {
        return;
    }
    let Some(out) = isolated(test, || {
        let t = toy(kind, 4096).expect("toy");
        t.fail.lock().insert(0, Fail::Fatal);
        let _svc = FaultService::start(t.clone()).expect("service");
        t.give_to_device(0, 1);
        let _held = std::io::stderr().lock();
        t.read(0);
    }) else {
        return;
    };
    out.expect(fatal_signal(kind), "svm: fatal CPU fault at");
}

/// Item 7: a handler that panics: the access dies with a message.
pub fn panicking_handler(kind: FaultBackendKind, test: &str) {
    if !available(kind) {
        return;
    }
    let Some(out) = isolated(test, || {
        let t = toy(kind, 4096).expect("toy");
        t.fail.lock().insert(0, Fail::Panic);
        let _svc = FaultService::start(t.clone()).expect("service");
        t.give_to_device(0, 1);
        t.read(0);
    }) else {
        return;
    };
    out.expect(fatal_signal(kind), "the fault handler panicked");
}

/// Item 7: a panic that ends the service thread (here one that escapes its
/// `catch_unwind`): the faulting access dies with a message, it does not
/// wait forever.
pub fn service_thread_dies(kind: FaultBackendKind, test: &str) {
    if !available(kind) {
        return;
    }
    let Some(out) = isolated(test, || {
        let t = toy(kind, 4096).expect("toy");
        t.fail.lock().insert(0, Fail::PanicEscapes);
        let _svc = FaultService::start(t.clone()).expect("service");
        t.give_to_device(0, 1);
        t.read(0);
    }) else {
        return;
    };
    out.expect(fatal_signal(kind), "svm: ");
}

/// Item 7: a fault after the service stopped dies with a message, it does
/// not wait forever.
pub fn fault_after_service_stopped(kind: FaultBackendKind, test: &str) {
    if !available(kind) {
        return;
    }
    let Some(out) = isolated(test, || {
        let t = toy(kind, 4096).expect("toy");
        let svc = FaultService::start(t.clone()).expect("service");
        t.give_to_device(0, 1);
        drop(svc);
        t.read(0);
    }) else {
        return;
    };
    out.expect(fatal_signal(kind), "fault service");
}

/// Item 5: a forked child touching managed memory (user view, or the host
/// copy through the arena) dies of SIGSEGV with a one-line explanation.
pub fn forked_child_touching_managed_memory(kind: FaultBackendKind, test: &str) {
    if !available(kind) {
        return;
    }
    let Some(out) = isolated(test, || {
        let t = toy(kind, 4096).expect("toy");
        let _svc = FaultService::start(t.clone()).expect("service");
        assert_eq!(t.read(5), 0, "the parent reads its memory");
        assert_eq!(fork_child(|| i32::from(t.read(5))), End::Signaled(libc::SIGSEGV), "user view in the child");
        let host = || {
            let mut b = [0u8; 1];
            // SAFETY: a fork child with one thread: nobody writes the arena
            // here (and the call crashes by design before reading).
            unsafe { t.arena.read_host(5, &mut b) };
            i32::from(b[0])
        };
        assert_eq!(fork_child(host), End::Signaled(libc::SIGSEGV), "host copy in the child");
        assert_eq!(t.read(5), 0, "the parent still reads its memory");
    }) else {
        return;
    };
    out.expect(End::Exited(0), "not inherited across fork");
    assert_eq!(out.stderr.matches("not inherited across fork").count(), 2, "one line per child:\n{}", out.stderr);
}

/// Item 4: a forked child dropping the fault service (as a child that
/// returns normally does) leaves the parent's service running.
pub fn forked_child_drops_service(kind: FaultBackendKind, test: &str) {
    if !available(kind) {
        return;
    }
    let Some(out) = isolated(test, || {
        let t = toy(kind, 4096).expect("toy");
        let mut svc = Some(FaultService::start(t.clone()).expect("service"));
        let mut handle = Some(t.clone());
        let child = fork_child(|| {
            drop(svc.take());
            drop(handle.take());
            0
        });
        assert_eq!(child, End::Exited(0), "the child's drops return");
        t.give_to_device(2, 5);
        assert_eq!(t.read(2 * 4096 + 1), 5, "the parent's fault is served");
        drop(svc);
    }) else {
        return;
    };
    out.expect(End::Exited(0), "");
}

/// Item 4: a forked child dropping an arena leaves the parent's arena
/// registered with its fault backend.
pub fn forked_child_drops_arena(kind: FaultBackendKind, test: &str) {
    if !available(kind) {
        return;
    }
    let Some(out) = isolated(test, || {
        let arena = Arena::new(4 << 20, kind).expect("arena");
        arena.allocate(0, arena.len()).expect("allocate");
        let mut arena = Some(arena);
        assert_eq!(
            fork_child(|| {
                drop(arena.take());
                0
            }),
            End::Exited(0)
        );
        let t = Toy::new(arena.take().expect("the parent's arena"), 4096);
        let _svc = FaultService::start(t.clone()).expect("service");
        t.give_to_device(1, 6);
        assert_eq!(t.read(4096), 6, "the parent's fault is caught and served");
    }) else {
        return;
    };
    out.expect(End::Exited(0), "");
}

/// Item 4: in a forked child the arena's and the service's methods fail
/// instead of acting on the parent's registration.
pub fn forked_child_methods_fail(kind: FaultBackendKind, test: &str) {
    if !available(kind) {
        return;
    }
    let Some(out) = isolated(test, || {
        let t = toy(kind, 4096).expect("toy");
        let _svc = FaultService::start(t.clone()).expect("service");
        t.give_to_device(0, 8);
        let child = fork_child(|| {
            let restored = t.arena.restore(0, 4096);
            let started = FaultService::start(t.clone());
            eprintln!("child: restore {restored:?}, start {started:?}");
            i32::from(!(forked(&restored) && forked(&started)))
        });
        assert_eq!(child, End::Exited(0), "both fail in the child");
        assert_eq!(t.read(0), 8, "the page came back through the parent's fault");
    }) else {
        return;
    };
    out.expect(End::Exited(0), "");
}

fn forked<T>(r: &svm_migrate::Result<T>) -> bool {
    matches!(r, Err(svm_migrate::MigrateError::NotInherited { .. }))
}

/// Items 4 and 5: a forked child can make and use an arena of its own (the
/// handler's table, inherited, still holds the parent's arenas).
pub fn forked_child_own_arena(kind: FaultBackendKind, test: &str) {
    if !available(kind) {
        return;
    }
    let Some(out) = isolated(test, || {
        let t = toy(kind, 4096).expect("toy");
        let _svc = FaultService::start(t.clone()).expect("service");
        let child = fork_child(|| {
            let own = toy(kind, 4096).expect("the child's toy");
            let _svc = FaultService::start(own.clone()).expect("the child's service");
            own.give_to_device(1, 9);
            i32::from(own.read(4096) != 9)
        });
        assert_eq!(child, End::Exited(0));
        t.give_to_device(1, 4);
        assert_eq!(t.read(4096), 4, "the parent is served too");
    }) else {
        return;
    };
    out.expect(End::Exited(0), "");
}
