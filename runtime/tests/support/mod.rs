//! Test support shared by the GPU test binaries (`tests/gpu`,
//! `tests/conformance`): the runtime each test gets, and its checks.
#![allow(dead_code, reason = "each test binary uses part of it")]

use svm::{FaultBackendKind, Svm, SvmDescriptor, SvmError};

pub const BACKENDS: [FaultBackendKind; 2] = [FaultBackendKind::Uffd, FaultBackendKind::Mprotect];

/// A runtime for one test. Under the Vulkan validation layer
/// (`SVM_VALIDATION=1`, set by `./run test` on lavapipe) the test fails if
/// the layer reported an error by the time the runtime is dropped.
pub struct TestSvm(Svm);

impl std::ops::Deref for TestSvm {
    type Target = Svm;
    fn deref(&self) -> &Svm {
        &self.0
    }
}

impl Drop for TestSvm {
    fn drop(&mut self) {
        if let Err(e) = self.0.validation_check() {
            if !std::thread::panicking() {
                panic!("Vulkan validation errors:\n{e}");
            }
        }
    }
}

/// A runtime on the test adapter, or `None` (skip) when there is none and
/// the GPU is not required.
pub fn ctx(desc: SvmDescriptor) -> Option<TestSvm> {
    match Svm::with_descriptor(&desc) {
        Ok(s) => {
            if std::env::var("SVM_VALIDATION").as_deref() == Ok("1")
                && std::env::var("SVM_REQUIRE_VK_CAPS").as_deref() == Ok("1")
            {
                assert!(s.validation_active(), "SVM_VALIDATION=1 but the validation layer is not capturing");
            }
            Some(TestSvm(s))
        }
        Err(SvmError::NoAdapter(m)) if std::env::var("SVM_REQUIRE_GPU").as_deref() != Ok("1") => {
            eprintln!("SKIP: no adapter ({m}); set SVM_REQUIRE_GPU=1 to make this a failure");
            None
        }
        Err(e) => panic!("runtime creation failed: {e}"),
    }
}

/// [`ctx`] for a test of migration, which the coherent mapping mode does
/// not do (kernels use the host pages in place; nothing moves or faults):
/// in that mode the test does not apply, and says so.
pub fn ctx_migrating(desc: SvmDescriptor) -> Option<TestSvm> {
    let svm = ctx(desc)?;
    if svm.mapping_mode() == svm::MappingMode::Coherent {
        eprintln!("NOT APPLICABLE: this test checks migration; the coherent mapping mode migrates nothing");
        return None;
    }
    Some(svm)
}

/// Whether this build has `svm::vk` (the `vulkan` feature, on by default):
/// the sparse and coherent mapping modes and `Advice::AccessedBy`.
pub const VULKAN: bool = cfg!(feature = "vulkan");

/// In a build without the `vulkan` feature: check that `what` was refused
/// with the error that names the feature, and say that the test goes no
/// further (a skip with its reason, never a silent one).
pub fn refused_without_vulkan(what: &str, err: &dyn std::fmt::Display) {
    let m = err.to_string();
    if VULKAN {
        panic!("{what} refused in a build with the `vulkan` feature: {m}");
    }
    assert!(m.contains("`vulkan` feature"), "{what}: refused, but not for the missing feature: {m}");
    eprintln!("SKIP: {what} needs the `vulkan` feature of svm-runtime, off in this build ({m})");
}

/// Whether [`svm::Advice::AccessedBy`] is built. Without the `vulkan`
/// feature: checks that it is refused with the error naming the feature,
/// prints why the test goes no further, and returns false.
pub fn accessed_by_built(svm: &Svm) -> bool {
    if VULKAN {
        return true;
    }
    let probe = svm.alloc_vec::<u32>(1024).expect("probe");
    match svm.advise(probe.as_ptr().cast(), 4096, svm::Advice::AccessedBy) {
        Err(e @ svm::AdviseError::Unsupported(_)) => refused_without_vulkan("Advice::AccessedBy", &e),
        other => panic!("AccessedBy without the `vulkan` feature: {other:?}"),
    }
    false
}

/// Whether a launch's kernel ran inside its submission, so that nothing is
/// in flight when `launch` returns: `done` says the launch just made (one
/// whose kernel runs for a good fraction of a second or more) took about
/// as long as its kernel to return. That is wgpu's GL backend on Mesa's
/// llvmpipe, whose `glDispatchCompute` returns once the dispatch has run. A test of what happens *while* a
/// kernel runs cannot run there, and says so. Never on Vulkan, whose queues
/// run kernels asynchronously: there the test goes on (and fails if it
/// relies on a kernel in flight).
pub fn kernel_ran_inside_submit(svm: &Svm, done: bool, what: &str) -> bool {
    if !done || svm.device_info().backend == "Vulkan" {
        return false;
    }
    eprintln!(
        "SKIP: {what}: on {} the kernel ran inside the submission (the GL driver dispatches synchronously), \
         so no launch is in flight when `launch` returns",
        svm.device_info()
    );
    true
}

/// Whether this device cannot run a second submission while a kernel
/// runs, whatever the runtime does: wgpu's GL backend has one context, and
/// Mesa's threaded GL (glthread) makes any fence wait (the runtime's poll
/// for completion) drain the whole dispatch with that context held, so a
/// launch on other data sometimes returns at once and sometimes only once
/// the running kernel is done (seen on llvmpipe). A test that
/// a launch is *not* held behind a kernel cannot run there, and says so.
/// Never on Vulkan, whose queue submissions do not wait for running work.
pub fn submissions_wait_for_kernels(svm: &Svm, what: &str) -> bool {
    if svm.device_info().backend == "Vulkan" {
        return false;
    }
    eprintln!(
        "SKIP: {what}: on {} a submission can wait for a running kernel in the driver (one GL context), \
         so a launch not waiting for one cannot be told from one that does",
        svm.device_info()
    );
    true
}

/// Small arena and pool so that tests run quickly on lavapipe.
pub fn small(backend: FaultBackendKind) -> SvmDescriptor {
    SvmDescriptor::default().arena_size(256 << 20).pool_size(64 << 20).fault_backend(backend)
}

pub fn kernel(svm: &Svm, label: &str, body: &str) -> svm::Kernel {
    svm.create_kernel(&svm::KernelDescriptor { label, source: body, entry_point: "main" })
        .unwrap_or_else(|e| panic!("{e}"))
}
