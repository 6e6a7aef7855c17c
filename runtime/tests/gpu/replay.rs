//! GPU-side faults with replay: kernels that discover their working set.

use svm::{Access, Arg, KernelFaultKind, LaunchDescriptor, LaunchError, LaunchOptions};

use crate::list::{permutation, Node};
use crate::{ctx, ctx_migrating, kernel, small, BACKENDS};

/// Build `lists` linked lists over `n` node slots of `stride` bytes each, in
/// random order. Returns (node storage, heads, expected sums).
fn build(
    svm: &svm::Svm,
    n: usize,
    lists: usize,
    stride: usize,
) -> (svm::ManagedVec<u8>, svm::ManagedVec<u64>, Vec<u32>) {
    let mut store = svm.alloc_vec::<u8>(n * stride).expect("nodes");
    let mut heads = svm.alloc_vec::<u64>(lists).expect("heads");
    let base = store.as_ptr() as u64;
    let order = permutation(n, 0xdead_beef_1234_5678);
    let mut want = vec![0u32; lists];
    for (pos, &slot) in order.iter().enumerate() {
        let l = pos % lists;
        let value = slot as u32 * 3 + 1;
        want[l] = want[l].wrapping_add(value);
        let next = order.get(pos + lists).map_or(0, |&s| base + (s * stride) as u64);
        let node = Node { next, value, pad: 0 };
        store[slot * stride..slot * stride + 16].copy_from_slice(bytemuck::bytes_of(&node));
        if pos < lists {
            heads[l] = base + (slot * stride) as u64;
        }
    }
    (store, heads, want)
}

#[test]
fn list_without_declared_ranges() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let k = kernel(&svm, "list", svm::shaders::kernels::LIST);
        let lists = 128;
        let (store, heads, want) = build(&svm, 20_000, lists, 16);
        let out = svm.alloc_vec::<u32>(lists).expect("out");
        let args = [Arg::ptr(heads.as_ptr()), Arg::ptr(out.as_ptr()), Arg::U32(lists as u32), Arg::U32(1 << 20)];
        let before = svm.stats();
        let r = svm
            .launch_with(
                &k,
                &LaunchDescriptor { args: &args, access: &[], bindings: &[], workgroups: [2, 1, 1] },
                // SAFETY: no reference into `out` (what the kernel writes)
                // is alive during the call.
                &unsafe { LaunchOptions::replayable().allow_undeclared_writes() },
            )
            .expect("replayable launch");
        assert!(r.replays >= 1 && r.gpu_fault_pages >= 1, "{backend}: {r:?}");
        assert_eq!(&out[..], &want[..], "{backend}");
        let s = svm.stats().since(&before);
        assert_eq!(s.replays, u64::from(r.replays));
        assert!(s.cpu_faults >= 1, "out came back by CPU fault");
        drop(store);
    }
}

/// Each node on its own page and a 4 KiB chunk: every pass discovers one more
/// node of each list; the runtime must keep making progress until the end.
#[test]
fn adversarial_one_node_per_page_makes_progress() {
    let Some(svm) = ctx(small(BACKENDS[0]).fault_chunk(4096)) else { return };
    let k = kernel(&svm, "list", svm::shaders::kernels::LIST);
    let (n, lists) = (48, 2);
    let (_store, heads, want) = build(&svm, n, lists, 4096);
    let mut out = svm.alloc_vec::<u32>(lists).expect("out");
    let args = [Arg::ptr(heads.as_ptr()), Arg::ptr(out.as_ptr()), Arg::U32(lists as u32), Arg::U32(1000)];
    // The output declared (a replayable launch writes only what it declared
    // read-write), the lists found by faults.
    let r = svm
        .launch_with(
            &k,
            &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut out)], ..Default::default() },
            &LaunchOptions::replayable(),
        )
        .expect("launch");
    // Each list has n / lists nodes, each on its own page: one pass per node,
    // plus the pass for heads.
    assert!(r.replays as usize >= n / lists, "{r:?}");
    assert!(r.replays as usize <= n / lists + 3, "{r:?}");
    assert_eq!(&out[..], &want[..]);

    // With a bound below what the list needs: a clear error.
    let desc = LaunchDescriptor { args: &args, access: &[Access::read_write(&mut out)], ..Default::default() };
    let r = svm.launch_with(&k, &desc, &LaunchOptions::replayable().max_replays(3));
    match r {
        Err(LaunchError::ReplayLimit { replays: 3, pending }) => assert!(!pending.is_empty()),
        other => panic!("expected ReplayLimit, got {other:?}"),
    }
}

/// Write faults: a kernel that writes memory it never declared. Refused
/// (the CPU may hold references to it: `c` is borrowed shared here) unless
/// the caller promises otherwise with `allow_undeclared_writes`.
#[test]
fn vadd_without_declared_ranges() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "vadd", svm::shaders::kernels::VADD);
        let n = 300_000usize;
        let a = svm.alloc_from_slice(&(0..n).map(|i| i as f32).collect::<Vec<_>>()).expect("a");
        let b = svm.alloc_from_slice(&vec![0.5f32; n]).expect("b");
        let c = svm.alloc_vec::<f32>(n).expect("c");
        let args = [Arg::ptr(a.as_ptr()), Arg::ptr(b.as_ptr()), Arg::ptr(c.as_ptr()), Arg::U32(n as u32)];
        let desc = LaunchDescriptor { args: &args, workgroups: [256, 1, 1], ..Default::default() };
        let shared: &[f32] = &c;
        match svm.launch_with(&k, &desc, &LaunchOptions::replayable()) {
            Err(LaunchError::Kernel { faults, .. }) => {
                assert!(faults.iter().all(|f| f.kind == KernelFaultKind::NotDeclared), "{backend}: {faults:?}");
                assert!(faults.iter().all(|f| (f.addr as usize).wrapping_sub(c.as_ptr() as usize) < n * 4));
            }
            other => panic!("{backend}: undeclared writes must be refused: {other:?}"),
        }
        assert!(shared.iter().all(|&x| x == 0.0), "{backend}: nothing written behind a shared borrow");
        // Declared read (a and b found by faults is fine; c declared read):
        // the write is ReadOnly.
        let access = [Access::read(&c)];
        match svm.launch_with(&k, &LaunchDescriptor { access: &access, ..desc.clone() }, &LaunchOptions::replayable()) {
            Err(LaunchError::Kernel { faults, .. }) => {
                assert!(faults.iter().all(|f| f.kind == KernelFaultKind::ReadOnly), "{backend}: {faults:?}")
            }
            other => panic!("{backend}: a write to a read declaration must be refused: {other:?}"),
        }
        assert!(c.iter().all(|&x| x == 0.0));
        // SAFETY: no reference into `c` is alive during the call.
        let opts = unsafe { LaunchOptions::replayable().allow_undeclared_writes() };
        let r = svm.launch_with(&k, &desc, &opts).expect("launch");
        assert!(r.replays >= 1, "{r:?}");
        for i in 0..n {
            assert_eq!(c[i], i as f32 + 0.5, "{backend}: c[{i}]");
        }
    }
}

/// Not replayable: an undeclared access is an error naming the address, and
/// the kernel's other writes do not reach the host copy of host pages.
#[test]
fn non_replayable_fault_is_an_error() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let k = kernel(
        &svm,
        "copy1",
        "@compute @workgroup_size(1) fn main() { svm_store_u32(svm_arg_ptr(2u), svm_load_u32(svm_arg_ptr(0u)) + 1u); }",
    );
    let src = svm.alloc_from_slice(&[5u32; 4]).expect("src");
    let dst = svm.alloc_from_slice(&[9u32; 4]).expect("dst");
    let args = [Arg::ptr(src.as_ptr()), Arg::ptr(dst.as_ptr())];
    let r = svm.launch(
        &k,
        &LaunchDescriptor { args: &args, access: &[Access::read(&src)], bindings: &[], workgroups: [1, 1, 1] },
    );
    match r {
        Err(LaunchError::Kernel { faults, .. }) => {
            assert_eq!(faults[0].kind, KernelFaultKind::NotDeclared);
            assert_eq!(faults[0].addr, dst.as_ptr() as u64);
        }
        other => panic!("expected NotDeclared, got {other:?}"),
    }
    assert_eq!(&dst[..], &[9, 9, 9, 9]);
}

/// Bad pointers stay errors (with kind and address) in replayable launches.
#[test]
fn replayable_bad_pointers_are_errors() {
    let Some(svm) = ctx(small(BACKENDS[1])) else { return };
    let k = kernel(&svm, "poke", "@compute @workgroup_size(1) fn main() { svm_store_u32(svm_arg_ptr(0u), 1u); }");
    let freed = svm.alloc_vec::<u32>(8).expect("v");
    let freed_addr = freed.as_ptr() as u64;
    drop(freed);
    for (addr, kind) in [(0u64, KernelFaultKind::OutOfArena), (freed_addr, KernelFaultKind::Unallocated)] {
        let r = svm.launch_with(
            &k,
            &LaunchDescriptor { args: &[Arg::Ptr(addr)], access: &[], bindings: &[], workgroups: [1, 1, 1] },
            &LaunchOptions::replayable(),
        );
        match r {
            Err(LaunchError::Kernel { faults, .. }) => assert_eq!((faults[0].addr, faults[0].kind), (addr, kind)),
            other => panic!("{addr:#x}: expected {kind:?}, got {other:?}"),
        }
    }
}

/// More GPU faults in one pass than its fault list holds (4096): the
/// runtime reads them all from the pass's fault bitmaps, so one replay
/// serves them (before: a replay per 4096 faults, each migrating scattered
/// chunks: 14–16 replays and 3,900 copies for 256 MiB read page by page).
#[test]
fn more_faults_than_the_list_holds_need_one_replay() {
    const SUM_PAGES: &str = "@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) t: u32) {
    let x = svm_arg_ptr(0u);
    let pages = svm_arg_u32(2u);
    let y = svm_arg_ptr(3u);
    var s = 0u;
    for (var i = t; i < pages; i += 64u) { s += svm_load_u32(svm_index(x, i * 1024u, 4u)); }
    svm_store_u32(svm_index(y, t, 4u), s);
}";
    for backend in BACKENDS {
        // One page a fault: 12,288 faults, three lists' worth.
        let Some(svm) = ctx(small(backend).fault_chunk(4096)) else { return };
        let k = kernel(&svm, "sum pages", SUM_PAGES);
        let pages = 12_288usize;
        let x = svm.alloc_from_iter((0..pages * 1024).map(|i| (i / 1024 * 3 + 1) as u32)).expect("x");
        let mut y = svm.alloc_vec::<u32>(64).expect("y");
        let args = [Arg::ptr(x.as_ptr()), Arg::U32(pages as u32), Arg::ptr(y.as_ptr())];
        let r = svm
            .launch_with(
                &k,
                &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut y)], ..Default::default() },
                &LaunchOptions::replayable(),
            )
            .expect("launch");
        // The first pass checks extents (y is mapped) and reports one access
        // an invocation; the second finds the rest in bulk, all of them.
        assert!(r.replays <= 2, "{backend}: {r:?}");
        assert!(r.gpu_fault_pages >= pages as u64, "{backend}: {r:?}");
        for t in 0..64 {
            let want = (t..pages).step_by(64).fold(0u32, |s, i| s.wrapping_add(i as u32 * 3 + 1));
            assert_eq!(y[t], want, "{backend}: y[{t}]");
        }
    }
}
