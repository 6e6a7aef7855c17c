// PolyBench ATAX, y = A^T (A x) with A m x n, bound access (plain WGSL, no
// prelude): entry point `ax` computes tmp = A x, then `aty` computes
// y = A^T tmp. Each entry point binds only what it uses: ax (p, a, x, tmp),
// aty (p, a, tmp, y).
struct Params {
    m: u32,
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> tmp: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn ax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < p.m; i += stride) {
        var acc = 0.0;
        for (var j = 0u; j < p.n; j += 1u) {
            acc += a[i * p.n + j] * x[j];
        }
        tmp[i] = acc;
    }
}

@compute @workgroup_size(256)
fn aty(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    for (var j = gid.x; j < p.n; j += stride) {
        var acc = 0.0;
        for (var i = 0u; i < p.m; i += 1u) {
            acc += a[i * p.n + j] * tmp[i];
        }
        y[j] = acc;
    }
}
