//! Arenas beyond 4 GiB: a large reservation costs what is allocated, and
//! kernels reach managed memory above 4 GiB by pointer (both check paths)
//! and by binding; the CPU gets it back by faults.

use svm::{
    Access, Arg, Binding, KernelFaultKind, LaunchDescriptor, LaunchError, LaunchOptions, MappingMode, SvmDescriptor,
};

use crate::kernels::{AFFINE, FILL};
use crate::{ctx, kernel, BACKENDS};

const GIB: usize = 1 << 30;

/// v[i] = v[i] * 2 + 1 on a bound buffer (no prelude).
const BOUND: &str = "@group(0) @binding(0) var<storage, read_write> v: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&v)) { v[g.x] = v[g.x] * 2u + 1u; }
}";

const POKE: &str = "@compute @workgroup_size(1) fn main() {
    let p = svm_arg_ptr(0u);
    svm_store_u32(p, svm_load_u32(p) + 1u);
}";

fn affine(svm: &svm::Svm, k: &svm::Kernel, v: &mut svm::ManagedVec<u32>, mul: u32, add: u32) {
    let args = [Arg::ptr(v.as_ptr()), Arg::U32(v.len() as u32), Arg::U32(mul), Arg::U32(add)];
    svm.launch(
        k,
        &LaunchDescriptor { args: &args, access: &[Access::read_write(v)], bindings: &[], workgroups: [16, 1, 1] },
    )
    .expect("affine launch");
}

fn poke_kinds(svm: &svm::Svm, k: &svm::Kernel, addr: u64) -> Vec<KernelFaultKind> {
    match svm
        .launch(k, &LaunchDescriptor { args: &[Arg::Ptr(addr)], access: &[], bindings: &[], workgroups: [1, 1, 1] })
    {
        Err(LaunchError::Kernel { faults, .. }) => faults.into_iter().map(|f| f.kind).collect(),
        other => panic!("expected a kernel error for {addr:#x}, got {other:?}"),
    }
}

/// A 16 GiB arena in the software mode: 6 GiB allocated, kernels read and
/// write data above 4 GiB through bindings, declared pointers (the extent
/// path), undeclared pointers (a replayable launch: the page-table path),
/// and a vector straddling the 4 GiB boundary (extents in two banks: the
/// page table); the CPU reads the results back by faults. The sparse and
/// coherent modes refuse such an arena with a clear error.
#[test]
fn kernels_and_faults_beyond_4_gib() {
    for backend in BACKENDS {
        let desc = SvmDescriptor::default().arena_size(16 * GIB).pool_size(64 << 20).fault_backend(backend);
        let mode = std::env::var("SVM_MAPPING_MODE").unwrap_or_default();
        if mode == "sparse" || mode == "coherent" {
            match svm::Svm::with_descriptor(&desc) {
                Err(svm::SvmError::Config(m)) => assert!(m.contains("arena"), "{m}"),
                Err(svm::SvmError::NoAdapter(_)) if std::env::var("SVM_REQUIRE_GPU").as_deref() != Ok("1") => {}
                other => panic!("a 16 GiB {mode} arena: {other:?}"),
            }
            eprintln!(
                "NOT APPLICABLE: the {mode} mode's arena is its device view; large arenas are the software mode's"
            );
            return;
        }
        let Some(svm) = ctx(desc) else { return };
        assert_eq!(svm.mapping_mode(), MappingMode::Software);
        assert_eq!(svm.arena_size(), 16 * GIB);
        // Below 4 GiB: a block ending 2 MiB short of it; then a vector that
        // straddles the boundary; then 6 GiB; then data above it all.
        let low = svm.alloc(4 * GIB - (2 << 20)).expect("low block");
        let mut straddle = svm.alloc_vec::<u32>(1 << 20).expect("straddling vector");
        let big = svm.alloc(6 * GIB).expect("6 GiB");
        let mut high = svm.alloc_from_slice(&(0..100_000u32).collect::<Vec<_>>()).expect("high vector");
        let base = svm.arena_base() as u64;
        let s = straddle.addr_of(0) - base;
        assert!(s < 4 << 30 && s + (4 << 20) > 4 << 30, "straddles 4 GiB: {s:#x}");
        assert!(high.addr_of(0) - base >= 10 << 30, "above 10 GiB: {:#x}", high.addr_of(0) - base);
        // The big block works on the CPU at both ends.
        // SAFETY: `big` is a live 6 GiB allocation of ours, nothing else uses it.
        unsafe {
            big.as_ptr().write(7);
            big.as_ptr().add(6 * GIB - 1).write(9);
        }

        // Bound access above 10 GiB.
        let kb = kernel(&svm, "large bound", BOUND);
        let n = high.len() as u32;
        svm.launch(
            &kb,
            &LaunchDescriptor {
                bindings: &[Binding::read_write(&mut high)],
                workgroups: [n.div_ceil(64), 1, 1],
                ..Default::default()
            },
        )
        .expect("bound launch");
        // Declared pointers: the extent path, in the arena's third bank.
        let ka = kernel(&svm, "large affine", AFFINE);
        let before = svm.stats();
        affine(&svm, &ka, &mut high, 3, 5);
        assert_eq!(svm.stats().extent_passes, before.extent_passes + 1, "above 4 GiB on the extent path");
        assert!(
            high.iter().enumerate().all(|(i, &x)| x == (i as u32 * 2 + 1) * 3 + 5),
            "bound then affine above 10 GiB"
        );
        // A vector across the 4 GiB boundary: extents in two banks.
        straddle.iter_mut().enumerate().for_each(|(i, x)| *x = i as u32);
        let before = svm.stats();
        affine(&svm, &ka, &mut straddle, 2, 1);
        assert_eq!(svm.stats().page_table_passes, before.page_table_passes + 1, "two banks: the page table");
        assert!(straddle.iter().enumerate().all(|(i, &x)| x == i as u32 * 2 + 1), "across 4 GiB");
        // Undeclared pointers above 4 GiB: a replayable launch, faults then
        // the page table.
        let kf = kernel(&svm, "large fill", FILL);
        let args = [Arg::ptr(high.as_ptr()), Arg::U32(n), Arg::U32(7), Arg::U32(1)];
        let r = svm
            .launch_with(
                &kf,
                &LaunchDescriptor { args: &args, access: &[], bindings: &[], workgroups: [16, 1, 1] },
                // SAFETY: the kernel writes only `high`, which no reference reads meanwhile.
                &unsafe { LaunchOptions::replayable().allow_undeclared_writes() },
            )
            .expect("replayable launch");
        assert!(r.replays >= 1, "the first pass faulted: {r:?}");
        assert!(high.iter().enumerate().all(|(i, &x)| x == i as u32 * 7 + 1), "replayable fill above 10 GiB");

        // Errors above 4 GiB keep their kinds: above the allocated
        // high-water mark (never allocated), and past the arena's end.
        let kp = kernel(&svm, "large poke", POKE);
        assert_eq!(poke_kinds(&svm, &kp, base + (12 << 30)), vec![KernelFaultKind::Unallocated]);
        assert_eq!(poke_kinds(&svm, &kp, base + (16 << 30)), vec![KernelFaultKind::OutOfArena]);
        assert_eq!(poke_kinds(&svm, &kp, base + (1 << 44)), vec![KernelFaultKind::OutOfArena]);

        // The page table uploaded is what was allocated, not the reservation.
        let allocated_pages = (4 * GIB + (4 << 20) + 6 * GIB) / 4096 + 100;
        let uploaded = svm.stats().pt_upload_bytes;
        assert!(uploaded <= 4 * allocated_pages as u64 + (1 << 20), "{uploaded} bytes of page table uploaded");
        // SAFETY: written above, still live.
        unsafe {
            assert_eq!(big.as_ptr().read(), 7);
            assert_eq!(big.as_ptr().add(6 * GIB - 1).read(), 9);
        }
        svm.free(big.as_ptr()).expect("free 6 GiB");
        svm.free(low.as_ptr()).expect("free low");
    }
}

/// The default reservation is 64 GiB in the software mode and costs little
/// to create; the sparse and coherent modes default to 1 GiB.
#[test]
fn default_arena_is_a_large_reservation() {
    let Some(svm) = ctx(SvmDescriptor::default().pool_size(16 << 20).fault_backend(BACKENDS[0])) else { return };
    let want = match svm.mapping_mode() {
        MappingMode::Software => SvmDescriptor::DEFAULT_ARENA_SIZE,
        _ => SvmDescriptor::DEFAULT_VIEW_ARENA_SIZE,
    };
    assert_eq!(svm.arena_size(), want);
    let mut v = svm.alloc_from_slice(&[1u32; 4096]).expect("v");
    let ka = kernel(&svm, "default affine", AFFINE);
    affine(&svm, &ka, &mut v, 2, 0);
    assert!(v.iter().all(|&x| x == 2));
    assert!(svm.stats().pt_upload_bytes <= 64 << 10, "{} bytes of page table", svm.stats().pt_upload_bytes);
}

/// An arena whose page table would not fit the device's largest binding is
/// refused at creation with the limit in the message (lavapipe binds 128
/// MiB: 128 GiB of arena), never a failure later when allocations reach it.
#[test]
fn an_arena_beyond_the_devices_page_table_is_refused_at_creation() {
    let desc = SvmDescriptor::default().arena_size(SvmDescriptor::MAX_ARENA_SIZE).pool_size(16 << 20);
    let desc = desc.fault_backend(BACKENDS[0]).mapping(MappingMode::Software);
    match svm::Svm::with_descriptor(&desc) {
        Ok(svm) => {
            // This device binds a 1 GiB page table: the arena works to its end.
            let top = svm.arena_base() + svm.arena_size() - 4096;
            let v = svm.alloc(svm.arena_size() - 4096).expect("all but a page");
            let last = svm.alloc(4096).expect("the last page");
            assert_eq!(last.as_ptr() as usize, top);
            svm.free(last.as_ptr()).expect("free");
            svm.free(v.as_ptr()).expect("free");
        }
        Err(svm::SvmError::Config(m)) => assert!(m.contains("at most") && m.contains("binds"), "{m}"),
        Err(svm::SvmError::NoAdapter(_)) if std::env::var("SVM_REQUIRE_GPU").as_deref() != Ok("1") => {}
        Err(e) => panic!("{e}"),
    }
}
