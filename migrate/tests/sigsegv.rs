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
