// Batch lookups in a binary search tree built on the CPU with raw pointers.
// Node layout (24 bytes): left: *Node (8 bytes), right: *Node (8), key: u32,
// value: u32.
// args: root (ptr, words 0-1), queries (ptr to `nq` u32 keys, 2-3),
//       out (ptr to `nq` u32 values, 4-5; 0xffffffff = absent), nq (6),
//       max_depth (7): a bound so that a corrupted tree cannot spin forever.
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let root = svm_arg_ptr(0u);
    let queries = svm_arg_ptr(2u);
    let out = svm_arg_ptr(4u);
    let nq = svm_arg_u32(6u);
    let max_depth = svm_arg_u32(7u);
    let stride = nwg.x * 64u;
    for (var q = gid.x; q < nq; q += stride) {
        let key = svm_load_u32(svm_index(queries, q, 4u));
        var node = root;
        var result = 0xffffffffu;
        var depth = 0u;
        // A faulted load yields 0 (null): the walk ends and the pass is replayed.
        while (!svm_is_null(node) && depth < max_depth) {
            let k = svm_load_u32(svm_ptr_add(node, 16u));
            if (k == key) {
                result = svm_load_u32(svm_ptr_add(node, 20u));
                break;
            }
            // left at offset 0, right at offset 8
            node = svm_load_ptr(svm_ptr_add(node, select(8u, 0u, key < k)));
            depth += 1u;
        }
        svm_store_u32(svm_index(out, q, 4u), result);
    }
}
