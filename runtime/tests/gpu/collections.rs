//! Rust data structures in managed memory: collections through the
//! runtime's `Allocator`, a chained hash table built node by node by
//! ordinary Rust code and looked up on the GPU by pointer chasing, boxes,
//! a binary search tree likewise (searched by pointer chasing), and what
//! `range_info` reports.

use svm::allocator_api2::{boxed::Box as ABox, vec::Vec as AVec};
use svm::{Advice, Binding, FreeError, LaunchDescriptor, LaunchOptions, Location, ManagedPtr};

use crate::{ctx, ctx_migrating, kernel, small, BACKENDS};

const INC: &str = "@group(0) @binding(0) var<storage, read_write> v: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&v)) { v[g.x] = v[g.x] + 1u; }
}";

#[test]
fn a_vec_in_managed_memory_grows_on_the_cpu_and_feeds_a_kernel() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "inc", INC);
        let live = svm.live_allocations();
        let mut v: AVec<u32, svm::Svm> = AVec::new_in(svm.clone());
        for i in 0..100_000u32 {
            v.push(i); // reallocates in the arena as it grows
        }
        assert!(svm.is_allocated(v.as_ptr() as usize, v.len() * 4), "the buffer is managed memory");
        assert_eq!(svm.free(v.as_mut_ptr().cast()), Err(FreeError::Owned { addr: v.as_ptr() as usize }));
        let n = v.len() as u32;
        svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[Binding::read_write(&mut v)],
                workgroups: [n.div_ceil(64), 1, 1],
                ..Default::default()
            },
        )
        .expect("launch");
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32 + 1), "{backend:?}");
        drop(v);
        assert_eq!(svm.live_allocations(), live, "every reallocation freed");
    }
}

/// A chained hash table: each node allocated on its own by Rust code
/// (`allocator_api2::boxed::Box` in the arena), buckets of managed
/// pointers; the GPU follows the chains (replayable: it finds the nodes by
/// faults) and must agree with std's HashMap.
#[test]
fn a_chained_hash_table_built_by_rust_code_is_looked_up_on_the_gpu() {
    #[repr(C)]
    #[derive(Copy, Clone, bytemuck::Pod, bytemuck::Zeroable)]
    struct Node {
        next: ManagedPtr<Node>,
        key: u32,
        value: u32,
    }
    const LOOKUP: &str = "@group(0) @binding(0) var<storage, read> keys: array<u32>;
@group(0) @binding(1) var<storage, read_write> found: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x >= arrayLength(&keys)) { return; }
    let key = keys[g.x];
    let buckets = svm_arg_ptr(0u);
    let nb = svm_arg_u32(2u);
    var p = svm_load_ptr(svm_index(buckets, key % nb, 8u));
    var out = 0xffffffffu;
    for (var guard = 0u; guard < 10000u && !svm_is_null(p); guard++) {
        if (svm_load_u32(svm_ptr_add(p, 8u)) == key) { out = svm_load_u32(svm_ptr_add(p, 12u)); break; }
        p = svm_load_ptr(p);
    }
    found[g.x] = out;
}";
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let k = kernel(&svm, "lookup", LOOKUP);
        let nb = 61u32;
        let mut buckets = svm.alloc_vec::<ManagedPtr<Node>>(nb as usize).expect("buckets");
        let mut nodes: Vec<ABox<Node, svm::Svm>> = Vec::new();
        let mut model = std::collections::HashMap::new();
        for i in 0..600u32 {
            let key = i.wrapping_mul(2_654_435_761) % 100_000;
            if model.insert(key, i).is_some() {
                continue;
            }
            let b = (key % nb) as usize;
            let node = ABox::new_in(Node { next: buckets[b], key, value: i }, svm.clone());
            buckets[b] = ManagedPtr::from_addr(&*node as *const Node as u64);
            nodes.push(node);
        }
        let queries: Vec<u32> = model.keys().copied().chain([7, 99_999, 12_345]).collect();
        let keys = svm.alloc_from_slice(&queries).expect("keys");
        let mut found = svm.alloc_vec::<u32>(queries.len()).expect("found");
        let args = [svm::Arg::ptr(buckets.as_ptr()), svm::Arg::U32(nb)];
        let r = svm
            .launch_with(
                &k,
                &LaunchDescriptor {
                    args: &args,
                    bindings: &[Binding::read(&keys), Binding::read_write(&mut found)],
                    workgroups: [(queries.len() as u32).div_ceil(64), 1, 1],
                    ..Default::default()
                },
                &LaunchOptions::replayable(),
            )
            .expect("lookup");
        assert!(r.gpu_fault_pages > 0, "the nodes came by GPU faults");
        for (q, &f) in queries.iter().zip(found.iter()) {
            assert_eq!(f, model.get(q).copied().unwrap_or(u32::MAX), "{backend:?}: key {q}");
        }
        drop(nodes);
    }
}

#[test]
fn boxes_iterators_owner_methods_and_range_info() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let k = kernel(&svm, "inc", INC);
        let mut b = svm.alloc_box(41u32).expect("box");
        *b += 0;
        let v = svm.alloc_from_iter((0..5000u32).map(|i| i * 2)).expect("from iter");
        assert_eq!(v.len(), 5000);
        assert_eq!(v[4999], 9998);
        let mut w = svm.alloc_from_iter(0..8192u32).expect("w");
        let info = svm.range_info(w.as_ptr().cast(), w.len() * 4).expect("info");
        assert_eq!((info.pages, info.host, info.device), (8, 8, 0));
        w.prefetch(Location::Device).wait().expect("prefetch");
        let info = svm.range_info(w.as_ptr().cast(), w.len() * 4).expect("info");
        assert_eq!((info.host, info.device), (0, 8), "{backend:?}: {info:?}");
        w.advise(Advice::PreferredLocation(Location::Host)).expect("advise");
        assert_eq!(svm.range_info(w.as_ptr().cast(), 4).expect("info").preferred_host, 1);
        svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[Binding::read_write(&mut w)],
                workgroups: [128, 1, 1],
                ..Default::default()
            },
        )
        .expect("launch");
        // PreferredLocation(Host): written pages came straight back.
        let info = svm.range_info(w.as_ptr().cast(), w.len() * 4).expect("info");
        assert_eq!((info.host, info.device), (8, 0), "{backend:?}: {info:?}");
        assert_eq!(w[8191], 8192);
        svm.launch(&k, &LaunchDescriptor { bindings: &[Binding::read_write(&mut b)], ..Default::default() })
            .expect("box launch");
        assert_eq!(*b, 42);
        assert!(svm.range_info(std::ptr::null(), 4).is_err());
    }
}

/// A binary search tree whose nodes ordinary Rust code allocates one at a
/// time through the runtime's allocator (`Box<TreeNode, Svm>`, sub-page
/// blocks), linked by managed pointers and searched on the GPU by pointer
/// chasing (GPU faults bring the nodes); it agrees with std's `BTreeMap`.
#[test]
fn a_binary_tree_built_node_by_node_is_searched_on_the_gpu() {
    #[repr(C)]
    #[derive(Copy, Clone, bytemuck::Pod, bytemuck::Zeroable)]
    struct TreeNode {
        left: ManagedPtr<TreeNode>,
        right: ManagedPtr<TreeNode>,
        key: u32,
        value: u32,
    }
    const SEARCH: &str = "@group(0) @binding(0) var<storage, read> keys: array<u32>;
@group(0) @binding(1) var<storage, read_write> found: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x >= arrayLength(&keys)) { return; }
    let key = keys[g.x];
    var p = svm_arg_ptr(0u);
    var out = 0xffffffffu;
    for (var depth = 0u; depth < 64u && !svm_is_null(p); depth++) {
        let k = svm_load_u32(svm_ptr_add(p, 16u));
        if (k == key) { out = svm_load_u32(svm_ptr_add(p, 20u)); break; }
        p = svm_load_ptr(svm_ptr_add(p, select(8u, 0u, key < k)));
    }
    found[g.x] = out;
}";
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let k = kernel(&svm, "tree search", SEARCH);
        let mut nodes: Vec<ABox<TreeNode, svm::Svm>> = Vec::new();
        let mut model = std::collections::BTreeMap::new();
        let mut x = 0x2545_f491u32;
        for i in 0..2000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let key = x % 1_000_000;
            if model.contains_key(&key) {
                continue;
            }
            model.insert(key, i);
            let node =
                ABox::new_in(TreeNode { left: ManagedPtr::NULL, right: ManagedPtr::NULL, key, value: i }, svm.clone());
            let addr = ManagedPtr::from_addr(&*node as *const TreeNode as u64);
            // Walk from the root on the CPU and hang the node under its parent.
            if let Some(first) = nodes.first() {
                let mut at: *mut TreeNode = &**first as *const TreeNode as *mut TreeNode;
                loop {
                    // SAFETY: `at` is a live node of `nodes` (its managed
                    // pointers name only nodes of `nodes`), no other
                    // reference to it is used meanwhile, and no launch runs.
                    let n = unsafe { &mut *at };
                    let slot = if key < n.key { &mut n.left } else { &mut n.right };
                    if slot.is_null() {
                        *slot = addr;
                        break;
                    }
                    at = slot.addr() as *mut TreeNode;
                }
            }
            nodes.push(node);
        }
        let queries: Vec<u32> = model.keys().copied().step_by(3).chain([1_000_001, 5, 999_999]).collect();
        let keys = svm.alloc_from_slice(&queries).expect("keys");
        let mut found = svm.alloc_vec::<u32>(queries.len()).expect("found");
        let root = &*nodes[0] as *const TreeNode;
        let r = svm
            .launch_with(
                &k,
                &LaunchDescriptor {
                    args: &[svm::Arg::ptr(root)],
                    bindings: &[Binding::read(&keys), Binding::read_write(&mut found)],
                    workgroups: [(queries.len() as u32).div_ceil(64), 1, 1],
                    ..Default::default()
                },
                &LaunchOptions::replayable(),
            )
            .expect("search");
        assert!(r.gpu_fault_pages > 0, "the nodes came by GPU faults");
        for (q, &f) in queries.iter().zip(found.iter()) {
            assert_eq!(f, model.get(q).copied().unwrap_or(u32::MAX), "{backend:?}: key {q}");
        }
        // Sub-page nodes: 24-byte nodes share pages (a 32-byte class).
        let span = nodes.iter().map(|n| &**n as *const TreeNode as usize).max().unwrap_or(0)
            - nodes.iter().map(|n| &**n as *const TreeNode as usize).min().unwrap_or(0);
        assert!(span < nodes.len() * 64, "{} nodes over {span} bytes", nodes.len());
        drop(nodes);
    }
}
