//! Advice and prefetch: each effect shown on the migration statistics.

use svm::{Access, Advice, AdviseError, Arg, LaunchDescriptor, Location};

use crate::{ctx, ctx_migrating, kernel, small, BACKENDS};

/// out[0] = sum of src[0..n] (one thread; small n).
const SUM: &str = "@compute @workgroup_size(1) fn main() {
    let src = svm_arg_ptr(0u); let out = svm_arg_ptr(2u); let n = svm_arg_u32(4u);
    var s = 0u;
    for (var i = 0u; i < n; i++) { s += svm_load_u32(svm_index(src, i, 4u)); }
    svm_store_u32(out, s);
}";

/// Launch `SUM` over all of `src` (declared read) into `out` (read-write).
fn launch_sum(svm: &svm::Svm, k: &svm::Kernel, src: &svm::ManagedVec<u32>, out: &mut svm::ManagedVec<u32>) {
    let args = [Arg::ptr(src.as_ptr()), Arg::ptr(out.as_ptr()), Arg::U32(src.len() as u32)];
    svm.launch(
        k,
        &LaunchDescriptor {
            args: &args,
            access: &[Access::read(src), Access::read_write(out)],
            bindings: &[],
            workgroups: [1, 1, 1],
        },
    )
    .expect("launch");
}

/// [`launch_sum`], then read the sum on the CPU.
fn sum(svm: &svm::Svm, k: &svm::Kernel, src: &svm::ManagedVec<u32>, out: &mut svm::ManagedVec<u32>) -> u32 {
    launch_sum(svm, k, src, out);
    out[0]
}

#[test]
fn read_mostly_keeps_device_copies_until_a_cpu_write() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let k = kernel(&svm, "sum", SUM);
        let n = 16 * 1024; // 16 pages
        let mut src = svm.alloc_from_slice(&vec![1u32; n]).expect("src");
        let mut out = svm.alloc_vec::<u32>(1).expect("out");
        svm.advise(src.as_ptr() as *const u8, n * 4, Advice::ReadMostly).expect("advise");
        assert_eq!(sum(&svm, &k, &src, &mut out), n as u32);
        let s0 = svm.stats();
        assert_eq!(sum(&svm, &k, &src, &mut out), n as u32);
        let s1 = svm.stats().since(&s0);
        // Only `out` moves again (the CPU read it back); src's 16 pages were kept.
        assert_eq!(s1.h2d_pages, 1, "{backend}: src's copy was kept");
        // CPU reads do not fault; a CPU write drops that page's copy first.
        assert_eq!(src.iter().map(|&x| x as usize).sum::<usize>(), n);
        let s2 = svm.stats();
        src[5000] = 1001;
        let s3 = svm.stats().since(&s2);
        assert_eq!(s3.cpu_faults, 1, "{backend}: one write-protect fault");
        assert_eq!(sum(&svm, &k, &src, &mut out), n as u32 + 1000, "{backend}: the kernel sees the CPU's write");
        let s4 = svm.stats().since(&s2);
        assert_eq!(s4.h2d_pages, 2, "{backend}: only the written page (and out) moved again");
        svm.advise(src.as_ptr() as *const u8, n * 4, Advice::UnsetReadMostly).expect("unset");
        src[0] = 2; // no longer protected
        assert_eq!(sum(&svm, &k, &src, &mut out), n as u32 + 1001);
    }
}

#[test]
fn preferred_location_host_brings_results_back_eagerly() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "sum", SUM);
        let src = svm.alloc_from_slice(&vec![3u32; 1000]).expect("src");
        let mut out = svm.alloc_vec::<u32>(1024).expect("out");
        svm.advise(out.as_ptr() as *const u8, 4096, Advice::PreferredLocation(Location::Host)).expect("advise");
        launch_sum(&svm, &k, &src, &mut out);
        assert_eq!(svm.device_resident_pages(), 0, "{backend}");
        let s0 = svm.stats();
        assert_eq!(out[0], 3000);
        assert_eq!(svm.stats().since(&s0).cpu_faults, 0, "{backend}: no fault to read the result");
    }
}

#[test]
fn preferred_location_device_is_evicted_last() {
    let Some(svm) = ctx_migrating(small(BACKENDS[0]).pool_size(2 << 20)) else { return };
    let k = kernel(
        &svm,
        "fill",
        "@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
            let p = svm_arg_ptr(0u); let n = svm_arg_u32(2u);
            for (var i = g.x; i < n; i += nw.x * 64u) { svm_store_u32(svm_index(p, i, 4u), i); }
        }",
    );
    let n = 1 << 18; // 1 MiB each
    let mut a = svm.alloc_vec::<u32>(n).expect("a");
    let mut b = svm.alloc_vec::<u32>(n).expect("b");
    let mut c = svm.alloc_vec::<u32>(n).expect("c");
    svm.advise(a.as_ptr() as *const u8, n * 4, Advice::PreferredLocation(Location::Device)).expect("advise");
    for v in [&mut a, &mut b, &mut c] {
        let args = [Arg::ptr(v.as_ptr()), Arg::U32(n as u32)];
        svm.launch(
            &k,
            &LaunchDescriptor { args: &args, access: &[Access::read_write(v)], bindings: &[], workgroups: [64, 1, 1] },
        )
        .expect("launch");
    }
    // c needed room: b (more recent than a, but not preferred) was evicted.
    let s0 = svm.stats();
    assert_eq!(b[12345], 12345);
    assert_eq!(svm.stats().since(&s0).cpu_faults, 0, "b was evicted to the host");
    assert_eq!(a[12345], 12345);
    assert!(svm.stats().since(&s0).cpu_faults >= 1, "a stayed on the device");
}

#[test]
fn prefetch_both_ways() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let k = kernel(&svm, "sum", SUM);
        let src = svm.alloc_from_slice(&vec![2u32; 4096]).expect("src");
        let mut out = svm.alloc_vec::<u32>(1).expect("out");
        let moved = svm.prefetch(out.as_ptr() as *const u8, 4, Location::Device).wait().expect("prefetch");
        assert_eq!(moved, 1);
        let s0 = svm.stats();
        launch_sum(&svm, &k, &src, &mut out);
        assert_eq!(svm.stats().since(&s0).h2d_pages, 4, "{backend}: only src moved at launch");
        let moved = svm.prefetch(out.as_ptr() as *const u8, 4, Location::Host).wait().expect("prefetch");
        assert_eq!(moved, 1);
        let s1 = svm.stats();
        assert_eq!(out[0], 8192);
        assert_eq!(svm.stats().since(&s1).cpu_faults, 0, "{backend}: prefetched back, no fault");
        // Bad ranges are refused.
        let freed = svm.alloc_vec::<u32>(4).expect("f");
        let p = freed.as_ptr() as *const u8;
        drop(freed);
        assert!(svm.prefetch(p, 16, Location::Device).wait().is_err());
    }
}

/// AccessedBy: the kernel works on the host copy in place; nothing
/// migrates either way and the CPU never faults.
/// A `Prefetch` dropped without `wait` finishes first (as a dropped launch
/// handle does), and keeps the runtime alive meanwhile: the runtime's last
/// handle may be the prefetch, and the runtime must then be torn down by
/// the thread that drops it, not in the background by the prefetch thread
/// (which a process exiting meanwhile would race: a GL driver's teardown
/// crashed there once, "double free or corruption" at exit).
#[test]
fn a_dropped_prefetch_finishes_first() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let v = svm.alloc_from_slice(&vec![7u32; 8 << 20]).expect("32 MiB");
        let pages = (v.len() * 4 / 4096) as u64;
        let pf = v.prefetch(Location::Device);
        drop(pf);
        let info = svm.range_info(v.as_ptr().cast(), v.len() * 4).expect("info");
        assert_eq!(
            info.device, pages,
            "{backend:?}: the prefetch had not finished when its handle was dropped: {info:?}"
        );
    }
}

#[test]
fn accessed_by_maps_host_memory_in_place() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let k = kernel(&svm, "sum", SUM);
        let n = 8192;
        let src = svm.alloc_from_slice(&vec![5u32; n]).expect("src");
        let mut out = svm.alloc_vec::<u32>(1024).expect("out");
        let other = svm.alloc_vec::<u32>(16).expect("other");
        if !crate::accessed_by_built(&svm) {
            return;
        }
        let r = svm.advise(out.as_ptr() as *const u8, 4096, Advice::AccessedBy);
        if !svm.coherent_mode_available() {
            assert!(matches!(r, Err(AdviseError::Unsupported(_))), "{r:?}");
            eprintln!("SKIP: no host import on this device (AccessedBy refused: {r:?})");
            return;
        }
        r.expect("AccessedBy");
        // One window at a time.
        assert!(matches!(
            svm.advise(other.as_ptr() as *const u8, 64, Advice::AccessedBy),
            Err(AdviseError::Unsupported(_))
        ));
        svm.advise(src.as_ptr() as *const u8, n * 4, Advice::ReadMostly).expect("read mostly");
        let s0 = svm.stats();
        launch_sum(&svm, &k, &src, &mut out);
        let s1 = svm.stats().since(&s0);
        assert_eq!(s1.h2d_pages, 8, "{backend}: only src moved; out is used in place");
        assert_eq!(out[0], 5 * n as u32, "{backend}");
        let s2 = svm.stats().since(&s0);
        assert_eq!((s2.cpu_faults, s2.d2h_pages), (0, 0), "{backend}: the result is already in host memory");
        // The CPU's writes are seen by the next kernel with no upload.
        out[0] = 0;
        launch_sum(&svm, &k, &src, &mut out);
        assert_eq!(out[0], 5 * n as u32);
        assert_eq!(svm.stats().since(&s0).h2d_pages, 8, "{backend}: src kept (ReadMostly), out in place");
        // Unset: out migrates normally again.
        svm.advise(out.as_ptr() as *const u8, 4096, Advice::UnsetAccessedBy).expect("unset");
        let s3 = svm.stats();
        launch_sum(&svm, &k, &src, &mut out);
        assert_eq!(svm.stats().since(&s3).h2d_pages, 1, "{backend}: out migrates again");
        assert_eq!(out[0], 5 * n as u32);
        // Bad ranges are refused.
        let stack = [0u8; 8];
        assert!(matches!(svm.advise(stack.as_ptr(), 8, Advice::ReadMostly), Err(AdviseError::BadRange { .. })));
    }
}
