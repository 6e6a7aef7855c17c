// Explicit-copy PolyBench GEMM (same order as the managed kernel).
// params: n, alpha (f32 bits), beta (f32 bits).
@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(16, 16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = params[0];
    let alpha = bitcast<f32>(params[1]);
    let beta = bitcast<f32>(params[2]);
    let i = gid.y;
    let j = gid.x;
    if (i >= n || j >= n) {
        return;
    }
    var acc = beta * c[i * n + j];
    for (var k = 0u; k < n; k += 1u) {
        acc += alpha * a[i * n + k] * b[k * n + j];
    }
    c[i * n + j] = acc;
}
