//! The coherent mode imports the arena as allocations reach it: creating a
//! coherent arena commits no memory for its size, and kernels reach
//! allocations made after others were in use — by pointer and by binding,
//! across window boundaries, with a launch in flight while the view is
//! imported again.

use svm::{Access, Arg, Binding, LaunchDescriptor, MappingMode, Svm, SvmDescriptor, SvmError};

use crate::kernels::AFFINE;
use crate::{ctx, kernel, refused_without_vulkan, BACKENDS, VULKAN};

const MIB: usize = 1 << 20;

/// v[i] = v[i] * 2 + 1 on a bound buffer (no prelude).
const BOUND: &str = "@group(0) @binding(0) var<storage, read_write> v: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    let i = g.x + g.y * n.x * 64u;
    if (i < arrayLength(&v)) { v[i] = v[i] * 2u + 1u; }
}";

/// The process's resident memory (VmRSS), bytes.
fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb = s.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS").trim().trim_end_matches(" kB");
    kb.trim().parse::<usize>().expect("VmRSS kB") * 1024
}

/// A coherent-mode runtime; `None` (saying why) where this build or device
/// has no coherent mode and the capability is not required.
fn coherent(desc: SvmDescriptor) -> Option<crate::TestSvm> {
    let desc = desc.mapping(MappingMode::Coherent);
    if !VULKAN {
        match Svm::with_descriptor(&desc) {
            Err(e) => refused_without_vulkan("the coherent mapping mode", &e),
            Ok(_) => panic!("the coherent mode without the `vulkan` feature"),
        }
        return None;
    }
    if std::env::var("SVM_REQUIRE_VK_CAPS").as_deref() != Ok("1") {
        if let Err(SvmError::Config(m)) = Svm::with_descriptor(&desc) {
            eprintln!("SKIP: no coherent mode on this device ({m}); SVM_REQUIRE_VK_CAPS=1 makes it a failure");
            return None;
        }
    }
    ctx(desc)
}

fn affine(svm: &Svm, k: &svm::Kernel, v: &mut svm::ManagedVec<u32>, mul: u32, add: u32) {
    let args = [Arg::ptr(v.as_ptr()), Arg::U32(v.len() as u32), Arg::U32(mul), Arg::U32(add)];
    svm.launch(
        k,
        &LaunchDescriptor { args: &args, access: &[Access::read_write(v)], bindings: &[], workgroups: [64, 1, 1] },
    )
    .expect("affine launch");
}

fn bound(svm: &Svm, k: &svm::Kernel, v: &mut svm::ManagedVec<u32>) {
    let groups = (v.len() as u32).div_ceil(64);
    let (x, y) = (groups.min(4096), groups.div_ceil(4096));
    svm.launch(
        k,
        &LaunchDescriptor { bindings: &[Binding::read_write(v)], workgroups: [x, y, 1], ..Default::default() },
    )
    .expect("bound launch");
}

#[test]
fn coherent_view_grows_with_allocations() {
    for backend in BACKENDS {
        let desc = SvmDescriptor::default().arena_size(512 * MIB).pool_size(16 << 20).fault_backend(backend);
        let before = rss();
        let Some(svm) = coherent(desc) else { return };
        let grown = rss().saturating_sub(before);
        // Importing the whole arena at creation populated all 512 MiB.
        assert!(grown < 256 * MIB, "{backend}: creating a 512 MiB coherent arena took {} MiB", grown / MIB);
        let (ka, kb) = (kernel(&svm, "coherent affine", AFFINE), kernel(&svm, "coherent bound", BOUND));

        let mut a = svm.alloc_from_slice(&(0..4096u32).collect::<Vec<_>>()).expect("a");
        affine(&svm, &ka, &mut a, 3, 1);
        assert!(a.iter().enumerate().all(|(i, &x)| x == i as u32 * 3 + 1), "{backend}: a by pointer");

        // A launch in flight on `a` while allocations take the view past
        // what it covered: it keeps the import it was encoded with.
        let q = svm.create_queue();
        let args = [Arg::ptr(a.as_ptr()), Arg::U32(a.len() as u32), Arg::U32(2), Arg::U32(0)];
        let access = [Access::read_write(&mut a)];
        let pending = q
            .launch(&ka, &LaunchDescriptor { args: &args, access: &access, bindings: &[], workgroups: [64, 1, 1] })
            .expect("queued launch");
        let filler = svm.alloc(124 * MIB).expect("filler");
        // A vector across the 128 MiB mark of the view (a window boundary
        // on lavapipe), and one far above.
        let mut straddle = svm.alloc_from_slice(&(0..(MIB as u32)).collect::<Vec<_>>()).expect("straddle");
        let mark = svm.arena_base() + 128 * MIB;
        assert!(straddle.addr_of(0) < mark as u64 && straddle.addr_of(MIB - 1) >= mark as u64, "{backend}: straddles");
        let big = svm.alloc(200 * MIB).expect("200 MiB");
        let mut high = svm.alloc_from_slice(&(0..(MIB as u32)).collect::<Vec<_>>()).expect("high");
        pending.wait().expect("the launch in flight");
        assert!(a.iter().enumerate().all(|(i, &x)| x == (i as u32 * 3 + 1) * 2), "{backend}: a after the growth");

        // The new allocations by binding and by pointer.
        for v in [&mut straddle, &mut high] {
            bound(&svm, &kb, v);
            affine(&svm, &ka, v, 1, 5);
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32 * 2 + 6), "{backend}: a new vector");
        }
        // The CPU side of the raw blocks is plain memory.
        // SAFETY: live allocations of ours, nothing else uses them.
        unsafe {
            big.as_ptr().add(200 * MIB - 1).write(3);
            filler.as_ptr().write(4);
            assert_eq!((big.as_ptr().add(200 * MIB - 1).read(), filler.as_ptr().read()), (3, 4));
        }
        svm.free(big.as_ptr()).expect("free big");
        svm.free(filler.as_ptr()).expect("free filler");
    }
}
