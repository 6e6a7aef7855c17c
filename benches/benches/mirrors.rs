//! Two devices mirroring one arena (`Svm::mirror`, issue 14): what a launch
//! pays when its data was last written by the other device.
//!
//! Runtime A and its mirror B (two logical devices of the adapter) share a
//! vector V (64 MiB; 32 MiB in the sparse mode). Each round, interleaved:
//! the CPU writes V (its pages come home), then, timed:
//!
//! - **B from host**: a launch on B that updates V (host → B);
//! - **B stays**: the same launch again (V on B already: the kernel alone);
//! - **A from B**: a launch on A (B gives V up: B → host → A);
//! - **B from A**: a launch on B (A → host → B).
//!
//! Pages move between devices through the host copy, so "from the other
//! device" costs a device → host copy on the giver plus the taker's
//! host → device copy; the ratio to "from host" says what the extra hop
//! costs on each path. Every path side by side, under both fault backends
//! (the CPU's write of V between rounds is what faults); the coherent mode
//! moves nothing (its row is the kernels on host memory in place). Medians
//! of the rounds, ms.
//!
//! ```text
//! cargo bench -p svm-benches --bench mirrors
//! cargo bench -p svm-benches --bench mirrors -- --quick   # results/quick/
//! ```

#[path = "common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::time::Instant;

use common::{gpu_required, machine, median, ModePath as Path};
use svm::{
    Binding, FaultBackendKind, Kernel, KernelDescriptor, LaunchDescriptor, ManagedVec, MappingMode, Svm, SvmDescriptor,
};

const MIB: usize = 1 << 20;

/// v[i] = v[i] * 3 + 1 over the whole vector (a strided loop).
const STEP: &str = "@group(0) @binding(0) var<storage, read_write> v: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = g.x; i < arrayLength(&v); i += nwg.x * 64u) { v[i] = v[i] * 3u + 1u; }
}";

const BACKENDS: [FaultBackendKind; 2] = [FaultBackendKind::Uffd, FaultBackendKind::Mprotect];

fn kernel(svm: &Svm) -> Kernel {
    svm.create_kernel(&KernelDescriptor { label: "step", source: STEP, entry_point: "main" }).expect("kernel")
}

fn launch(svm: &Svm, k: &Kernel, v: &mut ManagedVec<u32>) -> f64 {
    let t = Instant::now();
    svm.launch(
        k,
        &LaunchDescriptor { bindings: &[Binding::read_write(v)], workgroups: [256, 1, 1], ..Default::default() },
    )
    .expect("launch");
    t.elapsed().as_secs_f64() * 1e3
}

/// Medians (ms): B from host, B stays, A from B, B from A.
fn run(path: Path, backend: FaultBackendKind, rounds: usize) -> Result<([f64; 4], String), svm::SvmError> {
    let bytes = if path.mode == MappingMode::Sparse { 32 * MIB } else { 64 * MIB };
    let desc = SvmDescriptor::default()
        .fault_backend(backend)
        .mapping(path.mode)
        .host_mapped_pool(path.host_mapped_pool)
        .pool_size(2 * bytes as u64)
        .arena_size(1 << 30);
    let a = Svm::with_descriptor(&desc)?;
    let b = a.mirror(&desc)?;
    let (ka, kb) = (kernel(&a), kernel(&b));
    let n = bytes / 4;
    let mut v = a.alloc_vec::<u32>(n).expect("v");
    let mut t: [Vec<f64>; 4] = Default::default();
    let mut want = 0u32;
    for round in 0..=rounds {
        // The CPU writes V: every page comes home.
        v.fill(round as u32);
        want = round as u32;
        let times =
            [launch(&b, &kb, &mut v), launch(&b, &kb, &mut v), launch(&a, &ka, &mut v), launch(&b, &kb, &mut v)];
        for _ in 0..4 {
            want = want * 3 + 1;
        }
        if round > 0 {
            // (Round 0 warms pipelines and pools.)
            for (i, x) in times.into_iter().enumerate() {
                t[i].push(x);
            }
        }
    }
    assert!(v.iter().step_by(1021).all(|&x| x == want), "{}: wrong data", path.name);
    Ok((t.map(|mut x| median(&mut x)), b.device_info().to_string()))
}

fn main() {
    let quick = common::quick();
    let rounds = if quick { 2 } else { 7 };
    let command = common::bench_command("mirrors", quick);
    let mut table = String::new();
    let mut device = None;
    // (Backends interleaved per path: side by side in one run.)
    for path in common::paths_and_coherent() {
        for backend in BACKENDS {
            match run(path, backend, rounds) {
                Ok((m, dev)) => {
                    device.get_or_insert(dev);
                    let _ = writeln!(
                        table,
                        "| {} | {backend} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× |",
                        path.name,
                        m[0],
                        m[1],
                        m[2],
                        m[3],
                        m[3] / m[0]
                    );
                }
                Err(e) => {
                    assert!(
                        !gpu_required() || path.mode != MappingMode::Software,
                        "SVM_REQUIRE_GPU=1 but no runtime: {e}"
                    );
                    let _ = writeln!(table, "| {} | {backend} | not run: {e} | | | | |", path.name);
                }
            }
        }
    }
    let out = format!(
        "# Two devices mirroring one arena\n\n`{command}` (medians of {rounds} interleaved rounds, ms; \
         64 MiB, sparse 32 MiB).\nDevice: {}. Machine: {}.\n\n\
         | path | fault backend | B from host | B stays (kernel) | A from B | B from A | B from A / from host |\n\
         |---|---|---:|---:|---:|---:|---:|\n{table}",
        device.unwrap_or_default(),
        machine()
    );
    common::write_result(quick, "mirrors.md", &out);
}
