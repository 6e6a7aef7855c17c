// CSR sparse matrix-vector product y = A x, one row per invocation, terms
// summed in column order.
// args: rowptr (ptr to rows + 1 u32, words 0-1), cols (u32, 2-3),
//       vals (f32, 4-5), x (f32, 6-7), y (f32, 8-9), rows (10).
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let rowptr = svm_arg_ptr(0u);
    let cols = svm_arg_ptr(2u);
    let vals = svm_arg_ptr(4u);
    let x = svm_arg_ptr(6u);
    let y = svm_arg_ptr(8u);
    let rows = svm_arg_u32(10u);
    let stride = nwg.x * 256u;
    for (var r = gid.x; r < rows; r += stride) {
        let a = svm_load_u32(svm_index(rowptr, r, 4u));
        let b = svm_load_u32(svm_index(rowptr, r + 1u, 4u));
        var acc = 0.0;
        for (var k = a; k < b; k += 1u) {
            let c = svm_load_u32(svm_index(cols, k, 4u));
            acc += svm_load_f32(svm_index(vals, k, 4u)) * svm_load_f32(svm_index(x, c, 4u));
        }
        svm_store_f32(svm_index(y, r, 4u), acc);
    }
}
