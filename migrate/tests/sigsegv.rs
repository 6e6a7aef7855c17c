//! mprotect + SIGSEGV backend, real faults (own binary: the SIGSEGV handler
//! is process-wide).
mod common;
use svm_migrate::FaultBackendKind::Mprotect;

#[test]
fn segv_round_trip_4k() {
    common::round_trip(Mprotect, 4096);
}
#[test]
fn segv_round_trip_64k() {
    common::round_trip(Mprotect, 64 << 10);
}
#[test]
fn segv_concurrent_faults() {
    common::concurrent(Mprotect);
}
/// A fault outside every arena still reaches the default action.
#[test]
fn segv_foreign_fault_is_not_swallowed() {
    use std::process::Command;
    if std::env::var("SVM_CHILD_FOREIGN").is_ok() {
        let _t = common::toy(Mprotect, 4096).expect("arena");
        // SAFETY: deliberately invalid: the child must die of SIGSEGV.
        unsafe { core::ptr::write_volatile(16usize as *mut u8, 1) };
        unreachable!();
    }
    let exe = std::env::current_exe().expect("exe");
    let st = Command::new(exe)
        .args(["--exact", "segv_foreign_fault_is_not_swallowed", "--nocapture"])
        .env("SVM_CHILD_FOREIGN", "1")
        .status()
        .expect("spawn child");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGSEGV), "child: {st:?}");
}
#[test]
fn segv_write_protect() {
    common::write_protect(Mprotect);
}
#[test]
fn segv_withheld_pages_stay_withheld() {
    common::withheld_pages_stay_withheld(Mprotect);
}

// Issue 13 ("Sound by construction"), items 12, 8, 7, 5 and 4; see
// common/sound.rs.
#[test]
fn segv_user_sigsegv_reaches_previous_handler() {
    common::sound::user_sigsegv_reaches_previous_handler(Mprotect, "segv_user_sigsegv_reaches_previous_handler");
}
#[test]
fn segv_user_sigsegv_reaches_plain_handler() {
    common::sound::user_sigsegv_reaches_plain_handler(Mprotect, "segv_user_sigsegv_reaches_plain_handler");
}
#[test]
fn segv_user_sigsegv_default_action_kills() {
    common::sound::user_sigsegv_default_action_kills(Mprotect, "segv_user_sigsegv_default_action_kills");
}
#[test]
fn segv_user_sigsegv_ignored() {
    common::sound::user_sigsegv_ignored(Mprotect, "segv_user_sigsegv_ignored");
}
#[test]
fn segv_errno_survives_a_fault() {
    common::sound::errno_survives_a_fault(Mprotect);
}
#[test]
fn segv_fatal_fault_with_stderr_locked() {
    common::sound::fatal_fault_with_stderr_locked(Mprotect, "segv_fatal_fault_with_stderr_locked");
}
#[test]
fn segv_panicking_handler() {
    common::sound::panicking_handler(Mprotect, "segv_panicking_handler");
}
#[test]
fn segv_service_thread_dies() {
    common::sound::service_thread_dies(Mprotect, "segv_service_thread_dies");
}
#[test]
fn segv_fault_after_service_stopped() {
    common::sound::fault_after_service_stopped(Mprotect, "segv_fault_after_service_stopped");
}
#[test]
fn segv_forked_child_touching_managed_memory() {
    common::sound::forked_child_touching_managed_memory(Mprotect, "segv_forked_child_touching_managed_memory");
}
#[test]
fn segv_forked_child_drops_service() {
    common::sound::forked_child_drops_service(Mprotect, "segv_forked_child_drops_service");
}
#[test]
fn segv_forked_child_drops_arena() {
    common::sound::forked_child_drops_arena(Mprotect, "segv_forked_child_drops_arena");
}
#[test]
fn segv_forked_child_methods_fail() {
    common::sound::forked_child_methods_fail(Mprotect, "segv_forked_child_methods_fail");
}
#[test]
fn segv_forked_child_own_arena() {
    common::sound::forked_child_own_arena(Mprotect, "segv_forked_child_own_arena");
}

#[test]
fn segv_parked_fault_served_after_kick_while_faults_stream() {
    common::parked_fault_served_after_kick_while_faults_stream(Mprotect);
}

#[test]
fn sigsegv_service_dropped_by_its_own_thread() {
    common::dropped_by_its_own_thread(Mprotect, "sigsegv_service_dropped_by_its_own_thread");
}
