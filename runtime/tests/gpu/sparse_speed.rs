//! The sparse mode at copy speed (issue 15 item 2): blocks bound in runs,
//! binds batched per launch, unbinds deferred to the next bind. Large
//! migrations both ways stay byte-exact when CPU faults take back part of
//! a run (a partial release, re-bound by the next launch in the same
//! `vkQueueBindSparse` as the deferred unbinds), under eviction, and after
//! frees whose blocks are reused at once. Sparse mode only.

use svm::{Binding, LaunchDescriptor, Location, ManagedVec, MappingMode, Svm};

use crate::{ctx_migrating, kernel, BACKENDS};

/// `c[i] = c[i] * 5 + a[i % len(a)] ^ tag`.
const STEP: &str = "
@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read_write> c: array<u32>;
@group(0) @binding(2) var<uniform> tag: vec4<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    let i = g.x + g.y * n.x * 64u;
    if (i < arrayLength(&c)) {
        c[i] = (c[i] * 5u + a[i % arrayLength(&a)]) ^ tag.x;
    }
}";

const MIB: usize = 1 << 20;

fn pattern(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| i.wrapping_mul(2_654_435_761).rotate_left(seed % 31) ^ seed).collect()
}

fn step(a: &[u32], c: &mut [u32], tag: u32) {
    for (i, w) in c.iter_mut().enumerate() {
        *w = w.wrapping_mul(5).wrapping_add(a[i % a.len()]) ^ tag;
    }
}

fn launch(svm: &Svm, k: &svm::Kernel, a: &ManagedVec<u32>, c: &mut ManagedVec<u32>, tag: u32) {
    let t = [tag, 0u32, 0, 0];
    let groups = u32::try_from(c.len().div_ceil(64)).expect("fits");
    let (x, y) = (groups.min(4096), groups.div_ceil(4096));
    svm.launch(
        k,
        &LaunchDescriptor {
            bindings: &[Binding::read(a), Binding::read_write(c), Binding::uniform(&t)],
            workgroups: [x, y, 1],
            ..Default::default()
        },
    )
    .expect("launch");
}

fn check(what: &str, got: &ManagedVec<u32>, want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "{what}: word {i} (byte {:#x}) is {g:#x}, expected {w:#x}", i * 4);
    }
}

/// A sparse runtime, or `None` (the test does not apply, or no adapter).
fn sparse(backend: svm::FaultBackendKind, pool: u64) -> Option<crate::TestSvm> {
    let svm =
        ctx_migrating(svm::SvmDescriptor::default().arena_size(128 * MIB).pool_size(pool).fault_backend(backend))?;
    if svm.mapping_mode() != MappingMode::Sparse {
        eprintln!("NOT APPLICABLE: this test checks the sparse mapping mode (SVM_MAPPING_MODE=sparse)");
        return None;
    }
    Some(svm)
}

/// 24 MiB each way, twice; between the launches CPU faults take back
/// scattered parts of the device-owned run (partial releases), and the
/// second launch re-binds exactly those pages.
#[test]
fn large_runs_and_partial_releases_are_byte_exact() {
    for backend in BACKENDS {
        let Some(svm) = sparse(backend, 64 * MIB as u64) else { return };
        let k = kernel(&svm, "step", STEP);
        let (na, nc) = ((8 * MIB) / 4 + 1031, (24 * MIB) / 4 + 4099);
        let pa = pattern(1, na);
        let mut want = pattern(2, nc);
        let a = svm.alloc_from_slice(&pa).expect("alloc");
        let mut c = svm.alloc_from_slice(&want).expect("alloc");
        launch(&svm, &k, &a, &mut c, 7);
        step(&pa, &mut want, 7);
        // Partial releases: single words in the middle of the run, a page
        // at each end of the allocation, and one write (dirty on the host).
        for &i in &[nc / 2, nc / 3 + 17, 5, nc - 1, 3 * nc / 4 + 1024] {
            assert_eq!(c[i], want[i], "{backend:?}: word {i} after one launch");
        }
        c[nc / 5] ^= 0xdead_beef;
        want[nc / 5] ^= 0xdead_beef;
        launch(&svm, &k, &a, &mut c, 11);
        step(&pa, &mut want, 11);
        check(&format!("{backend:?}: c after two launches"), &c, &want);
        // Back to the device by prefetch (one bind for the whole run, with
        // the unbinds the reads above queued), then read again.
        svm.prefetch(c.as_ptr().cast(), nc * 4, Location::Device).wait().expect("prefetch");
        launch(&svm, &k, &a, &mut c, 13);
        step(&pa, &mut want, 13);
        check(&format!("{backend:?}: c after prefetch and a third launch"), &c, &want);
        let s = svm.stats();
        assert!(s.h2d_pages > 0 && s.d2h_pages > 0, "{backend:?}: nothing moved: {s}");
    }
}

/// A pool smaller than the working set of two launches: the second evicts
/// the first's pages (their unbinds deferred, their blocks bound at the new
/// pages in the same batch); everything comes back byte-exact.
#[test]
fn eviction_reuses_blocks_byte_exact() {
    for backend in BACKENDS {
        let Some(svm) = sparse(backend, 20 * MIB as u64) else { return };
        let k = kernel(&svm, "step", STEP);
        let n = (6 * MIB) / 4 + 513;
        let pa = pattern(3, 64 * 1024);
        let a = svm.alloc_from_slice(&pa).expect("alloc");
        let mut vs: Vec<(ManagedVec<u32>, Vec<u32>)> = (0..4)
            .map(|i| {
                let w = pattern(10 + i, n);
                (svm.alloc_from_slice(&w).expect("alloc"), w)
            })
            .collect();
        for round in 0..3u32 {
            for (j, (v, w)) in vs.iter_mut().enumerate() {
                let tag = round * 16 + j as u32;
                launch(&svm, &k, &a, v, tag);
                step(&pa, w, tag);
            }
        }
        for (j, (v, w)) in vs.iter().enumerate() {
            check(&format!("{backend:?}: vector {j}"), v, w);
        }
        let s = svm.stats();
        assert!(s.evicted_pages > 0, "{backend:?}: the pool was not oversubscribed: {s}");
    }
}

/// Frees of device-resident allocations release their blocks at once;
/// new allocations get them (bound again in the next launch's batch) and
/// never see the freed data.
#[test]
fn frees_and_reuse_are_byte_exact() {
    for backend in BACKENDS {
        let Some(svm) = sparse(backend, 32 * MIB as u64) else { return };
        let k = kernel(&svm, "step", STEP);
        let pa = pattern(4, 4096);
        let a = svm.alloc_from_slice(&pa).expect("alloc");
        for round in 0..4u32 {
            let n = (5 * MIB) / 4 + 97 * round as usize;
            let mut w1 = pattern(20 + round, n);
            let mut w2 = vec![0u32; n / 2 + 1];
            let mut v1 = svm.alloc_from_slice(&w1).expect("alloc");
            let mut v2 = svm.alloc_vec::<u32>(w2.len()).expect("alloc");
            launch(&svm, &k, &a, &mut v1, round);
            launch(&svm, &k, &a, &mut v2, round + 100);
            step(&pa, &mut w1, round);
            step(&pa, &mut w2, round + 100);
            // Part of v1 back to the host, then both freed while (mostly)
            // on the device.
            assert_eq!(v1[n / 2], w1[n / 2], "{backend:?} round {round}: v1 middle");
            check(&format!("{backend:?} round {round}: v2"), &v2, &w2);
            launch(&svm, &k, &a, &mut v1, round + 200);
            step(&pa, &mut w1, round + 200);
            check(&format!("{backend:?} round {round}: v1"), &v1, &w1);
            launch(&svm, &k, &a, &mut v1, round + 300);
            drop(v1);
            drop(v2);
            // Fresh memory reads zero wherever its blocks were.
            let mut z = svm.alloc_vec::<u32>(n).expect("alloc");
            let mut wz = vec![0u32; n];
            launch(&svm, &k, &a, &mut z, round + 400);
            step(&pa, &mut wz, round + 400);
            check(&format!("{backend:?} round {round}: fresh"), &z, &wz);
        }
    }
}
