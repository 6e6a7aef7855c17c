//! Pointer-access kernels shared by the test binaries and the stress
//! example (included by path).

/// p[i] = p[i] * mul + add, i < n. Args: p, n, mul, add.
pub const AFFINE: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let p = svm_arg_ptr(0u); let n = svm_arg_u32(2u); let mul = svm_arg_u32(3u); let add = svm_arg_u32(4u);
    for (var i = g.x; i < n; i += nw.x * 64u) {
        let q = svm_index(p, i, 4u);
        svm_store_u32(q, svm_load_u32(q) * mul + add);
    }
}";
/// p[i] = i * mul + add, i < n: idempotent, so it may be replayed. Args: p, n, mul, add.
pub const FILL: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let p = svm_arg_ptr(0u); let n = svm_arg_u32(2u); let mul = svm_arg_u32(3u); let add = svm_arg_u32(4u);
    for (var i = g.x; i < n; i += nw.x * 64u) { svm_store_u32(svm_index(p, i, 4u), i * mul + add); }
}";
