// PolyBench ATAX: y = A^T (A x), A is m x n row-major. Two launches:
// `ax` computes tmp = A x (m), `aty` computes y = A^T tmp (n).
// args: a (ptr, words 0-1), x (2-3), tmp (4-5), y (6-7), m (8), n (9).
@compute @workgroup_size(256)
fn ax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let a = svm_arg_ptr(0u);
    let x = svm_arg_ptr(2u);
    let tmp = svm_arg_ptr(4u);
    let m = svm_arg_u32(8u);
    let n = svm_arg_u32(9u);
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < m; i += stride) {
        var acc = 0.0;
        for (var j = 0u; j < n; j += 1u) {
            acc += svm_load_f32(svm_index(a, i * n + j, 4u)) * svm_load_f32(svm_index(x, j, 4u));
        }
        svm_store_f32(svm_index(tmp, i, 4u), acc);
    }
}

@compute @workgroup_size(256)
fn aty(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let a = svm_arg_ptr(0u);
    let tmp = svm_arg_ptr(4u);
    let y = svm_arg_ptr(6u);
    let m = svm_arg_u32(8u);
    let n = svm_arg_u32(9u);
    let stride = nwg.x * 256u;
    for (var j = gid.x; j < n; j += stride) {
        var acc = 0.0;
        for (var i = 0u; i < m; i += 1u) {
            acc += svm_load_f32(svm_index(a, i * n + j, 4u)) * svm_load_f32(svm_index(tmp, i, 4u));
        }
        svm_store_f32(svm_index(y, j, 4u), acc);
    }
}
