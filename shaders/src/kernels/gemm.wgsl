// PolyBench GEMM: C = alpha * A B + beta * C, n x n row-major, one element
// of C per invocation (2-D dispatch of 16 x 16 workgroups).
// args: a (ptr, words 0-1), b (2-3), c (4-5), n (6), alpha (f32, 7),
//       beta (f32, 8).
@compute @workgroup_size(16, 16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let a = svm_arg_ptr(0u);
    let b = svm_arg_ptr(2u);
    let c = svm_arg_ptr(4u);
    let n = svm_arg_u32(6u);
    let alpha = svm_arg_f32(7u);
    let beta = svm_arg_f32(8u);
    let i = gid.y;
    let j = gid.x;
    if (i >= n || j >= n) {
        return;
    }
    let pc = svm_index(c, i * n + j, 4u);
    var acc = beta * svm_load_f32(pc);
    for (var k = 0u; k < n; k += 1u) {
        acc += alpha * svm_load_f32(svm_index(a, i * n + k, 4u)) * svm_load_f32(svm_index(b, k * n + j, 4u));
    }
    svm_store_f32(pc, acc);
}
