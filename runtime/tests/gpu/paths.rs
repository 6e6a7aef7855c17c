//! The two access-check paths of the prelude: launches mapping at most
//! `svm_shaders::MAX_EXTENTS` extents check accesses against them (no
//! page-table load); launches mapping more use the page table. Both give the
//! same results and the same errors.

use svm::{Access, Arg, KernelFaultKind, LaunchDescriptor, LaunchError, LaunchOptions, Location, ManagedVec};

use crate::{ctx, ctx_migrating, kernel, small, BACKENDS};

/// `dst_k[i] = src_k[i] * 2 + 1` for `pairs` pairs; pair k's pointers in
/// words 4k (src) and 4k + 2 (dst); `pairs` in word 20.
const PAIRS: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let pairs = svm_arg_u32(20u);
    let i = gid.x;
    if (i >= 1024u) { return; }
    for (var k = 0u; k < pairs; k++) {
        let src = svm_arg_ptr(4u * k);
        let dst = svm_arg_ptr(4u * k + 2u);
        svm_store_u32(svm_index(dst, i, 4u), svm_load_u32(svm_index(src, i, 4u)) * 2u + 1u);
    }
}";

const N: usize = 1024;

fn args(v: &[ManagedVec<u32>], pairs: u32) -> Vec<Arg> {
    let mut a: Vec<Arg> = (0..10).map(|k| Arg::ptr(v[k].as_ptr())).collect();
    a.push(Arg::U32(pairs));
    a
}

/// Sources read-only, destinations writable: alternating rights, so every
/// vector is an extent of its own.
fn access(v: &mut [ManagedVec<u32>], pairs: usize) -> Vec<Access<'_>> {
    v.iter_mut()
        .take(2 * pairs)
        .enumerate()
        .map(|(k, x)| if k % 2 == 0 { Access::read(x) } else { Access::read_write(x) })
        .collect()
}

/// Ten one-page vectors, vector k filled with `k * 1000 + add`.
fn vectors(svm: &svm::Svm, add: u32) -> Vec<ManagedVec<u32>> {
    (0..10u32).map(|k| svm.alloc_from_slice(&vec![k * 1000 + add; N]).expect("alloc")).collect()
}

/// Launch `PAIRS` over the first `pairs` pairs, all declared.
fn launch_pairs(svm: &svm::Svm, k: &svm::Kernel, v: &mut [ManagedVec<u32>], pairs: u32) -> Result<(), LaunchError> {
    let a = args(v, pairs);
    svm.launch(
        k,
        &LaunchDescriptor { args: &a, access: &access(v, pairs as usize), bindings: &[], workgroups: [16, 1, 1] },
    )
}

/// Every destination of the first `pairs` pairs holds its source * 2 + 1.
fn check_pairs(v: &[ManagedVec<u32>], pairs: u32, add: u32, what: &str) {
    for p in 0..pairs as usize {
        let want = (2 * p as u32 * 1000 + add) * 2 + 1;
        assert!(v[2 * p + 1].iter().all(|&x| x == want), "{what}: pair {p}");
    }
}

/// Launch `PAIRS` over `pairs` pairs with the last destination undeclared:
/// every invocation's store is refused as `NotDeclared`, at that vector,
/// which keeps its contents.
fn expect_undeclared(svm: &svm::Svm, k: &svm::Kernel, v: &mut [ManagedVec<u32>], pairs: u32, what: &str) {
    let last = 2 * pairs as usize - 1;
    let (undeclared, before) = (v[last].as_ptr() as u64, v[last].to_vec());
    let a = args(v, pairs);
    let mut acc = access(v, pairs as usize);
    acc.pop();
    match svm.launch(k, &LaunchDescriptor { args: &a, access: &acc, bindings: &[], workgroups: [16, 1, 1] }) {
        Err(LaunchError::Kernel { faults, total }) => {
            assert_eq!(total as usize, N, "{what}: one refused store per invocation");
            for f in &faults {
                assert_eq!(f.kind, KernelFaultKind::NotDeclared, "{what}: {f:?}");
                assert!(f.addr >= undeclared && f.addr < undeclared + 4 * N as u64, "{what}");
            }
        }
        other => panic!("{what}: expected NotDeclared, got {other:?}"),
    }
    assert_eq!(v[last].to_vec(), before, "{what}: nothing written");
}

#[test]
fn extent_and_page_table_paths_agree() {
    const { assert!(svm::shaders::MAX_EXTENTS < 10, "the test maps 10 extents to overflow the table") };
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "pairs", PAIRS);
        let mut v = vectors(&svm, 0);
        for (pairs, path) in [(2u32, "extents"), (5, "page table")] {
            let s0 = svm.stats();
            launch_pairs(&svm, &k, &mut v, pairs).unwrap_or_else(|e| panic!("{backend} {path}: {e}"));
            let s = svm.stats().since(&s0);
            let used = if path == "extents" { s.extent_passes } else { s.page_table_passes };
            assert_eq!((used, s.extent_passes + s.page_table_passes), (1, 1), "{backend}: {path} path: {s:?}");
            check_pairs(&v, pairs, 0, &format!("{backend} {path}"));
        }
        // The same undeclared destination, refused on both paths with the
        // same diagnosis: with 4 + 1 ranges (extents) and 8 + 1 (page
        // table). The destination of the last pair is not declared.
        for (pairs, path) in [(3u32, "extents"), (5, "page table")] {
            let s0 = svm.stats();
            expect_undeclared(&svm, &k, &mut v, pairs, &format!("{backend} {path}"));
            let s = svm.stats().since(&s0);
            let used = if path == "extents" { s.extent_passes } else { s.page_table_passes };
            assert_eq!(used, 1, "{backend}: {path} path: {s:?}");
        }
        // A store through a read-only declaration: ReadOnly on both paths.
        for (pairs, path) in [(2u32, "extents"), (5, "page table")] {
            let a = args(&v, pairs);
            let dst = v[2 * pairs as usize - 1].as_ptr().cast::<u8>();
            let mut acc = access(&mut v, pairs as usize);
            acc.pop();
            // SAFETY: a read-only declaration; the contract concerns writable
            // ones only.
            acc.push(unsafe { Access::raw(dst, 4 * N, svm::AccessMode::Read) });
            let r = svm.launch(&k, &LaunchDescriptor { args: &a, access: &acc, bindings: &[], workgroups: [16, 1, 1] });
            assert!(
                matches!(&r, Err(LaunchError::Kernel { faults, .. }) if faults.iter().all(|f| f.kind == KernelFaultKind::ReadOnly)),
                "{backend} {path}: {r:?}"
            );
        }
    }
}

const COPY: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < svm_arg_u32(4u)) {
        svm_store_u32(svm_index(svm_arg_ptr(2u), i, 4u), svm_load_u32(svm_index(svm_arg_ptr(0u), i, 4u)));
    }
}";

/// Loads are issued before their check's outcome is known where that is
/// safe (software pool: any index; a sparse view in one window, as this
/// 64 MiB arena is on lavapipe: refused loads read a bound word instead) and
/// a refused load still yields 0.
#[test]
fn refused_loads_yield_zero() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend).arena_size(64 << 20)) else { return };
        let k = kernel(&svm, "copy", COPY);
        let n = 4 * 1024;
        let src = svm.alloc_from_slice(&vec![7u32; n]).expect("src");
        let freed = svm.alloc_from_slice(&vec![9u32; n]).expect("freed");
        let mut dst = svm.alloc_from_slice(&vec![0xdeadu32; n]).expect("dst");
        let freed_ptr = freed.as_ptr();
        drop(freed);
        let wg = [(n / 64) as u32, 1, 1];
        let args = [Arg::ptr(freed_ptr), Arg::ptr(dst.as_ptr()), Arg::U32(n as u32)];
        let r = svm.launch(
            &k,
            &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut dst)], bindings: &[], workgroups: wg },
        );
        match r {
            Err(LaunchError::Kernel { faults, total }) => {
                assert_eq!(total as usize, n, "{backend}");
                assert!(faults.iter().all(|f| f.kind == KernelFaultKind::Unallocated), "{backend}: {faults:?}");
            }
            other => panic!("{backend}: expected Unallocated, got {other:?}"),
        }
        assert!(dst.iter().all(|&x| x == 0), "{backend}: refused loads yield 0, nothing of the freed pages leaks");
        // The same kernel on a declared source copies it.
        let args = [Arg::ptr(src.as_ptr()), Arg::ptr(dst.as_ptr()), Arg::U32(n as u32)];
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read(&src), Access::read_write(&mut dst)],
                bindings: &[],
                workgroups: wg,
            },
        )
        .expect("copy");
        assert!(dst.iter().all(|&x| x == 7), "{backend}");
    }
}

/// The coherent mapping mode: kernels use the CPU's pages in place. Nothing
/// migrates or faults, results are there for the CPU right after the
/// launch, and the page table still refuses what the launch did not declare.
#[test]
fn coherent_mode_works_in_place() {
    for backend in BACKENDS {
        let desc = small(backend).arena_size(64 << 20).mapping(svm::MappingMode::Coherent);
        let svm = match svm::Svm::with_descriptor(&desc) {
            Ok(s) => s,
            Err(e) if !crate::VULKAN => return crate::refused_without_vulkan("the coherent mapping mode", &e),
            Err(e) if std::env::var("SVM_REQUIRE_VK_CAPS").as_deref() != Ok("1") => {
                eprintln!("SKIP: no coherent mode here ({e}); SVM_REQUIRE_VK_CAPS=1 makes this a failure");
                return;
            }
            Err(e) => panic!("coherent mode required: {e}"),
        };
        assert_eq!(svm.mapping_mode(), svm::MappingMode::Coherent);
        let k = kernel(&svm, "pairs", PAIRS);
        let mut v = vectors(&svm, 0);
        for pairs in [2u32, 5] {
            let s0 = svm.stats();
            launch_pairs(&svm, &k, &mut v, pairs).unwrap_or_else(|e| panic!("{backend}: {e}"));
            check_pairs(&v, pairs, 0, backend.to_string().as_str());
            let s = svm.stats().since(&s0);
            assert_eq!((s.h2d_pages, s.d2h_pages, s.cpu_faults), (0, 0, 0), "{backend}: nothing moves: {s:?}");
            assert_eq!(svm.device_resident_pages(), 0);
        }
        // The CPU writes, the next launch reads it, in place.
        v[0].fill(5);
        launch_pairs(&svm, &k, &mut v, 1).expect("launch");
        assert!(v[1].iter().all(|&x| x == 11), "{backend}");
        // Undeclared: refused, nothing written.
        expect_undeclared(&svm, &k, &mut v, 2, &backend.to_string());
        // Freed and allocated again: zeros, for the CPU and for the device
        // (the pages are zeroed in place: the device's import keeps them).
        let freed = v.pop().expect("ten vectors").as_ptr();
        v.push(svm.alloc_vec::<u32>(N).expect("again"));
        assert_eq!(v[9].as_ptr(), freed, "{backend}: the same pages again");
        assert!(v[9].iter().all(|&x| x == 0), "{backend}: zero-filled");
        v[8].fill(9);
        // Pair 4 reversed: v[9] (read) is the source, v[8] the destination.
        let a = args(&v, 5);
        let a = [&a[..8], &[a[9], a[8]], &a[10..]].concat();
        let (head, tail) = v.split_at_mut(8);
        let (v8, v9) = tail.split_at_mut(1);
        let mut acc = access(head, 4);
        acc.extend([Access::read(&v9[0]), Access::read_write(&mut v8[0])]);
        svm.launch(&k, &LaunchDescriptor { args: &a, access: &acc, bindings: &[], workgroups: [16, 1, 1] })
            .expect("launch");
        assert!(v[8].iter().all(|&x| x == 1), "{backend}: the device read zeros (0 * 2 + 1)");
        svm.validation_check().unwrap_or_else(|e| panic!("{backend}: validation: {e}"));
    }
}

/// A launch whose pages all lie in one segment other than the first binds
/// that segment first and runs the one-segment specialization with rebased
/// extents. On lavapipe (128 MiB per binding) the filler below puts the
/// checked data in the second segment of the pool (software: the filler's
/// frames stay on the device) or of the arena view (sparse, coherent).
#[test]
fn launch_in_a_later_segment() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend).arena_size(320 << 20).pool_size(256 << 20)) else { return };
        let kc = kernel(&svm, "copy", COPY);
        let k = kernel(&svm, "pairs", PAIRS);
        let mut filler = svm.alloc_vec::<u32>((130 << 20) / 4).expect("filler");
        let none = [Arg::Ptr(0), Arg::Ptr(0), Arg::U32(0)];
        svm.launch(
            &kc,
            &LaunchDescriptor {
                args: &none,
                access: &[Access::read_write(&mut filler)],
                bindings: &[],
                workgroups: [1, 1, 1],
            },
        )
        .expect("filler launch");
        let mut v = vectors(&svm, 7);
        launch_pairs(&svm, &k, &mut v, 3).unwrap_or_else(|e| panic!("{backend}: {e}"));
        check_pairs(&v, 3, 7, backend.to_string().as_str());
        // Refused there too, with the right diagnosis, and nothing leaks.
        expect_undeclared(&svm, &k, &mut v, 3, &backend.to_string());
        drop(filler);
    }
}

/// An arena view of more windows than four bindings (640 MiB: five windows
/// of lavapipe's 128 MiB), which needs the binding-array windows: launches
/// whose vectors lie in the first and in the fifth window, on the extent and
/// the page-table paths. With `SVM_WINDOWS=fixed` the runtime refuses the
/// arena with a clear error instead.
#[test]
fn arena_view_beyond_four_windows() {
    for mode in [svm::MappingMode::Sparse, svm::MappingMode::Coherent] {
        let desc = small(BACKENDS[0]).arena_size(640 << 20).mapping(mode);
        let svm = match svm::Svm::with_descriptor(&desc) {
            Ok(s) => s,
            Err(e) if !crate::VULKAN => {
                crate::refused_without_vulkan(&format!("the {mode:?} mapping mode"), &e);
                continue;
            }
            Err(svm::SvmError::Config(m)) if std::env::var("SVM_WINDOWS").as_deref() == Ok("fixed") => {
                assert!(m.contains("windows"), "{m}");
                continue;
            }
            Err(e) if std::env::var("SVM_REQUIRE_VK_CAPS").as_deref() != Ok("1") => {
                eprintln!("SKIP: {mode:?} with a 640 MiB arena unavailable here ({e})");
                continue;
            }
            Err(e) => panic!("{mode:?}: {e}"),
        };
        let k = kernel(&svm, "pairs", PAIRS);
        let mut v = vec![svm.alloc_from_slice(&vec![7u32; N]).expect("first")];
        let filler = svm.alloc_vec::<u8>(520 << 20).expect("filler");
        v.extend((1..10u32).map(|k| svm.alloc_from_slice(&vec![k * 1000 + 7; N]).expect("alloc")));
        let what = format!("{mode:?}");
        for pairs in [2u32, 5] {
            let s0 = svm.stats();
            launch_pairs(&svm, &k, &mut v, pairs).unwrap_or_else(|e| panic!("{what}: {e}"));
            check_pairs(&v, pairs, 7, &what);
            let s = svm.stats().since(&s0);
            assert_eq!(s.extent_passes, u64::from(pairs == 2), "{what}: {s:?}");
        }
        expect_undeclared(&svm, &k, &mut v, 3, &what);
        drop(filler);
        svm.validation_check().unwrap_or_else(|e| panic!("{what}: validation: {e}"));
    }
}

/// A replayable launch takes the extent path first when something is
/// mapped: on resident data it completes there; when it meets unmapped
/// pages, its refused accesses are its faults, and the page table finds the
/// rest.
#[test]
fn replayable_launch_on_warm_data_takes_the_extent_path() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let k = kernel(&svm, "pairs", PAIRS);
        let mut v = vectors(&svm, 0);
        // Destinations device-owned, sources on the host (new values).
        launch_pairs(&svm, &k, &mut v, 2).expect("declared launch");
        v[0].fill(5);
        v[2].fill(6);
        let a = args(&v, 2);
        let desc = LaunchDescriptor { args: &a, access: &[], bindings: &[], workgroups: [16, 1, 1] };
        let s0 = svm.stats();
        // SAFETY: no reference into the vectors is alive during the calls.
        let replayable = unsafe { LaunchOptions::replayable().allow_undeclared_writes() };
        let r = svm.launch_with(&k, &desc, &replayable).expect("replayable, cold sources");
        let s = svm.stats().since(&s0);
        assert!(v[1].iter().all(|&x| x == 11) && v[3].iter().all(|&x| x == 13), "{backend} cold");
        assert!(r.replays >= 1 && r.gpu_fault_pages >= 1, "{backend}: {r:?}");
        assert!(s.extent_passes >= 1 && s.page_table_passes >= 1, "{backend}: {s:?}");
        // Everything device-owned: one extent pass, no fault.
        for x in &v[..4] {
            svm.prefetch(x.as_ptr().cast(), 4 * N, Location::Device).wait().expect("prefetch");
        }
        let s0 = svm.stats();
        let r = svm.launch_with(&k, &desc, &replayable).expect("replayable, warm");
        let s = svm.stats().since(&s0);
        assert_eq!((r.replays, s.extent_passes, s.page_table_passes), (0, 1, 0), "{backend}: {r:?} {s:?}");
        assert!(v[1].iter().all(|&x| x == 11) && v[3].iter().all(|&x| x == 13), "{backend} warm");
    }
}
