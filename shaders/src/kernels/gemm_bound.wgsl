// PolyBench GEMM, C = alpha A B + beta C (n x n, row-major), bound access
// (plain WGSL, no prelude); one output element per invocation, terms in the
// order of the CPU reference.
struct Params {
    n: u32,
    alpha: f32,
    beta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(16, 16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = p.n;
    let i = gid.y;
    let j = gid.x;
    if (i >= n || j >= n) {
        return;
    }
    var acc = p.beta * c[i * n + j];
    for (var k = 0u; k < n; k += 1u) {
        acc += p.alpha * a[i * n + k] * b[k * n + j];
    }
    c[i * n + j] = acc;
}
