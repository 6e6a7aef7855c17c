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

/// p[i] += 1 and q[i] += 2, i < n. Args: p, q, n.
const ADD2: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let p = svm_arg_ptr(0u); let q = svm_arg_ptr(2u); let n = svm_arg_u32(4u);
    for (var i = g.x; i < n; i += nw.x * 64u) {
        let a = svm_index(p, i, 4u);
        svm_store_u32(a, svm_load_u32(a) + 1u);
        let b = svm_index(q, i, 4u);
        svm_store_u32(b, svm_load_u32(b) + 2u);
    }
}";

/// A working set larger than the pool: where the device imports host
/// memory, the part that does not fit is served from host memory in place
/// (the coherent window) and the launch runs; elsewhere, or while the
/// program holds the window (`AccessedBy`), it is refused with a clear
/// error and nothing changes.
#[test]
fn working_set_larger_than_pool_is_served_remotely_or_refused() {
    let Some(svm) = ctx_migrating(small(BACKENDS[0]).pool_size(1 << 20)) else { return };
    let k = kernel(&svm, "add2", ADD2);
    let n = 1usize << 18; // 1 MiB of u32 each: two of them are twice the pool
    let mut a = svm.alloc_from_slice(&vec![1u32; n]).expect("a");
    let mut b = svm.alloc_from_slice(&vec![2u32; n]).expect("b");
    let c = svm.alloc_from_slice(&[0u32; 1024]).expect("c");
    let launch = |a: &mut svm::ManagedVec<u32>, b: &mut svm::ManagedVec<u32>| {
        let args = [Arg::ptr(a.as_ptr()), Arg::ptr(b.as_ptr()), Arg::U32(n as u32)];
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read_write(a), Access::read_write(b)],
                bindings: &[],
                workgroups: [64, 1, 1],
            },
        )
    };
    // The program holds the one window: refused, nothing changed.
    let remote = svm.coherent_mode_available();
    if remote {
        c.advise(svm::Advice::AccessedBy).expect("AccessedBy");
    }
    let r = launch(&mut a, &mut b);
    assert!(matches!(r, Err(LaunchError::PoolExhausted { needed: 512, total: 256, .. })), "{r:?}");
    assert!(a.iter().all(|&x| x == 1) && b.iter().all(|&x| x == 2));
    if !remote {
        eprintln!("the device does not import host memory: larger-than-pool launches are refused (checked)");
        return;
    }
    c.advise(svm::Advice::UnsetAccessedBy).expect("unset");
    // Now the excess is served remotely: it runs, twice, byte-exact.
    let before = svm.stats();
    launch(&mut a, &mut b).expect("served remotely");
    launch(&mut a, &mut b).expect("again (the choice stays)");
    assert!(a.iter().all(|&x| x == 3), "a: {}", a[0]);
    assert!(b.iter().all(|&x| x == 6), "b: {}", b[0]);
    let s = svm.stats().since(&before);
    assert_eq!(s.remote_pages, 256, "one vector served in place: {s:?}");
    assert!(s.h2d_pages <= 256, "the other migrated: {s:?}");
    let in_place = |v: &svm::ManagedVec<u32>| svm.range_info(v.as_ptr().cast(), n * 4).expect("info").in_place;
    assert_eq!(in_place(&a) + in_place(&b), 256, "one of them in place");
    // A launch over the one in place alone fits the pool: it migrates again.
    let (mut inside, other) = if in_place(&a) > 0 { (a, b) } else { (b, a) };
    let args = [Arg::ptr(inside.as_ptr()), Arg::U32(n as u32), Arg::U32(10)];
    let kadd = kernel(&svm, "add", ADD);
    let before = svm.stats();
    svm.launch(
        &kadd,
        &LaunchDescriptor {
            args: &args,
            access: &[Access::read_write(&mut inside)],
            bindings: &[],
            workgroups: [64, 1, 1],
        },
    )
    .expect("fits the pool");
    assert_eq!(in_place(&inside), 0, "given back to migration");
    assert!(svm.stats().since(&before).h2d_pages >= 256, "it migrated in");
    // a was 3, b 6: plus 10.
    let want = inside[0];
    assert!((want == 13 || want == 16) && inside.iter().all(|&x| x == want), "{want}");
    let (mut a, mut b) = if want == 13 { (inside, other) } else { (other, inside) };
    // The program's advice takes the window back from the runtime.
    c.advise(svm::Advice::AccessedBy).expect("AccessedBy after the runtime's choice");
    assert!(matches!(launch(&mut a, &mut b), Err(LaunchError::PoolExhausted { .. })));
    // A single range larger than the pool runs in place too.
    c.advise(svm::Advice::UnsetAccessedBy).expect("unset");
    let mut big = svm.alloc_from_slice(&vec![5u32; 4 * n]).expect("big");
    let args = [Arg::ptr(big.as_ptr()), Arg::U32((4 * n) as u32), Arg::U32(1)];
    svm.launch(
        &kadd,
        &LaunchDescriptor {
            args: &args,
            access: &[Access::read_write(&mut big)],
            bindings: &[],
            workgroups: [64, 1, 1],
        },
    )
    .expect("a 4 MiB range with a 1 MiB pool");
    assert!(big.iter().all(|&x| x == 6));
    // Bound to a kernel's own binding, in place as well.
    let kb = kernel(
        &svm,
        "bound add",
        "@group(0) @binding(0) var<storage, read_write> v: array<u32>;
        @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
            if (g.x < arrayLength(&v)) { v[g.x] = v[g.x] + 1u; }
        }",
    );
    let groups = ((4 * n) as u32).div_ceil(64);
    svm.launch(
        &kb,
        &LaunchDescriptor {
            bindings: &[svm::Binding::read_write(&mut big)],
            workgroups: [groups.min(65535), groups.div_ceil(65535), 1],
            ..Default::default()
        },
    )
    .expect("bound, larger than the pool");
    assert!(big.iter().all(|&x| x == 7));
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
        // Thrashing is met by eviction of the most recent pages, or (where
        // the device imports host memory) by serving the slices that do not
        // fit in place instead of cycling them.
        assert!(s.refaults > 0 || s.remote_pages > 0, "{backend}: the sweeps refault or are served in place: {s:?}");
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

/// A range served in place must not cut through a binding (a binding is one
/// buffer): with a vector bound whole and a part of it declared, the part
/// alone would be the smallest choice, but the runtime takes the whole
/// vector, and the launch runs.
#[test]
fn serving_in_place_never_cuts_a_binding() {
    let Some(svm) = ctx_migrating(small(BACKENDS[0]).pool_size(1 << 20)) else { return };
    if !svm.coherent_mode_available() {
        eprintln!("the device does not import host memory: nothing is served in place (checked elsewhere)");
        return;
    }
    let n = 1usize << 19; // 2 MiB of u32: twice the pool
    let v = svm.alloc_from_iter((0..n as u32).map(|i| i * 3)).expect("v");
    let mut out = svm.alloc_vec::<u32>(1024).expect("out");
    let k = kernel(
        &svm,
        "strided read",
        "@group(0) @binding(0) var<storage, read> v: array<u32>;
        @group(0) @binding(1) var<storage, read_write> out: array<u32>;
        @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
            if (g.x < arrayLength(&out)) { out[g.x] = v[g.x * 512u]; }
        }",
    );
    // 300 of v's 512 pages declared for pointer access too: leaving them
    // out would let the rest (212 pages + out) fit the 256-page pool.
    let part = v.slice(0..300 * 1024);
    svm.launch(
        &k,
        &LaunchDescriptor {
            access: &[Access::read(&part)],
            bindings: &[svm::Binding::read(&v), svm::Binding::read_write(&mut out)],
            workgroups: [16, 1, 1],
            ..Default::default()
        },
    )
    .expect("served in place without cutting the binding");
    assert!(out.iter().enumerate().all(|(i, &x)| x == (i * 512 * 3) as u32));
    assert_eq!(svm.range_info(v.as_ptr().cast(), n * 4).expect("info").in_place, 512, "v whole in place");
}
