// PolyBench 2DCONV: 3x3 stencil over an ni x nj row-major image; border
// cells are left alone. Coefficients c[3][3] come as nine f32 arguments.
// args: a (ptr, words 0-1), b (2-3), ni (4), nj (5), c11..c33 (6..14, row
//       by row: c11 c12 c13 c21 ...). Terms are added in the order of
//       the CPU reference.
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let a = svm_arg_ptr(0u);
    let b = svm_arg_ptr(2u);
    let ni = svm_arg_u32(4u);
    let nj = svm_arg_u32(5u);
    let inner = (ni - 2u) * (nj - 2u);
    let stride = nwg.x * 256u;
    for (var t = gid.x; t < inner; t += stride) {
        let i = t / (nj - 2u) + 1u;
        let j = t % (nj - 2u) + 1u;
        var acc = 0.0;
        for (var di = 0u; di < 3u; di += 1u) {
            for (var dj = 0u; dj < 3u; dj += 1u) {
                let v = svm_load_f32(svm_index(a, (i + di - 1u) * nj + (j + dj - 1u), 4u));
                acc += svm_arg_f32(6u + di * 3u + dj) * v;
            }
        }
        svm_store_f32(svm_index(b, i * nj + j, 4u), acc);
    }
}
