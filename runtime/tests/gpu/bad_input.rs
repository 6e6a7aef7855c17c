//! Bad input gets a clear error and loses nothing.

use svm::{Access, Arg, FreeError, KernelFaultKind, LaunchDescriptor, LaunchError};

use crate::{child_role, ctx, ctx_migrating, in_child, kernel, small, BACKENDS};

const POKE: &str = "@compute @workgroup_size(1) fn main() {
    let p = svm_arg_ptr(0u);
    let v = svm_load_u32(p);
    svm_store_u32(p, v + 1u);
}";

fn poke_error(svm: &svm::Svm, k: &svm::Kernel, addr: u64, access: &[Access<'_>]) -> Vec<KernelFaultKind> {
    match svm.launch(k, &LaunchDescriptor { args: &[Arg::Ptr(addr)], access, bindings: &[], workgroups: [1, 1, 1] }) {
        Err(LaunchError::Kernel { faults, total }) => {
            assert!(total as usize >= faults.len());
            assert!(faults.iter().all(|f| f.addr == addr), "{faults:?}");
            // One record per invocation (its first refused access); the
            // kinds of a load and a store of the same address may differ
            // between launches of different rights.
            let mut kinds: Vec<_> = faults.into_iter().map(|f| f.kind).collect();
            kinds.dedup();
            kinds
        }
        other => panic!("expected a kernel error for {addr:#x}, got {other:?}"),
    }
}

#[test]
fn kernel_pointer_errors() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "poke", POKE);
        let mut v = svm.alloc_from_slice(&[7u32; 1024]).expect("v");
        let other = svm.alloc_from_slice(&[5u32; 1024]).expect("other");
        let freed = svm.alloc_vec::<u32>(1024).expect("freed");
        let freed_addr = freed.addr_of(0);
        drop(freed);
        use KernelFaultKind::*;
        // null and outside the arena
        assert_eq!(poke_error(&svm, &k, 0, &[Access::read_write(&mut v)]), vec![OutOfArena]);
        assert_eq!(poke_error(&svm, &k, 0xdead_0000_0000, &[Access::read_write(&mut v)]), vec![OutOfArena]);
        let end = (svm.arena_base() + svm.arena_size()) as u64;
        assert_eq!(poke_error(&svm, &k, end, &[Access::read_write(&mut v)]), vec![OutOfArena]);
        // freed, undeclared, misaligned
        assert_eq!(poke_error(&svm, &k, freed_addr, &[Access::read_write(&mut v)]), vec![Unallocated]);
        assert_eq!(poke_error(&svm, &k, other.addr_of(3), &[Access::read_write(&mut v)]), vec![NotDeclared]);
        assert_eq!(poke_error(&svm, &k, v.addr_of(1) + 1, &[Access::read_write(&mut v)]), vec![Misaligned]);
        // a write to a range declared read-only: the load works, the store is refused
        assert_eq!(poke_error(&svm, &k, other.addr_of(3), &[Access::read(&other)]), vec![ReadOnly]);
        // Nothing was changed by any of them.
        assert!(v.iter().all(|&x| x == 7), "{backend}");
        assert!(other.iter().all(|&x| x == 5), "{backend}");
        // And a good launch still works afterwards.
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &[Arg::Ptr(v.addr_of(2))],
                access: &[Access::read_write(&mut v)],
                bindings: &[],
                workgroups: [1, 1, 1],
            },
        )
        .expect("good launch");
        assert_eq!(v[2], 8);
    }
}

#[test]
fn declared_ranges_must_be_allocated() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let k = kernel(&svm, "poke", POKE);
    let v = svm.alloc_vec::<u32>(1024).expect("v");
    let p = v.as_ptr() as *const u8;
    drop(v);
    // SAFETY: no references; the range is freed, which is the point.
    let access = [unsafe { Access::raw(p, 4096, svm::AccessMode::Read) }];
    let r = svm
        .launch(&k, &LaunchDescriptor { args: &[Arg::ptr(p)], access: &access, bindings: &[], workgroups: [1, 1, 1] });
    assert!(matches!(r, Err(LaunchError::BadRange { .. })), "{r:?}");
    let foreign = [0u8; 64];
    // SAFETY: as above; a stack buffer is not managed memory.
    let access = [unsafe { Access::raw(foreign.as_ptr(), 64, svm::AccessMode::Read) }];
    let r = svm.launch(
        &k,
        &LaunchDescriptor {
            args: &[Arg::ptr(foreign.as_ptr())],
            access: &access,
            bindings: &[],
            workgroups: [1, 1, 1],
        },
    );
    assert!(matches!(r, Err(LaunchError::BadRange { .. })), "{r:?}");
}

#[test]
fn free_errors() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let p = svm.alloc(10_000).expect("alloc").as_ptr();
    let mut stack = 0u8;
    assert_eq!(svm.free(&mut stack), Err(FreeError::NotAllocated { addr: &mut stack as *mut u8 as usize }));
    // SAFETY: only the address is used.
    let interior = unsafe { p.add(4096) };
    assert!(matches!(svm.free(interior), Err(FreeError::NotAllocated { .. })));
    svm.free(p).expect("free");
    assert!(matches!(svm.free(p), Err(FreeError::NotAllocated { .. })), "double free");
    assert_eq!(svm.live_allocations(), 0);
    assert!(matches!(svm.alloc(0), Err(svm::AllocError::ZeroSize)));
    assert!(matches!(svm.alloc(1 << 40), Err(svm::AllocError::TooLarge { .. })));
    let _a = svm.alloc(200 << 20).expect("most of the arena");
    assert!(matches!(svm.alloc(100 << 20), Err(svm::AllocError::ArenaExhausted { .. })));
}

/// Reused memory never shows earlier contents, on the CPU or the GPU.
#[test]
fn reused_memory_is_zeroed() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(
            &svm,
            "copy",
            "@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
                let src = svm_arg_ptr(0u); let dst = svm_arg_ptr(2u);
                if (g.x < 1024u) { svm_store_u32(svm_index(dst, g.x, 4u), svm_load_u32(svm_index(src, g.x, 4u))); }
            }",
        );
        let mut a = svm.alloc_from_slice(&[0xabcd_u32; 1024]).expect("a");
        let mut b = svm.alloc_vec::<u32>(1024).expect("b");
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &[Arg::ptr(a.as_ptr()), Arg::ptr(b.as_ptr())],
                access: &[Access::read_write(&mut a), Access::read_write(&mut b)],
                bindings: &[],
                workgroups: [16, 1, 1],
            },
        )
        .expect("launch");
        // Free both while their pages are on the device; reallocate.
        drop(a);
        drop(b);
        let fresh = svm.alloc_vec::<u32>(2048).expect("fresh");
        assert!(fresh.iter().all(|&x| x == 0), "{backend}: CPU sees old data");
        let mut out = svm.alloc_vec::<u32>(1024).expect("out");
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &[Arg::ptr(fresh.as_ptr()), Arg::ptr(out.as_ptr())],
                access: &[Access::read(&fresh), Access::read_write(&mut out)],
                bindings: &[],
                workgroups: [16, 1, 1],
            },
        )
        .expect("launch");
        assert!(out.iter().all(|&x| x == 0), "{backend}: GPU sees old data");
    }
}

/// A working set larger than the pool is refused before anything moves.
#[test]
fn pool_exhausted_is_an_error_and_loses_nothing() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend).pool_size(1 << 20)) else { return };
        let k = kernel(&svm, "poke", POKE);
        let mut big = svm.alloc_from_slice(&vec![3u32; 1 << 19]).expect("2 MiB");
        // Where the device imports host memory the excess would be served
        // in place (oversub.rs): the program holding the one coherent
        // window (AccessedBy) leaves no way but the error.
        let window = svm.alloc_from_slice(&[0u32; 1024]).expect("window");
        if svm.coherent_mode_available() {
            window.advise(svm::Advice::AccessedBy).expect("AccessedBy");
        }
        let r = svm.launch(
            &k,
            &LaunchDescriptor {
                args: &[Arg::ptr(big.as_ptr())],
                access: &[Access::read_write(&mut big)],
                bindings: &[],
                workgroups: [1, 1, 1],
            },
        );
        assert!(matches!(r, Err(LaunchError::PoolExhausted { needed: 512, total: 256, .. })), "{r:?}");
        assert!(big.iter().all(|&x| x == 3));
        assert_eq!(svm.stats().h2d_pages, 0);
    }
}

/// A forked child must not read stale host copies of pages the device owns:
/// managed memory is not mapped in the child at all, so it crashes loudly.
#[test]
fn fork_child_cannot_read_stale_data() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "poke", POKE);
        let mut v = svm.alloc_from_slice(&[41u32; 16]).expect("v");
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &[Arg::ptr(v.as_ptr())],
                access: &[Access::read_write(&mut v)],
                bindings: &[],
                workgroups: [1, 1, 1],
            },
        )
        .expect("launch");
        let p = v.as_ptr();
        // SAFETY: fork in a test; the child only reads one address and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: the child reads managed memory, which must fault.
            let x = unsafe { core::ptr::read_volatile(p) };
            // Reaching here would be the silent wrong answer.
            // SAFETY: _exit is always safe to call.
            unsafe { libc::_exit(if x == 42 { 3 } else { 4 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV,
            "{backend}: child status {status:#x}"
        );
        // The parent still reads the right value.
        assert_eq!(v[0], 42);
    }
}

/// A CPU access to freed managed memory crashes with a message instead of
/// reading something.
#[test]
fn cpu_use_after_free_crashes() {
    if let Some(role) = child_role() {
        let backend = svm::FaultBackendKind::parse(&role).expect("role");
        let svm = ctx(small(backend)).expect("child needs the GPU its parent had");
        let v = svm.alloc_from_slice(&[1u32; 16]).expect("v");
        let p = v.as_ptr();
        drop(v);
        // SAFETY: deliberately invalid: the child must die here.
        let _ = unsafe { core::ptr::read_volatile(p) };
        std::process::exit(0);
    }
    if ctx(small(BACKENDS[0])).is_none() {
        return;
    }
    for backend in BACKENDS {
        let st = in_child("bad_input::cpu_use_after_free_crashes", backend.name());
        use std::os::unix::process::ExitStatusExt;
        let sig = st.signal();
        assert!(sig == Some(libc::SIGSEGV) || sig == Some(libc::SIGABRT), "{backend}: child ended with {st:?}");
    }
}

/// Labels name allocations in kernel errors and `Svm::label`; they go with
/// the allocation, and an unallocated address cannot be labelled.
#[test]
fn labels_name_allocations_in_errors() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let k = kernel(&svm, "poke", POKE);
    let v = svm.alloc_from_slice(&[7u32; 1024]).expect("v");
    v.set_label("edges");
    assert_eq!(v.label().as_deref(), Some("edges"));
    // Undeclared: refused, and the message names the allocation.
    let addr = v.addr_of(16);
    let e = svm
        .launch(&k, &LaunchDescriptor { args: &[Arg::Ptr(addr)], access: &[], bindings: &[], workgroups: [1, 1, 1] })
        .expect_err("undeclared access");
    let msg = e.to_string();
    assert!(msg.contains("`edges`+0x40"), "{msg}");
    // Sub-page blocks are labelled one by one.
    let a = svm.alloc_box(1u64).expect("a");
    let b = svm.alloc_box(2u64).expect("b");
    a.as_vec().set_label("node a");
    assert_eq!(svm.label(a.as_vec().as_ptr().cast()).as_deref(), Some("node a"));
    assert_eq!(svm.label(b.as_vec().as_ptr().cast()), None, "the neighbour block has none");
    // Freed: no live allocation has the label, but an error formatted
    // after its owner dropped still names it; the next allocation there
    // has none.
    let at = v.as_ptr() as usize;
    drop(v);
    assert_eq!(svm.label(at as *const u8), None);
    let late = e.to_string();
    assert!(late.contains("`edges`+0x40, freed"), "{late}");
    let w = svm.alloc_vec::<u32>(1024).expect("w");
    assert_eq!(w.as_ptr() as usize, at, "first fit reuses the range");
    assert_eq!(w.label(), None);
    assert_eq!(svm.alloc_vec::<u32>(1).expect("x").label(), None);
    // A label that is itself managed memory the device owns: copied
    // (faulting it back) before any lock is taken, so no deadlock.
    let mut text = svm.alloc_vec::<u32>(1024).expect("text");
    let fill = kernel(
        &svm,
        "fill",
        "@group(0) @binding(0) var<storage, read_write> v: array<u32>;
        @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
            if (g.x < arrayLength(&v)) { v[g.x] = 0x61616161u; }
        }",
    );
    svm.launch(
        &fill,
        &LaunchDescriptor {
            bindings: &[svm::Binding::read_write(&mut text)],
            workgroups: [16, 1, 1],
            ..Default::default()
        },
    )
    .expect("fill");
    if svm.mapping_mode() != svm::MappingMode::Coherent {
        assert!(svm.device_resident_pages() > 0, "the text is on the device");
    }
    // SAFETY: 16 bytes of a live allocation of ours, ASCII 'a' once read
    // (the kernel finished); not read before `set_label` copies them.
    let label = unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(text.as_ptr().cast::<u8>(), 16)) };
    let w2 = svm.alloc_vec::<u32>(4).expect("w2");
    w2.set_label(label);
    assert_eq!(w2.label().as_deref(), Some("aaaaaaaaaaaaaaaa"));
    let far = svm.arena_base() + svm.arena_size() - 4096;
    assert_eq!(svm.set_label(far as *const u8, "nothing"), Err(svm::LabelError::NotAllocated { addr: far }));
    // A pointer anywhere inside a small (sub-page) block names that block
    // (it was NotAllocated unless it was the block's first byte).
    let b = svm.alloc_box([0u32; 8]).expect("box");
    let inside = b.as_ptr().cast::<u8>().wrapping_add(12);
    svm.set_label(inside, "inner").expect("a pointer inside a small block");
    assert_eq!(svm.label(b.as_ptr().cast()).as_deref(), Some("inner"));
    assert_eq!(svm.label(inside).as_deref(), Some("inner"));
}
