//! GPU tests: one binary, every test on the real Vulkan adapter, under both
//! CPU fault backends.
//!
//! Adapter: `WGPU_ADAPTER_NAME` / `WGPU_BACKEND` (the wgpu env helpers).
//! Without an adapter a test prints `SKIP: no adapter` and passes, unless
//! `SVM_REQUIRE_GPU=1` (set by CI and the README's test command), where it
//! fails.

mod advice;
mod bad_input;
mod basics;
mod bound;
mod coherent;
mod collections;
mod large;
mod list;
mod mirrors;
mod mixed;
mod oversub;
mod paths;
mod queue;
mod replay;
mod shared;
mod small;
mod soundness;
mod sparse_speed;
mod staged;
mod unlocked;

#[path = "../support/mod.rs"]
mod support;
// (Also included by the conformance binary's stress core.)
#[path = "../support/kernels.rs"]
mod kernels;

#[path = "../support/app.rs"]
mod app;
pub use support::*;

/// Run a test in a child process (this test binary, filtered to the full
/// test path `test`, with `SVM_TEST_CHILD=role`), and
/// return how it ended. Used where the expected outcome is a crash.
pub fn in_child(test: &str, role: &str) -> std::process::ExitStatus {
    std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("SVM_TEST_CHILD", role)
        .output()
        .map(|o| {
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(out.contains("running 1 test"), "child ran no test (filter {test:?}): {out}");
            o.status
        })
        .expect("spawn child")
}

pub fn child_role() -> Option<String> {
    std::env::var("SVM_TEST_CHILD").ok()
}

/// A runaway kernel: `args[2]` rounds of an LCG, then one store at the
/// pointer `args[0]`. Args: p, rounds.
pub const SPIN: &str = "@compute @workgroup_size(1) fn main() {
    var x = 1u;
    for (var i = 0u; i < svm_arg_u32(2u); i++) { x = x * 1664525u + 1013904223u; }
    svm_store_u32(svm_arg_ptr(0u), x);
}";
