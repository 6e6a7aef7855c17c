//! Conformance suite: the Linux kernel's HMM selftests
//! (`tools/testing/selftests/mm/hmm-tests.c`, driver `lib/test_hmm.c`,
//! "dmirror") ported to this userspace runtime, plus a stress test and bad
//! input. One binary; every GPU scenario runs under both CPU fault backends.
//!
//! Adapter and skipping as in `runtime/tests/gpu`: `WGPU_ADAPTER_NAME` /
//! `WGPU_BACKEND`; without an adapter a test prints `SKIP: no adapter` and
//! passes, unless `SVM_REQUIRE_GPU=1`, where it fails.
//!
//! "Two devices" (the kernel's `hmm2` fixture) are two mirrors of one
//! `svm_pagetable::AddressSpace`, driven by a data-carrying fake device
//! (`dmirror.rs`, modelled on `lib/test_hmm.c`): the runtime has one GPU per
//! arena and two runtimes never share memory, so the runtime-side ports of
//! those scenarios check what one device can (refused foreign pointers,
//! mixed residency) and the protocol-side ports check the two-device rules.
//!
//! # Scenario table
//!
//! | hmm-tests.c | here | notes |
//! |---|---|---|
//! | `open_close` | `hmm::open_close` | create / drop runtimes, with and without device pages |
//! | `anon_read` | `hmm::anon_read` | CPU writes, kernel reads (copies out); input never leaves the CPU |
//! | `anon_read_prot` | `hmm::anon_read_prot` | PROT_NONE = freed memory (its user view *is* PROT_NONE): every load refused as `Unallocated`; also `bad_input::kernel_pointer_errors` (gpu), `svm-pagetable` `kind_error_unallocated_freed_no_access` |
//! | `anon_write` | `hmm::anon_write` | kernel writes, CPU faults results back |
//! | `anon_write_prot` | `hmm::anon_write_prot` | read-only = declared `Access::read`: stores refused (`ReadOnly`), then declared read-write works |
//! | `anon_write_child` | `hmm::anon_write_child` | adapted: managed memory is `MADV_DONTFORK`; the child cannot touch it (dies SIGSEGV), the parent's data and device state are unaffected; device-owned reads: `bad_input::fork_child_cannot_read_stale_data` (gpu) |
//! | `anon_write_child_shared` | not applicable | no shared mapping is ever inherited: both views are `MADV_DONTFORK`, so parent and child cannot share managed memory (see `anon_write_child`) |
//! | `anon_write_huge` | `hmm::anon_write_huge` | 2 MiB-aligned allocation, 2 MiB fault chunk: one CPU fault per 2 MiB |
//! | `anon_write_hugetlbfs` | not applicable | the arena is one memfd; there is no hugetlbfs backing to choose |
//! | `file_read`, `file_write` | not applicable | managed memory is anonymous (memfd) only; the API maps no files |
//! | `migrate` | `hmm::migrate` | `prefetch(Device)`, kernel uses it in place, CPU faults it back |
//! | `migrate_file_private` | not applicable | no file mappings |
//! | `migrate_fault` | `hmm::migrate_fault` | migrate, fault half back, migrate the mixed range again |
//! | `migrate_release` | `hmm::migrate_release` | release = `prefetch(Host)` of everything, and LRU eviction under pool pressure; CPU then reads without faults |
//! | `migrate_shared` | not applicable | there are no shared (non-migratable) managed mappings |
//! | `hmm2.migrate_mixed` | `hmm::migrate_mixed` (runtime: holes, freed, foreign pointers → `BadRange`; mixed residency moves only host pages) + `mirrors::migrate_mixed_two_mirrors` (svm-pagetable) | differences from the kernel: PROT_NONE / holes are *skipped*, not EINVAL (partial migration); another device's page is migrated device→device, not ENOENT |
//! | `migrate_multiple` | `hmm::migrate_multiple` | 10 prefetch / fault-back round trips; kernel-driven round trips: `basics::repeated_round_trips` (gpu) |
//! | `anon_read_multiple` | `hmm::anon_read_multiple` | CPU rewrites, kernel re-reads, 4 rounds |
//! | `anon_teardown` | `hmm::anon_teardown` | a kernel reading two allocations races a free of one from another thread: either the launch wins (right data) or `BadRange`; never a crash |
//! | `mixedmap` | not applicable | no device file to mmap |
//! | `hmm2.snapshot` | `mirrors::snapshot_two_mirrors` | every class: ERROR, NONE (zero), READ, WRITE, READ (protected), own device-private, other device's |
//! | `compound` | `svm-pagetable` `large_entries_fault_as_units_and_split`, `large_entries_survive_whole_migration` | huge entries reported with one order |
//! | `hmm2.double_map` | `mirrors::double_map_two_mirrors` | both read, one migrates, the other still reads right |
//! | `exclusive`, `exclusive_mprotect`, `exclusive_cow` | not applicable | device atomics on managed memory: the prelude has none (`svm_err`/`svm_faults` atomics are runtime-internal) and the protocol has no exclusive-entry state; the nearest behaviour (device write ownership revoked by a CPU access) is `hmm::anon_write` + `basics::cpu_write_after_kernel_keeps_device_data` (gpu) |
//! | `hmm_gup_test` | `hmm::syscall_on_device_pages_uffd`, `hmm::syscall_on_device_pages_mprotect` (EFAULT under mprotect, documented; works after `prefetch(Host)`) | adapted: no GUP in userspace; the kernel-side access is a `write(2)` / `read(2)` system call on device-owned managed memory |
//! | `hmm_cow_in_device` | `bad_input::fork_child_cannot_read_stale_data` (gpu) | |
//! | `migrate_anon_huge_empty` | `hmm::huge_empty` | untouched 2 MiB migrated, device and CPU read zeros |
//! | `migrate_anon_huge_zero` | `hmm::huge_zero` | CPU-read (zero) 2 MiB migrated |
//! | `migrate_anon_huge_free` | `hmm::huge_free` | freed while on the device; reuse reads zero (also `bad_input::reused_memory_is_zeroed`, gpu) |
//! | `migrate_anon_huge_fault` | `hmm::huge_fault` | one CPU fault brings the whole 2 MiB back in one batch |
//! | `migrate_anon_huge_err`, `migrate_anon_huge_zero_err` | `hmm::huge_fragmented_pool` | no contiguous 2 MiB of device frames: falls back to runs of smaller ones; a pool too small is `PoolExhausted` (`bad_input::pool_exhausted_is_an_error_and_loses_nothing`, gpu) |
//! | `migrate_partial_unmap_fault` | `hmm::migrate_partial_unmap_fault` | allocations are freed whole: two / three adjacent allocations inside one 2 MiB region, the middle or first freed while on the device, the rest faulted back |
//! | `migrate_remap_fault` | `hmm::migrate_remap_fault` | no remap API (the page table and alias view are keyed by address; `mremap` of the arena is outside the contract): a move is alloc + kernel copy from the device-owned source + free, then fault back |
//! | `benchmark_thp_migration` | `bench::thp_migration` (`#[ignore]`; `--ignored --nocapture`) | sys→dev, dev→sys (prefetch) and CPU-fault GB/s, ¼ × 2 MiB … 128 × 2 MiB; criterion versions in `benches/` |
//!
//! Plus `stress::short_stress` (threads, kernels, allocations, launch
//! queues with held, reordered and leaked handles, a reference model; soak
//! mode: `cargo run --release -p svm-runtime --example stress`)
//! and `bad_input::*`.

mod bad_input;
mod bench;
mod dmirror;
mod hmm;
mod mirrors;
mod stress;
#[allow(dead_code, reason = "shared with examples/stress.rs, which uses all of it")]
mod stress_core;

#[path = "../support/mod.rs"]
mod support;
pub use support::*;

pub const PAGE_WORDS: usize = 1024;

/// Kernels used across the suite (grid-stride loops, workgroups of 64).
pub mod k {
    /// dst[i] = src[i], i < n. Args: src, dst, n.
    pub const COPY: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let src = svm_arg_ptr(0u); let dst = svm_arg_ptr(2u); let n = svm_arg_u32(4u);
    for (var i = g.x; i < n; i += nw.x * 64u) {
        svm_store_u32(svm_index(dst, i, 4u), svm_load_u32(svm_index(src, i, 4u)));
    }
}";
    /// FILL: p[i] = i * mul + add; AFFINE: p[i] = p[i] * mul + add (i < n;
    /// args p, n, mul, add). Shared with the stress core (and its example).
    pub use crate::stress_core::{AFFINE, FILL};
    /// dst[i] = dst[i] + src[i] * mul, i < n. Args: src, dst, n, mul.
    pub const ADD_SRC: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let src = svm_arg_ptr(0u); let dst = svm_arg_ptr(2u); let n = svm_arg_u32(4u); let mul = svm_arg_u32(5u);
    for (var i = g.x; i < n; i += nw.x * 64u) {
        let q = svm_index(dst, i, 4u);
        svm_store_u32(q, svm_load_u32(q) + svm_load_u32(svm_index(src, i, 4u)) * mul);
    }
}";
    /// One thread spins `iters` rounds over p[0..n] (a long kernel), then
    /// writes the sum to out[0]. Args: p, out, n, iters.
    pub const SPIN: &str = "@compute @workgroup_size(1) fn main() {
    let p = svm_arg_ptr(0u); let out = svm_arg_ptr(2u); let n = svm_arg_u32(4u); let iters = svm_arg_u32(5u);
    var s = 0u;
    for (var r = 0u; r < iters; r++) {
        for (var i = 0u; i < n; i++) { s += svm_load_u32(svm_index(p, i, 4u)) ^ r; }
    }
    svm_store_u32(out, s);
}";
}

/// Workgroups for `n` elements (at most 256: the kernels loop).
pub fn wg(n: usize) -> [u32; 3] {
    [((n as u32).div_ceil(64)).clamp(1, 256), 1, 1]
}

/// Run a test of this binary in a child process with `SVM_TEST_CHILD=role`,
/// and return its output. Used where the expected outcome is a crash.
pub fn in_child(test: &str, role: &str) -> std::process::Output {
    in_child_with(test, role, &[])
}

/// [`in_child`] with more environment variables set for the child.
pub fn in_child_with(test: &str, role: &str, env: &[(&str, &str)]) -> std::process::Output {
    let o = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", test, "--nocapture", "--test-threads=1", "--include-ignored"])
        .env("SVM_TEST_CHILD", role)
        .envs(env.iter().copied())
        .output()
        .expect("spawn child");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("running 1 test"), "child ran no test (filter {test:?}): {out}");
    o
}

pub fn child_role() -> Option<String> {
    std::env::var("SVM_TEST_CHILD").ok()
}

/// Fork; the child runs `f` (async-signal-safe work only) and `_exit`s with
/// its return value. Returns the raw wait status.
pub fn fork_and_wait(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `f`, which by contract does async-signal-
    // safe work (volatile memory accesses), then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = f();
        // SAFETY: _exit is always safe to call.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    status
}
