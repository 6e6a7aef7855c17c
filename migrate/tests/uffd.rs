//! userfaultfd backend, real faults (own binary: the registration is
//! process-wide state).
mod common;
use svm_migrate::FaultBackendKind::Uffd;

#[test]
fn uffd_round_trip_4k() {
    common::round_trip(Uffd, 4096);
}
#[test]
fn uffd_round_trip_64k() {
    common::round_trip(Uffd, 64 << 10);
}
#[test]
fn uffd_concurrent_faults() {
    common::concurrent(Uffd);
}
#[test]
fn uffd_write_protect() {
    common::write_protect(Uffd);
}
#[test]
fn uffd_withheld_pages_stay_withheld() {
    common::withheld_pages_stay_withheld(Uffd);
}

// Issue 13 ("Sound by construction"), items 12, 8, 7, 5 and 4; see
// common/sound.rs.
#[test]
fn uffd_user_sigsegv_reaches_previous_handler() {
    common::sound::user_sigsegv_reaches_previous_handler(Uffd, "uffd_user_sigsegv_reaches_previous_handler");
}
#[test]
fn uffd_user_sigsegv_reaches_plain_handler() {
    common::sound::user_sigsegv_reaches_plain_handler(Uffd, "uffd_user_sigsegv_reaches_plain_handler");
}
#[test]
fn uffd_user_sigsegv_default_action_kills() {
    common::sound::user_sigsegv_default_action_kills(Uffd, "uffd_user_sigsegv_default_action_kills");
}
#[test]
fn uffd_user_sigsegv_ignored() {
    common::sound::user_sigsegv_ignored(Uffd, "uffd_user_sigsegv_ignored");
}
#[test]
fn uffd_errno_survives_a_fault() {
    common::sound::errno_survives_a_fault(Uffd);
}
#[test]
fn uffd_fatal_fault_with_stderr_locked() {
    common::sound::fatal_fault_with_stderr_locked(Uffd, "uffd_fatal_fault_with_stderr_locked");
}
#[test]
fn uffd_panicking_handler() {
    common::sound::panicking_handler(Uffd, "uffd_panicking_handler");
}
#[test]
fn uffd_service_thread_dies() {
    common::sound::service_thread_dies(Uffd, "uffd_service_thread_dies");
}
#[test]
fn uffd_fault_after_service_stopped() {
    common::sound::fault_after_service_stopped(Uffd, "uffd_fault_after_service_stopped");
}
#[test]
fn uffd_forked_child_touching_managed_memory() {
    common::sound::forked_child_touching_managed_memory(Uffd, "uffd_forked_child_touching_managed_memory");
}
#[test]
fn uffd_forked_child_drops_service() {
    common::sound::forked_child_drops_service(Uffd, "uffd_forked_child_drops_service");
}
#[test]
fn uffd_forked_child_drops_arena() {
    common::sound::forked_child_drops_arena(Uffd, "uffd_forked_child_drops_arena");
}
#[test]
fn uffd_forked_child_methods_fail() {
    common::sound::forked_child_methods_fail(Uffd, "uffd_forked_child_methods_fail");
}
#[test]
fn uffd_forked_child_own_arena() {
    common::sound::forked_child_own_arena(Uffd, "uffd_forked_child_own_arena");
}

#[test]
fn uffd_parked_fault_served_after_kick_while_faults_stream() {
    common::parked_fault_served_after_kick_while_faults_stream(Uffd);
}

#[test]
fn uffd_service_dropped_by_its_own_thread() {
    common::dropped_by_its_own_thread(Uffd, "uffd_service_dropped_by_its_own_thread");
}
