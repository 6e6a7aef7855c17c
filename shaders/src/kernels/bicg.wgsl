// PolyBench BICG: s = A^T r (n) and q = A p (m), A is m x n row-major; one
// launch, invocation t computes s[t] (t < n) and q[t] (t < m).
// args: a (ptr, words 0-1), r (2-3), p (4-5), s (6-7), q (8-9), m (10), n (11).
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let a = svm_arg_ptr(0u);
    let r = svm_arg_ptr(2u);
    let p = svm_arg_ptr(4u);
    let s = svm_arg_ptr(6u);
    let q = svm_arg_ptr(8u);
    let m = svm_arg_u32(10u);
    let n = svm_arg_u32(11u);
    let stride = nwg.x * 256u;
    for (var t = gid.x; t < max(m, n); t += stride) {
        if (t < n) {
            var acc = 0.0;
            for (var i = 0u; i < m; i += 1u) {
                acc += svm_load_f32(svm_index(r, i, 4u)) * svm_load_f32(svm_index(a, i * n + t, 4u));
            }
            svm_store_f32(svm_index(s, t, 4u), acc);
        }
        if (t < m) {
            var acc = 0.0;
            for (var j = 0u; j < n; j += 1u) {
                acc += svm_load_f32(svm_index(a, t * n + j, 4u)) * svm_load_f32(svm_index(p, j, 4u));
            }
            svm_store_f32(svm_index(q, t, 4u), acc);
        }
    }
}
