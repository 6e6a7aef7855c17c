//! Bad input and injected failures: each gets a clear error, no crash, no
//! lost data. Already covered in `runtime/tests/gpu/bad_input.rs` and not
//! repeated here: null / out-of-arena / freed / undeclared / misaligned /
//! read-only kernel pointers (`kernel_pointer_errors`), freed and foreign
//! declared ranges (`declared_ranges_must_be_allocated`), foreign /
//! interior / double free, zero-size, too-large and arena-exhausted
//! allocations (`free_errors`), reuse reads zero (`reused_memory_is_zeroed`),
//! device pool exhausted (`pool_exhausted_is_an_error_and_loses_nothing`),
//! fork (`fork_child_cannot_read_stale_data`), CPU use after free
//! (`cpu_use_after_free_crashes`); second runtime sequentially
//! (`basics::teardown_and_two_runtimes`).
//!
//! Not reachable from the public API: the fault handler thread dying. The
//! service (`svm_migrate::service::serve_one`) runs the handler under
//! `catch_unwind` and turns a panic into a fatal fault (message, then the
//! faulting thread crashes), and the runtime's handler panics only on
//! broken internal invariants (`fault_span`'s "faulting page is allocated",
//! checked just before against the page table). The update lock is a
//! `parking_lot` mutex, which is not poisoned by a panic.

use std::time::{Duration, Instant};

use svm::{
    Access, AccessMode, AllocError, Arg, Binding, DeviceError, FaultBackendKind, KernelError, KernelFaultKind,
    LaunchDescriptor, LaunchError, Location, SvmDescriptor, SvmError,
};

use crate::{child_role, ctx, ctx_migrating, in_child, k, kernel, small, wg, BACKENDS, PAGE_WORDS};

/// Extreme values that are valid, or refused with a typed error: never a
/// panic. A launch timeout of `Duration::MAX` is no limit (the deadline
/// overflowed `Instant` and panicked after the pass was submitted, leaving
/// its flight for ever: every later free waited on it); a pointer advanced
/// by any count wraps as documented; an empty vector's prefetch is
/// no error; a pool of 0 bytes or of `u64::MAX` is a configuration error.
#[test]
fn extreme_values_are_not_panics() {
    for pool in [0u64, u64::MAX] {
        let r = svm::Svm::with_descriptor(&SvmDescriptor::default().arena_size(64 << 20).pool_size(pool));
        match r {
            Err(SvmError::Config(_)) => {}
            Err(SvmError::NoAdapter(_)) if std::env::var("SVM_REQUIRE_GPU").as_deref() != Ok("1") => {}
            other => panic!("pool of {pool} bytes: {other:?}"),
        }
    }
    // An arena size given explicitly is taken as given in every mode, also
    // when it equals the software mode's default (the sparse and coherent
    // modes took 64 GiB for "left at the default" and made 1 GiB): made, or
    // refused by what the device binds, never silently smaller.
    for mode in [svm::MappingMode::Sparse, svm::MappingMode::Coherent] {
        let desc = small(BACKENDS[0]).arena_size(SvmDescriptor::DEFAULT_ARENA_SIZE).mapping(mode);
        match svm::Svm::with_descriptor(&desc) {
            Ok(s) => assert_eq!(s.arena_size(), SvmDescriptor::DEFAULT_ARENA_SIZE, "{mode:?}"),
            Err(e) => eprintln!("{mode:?}, a 64 GiB arena: refused here ({e})"),
        }
    }
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let ka = kernel(&svm, "affine", k::AFFINE);
    let mut v = svm.alloc_from_slice(&vec![4u32; PAGE_WORDS]).expect("v");
    let args = [Arg::ptr(v.as_ptr()), Arg::U32(v.len() as u32), Arg::U32(2), Arg::U32(1)];
    let desc = LaunchDescriptor {
        args: &args,
        access: &[Access::read_write(&mut v)],
        bindings: &[],
        workgroups: wg(PAGE_WORDS),
    };
    // A zero timeout is refused before anything runs (every kernel would
    // run past it, and a timeout declares the device lost).
    let zero = svm::LaunchOptions::default().timeout(Duration::ZERO);
    assert!(matches!(svm.launch_with(&ka, &desc, &zero), Err(LaunchError::ZeroTimeout)));
    let opts = svm::LaunchOptions::default().timeout(Duration::MAX);
    svm.launch_with(&ka, &desc, &opts).expect("a launch with no practical time limit");
    assert_eq!(v[7], 9, "one launch ran (the refused one did nothing)");
    drop(v);
    let p = svm::ManagedPtr::<u64>::from_addr(0x1000);
    assert_eq!(p.add(usize::MAX).addr(), 0x1000u64.wrapping_add((usize::MAX as u64).wrapping_mul(8)));
    let empty = svm.alloc_vec::<u32>(0).expect("empty");
    // (Its one byte's page, at most.)
    assert!(empty.prefetch(Location::Device).wait().expect("an empty vector's prefetch") <= 1);
    assert!(empty.prefetch(Location::Host).wait().expect("an empty vector's prefetch") <= 1);
}

/// A garbled setting in the environment is refused at creation, naming the
/// value, whatever the device (`SVM_MAPPED_POOL=yes` was taken for on;
/// `SVM_WINDOWS` was read only where the device has binding arrays).
#[test]
fn garbled_environment_is_refused() {
    const VARS: [&str; 4] = ["SVM_MAPPING_MODE", "SVM_FAULT_BACKEND", "SVM_WINDOWS", "SVM_MAPPED_POOL"];
    if let Some(var) = child_role() {
        // (Nothing set that the variable stands in for.)
        let r = svm::Svm::with_descriptor(&SvmDescriptor::default().arena_size(256 << 20).pool_size(64 << 20));
        match r {
            Err(SvmError::NoAdapter(_)) if std::env::var("SVM_REQUIRE_GPU").as_deref() != Ok("1") => {}
            Err(e) => assert!(e.to_string().contains("garbled"), "{var}: the error does not name the value: {e}"),
            Ok(_) => panic!("{var}=garbled was accepted"),
        }
        return;
    }
    for var in VARS {
        let o = crate::in_child_with("bad_input::garbled_environment_is_refused", var, &[(var, "garbled")]);
        assert!(
            o.status.success(),
            "{var}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Bad descriptors are refused before anything is created (no GPU needed).
#[test]
fn descriptor_errors() {
    let d = || SvmDescriptor::default().arena_size(64 << 20).pool_size(8 << 20);
    for chunk in [0usize, 3000, 4096 * 3, 4 << 20, 2048] {
        let r = svm::Svm::with_descriptor(&d().fault_chunk(chunk));
        assert!(matches!(r, Err(SvmError::Config(_))), "fault_chunk {chunk}: {r:?}");
    }
    for arena in [0usize, SvmDescriptor::MAX_ARENA_SIZE + 1, usize::MAX] {
        let r = svm::Svm::with_descriptor(&d().arena_size(arena));
        assert!(matches!(r, Err(SvmError::Config(_))), "arena {arena}: {r:?}");
    }
    // A pool past the PTE's frame field (2^24 pages, 64 GiB), or past the
    // windows the device binds: refused before any memory is made, never
    // wrong words.
    let r = svm::Svm::with_descriptor(&d().pool_size(64 << 30));
    match r {
        Err(SvmError::Config(m)) => assert!(m.contains("frame field") || m.contains("windows"), "{m}"),
        Err(SvmError::NoAdapter(_)) if std::env::var("SVM_REQUIRE_GPU").as_deref() != Ok("1") => {}
        other => panic!("pool of 64 GiB: {other:?}"),
    }
}

#[test]
fn alloc_size_errors() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let arena = svm.arena_size();
    assert!(matches!(svm.alloc(arena + 1), Err(AllocError::TooLarge { .. })));
    assert!(matches!(svm.alloc(usize::MAX), Err(AllocError::TooLarge { .. })));
    // Element count times size overflows.
    assert!(matches!(svm.alloc_vec::<u64>(usize::MAX / 4), Err(AllocError::TooLarge { .. })));
    assert!(svm.alloc_vec::<u8>(0).is_ok(), "an empty vec still gets an address (1 byte)");
    // The whole arena in one piece, then nothing more.
    let all = svm.alloc(arena).expect("whole arena");
    assert!(matches!(svm.alloc(1), Err(AllocError::ArenaExhausted { largest_free: 0, .. })));
    svm.free(all.as_ptr()).expect("free");
    assert_eq!(svm.live_allocations(), 0);
    let v = svm.alloc_vec::<u32>(7).expect("works again");
    assert_eq!(v.len(), 7);
}

#[test]
fn launch_input_errors() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let ka = kernel(&svm, "affine", k::AFFINE);
    let mut v = svm.alloc_from_slice(&vec![4u32; 2 * PAGE_WORDS]).expect("v");
    let args = [Arg::ptr(v.as_ptr()), Arg::U32(v.len() as u32), Arg::U32(1), Arg::U32(1)];
    // Too many argument words.
    let many = vec![Arg::U32(0); 65];
    let r = svm.launch(&ka, &LaunchDescriptor { args: &many, access: &[], bindings: &[], workgroups: [1, 1, 1] });
    assert!(matches!(r, Err(LaunchError::TooManyArgs { words: 65, max: 64 })), "{r:?}");
    let ptrs = vec![Arg::Ptr(0); 33];
    let r = svm.launch(&ka, &LaunchDescriptor { args: &ptrs, access: &[], bindings: &[], workgroups: [1, 1, 1] });
    assert!(matches!(r, Err(LaunchError::TooManyArgs { words: 66, .. })), "{r:?}");
    // Dispatch beyond the device limit.
    let r = svm.launch(
        &ka,
        &LaunchDescriptor {
            args: &args,
            access: &[Access::read_write(&mut v)],
            bindings: &[],
            workgroups: [u32::MAX, 1, 1],
        },
    );
    assert!(matches!(r, Err(LaunchError::BadDispatch { .. })), "{r:?}");
    // Declared ranges: overflowing length, straddling the allocation's end,
    // starting before the arena.
    let p = v.as_ptr().cast::<u8>();
    for (addr, len) in [(p, usize::MAX), (p, 3 * 4096), (p.wrapping_sub(4096), 8192), (p.wrapping_add(1 << 40), 4)] {
        // SAFETY: the ranges are refused before anything is touched.
        let access = [unsafe { Access::raw(addr, len, AccessMode::ReadWrite) }];
        let r =
            svm.launch(&ka, &LaunchDescriptor { args: &args, access: &access, bindings: &[], workgroups: [1, 1, 1] });
        assert!(matches!(r, Err(LaunchError::BadRange { .. })), "{addr:?}+{len:#x}: {r:?}");
    }
    // A zero-length declared range declares nothing: the access is refused.
    // SAFETY: as above.
    let access = [unsafe { Access::raw(p, 0, AccessMode::ReadWrite) }];
    let r = svm.launch(&ka, &LaunchDescriptor { args: &args, access: &access, bindings: &[], workgroups: [1, 1, 1] });
    assert!(
        matches!(&r, Err(LaunchError::Kernel { faults, .. }) if faults[0].kind == KernelFaultKind::NotDeclared),
        "{r:?}"
    );
    assert!(v.iter().all(|&x| x == 4), "nothing changed");
    assert_eq!(svm.stats().launches, 1, "only the kernel that ran counts");
    // Kernels that do not compile: syntax, missing entry point, atomics
    // through a managed pointer (a vec2, not an atomic).
    for (label, src, entry) in [
        ("syntax", "@compute @workgroup_size(1) fn main() { let x = ; }", "main"),
        ("entry", "@compute @workgroup_size(1) fn main() {}", "other"),
        ("atomic", "@compute @workgroup_size(1) fn main() { atomicAdd(svm_arg_ptr(0u), 1u); }", "main"),
        // Past the device's workgroup limits (a launch-time failure before).
        ("workgroup", "@compute @workgroup_size(1024, 1024) fn main() {}", "main"),
        (
            "invocations",
            "@compute @workgroup_size(256, 256, 64) fn main() { svm_store_u32(svm_arg_ptr(0u), 1u); }",
            "main",
        ),
    ] {
        match svm.create_kernel(&svm::KernelDescriptor { label, source: src, entry_point: entry }) {
            Err(KernelError::Compile { label: l, message }) => {
                assert_eq!(l, label);
                assert!(!message.is_empty());
            }
            other => panic!("{label}: expected a compile error, got {other:?}"),
        }
    }
    // A binding of its own in the runtime's group, in a kernel that uses
    // the prelude.
    let src = "@group(3) @binding(9) var<storage, read_write> mine: array<u32>;
        @compute @workgroup_size(1) fn main() { mine[0] = svm_arg_u32(0u); }";
    match svm.create_kernel(&svm::KernelDescriptor { label: "binding", source: src, entry_point: "main" }) {
        Err(KernelError::Binding { name, group: 3, binding: 9, .. }) => assert_eq!(name, "mine"),
        other => panic!("binding: expected a binding error, got {other:?}"),
    }
    // Launch arguments given to a kernel that reads none: a plain WGSL
    // kernel (no prelude), and one using the prelude without `svm_arg_*`;
    // one reading them through a helper of its own takes them.
    let plain = "@group(0) @binding(0) var<storage, read_write> d: array<u32>;
        @compute @workgroup_size(1) fn main() { d[0] = d[0] + 1u; }";
    let no_args = "@group(0) @binding(0) var<storage, read_write> d: array<u32>;
        @compute @workgroup_size(1) fn main() { if svm_is_null(vec2<u32>(0u, 0u)) { d[0] = d[0] + 1u; } }";
    let helper = "fn n() -> u32 { return svm_arg_u32(0u); }
        @group(0) @binding(0) var<storage, read_write> d: array<u32>;
        @compute @workgroup_size(1) fn main() { d[0] = d[0] + n(); }";
    for (label, src, reads) in [("plain", plain, false), ("no_args", no_args, false), ("helper", helper, true)] {
        let kk = match svm.create_kernel(&svm::KernelDescriptor { label, source: src, entry_point: "main" }) {
            Ok(kk) => kk,
            Err(e) => panic!("{label}: {e}"),
        };
        let mut d = svm.alloc_from_slice(&[1u32; 4]).expect("d");
        let one = [Arg::U32(1)];
        let r = svm.launch(
            &kk,
            &LaunchDescriptor { args: &one, bindings: &[Binding::read_write(&mut d)], ..Default::default() },
        );
        if reads {
            r.unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(d[0], 2, "{label}");
        } else {
            match r {
                Err(LaunchError::ArgsUnread { kernel, given: 1 }) => assert_eq!(kernel, label),
                other => panic!("{label}: expected ArgsUnread, got {other:?}"),
            }
            assert_eq!(d[0], 1, "{label}: nothing ran");
        }
    }
    // The runtime is unharmed.
    svm.launch(
        &ka,
        &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut v)], bindings: &[], workgroups: [1, 1, 1] },
    )
    .expect("good launch");
    assert!(v.iter().all(|&x| x == 5));
}

/// A second runtime in the process: both work at once from two threads;
/// each refuses the other's pointers and kernels.
#[test]
fn two_runtimes_concurrently() {
    let Some(a) = ctx(small(FaultBackendKind::Uffd)) else { return };
    let Some(b) = ctx(small(FaultBackendKind::Mprotect)) else { return };
    let ka = kernel(&a, "affine", k::AFFINE);
    let kb = kernel(&b, "affine", k::AFFINE);
    let n = 16 * PAGE_WORDS;
    let va = a.alloc_from_slice(&vec![1u32; n]).expect("va");
    let vb = b.alloc_from_slice(&vec![2u32; n]).expect("vb");
    let (pa, pb) = (va.as_ptr() as usize, vb.as_ptr() as usize);
    // A kernel of one runtime launched on the other: a typed error, before
    // anything is locked or changed.
    let before = a.stats();
    let r = a.launch(&kb, &LaunchDescriptor { args: &[], access: &[], bindings: &[], workgroups: [1, 1, 1] });
    assert!(matches!(r, Err(svm::LaunchError::ForeignKernel(_))), "foreign kernel: {r:?}");
    assert_eq!(a.stats(), before, "nothing launched");
    std::thread::scope(|s| {
        for (svm, kern, mut v, own, foreign, base) in [(&a, &ka, va, pa, pb, 1u32), (&b, &kb, vb, pb, pa, 2)] {
            s.spawn(move || {
                for round in 1..=8u32 {
                    let args = [Arg::Ptr(own as u64), Arg::U32(n as u32), Arg::U32(1), Arg::U32(1)];
                    svm.launch(kern, &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut v)], bindings: &[], workgroups: wg(n) })
                        .expect("own launch");
                    assert!(v.iter().all(|&x| x == base + round), "{}: round {round}", svm.fault_backend());
                    // The other runtime's pointer, in a kernel and as a declared range.
                    let args = [Arg::Ptr(foreign as u64), Arg::U32(1), Arg::U32(1), Arg::U32(1)];
                    let r = svm.launch(kern, &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut v)], bindings: &[], workgroups: [1, 1, 1] });
                    assert!(
                        matches!(&r, Err(LaunchError::Kernel { faults, .. }) if faults[0].kind == KernelFaultKind::OutOfArena),
                        "{r:?}"
                    );
                    // SAFETY: refused before use.
                    let access = [unsafe { Access::raw(foreign as *const u8, 4, AccessMode::Read) }];
                    let r = svm.launch(kern, &LaunchDescriptor { args: &args, access: &access, bindings: &[], workgroups: [1, 1, 1] });
                    assert!(matches!(r, Err(LaunchError::BadRange { .. })), "{r:?}");
                    assert!(svm.free(foreign as *mut u8).is_err());
                }
                assert!(v.iter().all(|&x| x == base + 8));
            });
        }
    });
    assert_eq!((a.live_allocations(), b.live_allocations()), (0, 0));
}

/// `free` of a range a running kernel reads, from another thread: launches
/// are synchronous and hold the update lock, so the free waits for the
/// kernel, then succeeds; the kernel saw the data, not freed memory.
#[test]
fn free_waits_for_running_kernel() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let ks = kernel(&svm, "spin", k::SPIN);
        let n = PAGE_WORDS;
        let p = svm.alloc(n * 4).expect("p").as_ptr() as usize;
        for i in 0..n {
            // SAFETY: p is a live allocation of n words.
            unsafe { (p as *mut u32).add(i).write(i as u32 * 3) };
        }
        let mut out = svm.alloc_vec::<u32>(1).expect("out");
        let mode = if backend == FaultBackendKind::Uffd { AccessMode::Read } else { AccessMode::ReadWrite };
        let spin = |out: &mut svm::ManagedVec<u32>, iters: u32| {
            let args = [Arg::Ptr(p as u64), Arg::ptr(out.as_ptr()), Arg::U32(n as u32), Arg::U32(iters)];
            // SAFETY: no reference into p's allocation exists.
            let access = [unsafe { Access::raw(p as *const u8, n * 4, mode) }, Access::read_write(out)];
            svm.launch(&ks, &LaunchDescriptor { args: &args, access: &access, bindings: &[], workgroups: [1, 1, 1] })
        };
        // Warm up (the first launch uploads the page table), then calibrate
        // to a kernel of ~500 ms.
        spin(&mut out, 1).expect("warm-up");
        let mut iters = 16u32;
        loop {
            let t = Instant::now();
            spin(&mut out, iters).expect("calibrate");
            let dt = t.elapsed().as_secs_f64();
            if dt > 0.2 || iters >= 1 << 24 {
                iters = ((f64::from(iters) * 0.5 / dt) as u32).max(iters);
                break;
            }
            iters *= 4;
        }
        let want = (0..iters).fold(0u32, |s, r| (0..n as u32).fold(s, |s, i| s.wrapping_add((i * 3) ^ r)));
        let started = std::sync::atomic::AtomicBool::new(false);
        let (free_start, free_end, launch_end) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                while !started.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::yield_now();
                }
                std::thread::sleep(Duration::from_millis(60));
                let t0 = Instant::now();
                svm.free(p as *mut u8).expect("free after the kernel");
                (t0, Instant::now())
            });
            started.store(true, std::sync::atomic::Ordering::Release);
            spin(&mut out, iters).expect("launch");
            let launch_end = Instant::now();
            let (a, b) = h.join().expect("free thread");
            (a, b, launch_end)
        });
        // The free was called well before the kernel ended, and returned
        // only around its end (the lock is released inside `launch`, a
        // moment before it returns: 50 ms of scheduling slack).
        let slack = Duration::from_millis(50);
        assert!(
            free_start + 2 * slack < launch_end,
            "{backend}: free was called while the kernel ran ({iters} iterations)"
        );
        assert!(free_end + slack >= launch_end, "{backend}: free returned before the kernel finished");
        assert_eq!(out[0], want, "{backend}: the kernel read the live data");
        assert_eq!(svm.live_allocations(), 1);
        assert_eq!(svm.device_resident_pages(), 0, "{backend}: out read back, p's frames dropped");
        eprintln!("{backend}: kernel {:?}, free waited {:?}", launch_end - free_start, free_end - free_start);
    }
}

/// Device loss after a mix of launches: launches, kernels and prefetches
/// fail with `DeviceError::Lost`; `lost_ranges` names exactly the
/// device-owned pages; everything else keeps its bytes.
#[test]
fn device_lost_mid_run() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let kf = kernel(&svm, "fill", k::FILL);
        let kc = kernel(&svm, "copy", k::COPY);
        let n = 8 * PAGE_WORDS;
        let a = svm.alloc_from_slice(&vec![1u32; n]).expect("a"); // never on the device
        let mut b = svm.alloc_vec::<u32>(n).expect("b"); // written by a kernel, read back
        let mut c = svm.alloc_vec::<u32>(n).expect("c"); // device-owned: lost
        let mut d = svm.alloc_vec::<u32>(n).expect("d"); // read by the last launch
        let e = svm.alloc_from_slice(&vec![5u32; n]).expect("e"); // prefetched: lost
        let mut f = svm.alloc_vec::<u32>(n).expect("f"); // written by the CPU after the last launch
        let fill = |v: &mut svm::ManagedVec<u32>, mul: u32, add: u32| {
            let args = [Arg::ptr(v.as_ptr()), Arg::U32(n as u32), Arg::U32(mul), Arg::U32(add)];
            svm.launch(
                &kf,
                &LaunchDescriptor { args: &args, access: &[Access::read_write(v)], bindings: &[], workgroups: wg(n) },
            )
        };
        fill(&mut b, 2, 1).expect("b");
        assert!(b.iter().enumerate().all(|(i, &x)| x == 2 * i as u32 + 1));
        fill(&mut d, 1, 500).expect("d");
        assert!(d.iter().enumerate().all(|(i, &x)| x == i as u32 + 500));
        let args = [Arg::ptr(d.as_ptr()), Arg::ptr(c.as_ptr()), Arg::U32(n as u32)];
        svm.launch(
            &kc,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read(&d), Access::read_write(&mut c)],
                bindings: &[],
                workgroups: wg(n),
            },
        )
        .expect("last launch");
        svm.prefetch(e.as_ptr().cast(), n * 4, Location::Device).wait().expect("prefetch");
        f.iter_mut().enumerate().for_each(|(i, x)| *x = i as u32 ^ 0xffff);
        assert!(svm.lost_ranges().is_empty(), "{backend}: nothing lost while the device works");

        svm.destroy_device_for_testing();

        let bytes = n * 4;
        assert_eq!(svm.lost_ranges(), vec![(c.as_ptr() as usize, bytes), (e.as_ptr() as usize, bytes)], "{backend}");
        let r = fill(&mut b, 1, 1);
        assert!(matches!(r, Err(LaunchError::Device(DeviceError::Lost(_)))), "{backend}: {r:?}");
        let r = svm.create_kernel(&svm::KernelDescriptor { label: "late", source: k::FILL, entry_point: "main" });
        assert!(matches!(r, Err(KernelError::Device(DeviceError::Lost(_)))), "{backend}: {r:?}");
        let r = svm.prefetch(a.as_ptr().cast(), bytes, Location::Device).wait();
        assert!(matches!(r, Err(LaunchError::Device(DeviceError::Lost(_)))), "{backend}: {r:?}");
        let r = svm.prefetch(c.as_ptr().cast(), bytes, Location::Host).wait();
        assert!(matches!(r, Err(LaunchError::Device(DeviceError::Lost(_)))), "{backend}: {r:?}");
        // Host-resident data is intact.
        assert!(a.iter().all(|&x| x == 1), "{backend}: a");
        assert!(b.iter().enumerate().all(|(i, &x)| x == 2 * i as u32 + 1), "{backend}: b");
        assert!(d.iter().enumerate().all(|(i, &x)| x == i as u32 + 500), "{backend}: d");
        assert!(f.iter().enumerate().all(|(i, &x)| x == i as u32 ^ 0xffff), "{backend}: f");
        // Allocation and free go on without the device; freeing a lost
        // range drops it from the list.
        let mut g = svm.alloc_vec::<u32>(n).expect("alloc after loss");
        g[n - 1] = 9;
        assert_eq!(g[n - 1], 9);
        let (ep, ..) = (e.as_ptr() as usize,);
        drop(c);
        assert_eq!(svm.lost_ranges(), vec![(ep, bytes)], "{backend}");
        drop(e);
        assert!(svm.lost_ranges().is_empty(), "{backend}");
        assert_eq!(svm.device_resident_pages(), 0);
        // Dropping the runtime after the loss is prompt (see
        // `device_lost_drop_is_prompt`).
        drop(svm);
    }
}

/// Dropping a runtime whose device was lost returns promptly.
#[test]
fn device_lost_drop_is_prompt() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let kf = kernel(&svm, "fill", k::FILL);
    let mut v = svm.alloc_vec::<u32>(PAGE_WORDS).expect("v");
    let args = [Arg::ptr(v.as_ptr()), Arg::U32(PAGE_WORDS as u32), Arg::U32(1), Arg::U32(0)];
    svm.launch(
        &kf,
        &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut v)], bindings: &[], workgroups: [16, 1, 1] },
    )
    .expect("launch");
    svm.destroy_device_for_testing();
    drop(v);
    drop(kf);
    let t = Instant::now();
    drop(svm);
    assert!(t.elapsed() < Duration::from_secs(5), "drop after device loss took {:?}", t.elapsed());
}

/// A CPU access to a page whose only copy was on the lost device crashes
/// with a message naming the page (in a child process).
#[test]
fn device_lost_cpu_access_crashes() {
    if let Some(role) = child_role() {
        let backend = FaultBackendKind::parse(&role).expect("role");
        let svm = ctx_migrating(small(backend)).expect("child needs the GPU its parent had");
        let kf = kernel(&svm, "fill", k::FILL);
        let mut v = svm.alloc_vec::<u32>(4 * PAGE_WORDS).expect("v");
        let args = [Arg::ptr(v.as_ptr()), Arg::U32(v.len() as u32), Arg::U32(1), Arg::U32(0)];
        svm.launch(
            &kf,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read_write(&mut v)],
                bindings: &[],
                workgroups: [4, 1, 1],
            },
        )
        .expect("launch");
        svm.destroy_device_for_testing();
        println!("CHILD lost page {:#x}", v.as_ptr() as usize);
        let x = v[0]; // must not return
        println!("CHILD read {x}");
        std::process::exit(0);
    }
    if ctx_migrating(small(BACKENDS[0])).is_none() {
        return;
    }
    for backend in BACKENDS {
        let o = in_child("bad_input::device_lost_cpu_access_crashes", backend.name());
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        use std::os::unix::process::ExitStatusExt;
        let sig = o.status.signal();
        assert!(
            matches!(sig, Some(libc::SIGSEGV | libc::SIGABRT | libc::SIGBUS)),
            "{backend}: child ended with {:?}\nstdout: {out}\nstderr: {err}",
            o.status
        );
        assert!(!out.contains("CHILD read"), "{backend}: the lost page was read");
        let page = out
            .split("CHILD lost page ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .expect("child printed the page");
        assert!(err.contains(page) && err.contains("lost"), "{backend}: message does not name the page {page}: {err}");
    }
}

/// Oversubscription with a replayable launch: the pool is full of another
/// allocation's device-owned pages, and a replayable kernel needs one more
/// page. A declared launch evicts what it needs; a replayable one should
/// too.
#[test]
fn replayable_launch_evicts_under_pressure() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend).pool_size(1 << 20)) else { return };
        let kf = kernel(&svm, "fill", k::FILL);
        let mut big = svm.alloc_vec::<u32>((1 << 20) / 4).expect("big");
        let n = big.len();
        let args = [Arg::ptr(big.as_ptr()), Arg::U32(n as u32), Arg::U32(1), Arg::U32(0)];
        svm.launch(
            &kf,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read_write(&mut big)],
                bindings: &[],
                workgroups: wg(n),
            },
        )
        .expect("fill the pool");
        assert_eq!(svm.device_resident_pages(), 256);
        let little = svm.alloc_vec::<u32>(PAGE_WORDS).expect("little");
        let args = [Arg::ptr(little.as_ptr()), Arg::U32(PAGE_WORDS as u32), Arg::U32(2), Arg::U32(1)];
        let r = svm.launch_with(
            &kf,
            &LaunchDescriptor { args: &args, access: &[], bindings: &[], workgroups: wg(PAGE_WORDS) },
            // SAFETY: no reference into `little` is alive during the call.
            &unsafe { svm::LaunchOptions::replayable().allow_undeclared_writes() },
        );
        assert!(r.is_ok(), "{backend}: replayable launch of one page with a full pool: {r:?}");
        assert!(little.iter().enumerate().all(|(i, &x)| x == 2 * i as u32 + 1), "{backend}");
        assert!(big.iter().enumerate().all(|(i, &x)| x == i as u32), "{backend}");
    }
}

/// Oversubscription with a prefetch right after a launch: the finished
/// launch's pages should be evictable for the prefetch, as they are for the
/// next launch.
#[test]
fn prefetch_after_launch_evicts_under_pressure() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend).pool_size(1 << 20)) else { return };
        let kf = kernel(&svm, "fill", k::FILL);
        let mut a = svm.alloc_vec::<u32>(200 * PAGE_WORDS).expect("a");
        let n = a.len();
        let args = [Arg::ptr(a.as_ptr()), Arg::U32(n as u32), Arg::U32(1), Arg::U32(0)];
        svm.launch(
            &kf,
            &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut a)], bindings: &[], workgroups: wg(n) },
        )
        .expect("a on the device");
        let b = svm.alloc_from_slice(&vec![3u32; 100 * PAGE_WORDS]).expect("b");
        let r = svm.prefetch(b.as_ptr().cast(), b.len() * 4, Location::Device).wait();
        assert_eq!(r.ok(), Some(100), "{backend}: prefetch of 100 pages with 56 free and 200 evictable");
        assert!(b.iter().all(|&x| x == 3) && a.iter().enumerate().all(|(i, &x)| x == i as u32), "{backend}");
    }
}
