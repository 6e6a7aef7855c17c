// Explicit-copy PolyBench ATAX (same order as the managed kernels).
// params: m, n.
@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> tmp: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn ax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let m = params[0];
    let n = params[1];
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < m; i += stride) {
        var acc = 0.0;
        for (var j = 0u; j < n; j += 1u) {
            acc += a[i * n + j] * x[j];
        }
        tmp[i] = acc;
    }
}

@compute @workgroup_size(256)
fn aty(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let m = params[0];
    let n = params[1];
    let stride = nwg.x * 256u;
    for (var j = gid.x; j < n; j += stride) {
        var acc = 0.0;
        for (var i = 0u; i < m; i += 1u) {
            acc += a[i * n + j] * tmp[i];
        }
        y[j] = acc;
    }
}
