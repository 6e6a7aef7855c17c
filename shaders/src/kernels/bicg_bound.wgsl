// PolyBench BICG, s = A^T r and q = A p with A m x n, bound access (plain
// WGSL, no prelude); one launch, invocation t computes s[t] and q[t].
struct Params {
    m: u32,
    n: u32,
}

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> r: array<f32>;
@group(0) @binding(3) var<storage, read> p: array<f32>;
@group(0) @binding(4) var<storage, read_write> s: array<f32>;
@group(0) @binding(5) var<storage, read_write> q: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let m = prm.m;
    let n = prm.n;
    let stride = nwg.x * 256u;
    for (var t = gid.x; t < max(m, n); t += stride) {
        if (t < n) {
            var acc = 0.0;
            for (var i = 0u; i < m; i += 1u) {
                acc += r[i] * a[i * n + t];
            }
            s[t] = acc;
        }
        if (t < m) {
            var acc = 0.0;
            for (var j = 0u; j < n; j += 1u) {
                acc += a[t * n + j] * p[j];
            }
            q[t] = acc;
        }
    }
}
