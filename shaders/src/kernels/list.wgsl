// Walk linked lists built on the CPU with raw pointers.
// Node layout (16 bytes): next: *Node (8 bytes), value: u32, pad: u32.
// args: heads (ptr to array of `nlists` node pointers, words 0-1),
//       out (ptr to array of `nlists` u32 sums, words 2-3), nlists (word 4),
//       max_steps (word 5): a bound so that a corrupted list cannot spin forever.
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let heads = svm_arg_ptr(0u);
    let out = svm_arg_ptr(2u);
    let nlists = svm_arg_u32(4u);
    let max_steps = svm_arg_u32(5u);
    let l = gid.x;
    if (l >= nlists) {
        return;
    }
    var node = svm_load_ptr(svm_index(heads, l, 8u));
    var sum = 0u;
    var steps = 0u;
    // A refused or faulted load yields 0, a null pointer: the walk ends there.
    while (!svm_is_null(node) && steps < max_steps) {
        sum += svm_load_u32(svm_ptr_add(node, 8u));
        node = svm_load_ptr(node);
        steps += 1u;
    }
    svm_store_u32(svm_index(out, l, 4u), sum);
}
