//! hmm-tests.c scenarios on the real runtime (one GPU): see the table in
//! `main.rs`. Every test runs under both fault backends, and every value is
//! checked through the real path (CPU faults, kernels).

use svm::{Access, AccessMode, Arg, KernelFaultKind, LaunchDescriptor, LaunchError, Location, ManagedVec, Svm};

use crate::{ctx, ctx_migrating, fork_and_wait, k, kernel, small, wg, BACKENDS, PAGE_WORDS};

fn launch_fill(svm: &Svm, kf: &svm::Kernel, v: &mut ManagedVec<u32>, mul: u32, add: u32) {
    let n = v.len();
    let args = [Arg::ptr(v.as_ptr()), Arg::U32(n as u32), Arg::U32(mul), Arg::U32(add)];
    svm.launch(
        kf,
        &LaunchDescriptor { args: &args, access: &[Access::read_write(v)], bindings: &[], workgroups: wg(n) },
    )
    .expect("launch");
}

fn launch_copy(svm: &Svm, kc: &svm::Kernel, src: &ManagedVec<u32>, dst: &mut ManagedVec<u32>) {
    let n = src.len().min(dst.len());
    let args = [Arg::ptr(src.as_ptr()), Arg::ptr(dst.as_ptr()), Arg::U32(n as u32)];
    svm.launch(
        kc,
        &LaunchDescriptor {
            args: &args,
            access: &[Access::read(src), Access::read_write(dst)],
            bindings: &[],
            workgroups: wg(n),
        },
    )
    .expect("launch");
}

fn pages_of(words: usize) -> u64 {
    words.div_ceil(PAGE_WORDS) as u64
}

#[test]
fn open_close() {
    for backend in BACKENDS {
        for round in 0..3 {
            let Some(svm) = ctx_migrating(small(backend)) else { return };
            assert_eq!(svm.live_allocations(), 0);
            if round == 1 {
                // Close with pages on the device.
                let kf = kernel(&svm, "fill", k::FILL);
                let p = svm.alloc(4 * 4096).expect("p").as_ptr();
                let args = [Arg::ptr(p), Arg::U32(4 * PAGE_WORDS as u32), Arg::U32(1), Arg::U32(0)];
                // SAFETY: no reference into the allocation exists.
                let access = [unsafe { Access::raw(p, 4 * 4096, AccessMode::ReadWrite) }];
                svm.launch(
                    &kf,
                    &LaunchDescriptor { args: &args, access: &access, bindings: &[], workgroups: [4, 1, 1] },
                )
                .expect("launch");
                assert_eq!(svm.device_resident_pages(), 4);
                // Never freed: the runtime tears down with a live allocation.
            }
            drop(svm);
        }
    }
}

#[test]
fn anon_read() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let kc = kernel(&svm, "copy", k::COPY);
        let n = 64 * PAGE_WORDS;
        let mut src = svm.alloc_vec::<u32>(n).expect("src");
        for (i, x) in src.iter_mut().enumerate() {
            *x = i as u32;
        }
        let mut dst = svm.alloc_vec::<u32>(n).expect("dst");
        let s0 = svm.stats();
        launch_copy(&svm, &kc, &src, &mut dst);
        let s = svm.stats().since(&s0);
        assert_eq!(s.h2d_pages, 2 * pages_of(n), "{backend}");
        assert_eq!(svm.device_resident_pages() as u64, pages_of(n), "{backend}: only dst is device-owned");
        assert!(src.iter().enumerate().all(|(i, &x)| x == i as u32), "{backend}: src intact");
        assert_eq!(svm.stats().since(&s0).cpu_faults, 0, "{backend}: reading src needed no fault");
        for (i, &x) in dst.iter().enumerate() {
            assert_eq!(x, i as u32, "{backend}: dst[{i}]");
        }
        assert_eq!(svm.stats().since(&s0).d2h_pages, pages_of(n), "{backend}");
    }
}

#[test]
fn anon_read_prot() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let kc = kernel(&svm, "copy", k::COPY);
        let n = 4 * PAGE_WORDS;
        let mut dst = svm.alloc_from_slice(&vec![0xdeadu32; n]).expect("dst");
        let freed = svm.alloc_from_slice(&vec![7u32; n]).expect("freed");
        let src = freed.as_ptr();
        drop(freed);
        let args = [Arg::ptr(src), Arg::ptr(dst.as_ptr()), Arg::U32(n as u32)];
        let r = svm.launch(
            &kc,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read_write(&mut dst)],
                bindings: &[],
                workgroups: wg(n),
            },
        );
        match r {
            Err(LaunchError::Kernel { faults, total }) => {
                assert_eq!(total as usize, n, "{backend}: every load refused once");
                assert!(!faults.is_empty());
                for f in &faults {
                    assert_eq!(f.kind, KernelFaultKind::Unallocated, "{backend}");
                    let off = f.addr - src as u64;
                    assert!(off < (n * 4) as u64 && off.is_multiple_of(4), "{backend}: {f:?}");
                }
            }
            other => panic!("{backend}: expected refused loads, got {other:?}"),
        }
        // Refused loads yield 0 (the prelude's contract); nothing of the
        // freed memory leaked into dst.
        assert!(dst.iter().all(|&x| x == 0), "{backend}");
        assert_eq!(svm.live_allocations(), 1);
    }
}

#[test]
fn anon_write() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let kf = kernel(&svm, "fill", k::FILL);
        let n = 64 * PAGE_WORDS + 17;
        let mut v = svm.alloc_vec::<u32>(n).expect("v");
        let s0 = svm.stats();
        launch_fill(&svm, &kf, &mut v, 3, 1);
        assert_eq!(svm.device_resident_pages() as u64, pages_of(n));
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(x, i as u32 * 3 + 1, "{backend}: v[{i}]");
        }
        let s = svm.stats().since(&s0);
        assert_eq!(s.d2h_pages, pages_of(n), "{backend}");
        assert!(s.cpu_faults >= 1, "{backend}");
        assert_eq!(svm.device_resident_pages(), 0);
    }
}

#[test]
fn anon_write_prot() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let ka = kernel(&svm, "affine", k::AFFINE);
        let n = 8 * PAGE_WORDS;
        let mut v = svm.alloc_from_slice(&(0..n as u32).collect::<Vec<_>>()).expect("v");
        let args = [Arg::ptr(v.as_ptr()), Arg::U32(n as u32), Arg::U32(2), Arg::U32(5)];
        let r = svm.launch(
            &ka,
            &LaunchDescriptor { args: &args, access: &[Access::read(&v)], bindings: &[], workgroups: wg(n) },
        );
        match r {
            Err(LaunchError::Kernel { faults, total }) => {
                assert_eq!(total as usize, n, "{backend}: every store refused");
                assert!(faults.iter().all(|f| f.kind == KernelFaultKind::ReadOnly), "{backend}: {faults:?}");
            }
            other => panic!("{backend}: expected ReadOnly, got {other:?}"),
        }
        assert_eq!(svm.device_resident_pages(), 0, "{backend}: the read copy was dropped");
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32), "{backend}: unchanged");
        // "mprotect(PROT_WRITE)": declare it writable, and the same kernel works.
        svm.launch(
            &ka,
            &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut v)], bindings: &[], workgroups: wg(n) },
        )
        .expect("launch");
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(x, i as u32 * 2 + 5, "{backend}: v[{i}]");
        }
    }
}

#[test]
fn anon_write_child() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let kf = kernel(&svm, "fill", k::FILL);
        let n = 4 * PAGE_WORDS;
        let mut host = svm.alloc_from_slice(&vec![11u32; n]).expect("host");
        let mut dev = svm.alloc_vec::<u32>(n).expect("dev");
        launch_fill(&svm, &kf, &mut dev, 1, 100);
        let (hp, dp) = (host.as_mut_ptr() as usize, dev.as_mut_ptr() as usize);
        for target in [hp, dp] {
            let status = fork_and_wait(|| {
                // SAFETY: deliberately touching managed memory in the child,
                // where it is not mapped: the child must die here.
                unsafe { core::ptr::write_volatile(target as *mut u32, 0x5555) };
                3
            });
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV,
                "{backend}: child writing {target:#x} ended with status {status:#x}"
            );
        }
        // The parent is unaffected: host data intact, device data comes back,
        // and it keeps launching.
        assert!(host.iter().all(|&x| x == 11), "{backend}");
        assert!(dev.iter().enumerate().all(|(i, &x)| x == i as u32 + 100), "{backend}");
        launch_fill(&svm, &kf, &mut host, 2, 0);
        assert!(host.iter().enumerate().all(|(i, &x)| x == 2 * i as u32), "{backend}");
    }
}

#[test]
fn anon_write_huge() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend).fault_chunk(2 << 20).fault_prefetch(false)) else { return };
        let kf = kernel(&svm, "fill", k::FILL);
        let n = (4 << 20) / 4;
        let mut v = svm.alloc_vec::<u32>(n).expect("v");
        assert_eq!(v.as_ptr() as usize % (2 << 20), 0, "{backend}: 2 MiB allocations are 2 MiB aligned");
        launch_fill(&svm, &kf, &mut v, 1, 9);
        let s0 = svm.stats();
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(x, i as u32 + 9, "{backend}: v[{i}]");
        }
        let s = svm.stats().since(&s0);
        assert_eq!(s.cpu_faults, 2, "{backend}: one fault per 2 MiB");
        assert_eq!(s.d2h_batches, 2, "{backend}");
        assert_eq!(s.d2h_pages, 1024, "{backend}");
    }
}

#[test]
fn migrate() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let ka = kernel(&svm, "affine", k::AFFINE);
        let n = 32 * PAGE_WORDS;
        let mut v = svm.alloc_from_slice(&(0..n as u32).collect::<Vec<_>>()).expect("v");
        let moved = svm.prefetch(v.as_ptr().cast(), n * 4, Location::Device).wait().expect("prefetch");
        assert_eq!(moved, 32, "{backend}");
        assert_eq!(svm.device_resident_pages(), 32, "{backend}");
        let s0 = svm.stats();
        let args = [Arg::ptr(v.as_ptr()), Arg::U32(n as u32), Arg::U32(1), Arg::U32(1000)];
        svm.launch(
            &ka,
            &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut v)], bindings: &[], workgroups: wg(n) },
        )
        .expect("launch");
        assert_eq!(svm.stats().since(&s0).h2d_pages, 0, "{backend}: used in place");
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(x, i as u32 + 1000, "{backend}: v[{i}]");
        }
        assert_eq!(svm.stats().since(&s0).d2h_pages, 32, "{backend}");
    }
}

#[test]
fn migrate_fault() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend).fault_prefetch(false)) else { return };
        let ka = kernel(&svm, "affine", k::AFFINE);
        let n = 64 * PAGE_WORDS;
        let mut v = svm.alloc_from_slice(&(0..n as u32).collect::<Vec<_>>()).expect("v");
        let p = v.as_ptr().cast::<u8>();
        assert_eq!(svm.prefetch(p, n * 4, Location::Device).wait().expect("prefetch"), 64);
        // Fault the first half back.
        for i in 0..n / 2 {
            assert_eq!(v[i], i as u32, "{backend}: v[{i}]");
        }
        assert_eq!(svm.device_resident_pages(), 32, "{backend}");
        // Migrate the mixed range again: only the host half moves.
        assert_eq!(svm.prefetch(p, n * 4, Location::Device).wait().expect("prefetch"), 32, "{backend}");
        assert_eq!(svm.device_resident_pages(), 64, "{backend}");
        let args = [Arg::ptr(v.as_ptr()), Arg::U32(n as u32), Arg::U32(3), Arg::U32(0)];
        svm.launch(
            &ka,
            &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut v)], bindings: &[], workgroups: wg(n) },
        )
        .expect("launch");
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(x, 3 * i as u32, "{backend}: v[{i}]");
        }
    }
}

#[test]
fn migrate_release() {
    for backend in BACKENDS {
        // Explicit release: everything back to the host.
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let kf = kernel(&svm, "fill", k::FILL);
        let n = 64 * PAGE_WORDS;
        let mut v = svm.alloc_vec::<u32>(n).expect("v");
        launch_fill(&svm, &kf, &mut v, 5, 3);
        assert_eq!(svm.device_resident_pages(), 64);
        let moved = svm.prefetch(v.as_ptr().cast(), n * 4, Location::Host).wait().expect("release");
        assert_eq!(moved, 64, "{backend}");
        assert_eq!(svm.device_resident_pages(), 0, "{backend}");
        let s0 = svm.stats();
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32 * 5 + 3), "{backend}");
        assert_eq!(svm.stats().since(&s0).cpu_faults, 0, "{backend}: released pages need no fault");
        drop(v);
        drop(svm);

        // The device evicts under pressure (pool 1 MiB).
        let Some(svm) = ctx_migrating(small(backend).pool_size(1 << 20)) else { return };
        let kf = kernel(&svm, "fill", k::FILL);
        let n = (1 << 20) / 4;
        let mut a = svm.alloc_vec::<u32>(n).expect("a");
        let mut b = svm.alloc_vec::<u32>(n).expect("b");
        launch_fill(&svm, &kf, &mut a, 1, 1);
        launch_fill(&svm, &kf, &mut b, 1, 2);
        let s = svm.stats();
        assert_eq!(s.evicted_pages, 256, "{backend}: a was evicted for b");
        let s0 = svm.stats();
        assert!(a.iter().enumerate().all(|(i, &x)| x == i as u32 + 1), "{backend}: a");
        assert_eq!(svm.stats().since(&s0).cpu_faults, 0, "{backend}: a is on the host");
        assert!(b.iter().enumerate().all(|(i, &x)| x == i as u32 + 2), "{backend}: b");
    }
}

#[test]
fn migrate_mixed() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let a = svm.alloc_from_slice(&vec![1u32; PAGE_WORDS]).expect("a");
        let hole = svm.alloc_vec::<u32>(PAGE_WORDS).expect("hole");
        let mut c = svm.alloc_from_slice(&(0..4 * PAGE_WORDS as u32).collect::<Vec<_>>()).expect("c");
        let (pa, ph) = (a.as_ptr() as usize, hole.as_ptr() as usize);
        assert_eq!(ph, pa + 4096, "first-fit allocations are adjacent");
        assert_eq!(c.as_ptr() as usize, ph + 4096);
        drop(hole);
        // Freed memory, and a range across the hole, are refused as a whole.
        let r = svm.prefetch(ph as *const u8, 4096, Location::Device).wait();
        assert!(matches!(r, Err(LaunchError::BadRange { .. })), "{backend}: {r:?}");
        let r = svm.prefetch(pa as *const u8, 6 * 4096, Location::Device).wait();
        assert!(matches!(r, Err(LaunchError::BadRange { .. })), "{backend}: {r:?}");
        assert_eq!(svm.device_resident_pages(), 0, "{backend}: nothing moved");
        // Another runtime's pages (another device) are foreign here.
        let Some(other) = ctx_migrating(small(backend)) else { return };
        let o = other.alloc_from_slice(&[9u32; 16]).expect("o");
        let r = svm.prefetch(o.as_ptr().cast(), 64, Location::Device).wait();
        assert!(matches!(r, Err(LaunchError::BadRange { .. })), "{backend}: {r:?}");
        // Mixed residency: page 1 of c on the device, the rest on the host;
        // migrating all of c moves only the host pages.
        let cp = c.as_ptr() as usize;
        assert_eq!(svm.prefetch((cp + 4096) as *const u8, 4096, Location::Device).wait().expect("p1"), 1);
        assert_eq!(svm.prefetch(cp as *const u8, 4 * 4096, Location::Device).wait().expect("all"), 3, "{backend}");
        let ka = kernel(&svm, "affine", k::AFFINE);
        let n = c.len();
        let args = [Arg::ptr(c.as_ptr()), Arg::U32(n as u32), Arg::U32(1), Arg::U32(1)];
        svm.launch(
            &ka,
            &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut c)], bindings: &[], workgroups: wg(n) },
        )
        .expect("launch");
        assert!(c.iter().enumerate().all(|(i, &x)| x == i as u32 + 1), "{backend}");
        assert!(a.iter().all(|&x| x == 1) && o.iter().all(|&x| x == 9), "{backend}");
    }
}

#[test]
fn migrate_multiple() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let n = 32 * PAGE_WORDS;
        let mut v = svm.alloc_from_slice(&(0..n as u32).collect::<Vec<_>>()).expect("v");
        let s0 = svm.stats();
        for round in 0..10u32 {
            let moved = svm.prefetch(v.as_ptr().cast(), n * 4, Location::Device).wait().expect("prefetch");
            assert_eq!(moved, 32, "{backend} round {round}");
            for (i, x) in v.iter_mut().enumerate() {
                assert_eq!(*x, i as u32 + round, "{backend} round {round}: v[{i}]");
                *x += 1;
            }
            assert_eq!(svm.device_resident_pages(), 0);
        }
        let s = svm.stats().since(&s0);
        assert_eq!((s.h2d_pages, s.d2h_pages), (320, 320), "{backend}");
    }
}

#[test]
fn anon_read_multiple() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let kc = kernel(&svm, "copy", k::COPY);
        let n = 16 * PAGE_WORDS;
        let mut src = svm.alloc_vec::<u32>(n).expect("src");
        let mut dst = svm.alloc_vec::<u32>(n).expect("dst");
        for round in 0..4u32 {
            for (i, x) in src.iter_mut().enumerate() {
                *x = i as u32 + round;
            }
            launch_copy(&svm, &kc, &src, &mut dst);
            for (i, &x) in dst.iter().enumerate() {
                assert_eq!(x, i as u32 + round, "{backend} round {round}: dst[{i}]");
            }
        }
    }
}

#[test]
fn anon_teardown() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let kc = kernel(&svm, "copy", k::COPY);
        let n = 16 * PAGE_WORDS;
        let mut out = svm.alloc_vec::<u32>(2 * n).expect("out");
        let (mut won, mut lost) = (0, 0);
        for round in 0..12u32 {
            let a = svm.alloc(n * 4).expect("a").as_ptr() as usize;
            let b = svm.alloc(n * 4).expect("b").as_ptr() as usize;
            assert_eq!(b, a + n * 4);
            for i in 0..2 * n {
                // SAFETY: a and b are adjacent live allocations of n words each.
                unsafe { ((a as *mut u32).add(i)).write(i as u32 ^ round) };
            }
            let mode = if round % 2 == 0 { AccessMode::Read } else { AccessMode::ReadWrite };
            let r = std::thread::scope(|s| {
                let svm2 = &svm;
                s.spawn(move || {
                    std::thread::sleep(std::time::Duration::from_micros(u64::from(round) * 300));
                    svm2.free(b as *mut u8).expect("free b");
                });
                let args = [Arg::Ptr(a as u64), Arg::ptr(out.as_ptr()), Arg::U32(2 * n as u32)];
                // SAFETY: no Rust reference into a or b exists.
                let access = [unsafe { Access::raw(a as *const u8, 2 * n * 4, mode) }, Access::read_write(&mut out)];
                svm.launch(
                    &kc,
                    &LaunchDescriptor { args: &args, access: &access, bindings: &[], workgroups: wg(2 * n) },
                )
            });
            match r {
                Ok(()) => {
                    won += 1;
                    assert!(out.iter().enumerate().all(|(i, &x)| x == i as u32 ^ round), "{backend} round {round}");
                }
                Err(LaunchError::BadRange { .. }) => lost += 1,
                Err(e) => panic!("{backend} round {round}: {e}"),
            }
            for i in 0..n {
                // SAFETY: a is still live; the runtime faults it back if needed.
                assert_eq!(unsafe { (a as *const u32).add(i).read() }, i as u32 ^ round, "{backend}: a[{i}]");
            }
            svm.free(a as *mut u8).expect("free a");
            assert_eq!(svm.live_allocations(), 1);
        }
        eprintln!("{backend}: launch won {won}, free won {lost}");
        assert_eq!(svm.device_resident_pages(), 0, "{backend}: everything was read back");
    }
}

/// hmm_gup_test analogue: the kernel (not the CPU in user mode) touches
/// device-owned managed memory inside a system call.
#[test]
fn syscall_on_device_pages_uffd() {
    syscall_case(svm::FaultBackendKind::Uffd);
}

/// With the mprotect backend a system call that touches device-owned
/// managed memory gets EFAULT instead of the page migrating back: the
/// kernel raises no SIGSEGV for its own accesses to a PROT_NONE user page,
/// so the runtime never hears of them (a documented limitation of that
/// backend, ARCHITECTURE.md "Fault backends"). Nothing is corrupted, and
/// after `prefetch(.., Location::Host)` the same calls work. (Under uffd they
/// block and are served like CPU faults; with `UFFD_USER_MODE_ONLY`, i.e. an
/// unprivileged process under `vm.unprivileged_userfaultfd=0`, they would
/// fail the same way.)
#[test]
fn syscall_on_device_pages_mprotect() {
    let Some(svm) = ctx_migrating(small(svm::FaultBackendKind::Mprotect)) else { return };
    let kf = kernel(&svm, "fill", k::FILL);
    let n = 4 * PAGE_WORDS;
    let mut src = svm.alloc_vec::<u32>(n).expect("src");
    launch_fill(&svm, &kf, &mut src, 1, 77);
    let mut fds = [0i32; 2];
    // SAFETY: plain pipe creation.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: src is a live allocation of n * 4 bytes; the kernel reads it.
    let w = unsafe { libc::write(fds[1], src.as_ptr().cast(), n * 4) };
    let err = std::io::Error::last_os_error();
    assert_eq!((w, err.raw_os_error()), (-1, Some(libc::EFAULT)), "write(2) from device-owned memory");
    svm.prefetch(src.as_ptr().cast(), n * 4, Location::Host).wait().expect("prefetch to host");
    // SAFETY: as above.
    let w = unsafe { libc::write(fds[1], src.as_ptr().cast(), n * 4) };
    assert_eq!(w, (n * 4) as isize, "after prefetch(Host): {}", std::io::Error::last_os_error());
    // SAFETY: closing our own descriptors.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    assert!(src.iter().enumerate().all(|(i, &x)| x == i as u32 + 77));
}

fn syscall_case(backend: svm::FaultBackendKind) {
    let Some(svm) = ctx_migrating(small(backend)) else { return };
    let kf = kernel(&svm, "fill", k::FILL);
    let n = 4 * PAGE_WORDS;
    let mut src = svm.alloc_vec::<u32>(n).expect("src");
    let mut dst = svm.alloc_vec::<u32>(n).expect("dst");
    launch_fill(&svm, &kf, &mut src, 1, 77);
    launch_fill(&svm, &kf, &mut dst, 0, 0);
    assert_eq!(svm.device_resident_pages(), 8);
    let mut fds = [0i32; 2];
    // SAFETY: plain pipe creation.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // 16 KiB fits the default 64 KiB pipe buffer.
    // SAFETY: src is a live allocation of n * 4 bytes; the kernel reads it.
    let w = unsafe { libc::write(fds[1], src.as_ptr().cast(), n * 4) };
    let werr = std::io::Error::last_os_error();
    // SAFETY: dst is a live allocation of n * 4 bytes and no reference to it
    // is alive during the call.
    let r = if w > 0 { unsafe { libc::read(fds[0], dst.as_mut_ptr().cast(), w as usize) } } else { -1 };
    let rerr = std::io::Error::last_os_error();
    // SAFETY: closing our own descriptors.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    assert_eq!(w, (n * 4) as isize, "{backend}: write(2) from device-owned memory: {werr}");
    assert_eq!(r, (n * 4) as isize, "{backend}: read(2) into device-owned memory: {rerr}");
    assert!(dst.iter().enumerate().all(|(i, &x)| x == i as u32 + 77), "{backend}");
}

#[test]
fn huge_empty() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let ka = kernel(&svm, "affine", k::AFFINE);
        let n = (2 << 20) / 4;
        let mut v = svm.alloc_vec::<u32>(n).expect("v");
        let moved = svm.prefetch(v.as_ptr().cast(), n * 4, Location::Device).wait().expect("prefetch");
        assert_eq!(moved, 512, "{backend}");
        let args = [Arg::ptr(v.as_ptr()), Arg::U32(n as u32), Arg::U32(1), Arg::U32(5)];
        svm.launch(
            &ka,
            &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut v)], bindings: &[], workgroups: wg(n) },
        )
        .expect("launch");
        assert!(v.iter().all(|&x| x == 5), "{backend}: the device read zeros");
    }
}

#[test]
fn huge_zero() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend).fault_chunk(2 << 20)) else { return };
        let n = (2 << 20) / 4;
        let v = svm.alloc_vec::<u32>(n).expect("v");
        assert!(v.iter().all(|&x| x == 0));
        let moved = svm.prefetch(v.as_ptr().cast(), n * 4, Location::Device).wait().expect("prefetch");
        assert_eq!(moved, 512, "{backend}");
        let s0 = svm.stats();
        assert!(v.iter().all(|&x| x == 0), "{backend}");
        assert_eq!(svm.stats().since(&s0).cpu_faults, 1, "{backend}");
    }
}

#[test]
fn huge_free() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let n = (2 << 20) / 4;
        let v = svm.alloc_from_slice(&vec![0xabu32; n]).expect("v");
        let addr = v.as_ptr() as usize;
        svm.prefetch(v.as_ptr().cast(), n * 4, Location::Device).wait().expect("prefetch");
        assert_eq!(svm.device_resident_pages(), 512);
        drop(v);
        assert_eq!(svm.device_resident_pages(), 0, "{backend}: frames dropped with the allocation");
        let w = svm.alloc_vec::<u32>(n).expect("w");
        assert_eq!(w.as_ptr() as usize, addr, "first fit reuses the range");
        assert!(w.iter().all(|&x| x == 0), "{backend}: reused memory reads zero");
    }
}

#[test]
fn huge_fault() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend).fault_chunk(2 << 20)) else { return };
        let n = (2 << 20) / 4;
        let v = svm.alloc_from_slice(&(0..n as u32).collect::<Vec<_>>()).expect("v");
        svm.prefetch(v.as_ptr().cast(), n * 4, Location::Device).wait().expect("prefetch");
        let s0 = svm.stats();
        assert_eq!(v[n / 2 + 3], (n / 2 + 3) as u32);
        let s = svm.stats().since(&s0);
        assert_eq!((s.cpu_faults, s.d2h_batches, s.d2h_pages), (1, 1, 512), "{backend}");
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32), "{backend}");
        assert_eq!(svm.stats().since(&s0).cpu_faults, 1, "{backend}");
    }
}

#[test]
fn huge_fragmented_pool() {
    for backend in BACKENDS {
        // 640 frames: after the setup, 128 single free frames + 384 in a run.
        let Some(svm) = ctx_migrating(small(backend).pool_size(640 * 4096)) else { return };
        let ka = kernel(&svm, "affine", k::AFFINE);
        let kf = kernel(&svm, "fill", k::FILL);
        let smalls: Vec<usize> = (0..256).map(|_| svm.alloc(4096).expect("small").as_ptr() as usize).collect();
        // SAFETY: no references into these pages exist.
        let access: Vec<Access<'_>> =
            smalls.iter().map(|&p| unsafe { Access::raw(p as *const u8, 4096, AccessMode::ReadWrite) }).collect();
        let args = [Arg::Ptr(smalls[0] as u64), Arg::U32(PAGE_WORDS as u32), Arg::U32(1), Arg::U32(1)];
        svm.launch(&ka, &LaunchDescriptor { args: &args, access: &access, bindings: &[], workgroups: [1, 1, 1] })
            .expect("setup");
        assert_eq!(svm.device_resident_pages(), 256);
        for &p in smalls.iter().skip(1).step_by(2) {
            svm.free(p as *mut u8).expect("free");
        }
        assert_eq!(svm.device_resident_pages(), 128);
        let n = (2 << 20) / 4;
        let mut big = svm.alloc_vec::<u32>(n).expect("big");
        launch_fill(&svm, &kf, &mut big, 7, 1);
        assert_eq!(svm.stats().evicted_pages, 0, "{backend}: it fit without eviction");
        assert!(big.iter().enumerate().all(|(i, &x)| x == i as u32 * 7 + 1), "{backend}");
        for (j, &p) in smalls.iter().enumerate().step_by(2) {
            // SAFETY: live allocation; faults back from the device.
            let x = unsafe { (p as *const u32).read() };
            assert_eq!(x, if j == 0 { 1 } else { 0 }, "{backend}: small {j}");
        }
    }
}

#[test]
fn migrate_partial_unmap_fault() {
    for backend in BACKENDS {
        for freed in [0usize, 1] {
            let Some(svm) = ctx_migrating(small(backend).fault_chunk(2 << 20)) else { return };
            let kf = kernel(&svm, "fill", k::FILL);
            // Three adjacent allocations of 512 KiB + one of 512 KiB: one 2 MiB region.
            let n = (512 << 10) / 4;
            let mut parts: Vec<Option<ManagedVec<u32>>> =
                (0..4).map(|_| Some(svm.alloc_vec::<u32>(n).expect("part"))).collect();
            let base = parts[0].as_ref().map(|v| v.as_ptr() as usize).expect("p0");
            assert_eq!(base % (2 << 20), 0, "arena start is 2 MiB aligned");
            for (j, p) in parts.iter_mut().enumerate() {
                let p = p.as_mut().expect("live");
                assert_eq!(p.as_ptr() as usize, base + j * (512 << 10));
                launch_fill(&svm, &kf, p, 1, j as u32 * 1_000_000);
            }
            assert_eq!(svm.device_resident_pages(), 512);
            parts[freed] = None; // free the first or a middle part while on the device
            assert_eq!(svm.device_resident_pages(), 384, "{backend}");
            for (j, p) in parts.iter().enumerate() {
                if let Some(p) = p {
                    assert!(
                        p.iter().enumerate().all(|(i, &x)| x == i as u32 + j as u32 * 1_000_000),
                        "{backend}: part {j} after freeing {freed}"
                    );
                }
            }
            assert_eq!(svm.device_resident_pages(), 0, "{backend}");
        }
    }
}

#[test]
fn migrate_remap_fault() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let kf = kernel(&svm, "fill", k::FILL);
        let kc = kernel(&svm, "copy", k::COPY);
        let n = 32 * PAGE_WORDS;
        let mut old = svm.alloc_vec::<u32>(n).expect("old");
        launch_fill(&svm, &kf, &mut old, 2, 1); // old is device-owned
        let mut new = svm.alloc_vec::<u32>(n).expect("new");
        launch_copy(&svm, &kc, &old, &mut new);
        drop(old);
        assert_eq!(svm.device_resident_pages(), 32, "{backend}: only new is on the device");
        assert!(new.iter().enumerate().all(|(i, &x)| x == 2 * i as u32 + 1), "{backend}");
    }
}
