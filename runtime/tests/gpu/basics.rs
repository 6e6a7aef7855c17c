//! The end-to-end slice: data built on the CPU, a kernel through the same
//! pointers, results read back by dereference through real faults.

use svm::{Access, Arg, LaunchDescriptor};

use crate::{ctx, ctx_migrating, kernel, small, BACKENDS};

fn vadd_case(backend: svm::FaultBackendKind, n: usize, chunk: usize) {
    vadd_case_with(backend, n, chunk, false);
}

fn vadd_case_with(backend: svm::FaultBackendKind, n: usize, chunk: usize, prefetch: bool) {
    vadd_case_desc(backend, n, chunk, small(backend).fault_chunk(chunk).fault_prefetch(prefetch));
}

fn vadd_case_desc(backend: svm::FaultBackendKind, n: usize, chunk: usize, desc: svm::SvmDescriptor) {
    let prefetch = desc.fault_prefetch;
    let Some(svm) = ctx_migrating(desc) else { return };
    assert_eq!(svm.fault_backend(), backend);
    let k = kernel(&svm, "vadd", svm::shaders::kernels::VADD);
    let mut a = svm.alloc_vec::<f32>(n).expect("a");
    let mut b = svm.alloc_vec::<f32>(n).expect("b");
    let mut c = svm.alloc_vec::<f32>(n).expect("c");
    for i in 0..n {
        a[i] = i as f32;
        b[i] = (2 * i) as f32 + 0.5;
        c[i] = -1.0;
    }
    let before = svm.stats();
    let args = [Arg::ptr(a.as_ptr()), Arg::ptr(b.as_ptr()), Arg::ptr(c.as_ptr()), Arg::U32(n as u32)];
    svm.launch(
        &k,
        &LaunchDescriptor {
            args: &args,
            access: &[Access::read(&a), Access::read(&b), Access::read_write(&mut c)],
            bindings: &[],
            workgroups: [64, 1, 1],
        },
    )
    .expect("launch");
    let s = svm.stats().since(&before);
    let pages = (n * 4).div_ceil(4096) as u64;
    assert_eq!(s.h2d_pages, 3 * pages, "a, b and c went to the device");
    assert_eq!(svm.device_resident_pages() as u64, pages, "only c stays on the device");
    // Reading a and b does not fault: read-only pages stay on the CPU.
    let sum_ab: f64 = a.iter().zip(b.iter()).map(|(x, y)| f64::from(*x + *y)).sum();
    assert_eq!(svm.stats().since(&before).cpu_faults, 0, "read-only inputs never left the CPU");
    // Reading c faults it back, chunk by chunk.
    let sum_c: f64 = c.iter().map(|&x| f64::from(x)).sum();
    for i in 0..n {
        assert_eq!(c[i], a[i] + b[i], "c[{i}]");
    }
    assert_eq!(sum_ab, sum_c);
    let s = svm.stats().since(&before);
    assert_eq!(s.d2h_pages, pages, "every page of c came back");
    let chunk_pages = (chunk / 4096) as u64;
    if prefetch {
        // Sequential reads: the tree prefetcher fetches whole 2 MiB regions
        // after a few faults each.
        assert!(
            s.cpu_faults < pages.div_ceil(chunk_pages) / 2,
            "{} faults for {pages} pages with prefetch",
            s.cpu_faults
        );
    } else {
        assert!(s.cpu_faults >= pages.div_ceil(chunk_pages), "{} faults for {pages} pages", s.cpu_faults);
        assert!(
            s.cpu_faults <= pages.div_ceil(chunk_pages) + 2,
            "{} faults for {pages} pages in chunks of {chunk_pages}",
            s.cpu_faults
        );
    }
    assert_eq!(svm.device_resident_pages(), 0);
}

#[test]
fn vadd_uffd_64k() {
    vadd_case(BACKENDS[0], 1 << 20, 64 << 10);
}
#[test]
fn vadd_mprotect_64k() {
    vadd_case(BACKENDS[1], 1 << 20, 64 << 10);
}
/// The staging-buffer migration path (what discrete GPUs use) on an
/// adapter that would otherwise map its pool.
#[test]
fn vadd_uffd_64k_staged_pool() {
    let b = BACKENDS[0];
    vadd_case_desc(b, 1 << 20, 64 << 10, small(b).fault_chunk(64 << 10).fault_prefetch(false).host_mapped_pool(false));
}
#[test]
fn vadd_mprotect_2m_staged_pool() {
    let b = BACKENDS[1];
    vadd_case_desc(b, 3 << 20, 2 << 20, small(b).fault_chunk(2 << 20).fault_prefetch(false).host_mapped_pool(false));
}
#[test]
fn vadd_uffd_64k_prefetch() {
    vadd_case_with(BACKENDS[0], 1 << 20, 64 << 10, true);
}
#[test]
fn vadd_mprotect_4k_prefetch() {
    vadd_case_with(BACKENDS[1], 1 << 20, 4096, true);
}
#[test]
fn vadd_uffd_4k_odd_size() {
    vadd_case(BACKENDS[0], 100_003, 4096);
}
#[test]
fn vadd_mprotect_2m() {
    vadd_case(BACKENDS[1], 3 << 20, 2 << 20);
}

/// A CPU write to a page the device owns first brings the device's data
/// back (a write fault), so the other bytes of the page are not lost.
#[test]
fn cpu_write_after_kernel_keeps_device_data() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(
            &svm,
            "fill",
            "@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
                let p = svm_arg_ptr(0u); let n = svm_arg_u32(2u);
                if (g.x < n) { svm_store_u32(svm_index(p, g.x, 4u), g.x * 7u + 1u); }
            }",
        );
        let n = 4096usize;
        let mut v = svm.alloc_vec::<u32>(n).expect("v");
        let args = [Arg::ptr(v.as_ptr()), Arg::U32(n as u32)];
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read_write(&mut v)],
                bindings: &[],
                workgroups: [64, 1, 1],
            },
        )
        .expect("launch");
        v[5] = 12345; // write fault first
        for (i, &x) in v.iter().enumerate() {
            let want = if i == 5 { 12345 } else { i as u32 * 7 + 1 };
            assert_eq!(x, want, "{backend}: v[{i}]");
        }
    }
}

/// Data survives several round trips (the multiple-migration scenario).
#[test]
fn repeated_round_trips() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(
            &svm,
            "inc",
            "@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
                let p = svm_arg_ptr(0u); let n = svm_arg_u32(2u);
                if (g.x < n) { let q = svm_index(p, g.x, 4u); svm_store_u32(q, svm_load_u32(q) + 1u); }
            }",
        );
        let n = 50_000usize;
        let mut v = svm.alloc_from_slice(&(0..n as u32).collect::<Vec<_>>()).expect("v");
        for round in 0..10u32 {
            let args = [Arg::ptr(v.as_ptr()), Arg::U32(n as u32)];
            svm.launch(
                &k,
                &LaunchDescriptor {
                    args: &args,
                    access: &[Access::read_write(&mut v)],
                    bindings: &[],
                    workgroups: [(n as u32).div_ceil(64), 1, 1],
                },
            )
            .expect("launch");
            // Touch half of it on the CPU: the other half stays on the device.
            let probe = (round as usize * 977) % (n / 2);
            assert_eq!(v[probe], probe as u32 + round + 1, "{backend} round {round}");
        }
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(x, i as u32 + 10, "{backend}: v[{i}]");
        }
    }
}

/// Only the page-table leaves that changed are uploaded.
#[test]
fn page_table_upload_is_incremental() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(
            &svm,
            "noop",
            "@compute @workgroup_size(1) fn main() { let p = svm_arg_ptr(0u); svm_store_u32(p, 1u); }",
        );
        let mut v = svm.alloc_vec::<u32>(16).expect("v");
        let args = [Arg::ptr(v.as_ptr())];
        let launch = |v: &mut svm::ManagedVec<u32>| {
            svm.launch(
                &k,
                &LaunchDescriptor {
                    args: &args,
                    access: &[Access::read_write(v)],
                    bindings: &[],
                    workgroups: [1, 1, 1],
                },
            )
            .expect("launch");
        };
        launch(&mut v);
        let first = svm.stats().pt_upload_bytes;
        let arena_table = (svm.arena_size() / 4096 * 4) as u64;
        // The device's table starts zeroed (all unallocated): the first
        // launch uploads the leaf (4 KiB of entries) holding what was
        // allocated, not the whole table.
        assert_eq!(first, 4096, "the first launch uploads the allocated leaf of a {arena_table}-byte table");
        launch(&mut v);
        let second = svm.stats().pt_upload_bytes - first;
        assert!(second <= 4096, "second launch uploaded {second} bytes of a {arena_table}-byte table");
        assert_eq!(v[0], 1);
    }
}

/// Threads reading device-owned data at once all see the kernel's results.
#[test]
fn concurrent_cpu_faults() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend).fault_chunk(4096)) else { return };
        let k = kernel(
            &svm,
            "iota",
            "@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
                let p = svm_arg_ptr(0u); let n = svm_arg_u32(2u);
                if (g.x < n) { svm_store_u32(svm_index(p, g.x, 4u), g.x ^ 0x5a5au); }
            }",
        );
        let n = 1 << 18;
        let mut v = svm.alloc_vec::<u32>(n).expect("v");
        let args = [Arg::ptr(v.as_ptr()), Arg::U32(n as u32)];
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read_write(&mut v)],
                bindings: &[],
                workgroups: [n as u32 / 64, 1, 1],
            },
        )
        .expect("launch");
        let v = &v;
        std::thread::scope(|s| {
            for t in 0..4usize {
                s.spawn(move || {
                    for j in 0..n / 64 {
                        let i = (j * 64 * 5 + t * 4099) % n;
                        assert_eq!(v[i], i as u32 ^ 0x5a5a, "{backend} thread {t} v[{i}]");
                    }
                });
            }
        });
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(x, i as u32 ^ 0x5a5a, "{backend}: v[{i}]");
        }
        assert_eq!(svm.device_resident_pages(), 0, "{backend}: every page came back");
    }
}

const INC: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let p = svm_arg_ptr(0u); let n = svm_arg_u32(2u);
    for (var i = g.x; i < n; i += nw.x * 64u) { let q = svm_index(p, i, 4u); svm_store_u32(q, svm_load_u32(q) + 1u); }
}";

/// CPU threads fault on device-owned data while another thread keeps
/// launching kernels on other data: every value stays right.
#[test]
fn cpu_faults_while_kernels_run() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend).fault_chunk(4096).fault_prefetch(false)) else { return };
        let k = kernel(&svm, "inc", INC);
        let n = 1 << 16;
        let mut x = svm.alloc_vec::<u32>(n).expect("x");
        let mut y = svm.alloc_from_slice(&(0..n as u32).collect::<Vec<_>>()).expect("y");
        let args = [Arg::ptr(y.as_ptr()), Arg::U32(n as u32)];
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read_write(&mut y)],
                bindings: &[],
                workgroups: [64, 1, 1],
            },
        )
        .expect("launch y");
        let yp = y.as_mut_ptr() as usize;
        std::thread::scope(|s| {
            let svm = &svm;
            let k = &k;
            let x = &mut x;
            s.spawn(move || {
                for _ in 0..20 {
                    let args = [Arg::ptr(x.as_ptr()), Arg::U32(n as u32)];
                    svm.launch(
                        k,
                        &LaunchDescriptor {
                            args: &args,
                            access: &[Access::read_write(x)],
                            bindings: &[],
                            workgroups: [64, 1, 1],
                        },
                    )
                    .expect("launch x");
                }
            });
            for t in 0..2usize {
                s.spawn(move || {
                    for j in 0..n / 16 {
                        let i = (j * 16 + t * 7) % n;
                        // SAFETY: y is live for the scope; threads touch
                        // disjoint indices (t * 7 offsets), the kernel thread
                        // never declares y.
                        let p = unsafe { (yp as *mut u32).add(i) };
                        // SAFETY: as above.
                        let v = unsafe { p.read_volatile() };
                        assert_eq!(v, i as u32 + 1, "{backend}: y[{i}]");
                        // SAFETY: as above.
                        unsafe { p.write_volatile(v + 100) };
                    }
                });
            }
        });
        assert!(x.iter().all(|&v| v == 20), "{backend}: x");
        for t in 0..2usize {
            for j in 0..n / 16 {
                let i = (j * 16 + t * 7) % n;
                assert_eq!(y[i], i as u32 + 101, "{backend}: y[{i}] after");
            }
        }
    }
}

/// Dropping a runtime whose pages are on the device tears down cleanly; two
/// runtimes (one per backend) live side by side in one process.
#[test]
fn teardown_and_two_runtimes() {
    let Some(first) = ctx_migrating(small(BACKENDS[0])) else { return };
    let Some(second) = ctx_migrating(small(BACKENDS[1])) else { return };
    for svm in [&first, &second] {
        let k = kernel(svm, "inc", INC);
        let mut v = svm.alloc_vec::<u32>(1 << 16).expect("v");
        let args = [Arg::ptr(v.as_ptr()), Arg::U32(1 << 16)];
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read_write(&mut v)],
                bindings: &[],
                workgroups: [64, 1, 1],
            },
        )
        .expect("launch");
        assert_eq!(v[100], 1);
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read_write(&mut v)],
                bindings: &[],
                workgroups: [64, 1, 1],
            },
        )
        .expect("launch");
        assert!(svm.device_resident_pages() > 0);
        // v is dropped (freed) with its pages on the device.
    }
    // A pointer of one runtime is foreign to the other.
    let a = first.alloc_vec::<u32>(4).expect("a");
    assert!(second.free(a.as_ptr() as *mut u8).is_err());
    drop(a);
    let k = kernel(&second, "inc", INC);
    let mut w = second.alloc_vec::<u32>(64).expect("w");
    let args = [Arg::ptr(w.as_ptr()), Arg::U32(64)];
    second
        .launch(
            &k,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read_write(&mut w)],
                bindings: &[],
                workgroups: [1, 1, 1],
            },
        )
        .expect("launch");
    drop(first); // with nothing on the device, while `second` keeps working
    assert_eq!(w[63], 1);
    drop(w);
    drop(second);
}

/// The runtime runs in the mapping mode the environment asks for (the
/// README's test command runs this binary once per mode).
#[test]
fn mapping_mode_follows_the_environment() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let want = match std::env::var("SVM_MAPPING_MODE").as_deref() {
        Ok("sparse") => svm::MappingMode::Sparse,
        Ok("coherent") => svm::MappingMode::Coherent,
        _ => svm::MappingMode::Software,
    };
    assert_eq!(svm.mapping_mode(), want);
    // Windows: a binding array where the device has them (lavapipe does),
    // unless SVM_WINDOWS=fixed.
    if std::env::var("SVM_WINDOWS").as_deref() == Ok("fixed") {
        assert_eq!(svm.windows(), svm::shaders::Windows::Fixed);
    } else if std::env::var("SVM_REQUIRE_VK_CAPS").as_deref() == Ok("1") {
        assert_eq!(svm.windows(), svm::shaders::Windows::Array);
    }
    if want == svm::MappingMode::Coherent {
        assert!(!svm.pool_is_host_mapped(), "no pool: the arena's view is the host pages");
    }
    // On lavapipe (unified memory) the pool is host-mapped unless
    // SVM_MAPPED_POOL=0: the software mode's segments, the sparse mode's blocks.
    if want != svm::MappingMode::Coherent
        && std::env::var("SVM_ON_LAVAPIPE").as_deref() == Ok("1")
        && std::env::var("SVM_MAPPED_POOL").as_deref() != Ok("0")
    {
        assert!(svm.pool_is_host_mapped(), "{want:?} on lavapipe: the pool is host-mapped");
    }
}
