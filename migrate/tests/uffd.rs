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
