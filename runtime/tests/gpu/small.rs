//! Sub-page allocations: small owners (`alloc_box`, the collections'
//! allocator) share pages as size-class blocks; a kernel that may write one
//! block cannot write its neighbours (byte-exact write rights), freed blocks
//! read zero when handed out again, and a GPU pointer walk over one-by-one
//! allocated nodes agrees with the CPU. Every mode, both backends.

use svm::allocator_api2::boxed::Box as ABox;
use svm::{Access, Arg, KernelFaultKind, LaunchDescriptor, LaunchError, ManagedPtr};

use crate::{ctx, kernel, small, BACKENDS};

#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
struct Node {
    next: ManagedPtr<Node>,
    value: u32,
    pad: u32,
}

/// 16-byte nodes cost 16 bytes of arena each, not a page.
#[test]
fn small_boxes_share_pages() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let live = svm.live_allocations();
    let boxes: Vec<_> =
        (0..1000u32).map(|i| svm.alloc_box(Node { next: ManagedPtr::NULL, value: i, pad: 0 }).expect("box")).collect();
    let mut pages: Vec<usize> = boxes.iter().map(|b| b.ptr().addr() as usize / 4096).collect();
    pages.sort_unstable();
    pages.dedup();
    assert!(pages.len() <= 1000 * 16 / 4096 + 1, "1000 16-byte boxes on {} pages", pages.len());
    let mut addrs: Vec<u64> = boxes.iter().map(|b| b.ptr().addr()).collect();
    addrs.sort_unstable();
    assert!(addrs.windows(2).all(|w| w[1] - w[0] >= 16), "blocks do not overlap");
    assert!(boxes.iter().enumerate().all(|(i, b)| b.value == i as u32), "each box holds its value");
    assert_eq!(svm.live_allocations(), live + 1000, "sub-page blocks counted one each");
    drop(boxes);
    assert_eq!(svm.live_allocations(), live, "every block and its page freed");
}

/// A freed block reads zero when handed out again, also after a kernel
/// wrote its page.
#[test]
fn freed_small_blocks_come_back_zeroed() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k =
            kernel(&svm, "poke", "@compute @workgroup_size(1) fn main() { svm_store_u32(svm_arg_ptr(0u), 0xdeadu); }");
        let keep = svm.alloc_box([7u32; 4]).expect("keep");
        let mut gone = svm.alloc_box([9u32; 4]).expect("gone");
        let addr = gone.ptr().addr();
        let args = [Arg::ptr(gone.ptr().addr() as *const u32)];
        svm.launch(
            &k,
            &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut gone)], ..Default::default() },
        )
        .expect("a kernel writes the block (its page goes to the device)");
        drop(gone);
        let again = svm.alloc_box([0u32; 4]).expect("again");
        assert_eq!(again.ptr().addr(), addr, "the freed block is reused first");
        assert_eq!(*again, [0; 4], "{backend:?}: a reused block reads zero");
        assert_eq!(*keep, [7; 4], "{backend:?}: its neighbour kept its bytes");
    }
}

/// A kernel that declared one block read-write cannot write the next one
/// in the same page (a Rust reference may be alive to it): the store is
/// refused as ReadOnly and the neighbour keeps its bytes; its own block is
/// written. A 16-byte store that starts inside the block and ends past it
/// is refused too.
#[test]
fn a_kernel_cannot_write_a_neighbour_block() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let store =
            kernel(&svm, "store", "@compute @workgroup_size(1) fn main() { svm_store_u32(svm_arg_ptr(0u), 5u); }");
        let store4 = kernel(
            &svm,
            "store4",
            "@compute @workgroup_size(1) fn main() { svm_store_vec4u(svm_arg_ptr(0u), vec4<u32>(6u, 6u, 6u, 6u)); }",
        );
        let mut mine = svm.alloc_box([1u32; 4]).expect("mine");
        let theirs = svm.alloc_box([2u32; 4]).expect("theirs");
        assert_eq!(mine.ptr().addr() / 4096, theirs.ptr().addr() / 4096, "one page");
        let own = [Arg::ptr(mine.ptr().addr() as *const u32)];
        svm.launch(
            &store,
            &LaunchDescriptor { args: &own, access: &[Access::read_write(&mut mine)], ..Default::default() },
        )
        .expect("its own block");
        assert_eq!(mine[0], 5);
        let other = [Arg::ptr(theirs.ptr().addr() as *const u32)];
        let r = svm.launch(
            &store,
            &LaunchDescriptor { args: &other, access: &[Access::read_write(&mut mine)], ..Default::default() },
        );
        match r {
            Err(LaunchError::Kernel { faults, .. }) => {
                assert_eq!(faults[0].kind, KernelFaultKind::ReadOnly, "{backend:?}: {faults:?}")
            }
            other => panic!("{backend:?}: a store to the neighbour block: {other:?}"),
        }
        assert_eq!(*theirs, [2; 4], "{backend:?}: the neighbour is untouched");
        // Replayable (faults served, then the page-table path): refused too.
        let r = svm.launch_with(
            &store,
            &LaunchDescriptor { args: &other, access: &[Access::read_write(&mut mine)], ..Default::default() },
            &svm::LaunchOptions::replayable(),
        );
        assert!(
            matches!(&r, Err(LaunchError::Kernel { faults, .. }) if faults[0].kind == KernelFaultKind::ReadOnly),
            "{backend:?}: replayable store to the neighbour: {r:?}"
        );
        assert_eq!(*theirs, [2; 4], "{backend:?}: the neighbour is untouched");
        // A 16-byte store from the start of an 8-byte box: its first word is
        // declared, its last is not (the block's slack, where a neighbour
        // could be in a tighter class): refused whole, nothing written.
        let mut a = svm.alloc_box([3u32; 2]).expect("a");
        let spill = [Arg::ptr(a.ptr().addr() as *const u32)];
        let r = svm.launch(
            &store4,
            &LaunchDescriptor { args: &spill, access: &[Access::read_write(&mut a)], ..Default::default() },
        );
        assert!(
            matches!(&r, Err(LaunchError::Kernel { faults, .. }) if faults[0].kind == KernelFaultKind::ReadOnly),
            "{backend:?}: a vec4 store past the declared bytes: {r:?}"
        );
        assert_eq!(*a, [3; 2], "{backend:?}: the refused wide store wrote nothing");
        drop(theirs);
    }
}

/// A list of nodes allocated one by one through the allocator (`Box` in
/// the arena, sub-page blocks), walked on the GPU by pointer chasing.
#[test]
fn a_list_of_small_nodes_is_walked_on_the_gpu() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let walk = kernel(
            &svm,
            "walk",
            "@compute @workgroup_size(1) fn main() {
                var p = svm_arg_ptr(0u);
                var sum = 0u;
                for (var i = 0u; i < 100000u; i++) {
                    if (p.x == 0u && p.y == 0u) { break; }
                    sum += svm_load_u32(svm_ptr_add(p, 8u));
                    p = svm_load_ptr(p);
                }
                svm_store_u32(svm_arg_ptr(2u), sum);
            }",
        );
        let mut head = ManagedPtr::<Node>::NULL;
        let mut nodes = Vec::new();
        for i in 1..=5000u32 {
            let b = ABox::new_in(Node { next: head, value: i, pad: 0 }, svm.clone());
            head = ManagedPtr::from_addr(&*b as *const Node as u64);
            nodes.push(b);
        }
        let mut out = svm.alloc_box(0u32).expect("out");
        let args = [Arg::from(head), Arg::ptr(out.ptr().addr() as *const u32)];
        svm.launch_with(
            &walk,
            &LaunchDescriptor { args: &args, access: &[Access::read_write(&mut out)], ..Default::default() },
            &svm::LaunchOptions::replayable(),
        )
        .expect("walk");
        assert_eq!(*out, 5000 * 5001 / 2, "{backend:?}");
        drop(nodes);
    }
}
