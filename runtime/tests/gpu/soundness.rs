//! Issue 13: what a careless caller or a hostile kernel could break through
//! the safe API. Each test failed before its fix.

use svm::{Access, AllocError, Arg, FreeError, LaunchDescriptor, LaunchError, LaunchOptions};

use crate::{ctx, ctx_migrating, kernel, small, BACKENDS};

/// The raw `free` cannot free what a `ManagedVec` holds: otherwise a later
/// allocation would share its memory with the old vector.
#[test]
fn raw_free_refuses_owned_allocations() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let mut v = svm.alloc_from_slice(&[7u32; 1024]).expect("v");
        let live = svm.live_allocations();
        assert_eq!(svm.free(v.as_mut_ptr().cast()), Err(FreeError::Owned { addr: v.as_ptr() as usize }));
        assert_eq!(svm.live_allocations(), live, "nothing freed");
        let w = svm.alloc_from_slice(&[9u32; 1024]).expect("w");
        assert_ne!(w.as_ptr(), v.as_ptr(), "no two owners of one memory");
        assert!(v.iter().all(|&x| x == 7) && w.iter().all(|&x| x == 9));
        drop(v);
        assert_eq!(svm.live_allocations(), live, "the owner's drop frees it");
    }
}

#[test]
fn over_aligned_element_types_are_refused() {
    #[repr(C, align(8192))]
    #[derive(Copy, Clone, bytemuck::Pod, bytemuck::Zeroable)]
    struct Big([u8; 8192]);
    let Some(svm) = ctx(small(svm::FaultBackendKind::Uffd)) else { return };
    assert!(matches!(svm.alloc_vec::<Big>(2), Err(AllocError::Alignment { align: 8192, max: 4096 })));
}

#[test]
fn zero_workgroups_is_an_error() {
    let Some(svm) = ctx(small(svm::FaultBackendKind::Uffd)) else { return };
    let k = kernel(&svm, "fill", "@compute @workgroup_size(1) fn main() { svm_store_u32(svm_arg_ptr(0u), 1u); }");
    let mut v = svm.alloc_vec::<u32>(4).expect("v");
    let args = [Arg::ptr(v.as_ptr())];
    for wg in [[0, 1, 1], [1, 0, 1], [1, 1, 0]] {
        let r = svm.launch(
            &k,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read_write(&mut v)],
                workgroups: wg,
                ..Default::default()
            },
        );
        assert!(matches!(r, Err(LaunchError::BadDispatch { .. })), "{wg:?}: {r:?}");
    }
    assert_eq!(svm.stats().launches, 0);
    let _ = (ctx_migrating, LaunchOptions::default());
}
