// y[i] = a * x[i] + y[i]; args: x (ptr, words 0-1), y (2-3), a (f32, 4), n (5).
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let x = svm_arg_ptr(0u);
    let y = svm_arg_ptr(2u);
    let a = svm_arg_f32(4u);
    let n = svm_arg_u32(5u);
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < n; i += stride) {
        let py = svm_index(y, i, 4u);
        svm_store_f32(py, a * svm_load_f32(svm_index(x, i, 4u)) + svm_load_f32(py));
    }
}
