//! Oversubscription: a device pool smaller than the data.

use svm::{Access, Arg, LaunchDescriptor, LaunchError};

use crate::{ctx_migrating, kernel, small, BACKENDS};

const ADD: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let p = svm_arg_ptr(0u); let n = svm_arg_u32(2u); let k = svm_arg_u32(3u);
    for (var i = g.x; i < n; i += nw.x * 64u) {
        let q = svm_index(p, i, 4u);
        svm_store_u32(q, svm_load_u32(q) + k);
    }
}";

#[test]
fn lru_eviction_keeps_every_byte() {
    for backend in BACKENDS {
        // Pool of 2 MiB; four buffers of 1 MiB each written in turn.
        // Uffd with the host-mapped pool (where the adapter has one),
        // mprotect with the staging path.
        let mapped = backend == BACKENDS[0];
        let Some(svm) = ctx_migrating(small(backend).pool_size(2 << 20).host_mapped_pool(mapped)) else { return };
        let k = kernel(&svm, "add", ADD);
        let n = 1 << 18; // 1 MiB of u32
        let mut bufs: Vec<_> = (0..4u32).map(|b| svm.alloc_from_slice(&vec![b * 1000; n]).expect("buf")).collect();
        for round in 1..=3u32 {
            for (b, v) in bufs.iter_mut().enumerate() {
                let args = [Arg::ptr(v.as_ptr()), Arg::U32(n as u32), Arg::U32(round)];
                svm.launch(
                    &k,
                    &LaunchDescriptor {
                        args: &args,
                        access: &[Access::read_write(v)],
                        bindings: &[],
                        workgroups: [64, 1, 1],
                    },
                )
                .unwrap_or_else(|e| panic!("{backend} round {round} buffer {b}: {e}"));
            }
        }
        let s = svm.stats();
        assert!(s.evicted_pages >= 3 * 256, "{backend}: evicted {}", s.evicted_pages);
        for (b, v) in bufs.iter().enumerate() {
            let want = b as u32 * 1000 + 6;
            assert!(v.iter().all(|&x| x == want), "{backend}: buffer {b}");
        }
    }
}

/// A working set that alone exceeds the pool is refused with a clear error.
#[test]
fn working_set_larger_than_pool_is_refused() {
    let Some(svm) = ctx_migrating(small(BACKENDS[0]).pool_size(1 << 20)) else { return };
    let k = kernel(&svm, "add", ADD);
    let mut a = svm.alloc_from_slice(&vec![1u32; 1 << 18]).expect("a");
    let mut b = svm.alloc_from_slice(&vec![2u32; 1 << 18]).expect("b");
    let args = [Arg::ptr(a.as_ptr()), Arg::U32(1), Arg::U32(1)];
    let r = svm.launch(
        &k,
        &LaunchDescriptor {
            args: &args,
            access: &[Access::read_write(&mut a), Access::read_write(&mut b)],
            bindings: &[],
            workgroups: [1, 1, 1],
        },
    );
    assert!(matches!(r, Err(LaunchError::PoolExhausted { needed: 512, total: 256, .. })), "{r:?}");
    assert!(a.iter().all(|&x| x == 1) && b.iter().all(|&x| x == 2));
}

/// Cyclic sweeps over more than the pool: LRU would move the whole working
/// set out and back every sweep; once pages come back after eviction
/// (refaults), eviction keeps the longest-resident part and cycles only the
/// rest. Every byte stays right.
#[test]
fn cyclic_sweeps_do_not_cycle_the_whole_working_set() {
    for backend in BACKENDS {
        // Pool of 4 MiB; eight slices of 640 KiB (1.25x the pool).
        let Some(svm) = ctx_migrating(small(backend).pool_size(4 << 20)) else { return };
        let k = kernel(&svm, "add", ADD);
        let n = 160 << 10; // 640 KiB of u32 per slice
        let mut slices: Vec<_> = (0..8u32).map(|_| svm.alloc_vec::<u32>(n).expect("slice")).collect();
        let mut sweep = |round: u32| {
            for v in slices.iter_mut() {
                let args = [Arg::ptr(v.as_ptr()), Arg::U32(n as u32), Arg::U32(1)];
                let desc = LaunchDescriptor {
                    args: &args,
                    access: &[Access::read_write(v)],
                    workgroups: [64, 1, 1],
                    ..Default::default()
                };
                svm.launch(&k, &desc).unwrap_or_else(|e| panic!("{backend} round {round}: {e}"));
            }
        };
        sweep(1);
        sweep(2);
        let before = svm.stats();
        sweep(3);
        sweep(4);
        let s = svm.stats().since(&before);
        let ws_pages = (8 * n * 4 / 4096) as u64;
        assert!(s.refaults > 0, "{backend}: the sweeps refault");
        assert!(
            s.evicted_pages / 2 <= ws_pages / 2,
            "{backend}: {} pages evicted per sweep of a {ws_pages}-page working set",
            s.evicted_pages / 2
        );
        for (i, v) in slices.iter().enumerate() {
            assert!(v.iter().all(|&x| x == 4), "{backend}: slice {i}");
        }
    }
}
