// One level of a level-synchronous BFS (bottom-up step: every unreached
// vertex looks for a neighbour on the current level and takes the first one
// in its adjacency order as parent, so the result is deterministic).
// Vertex record (16 bytes): adj: *u32 (8 bytes, the CPU pointer to its
// neighbour array; null when degree is 0), degree: u32, pad: u32.
// args: verts (ptr, words 0-1), level (ptr to n u32, 2-3), parent (ptr to
//       n u32, 4-5), changed (ptr to one u32, set to 1 when a vertex was
//       reached, 6-7), n (8), cur (9): the current level.
const UNREACHED: u32 = 0xffffffffu;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let verts = svm_arg_ptr(0u);
    let level = svm_arg_ptr(2u);
    let parent = svm_arg_ptr(4u);
    let changed = svm_arg_ptr(6u);
    let n = svm_arg_u32(8u);
    let cur = svm_arg_u32(9u);
    let stride = nwg.x * 256u;
    for (var w = gid.x; w < n; w += stride) {
        let lw = svm_index(level, w, 4u);
        if (svm_load_u32(lw) != UNREACHED) {
            continue;
        }
        let rec = svm_index(verts, w, 16u);
        let deg = svm_load_u32(svm_ptr_add(rec, 8u));
        if (deg == 0u) {
            continue;
        }
        let adj = svm_load_ptr(rec);
        for (var i = 0u; i < deg; i += 1u) {
            let v = svm_load_u32(svm_index(adj, i, 4u));
            // Concurrent writes this level only turn UNREACHED into cur + 1,
            // never into cur: the test is race-free.
            if (svm_load_u32(svm_index(level, v, 4u)) == cur) {
                svm_store_u32(lw, cur + 1u);
                svm_store_u32(svm_index(parent, w, 4u), v);
                svm_store_u32(changed, 1u);
                break;
            }
        }
    }
}
