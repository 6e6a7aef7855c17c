// c[i] = a[i] + b[i]; args: a (ptr, words 0-1), b (2-3), c (4-5), n (6).
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let a = svm_arg_ptr(0u);
    let b = svm_arg_ptr(2u);
    let c = svm_arg_ptr(4u);
    let n = svm_arg_u32(6u);
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < n; i += stride) {
        svm_store_f32(svm_index(c, i, 4u), svm_load_f32(svm_index(a, i, 4u)) + svm_load_f32(svm_index(b, i, 4u)));
    }
}
